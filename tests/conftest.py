"""Shared fixtures: a real redis-server for the session, a clean DB and settings per test,
the API app and clients, and helpers for tokens and servers.

Reuse from e2e and fault tests:
- ``redis_server``: the session's RedisProcess (do not kill it; start your own
  ``RedisProcess`` for fault tests, see ``tests/support/redis_proc.py``).
- ``settings``: Settings for this test: REDIS_URL = the session server, DB 1, flushed;
  a tmp data dir; admin token ``ADMIN_TOKEN``; max 5 snapshots per server.
- ``redis_client`` (sync, decode_responses) and ``store`` (the workers' sync Store).
- ``app`` (``create_app(settings)``), ``client`` (Starlette TestClient), ``api``
  (ApiHelper: ``api.token(account, scope)``, ``api.server(account)``, ...).
- ``make_settings(redis_url, data_dir, **overrides)`` for settings of your own, and
  ``tests.support.env.env_for(settings)`` for the environment of real web/worker processes.
- Async tests: ``@pytest.mark.anyio`` (the ``anyio_backend`` fixture pins asyncio) with
  ``httpx.AsyncClient(transport=httpx.ASGITransport(app=app))``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from starlette.applications import Starlette

from workers.engine.engine import WORKER_MODULES
from workers.engine.workerproc import zygote

# An s3:// engine's reader and writer processes are forks of a zygote, which must be forked
# before this process's first S3 request (the seaweed fixture's bucket) to be used at all
# (workers/engine/workerproc/zygote.py): started here, before any test, so every test's
# workers fork from the same untouched modules, never from ones a test monkeypatched.
zygote.start(WORKER_MODULES)

# Starlette suggests httpx2 for its TestClient; httpx works the same for our use.
warnings.filterwarnings("ignore", message=".*httpx2.*")
from starlette.testclient import TestClient  # noqa: E402

from api.app import create_app  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.store import Store  # noqa: E402
from tests.support import rgw  # noqa: E402
from tests.support.api import ApiHelper  # noqa: E402
from tests.support.redis_proc import RedisProcess  # noqa: E402
from tests.support.seaweed import S3_BUCKET, SeaweedProcess  # noqa: E402

ADMIN_TOKEN = "snp_test-admin-token-0123456789abcdef"
TEST_DB = 1
# The folders whose files take longest (real processes killed and waited for), first:
# `make test` hands whole files to two processes in this order (--dist loadfile), so the
# long ones start early and the many short API and unit tests fill in at the end.
SLOW_FIRST = ("faults", "snapctl", "e2e", "events", "engine")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        top = item.path.parts[len(Path(__file__).parent.parts):][:1]
        return SLOW_FIRST.index(top[0]) if top and top[0] in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: each file's own order is kept


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedProcess]:
    """One real S3 server (SeaweedFS) for the session, with bucket S3_BUCKET; tests use a
    prefix of their own. Fault tests that kill the store start their own SeaweedProcess."""
    server = SeaweedProcess().start()
    server.make_bucket(S3_BUCKET)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def rgw_server() -> Iterator[rgw.RgwProcess]:
    """One real Ceph RGW (a one-node cluster, tests/support/rgw.py) for the session, with
    bucket rgw.BUCKET; only for tests that skip unless rgw.available()."""
    server = rgw.RgwProcess().start()
    try:
        server.make_bucket(rgw.BUCKET)
        yield server
    finally:
        server.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_settings(redis_url: str, data_dir: Path, **overrides: object) -> Settings:
    """Settings for a test; keyword overrides as in ``dataclasses.replace``."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "storage_url": f"file://{data_dir / 'repository'}",
        "redis_url": redis_url,
        "admin_token": ADMIN_TOKEN,
        "max_per_server": 5,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(redis_server: RedisProcess, tmp_path: Path) -> Settings:
    client = redis.Redis.from_url(redis_server.url_for_db(TEST_DB))
    client.flushdb()
    client.close()
    return make_settings(redis_server.url_for_db(TEST_DB), tmp_path / "data")


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.effective_redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def store(redis_client: redis.Redis, settings: Settings) -> Store:
    return Store(redis_client, settings)


@pytest.fixture
def app(settings: Settings) -> Starlette:
    return create_app(settings)


@pytest.fixture
def client(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def api(client: TestClient, tmp_path: Path) -> ApiHelper:
    return ApiHelper(client, ADMIN_TOKEN, tmp_path / "servers")
