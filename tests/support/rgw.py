"""A real, throwaway Ceph RGW for tests: a one-node Ceph cluster from Debian's packages
(ceph-mon, ceph-osd, radosgw: `apt-get install radosgw ceph-mon ceph-osd`), bootstrapped
in a temporary directory the way Ceph's own vstart.sh does, smaller:

- one monitor (`monmaptool --create`, `ceph-mon --mkfs`) on a free localhost port;
- one OSD on `memstore` (objects in RAM, nothing on a disk), pools of size 1;
- `cephx` off (nothing listens beyond 127.0.0.1), so no keyrings to make;
- radosgw with its beast frontend on a free localhost port, which creates its own pools
  at first start; one S3 user (`radosgw-admin user create`) and buckets made with a
  signed PUT (curl's --aws-sigv4; obstore has no create-bucket call).

Ready in about 15 s here (the mon 2 s, the OSD 5 s, radosgw 5-8 s), so the tests that use
it are opt-in: SNAPSHOTS_TEST_RGW=1 (README, "Object storage").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.ports import free_ports
from tests.support.seaweed import ACCESS_KEY, REGION, SECRET_KEY
from workers.engine.model import StorageOptions

BUCKET = "snapshots-tests"  # the session server's bucket (tests/conftest.py: rgw_server)
BINARIES = ("ceph", "ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "curl")


def available() -> str | None:
    """Why RGW tests cannot run here, or None."""
    if os.environ.get("SNAPSHOTS_TEST_RGW") != "1":
        return "Ceph RGW tests are opt-in: SNAPSHOTS_TEST_RGW=1"
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install radosgw ceph-mon ceph-osd)"
    return None


class RgwProcess:
    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="rgw-test-")
        self.dir = Path(self._tmp.name)
        self.mon_port, self.port = free_ports(2)
        self.conf = self.dir / "ceph.conf"
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def options(self, *, cache_dir: str | None = None, **timings: float) -> StorageOptions:
        return StorageOptions(endpoint=self.endpoint, access_key_id=ACCESS_KEY,
                              secret_access_key=SECRET_KEY, region=REGION, cache_dir=cache_dir,
                              **timings)

    def _write_conf(self, fsid: str) -> None:
        d = self.dir
        self.conf.write_text(f"""[global]
fsid = {fsid}
mon host = v1:127.0.0.1:{self.mon_port}
mon initial members = a
public addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
osd objectstore = memstore
memstore device bytes = 1073741824
osd crush chooseleaf type = 0
# The OSD's start-up crush update races its monitor client's first map (1 start in 4
# failed here with 'wrong fsid' on an all-zero fsid); the OSD is placed by hand instead.
osd crush update on start = false
osd class update on start = false
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
pid file = {d}/run/$name.pid
[mon.a]
mon data = {d}/mon
[osd.0]
osd data = {d}/osd0
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{self.port}
rgw data = {d}/rgw
""")

    def _run(self, *argv: str, timeout: float = 60) -> str:
        done = subprocess.run([*argv[:1], "-c", str(self.conf), *argv[1:]], capture_output=True,
                              timeout=timeout, cwd=self.dir)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.decode()[-2000:]}")
        return done.stdout.decode()

    def _daemon(self, *argv: str) -> None:
        log = (self.dir / "log" / f"{Path(argv[0]).name}.out").open("ab")
        self.procs.append(subprocess.Popen(
            [argv[0], "-f", "-c", str(self.conf), *argv[1:]], stdout=log,
            stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True))

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p.args for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-1500:]}"
                                 for f in sorted((self.dir / "log").iterdir()))
                raise RuntimeError(f"{what} did not come up ({dead or 'timeout'}):\n{logs}")
            time.sleep(0.2)

    def start(self, timeout: float = 90.0) -> RgwProcess:
        for sub in ("run", "log", "mon", "osd0", "rgw"):
            (self.dir / sub).mkdir()
        fsid = str(uuid.uuid4())
        self._write_conf(fsid)
        subprocess.run(["monmaptool", "--create", "--add", "a", f"v1:127.0.0.1:{self.mon_port}",
                        "--fsid", fsid, str(self.dir / "monmap")], check=True,
                       capture_output=True)
        self._run("ceph-mon", "-i", "a", "--mkfs", "--monmap", str(self.dir / "monmap"))
        self._daemon("ceph-mon", "-i", "a")
        osd_id = self._run("ceph", "osd", "create").strip()
        self._run("ceph-osd", "-i", osd_id, "--mkfs")
        self._run("ceph", "osd", "crush", "add", f"osd.{osd_id}", "1.0", "host=localhost",
                  "root=default")
        self._daemon("ceph-osd", "-i", osd_id)

        def osd_up() -> bool:
            return bool(json.loads(self._run("ceph", "osd", "stat", "--format", "json"))
                        .get("num_up_osds"))

        self._wait("the OSD", osd_up, timeout)
        self._daemon("radosgw", "-n", "client.rgw.a")

        def rgw_answers() -> bool:
            try:
                return httpx.get(self.endpoint + "/", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        self._wait("radosgw", rgw_answers, timeout)
        self._run("radosgw-admin", "user", "create", "--uid=snapshots",
                  "--display-name=snapshots", f"--access-key={ACCESS_KEY}",
                  f"--secret-key={SECRET_KEY}")
        return self

    def make_bucket(self, name: str) -> None:
        """CreateBucket, signed (SigV4) by curl; the empty body's hash is stated, as RGW
        wants x-amz-content-sha256 on every signed request."""
        empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        done = subprocess.run(
            ["curl", "-s", "-m", "30", "-o", "/dev/null", "-w", "%{http_code}",
             "--aws-sigv4", f"aws:amz:{REGION}:s3", "--user", f"{ACCESS_KEY}:{SECRET_KEY}",
             "-H", f"x-amz-content-sha256: {empty}", "-X", "PUT", f"{self.endpoint}/{name}"],
            capture_output=True, timeout=60, check=True)
        if done.stdout.decode() != "200":
            raise RuntimeError(f"CreateBucket {name} answered {done.stdout.decode()}")

    def close(self) -> None:
        for proc in reversed(self.procs):  # radosgw, then the OSD, then the monitor
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self._tmp.cleanup()
