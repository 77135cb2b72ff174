"""One run of bench/engine.py: its phases (capture, restore, restore onto a 1 %-changed
state, checks) and their timings, and the median over several runs."""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import benchlib
from commands import PY, ROOT, Outcome, sh
from comparison import compare_images, compare_trees, describe
from dataset import State, change_one_percent_of_image, change_one_percent_of_tree, touch_one_file
from filesystem import (
    DATA,
    EXT4_RECENT_S,
    SETTLE_MARK,
    drop_caches,
    du_bytes,
    read_tree,
    rmtree,
    settle,
)
from tools import Ours, Tool, engine_available, make_tools

Results = dict[str, dict[str, Outcome]]  # phase -> tool -> outcome


@dataclass
class Run:
    states: list[State]
    tools: list[Tool]
    cold: bool
    results: Results = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    engine_error: str | None = None
    sync_between: bool = True
    swap: bool = False  # the --baseline column runs before ours in each phase (even runs)

    def in_order(self) -> list[Tool]:
        """The tools in the order this run's phases run them. With --baseline, even runs
        put the baseline first, so an order effect (what the tool before left cached or
        dirty, ext4's reuse of recently freed inodes) falls on each column alike."""
        if self.swap and len(self.tools) > 1:
            return [self.tools[1], self.tools[0], *self.tools[2:]]
        return self.tools

    def record(self, phase: str, tool: Tool, fn: Callable[[], Outcome], cold: bool) -> Outcome:
        if isinstance(tool, Ours) and self.engine_error:
            res = Outcome(error="engine not available")
        else:
            if cold and self.cold:
                drop_caches()  # which writes back every dirty page first
            elif self.sync_between:
                # Untimed: no tool pays the writeback of what the tool before it left dirty.
                # Our sync point (workers/engine/fs/syncpoint.py) syncfs'es the state's
                # filesystem, which would otherwise charge us for restic's or cp -a's output.
                os.sync()
            noise = benchlib.Noise()
            res = fn()
            res.noise = noise.fraction()
        self.results.setdefault(phase, {})[tool.name] = res
        status = f"{res.secs:.2f} s" if res.secs is not None else f"ERROR {res.error}"
        status += f"   (other work meanwhile: {res.noise:.0%} of the CPUs)"
        print(f"  {phase:<34} {tool.name:<9} {status}", flush=True)
        return res


def phase_capture(run: Run) -> None:
    for tool in run.in_order():
        init = tool.init() if not (isinstance(tool, Ours) and run.engine_error) else Outcome(0.0)
        if init.error:
            print(f"  {tool.name}: init failed: {init.error}")
    for seq, label in ((1, "full capture"), (2, "incremental capture")):
        if seq == 2:
            touch_one_file(run.states, seq)
        for state in run.states:
            for tool in run.in_order():
                if seq == 2:  # else the first tools pay the cache the last drop emptied
                    warm_up(state)
                    tool.warm(state)
                run.record(
                    f"{label} · {state.name}",
                    tool,
                    partial(tool.capture, state, seq),
                    cold=seq == 1,
                )


def warm_up(state: State) -> None:
    """Untimed: the state's metadata and data in the page cache, as a warm phase means for
    every tool alike. The full captures drop the cache before each tool, so without this
    the first tool of the incremental phase (ours) walked a cold tree and the others a warm
    one."""
    if state.kind == "image":
        with state.path.open("rb") as f:
            while f.read(1 << 20):
                pass
        return
    for d, dirs, files in os.walk(state.path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                os.lstat(os.path.join(d, name))


def phase_restore(run: Run, where: Path) -> dict[str, Path]:
    targets: dict[str, Path] = {}
    for state in run.states:
        for tool in run.in_order():
            dst = where / f"restore-{tool.repo.name}-{state.name}"
            run.record(
                f"full restore · {state.name}",
                tool,
                partial(tool.restore, state, 2, dst),
                cold=True,
            )
            targets[f"{tool.name}/{state.name}"] = tool.restored_path(state, dst)
            if state.kind == "image" and not isinstance(tool, Ours):
                rmtree(dst)  # disk space; one big file, so no ext4 inode churn (see settle)
    return targets


def phase_verify_ours(run: Run, targets: dict[str, Path], label: str) -> None:
    if run.engine_error:
        return
    for ours in (t for t in run.tools if isinstance(t, Ours)):
        for state in run.states:
            got = targets[f"{ours.name}/{state.name}"]
            if run.results[f"full restore · {state.name}"][ours.name].error:
                continue
            if state.kind == "directory":
                problems = compare_trees(state.path, got)
            else:
                problems = compare_images(state.path, got)
            who = "" if ours.name == "ours" else f" ({ours.name})"
            run.checks.append(f"{label} · {state.name}{who}: {describe(problems)}")


def _change_one_percent(state: State, target: Path, seed: int) -> str:
    if state.kind == "directory":
        n = change_one_percent_of_tree(target, seed)
        return f"{n} files changed/deleted/chmod-ed + 1 added"
    n = change_one_percent_of_image(target, seed)
    return f"{n} MiB blocks rewritten"


def phase_partial_restore(run: Run, where: Path, targets: dict[str, Path], warm: bool) -> None:
    """Our restore of the snapshot onto our restored state after 1% of it changed."""
    label = " (warm)" if warm else ""
    for state in run.states:
        for ours in (t for t in run.in_order() if isinstance(t, Ours)):
            phase = f"restore onto 1%-changed{label} · {state.name}"
            full = run.results[f"full restore · {state.name}"][ours.name]
            if full.error or run.engine_error:
                run.record(phase, ours, lambda: Outcome(error="no full restore to start from"),
                           False)
                continue
            target = targets[f"{ours.name}/{state.name}"]
            what = _change_one_percent(state, target, 8 if warm else 7)
            if ours.name == "ours":
                run.checks.append(f"1%-changed{label} {state.name} target: {what}")
            if warm:
                # The cold phase dropped the cache before each restore, so the tool that ran
                # last (the --baseline column) would start this one with its code, its
                # repository and its target cached, and the first one (ours) with ~27 MiB
                # to read: warm each tool's own, untimed, all of it.
                read_tree(target)
                read_tree(ours.repo)
                ours.warm(state)
            res = run.record(
                phase,
                ours,
                partial(ours.restore, state, 2, where / f"restore-{ours.repo.name}-{state.name}"),
                cold=not warm,
            )
            if res.error:
                failed = f"restore onto 1%-changed{label} {state.name} ({ours.name}) FAILED"
                run.checks.append(f"{failed}: {res.error}")
    phase_verify_ours(run, targets, f"restore onto 1%-changed{label}, compared with source")


def startup_cost(run: Run) -> None:
    """What every one of our operations pays before doing any work (warm cache, best of 3)."""
    if run.engine_error:
        return
    argv = [PY, "-c", "import workers.engine"]
    best = min(sh(argv, cwd=ROOT, env=run.tools[0].env).secs or 0.0 for _ in range(3))
    bare = min(sh([PY, "-c", "pass"]).secs or 0.0 for _ in range(3))
    run.notes.append(
        f"start-up included in each of our timings: python {bare:.3f} s, "
        f"python + import workers.engine {best:.3f} s (warm, best of 3)"
    )


def execute(run: Run, where: Path) -> None:
    print("capture:", flush=True)
    phase_capture(run)
    startup_cost(run)
    for tool in run.tools:
        if tool.repo.exists() or isinstance(tool, Ours):
            sizes = {"stored bytes (apparent)": True, "stored bytes (on disk)": False}
            for phase, apparent in sizes.items():
                res = Outcome(secs=float(du_bytes(tool.repo, apparent)))
                if isinstance(tool, Ours) and run.engine_error:
                    res = Outcome(error="engine not available")
                run.results.setdefault(phase, {})[tool.name] = res
    print("restore:", flush=True)
    targets = phase_restore(run, where)
    phase_verify_ours(run, targets, "full restore, compared with source")
    print("restore onto a 1%-changed state (cold cache):", flush=True)
    phase_partial_restore(run, where, targets, warm=False)
    print(f"restore onto a 1%-changed state (warm cache, after {EXT4_RECENT_S} s):", flush=True)
    time.sleep(EXT4_RECENT_S)  # our restore removed the old tree: let ext4 settle (see settle)
    phase_partial_restore(run, where, targets, warm=True)


def one_run(args: argparse.Namespace, states: list[State], cold: bool, i: int) -> Run:
    where = DATA / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{i}"
    where.mkdir(parents=True)
    tools = make_tools(where, args.tools.split(",") if args.tools else None, args.baseline)
    run = Run(states, tools, cold, sync_between=not args.inherit_dirty,
              swap=args.baseline is not None and i % 2 == 0)
    run.engine_error = engine_available(run.tools[0].env)
    if run.engine_error:
        print(f"engine not available: {run.engine_error}")
    try:
        settle()
        first = f" ({run.in_order()[0].name} first in each phase)" if args.baseline else ""
        print(f"run {i}/{args.repeat}{first}")
        print("quiet   :", benchlib.wait_quiet(args.max_wait), flush=True)
        execute(run, where)
        print(f"load    : 1-minute load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        if not args.keep:
            rmtree(where)
            SETTLE_MARK.touch()
    return run


def _median(outs: list[Outcome]) -> Outcome:
    ok = [o for o in outs if o.secs is not None]
    if not ok:
        return outs[-1]
    return Outcome(
        secs=statistics.median(o.secs or 0.0 for o in ok),
        noise=statistics.median(o.noise for o in ok),
        out=ok[-1].out,
        failed=len(outs) - len(ok),
    )


def merge(runs: list[Run]) -> Run:
    """Median of every cell over the runs; every correctness line of every run."""
    last = runs[-1]
    if len(runs) == 1:
        return last
    merged = Run(last.states, last.tools, last.cold, notes=last.notes)
    merged.engine_error = last.engine_error
    for phase, cells in last.results.items():
        merged.results[phase] = {
            tool: _median(
                [r.results[phase][tool] for r in runs if tool in r.results.get(phase, {})]
            )
            for tool in cells
        }
    for i, run in enumerate(runs, 1):
        merged.checks += [f"run {i}: {line}" for line in run.checks]
    return merged
