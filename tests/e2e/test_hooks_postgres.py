"""The README's PostgreSQL examples, run for real (skipped, saying why, without PostgreSQL).

1. Live, logical: the pre_snapshot hook runs CHECKPOINT and pg_dump against this machine's
   PostgreSQL (127.0.0.1:5432, trust auth, database ``test``) into the server's state, so
   each snapshot holds a consistent dump; the table is dropped, the snapshot restored into a
   new server, and the dump loaded back.
2. Physical, with downtime: a private cluster (initdb as the postgres user) whose power
   driver runs CHECKPOINT and then a fast shutdown (stop_server); the pre_snapshot hook
   refuses to capture unless pg_controldata says the cluster was shut down cleanly. After
   more writes, the snapshot is restored and PostgreSQL starts on the captured data.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.flow import restore, snapshot
from tests.e2e.service import Service
from tests.support.ports import free_port

PSQL = shutil.which("psql")
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)
MACHINE = "-h 127.0.0.1 -p 5432 -U postgres"


def _machine_pg() -> str | None:
    """Why the machine's PostgreSQL cannot be used, or None."""
    if PSQL is None or shutil.which("pg_dump") is None:
        return "psql/pg_dump not installed"
    probe = subprocess.run([PSQL, *MACHINE.split(), "-d", "test", "-Atc", "select 1"],
                           capture_output=True, text=True, timeout=10, check=False)
    return None if probe.returncode == 0 else f"no PostgreSQL at 127.0.0.1:5432: {probe.stderr}"


def _sql(sql: str, where: str = MACHINE, db: str = "test") -> str:
    assert PSQL is not None
    out = subprocess.run([PSQL, *where.split(), "-d", db, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


def test_pg_dump_hook_against_the_machines_postgresql(
    service: Service, states: Path
) -> None:
    why = _machine_pg()
    if why is not None:
        pytest.skip(why)
    table = f"hooks_{uuid.uuid4().hex[:10]}"
    _sql(f"create table {table} (id int primary key, note text); "
         f"insert into {table} select g, 'row ' || g from generate_series(1, 500) g")
    try:
        client = service.client()
        state = states / "pg-dump"
        state.mkdir()
        r = client.post("/servers/", json={
            "name": "pg-01", "account": "acme",
            "state": {"kind": "directory", "path": str(state)},
            "hooks": {
                "pre_snapshot": f"psql {MACHINE} -d test -v ON_ERROR_STOP=1 -c CHECKPOINT && "
                                f"pg_dump {MACHINE} -d test -t {table} --no-owner "
                                '-f "$SNAPSHOTS_STATE_PATH/dump.sql"',
                "post_snapshot": 'echo "dumped for snapshot $SNAPSHOTS_SNAPSHOT_ID"',
                "timeout": 60}})
        assert r.status_code == 201, r.text
        snap = snapshot(client, r.json()["id"], name="nightly")
        op = client.get(f"/operations/{snap['operation_id']}/").json()
        assert [(h["hook"], h["exit_code"]) for h in op["hooks"]] == [
            ("pre_snapshot", 0), ("post_snapshot", 0)]
        assert "CHECKPOINT" in op["hooks"][0]["output"]

        _sql(f"drop table {table}")
        target = client.post("/servers/", json={
            "name": "pg-restore", "account": "acme",
            "state": {"kind": "directory", "path": str(states / "pg-new")}})
        assert restore(client, snap["id"], server_id=target.json()["id"])["status"] == "succeeded"
        assert PSQL is not None
        subprocess.run([PSQL, *MACHINE.split(), "-d", "test", "-v", "ON_ERROR_STOP=1", "-q",
                        "-f", str(states / "pg-new" / "dump.sql")], check=True,
                       capture_output=True, timeout=60)
        assert _sql(f"select count(*), sum(id) from {table}") == "500|125250"
    finally:
        _sql(f"drop table if exists {table}")


@pytest.fixture
def private_cluster() -> Iterator[tuple[Path, int]]:
    """A PostgreSQL cluster of its own (initdb as the postgres user), stopped at the end."""
    if PSQL is None or PG_BIN is None or not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    if shutil.which("runuser") is None or subprocess.run(
            ["id", "postgres"], capture_output=True, check=False).returncode != 0:
        pytest.skip("no postgres user to run a private cluster as")
    root = Path(tempfile.mkdtemp(prefix="pg-hooks-"))
    shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data),
                    "-A", "trust", "-U", "postgres"], check=True, capture_output=True, timeout=120)
    try:
        yield data, port
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
                        str(data), "stop", "-m", "immediate"], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_checkpoint_then_stop_server_with_a_clean_shutdown_check(
    service: Service, private_cluster: tuple[Path, int]
) -> None:
    data, port = private_cluster
    ctl = f"runuser -u postgres -- {PG_BIN}/pg_ctl -D {data}"
    where = f"-h 127.0.0.1 -p {port} -U postgres"
    options = f"-p {port} -k {data.parent} -c listen_addresses=127.0.0.1"
    start = f"{ctl} -l {data.parent}/log -o '{options}' -w start"
    subprocess.run(start, shell=True, check=True, capture_output=True, timeout=60)
    _sql("create table t (id int); insert into t select generate_series(1, 1000)", where,
         "postgres")
    client = service.client()
    r = client.post("/servers/", json={
        "name": "pg-02", "account": "acme",
        "state": {"kind": "directory", "path": str(data)},
        "power": {"kind": "command",
                  # CHECKPOINT first, so the shutdown checkpoint (the downtime) is short.
                  "stop": f"psql {where} -d postgres -c CHECKPOINT && {ctl} -m fast -w stop",
                  "start": start, "status": f"{ctl} status"},
        "hooks": {"pre_snapshot": f'{PG_BIN}/pg_controldata "$SNAPSHOTS_STATE_PATH" | '
                                  "grep -E 'cluster state: +shut down$'"}})
    assert r.status_code == 201, r.text
    server = r.json()
    snap = snapshot(client, server["id"], name="consistent", stop_server=True)
    op = client.get(f"/operations/{snap['operation_id']}/").json()
    assert op["hooks"][0]["exit_code"] == 0 and "shut down" in op["hooks"][0]["output"]
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "running"
    _sql("insert into t select generate_series(1001, 5000)", where, "postgres")
    assert _sql("select count(*) from t", where, "postgres") == "5000"
    assert restore(client, snap["id"])["status"] == "succeeded"
    assert _sql("select count(*) from t", where, "postgres") == "1000"
