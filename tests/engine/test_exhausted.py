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
