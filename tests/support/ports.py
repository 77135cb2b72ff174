"""Free localhost TCP ports for the tests' own servers, chosen below the ephemeral range.

A port from `bind(0)` comes out of the kernel's ephemeral range, which every outgoing
connection's local end is drawn from as well. A server that a fault test kills and restarts
on the same port can then find it taken meanwhile by some client connection (seen: weed's
metrics port, taken in the second it was down, failed the S3 restart test on a clean clone).
Ports below the range are only ever taken by someone binding them on purpose.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_rng = random.SystemRandom()


def _candidates() -> tuple[int, int] | None:
    try:
        low = int(_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    top = low - 1
    bottom = max(10_000, top - 20_000)
    return (bottom, top) if top - bottom >= 1_000 else None


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free right now (each bound once, then released)."""
    span = _candidates()
    socks: list[socket.socket] = []
    try:
        while len(socks) < n:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", _rng.randint(*span) if span else 0))
            except OSError:  # in use (or TIME_WAIT): draw again
                s.close()
                continue
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]
