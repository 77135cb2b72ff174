"""Webhooks: bodies, key layout, signing and retry settings, shared by the API and workers.

A webhook is a URL an admin registers for an account; every public event of that account
is POSTed to it as the same JSON as the SSE ``data:`` line. Each POST carries
``X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the secret>``:
the receiver recomputes it with the secret it was shown once, and refuses old ``t`` values
so a captured request cannot be replayed later.

Keys: ``seq:webhook``; ``webhook:{id}`` (hash, with the secret); ``idx:webhooks:all`` and
``idx:webhooks:account:{A}`` (sorted sets by id); per delivery (one webhook and one event)
``whdelivery:{wid}:{event id}`` (hash) and ``whattempts:{wid}:{event id}`` (list of
attempts, JSON), listed newest first in ``idx:whdeliveries:{wid}`` (score = event ms).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from shared.responses import ListLinks, ListMeta
from shared.schemas import AccountName

GROUP: Final = "webhooks"  # the consumer group of the events stream that feeds deliveries
QUEUE: Final = "webhooks"
ACTOR: Final = "webhook_deliver"
SIGNATURE_HEADER: Final = "X-Signature"
# Deliveries of a webhook are kept a week (and at most this many are listed).
DELIVERY_TTL: Final = 7 * 24 * 3600
MAX_LISTED: Final = 1000

DeliveryStatus = Literal["pending", "delivered", "failed"]


def webhook_key(webhook_id: int) -> str:
    return f"webhook:{webhook_id}"


def account_index(account: str) -> str:
    return f"idx:webhooks:account:{account}"


ALL_INDEX: Final = "idx:webhooks:all"


def delivery_key(webhook_id: int, event_id: str) -> str:
    return f"whdelivery:{webhook_id}:{event_id}"


def attempts_key(webhook_id: int, event_id: str) -> str:
    return f"whattempts:{webhook_id}:{event_id}"


def deliveries_index(webhook_id: int) -> str:
    return f"idx:whdeliveries:{webhook_id}"


def new_secret() -> str:
    return "whsec_" + os.urandom(24).hex()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Signature header value for a body sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, now: int, tolerance: int = 300) -> bool:
    """What a receiver does: the signature matches and is recent (receivers may copy this)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    if not parts.get("t", "").isdigit() or "v1" not in parts:
        return False
    t = int(parts["t"])
    expected = sign(secret, t, body).split("v1=", 1)[1]
    return abs(now - t) <= tolerance and hmac.compare_digest(expected, parts["v1"])


# --------------------------------------------------------------- retries


def backoff(attempt: int, base: float) -> float:
    """Seconds before attempt ``attempt + 1``: base * 2^(attempt-1), capped at an hour.

    ``base`` is ``Settings.webhook_backoff`` (default 10 s), so 10 s, 20 s, 40 s, ...
    """
    return float(min(3600.0, base * 2 ** max(0, attempt - 1)))


# --------------------------------------------------------------- bodies


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url: must be an absolute http:// or https:// URL")
    try:
        port = parts.port  # ValueError when not a number from 0 to 65535
    except ValueError:
        port = 0
    if port == 0:
        # Every delivery to it would fail (httpx refuses the URL), retried for each event.
        raise ValueError("url: the port must be a number from 1 to 65535")
    if not url.isprintable() or " " in url:
        raise ValueError("url: must not contain spaces or control characters")


class WebhookCreate(Struct, forbid_unknown_fields=True):
    account: AccountName
    url: Annotated[str, Meta(min_length=8, max_length=2048)]

    def __post_init__(self) -> None:
        _check_url(self.url)


class Webhook(Struct, omit_defaults=True):
    """A webhook; ``secret`` only in the answer to its creation (shown once)."""

    id: int
    account: str
    url: str
    created_at: str
    secret: str | UnsetType = UNSET


class WebhookList(Struct):
    webhooks: list[Webhook]
    meta: ListMeta
    links: ListLinks


class DeliveryAttempt(Struct):
    attempt: int
    at: str
    status_code: int | None
    error: str | None
    duration_ms: int


class Delivery(Struct):
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: list[DeliveryAttempt]
    created_at: str
    next_attempt_at: str | None


class DeliveryList(Struct):
    deliveries: list[Delivery]
    meta: ListMeta
    links: ListLinks


class DeliveryMessage(Struct, forbid_unknown_fields=True):
    """The delivery actor's kwargs, validated inside the actor."""

    webhook_id: Annotated[int, Meta(ge=1)]
    event_id: Annotated[str, Meta(pattern=r"^\d+-\d+$")]
    attempt: Annotated[int, Meta(ge=1)] = 1


def decode_attempts(raw: list[str]) -> list[DeliveryAttempt]:
    return [msgspec.json.decode(a, type=DeliveryAttempt) for a in raw]
