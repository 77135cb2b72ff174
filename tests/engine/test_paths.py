"""fsutil.split: the check that a manifest path cannot escape the state root (every
restore runs it on every entry, and the tree walks trust what it passes). It must refuse
exactly the paths with an empty, '.' or '..' component."""

from __future__ import annotations

import itertools

import pytest

from workers.engine.fs import fsutil

PIECES = [b"", b".", b"..", b"a", b"...", b".a", b"a.", b"..a", b"b c", b"\xff"]


def _by_components(path: bytes) -> bool:
    return bool(path) and any(p in (b"", b".", b"..") for p in path.split(b"/"))


def test_split_refuses_exactly_an_empty_dot_or_dotdot_component() -> None:
    for n in range(1, 5):
        for parts in itertools.product(PIECES, repeat=n):
            path = b"/".join(parts)
            if _by_components(path):
                with pytest.raises(ValueError, match="unsafe path"):
                    fsutil.split(path)
            else:
                assert fsutil.split(path) == (path.split(b"/") if path else [])
