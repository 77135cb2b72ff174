"""Engine bugs found by the fault work, kept as regression tests."""

from __future__ import annotations

import threading
from pathlib import Path

from workers.engine.repository.backend import LocalBackend


def test_two_backends_in_one_process_put_durably_at_once(tmp_path: Path) -> None:
    # What a worker did when its reaper thread and its first job built their Engine at the
    # same moment: both initialised the repository, and one failed with FileExistsError.
    backends = [LocalBackend(str(tmp_path / "repo")) for _ in range(2)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        start.wait()
        try:
            for n in range(200):
                backends[i].put(f"snapshots/{i}-{n}", b"x" * 100, durable=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
