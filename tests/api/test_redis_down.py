"""The API's answer to a Redis outage: 503 service_unavailable for whatever says Redis is
away (the same definition the workers wait on, shared/outage.py), 500 for a bug."""

from __future__ import annotations

import redis

from api.middleware import to_api_error


def test_the_api_answers_503_to_every_outage_and_500_to_a_bug() -> None:
    for exc in (redis.ConnectionError("refused"), redis.TimeoutError("slow"),
                redis.exceptions.BusyLoadingError("LOADING"), OSError("unreachable"),
                redis.ResponseError("MASTERDOWN Link with MASTER is down")):
        err = to_api_error(exc)
        assert (err.status, err.code) == (503, "service_unavailable"), exc
    assert to_api_error(redis.ResponseError("WRONGTYPE wrong kind")).status == 500
