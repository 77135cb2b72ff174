"""A small Server-Sent Events reader for tests: frames as (id, event, data) plus comments."""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Frame:
    id: str
    event: str
    data: dict[str, Any]


@dataclass
class Received:
    frames: list[Frame] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return [f.event for f in self.frames]


_LINES: weakref.WeakKeyDictionary[httpx.Response, tuple[Iterator[str], dict[str, str]]] = (
    weakref.WeakKeyDictionary()
)


def read(
    response: httpx.Response,
    until: Callable[[Received], bool],
    timeout: float = 10.0,
) -> Received:
    """Reads frames from an open streaming response until ``until`` holds (or times out)."""
    got = Received()
    # One line iterator per response: a response's body can be iterated only once, and
    # a test reads it in several rounds.
    if response not in _LINES:
        _LINES[response] = (response.iter_lines(), {})
    lines, current = _LINES[response]
    deadline = time.monotonic() + timeout
    for line in lines:
        if line.startswith(":"):
            got.comments.append(line[1:].strip())
        elif line == "":
            if "data" in current:
                got.frames.append(
                    Frame(current.get("id", ""), current.get("event", ""),
                          json.loads(current["data"]))
                )
            current.clear()
        else:
            name, _, value = line.partition(":")
            current[name] = value[1:] if value.startswith(" ") else value
        if until(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; received {got.types} and {len(got.comments)} "
                                 "comments")
    return got


def has(*types: str) -> Callable[[Received], bool]:
    """Until every one of ``types`` arrived."""
    return lambda got: all(t in got.types for t in types)
