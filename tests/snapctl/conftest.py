"""The real service (redis-server, uvicorn, a Dramatiq worker) and the real snapctl binary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.service import ADMIN_TOKEN, Service

SNAPCTL = str(Path(sys.executable).parent / "snapctl")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with Service.running(tmp_path_factory.mktemp("service"),
                         SNAPSHOTS_EVENTS_KEEPALIVE="1") as svc:
        yield svc


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Cli:
    url: str
    home: Path

    def __call__(self, *args: str, token: str | None = ADMIN_TOKEN, url: str | None = None,
                 env: dict[str, str] | None = None) -> Run:
        full = {k: v for k, v in os.environ.items() if not k.startswith("SNAPCTL_")}
        full.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"),
                    COLUMNS="200")
        full["SNAPCTL_URL"] = url or self.url
        full["SNAPCTL_TOKEN"] = token or ""
        full.update(env or {})
        proc = subprocess.run([SNAPCTL, *args], env=full, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
        return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(service: Service, tmp_path: Path) -> Cli:
    home = tmp_path / "home"
    home.mkdir()
    return Cli(service.url, home)
