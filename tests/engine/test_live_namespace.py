"""A live restore (the server runs: power `none`) gives back exactly the snapshot's tree
although a process of the server changes the tree's names while the restore runs: the
restored tree is built apart and swapped in, so what a process working in the old one
creates, removes or renames meanwhile stays in the old one (engine.restore: `live`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from workers.engine import Engine
from workers.engine.restore.reuse import ReuseCheck

from .conftest import dir_state, make_meta
from .tenant import Tenant
from .treecmp import describe

# Working in a directory of the state: on "go", a file created, one removed, one renamed,
# a directory made, as a running server does.
_RENAMER = r"""
import os, sys
os.chdir(sys.argv[1])
print("ready", flush=True)
for _line in sys.stdin:
    with open("intruder", "w") as f:
        f.write("x")
    os.unlink("keep")
    os.rename("moved", "moved.away")
    os.mkdir("newdir")
    print("ok", flush=True)
"""


def test_a_live_restore_gives_back_the_snapshots_names_while_the_server_changes_them(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "srv"
    (src / "etc").mkdir(parents=True)
    for name in ("keep", "moved", "other"):
        (src / "etc" / name).write_text(name)
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(1000))
    engine.capture(make_meta(1), dir_state(src))
    ref = describe(src)
    (src / "f3").write_text("changed: forces a restore")  # one file differs: a patch's size
    server = Tenant(_RENAMER, src / "etc")
    assert server.line() == "ready"
    acted: list[str] = []

    def acting(check: Any) -> Any:  # the server acts as the restore looks at its first file
        def first(*a: Any, **k: Any) -> Any:
            if not acted:
                acted.append(server.send("go"))
            return check(*a, **k)
        return first

    for name in ("candidate", "trusted_in_place"):
        monkeypatch.setattr(ReuseCheck, name, acting(getattr(ReuseCheck, name)))
    try:
        engine.restore(1, dir_state(src), live=True)
    finally:
        server.close()
    assert acted == ["ok"]
    assert describe(src) == ref  # no intruder, keep and moved back, no newdir
