"""What an operation loads: a fresh process (the CLI, bench/engine_op.py, a worker's first
job) pays for every module it imports, so a capture with nothing to recover imports none
of the restore side's patch and removal modules, nor the image package for a directory,
and a restore that starts no writer processes imports none of their plumbing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import json, sys
from workers.engine import Engine, SnapshotMeta, StateSpec
meta = lambda i: SnapshotMeta(snapshot_id=i, server_id=1, server_name="web-01",
                              account="acme", name=f"s{i}", description=None,
                              created_at="2026-01-01T00:00:00Z")
engine = Engine("file://" + sys.argv[1])
state = StateSpec(kind="directory", path=sys.argv[2])
if sys.argv[4] == "capture":
    engine.capture(meta(int(sys.argv[3])), state)
else:
    engine.restore(int(sys.argv[3]), state)
print(json.dumps(sorted(sys.modules)))
"""

# modules a capture with nothing to recover has no use for (restore/recovery itself is
# imported: it lists the state's parent for leftovers)
NOT_NEEDED = ["workers.engine.restore.patchjournal", "workers.engine.restore.patchplan",
              "workers.engine.restore.reuse", "workers.engine.fs.removal",
              "workers.engine.image.image", "tempfile", "secrets"]


# nor a restore without writer processes (a patch, or a small rebuild) these
NOT_NEEDED_BY_RESTORE = ["workers.engine.restore.writerpool", "workers.engine.workerproc.process",
                         "subprocess", "socket", "selectors", "secrets"]

# nor a patch (no big file, a few reads) the big-file pipeline, O_DIRECT, the read-ahead,
# the writers' split and the rebuild's swap and flusher
NOT_NEEDED_BY_A_PATCH = ["workers.engine.blocks.pipeline", "workers.engine.fs.directio",
                         "workers.engine.repository.packfetch", "workers.engine.restore.shares",
                         "workers.engine.restore.staging"]


def _modules(repo: Path, state: Path, sid: int, op: str = "capture") -> set[str]:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(repo), str(state), str(sid), op],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


_capture_modules = _modules


def test_capture_imports_no_restore_or_image_module_when_nothing_to_recover(
        tmp_path: Path) -> None:
    state = tmp_path / "srv"
    (state / "etc").mkdir(parents=True)
    (state / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    repo = tmp_path / "repo"
    for sid in (1, 2):  # full, then incremental
        loaded = _capture_modules(repo, state, sid)
        assert "workers.engine.capture.archiver" in loaded
        assert loaded.isdisjoint(NOT_NEEDED), sorted(loaded & set(NOT_NEEDED))


def test_capture_with_a_leftover_still_recovers_it(tmp_path: Path) -> None:
    state = tmp_path / "srv"
    state.mkdir()
    (state / "f").write_text("x")
    leftover = tmp_path / ".srv.restore-77"  # a killed rebuild's staging tree
    (leftover / "sub").mkdir(parents=True)
    loaded = _capture_modules(tmp_path / "repo", state, 1)
    assert not leftover.exists()
    assert "workers.engine.fs.removal" in loaded


def test_restore_without_writer_processes_imports_none_of_their_plumbing(
        tmp_path: Path) -> None:
    state = tmp_path / "srv"
    (state / "etc").mkdir(parents=True)
    for i in range(20):
        (state / "etc" / f"f{i}").write_text(f"file {i}\n")
    repo = tmp_path / "repo"
    _modules(repo, state, 1)
    (state / "etc" / "f3").write_text("changed\n")  # a patch restore
    (state / "etc" / "f4").unlink()
    loaded = _modules(repo, state, 1, "restore")
    assert (state / "etc" / "f3").read_text() == "file 3\n" and (state / "etc" / "f4").exists()
    assert "workers.engine.restore.patch" in loaded
    assert loaded.isdisjoint(NOT_NEEDED_BY_RESTORE), sorted(loaded & set(NOT_NEEDED_BY_RESTORE))
    assert loaded.isdisjoint(NOT_NEEDED_BY_A_PATCH), sorted(loaded & set(NOT_NEEDED_BY_A_PATCH))
    other = tmp_path / "clone"  # a rebuild into a new state, below the processes' threshold
    loaded = _modules(repo, other, 1, "restore")
    assert (other / "etc" / "f3").read_text() == "file 3\n"
    assert loaded.isdisjoint(NOT_NEEDED_BY_RESTORE), sorted(loaded & set(NOT_NEEDED_BY_RESTORE))
