"""The filesystem under bench/.data/: page cache, disk usage, deleting, and waiting for ext4
to settle after a mass deletion (bench/engine.py)."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import time
from pathlib import Path

from commands import BENCH

# Resolved: bench/.data may be a symlink to shared data, and the engine refuses a state
# path through a symlink (statepath.open_path). BENCH_DATA: another directory instead (a
# private copy of a dataset that a run modifies, e.g. the scale run's touch_files).
DATA = Path(os.environ.get("BENCH_DATA") or BENCH / ".data").resolve()


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def read_tree(root: Path) -> None:
    """Untimed: every regular file under root (or root itself) into the page cache.
    O_NOFOLLOW | O_NONBLOCK and a type check, so a symlink, FIFO or device in a state is
    skipped, never followed or read."""
    if not root.is_dir():
        _read_file(str(root))
        return
    for d, _dirs, files in os.walk(root):
        for name in files:
            _read_file(os.path.join(d, name))


def _read_file(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            while os.read(fd, 1 << 20):
                pass
    finally:
        os.close(fd)


def du_bytes(path: Path, apparent: bool) -> int:
    flag = "--apparent-size" if apparent else ""
    out = subprocess.run(
        f"du -s -B1 {flag} {shlex.quote(str(path))}", shell=True, capture_output=True, text=True
    ).stdout
    return int(out.split()[0]) if out else 0


SETTLE_MARK = DATA / ".last-cleanup"
# ext4 without a journal skips, on create, inodes freed in the last 60 s (fs/ext4/ialloc.c
# recently_deleted: RECENTCY_MIN; 360 s while their inode table block is not written back)
EXT4_RECENT_S = 62


def fs_info(path: Path) -> str:
    out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True).stdout
    dev, fstype = out.splitlines()[-1].split()[:2] if out else ("?", "?")
    opts = Path("/proc/fs/ext4", Path(dev).name, "options")
    if fstype == "ext4" and opts.is_file() and "data=" not in opts.read_text():
        return f"{fstype} without a journal ({dev})"
    return f"{fstype} ({dev})"


def settle() -> None:
    """Wait until our last mass deletion is older than ext4's 'recently deleted' window:
    on ext4 without a journal, creating files just after deleting thousands is several
    times slower (inode allocation scans past every recently freed inode of its group:
    a 100,000-file restore onto a private no-journal ext4 took 3.2 s of system CPU on a
    fresh filesystem, 28.7 s right after the same tree was deleted there; with a journal
    3.7 and 3.3 s), which would bias the run against whoever creates files first. The
    sync writes the freed inodes' table blocks, so the 60 s window applies, not 360 s."""
    try:
        age = time.time() - SETTLE_MARK.stat().st_mtime
    except FileNotFoundError:
        return
    if age < EXT4_RECENT_S:
        os.sync()
        print(f"waiting {EXT4_RECENT_S - age:.0f} s for the previous run's deletions to settle",
              flush=True)
        time.sleep(EXT4_RECENT_S - age)


def rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
