"""/console/ in a real browser (Debian's chromium, headless, through chromium-driver),
against the real service: redis-server, the uvicorn web process and a Dramatiq worker.

A user's session: log in with a token, see the account's servers (not another
account's), create a snapshot and watch its bar move over the event stream to 100 %,
restore it (the dialog repeats the seed's warning; the state on disk is back), meet the
per-server limit (the API's 400 message, as the API words it), protect, fail to delete,
unprotect, delete. Then what a keyboard user, a phone and the token rules need.

Jobs are throttled (the fault tests' sitecustomize) so that a capture takes seconds and
its progress events reach the page while it runs. CONSOLE_SCREENSHOT=DIR writes the
README's screenshots there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.flow import add_server, snapshot, wait_operation
from tests.e2e.service import Service, wait_until
from tests.faults.conftest import THROTTLE
from tests.support.browser import chromium, missing, screenshot, viewport

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")

# The seed's words (snapshots-api): restore's warning, delete's sentence, the 200's message.
RESTORE_WARNING = (
    "Restoring from a snapshot will overwrite all current data on the server. This action "
    "cannot be undone. The server will be automatically stopped before restoration begins."
)
DELETE_WARNING = "Delete the snapshot permanently. This action cannot be undone."
RESTORING = "Server is being restored from snapshot. This may take 5-15 minutes."
LIMIT = 2
DATA_MB = 24  # at 8 MB/s: a capture of about 3 s


@dataclass
class Site:
    svc: Service
    token: str
    web: dict[str, Any]  # the server the journey works on (big enough to show progress)
    db: dict[str, Any]
    web_state: Path

    @property
    def console(self) -> str:
        return f"{self.svc.url}/console/"

    def api(self, token: str | None = None) -> httpx.Client:
        return self.svc.client(token or self.token)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("console")
    env = {"FAULT_TEST_MBPS": "8", "PYTHONPATH": str(THROTTLE),
           "SNAPSHOTS_MAX_PER_SERVER": str(LIMIT)}
    with Service.running(root / "svc", workers=1, **env) as svc, svc.client() as admin:
        web_state = root / "web"
        (web_state / "etc").mkdir(parents=True)
        (web_state / "etc" / "app.conf").write_text("version 1\n")
        for i in range(3):
            (web_state / f"data{i}.bin").write_bytes(os.urandom(DATA_MB // 3 << 20))
        db_state = root / "db"
        db_state.mkdir()
        (db_state / "pg.conf").write_text("max_connections 10\n")
        other = root / "other"
        other.mkdir()
        web = add_server(admin, str(web_state), name="web-server-01")
        db = add_server(admin, str(db_state), name="db-server-01")
        add_server(admin, str(other), name="another-tenants-server", account="globex")
        token = admin.post("/tokens/", json={"account": "acme", "scope": "write"}).json()
        yield Site(svc, token["token"], web, db, web_state)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


# -- page helpers --------------------------------------------------------------------------


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def until(driver: Any, what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    """Polls ``check`` (which reads the page) until it is truthy; a failure shows the page."""
    try:
        return wait_until(check, timeout=timeout, interval=0.05, what=what)
    except AssertionError:
        print(js(driver, "return document.body.innerText"))
        raise


def text(driver: Any, selector: str) -> str:
    return str(js(driver, "const e = document.querySelector(arguments[0]);"
                          "return e ? e.textContent.trim() : '';", selector))


def keys(driver: Any, *typed: str) -> None:
    """Keys to whatever has focus (an element handle could be replaced by a re-render)."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*typed).perform()


def click(driver: Any, selector: str) -> None:
    """Clicks the element now matching ``selector`` (a re-render may have replaced it)."""
    def clicked() -> bool:
        return bool(js(driver, "const e = document.querySelector(arguments[0]);"
                               "if (!e) return false; e.click(); return true;", selector))
    until(driver, f"a {selector} to click", clicked)


def button(action: str, snap_id: int) -> str:
    return f'button[data-key="{action}:{snap_id}"]'


def fresh(driver: Any, site: Site) -> None:
    """The console as a new tab sees it: no token kept. (Cleared from another page of the
    origin: a console page still logging in would store its token again.)"""
    driver.get(f"{site.svc.url}/healthz")
    js(driver, "sessionStorage.clear()")
    driver.get(site.console)


def log_in(driver: Any, site: Site) -> None:
    from selenium.webdriver.common.keys import Keys

    fresh(driver, site)
    field = until(driver, "the token field", lambda: driver.find_element("id", "token"))
    field.send_keys(site.token, Keys.ENTER)
    until(driver, "the server list", lambda: text(driver, "#server-list"))
    until(driver, "a live event stream", lambda: text(driver, "#stream-state") == "Live")


def select(driver: Any, server: dict[str, Any]) -> None:
    click(driver, f'button[data-key="select:{server["id"]}"]')
    until(driver, f"server {server['name']} shown",
          lambda: text(driver, "#server-title") == server["name"])


def create(driver: Any, name: str) -> None:
    js(driver, "document.getElementById('snap-name').value = arguments[0]", name)
    click(driver, "#create-form button[type=submit]")


def snapshot_named(site: Site, server: dict[str, Any], name: str) -> dict[str, Any] | None:
    with site.api() as api:
        snaps = api.get("/snapshots/", params={"server_id": server["id"]}).json()["snapshots"]
    return next((s for s in snaps if s["name"] == name), None)


def status_of(driver: Any, snap_id: int) -> str:
    return text(driver, f'[data-snapshot="{snap_id}"] .tags .badge')


def dialog_open(driver: Any) -> bool:
    return bool(js(driver, "return document.getElementById('confirm').open"))


def confirm(driver: Any, expect_warning: str) -> None:
    until(driver, "the dialog open", lambda: dialog_open(driver))
    assert text(driver, "#confirm-warning") == expect_warning
    # Focus moved into the dialog, on the safe choice.
    assert js(driver, "return document.activeElement.id") == "confirm-cancel"
    click(driver, "#confirm-ok")
    until(driver, "the dialog closed", lambda: not dialog_open(driver))


RECORD_BARS = """
window.seenBars = [];
const record = () => {
  for (const p of document.querySelectorAll('[data-progress^="snapshot:"] progress')) {
    window.seenBars.push([p.parentElement.dataset.progress, Number(p.value)]);
  }
};
new MutationObserver(record).observe(document.body,
  {subtree: true, childList: true, attributes: true, attributeFilter: ["value"]});
"""


# -- the tests -------------------------------------------------------------------------------


def test_a_users_session(site: Site, browser: Any) -> None:
    d = browser
    log_in(d, site)
    names = js(d, "return [...document.querySelectorAll('.server-button .name')]"
                  ".map(e => e.textContent)")
    assert sorted(names) == ["db-server-01", "web-server-01"]  # never another account's
    select(d, site.web)
    assert text(d, "#server-status") == "running"

    # Create: the bar moves with the events, without a reload, up to 100 %.
    js(d, RECORD_BARS)
    create(d, "before-update")
    until(d, "the create message",
          lambda: text(d, "#notice") == "Snapshot is being created. This may take 3-10 "
                                        "minutes depending on server size.")
    first = until(d, "the snapshot", lambda: snapshot_named(site, site.web, "before-update"))
    until(d, "the snapshot available", lambda: status_of(d, first["id"]) == "available")
    bars = [v for key, v in js(d, "return window.seenBars") if key == f"snapshot:{first['id']}"]
    assert bars[-1] == 100 and text(d, f'[data-snapshot="{first["id"]}"] .pct') == "100 %"
    assert any(0 < v < 100 for v in bars), bars  # seen mid-way, live
    assert bars == sorted(bars), bars  # never moved back
    done = snapshot_named(site, site.web, "before-update")
    assert done is not None
    assert text(d, f'[data-snapshot="{first["id"]}"] .size') == f"{done['size_mb']:.2f} MiB"

    # Restore: a confirmation with the seed's warning, then the state on disk is back.
    conf = site.web_state / "etc" / "app.conf"
    conf.write_text("version 2, half migrated\n")
    (site.web_state / "data0.bin").unlink()
    click(d, button("restore", first["id"]))
    confirm(d, RESTORE_WARNING)
    until(d, "the restore message", lambda: text(d, "#notice") == RESTORING)
    with site.api() as api:
        ops = api.get("/operations/", params={"server_id": site.web["id"]}).json()["operations"]
        restore_op = next(op for op in ops if op["type"] == "snapshot.restore")
        assert wait_operation(api, restore_op["id"])["status"] == "succeeded"
    assert conf.read_text() == "version 1\n"
    assert (site.web_state / "data0.bin").stat().st_size == DATA_MB // 3 << 20
    until(d, "the restore in the history",
          lambda: text(d, f'[data-operation="{restore_op["id"]}"] .badge') == "succeeded")
    until(d, "the server running again", lambda: text(d, "#server-status") == "running")

    # The limit: the API's 400 message, exactly as the API words it.
    create(d, "nightly")
    second = until(d, "the second snapshot", lambda: snapshot_named(site, site.web, "nightly"))
    until(d, "the second available", lambda: status_of(d, second["id"]) == "available")
    create(d, "one too many")
    shown = until(d, "the limit message", lambda: text(d, "#server-alert"))
    with site.api() as api:
        refused = api.post("/snapshots/", json={"server_id": site.web["id"], "name": "x"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "snapshot_limit_reached"
    assert shown == refused.json()["error"]["message"]
    assert snapshot_named(site, site.web, "one too many") is None
    if os.environ.get("CONSOLE_SCREENSHOT"):
        out = Path(os.environ["CONSOLE_SCREENSHOT"])
        out.mkdir(parents=True, exist_ok=True)
        js(d, "document.activeElement.blur()")
        screenshot(d, str(out / "console.png"), 1280)

    # Protect: the API says so; delete then answers snapshot_protected, shown as is.
    click(d, button("protect", first["id"]))
    until(d, "the protected badge",
          lambda: "protected" in text(d, f'[data-snapshot="{first["id"]}"] .tags'))
    assert js(d, "return document.querySelector(arguments[0]).getAttribute('aria-pressed')",
              button("protect", first["id"])) == "true"
    with site.api() as api:
        assert api.get(f"/snapshots/{first['id']}/").json()["protected"] is True
    click(d, button("delete", first["id"]))
    confirm(d, DELETE_WARNING)
    with site.api() as api:
        protected = api.delete(f"/snapshots/{first['id']}/").json()["error"]
    assert protected["code"] == "snapshot_protected"
    until(d, "the protected message", lambda: text(d, "#server-alert") == protected["message"])

    # Unprotect, then delete for real: gone from the page and from the API.
    click(d, button("protect", first["id"]))
    until(d, "unprotected",
          lambda: "protected" not in text(d, f'[data-snapshot="{first["id"]}"] .tags'))
    click(d, button("delete", first["id"]))
    confirm(d, DELETE_WARNING)
    until(d, "the card gone", lambda: not js(
        d, "return document.querySelector(arguments[0])", f'[data-snapshot="{first["id"]}"]'))
    with site.api() as api:
        assert api.get(f"/snapshots/{first['id']}/").status_code == 404
    history = until(d, "the delete in the history", lambda: "Delete" in text(d, "#history")
                    and text(d, "#history"))
    assert "Create" in history and "Restore" in history
    assert not [e for e in d.get_log("browser") if "Content Security Policy" in e["message"]
                or e["source"] == "javascript"]


def test_token_keyboard_and_phone(site: Site, browser: Any) -> None:
    from selenium.webdriver.common.keys import Keys

    d = browser
    with site.api() as api:
        snap = snapshot(api, site.db["id"], "base-image")
    fresh(d, site)

    # A wrong token: the API's 401 message, and nothing kept.
    active = until(d, "focus on the token field", lambda: js(
        d, "return document.activeElement.id === 'token' && document.activeElement"))
    active.send_keys("not-a-token", Keys.ENTER)
    with site.api("not-a-token") as api:
        unauthorized = api.get("/servers/").json()["error"]["message"]
    until(d, "the 401 message", lambda: text(d, "#login-alert") == unauthorized)
    assert js(d, "return sessionStorage.length") == 0

    # The right one, by keyboard: kept for this tab only, never in a URL.
    field = d.switch_to.active_element
    field.clear()
    field.send_keys(site.token, Keys.ENTER)
    until(d, "the console", lambda: text(d, "#server-list"))
    assert site.token not in d.current_url
    assert site.token in js(d, "return Object.values(sessionStorage)")
    d.refresh()
    until(d, "still logged in after a reload", lambda: text(d, "#server-list"))

    # Keyboard only: Tab to the snapshot's Restore, Enter opens the dialog with focus in it,
    # Escape closes it and gives focus back, visibly.
    select(d, site.db)
    until(d, "the snapshot card", lambda: status_of(d, snap["id"]) == "available")
    js(d, "document.querySelector(arguments[0]).focus()",
       f'button[data-key="select:{site.db["id"]}"]')
    for _ in range(40):
        keys(d, Keys.TAB)
        if js(d, "return document.activeElement.dataset.key") == f"restore:{snap['id']}":
            break
    else:
        pytest.fail("the Restore button cannot be reached with Tab")
    keys(d, Keys.ENTER)
    until(d, "the dialog open", lambda: dialog_open(d))
    assert js(d, "return document.activeElement.id") == "confirm-cancel"
    assert js(d, "return getComputedStyle(document.activeElement).outlineStyle") == "solid"
    assert text(d, "#confirm-warning") == RESTORE_WARNING
    keys(d, Keys.ESCAPE)
    until(d, "the dialog closed", lambda: not dialog_open(d))
    assert js(d, "return document.activeElement.dataset.key") == f"restore:{snap['id']}"
    with site.api() as api:  # nothing was restored
        assert api.get("/operations/", params={"server_id": site.db["id"],
                                               "status": "queued"}).json()["meta"]["total"] == 0

    # A phone: one column, nothing wider than the screen.
    viewport(d, 390, 844, mobile=True)
    try:
        assert js(d, "return document.documentElement.scrollWidth") <= 390
        nav, server = js(d, "return [document.querySelector('nav').getBoundingClientRect().bottom,"
                            " document.getElementById('server').getBoundingClientRect().top]")
        assert nav <= server
        if os.environ.get("CONSOLE_SCREENSHOT"):
            screenshot(d, str(Path(os.environ["CONSOLE_SCREENSHOT"]) / "console-phone.png"), 390)
    finally:
        viewport(d, 1280, 900)

    click(d, "#logout")
    until(d, "logged out", lambda: js(d, "return document.activeElement.id") == "token")
    assert js(d, "return sessionStorage.length") == 0


def test_served_with_a_strict_policy(site: Site) -> None:
    for path in ("/console/", "/console", "/console/console.js", "/console/client.js",
                 "/console/view.js", "/console/console.css", "/console/favicon.svg"):
        resp = httpx.get(site.svc.url + path)
        assert resp.status_code == 200, path
        csp = resp.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp, path
        assert "unsafe-inline" not in csp and "http" not in csp
    page = httpx.get(site.console).text
    assert "<script>" not in page and "<style" not in page and " style=" not in page
    assert httpx.get(site.svc.url + "/console/app.py").status_code == 404
