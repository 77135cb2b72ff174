"""What bench/engine.py prints: the header, the table (rich when installed), the targets of
issue 2, the correctness checks and the engine's own results."""

from __future__ import annotations

import argparse
import platform
import sys

import benchlib
from commands import MiB, Outcome, sh
from filesystem import DATA, fs_info
from runs import Results, Run

NOISY = 0.2  # a timing during which other work used more than this share of the CPUs


def total(results: Results, prefix: str, tool: str) -> Outcome:
    parts = [v[tool] for k, v in results.items() if k.startswith(prefix) and tool in v]
    if not parts or any(p.secs is None for p in parts):
        errs = [p.error for p in parts if p.error]
        return Outcome(error=errs[0] if errs else "n/a")
    return Outcome(secs=sum(p.secs or 0.0 for p in parts), noise=max(p.noise for p in parts))


def fmt(res: Outcome | None, ours: Outcome | None, is_bytes: bool) -> str:
    if res is None:
        return ""
    if res.secs is None:
        return "n/a" if res.error == "engine not available" else f"ERR: {(res.error or '')[:40]}"
    val = f"{res.secs / MiB:.1f} MiB" if is_bytes else f"{res.secs:.2f} s"
    if res.noise > NOISY:
        val += "*"
    if res.failed:
        val += f" ({res.failed} FAILED)"
    if ours is None or ours.secs is None or ours is res or not ours.secs:
        return val
    return f"{val} ({res.secs / ours.secs:.1f}x)"


def table_rows(run: Run) -> list[tuple[str, list[str]]]:
    res = dict(run.results)
    for prefix in ("full capture", "full restore"):
        res[f"{prefix} · total"] = {t.name: total(run.results, prefix, t.name) for t in run.tools}
    order = [
        "full capture · rootfs",
        "full capture · image",
        "full capture · total",
        "incremental capture · rootfs",
        "incremental capture · image",
        "stored bytes (apparent)",
        "stored bytes (on disk)",
        "full restore · rootfs",
        "full restore · image",
        "full restore · total",
        "restore onto 1%-changed · rootfs",
        "restore onto 1%-changed · image",
        "restore onto 1%-changed (warm) · rootfs",
        "restore onto 1%-changed (warm) · image",
    ]
    rows = []
    for phase in order:
        cells = res.get(phase, {})
        ours = cells.get("ours")
        is_bytes = phase.startswith("stored")
        rows.append((phase, [fmt(cells.get(t.name), ours, is_bytes) for t in run.tools]))
    return rows


def print_table(run: Run, title: str) -> None:
    rows = table_rows(run)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(" | ".join(["phase", *(t.name for t in run.tools)]))
        for phase, cells in rows:
            print(" | ".join([phase, *cells]))
        return
    table = Table(
        title=title,
        caption="(Nx) = tool ÷ ours: above 1 means ours is faster/smaller; "
        f"* = other work used more than {NOISY:.0%} of the CPUs meanwhile (noisy)",
    )
    table.add_column("phase")
    for tool in run.tools:
        table.add_column(tool.name, justify="right")
    for phase, cells in rows:
        table.add_row(phase, *cells)
    Console(width=160).print(table)


def targets(run: Run) -> list[tuple[str, bool | None, str]]:
    r = run.results
    ours_cap, restic_cap = total(r, "full capture", "ours"), total(r, "full capture", "restic")
    ours_res, restic_res = total(r, "full restore", "ours"), total(r, "full restore", "restic")
    ours_b = r.get("stored bytes (apparent)", {}).get("ours", Outcome())
    restic_b = r.get("stored bytes (apparent)", {}).get("restic", Outcome())
    inc = r.get("incremental capture · rootfs", {}).get("ours", Outcome())
    part = r.get("restore onto 1%-changed · rootfs", {}).get("ours", Outcome())
    full = r.get("full restore · rootfs", {}).get("ours", Outcome())
    warm = r.get("restore onto 1%-changed (warm) · rootfs", {}).get("ours", Outcome())

    def ratio(a: Outcome, b: Outcome) -> float | None:
        return None if a.secs is None or b.secs is None or not b.secs else a.secs / b.secs

    cap, byt, rst, prt = (
        ratio(restic_cap, ours_cap),
        ratio(ours_b, restic_b),
        ratio(restic_res, ours_res),
        ratio(full, part),
    )
    return [
        (
            "full capture >= 2x faster than restic",
            None if cap is None else cap >= 2,
            "n/a" if cap is None else f"{cap:.2f}x",
        ),
        (
            "stored bytes <= restic's",
            None if byt is None else byt <= 1,
            "n/a" if byt is None else f"ours/restic = {byt:.3f}",
        ),
        (
            "incremental capture of a one-file change < 0.5 s (rootfs)",
            None if inc.secs is None else inc.secs < 0.5,
            "n/a" if inc.secs is None else f"{inc.secs:.3f} s",
        ),
        (
            "full restore >= 2x faster than restic",
            None if rst is None else rst >= 2,
            "n/a" if rst is None else f"{rst:.2f}x",
        ),
        (
            "1%-changed restore >= 10x faster than full restore (rootfs)",
            None if prt is None else prt >= 10,
            "n/a" if prt is None else f"{prt:.1f}x cold/cold" + _warm_note(full, warm),
        ),
    ]


def _warm_note(full: Outcome, warm: Outcome) -> str:
    if full.secs is None or not warm.secs:
        return ""
    return f" (cold full / warm 1%-changed: {full.secs / warm.secs:.1f}x)"


def print_report(run: Run, title: str) -> None:
    print()
    print_table(run, title)
    print("\ntargets:")
    for name, ok, value in targets(run):
        verdict = "N/A " if ok is None else ("PASS" if ok else "FAIL")
        print(f"  {verdict}  {name}: {value}")
    print("\ncorrectness of our restores:")
    for line in run.checks or ["  (none: engine not available)"]:
        print(f"  {line}")
    ours_out = {k: v["ours"].out for k, v in run.results.items() if "ours" in v and v["ours"].out}
    if ours_out:
        print("\nengine results:")
        for phase, out in ours_out.items():
            print(f"  {phase}: {out[:200]}")
    for note in run.notes:
        print(f"  {note}")


def header(args: argparse.Namespace, cold: bool, desc: str) -> None:
    versions = [
        sh(cmd).out.splitlines()[:1]
        for cmd in (["restic", "version"], ["borg", "--version"], ["zstd", "--version"])
    ]
    print("command :", " ".join([".venv/bin/python", "bench/engine.py", *sys.argv[1:]]))
    print(f"machine : {benchlib.machine()}, fs {fs_info(DATA)}")
    tools = "; ".join(v[0] for v in versions if v)
    print(f"tools   : {tools}; python {platform.python_version()}")
    print("dataset :", desc)
    print(
        "cache   :",
        "page cache dropped before every full capture and every restore"
        if cold
        else "WARM cache for every tool alike (could not drop the page cache)",
    )
    print(
        "dirty   :",
        "each tool pays the writeback the one before it left (--inherit-dirty)"
        if args.inherit_dirty
        else "untimed sync before every warm operation (none pays another's writeback)",
    )
    print(
        "options : restic repo v2 --compression auto; borg -e none zstd,3; tar --xattrs |"
        " zstd -3 -T0; incremental = 1 new file in rootfs + 1 MiB rewritten in image"
    )
