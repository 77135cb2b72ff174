"""deploy/supervisor.py on its own: the back-off of a process that keeps dying, the
others left alone, the ordered stop, and what the loop costs while nothing happens.
(Under a real `make run`, with the service's own processes: tests/faults/test_make_run.py.)
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import pytest

from deploy.run import output_for
from deploy.supervisor import BACKOFF_FIRST, Program, Supervisor


def _supervisor(tmp_path: Path, *programs: Program) -> tuple[Supervisor, list[tuple[str, str]]]:
    lines: list[tuple[str, str]] = []
    sup = Supervisor(list(programs), dict(os.environ), str(tmp_path),
                     lambda name, line: lines.append((name, line)))
    return sup, lines


def _loop(sup: Supervisor, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sup.check(time.monotonic())
        time.sleep(0.05)


def test_a_crashing_process_restarts_with_a_growing_backoff_and_the_others_run_on(
    tmp_path: Path,
) -> None:
    sup, lines = _supervisor(
        tmp_path,
        Program("steady", "sleep 60"),
        Program("crashy", "sh -c 'echo up; exit 3'"),
    )
    for child in sup.children:
        sup.start(child)
    steady = sup.children[0].proc
    assert steady is not None
    _loop(sup, 2.2)  # crashes at ~0, ~0.5, ~1.5 s; the next start is due at ~3.5 s
    crashy = sup.children[1]
    assert crashy.restarts == 2
    assert crashy.backoff == BACKOFF_FIRST * 8
    assert sup.children[0].proc is steady and steady.poll() is None
    assert [line for name, line in lines if name == "crashy"] == ["up"] * 3
    sup.stop_all()
    assert steady.poll() is not None


def test_stop_goes_tier_by_tier_and_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    order = tmp_path / "order"
    sup, _ = _supervisor(
        tmp_path,
        Program("store", f"sh -c 'trap \"echo store >> {order}; exit 0\" TERM; "
                         "while :; do sleep 0.1; done'", tier=0),
        Program("app", f"sh -c 'trap \"echo app >> {order}; exit 0\" TERM; "
                       "while :; do sleep 0.1; done'", tier=1),
        Program("stubborn", "sh -c 'trap \"\" TERM; while :; do sleep 0.1; done'",
                tier=1, stop_timeout=1.0),
    )
    for child in sup.children:
        sup.start(child)
    time.sleep(0.3)  # the traps are set
    started = time.monotonic()
    sup.stop_all()
    assert 1.0 <= time.monotonic() - started < 5
    assert order.read_text().split() == ["app", "store"]
    assert all(c.proc is None for c in sup.children)


def test_the_watch_loop_costs_under_one_percent_of_a_core(tmp_path: Path) -> None:
    sup, _ = _supervisor(tmp_path, Program("steady", "sleep 60"))
    sup.start(sup.children[0])
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    end = started + 3
    while time.monotonic() < end:  # the run() loop's own cadence
        sup.check(time.monotonic())
        time.sleep(0.2)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    sup.stop_all()
    assert cpu / (time.monotonic() - started) < 0.01, cpu


def test_json_output_stays_one_object_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Under `make run` with LOG_FORMAT=json, a child's line that is not JSON already
    (Dramatiq's main process, a crash report) is wrapped, the others pass unchanged."""
    write = output_for("json")
    write("worker", "[2026-12-01 09:00:00] [PID 1] [dramatiq.MainProcess] [INFO] booting")
    write("web", '{"level": "INFO", "message": "hi", "request_id": "r1"}')
    lines = capsys.readouterr().out.splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["logger"] == "worker" and "booting" in first["message"]
    assert second == {"level": "INFO", "message": "hi", "request_id": "r1"}
    output_for("text")("web", "hello")
    assert capsys.readouterr().out == "web    | hello\n"
