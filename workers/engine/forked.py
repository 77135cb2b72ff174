"""Each capture and restore in a process of its own, forked for it and gone when it ends.

A capture or restore of a million files allocates and frees hundreds of MB of small
objects. In a long-lived worker process the C allocator keeps most of it afterwards
(fragmentation: after a 300,000-file capture an idle worker held 143 MiB of PSS, 31 MiB
before, with gc and malloc_trim run and ~27 MiB of live objects), and the next operation's
peak starts from there. A forked child gives all of it back when it exits, so the worker
between operations stays at its start-up size and each operation's peak is its own.

The child runs the operation on an Engine of its own (a fresh backend: no lock, socket or
cache another thread of the parent may hold at the fork) and sends back its progress and
its result or error over a socket pair; the parent relays progress, polls should_stop and
tells the child to stop. Faults are those of a worker: the child dies with its parent
(PR_SET_PDEATHSIG), so a killed worker leaves no capture running; a child that dies (OOM
killer, SIGKILL) is a TransientEngineError in the parent, retried like a killed reader
process; a parent interrupted (Dramatiq's Shutdown) stops the child with SIGTERM, which
unwinds its operation as the exception did in-process, and SIGKILL after a grace time.
The child's reader or writer processes are forks of a zygote it forks at its start
(workerproc/zygote.py), sharing the worker's interpreter and imported modules, not fresh
interpreters. What the child's janitor thread had still to remove when it ended (the
old tree a restore sets aside to remove in the background) is handed to the parent's
janitor.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import pickle
import select
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar, cast

from . import tuning
from .engine import WORKER_MODULES, Engine
from .fs.removal import janitor
from .model import (
    Cancelled,
    CaptureResult,
    ProgressFn,
    RestoreResult,
    SnapshotMeta,
    StateSpec,
    StorageOptions,
    TransientEngineError,
)
from .repository.backend import LocalBackend
from .workerproc import child, zygote
from .workerproc.frames import FrameBuffer, pack

log = logging.getLogger(__name__)

T = TypeVar("T")

# What every restore's child imported for itself (the engine imports them on first use):
# -X importtime in a child after WORKER_MODULES, load ~10: the restorer with the patch's
# modules 102 ms (dataclasses alone 21 ms warm), writerpool 10, shares 10.5, the block
# pipeline 3.3; more on a cold page cache, where bench/service.py's cold restores run.
RESTORE_MODULES = ("workers.engine.restore.restorer", "workers.engine.restore.staging",
                   "workers.engine.restore.writerpool", "workers.engine.restore.shares",
                   "workers.engine.blocks.pipeline")
_STOP = b"s"


class Interrupted(BaseException):
    """Raised in a child by SIGTERM: its operation unwinds (closing its worker processes
    and locks) as it did in-process when the worker's shutdown interrupted it."""


class ForkingEngine(Engine):
    """The engine of a worker: capture and restore each run in a fresh child process, on a
    file:// repository. On s3:// they run in-process as before: the S3 client (obstore)
    runs its requests on a runtime of threads started once per process, which a forked
    child inherits without its threads (its first request would wait forever); a spawned
    interpreter would do instead, at ~0.2 s and an interpreter's memory per operation."""

    def __init__(self, storage_url: str, options: StorageOptions | None = None) -> None:
        super().__init__(storage_url, options)
        if self._forks():
            # imported here once, so that each operation's zygote (see _child) and its
            # forks share these modules' pages with this process instead of importing them
            for name in (*WORKER_MODULES, *RESTORE_MODULES):
                importlib.import_module(name)

    def _forks(self) -> bool:
        return isinstance(self.backend, LocalBackend)

    def capture(self, meta: SnapshotMeta, state: StateSpec, *, progress: ProgressFn | None = None,
                should_stop: Callable[[], bool] | None = None) -> CaptureResult:
        if not self._forks():
            return super().capture(meta, state, progress=progress, should_stop=should_stop)
        def op(e: Engine, prog: ProgressFn | None,
               stop: Callable[[], bool] | None) -> tuple[CaptureResult, int]:
            return e.capture(meta, state, progress=prog, should_stop=stop), e.last_bytes_read

        try:
            result, self.last_bytes_read = self._forked(op, progress, should_stop)
        except Cancelled:
            # A child ended after it committed (stuck before it could say so): the
            # snapshot is there, and the caller must know it (it deletes a snapshot that
            # was deleted meanwhile), as when a capture in-process returns after its commit
            done = self._committed_result(meta.snapshot_id)
            if done is None:
                raise
            return done
        return result

    def restore(self, snapshot_id: int, state: StateSpec, *,
                progress: ProgressFn | None = None, live: bool = False,
                should_stop: Callable[[], bool] | None = None) -> RestoreResult:
        if not self._forks():
            return super().restore(snapshot_id, state, progress=progress, live=live,
                                   should_stop=should_stop)

        def op(e: Engine, prog: ProgressFn | None,
               stop: Callable[[], bool] | None) -> tuple[RestoreResult, int]:
            return (e.restore(snapshot_id, state, progress=prog, live=live, should_stop=stop),
                    e.last_bytes_read)

        result, self.last_bytes_read = self._forked(op, progress, should_stop)
        return result

    def _forked(self, op: Callable[[Engine, ProgressFn | None, Callable[[], bool] | None], T],
                progress: ProgressFn | None, should_stop: Callable[[], bool] | None) -> T:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent = os.getpid()
        child.prctl()  # looked up here: the child, a copy of one thread, looks up no symbol
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 70
            try:
                ours.close()
                _child(theirs, parent, lambda prog, stop: op(
                    Engine(self.storage_url, self.options), prog, stop),
                       progress is not None, should_stop is not None)
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        leftovers: list[tuple[str, bytes]] = []
        exiting = False
        try:
            result = _relay(ours, pid, progress, should_stop, leftovers)
            exiting = True  # its outcome came and its end of the socket closed
            return cast(T, result)
        finally:
            ours.close()
            _reap(pid, exiting)
            # Trees the child's janitor had still to remove (a restore's old tree, removed
            # in the background): this process's janitor takes them on, the child gone.
            for parent_path, name in leftovers:
                janitor.schedule(parent_path, name, delay=0.0)


# --- the parent's side ------------------------------------------------------------------

def _relay(sock: socket.socket, pid: int, progress: ProgressFn | None,
           should_stop: Callable[[], bool] | None, leftovers: list[tuple[str, bytes]]) -> Any:
    frames = FrameBuffer()
    outcome: tuple[Any, ...] | None = None
    asked_stop: float | None = None  # when the child was asked to stop (time.monotonic())
    while True:
        ready, _w, _x = select.select([sock], [], [], tuning.FORKED_POLL)
        if ready:
            try:
                data = sock.recv(1 << 16)
            except ConnectionResetError:
                # its end, with our stop request unread (it came as the child ended): the
                # kernel resets a socket closed with unread data instead of closing it
                data = b""
            if not data:
                break
            for frame in frames.feed(data):
                msg = pickle.loads(frame)
                if msg[0] == "progress" and progress is not None:
                    progress(msg[1], msg[2])
                elif msg[0] != "progress":
                    outcome = msg
        if should_stop is not None and asked_stop is None and should_stop():
            asked_stop = time.monotonic()
            with contextlib.suppress(OSError):
                sock.sendall(_STOP)
        elif asked_stop is not None and time.monotonic() - asked_stop > tuning.FORKED_STOP_GRACE:
            # a child that does not stop (stuck: a lock another thread of the worker held at
            # the fork) would hold this thread and the repository's lock for good: _reap
            # ends it (SIGTERM, then SIGKILL), as a deleted capture ends in-process
            if outcome is not None:
                break  # its outcome came, only not its end
            raise Cancelled(f"stopped on request: its process did not stop within "
                            f"{tuning.FORKED_STOP_GRACE:g} s and was killed")
    if outcome is None:
        raise TransientEngineError(f"the operation's process died ({_exit_status(pid)})")
    leftovers += outcome[-1]
    if outcome[0] == "ok":
        return outcome[1]
    exc: BaseException = outcome[1]
    if isinstance(exc, Interrupted):
        raise TransientEngineError("the operation's process was stopped (SIGTERM)")
    raise exc


def _exit_status(pid: int) -> str:
    """How the child ended (waited for here; _reap then finds it gone)."""
    try:
        _pid, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "already reaped"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _ended(pid: int) -> bool:
    """True once the child has exited (reaped now) or was reaped before."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done != 0


def _exited_within(pid: int, seconds: float) -> bool:
    """Wait up to `seconds` for the child to exit (a pidfd is readable once it has);
    True once it has exited (reaped now) or was reaped before."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return _ended(pid)
    except OSError:  # no pidfd here (Linux < 5.3): poll
        deadline = time.monotonic() + seconds
        while not _ended(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True
    try:
        select.select([fd], [], [], seconds)
    finally:
        os.close(fd)
    return _ended(pid)


def _reap(pid: int, exiting: bool = False) -> None:
    """Wait for the child. One that sent its outcome and closed its end of the socket is
    exiting: waited for (up to tuning.FORKED_STOP_GRACE), not signalled: its socket closes
    before it is reaped, so the parent often found it still running there, sent it SIGTERM
    and slept 0.05 s (a one-file incremental through the service: 0.05 s of its ~0.15).
    One still running (the parent was interrupted) is asked to stop (SIGTERM), then killed
    after tuning.FORKED_STOP_GRACE seconds."""
    if _ended(pid) or (exiting and _exited_within(pid, tuning.FORKED_STOP_GRACE)):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + tuning.FORKED_STOP_GRACE
    while time.monotonic() < deadline:
        if _ended(pid):
            return
        time.sleep(0.05)
    log.warning("the operation's process %s did not stop within %.0f s: killed", pid,
                tuning.FORKED_STOP_GRACE)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


# --- the child's side -------------------------------------------------------------------

def _child(sock: socket.socket, parent: int,
           run: Callable[[ProgressFn | None, Callable[[], bool] | None], Any],
           wants_progress: bool, wants_stop: bool) -> None:
    # Every object inherited from the worker goes to the collector's permanent generation,
    # never traversed here: a collection writes into each object it traverses, and so
    # copied the worker's heap pages the child shares (import workers.actors, fork,
    # gc.collect(): the child's private dirty memory 12 MiB, 1 MiB frozen first).
    gc.freeze()
    child.die_with(parent)  # when the thread that forked it (its worker) dies
    _on_signals()
    child.release_inherited({sock.fileno()})
    # The operation's reader or writer processes are forks of a zygote of this child,
    # forked now while it is one thread (after, its threads' locks would be held in the
    # forks): each shares the interpreter and modules it inherited from the worker
    # instead of starting one (~65 ms of CPU and ~11 MiB of PSS each as `python -c`).
    with contextlib.suppress(OSError):  # no fork now: they are spawned, as before
        zygote.start(WORKER_MODULES)
    send_lock = threading.Lock()

    def send(msg: tuple[Any, ...]) -> None:
        data = pack(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
        with send_lock:
            sock.sendall(data)

    stop = threading.Event()

    def listen() -> None:  # the parent's stop request, or its end (EOF)
        with contextlib.suppress(OSError):
            sock.recv(1)
        stop.set()

    if wants_stop:
        threading.Thread(target=listen, name="stop-listener", daemon=True).start()
    try:
        result = run((lambda done, total: send(("progress", done, total)))
                     if wants_progress else None, stop.is_set if wants_stop else None)
        msg: tuple[Any, ...] = ("ok", result, janitor.pending())
    except BaseException as exc:  # every error goes to the parent, which raises it
        msg = ("error", exc, traceback.format_exc(), janitor.pending())
    try:
        send(msg)
    except (pickle.PicklingError, TypeError, AttributeError):
        send(("error", TransientEngineError(f"the operation failed: {msg[1]!r}"), msg[2],
              msg[-1]))


def _on_signals() -> None:
    """The handlers Dramatiq gave its worker process mean nothing here: SIGTERM (from the
    parent, or to the whole process group) unwinds the operation; SIGINT and SIGHUP are the
    parent's to handle (it then stops this child)."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise Interrupted()

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
