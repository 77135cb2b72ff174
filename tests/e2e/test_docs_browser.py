"""/api/v1/docs/ in a real browser (Debian's chromium, headless): Swagger UI renders the
service's OpenAPI 3.1 document from files the service serves itself. Skipped, saying how
to install it, where chromium is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.service import Service

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium")
def test_reference_page_renders_the_openapi_document(tmp_path: Path) -> None:
    assert CHROMIUM is not None
    with Service.running(tmp_path / "svc", workers=0) as svc:
        out = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
             "--dump-dom", f"{svc.url}/api/v1/docs/"],
            capture_output=True, text=True, timeout=90, check=False,
        )
    dom = out.stdout
    assert "Server snapshots API" in dom, out.stderr[-2000:]
    assert "OAS 3.1" in dom  # Swagger UI read the 3.1 document (4.x would refuse it)
    assert "/api/v1/snapshots/{snapshot_id}/restore/" in dom
