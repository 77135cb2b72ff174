"""An engine operation in a process of its own, as another host would run it (s3 tests).

    python -m tests.engine.s3_child '<json>'

The JSON names the repository URL, the StorageOptions fields and the op: "reclaim_loop"
(reclaims for `seconds`, printing the totals as JSON) or "reclaim" (one, waiting).
"""

from __future__ import annotations

import json
import sys
import time

from workers.engine import Engine
from workers.engine.model import StorageOptions


def main() -> None:
    args = json.loads(sys.argv[1])
    engine = Engine(args["url"], StorageOptions(**args["options"]))
    removed = runs = skipped = 0
    if args["op"] == "reclaim":
        stats = engine.reclaim(wait=True)
        removed, runs = stats.objects_removed, 1
    else:
        deadline = time.monotonic() + float(args["seconds"])
        while time.monotonic() < deadline:
            stats = engine.reclaim(wait=False)
            removed += stats.objects_removed
            runs += 1
            skipped += stats.skipped_locked
            time.sleep(0.1)
    print(json.dumps({"removed": removed, "runs": runs, "skipped": skipped}), flush=True)


if __name__ == "__main__":
    main()
