"""Verify reads a directory's manifest a piece at a time, as a restore does (it decoded it
whole: ~1 GiB more at a million entries), and still names the file whose packed bytes do
not match its id."""

from __future__ import annotations

from pathlib import Path

import msgspec

from workers.engine import Engine
from workers.engine.repository import manifest
from workers.engine.repository.repository import chunk_key

from .conftest import dir_state, make_meta


def test_verify_reads_pieces_and_names_the_file_that_does_not_match(
        engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "srv"
    src.mkdir()
    for i in range(5000):
        (src / f"f{i:05}").write_bytes(b"file %d\n" % i)
    engine.capture(make_meta(1), dir_state(src))
    path = Path(engine.repo.backend.root) / "snapshots" / "1"  # type: ignore[attr-defined]
    header, body = manifest.decode(path.read_bytes())
    assert isinstance(body, manifest.DirBody) and len(header.pieces) > 1
    assert engine.verify(1).ok

    last = body.entries[-1]
    other = next(e for e in body.entries[1:-1] if e.pack == last.pack)
    body.entries[-1] = msgspec.structs.replace(last, pack_off=other.pack_off,
                                               pack_len=other.pack_len)
    path.write_bytes(manifest.encode(msgspec.structs.replace(header, pieces=[]), body))
    report = engine.verify(1)
    assert report.errors == [
        f"snapshot 1 is corrupt: file {last.path.decode()} does not match its id in object "
        f"{last.pack.hex()} ({chunk_key(last.pack)})"]
