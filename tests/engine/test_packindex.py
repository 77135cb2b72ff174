"""The pack index (repository/packindex.py): a table of flat arrays, not a dict of objects."""

from __future__ import annotations

import os
import tracemalloc

from workers.engine.repository.packindex import PackIndex


def test_members_are_found_replaced_kept_and_listed_as_added() -> None:
    idx = PackIndex()
    ids = [os.urandom(32) for _ in range(5_000)]  # past several doublings of the table
    packs = [os.urandom(32) for _ in range(5)]
    for p, pack in enumerate(packs):
        idx.add_many(pack, [(c, i * 10, i + 1) for i, c in enumerate(ids) if i % 5 == p])
    assert len(idx) == 5_000
    for i, c in enumerate(ids):
        assert idx.get(c) == (packs[i % 5], i * 10, i + 1)
    assert idx.get(os.urandom(32)) is None
    idx.add_many(packs[0], [(ids[1], 7, 8)], replace=False)  # kept: the first one stays
    assert idx.get(ids[1]) == (packs[1], 10, 2)
    idx.add(ids[1], packs[0], 7, 8)  # replaced
    assert idx.get(ids[1]) == (packs[0], 7, 8)
    odd = b"short id"  # no id is not 32 bytes long today; one would still be indexed
    idx.add(odd, packs[2], 1, 2)
    assert idx.get(odd) == (packs[2], 1, 2) and len(idx) == 5_001
    idx.add(os.urandom(32), packs[2], 1 << 41, 2)  # out of range: a damaged index, skipped
    assert len(idx) == 5_001
    assert sorted(idx.members()) == sorted([*((c, packs[i % 5]) for i, c in enumerate(ids)
                                              if i != 1), (ids[1], packs[0]),
                                            (odd, packs[2])])


def test_a_member_costs_well_under_the_dicts_150_bytes() -> None:
    members = [(os.urandom(32), i, 4_000) for i in range(50_000)]
    tracemalloc.start()
    try:
        idx = PackIndex()
        idx.add_many(os.urandom(32), members)
        now, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(idx) == 50_000
    assert now / 50_000 < 80, now / 50_000  # measured ~60 (ids 32, arrays 20, table 8-16)
