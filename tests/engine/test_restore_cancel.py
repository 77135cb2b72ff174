"""A cancelled (or deadline-ended) restore stops in its passes over the tree too, not only
while it writes: the tree check and the patch's plan of a million entries take seconds, and
the patch wrote its few changes without ever asking."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from workers.engine import Cancelled, Engine, tuning
from workers.engine.repository import manifest, treecheck
from workers.engine.restore import restorer

from .conftest import dir_state, make_meta


def _tree(root: Path, files: int) -> None:
    root.mkdir()
    for i in range(files):
        (root / f"f{i:05}").write_bytes(b"%d" % i)


def test_a_cancelled_restore_stops_within_its_tree_check(engine: Engine,
                                                         tmp_path: Path) -> None:
    """A manifest malformed at its very end: a restore asked to stop from the start is
    Cancelled before its check gets there (it once checked every entry first, and failed
    snapshot_corrupt)."""
    src = tmp_path / "srv"
    _tree(src, 3 * tuning.POLL_ENTRIES)
    engine.capture(make_meta(1), dir_state(src))
    path = Path(engine.repo.backend.root) / "snapshots" / "1"  # type: ignore[attr-defined]
    header, body = manifest.decode(path.read_bytes())
    assert isinstance(body, manifest.DirBody)
    orphan = msgspec.structs.replace(body.entries[-1], path=b"link", kind=manifest.HARDLINK,
                                     target=b"no-such-file")
    path.write_bytes(manifest.encode(header, manifest.DirBody([*body.entries, orphan])))

    target = tmp_path / "target"
    with pytest.raises(Cancelled):
        engine.restore(1, dir_state(target), should_stop=lambda: True)
    assert not target.exists()


def test_a_cancelled_patch_stops_in_its_plan_and_changes_nothing(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked to stop once its tree check passed: Cancelled while it plans, the current
    tree as it was. A patch that wrote no file (a directory's mode to put back) once ran to
    its end regardless, and reported success."""
    src = tmp_path / "srv"
    _tree(src, 3 * tuning.POLL_ENTRIES)
    (src / "sub").mkdir(mode=0o755)
    engine.capture(make_meta(1), dir_state(src))
    os.chmod(src / "sub", 0o700)
    monkeypatch.setattr(tuning, "PROGRESS_INTERVAL", 0.0)  # every poll asks should_stop
    checked: list[treecheck.TreeTotals] = []

    def check_then_stop(*args: Any) -> treecheck.TreeTotals:
        checked.append(treecheck.check_tree(*args))
        return checked[-1]

    monkeypatch.setattr(restorer, "check_tree", check_then_stop)
    with pytest.raises(Cancelled):
        engine.restore(1, dir_state(src), should_stop=lambda: bool(checked))
    assert checked  # stopped after the check, not in it
    assert (src / "sub").stat().st_mode & 0o777 == 0o700
    assert engine.restore(1, dir_state(src)).files_written == 0  # what it would have done
    assert (src / "sub").stat().st_mode & 0o777 == 0o755
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".srv")]  # no leftovers
