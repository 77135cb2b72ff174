"""Issue 9, item 4: a sparse file with many small data extents makes few objects (small
extents go into packs like small files), so the objects a capture may create are bounded
by its data, not by how a tenant fragments a file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workers.engine import Engine, tuning

from .conftest import dir_state, make_meta
from .treecmp import assert_same


@pytest.mark.parametrize("processes", [True, False], ids=["processes", "threads"])
def test_sparse_file_with_many_small_extents_makes_few_objects(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path, processes: bool) -> None:
    monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD", 0 if processes else 1 << 40)
    # (the case is 100,000 extents in 100 GB; 5,000 in 80 MiB shows the same)
    extents, gap = 5000, 16 << 10
    src = tmp_path / "srv"
    src.mkdir()
    with open(src / "sparse.img", "wb") as f:
        f.truncate(extents * gap)
        for i in range(extents):
            f.seek(i * gap)
            f.write(os.urandom(4096))
    data = tmp_path / "repo" / "data"
    engine.capture(make_meta(1), dir_state(src))
    objects = sum(len(files) for _d, _s, files in os.walk(data))
    # 20 MiB of small extents: one pack per TINY_PACK_LOCAL (file://: 8 MiB) bytes, never
    # an object per extent (5,000 before)
    assert objects == -(-extents * 4096 // tuning.TINY_PACK_LOCAL), objects
    assert engine.verify(1).ok  # every packed piece read back against its id
    out = tmp_path / "out"
    engine.restore(1, dir_state(out))
    assert_same(src, out)
