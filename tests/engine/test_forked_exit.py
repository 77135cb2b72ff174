"""A forked operation's child that sent its outcome is waited for as it exits, not
signalled: its end of the socket closes before it can be reaped, and the parent often found
it still running there, sent it SIGTERM and slept 0.05 s (a one-file incremental through the
service: ~0.05 s of its ~0.15 s)."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from workers.engine import forked
from workers.engine.forked import ForkingEngine
from workers.engine.workerproc.frames import pack

LINGER = 0.3  # seconds the child takes to exit after closing its socket


def test_a_child_exiting_after_its_outcome_is_waited_for_not_terminated(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    marker = tmp_path / "sigterm"

    def child(sock: socket.socket, _parent: int, _run: Any, _progress: bool,
              _stop: bool) -> None:
        def terminated(_sig: int, _frame: object) -> None:
            marker.write_text("SIGTERM")
            os._exit(1)

        signal.signal(signal.SIGTERM, terminated)
        sock.sendall(pack(pickle.dumps(("ok", "captured", []))))
        sock.close()  # the parent sees the end here, before this process has exited
        time.sleep(LINGER)

    monkeypatch.setattr(forked, "_child", child)
    engine = ForkingEngine(f"file://{tmp_path / 'repo'}")
    t0 = time.monotonic()
    assert engine._forked(lambda _e, _p, _s: None, None, None) == "captured"
    assert not marker.exists()  # SIGTERM'd while exiting before
    assert time.monotonic() - t0 >= LINGER  # and reaped, not left behind


def test_a_child_still_running_when_the_parent_is_interrupted_is_still_terminated(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    marker = tmp_path / "sigterm"

    def child(sock: socket.socket, _parent: int, _run: Any, _progress: bool,
              _stop: bool) -> None:
        def terminated(_sig: int, _frame: object) -> None:
            marker.write_text("SIGTERM")
            os._exit(1)

        signal.signal(signal.SIGTERM, terminated)
        sock.sendall(pack(pickle.dumps(("progress", 1, 2))))
        time.sleep(30)

    def progress(_done: int, _total: int) -> None:
        raise KeyboardInterrupt  # the worker's thread interrupted mid-operation

    monkeypatch.setattr(forked, "_child", child)
    engine = ForkingEngine(f"file://{tmp_path / 'repo'}")
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        engine._forked(lambda _e, _p, _s: None, progress, None)
    assert marker.read_text() == "SIGTERM" and time.monotonic() - t0 < 10
