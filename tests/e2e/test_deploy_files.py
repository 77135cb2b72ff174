"""The production descriptions agree with the Procfile and restart what dies.

systemd itself is not PID 1 on the test machine, so the units are checked as files:
the restart policy, the stop that honours the graceful shutdown, and that each ExecStart
runs the Procfile's command (the one description of the processes).
"""

from __future__ import annotations

import configparser
import json
import shlex
from pathlib import Path

import honcho.environ
import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROCFILE = honcho.environ.parse_procfile((DEPLOY.parent / "Procfile").read_text()).processes


def _unit(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / name)
    return parser["Service"]


def _words(command: str) -> list[str]:
    """A command with its ${VAR:-default} / ${VAR} expansions reduced to the names."""
    out = []
    for word in shlex.split(command):
        if word.startswith("${"):
            word = "$" + word[2:].split(":-")[0].rstrip("}")
        out.append(word.rsplit("/", 1)[-1] if "/.venv/bin/" in word else word)
    return out


@pytest.mark.parametrize(("unit", "process"), [
    ("snapshots-web.service", "web"),
    ("snapshots-worker@.service", "worker"),
    ("snapshots-host-worker.service", "worker"),
])
def test_units_restart_on_failure_and_run_the_procfile_command(unit: str, process: str) -> None:
    service = _unit(unit)
    assert service["Restart"] == "always"
    assert 0 < float(service["RestartSec"]) <= 5
    assert service["TimeoutStopSec"] == "30"  # the Procfile's 25 s graceful stop fits
    assert _words(service["ExecStart"]) == _words(PROCFILE[process])


@pytest.mark.parametrize("unit", ["snapshots-worker@.service", "snapshots-host-worker.service"])
def test_worker_unit_signals_the_main_process_once_and_restarts_after_an_oom_kill(
    unit: str,
) -> None:
    service = _unit(unit)
    assert service["KillMode"] == "mixed"
    assert service["OOMPolicy"] == "stop"


def test_heroku_manifest_binds_every_interface_and_says_what_restarts() -> None:
    app = json.loads((DEPLOY / "app.json").read_text())
    assert set(app["formation"]) == set(PROCFILE) - {"release"}
    assert app["env"]["HOST"]["value"] == "0.0.0.0"
    assert "restarts" in app["description"]


def test_a_fleet_host_worker_reads_its_host_and_refuses_to_start_without_one() -> None:
    service = _unit("snapshots-host-worker.service")
    host_env = DEPLOY / "host.env.example"
    assert "/etc/snapshots/host.env" in service["EnvironmentFile"]
    assert "SNAPSHOTS_HOST" in service["ExecStartPre"]
    values = dict(
        line.split("=", 1) for line in host_env.read_text().splitlines()
        if line and not line.startswith("#")
    )
    from shared.settings import Settings

    assert Settings.from_env(values).worker_host == values["SNAPSHOTS_HOST"]


def _env_file(name: str) -> dict[str, str]:
    lines = (DEPLOY / name).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.mark.parametrize(("unit", "env_files"), [
    ("snapshots-web.service", ["env.example"]),
    ("snapshots-worker@.service", ["env.example"]),
    ("snapshots-web.service", ["fleet.env.example"]),
    ("snapshots-host-worker.service", ["fleet.env.example", "host.env.example"]),
])
def test_the_example_environments_set_every_variable_their_units_expand(
    unit: str, env_files: list[str]
) -> None:
    """systemd expands an unset ${VAR} to nothing: `--host ${HOST}` would lose its value."""
    env: dict[str, str] = {}
    for name in env_files:
        env.update(_env_file(name))
    used = {w[1:] for w in _words(_unit(unit)["ExecStart"]) if w.startswith("$")}
    assert used and not used - set(env), f"{unit} expands {sorted(used - set(env))}, unset"


def test_the_fleet_environment_is_a_fleet_host_on_s3() -> None:
    from shared.settings import Settings

    settings = Settings.from_env({**_env_file("fleet.env.example"),
                                  **_env_file("host.env.example")})
    assert settings.on_s3 and settings.deletes_anywhere and settings.aws_access_key_id
    assert settings.worker_host == "hv-01" and settings.host == "0.0.0.0"
