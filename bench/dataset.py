"""The dataset of bench/engine.py, built once and cached in bench/.data/: a Debian minbase
rootfs (debootstrap) and a VM-disk-like image, and the changes made to them between runs."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from commands import ROOT, MiB, sh
from filesystem import DATA, du_bytes, rmtree

DEFAULT_MIRROR = "http://deb.debian.org/debian"


def _mirror() -> str:
    """The Debian mirror apt uses here, else deb.debian.org."""
    for src in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        try:
            for line in src.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] or words[:1] == ["deb"]:
                    url = next(w for w in words[1:] if w.startswith("http"))
                    if "security" not in url:
                        return url
        except (OSError, StopIteration):
            continue
    return DEFAULT_MIRROR


def build_rootfs(dest: Path) -> None:
    if dest.is_dir():
        return
    tmp = dest.with_name(dest.name + ".tmp")
    rmtree(tmp)
    for mirror in dict.fromkeys([DEFAULT_MIRROR, _mirror()]):
        print(f"building {dest} with debootstrap from {mirror} (a few minutes) ...", flush=True)
        res = sh(["debootstrap", "--variant=minbase", "bookworm", str(tmp), mirror])
        if res.error is None:
            tmp.rename(dest)
            return
        print(f"  debootstrap failed: {res.error}", flush=True)
        rmtree(tmp)
    raise SystemExit("could not build the Debian rootfs with debootstrap")


def build_subset(full: Path, dest: Path, parts: list[str]) -> None:
    if dest.is_dir():
        return
    tmp = dest.with_name(dest.name + ".tmp")
    rmtree(tmp)
    tmp.mkdir(parents=True)
    for part in parts:
        (tmp / part).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(full / part), str(tmp / part)], check=True)
    tmp.rename(dest)


_WORDS_TEXT = (
    "the server kernel systemd nginx request GET POST 200 404 500 user session login logout "
    "database query SELECT INSERT UPDATE from where table index cache miss hit worker job queue "
    "started stopped failed retry timeout connection accepted closed client upstream backend "
    "config value true false null error warning info debug trace disk memory cpu load network"
)
WORDS = _WORDS_TEXT.split()


def _text_block(rng: random.Random, size: int) -> bytes:
    lines: list[str] = []
    n = 0
    while n < size:
        ts = f"2026-11-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
        words = " ".join(rng.choices(WORDS, k=rng.randint(4, 14)))
        host, ident = rng.randint(1, 9), rng.randint(0, 1 << 30)
        line = f"{ts}:{rng.randint(0, 59):02d}Z host{host} {words} id={ident}\n"
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()[:size]


def build_image(dest: Path, size_mib: int) -> dict[str, int]:
    """A VM-disk-like image: runs of log-like text, random bytes and zeros (1 MiB blocks)."""
    rng = random.Random(20261127)
    kinds = {"text": 0, "random": 0, "zero": 0}
    plan: list[str] = []
    while len(plan) < size_mib:
        kind = rng.choices(["text", "random", "zero"], weights=[4, 3, 3])[0]
        plan.extend([kind] * rng.randint(1, 16))
    plan = plan[:size_mib]
    for k in plan:
        kinds[k] += 1
    if dest.is_file() and dest.stat().st_size == size_mib * MiB:
        return kinds
    print(f"building {dest} ({size_mib} MiB) ...", flush=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with tmp.open("wb") as f:
        for kind in plan:
            if kind == "text":
                f.write(_text_block(rng, MiB))
            elif kind == "random":
                f.write(rng.randbytes(MiB))
            else:
                f.write(bytes(MiB))
    tmp.rename(dest)
    return kinds


@dataclass
class State:
    name: str
    kind: str  # "directory" | "image"
    path: Path
    server_id: int


def _shown(path: Path) -> str:
    """The path from the checkout where it is inside it; bench/.data may be a symlink to
    elsewhere (DATA is resolved: a state path through a symlink is refused)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def build_dataset(quick: bool) -> tuple[list[State], str]:
    DATA.mkdir(parents=True, exist_ok=True)
    full_rootfs = DATA / "rootfs"
    build_rootfs(full_rootfs)
    if quick:
        rootfs = DATA / "quick" / "rootfs"
        build_subset(full_rootfs, rootfs, ["etc", "usr/bin", "usr/sbin", "usr/share/doc", "dev"])
        image, size = DATA / "quick" / "disk.img", 64
    else:
        rootfs, image, size = full_rootfs, DATA / "disk.img", 300
    kinds = build_image(image, size)
    nfiles = sum(len(fs) + len(ds) for _, ds, fs in os.walk(rootfs))
    desc = (
        f"rootfs {_shown(rootfs)}: {du_bytes(rootfs, True) / MiB:.0f} MiB, "
        f"{nfiles} entries; image {_shown(image)}: {size} MiB "
        f"(text {kinds['text']} / random {kinds['random']} / zero {kinds['zero']} MiB)"
    )
    states = [State("rootfs", "directory", rootfs, 1), State("image", "image", image, 2)]
    return states, desc


def touch_one_file(states: list[State], seq: int) -> None:
    """The incremental change: one new small file in the rootfs, 1 MiB rewritten in the image."""
    rootfs, image = states
    (rootfs.path / "etc" / "bench-incremental").write_text(f"run {seq} at {time.time()}\n")
    with image.path.open("r+b") as f:
        f.seek(image.path.stat().st_size // 3)
        f.write(random.Random(time.time_ns()).randbytes(MiB))


def change_one_percent_of_tree(root: Path, seed: int) -> int:
    """Change 1% of the regular files: mostly appended to, some deleted, some chmod-ed."""
    files = sorted(
        Path(d, f)
        for d, _, fs in os.walk(root)
        for f in fs
        if Path(d, f).is_file() and not Path(d, f).is_symlink()
    )
    rng = random.Random(seed)
    chosen = rng.sample(files, max(1, len(files) // 100))
    for i, path in enumerate(chosen):
        if i % 10 == 0:
            path.unlink()
        elif i % 10 == 1:
            path.chmod(path.stat().st_mode ^ 0o004)
        else:
            with path.open("ab") as f:
                f.write(b"changed by bench/engine.py\n")
    (root / "bench-new-file").write_text("a file that is not in the snapshot\n")
    return len(chosen)


def change_one_percent_of_image(path: Path, seed: int) -> int:
    rng = random.Random(seed)
    blocks = path.stat().st_size // MiB
    chosen = rng.sample(range(blocks), max(1, blocks // 100))
    with path.open("r+b") as f:
        for b in chosen:
            f.seek(b * MiB)
            f.write(rng.randbytes(MiB))
    return len(chosen)


def wait_for_space(states: list[State], max_wait: float) -> bool:
    """Enough free space for the repositories and restores of a run (about 6x the data)?"""
    need = 6 * sum(du_bytes(s.path, True) for s in states)
    deadline = time.monotonic() + max_wait
    while (free := shutil.disk_usage(DATA).free) < need:
        if time.monotonic() > deadline:
            print(f"not enough free space in {DATA}: {free / MiB:.0f} MiB, need ~{need / MiB:.0f}")
            return False
        print(f"waiting for free space: {free / MiB:.0f} MiB free, need ~{need / MiB:.0f}")
        time.sleep(15)
    return True
