"""The whole service on s3:// (SPEC section 5), every part real: the uvicorn web process,
Dramatiq worker processes of two hosts (each with its own data directory, so its own
listing cache, and unable to see the other host's states), redis-server and SeaweedFS
(and Ceph RGW too with SNAPSHOTS_TEST_RGW=1: tests/support/rgw.py). Snapshots are made
and restored through the HTTP API and compared bit for bit, deleted (their manifests
leave the bucket, their data goes at the next reclaims, a dead host's by another host),
a worker SIGKILLed mid-capture is resumed by another worker of its host, /readyz names
the bucket when the credentials are wrong, and `make run` takes the bucket from its
environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import obstore
import pytest
from obstore.store import S3Store

from tests.e2e.flow import add_server, delete, snapshot, wait_operation
from tests.e2e.service import Service, wait_until
from tests.engine.treecmp import describe
from tests.faults.conftest import ServiceFactory
from tests.faults.faults import store_for, tree_diff
from tests.faults.test_hosts import capture_under_way, owner_host, snapshot_each_host
from tests.faults.test_make_run import MakeRun
from tests.support import rgw
from tests.support.seaweed import ACCESS_KEY, REGION, S3_BUCKET, SECRET_KEY, SeaweedProcess

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="hiding a host's states needs a private mount namespace (root)"
)
# A reclaim's settle pause (5 s by default) would hold the repository's exclusive lock
# for most of every FAST_ENV reclaim interval; the protocol is the same, only quicker.
S3_TIMINGS = {"SNAPSHOTS_LOCK_SETTLE": "0.1"}


@dataclass(frozen=True)
class Bucket:
    """The bucket of a real S3 server: SeaweedFS, or Ceph RGW (SNAPSHOTS_TEST_RGW=1)."""

    endpoint: str
    name: str


@pytest.fixture(params=["seaweedfs", pytest.param("rgw", marks=pytest.mark.skipif(
    rgw.available() is not None, reason=str(rgw.available())))])
def bucket(request: pytest.FixtureRequest) -> Bucket:
    if request.param == "rgw":
        server: rgw.RgwProcess = request.getfixturevalue("rgw_server")
        return Bucket(server.endpoint, rgw.BUCKET)
    weed: SeaweedProcess = request.getfixturevalue("seaweed")
    return Bucket(weed.endpoint, S3_BUCKET)


def bucket_keys(bucket: Bucket, prefix: str) -> set[str]:
    """Every object under the repository's prefix, read from the store itself."""
    store = S3Store(bucket.name, endpoint=bucket.endpoint, access_key_id=ACCESS_KEY,
                    secret_access_key=SECRET_KEY, region=REGION,
                    client_options={"allow_http": True})
    return {str(meta["path"])[len(prefix) + 1:]
            for page in obstore.list(store, prefix=prefix) for meta in page}


@pytest.fixture
def prefix() -> str:
    return f"service-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3_env(bucket: Bucket, prefix: str) -> dict[str, str]:
    return {"SNAPSHOTS_STORAGE_URL": f"s3://{bucket.name}/{prefix}",
            "AWS_ENDPOINT_URL": bucket.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION, **S3_TIMINGS}


def _state(root: Path, text: str, mb: int = 1) -> Path:
    """A directory state of about ``mb`` MB of random data in four files."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text(text)
    (root / "link").symlink_to("/etc/passwd")
    for i in range(4):
        (root / f"data{i}.bin").write_bytes(os.urandom(mb << 18))
    return root


class Fleet:
    """A service on s3:// with no worker of its own: ``worker(host)`` adds one of a host,
    with that host's data directory and the other hosts' state directories hidden."""

    def __init__(self, svc: Service, tmp_path: Path, hosts: tuple[str, ...]) -> None:
        self.svc = svc
        self.states = {h: tmp_path / "hosts" / h for h in hosts}
        for d in self.states.values():
            d.mkdir(parents=True)

    def worker(self, host: str, **env: str) -> subprocess.Popen[bytes]:
        others = tuple(d for h, d in self.states.items() if h != host)
        data = self.svc.root / f"data-{host}"
        return self.svc.start_worker(host=host, hide=others,
                                     env={"SNAPSHOTS_DATA_DIR": str(data), **env})


@pytest.fixture
def fleet(make_service: ServiceFactory, s3_env: dict[str, str], tmp_path: Path) -> Fleet:
    # A reclaim margin of 1 s instead of an hour: what a delete frees goes within seconds
    # (FAST_ENV reclaims every 2 s), so the test sees the space come back. Locks dead
    # after 8 s without a refresh instead of 30 min: every worker's reaper reclaims, so
    # the SIGKILL of host b's worker may land while it holds the reclaim's exclusive lock
    # (more likely the slower a loaded machine runs that reclaim), which then stopped
    # every reclaim of host a until it went stale, far past the wait for them below.
    svc = make_service(**s3_env, SNAPSHOTS_RECLAIM_MARGIN="1", SNAPSHOTS_LOCK_STALE="8")
    return Fleet(svc.start(workers=0), tmp_path, ("a", "b"))


def test_two_hosts_on_s3_and_a_dead_hosts_snapshots_deleted_from_another(
    fleet: Fleet, bucket: Bucket, prefix: str
) -> None:
    """Captures, restores and a clone across hosts; then host b's worker dies, and host a's
    deletes b's snapshot with b's server: on s3:// a deletion touches only the shared
    bucket, so it runs on any host ("host": null, counted for no host in GET /hosts/)."""
    svc = fleet.svc
    fleet.worker("a")
    worker_b = fleet.worker("b")
    client, store = svc.client(), store_for(svc)
    # Each worker says what it consumes: its host's queue and, on s3://, anyhost.
    wait_until(lambda: "worker of host 'b' consumes anyhost, host.b, webhooks; repository "
               f"s3://{bucket.name}/{prefix}" in svc.logs(), timeout=20, what="b's announce")
    states = {h: _state(fleet.states[h] / "web", f"on {h}\n") for h in "ab"}
    reference = {h: describe(p) for h, p in states.items()}
    servers, snaps = snapshot_each_host(client, store, states, min_mb=0.9)
    keys = bucket_keys(bucket, prefix)
    assert {"config", f"snapshots/{snaps['a']['id']}", f"snapshots/{snaps['b']['id']}"} <= keys
    assert any(k.startswith("data/") for k in keys)
    # Nothing went to a local repository: not the web's, not either host's.
    assert not list(svc.root.rglob("repository"))

    for h, state in states.items():
        (state / "etc" / "app.conf").write_text("broken\n")
        (state / "data0.bin").unlink()
        (state / "data1.bin").write_bytes(b"changed")
        resp = client.post(f"/snapshots/{snaps[h]['id']}/restore/")
        assert resp.status_code == 200, resp.text
        op = wait_operation(client, resp.json()["operation_id"])
        assert op["status"] == "succeeded" and owner_host(store, op["id"]) == h, op
        assert not tree_diff(reference[h], describe(state))

    # A's snapshot restored into b's server (a clone): b's worker reads what a stored.
    resp = client.post(f"/snapshots/{snaps['a']['id']}/restore/",
                       json={"server_id": servers["b"]["id"]})
    op = wait_operation(client, resp.json()["operation_id"])
    assert op["status"] == "succeeded" and owner_host(store, op["id"]) == "b", op
    assert not tree_diff(reference["a"], describe(states["b"]))

    svc.kill(worker_b, signal.SIGKILL)
    op = delete(client, snaps["a"]["id"])
    assert op["status"] == "succeeded" and op["host"] is None, op
    assert client.get(f"/snapshots/{snaps['a']['id']}/").status_code == 404
    resp = client.delete(f"/servers/{servers['b']['id']}/")
    assert resp.status_code == 204, resp.text
    ops = client.get("/operations/", params={"server_id": servers["b"]["id"]}).json()
    (last,) = [o for o in ops["operations"]
               if o["snapshot_id"] == snaps["b"]["id"] and o["type"] == "snapshot.delete"]
    op = wait_operation(client, last["id"])
    assert op["status"] == "succeeded" and op["host"] is None, op
    assert owner_host(store, op["id"]) == "a"  # b's worker is dead
    keys = bucket_keys(bucket, prefix)
    assert not {k for k in keys if k.startswith("snapshots/")}, keys
    # And host a's reclaims (condemn, then sweep a margin later) free every data object.
    wait_until(lambda: not {k for k in bucket_keys(bucket, prefix)
                            if k.startswith(("data/", "packidx/"))},
               timeout=30, what="host a's reclaims to free the deleted snapshots' data")
    hosts = {h.pop("name"): h for h in client.get("/hosts/").json()["hosts"]}
    assert "*" not in hosts and all(h["queued"] == 0 for h in hosts.values()), hosts


def test_a_worker_killed_mid_capture_on_s3_resumes_on_its_host(
    make_service: ServiceFactory, s3_env: dict[str, str], tmp_path: Path
) -> None:
    # 16 MB at 8 MB/s per process: a capture takes ~2 s, so the kill lands mid-way.
    fleet = Fleet(make_service(**s3_env, FAULT_TEST_MBPS="8").start(workers=0), tmp_path,
                  ("a", "b"))
    svc = fleet.svc
    fleet.worker("a")
    victim = fleet.worker("b")
    client, store = svc.client(), store_for(svc)
    state = _state(fleet.states["b"] / "big", "big\n", mb=16)
    server = add_server(client, str(state), host="b")
    reference = describe(state)
    snap_id, op_id, first = capture_under_way(client, store, server["id"], "b")

    fleet.worker("b", FAULT_TEST_MBPS="")  # another worker of host b, not slowed down
    svc.kill(victim, signal.SIGKILL)
    op = wait_operation(client, op_id, timeout=90)
    assert op["status"] == "succeeded" and op["host"] == "b", op
    assert store.get_operation(op_id).attempts >= 2  # type: ignore[union-attr]
    assert store.redis.hget(f"operation:{op_id}", "owner_process") != first
    assert owner_host(store, op_id) == "b"
    assert client.get(f"/snapshots/{snap_id}/").json()["status"] == "available"

    for name in ("data0.bin", "data3.bin"):
        (state / name).unlink()
    resp = client.post(f"/snapshots/{snap_id}/restore/")
    op = wait_operation(client, resp.json()["operation_id"], timeout=90)
    assert op["status"] == "succeeded" and owner_host(store, op["id"]) == "b", op
    assert not tree_diff(reference, describe(state))


def test_readyz_of_the_web_process_names_the_bucket_with_wrong_credentials(
    make_service: ServiceFactory, s3_env: dict[str, str], bucket: Bucket
) -> None:
    svc = make_service(**{**s3_env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}).start(workers=0)
    resp = httpx.get(f"{svc.url}/readyz", timeout=30)
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert body["redis"] is True and body["storage"] is False, body
    assert f"bucket '{bucket.name}'" in body["storage_error"], body
    assert "AWS_SECRET_ACCESS_KEY" in body["storage_error"], body


@pytest.fixture
def make_run_s3(tmp_path: Path, s3_env: dict[str, str]) -> Iterator[MakeRun]:
    with MakeRun.running(tmp_path / "run", **s3_env) as run:
        yield run


def test_make_run_against_s3_from_the_environment(
    make_run_s3: MakeRun, bucket: Bucket, prefix: str, tmp_path: Path
) -> None:
    """`SNAPSHOTS_STORAGE_URL=s3://... AWS_...=... make run`, as a user would try the fleet's
    storage on one machine: snapshots go to the bucket, nothing to a local repository."""
    client = make_run_s3.client()
    state = _state(tmp_path / "servers" / "web", "web\n")
    reference = describe(state)
    server = add_server(client, str(state))
    snap = snapshot(client, server["id"])
    assert f"snapshots/{snap['id']}" in bucket_keys(bucket, prefix)
    assert not (make_run_s3.data_dir / "repository").exists()
    (state / "data2.bin").write_bytes(b"broken")
    resp = client.post(f"/snapshots/{snap['id']}/restore/")
    op = wait_operation(client, resp.json()["operation_id"])
    assert op["status"] == "succeeded", op
    assert not tree_diff(reference, describe(state))
