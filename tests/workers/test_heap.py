"""An idle worker process gives the memory its last operation freed back to the system
(workers/heap.py), so the next operation's peak does not start from the last one's."""

from __future__ import annotations

import subprocess
import sys

_CHILD = """
import sys
from workers import heap

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

objs = [bytes(1000) + i.to_bytes(4, "big") for i in range(60_000)]  # ~60 MB, malloc'd
pin = bytes(1000)  # above them on the heap: the allocator cannot trim its top alone
before = rss()
del objs
freed = rss()
heap.release()
print(before, freed, rss())
"""


def test_release_gives_freed_memory_back() -> None:
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                         check=True).stdout
    before, freed, after = map(int, out.split())
    assert freed > before - 20_000_000  # freed, but still held by the process
    assert after < freed - 40_000_000  # given back
