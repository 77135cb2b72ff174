"""A manifest written by a newer engine is refused, never misread, and keeps its chunks."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from tests.engine.conftest import dir_state, make_meta
from workers.engine import Engine, EngineError
from workers.engine.repository import manifest


def test_newer_manifest_is_refused_and_its_chunks_are_kept(engine: Engine, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "big").write_bytes(os.urandom(2 * 1024 * 1024))
    engine.capture(make_meta(1), dir_state(state))
    repo = Path(engine.repo.backend.root)  # type: ignore[attr-defined]
    path = repo / "snapshots" / "1"
    header, body = manifest.decode(path.read_bytes())
    future = msgspec.structs.replace(header, version=manifest.MANIFEST_VERSION + 1)
    path.write_bytes(manifest.encode(future, body))
    objects = sorted(p for p in (repo / "data").rglob("*") if p.is_file())

    target = tmp_path / "target"
    target.mkdir()
    (target / "mine").write_text("current")
    with pytest.raises(EngineError, match="newer engine"):
        engine.restore(1, dir_state(target))
    assert (target / "mine").read_text() == "current"
    report = engine.verify(1)
    assert not report.ok and "newer engine" in report.errors[0]
    with pytest.raises(EngineError, match="newer engine"):  # it sweeps nothing
        engine.reclaim(wait=True)
    assert sorted(p for p in (repo / "data").rglob("*") if p.is_file()) == objects
