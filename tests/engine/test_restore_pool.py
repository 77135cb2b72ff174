"""A big restore's writer processes share the work: one that finished its share takes over
the rest of another's (file:// and s3://)."""

from __future__ import annotations

from array import array
from pathlib import Path

import pytest

from workers.engine import Engine, tuning
from workers.engine.restore import shares, writerpool

from .conftest import BOTH_BACKENDS, dir_state, make_meta
from .treecmp import assert_same

pytestmark = BOTH_BACKENDS


def test_a_writer_done_first_takes_over_half_of_what_another_has_left(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    """The cost estimate that splits the files is badly off here (every file but two to
    the first writer): the second finishes at once and takes the second half of the first
    one's rest, and so on while a half is worth it; every file is written once."""
    src = tmp_path / "srv"
    for d in range(10):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(200):
            (src / f"d{d}" / f"f{i:03}").write_bytes(b"%d %d " % (d, i) * (1 + i % 50))
    engine.capture(make_meta(1), dir_state(src))
    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    monkeypatch.setattr(tuning, "RESTORE_PROCESSES", 2)

    def lopsided(self: shares.Files, n: int) -> list[array[int]]:
        return [self.indexes[:-2], self.indexes[-2:]]

    monkeypatch.setattr(shares.Files, "split", lopsided)
    pools: list[writerpool.RestorePool] = []
    start = writerpool.start_pool

    def kept(*args: object) -> writerpool.RestorePool | None:
        pool = start(*args)  # type: ignore[arg-type]
        assert pool is not None
        pools.append(pool)
        return pool

    monkeypatch.setattr(writerpool, "start_pool", kept)
    dst = tmp_path / "out"
    result = engine.restore(1, dir_state(dst))
    assert_same(src, dst)
    assert len(pools) == 1 and pools[0].steals >= 1, [p.steals for p in pools]
    assert result.files_written == 2000
