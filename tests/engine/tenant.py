"""Real tenant processes for the attack tests: each is a separate Python process doing to
the state what a hostile (or merely busy) program inside the server would do.

A process reads one command per line on stdin and answers one line on stdout, so a test
steps it exactly where the attack needs it, with no sleeps.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_MMAP_WRITER = r"""
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
print("ready", flush=True)
for line in sys.stdin:
    off, data = line.split()
    m[int(off):int(off) + len(data)] = data.encode()  # a plain store: no syscall at all
    print("ok", flush=True)
"""

_FD_WRITER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
print("ready", flush=True)
for line in sys.stdin:
    off, data = line.split()
    os.pwrite(fd, data.encode(), int(off))
    print("ok", flush=True)
"""

# Opens a fifo for writing: blocks until some process opens it for reading.
_FIFO_WRITER = r"""
import os, sys
print("waiting", flush=True)
fd = os.open(sys.argv[1], os.O_WRONLY)
print("opened", flush=True)
"""

# With its working directory inside the state, swaps each directory d<N> for a symlink
# (to a directory outside) and back, as fast as it can, until killed.
_DIR_SWAPPER = r"""
import os, sys
os.chdir(sys.argv[1])
names, outside = sys.argv[3:], sys.argv[2]
print("ready", flush=True)
while True:
    for n in names:
        try:
            os.rename(n, n + ".x")
            os.symlink(outside, n)
            os.unlink(n)
            os.rename(n + ".x", n)
        except OSError:
            pass
"""

# Swaps each regular file <name> with a fifo <name>.fifo (renameat2 RENAME_EXCHANGE) in
# a loop, until killed: a reader sees at the same path now a file, now a fifo.
_FIFO_SWAPPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
os.chdir(sys.argv[1])
names = [n.encode() for n in sys.argv[2:]]
print("ready", flush=True)
while True:
    for n in names:
        libc.renameat2(-100, n, -100, n + b".fifo", 2)
"""


class Tenant:
    def __init__(self, script: str, *args: str | Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def send(self, cmd: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.line()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def mmap_writer(path: Path) -> Tenant:
    """Writes into `path` through a shared writable mapping: `send("0 v2")`."""
    t = Tenant(_MMAP_WRITER, path)
    assert t.line() == "ready"
    return t


def fd_writer(path: Path) -> Tenant:
    """Holds `path` open for writing and pwrites through that descriptor on request."""
    t = Tenant(_FD_WRITER, path)
    assert t.line() == "ready"
    return t


def fifo_writer(path: Path) -> Tenant:
    """Blocked in open(path, O_WRONLY) until a reader opens the fifo; says "opened" then."""
    t = Tenant(_FIFO_WRITER, path)
    assert t.line() == "waiting"
    return t


def dir_swapper(cwd: Path, outside: Path, names: list[str]) -> Tenant:
    t = Tenant(_DIR_SWAPPER, cwd, outside, *names)
    assert t.line() == "ready"
    return t


def fifo_swapper(cwd: Path, names: list[str]) -> Tenant:
    t = Tenant(_FIFO_SWAPPER, cwd, *names)
    assert t.line() == "ready"
    return t
