"""What a capture asks the store before it reads the state: its own manifest once (the
check before the lock), and, under the lock, only the listing the parent is picked from,
which also shows a delivery of the same capture that committed meanwhile."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tests.support.seaweed import SeaweedProcess
from workers.engine import Engine
from workers.engine.repository.s3backend import S3Backend

from .conftest import dir_state, make_meta
from .test_s3_fleet import make_tree, options, url


def _count_reads(engine: Engine) -> Counter[str]:
    """Header reads by key, through the engine's real backend (every call still reaches
    the store)."""
    backend = engine.backend
    assert isinstance(backend, S3Backend)
    reads: Counter[str] = Counter()
    get_head = backend.get_head

    def counted(key: str, n: int, *, listed: str | None = None) -> bytes:
        reads[key] += 1
        return get_head(key, n, listed=listed)

    backend.get_head = counted  # type: ignore[method-assign]
    return reads


def test_a_fresh_capture_reads_its_own_manifest_once(seaweed: SeaweedProcess,
                                                      tmp_path: Path) -> None:
    src = make_tree(tmp_path / "srv", 1, files=3, size=20_000)
    engine = Engine(url(), options(seaweed, tmp_path / "cache"))
    reads = _count_reads(engine)
    engine.capture(make_meta(1), dir_state(src))
    assert reads["snapshots/1"] == 1, reads  # was 2: once more under the lock (404 both)
    # the second snapshot reads its own (404) and its parent's header, nothing else twice
    engine.capture(make_meta(2), dir_state(src))
    assert reads["snapshots/2"] == 1 and reads["snapshots/1"] == 2, reads


def test_a_delivery_committed_before_the_lock_is_answered_from_the_listing(
        seaweed: SeaweedProcess, tmp_path: Path) -> None:
    """The other delivery commits after this one's first check, before its lock: the
    listing shows it, and this one answers its snapshot without reading the state."""
    repo = url()
    src = make_tree(tmp_path / "srv", 2, files=3, size=20_000)
    late = Engine(repo, options(seaweed, tmp_path / "cache-b"))
    early = Engine(repo, options(seaweed, tmp_path / "cache-a"))
    first: list[Any] = []
    shared = late.lock.shared

    def overtaken() -> Any:
        if not first:
            first.append(early.capture(make_meta(1), dir_state(src)))
        return shared()

    late.lock.shared = overtaken  # type: ignore[method-assign]
    backend = late.backend
    assert isinstance(backend, S3Backend)
    puts = backend.puts
    got = late.capture(make_meta(1), dir_state(src))
    assert first and got == first[0]
    assert backend.puts == puts  # nothing stored: the state was not read again
