"""How a file is cut: iter_chunks reads a data extent of up to 2 * max_size whole and cuts it
in place (cut_buf), a longer one through FastCDC's stream reader; both must give exactly
the chunks the stream reader gives, or a capture would stop deduplicating against the
chunks stored before and a restore would fail to prove an unchanged file identical."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
from pyfastcdc import FastCDC

from workers.engine.repository.chunker import iter_chunks

MIN, AVG, MAX = 4 << 10, 16 << 10, 64 << 10


def _content(kind: str, size: int) -> bytes:
    if kind == "random":
        return random.Random(size).randbytes(size)
    if kind == "zeros":
        return bytes(size)
    return (b"GET /index.html 200 upstream ok\n" * (size // 32 + 1))[:size]


def _by_stream(cdc: FastCDC, data: bytes) -> list[tuple[bytes, int]]:
    return [(bytes(c.data), c.offset) for c in cdc.cut_stream(io.BytesIO(data))]


@pytest.mark.parametrize("kind", ["random", "zeros", "text"])
@pytest.mark.parametrize("size", [MIN - 1, MIN, MIN + 1, 3 * AVG, 2 * MAX - 1, 2 * MAX,
                                  2 * MAX + 1, 5 * MAX + 777])
def test_a_file_is_cut_as_the_stream_reader_cuts_it(tmp_path: Path, kind: str,
                                                    size: int) -> None:
    data = _content(kind, size)
    path = tmp_path / "f"
    path.write_bytes(data)
    cdc = FastCDC(AVG, min_size=MIN, max_size=MAX)
    counter = [0]
    fd = os.open(path, os.O_RDONLY)
    try:
        got = [(bytes(d), off) for d, off in iter_chunks(fd, size, cdc, MIN, counter)]
    finally:
        os.close(fd)
    want = [(data, 0)] if size <= MIN else _by_stream(cdc, data)
    assert got == want
    assert counter[0] == size
    assert b"".join(d for d, _off in got) == data
