"""`python -m workers.catalog verify`: reads every object of every snapshot back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from workers.engine import Engine, SnapshotMeta, StateSpec


def _verify(repo: Path, *ids: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SNAPSHOTS_STORAGE_URL": f"file://{repo}"}
    return subprocess.run(
        [sys.executable, "-m", "workers.catalog", "verify", *ids],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_verify_passes_then_names_the_corrupt_snapshot(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "big").write_bytes(os.urandom(3 * 1024 * 1024))
    repo = tmp_path / "repo"
    engine = Engine(f"file://{repo}")
    meta = SnapshotMeta(
        snapshot_id=7,
        server_id=1,
        server_name="s",
        account="acme",
        name="n",
        description=None,
        created_at="2026-11-27T00:00:00Z",
    )
    engine.capture(meta, StateSpec(kind="directory", path=str(state)))

    ok = _verify(repo)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "snapshot 7: ok" in ok.stdout

    victim = max(
        (p for p in (repo / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    bad = _verify(repo)
    assert bad.returncode == 1
    assert "snapshot 7: CORRUPT" in bad.stdout
    assert victim.name in bad.stdout

    missing = _verify(repo, "99")
    assert missing.returncode == 1
    assert "snapshot 99: CORRUPT" in missing.stdout
