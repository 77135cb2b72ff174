"""The scale dataset of bench/service.py --scale (issue 12): a tree of N small files and a
sparse disk image, built once under bench/.data/ (shared: /work/bench-data) and reused.

    .venv/bin/python bench/scaledata.py 100000 300000 1000000 --image

The tree: 200 B - 8 KiB files (about 4.1 KB each: 1,000,000 files are about 3.8 GiB), 100
to a directory, directories two levels deep (d###/s##/), every 100th entry a hard link to
a file 5,000 entries earlier (another directory): 1 % hard links. Each file's bytes are
its own (random bytes mapped onto 64 text-like symbols: zstd makes them ~3/4 of their
size; nothing repeats between files, so neither tool deduplicates them). The image: 16 GiB
apparent, 2 GiB of data in 32 runs of 64 MiB every 512 MiB, the rest holes; its 1 MiB
blocks alternate text-like and random runs.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from commands import MiB
from filesystem import DATA, rmtree

GiB = 1 << 30
PER_DIR = 100
HARDLINK_EVERY = 100
_SYMBOLS = b"etaoinshrdlucmfwypvbgkqjxz ETAOINSHRDLU0123456789 ,.:=/-_\n\t()[]{}#"
TEXTISH = bytes(_SYMBOLS[i % 64] for i in range(256))
IMAGE_GIB, IMAGE_RUN_MIB, IMAGE_STRIDE_MIB, IMAGE_RUNS = 16, 64, 512, 32


def tree_path(files: int) -> Path:
    return DATA / f"scale-{files // 1000}k" / "tree"


def image_path() -> Path:
    return DATA / "scale-image" / "disk.img"


def entry_path(root: Path, i: int) -> Path:
    top, sub = i // (PER_DIR * 100), (i // PER_DIR) % 100
    return root / f"d{top:03d}" / f"s{sub:02d}" / f"f{i % PER_DIR:02d}"


def build_tree(files: int) -> Path:
    """The tree of `files` entries (cached: built once, then reused as it is)."""
    dest = tree_path(files)
    if dest.is_dir():
        return dest
    tmp = dest.with_name("tree.tmp")
    rmtree(tmp)
    print(f"building {dest} ({files:,} files) ...", flush=True)
    rng = random.Random(files)
    for i in range(files):
        p = entry_path(tmp, i)
        if i % PER_DIR == 0:
            p.parent.mkdir(parents=True)
        if i % HARDLINK_EVERY == HARDLINK_EVERY - 1 and i >= 5000:
            os.link(entry_path(tmp, i - 5000), p)
            continue
        body = rng.randbytes(rng.randint(200, 8000)).translate(TEXTISH)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, body)
        os.close(fd)
    os.sync()
    tmp.rename(dest)
    return dest


def build_image() -> Path:
    """16 GiB apparent, 2 GiB of data (cached)."""
    dest = image_path()
    if dest.is_file() and dest.stat().st_size == IMAGE_GIB * GiB:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name("disk.img.tmp")
    print(f"building {dest} ({IMAGE_GIB} GiB, {IMAGE_RUNS * IMAGE_RUN_MIB // 1024} GiB of "
          "data) ...", flush=True)
    rng = random.Random(20261201)
    with tmp.open("wb") as f:
        f.truncate(IMAGE_GIB * GiB)
        for run in range(IMAGE_RUNS):
            f.seek(run * IMAGE_STRIDE_MIB * MiB)
            for b in range(IMAGE_RUN_MIB):
                block = rng.randbytes(MiB)
                f.write(block.translate(TEXTISH) if (b // 8) % 2 == 0 else block)
    os.sync()
    tmp.rename(dest)
    return dest


@dataclass(frozen=True)
class Touched:
    path: Path
    size: int
    atime_ns: int
    mtime_ns: int


def touch_files(root: Path, files: int, n: int) -> list[Touched]:
    """Append a line to n files spread over the tree (the incremental's change); untouch()
    undoes it: the tree is shared (bench/.data), and every run must find it as built."""
    step = max(1, files // n)
    changed = []
    for k in range(n):
        i = k * step + 1  # never a hard link's slot
        p = entry_path(root, i)
        st = p.stat()
        changed.append(Touched(p, st.st_size, st.st_atime_ns, st.st_mtime_ns))
        with p.open("ab") as f:
            f.write(f"changed {k}\n".encode())
    return changed


def untouch(changed: list[Touched]) -> None:
    """The touched files as they were: their bytes and their times (the ctime stays new:
    every run begins with a full capture, which reads them anyway)."""
    for t in changed:
        os.truncate(t.path, t.size)
        os.utime(t.path, ns=(t.atime_ns, t.mtime_ns))


def main() -> int:
    args = sys.argv[1:]
    for a in args:
        if a == "--image":
            build_image()
        else:
            build_tree(int(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
