"""A real browser for the tests: Debian's ``chromium``, headless, driven by Selenium through
Debian's ``chromium-driver``.

Nothing is downloaded: the driver and the browser are given by path, so Selenium Manager
(which would fetch a driver and a browser from the network) never runs, and ``SE_OFFLINE``
tells it to stay offline should anything call it anyway. Each browser gets a fresh
profile in a private directory, with Chromium's own network chatter (updates, sync,
field trials) turned off. Where the browser or the driver is missing the tests using
``chromium()`` are skipped, with the command that installs them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
INSTALL = "apt-get install chromium chromium-driver (make test does it when run as root)"

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path, what in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")):
        if not os.access(path, os.X_OK):
            return f"no {what} at {path}: {INSTALL}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: make install (it is in the dev extras)"
    return None


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium (a Selenium WebDriver) with a viewport of width x height."""
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    # The page's console (CSP refusals, script errors) for the tests to read.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        viewport(driver, width, height)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def viewport(driver: Any, width: int, height: int, mobile: bool = False) -> None:
    """The page's size exactly (a window size also counts the window's own frame)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 2 if mobile else 1,
        "mobile": mobile,
    })


def screenshot(driver: Any, path: str, width: int) -> None:
    """A PNG of the whole page (beyond the viewport) at ``width`` CSS pixels."""
    import base64

    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
    })
    with open(path, "wb") as fh:
        fh.write(base64.b64decode(shot["data"]))
