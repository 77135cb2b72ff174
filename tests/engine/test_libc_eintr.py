"""A signal during a blocking libc call made through ctypes (fs/libc.py) does not fail the
call: it is retried as os functions retry (PEP 475), the Python handler runs between the
tries, and an exception the handler raises propagates (a shutdown still stops it)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from workers.engine.fs import fsutil, libc


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


@contextlib.contextmanager
def _interrupted(handler: Callable[[int, object], None], until: Callable[[], bool],
                 then: Callable[[], object]) -> Iterator[None]:
    """`handler` on SIGUSR1 while a thread sends it to this (the main) thread, not to any
    thread of the process, every 10 ms until `until()`, then calls `then`; the handler
    stays until that thread has stopped (a SIGUSR1 unhandled would end the process)."""
    main, stop = threading.get_ident(), threading.Event()

    def run() -> None:
        deadline = time.monotonic() + 10
        while not until() and not stop.is_set() and time.monotonic() < deadline:
            signal.pthread_kill(main, signal.SIGUSR1)
            time.sleep(0.01)
        then()

    old = signal.signal(signal.SIGUSR1, handler)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        signal.signal(signal.SIGUSR1, old)


def _blocking_read(answers: list[int]) -> Callable[..., int]:
    """libc read(2), recording what each try answered."""
    read = libc.function("read")
    assert read is not None

    def counted(*args: Any) -> int:
        ret = read(*args)
        answers.append(ret)
        return ret

    return counted


def test_a_call_interrupted_by_signals_is_retried_until_it_completes(
    pipe: tuple[int, int],
) -> None:
    r, w = pipe
    handled: list[int] = []
    answers: list[int] = []
    buf = ctypes.create_string_buffer(1)
    # the data comes only once a try was interrupted (answered -1, EINTR)
    with _interrupted(lambda signum, _frame: handled.append(signum),
                      lambda: -1 in answers, lambda: os.write(w, b"x")):
        got = libc.call(_blocking_read(answers), ctypes.c_int(r), buf, ctypes.c_size_t(1))
    assert got == 1 and buf.raw == b"x"
    assert -1 in answers and answers[-1] == 1  # interrupted at least once, then done
    assert handled  # the handler ran between the tries


class _Shutdown(Exception):
    pass


def test_what_the_signal_handler_raises_ends_the_call(pipe: tuple[int, int]) -> None:
    r, _w = pipe
    answers: list[int] = []
    raised: list[bool] = []

    def shutdown(_signum: int, _frame: object) -> None:
        if -1 in answers and not raised:  # once, and only once a try was interrupted
            raised.append(True)
            raise _Shutdown

    buf = ctypes.create_string_buffer(1)
    with _interrupted(shutdown, lambda: bool(raised), lambda: None), \
            pytest.raises(_Shutdown):
        libc.call(_blocking_read(answers), ctypes.c_int(r), buf, ctypes.c_size_t(1))
    assert answers == [-1]  # not tried again once the handler raised


def test_fsutil_calls_go_on_under_a_storm_of_signals(tmp_path: os.PathLike[str]) -> None:
    """renameat2 and fallocate, thousands of times with a signal every 100 µs: none fails
    (on a local filesystem they rarely block long enough to be interrupted; over FUSE or
    NFS they may, and the first test shows what then happens)."""
    handled: list[int] = []
    old = signal.signal(signal.SIGALRM, lambda signum, _frame: handled.append(signum))
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fd = os.open(os.path.join(tmp_path, "a"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"\1" * (1 << 20), 0)
        signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
        for i in range(2000):
            fsutil.renameat2(dir_fd, b"a" if i % 2 == 0 else b"b", dir_fd,
                             b"b" if i % 2 == 0 else b"a", fsutil.RENAME_NOREPLACE)
            fsutil.punch_hole(fd, (i % 256) * 4096, 4096)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
        os.close(fd)
        os.close(dir_fd)
    assert handled
    assert os.listdir(tmp_path) == ["a"]
