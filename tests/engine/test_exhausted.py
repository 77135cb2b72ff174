"""A capture that runs out of file descriptors fails to be retried; it never commits a
snapshot without the files it could not open (those are dropped only when the tenant
removed or swapped them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# In a process of its own: the descriptor limit is set just above what it holds, so the
# walk (one descriptor per directory level) runs out of them part of the way down.
_CAPTURE_SHORT_OF_DESCRIPTORS = """
import os, resource, sys
from tests.engine.conftest import dir_state, make_meta
from workers.engine import Engine, TransientEngineError
engine = Engine(sys.argv[1])
held = len(os.listdir("/proc/self/fd"))
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (held + 40, hard))
try:
    result = engine.capture(make_meta(1), dir_state(sys.argv[2]))
    print("available", result.files, result.warnings)
except TransientEngineError as e:
    print("transient", e)
    print("committed" if engine.get_snapshot(1) is not None else "nothing committed")
"""


def test_a_capture_out_of_descriptors_is_retried_not_committed_without_files(
        tmp_path: Path) -> None:
    d = tmp_path / "src"
    for i in range(80):
        d = d / f"d{i}"
    d.mkdir(parents=True)
    (d / "leaf").write_text("the deepest file\n")
    out = subprocess.run(
        [sys.executable, "-c", _CAPTURE_SHORT_OF_DESCRIPTORS, f"file://{tmp_path / 'repo'}",
         str(tmp_path / "src")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()
    assert lines and lines[0].startswith("transient"), (out.stdout, out.stderr[-2000:])
    assert "Too many open files" in lines[0]
    assert lines[1] == "nothing committed"


def test_reader_processes_out_of_descriptors_fail_the_capture_not_drop_files(
        tmp_path: Path) -> None:
    """The reader processes (a capture of more than 64 MiB) open a few queued requests'
    files at once: those they cannot open for want of descriptors are not "gone"."""
    src = tmp_path / "src"
    block = bytes(range(256)) * 800  # 200 KiB, the same in each file: stored once
    for d in range(6):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(64):
            (src / f"d{d}" / f"f{i}").write_bytes(block + b"%d/%d" % (d, i))
    out = subprocess.run(
        [sys.executable, "-c", _CAPTURE_SHORT_OF_DESCRIPTORS.replace("held + 40", "held + 90"),
         f"file://{tmp_path / 'repo'}", str(src)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()
    assert lines and lines[0].startswith("transient"), (out.stdout, out.stderr[-2000:])
    assert lines[1] == "nothing committed"


# A stopped server's restore patches a state where few files differ (patch.py): the patch
# made every new file first and wrote them after, one descriptor held per file, so a patch
# of more files than the process may open (up to entries / PATCH_FRACTION: a million-entry
# state 200,000) failed with EMFILE, every attempt alike.
_PATCH_SHORT_OF_DESCRIPTORS = """
import os, resource, sys
from tests.engine.conftest import dir_state, make_meta
from workers.engine import Engine
engine, src = Engine(sys.argv[1]), sys.argv[2]
os.mkdir(src)
for i in range(600):
    with open(f"{src}/f{i}", "wb") as f:
        f.write(b"snapshot %d\\n" % i)
engine.capture(make_meta(1), dir_state(src))
for i in range(110):  # within the patch's limit (600 / 5)
    with open(f"{src}/f{i}", "wb") as f:
        f.write(b"changed since\\n")
root = os.stat(src).st_ino
held = len(os.listdir("/proc/self/fd"))
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (held + 100, hard))
try:
    r = engine.restore(1, dir_state(src))
except OSError as e:
    print("failed", e)
else:
    print("restored", r.files_written, r.files_reused,
          "patched" if os.stat(src).st_ino == root else "rebuilt")
"""


def test_a_patch_of_more_files_than_the_process_may_open_restores(tmp_path: Path) -> None:
    src = tmp_path / "srv"
    out = subprocess.run(
        [sys.executable, "-c", _PATCH_SHORT_OF_DESCRIPTORS, f"file://{tmp_path / 'repo'}",
         str(src)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines() == ["restored 110 490 patched"], (out.stdout,
                                                                     out.stderr[-2000:])
    for i in range(600):
        assert (src / f"f{i}").read_bytes() == b"snapshot %d\n" % i


# ... nor may it hold a descriptor for every directory it changes: one per directory, the
# patch's renames (and the undo of a patch that failed, which every later operation of the
# server runs first) ran out of them too, the failed patch left half undone.
_PATCH_MANY_DIRECTORIES = """
import errno, os, resource, sys
from tests.engine.conftest import dir_state, make_meta
from workers.engine import Engine
from workers.engine.restore import patch
engine, src = Engine(sys.argv[1]), sys.argv[2]
os.mkdir(src)
for d in range(150):
    os.mkdir(f"{src}/d{d}")
    for i in range(4):
        with open(f"{src}/d{d}/f{i}", "wb") as f:
            f.write(b"snapshot\\n")
engine.capture(make_meta(1), dir_state(src))

def tree():
    return {p: open(f"{src}/{p}", "rb").read() for p in (f"d{d}/f{i}" for d in range(150)
                                                          for i in range(4))}

def change():
    for d in range(110):  # in 110 directories: within the patch's limit (751 / 5)
        with open(f"{src}/d{d}/f0", "wb") as f:
            f.write(b"changed since\\n")
    return tree()

change()
root = os.stat(src).st_ino
held = len(os.listdir("/proc/self/fd"))
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (held + 100, hard))
try:
    r = engine.restore(1, dir_state(src))
except OSError as e:
    print("failed", e)
else:
    print("restored", r.files_written, r.files_reused,
          "patched" if os.stat(src).st_ino == root else "rebuilt")
    print("snapshot" if set(tree().values()) == {b"snapshot\\n"} else "not the snapshot")
old = change()
durable = patch.fsutil.create_durable

def no_commit_mark(dfd, name, data):
    if name == patch.COMMITTED:
        raise OSError(errno.EIO, "the commit mark failed")
    durable(dfd, name, data)

patch.fsutil.create_durable = no_commit_mark
undo = patch.undo

def undone(parent_fd, base):
    undo(parent_fd, base)
    print("undone" if tree() == old else "not undone")

patch.undo = undone
try:
    engine.restore(1, dir_state(src))  # the patch undone, then rebuilt
except OSError as e:
    print("failed", e)
else:
    print("snapshot" if set(tree().values()) == {b"snapshot\\n"} else "not the snapshot")
print(sorted(os.listdir(os.path.dirname(src))))
"""


def test_a_patch_of_more_directories_than_the_process_may_open_restores_or_is_undone(
        tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PATCH_MANY_DIRECTORIES, f"file://{tmp_path / 'repo'}",
         str(tmp_path / "srv")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines() == [
        "restored 110 490 patched", "snapshot", "undone", "snapshot", "['repo', 'srv']"], (
            out.stdout, out.stderr[-2000:])
