"""An idle worker starts a new operation within milliseconds of its POST (shared/wakeup.py),
and idle it asks Redis less than Dramatiq's own polling did (about 20 commands/s)."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from tests.e2e.flow import add_server, snapshot
from tests.e2e.service import Service
from tests.support.pickup import commands_per_second, percentiles, pickup_latencies_ms

OPS = 6
# The worker sits idle this long before each POST, past Dramatiq's longest back-off (1 s).
GAP_S = 1.2


def test_idle_worker_picks_up_at_once_without_polling(service: Service, tmp_path: Path) -> None:
    client = redis.Redis.from_url(service.redis.url)
    op_ids = []
    with service.client() as api:
        servers = []
        for i in range((OPS + 4) // 5):  # a server keeps 5 snapshots
            (tmp_path / f"s{i}").mkdir()
            (tmp_path / f"s{i}" / "file").write_text("x")
            servers.append(add_server(api, str(tmp_path / f"s{i}"), name=f"pickup-{i}")["id"])
        for i in range(OPS):
            time.sleep(GAP_S)
            op_ids.append(snapshot(api, servers[i // 5], name=f"p{i}")["operation_id"])
        time.sleep(GAP_S)
        # Over 10 s, not 3: the reaper's pass (every 15 s) and the heartbeats come in bursts,
        # so 3 s windows of one idle worker counted 22 to 61 commands (7-20/s: CI failed once
        # at 17); 10 s windows 115-127.
        idle_rate = commands_per_second(client, 10.0)
    pct = percentiles(pickup_latencies_ms(client, op_ids))
    print(f"pick-up ms: {pct}; idle commands/s: {idle_rate:.1f}")
    # Measured 15 ms p50 on the shared machine (README); generous for a loaded CI box.
    # Without the wake-up, Dramatiq's 1 s back-off gives a p50 of about 500 ms.
    assert pct["p50"] < 150, pct
    # Dramatiq's polling cost ~20/s with one idle worker; the wake-up ~10/s.
    assert idle_rate < 16, idle_rate
