"""The order a capture reads its files in: a heavy file (tuning.READER_HEAVY, under the
repository's big_file) goes to the readers first, in a request of its own, wherever the walk
found it (the bench's 48 MiB apt list lies under /var, walked last: it was the capture's
tail, one core working); a request's files hold about tuning.REQUEST_BYTES at most."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

from workers.engine import Engine, tuning
from workers.engine.capture import archiver

from .conftest import dir_state, make_meta

SMALL = 50_000
HEAVY = 300_000


def _tree(root: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for d in ("a", "b", "c"):
        for i in range(3):
            files[f"{d}/f{i}"] = os.urandom(SMALL)
    files["z/big"] = os.urandom(HEAVY)  # walked last (sorted names), read first
    files["z/s1"] = os.urandom(10_000)
    files["z/s2"] = os.urandom(10_000)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _restored_same(engine: Engine, tmp_path: Path, files: dict[str, bytes]) -> None:
    dst = tmp_path / "dst"
    engine.restore(1, dir_state(dst))
    for rel, data in files.items():
        assert (dst / rel).read_bytes() == data, rel


def test_the_heavy_file_goes_to_the_readers_first_alone_and_requests_are_cut_by_bytes(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "srv"
    files = _tree(src)
    # the readers start at the walk's last file (in z): every directory is queued by then
    monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD", sum(map(len, files.values())))
    monkeypatch.setattr(tuning, "READER_HEAVY", 200_000)
    monkeypatch.setattr(tuning, "REQUEST_BYTES", 2 * SMALL)
    sent: list[list[bytes]] = []
    orig = archiver.Archiver._batches

    def batches(self: archiver.Archiver) -> Generator[object]:
        for item in orig(self):
            if item is not None:
                sent.append(list(item[2]))
            yield item

    monkeypatch.setattr(archiver.Archiver, "_batches", batches)
    res = engine.capture(make_meta(1), dir_state(src))
    assert res.files == len(files) and not res.warnings
    assert sent[0] == [b"big"]  # first, on its own
    # each directory's 3 files of 50 kB: cut once 100 kB are in a request
    assert sent[1:] == [[b"f0", b"f1"], [b"f2"]] * 3 + [[b"s1", b"s2"]]
    _restored_same(engine, tmp_path, files)


def test_without_reader_processes_the_heavy_file_is_read_first_too(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "srv"
    files = _tree(src)
    monkeypatch.setattr(tuning, "CAPTURE_PROCESSES", 0)  # the threads read
    monkeypatch.setattr(tuning, "READER_HEAVY", 200_000)
    opened: list[int] = []
    orig = archiver.Archiver._open_files

    def open_files(self: archiver.Archiver, root_fd: int,
                   todo: list[archiver._Dir]) -> Generator[tuple[int, int]]:
        for fd, i in orig(self, root_fd, todo):
            opened.append(self.tree.sizes[i])
            yield fd, i

    monkeypatch.setattr(archiver.Archiver, "_open_files", open_files)
    res = engine.capture(make_meta(1), dir_state(src))
    assert res.files == len(files) and not res.warnings
    assert opened[0] == HEAVY and sorted(opened[1:]) == [10_000] * 2 + [SMALL] * 9
    _restored_same(engine, tmp_path, files)
