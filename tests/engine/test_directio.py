"""O_DIRECT block IO of images: exact bytes at unaligned tails, and the buffered fallback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workers.engine import Engine, StateSpec
from workers.engine.fs import directio

from .conftest import make_meta

MiB = 1 << 20


def _image(p: Path) -> bytes:
    """Random blocks, a zero block, a hole and a tail that is not sector-aligned."""
    with open(p, "wb") as f:
        f.truncate(6 * MiB + 777)
        for i in (0, 2, 4):
            f.seek(i * MiB)
            f.write(os.urandom(MiB))
        f.seek(MiB)
        f.write(bytes(MiB))
        f.seek(6 * MiB)
        f.write(os.urandom(777))
    return p.read_bytes()


def test_pread_and_pwrite_direct_handle_unaligned_tails(tmp_path: Path) -> None:
    src = tmp_path / "src"
    data = os.urandom(2 * directio.ALIGN + 123)
    src.write_bytes(data)
    fd = os.open(src, os.O_RDONLY)
    direct = directio.reopen_direct(fd, os.O_RDONLY)
    buf = directio.buffer(len(data))
    try:
        assert bytes(directio.pread(direct, fd, buf, len(data), 0)) == data
        # past the end: short, like a plain read
        assert bytes(directio.pread(direct, fd, buf, 4096, 2 * 4096)) == data[2 * 4096:]
        assert bytes(directio.pread(direct, fd, buf, 100, 5)) == data[5:105]  # unaligned
    finally:
        os.close(fd)
        if direct is not None:
            os.close(direct)
    dst = tmp_path / "dst"
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o600)
    direct = directio.reopen_direct(fd, os.O_WRONLY)
    try:
        directio.pwrite(direct, fd, buf, data[:8192], 0)  # aligned: direct
        directio.pwrite(direct, fd, buf, data[8192:], 8192)  # unaligned tail: buffered
    finally:
        os.close(fd)
        if direct is not None:
            os.close(direct)
    assert dst.read_bytes() == data


@pytest.mark.parametrize("direct", [True, False])
def test_image_round_trip_with_and_without_o_direct(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool) -> None:
    if not direct:  # a filesystem that refuses O_DIRECT (tmpfs): buffered fds only
        monkeypatch.setattr(directio, "reopen_direct", lambda fd, flags: None)
    img = tmp_path / "disk.img"
    original = _image(img)
    state = StateSpec(kind="image", path=str(img))
    res = engine.capture(make_meta(1), state)
    assert 3 * MiB < res.stored_bytes < 3 * MiB + 20_000  # zero block and hole not stored
    img.unlink()
    engine.restore(1, state)  # a missing image is created from the blocks
    assert img.read_bytes() == original
    assert os.stat(img).st_blocks * 512 < 5 * MiB  # zeros and holes came back as holes


def test_pread_any_reads_any_range_and_write_buffer_writes_what_is_in_the_buffer(
        tmp_path: Path) -> None:
    """pread_any: the aligned range around any (offset, length) read directly, the view of
    just those bytes returned; write_buffer: a buffer's first n bytes written, directly
    when aligned, else buffered (an unaligned tail)."""
    src = tmp_path / "src"
    data = os.urandom(5 * directio.ALIGN + 321)
    src.write_bytes(data)
    fd = os.open(src, os.O_RDONLY)
    direct = directio.reopen_direct(fd, os.O_RDONLY)
    assert direct is not None  # tmp_path is on a filesystem with O_DIRECT
    buf = directio.buffer(3 * directio.ALIGN + 2 * directio.ALIGN)
    try:
        for off, ln in ((0, 10), (4095, 2), (100, 3 * directio.ALIGN), (4096, 4096),
                        (5 * directio.ALIGN + 300, 500)):  # the last: short, at the end
            assert bytes(directio.pread_any(direct, fd, buf, ln, off)) == data[off:off + ln]
    finally:
        os.close(fd)
        os.close(direct)
    dst = tmp_path / "dst"
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o600)
    direct = directio.reopen_direct(fd, os.O_WRONLY)
    try:
        memoryview(buf)[:8192] = data[:8192]
        directio.write_buffer(direct, fd, buf, 8192, 0)  # aligned: direct
        memoryview(buf)[:777] = data[8192:8192 + 777]
        directio.write_buffer(direct, fd, buf, 777, 8192)  # unaligned tail: buffered
    finally:
        os.close(fd)
        if direct is not None:
            os.close(direct)
    assert dst.read_bytes() == data[:8192 + 777]
