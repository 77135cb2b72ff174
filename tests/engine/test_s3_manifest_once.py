"""A manifest is created once even on a store that ignores If-None-Match (rclone's S3
server answers a create-only PUT of an existing key by replacing it): the delivery that
commits second must still find the first's manifest and answer its snapshot, not
replace the snapshot the first has already reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.s3proxy import S3Proxy
from tests.support.seaweed import SeaweedProcess
from workers.engine import Engine
from workers.engine.repository.s3backend import S3Backend

from .conftest import dir_state, make_meta
from .test_s3_fleet import make_tree, options, url


def test_second_delivery_answers_the_first_on_a_store_ignoring_if_none_match(
        seaweed: SeaweedProcess, tmp_path: Path) -> None:
    proxy = S3Proxy(seaweed.endpoint).start()
    try:
        proxy.ignore_if_none_match = True
        repo = url()
        src = make_tree(tmp_path / "srv", 3, files=5, size=20_000)
        late = Engine(repo, options(seaweed, tmp_path / "cache-b", endpoint=proxy.endpoint))
        early = Engine(repo, options(seaweed, tmp_path / "cache-a", endpoint=proxy.endpoint))
        first: list[Any] = []
        assert isinstance(late.backend, S3Backend)
        commit = late.backend.before_commit
        assert commit is not None

        def overtaken() -> None:  # the late delivery is about to commit: the early runs whole
            if not first:
                (src / "f000").write_bytes(b"changed between the deliveries")
                first.append(early.capture(make_meta(1), dir_state(src)))
            commit()

        late.backend.before_commit = overtaken
        got = late.capture(make_meta(1), dir_state(src))
        assert first and got == first[0]
        dst = tmp_path / "out"
        late.restore(1, dir_state(dst))
        assert (dst / "f000").read_bytes() == b"changed between the deliveries"  # the first's
    finally:
        proxy.close()
