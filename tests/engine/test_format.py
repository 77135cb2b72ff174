"""A manifest written by a newer engine is refused, never misread, and keeps its chunks;
one whose tree is malformed fails for good (snapshot_corrupt), it is never retried."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from tests.engine.conftest import dir_state, make_meta
from workers.engine import Engine, EngineError, SnapshotCorrupt, TransientEngineError
from workers.engine.repository import lazyentries, manifest
from workers.jobs import Jobs


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


def _swap_entries(entries: list[manifest.Entry]) -> list[manifest.Entry]:
    return [entries[1], entries[0], *entries[2:]]  # the root no longer first


def _escape(entries: list[manifest.Entry]) -> list[manifest.Entry]:
    return [*entries, msgspec.structs.replace(entries[-1], path=b"sub/../../escape")]


def _child_first(entries: list[manifest.Entry]) -> list[manifest.Entry]:
    sub = next(i for i, e in enumerate(entries) if e.path == b"sub")
    return [e for i, e in enumerate(entries) if i != sub] + [entries[sub]]


def _orphan_link(entries: list[manifest.Entry]) -> list[manifest.Entry]:
    first = next(e for e in entries if e.kind == manifest.FILE)
    return [*entries, msgspec.structs.replace(first, path=b"link", kind=manifest.HARDLINK,
                                              target=b"no-such-file")]


@pytest.mark.parametrize("malform", [_swap_entries, _escape, _child_first, _orphan_link])
def test_a_manifest_whose_tree_is_malformed_is_corrupt_for_good(
        engine: Engine, tmp_path: Path, malform: object) -> None:
    state = tmp_path / "state"
    (state / "sub").mkdir(parents=True)
    (state / "sub" / "a").write_text("a")
    (state / "b").write_text("b")
    engine.capture(make_meta(1), dir_state(state))
    path = Path(engine.repo.backend.root) / "snapshots" / "1"  # type: ignore[attr-defined]
    header, body = manifest.decode(path.read_bytes())
    assert isinstance(body, manifest.DirBody)
    bad = msgspec.structs.replace(body, entries=malform(list(body.entries)))  # type: ignore[operator]
    # no pieces: the body is written whole (those of the good tree would not match it)
    path.write_bytes(manifest.encode(msgspec.structs.replace(header, pieces=[]), bad))

    target = tmp_path / "target"
    target.mkdir()
    (target / "mine").write_text("current")
    with pytest.raises(SnapshotCorrupt, match="manifest of snapshot 1 is corrupt") as err:
        engine.restore(1, dir_state(target))
    # Final, not a retry that can never succeed: the operation fails at once with its code.
    assert not isinstance(err.value, TransientEngineError) and not Jobs._transient(err.value)
    assert err.value.code == "snapshot_corrupt"
    assert sorted(os.listdir(target)) == ["mine"] and (target / "mine").read_text() == "current"
    report = engine.verify(1)  # verify checks the tree as a restore does
    assert not report.ok and "manifest of snapshot 1 is corrupt" in report.errors[0]


def test_entries_decoded_lazily_are_the_entries_decoded_whole(engine: Engine,
                                                             tmp_path: Path) -> None:
    """A restore's writer processes read the manifest lazily (lazyentries.decode_lazily); each
    entry must come out exactly as a whole decode gives it, and tiny pack ids are shared."""
    state = tmp_path / "state"
    (state / "d").mkdir(parents=True)
    for i in range(50):
        (state / "d" / f"f{i}").write_bytes(os.urandom(100 + i))
    (state / "big").write_bytes(os.urandom(3 * 1024 * 1024))
    os.link(state / "d" / "f1", state / "link")
    os.setxattr(state / "d" / "f2", "user.k", b"v")
    engine.capture(make_meta(1), dir_state(state))
    data = (Path(engine.repo.backend.root) / "snapshots" / "1").read_bytes()  # type: ignore[attr-defined]
    header, body = manifest.decode(data)
    lazy_header, raws = lazyentries.decode_lazily(data)
    assert isinstance(body, manifest.DirBody) and lazy_header == header
    assert [manifest.entry(r) for r in raws] == body.entries
    packs = {id(e.pack) for e in body.entries if e.pack}
    assert len(packs) == len({e.pack for e in body.entries if e.pack}) == 1
    future = msgspec.structs.replace(header, version=manifest.MANIFEST_VERSION + 1)
    with pytest.raises(ValueError, match="newer engine"):
        lazyentries.decode_lazily(manifest.encode(future, body))


def test_a_restore_decodes_a_small_manifest_whole_and_a_big_one_lazily(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """decode_entries: up to DECODED_ENTRIES_MAX entries decoded at once (no msgspec.Raw
    held), more left encoded; either way the same entries, in order, and each entry's
    encoded form (what a writer process is sent) is the manifest's own bytes."""
    from workers.engine import tuning

    state = tmp_path / "state"
    (state / "d").mkdir(parents=True)
    for i in range(30):
        (state / "d" / f"f{i}").write_bytes(os.urandom(50 + i))
    os.link(state / "d" / "f1", state / "link")
    engine.capture(make_meta(1), dir_state(state))
    data = (Path(engine.repo.backend.root) / "snapshots" / "1").read_bytes()  # type: ignore[attr-defined]
    _header, body = manifest.decode(data)
    _lazy_header, raws = lazyentries.decode_lazily(data)
    assert isinstance(body, manifest.DirBody)
    for most in (len(body.entries), len(body.entries) - 1):
        monkeypatch.setattr(tuning, "DECODED_ENTRIES_MAX", most)
        header, entries = lazyentries.decode_entries(data)
        assert header == _header and len(entries) == len(body.entries)
        assert list(entries) == body.entries and entries[3] == body.entries[3]
        assert [bytes(entries.raw(i)) for i in range(len(entries))] == [bytes(r) for r in raws]
        assert (entries[0] is entries[0]) == (most == len(body.entries))  # kept, or not


def test_an_image_manifest_is_not_read_lazily(engine: Engine, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    from workers.engine import StateSpec

    engine.capture(make_meta(1), StateSpec(kind="image", path=str(image)))
    with pytest.raises(SnapshotCorrupt, match="not the manifest of a directory state"):
        engine.repo.get_manifest_lazily(1)


def test_the_collector_pause_nests_and_restores_what_was_there() -> None:
    import gc

    from workers.engine import gcpause

    assert gc.isenabled()
    with gcpause.paused():
        with gcpause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()
    gc.disable()
    try:
        with gcpause.paused():
            pass
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()
