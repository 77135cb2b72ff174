"""What a restore worker process and its parent send each other (see writerproc.py)."""

from __future__ import annotations

import msgspec


class Setup(msgspec.Struct, array_like=True):
    storage: str  # root of the local repository
    snapshot_id: int
    state_path: str


class Share(msgspec.Struct, array_like=True):
    owner: tuple[int, int] | None  # what new files get where they are created
    indexes: list[int]  # manifest entries (regular files) to write
