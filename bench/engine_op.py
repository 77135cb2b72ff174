"""Run ONE operation of our snapshot engine in a fresh process, for bench/engine.py.

    python bench/engine_op.py capture REPO SNAPSHOT_ID SERVER_ID KIND PATH
    python bench/engine_op.py restore REPO SNAPSHOT_ID KIND PATH

Prints one line `RESULT {json}` with the engine's result. A fresh process per operation
makes the timings include interpreter start-up and imports, like the CLI tools we compare to.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.engine import StateSpec

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the repository root, not bench/ (bench/api.py would shadow `api`)


def _to_builtins(obj: Any) -> Any:
    try:
        import msgspec

        return msgspec.to_builtins(obj)
    except Exception:
        return repr(obj)


def _spec(kind: str, path: str) -> StateSpec:
    """The state to work on, validated like the service validates a server's state."""
    import msgspec

    from workers.engine import StateSpec

    return msgspec.convert({"kind": kind, "path": path}, StateSpec)


def _capture(repo: str, snapshot_id: int, server_id: int, kind: str, path: str) -> Any:
    from workers.engine import Engine, SnapshotMeta

    meta = SnapshotMeta(
        snapshot_id=snapshot_id,
        server_id=server_id,
        server_name=f"bench-{server_id}",
        account="bench",
        name=f"bench-{snapshot_id}",
        description=None,
        created_at="2026-11-27T00:00:00Z",
    )
    return Engine(f"file://{repo}").capture(meta, _spec(kind, path), progress=None)


def _restore(repo: str, snapshot_id: int, kind: str, path: str) -> Any:
    from workers.engine import Engine

    return Engine(f"file://{repo}").restore(snapshot_id, _spec(kind, path))


def main(argv: list[str]) -> int:
    op, repo, snapshot_id, *rest = argv
    if op == "capture":
        server_id, kind, path = rest
        res = _capture(repo, int(snapshot_id), int(server_id), kind, path)
    elif op == "restore":
        kind, path = rest
        res = _restore(repo, int(snapshot_id), kind, path)
    else:
        print(f"unknown operation {op!r}", file=sys.stderr)
        return 2
    print("RESULT " + json.dumps(_to_builtins(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
