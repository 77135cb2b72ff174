"""restic's forget --keep-* rules and the schedules' time arithmetic, against tables by hand."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from shared import cron
from shared.schemas import Retention
from workers.retention import keep

BERLIN = ZoneInfo("Europe/Berlin")


def ts(y: int, mo: int, d: int, h: int = 0, mi: int = 0, zone: ZoneInfo = BERLIN) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=zone).timestamp()


def test_daily_run_across_both_dst_changes_runs_once_a_day() -> None:
    # 02:30 does not exist on 2027-03-28 in Berlin and happens twice on 2027-10-31.
    for start in (datetime(2027, 3, 25, tzinfo=BERLIN), datetime(2027, 10, 28, tzinfo=BERLIN)):
        at = start.timestamp()
        days = []
        for _ in range(6):
            at = cron.next_after("30 2 * * *", "Europe/Berlin", at)
            days.append(datetime.fromtimestamp(at, BERLIN))
        dates = [d.date() for d in days]
        assert dates == [start.date() + timedelta(days=i) for i in range(6)], days
        # Every run is at 02:30 local, except on the spring-forward night: right after it.
        assert {(d.hour, d.minute) for d in days} <= {(2, 30), (3, 0)}
    spring = cron.next_after("30 2 * * *", "Europe/Berlin", ts(2027, 3, 27, 12))
    assert datetime.fromtimestamp(spring, BERLIN).strftime("%H:%M %Z") == "03:00 CEST"
    autumn = cron.next_after("30 2 * * *", "Europe/Berlin", ts(2027, 10, 30, 12))
    # The first of the two 02:30s (still CEST), and the next run is a day later.
    assert datetime.fromtimestamp(autumn, BERLIN).strftime("%H:%M %Z") == "02:30 CEST"
    after = cron.next_after("30 2 * * *", "Europe/Berlin", autumn)
    assert after - autumn == 25 * 3600


def test_next_after_is_strictly_after_and_in_the_zone() -> None:
    slot = ts(2027, 1, 5, 3, 0)
    assert cron.next_after("0 3 * * *", "Europe/Berlin", slot - 1) == slot
    assert cron.next_after("0 3 * * *", "Europe/Berlin", slot) == slot + 86400
    assert cron.next_after("0 3 * * *", "UTC", ts(2027, 1, 5, zone=ZoneInfo("UTC"))) == ts(
        2027, 1, 5, 3, zone=ZoneInfo("UTC"))


@pytest.mark.parametrize("expr,field", [
    ("* * * *", "cron"), ("0 3 * * * *", "cron"), ("61 * * * *", "cron"),
    ("@daily", "cron"), ("0 0 31 2 *", "cron"),
])
def test_bad_cron_names_the_field(expr: str, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        cron.check(expr)


@pytest.mark.parametrize(
    "name", ["Mars/Phobos", "../../etc/passwd", "/etc/localtime", "", "x" * 80])
def test_bad_zone_names_the_field(name: str) -> None:
    with pytest.raises(ValueError, match=r"^timezone: "):
        cron.zone(name)


def test_keep_rules_like_restic() -> None:
    # Snapshots 1..10 at these Berlin times (newest = 10).
    times = {
        1: ts(2027, 2, 27, 9),    # Sat, ISO week 8, February
        2: ts(2027, 3, 1, 9),     # Mon, week 9, March
        3: ts(2027, 3, 1, 21),    # Mon
        4: ts(2027, 3, 3, 9),     # Wed (no snapshot on Tue)
        5: ts(2027, 3, 3, 9, 30),  # Wed, same hour as 4
        6: ts(2027, 3, 3, 10),    # Wed
        7: ts(2027, 3, 8, 9),     # Mon, week 10
        8: ts(2027, 3, 8, 10),    # Mon
        9: ts(2027, 3, 8, 11),    # Mon
        10: ts(2027, 3, 8, 12),   # Mon
    }
    z = "Europe/Berlin"
    assert keep(times, Retention(last=3), z) == {10, 9, 8}
    assert keep(times, Retention(hourly=2), z) == {10, 9}
    # "The last 3 days" are the last three days that have snapshots: Mar 8, 3, 1.
    assert keep(times, Retention(daily=3), z) == {10, 6, 3}
    assert keep(times, Retention(weekly=3), z) == {10, 6, 1}
    assert keep(times, Retention(monthly=2), z) == {10, 1}
    # Rules add up; a snapshot kept by one rule still moves the others' buckets.
    assert keep(times, Retention(last=2, daily=2, weekly=2, monthly=2), z) == {10, 9, 6, 1}
    assert keep(times, Retention(hourly=5), z) == {10, 9, 8, 7, 6}
    # Buckets are in the schedule's zone: 23:30 UTC on Mar 7 is already Mar 8 in Berlin.
    late = {1: ts(2027, 3, 7, 23, 30, zone=ZoneInfo("UTC")), 2: ts(2027, 3, 8, 12)}
    assert keep(late, Retention(daily=2), "Europe/Berlin") == {2}
    assert keep(late, Retention(daily=2), "UTC") == {1, 2}
