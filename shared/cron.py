"""When schedules run: five-field cron expressions (cronsim) in IANA time zones (zoneinfo).

cronsim evaluates an expression in the zone's local time the way Debian's cron does, so a
daylight-saving change neither skips nor doubles a daily run: a time that does not exist
(02:30 on the spring-forward night) runs right after the jump, and a time that occurs
twice (02:30 on the fall-back night) runs once, at its first occurrence.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache, lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

DEFAULT_ZONE = "UTC"


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The IANA zone called ``name``; ValueError naming the field when there is none."""
    if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        raise ValueError(f"timezone: {name!r} is not an IANA time zone name")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"timezone: {name!r} is not an IANA time zone name (e.g. UTC, Europe/Berlin)"
        ) from None


@cache
def _zone_names() -> frozenset[str]:
    """The zones of the IANA database this host has. ZoneInfo also opens other files of
    its directory: localtime (the host's own zone, /etc/localtime: another host of the
    fleet may have another, and each computed the schedule's slots in its own), right/*
    (clocks that count leap seconds: every run 27 s late), posix/*, posixrules."""
    return frozenset(available_timezones() - {"localtime"})


def check_zone(name: str) -> None:
    """ValueError naming the field unless ``name`` is an IANA zone (a schedule's input;
    zone() takes what was stored before as it is)."""
    zone(name)
    if name not in _zone_names():
        raise ValueError(
            f"timezone: {name!r} is not an IANA time zone name (e.g. UTC, Europe/Berlin)")


def check(expr: str) -> None:
    """ValueError naming the field unless ``expr`` is five standard cron fields."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(
            f"cron: {expr!r} must have five fields (minute hour day-of-month month "
            f"day-of-week), it has {len(fields)}"
        )
    try:
        next(CronSim(expr, datetime(2000, 1, 1, tzinfo=ZoneInfo(DEFAULT_ZONE))))
    except CronSimError as exc:
        raise ValueError(f"cron: {expr!r} is not a valid expression: {exc}") from None
    except StopIteration:
        raise ValueError(f"cron: {expr!r} never runs") from None


def next_after(expr: str, zone_name: str, after: float) -> int:
    """The first run strictly after ``after`` (epoch seconds), as epoch seconds."""
    start = datetime.fromtimestamp(int(after), zone(zone_name))
    return int(next(CronSim(expr, start)).timestamp())


def local(ts: float, zone_name: str) -> datetime:
    """Epoch seconds as an aware datetime in the schedule's zone."""
    return datetime.fromtimestamp(ts, zone(zone_name))
