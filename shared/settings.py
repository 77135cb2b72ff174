"""Service settings, read once from the environment (SPEC section 3).

The only place that reads the environment: every other module takes a ``Settings`` (or a
value of one). Each default is written once, as the field's default below.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from shared.hosts import DEFAULT_HOST, HOST_RULE, valid_host
from shared.logs import LOG_FORMATS

ADMIN_TOKEN_FILE = "admin_token"
EMBEDDED_REDIS_SOCKET = "redis.sock"


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise SettingsError(f"{name} must be > 0, got {raw!r}")
    return value


def _optional(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    return raw.strip()


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = _optional(env, name)
    return None if raw is None else Path(raw).expanduser().resolve()


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = (_optional(env, name) or default).lower()
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _check_storage_url(url: str) -> None:
    """file:///abs/path, or s3://bucket[/prefix] with a valid bucket name."""
    if url.startswith("file://") and len(url) > len("file://"):
        return
    if url.startswith("s3://"):
        bucket = url[len("s3://"):].split("/", 1)[0]
        if _BUCKET.match(bucket):
            return
        raise SettingsError(f"SNAPSHOTS_STORAGE_URL names no valid bucket (3-63 lowercase "
                            f"letters, digits, dots, hyphens): {url!r}")
    raise SettingsError(
        f"SNAPSHOTS_STORAGE_URL must be file:///path or s3://bucket/prefix, got {url!r}")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """SNAPSHOTS_RATE_LIMIT="<per second>[:<burst>]": a token bucket per API token."""

    rate: float
    burst: int
    # What a write (POST, PUT, PATCH, DELETE) costs, in requests; a read costs 1.
    write_cost: int = 5
    # Admin tokens are not limited unless SNAPSHOTS_RATE_LIMIT_ADMIN=1.
    limit_admin: bool = False


def _rate_limit(env: Mapping[str, str]) -> RateLimit | None:
    raw = _optional(env, "SNAPSHOTS_RATE_LIMIT")
    if raw is None or raw.lower() in ("0", "off", "none"):
        return None
    rate_s, _, burst_s = raw.partition(":")
    try:
        rate = float(rate_s)
        burst = int(burst_s) if burst_s else max(1, int(rate))
    except ValueError:
        raise SettingsError(
            f"SNAPSHOTS_RATE_LIMIT must be '<requests per second>[:<burst>]', got {raw!r}"
        ) from None
    if not rate > 0 or burst < 1:
        raise SettingsError(f"SNAPSHOTS_RATE_LIMIT needs a rate > 0 and a burst >= 1, got {raw!r}")
    admin = _optional(env, "SNAPSHOTS_RATE_LIMIT_ADMIN") or "0"
    return RateLimit(
        rate=rate,
        burst=burst,
        write_cost=_int(env, "SNAPSHOTS_RATE_LIMIT_WRITE_COST", 5),
        limit_admin=admin.lower() in ("1", "true", "yes", "on"),
    )


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    storage_url: str
    port: int = 8000
    redis_url: str | None = None
    admin_token: str | None = None
    max_per_server: int = 5
    worker_processes: int = 1
    worker_threads: int = 2
    # How long an operation may stay queued/running before the reaper ends it as failed.
    operation_deadline: float = 6 * 3600.0
    # Liveness tuning (see README "Reliability"); tests shorten them through the env.
    # A worker process whose broker heartbeat is older than this counts as dead: its
    # unacked messages are requeued and the operations it held may be taken over.
    heartbeat_timeout: float = 30.0
    # Broker maintenance (requeue of dead workers' messages) runs on this many fetches
    # out of a million; idle consumers fetch about once a second.
    maintenance_chance: int = 50_000
    # How often each worker's reaper looks for stuck operations.
    reaper_interval: float = 15.0
    # An operation queued (or running on a dead worker) this long gets its message again.
    requeue_after: float = 120.0
    # How often the reaper sweeps the repository of unreferenced data.
    reclaim_interval: float = 3600.0
    # A job that raised a transient error or was interrupted by its worker's shutdown is
    # delivered again after this many seconds, doubling (with jitter) up to 120 s.
    retry_backoff: float = 2.0
    # How long a worker waits for Redis (down, restarting, loading its data, read-only
    # during a failover) before a state transition or read gives up: long enough for a
    # restart, so the job that just captured or restored commits in place rather than
    # being thrown away and delivered again (its broker is that same Redis).
    redis_outage_wait: float = 60.0
    # Webhook deliveries: attempts before a delivery is failed, and the first retry's delay
    # (doubling after each failed attempt, capped at an hour): 8 is about 20 minutes.
    webhook_attempts: int = 8
    webhook_backoff: float = 10.0
    # Where `make run` binds the web process (the Procfile's default too); production
    # sets HOST explicitly (0.0.0.0 on Heroku).
    host: str = "127.0.0.1"
    # "text" (readable, the default) or "json" (one object a line); see shared/logs.py.
    log_format: str = "text"
    # How often each worker's scheduler looks for due schedule slots (a run starts at most
    # this long after its slot).
    scheduler_interval: float = 5.0
    # A bearer token that GET /metrics requires when set.
    metrics_token: str | None = None
    # prometheus_client's multi-process mode (several web processes on a host): the
    # directory their metric files share (PROMETHEUS_MULTIPROC_DIR, the library's name).
    prometheus_multiproc_dir: Path | None = None
    # Per-token request budget (SNAPSHOTS_RATE_LIMIT; see api/ratelimit.py); None: no limit.
    rate_limit: RateLimit | None = None
    # s3:// repositories: the standard AWS variables (None: the client's own defaults)
    # and the fleet-wide lock/reclaim timings (workers/engine/repository/s3reclaim.py).
    aws_endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_region: str | None = None
    lock_settle: float = 5.0  # a listing lags behind writes by less than this
    lock_stale: float = 1800.0  # an unrefreshed lock is dead after this (restic: 30 min)
    reclaim_margin: float = 3600.0  # nothing younger is deleted; condemn-to-sweep minimum
    # Event streams (GET /api/v1/events/, see README "The event stream"): a comment line
    # this often keeps proxies and load balancers from closing an idle stream (most cut at
    # 30-60 s) and lets the server notice a vanished client; how many streams one web
    # process keeps open, per account and in all (past either cap a new stream answers
    # 429); how many frames a stream may have queued before it is resynced from Redis.
    events_keepalive: float = 15.0
    events_max_per_account: int = 100
    events_max_per_process: int = 10_000
    events_queue: int = 1000
    # Absolute base of the links the API returns (links.next), like
    # https://snapshots.example.com; None: links are paths. Never the request's Host.
    public_url: str | None = None
    # Slow clients (README "Security"): seconds a connection may take to send a request's
    # headers, and a request's body.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    # SNAPSHOTS_HOST: the host this worker runs on; it runs only the operations of the
    # servers registered with this host (see shared/hosts.py).
    worker_host: str = DEFAULT_HOST

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = Path(_optional(env, "SNAPSHOTS_DATA_DIR") or "./data").expanduser().resolve()
        storage_url = _optional(env, "SNAPSHOTS_STORAGE_URL") or (
            f"file://{data_dir / 'repository'}"
        )
        _check_storage_url(storage_url)
        redis_url = _optional(env, "REDIS_URL")
        if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(
                f"REDIS_URL must start with redis://, rediss:// or unix://, got {redis_url!r}"
            )
        d = cls(data_dir=data_dir, storage_url=storage_url)  # the defaults
        public_url = _optional(env, "SNAPSHOTS_PUBLIC_URL")
        if public_url is not None:
            parts = urlsplit(public_url)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query \
                    or parts.fragment:
                raise SettingsError(
                    "SNAPSHOTS_PUBLIC_URL must be an http:// or https:// URL without query, "
                    f"like https://snapshots.example.com, got {public_url!r}"
                )
            public_url = public_url.rstrip("/")
        worker_host = _optional(env, "SNAPSHOTS_HOST") or d.worker_host
        if not valid_host(worker_host):
            raise SettingsError(f"SNAPSHOTS_HOST must be {HOST_RULE}, got {worker_host!r}")
        return cls(
            data_dir=data_dir,
            storage_url=storage_url,
            port=_int(env, "PORT", d.port),
            redis_url=redis_url,
            admin_token=_optional(env, "SNAPSHOTS_ADMIN_TOKEN"),
            max_per_server=_int(env, "SNAPSHOTS_MAX_PER_SERVER", d.max_per_server),
            worker_processes=_int(env, "WORKER_PROCESSES", d.worker_processes),
            worker_threads=_int(env, "WORKER_THREADS", d.worker_threads),
            operation_deadline=_float(env, "SNAPSHOTS_OPERATION_DEADLINE", d.operation_deadline),
            heartbeat_timeout=_float(env, "SNAPSHOTS_HEARTBEAT_TIMEOUT", d.heartbeat_timeout),
            maintenance_chance=_int(env, "SNAPSHOTS_MAINTENANCE_CHANCE", d.maintenance_chance),
            reaper_interval=_float(env, "SNAPSHOTS_REAPER_INTERVAL", d.reaper_interval),
            requeue_after=_float(env, "SNAPSHOTS_REQUEUE_AFTER", d.requeue_after),
            reclaim_interval=_float(env, "SNAPSHOTS_RECLAIM_INTERVAL", d.reclaim_interval),
            retry_backoff=_float(env, "SNAPSHOTS_RETRY_BACKOFF", d.retry_backoff),
            redis_outage_wait=_float(env, "SNAPSHOTS_REDIS_OUTAGE_WAIT", d.redis_outage_wait),
            webhook_attempts=_int(env, "SNAPSHOTS_WEBHOOK_ATTEMPTS", d.webhook_attempts),
            webhook_backoff=_float(env, "SNAPSHOTS_WEBHOOK_BACKOFF", d.webhook_backoff),
            events_keepalive=_float(env, "SNAPSHOTS_EVENTS_KEEPALIVE", d.events_keepalive),
            host=_optional(env, "HOST") or d.host,
            log_format=_choice(env, "LOG_FORMAT", LOG_FORMATS, d.log_format),
            scheduler_interval=_float(env, "SNAPSHOTS_SCHEDULER_INTERVAL", d.scheduler_interval),
            metrics_token=_optional(env, "SNAPSHOTS_METRICS_TOKEN"),
            prometheus_multiproc_dir=_path(env, "PROMETHEUS_MULTIPROC_DIR"),
            rate_limit=_rate_limit(env),
            aws_endpoint_url=_optional(env, "AWS_ENDPOINT_URL"),
            aws_access_key_id=_optional(env, "AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=_optional(env, "AWS_SECRET_ACCESS_KEY"),
            aws_region=_optional(env, "AWS_REGION") or _optional(env, "AWS_DEFAULT_REGION"),
            lock_settle=_float(env, "SNAPSHOTS_LOCK_SETTLE", d.lock_settle),
            lock_stale=_float(env, "SNAPSHOTS_LOCK_STALE", d.lock_stale),
            reclaim_margin=_float(env, "SNAPSHOTS_RECLAIM_MARGIN", d.reclaim_margin),
            events_max_per_account=_int(
                env, "SNAPSHOTS_EVENTS_MAX_PER_ACCOUNT", d.events_max_per_account
            ),
            events_max_per_process=_int(
                env, "SNAPSHOTS_EVENTS_MAX_PER_PROCESS", d.events_max_per_process
            ),
            events_queue=_int(env, "SNAPSHOTS_EVENTS_QUEUE", d.events_queue),
            public_url=public_url,
            header_timeout=_float(env, "SNAPSHOTS_HEADER_TIMEOUT", d.header_timeout),
            body_timeout=_float(env, "SNAPSHOTS_BODY_TIMEOUT", d.body_timeout),
            worker_host=worker_host,
        )

    @property
    def on_s3(self) -> bool:
        return self.storage_url.startswith("s3://")

    @property
    def deletes_anywhere(self) -> bool:
        """A snapshot's deletion may run on any host's worker: the repository is shared
        (s3://), not a directory of the server's host (see shared/hosts.py)."""
        return self.on_s3

    @property
    def storage_path(self) -> Path:
        """The local directory behind a file:// storage URL."""
        return Path(self.storage_url[len("file://") :])

    @property
    def effective_redis_url(self) -> str:
        """REDIS_URL, or the unix socket of the embedded Redis under the data dir."""
        if self.redis_url is not None:
            return self.redis_url
        return f"unix://{self.data_dir / EMBEDDED_REDIS_SOCKET}"

    def with_admin_token(self) -> tuple[Settings, bool]:
        """Settings whose admin token is set: from the env, else persisted under the data dir.

        The token is generated on first start so `make run` works with no set-up; it is
        kept in a 0600 file so restarts keep the same token. Returns (settings, generated).
        """
        if self.admin_token is not None:
            return self, False
        path = self.data_dir / ADMIN_TOKEN_FILE
        if path.exists():
            token = path.read_text().strip()
            if token:
                return replace(self, admin_token=token), False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        token = "snp_admin_" + secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        return replace(self, admin_token=token), True
