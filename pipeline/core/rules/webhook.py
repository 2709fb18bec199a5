"""Webhook targets: POST each routed event as a CloudEvent (HTTP binary mode), signed, with retries.

Every target is delivered concurrently with the others, each request has its own
timeout, and retries back off exponentially (the route's retry policy), so one slow or
failing endpoint costs only its own bounded time and never holds up other routes. An
event that still fails after its attempts (or that the endpoint rejects with a 4xx) is
returned as a dead letter with the reason.

Signature header: `X-Pipeline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`
with the key from the target's `secret_env`; `verify_signature` checks it on the receiving side.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from cloudevents.core.bindings.http import to_binary_event
from cloudevents.core.v1.event import CloudEvent

from pipeline.core.batch import EventBatch
from pipeline.core.rules.columns import events_from_batch
from pipeline.core.rules.loader import RuleSet
from pipeline.core.rules.router import RouteResult
from pipeline.core.rules.schema import RetryPolicy, WebhookTarget

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Pipeline-Signature"
WEBHOOK_FAILED = "webhook_failed"  # still failing after the retry policy's attempts
WEBHOOK_REJECTED = "webhook_rejected"  # a 4xx answer: retrying would not help
WEBHOOK_UNSIGNED = "webhook_secret_missing"  # secret_env names a variable that is not set
RETRYABLE_STATUS = frozenset({408, 425, 429})


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The signature header value for a body sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: bytes, header: str, body: bytes, *, now: float | None = None,
                     tolerance_s: float = 300.0) -> bool:
    """True if `header` signs `body` with `secret` and is recent (replays are refused)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, given)


def http_message(attrs: Mapping[str, Any], data: Mapping[str, Any]) -> tuple[dict[str, str], bytes]:
    """Headers and body of one event in CloudEvents HTTP binary mode (data as JSON)."""
    attributes: dict[str, Any] = {"specversion": "1.0", "datacontenttype": "application/json"}
    for key, value in attrs.items():
        if value is None:
            continue
        if key == "time":
            attributes["time"] = datetime.fromtimestamp(int(value) / 1000, tz=UTC)
        else:
            attributes[key] = value
    message = to_binary_event(CloudEvent(attributes, None))
    return dict(message.headers), orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


@dataclass
class WebhookOutcome:
    """What happened to one route's events at one webhook target."""

    route: str
    url: str
    delivered: int = 0
    attempts: int = 0
    dead_letters: list[tuple[int, str, str]] = field(default_factory=list)  # (row, reason, error)
    seconds: float = 0.0


Sleep = Callable[[float], Awaitable[None]]


class WebhookSender:
    """Delivers routed events to webhook targets; one instance per worker (shares connections)."""

    def __init__(self, *, env: Mapping[str, str] | None = None, client: httpx.AsyncClient | None = None,
                 sleep: Sleep = asyncio.sleep, clock: Callable[[], float] = time.time) -> None:
        self.env = os.environ if env is None else env
        self._client = client
        self._own_client = client is None
        self.sleep = sleep
        self.clock = clock

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None

    async def send(self, route: str, target: WebhookTarget, retry: RetryPolicy, events: EventBatch) -> WebhookOutcome:
        """POST every event of a batch to one target; failures come back as dead letters."""
        started = time.monotonic()
        outcome = WebhookOutcome(route, target.webhook)
        secret: bytes | None = None
        if target.secret_env:
            value = self.env.get(target.secret_env)
            if not value:
                error = f"environment variable {target.secret_env} (webhook secret) is not set"
                outcome.dead_letters.extend((row, WEBHOOK_UNSIGNED, error) for row in range(len(events)))
                return outcome
            secret = value.encode()
        gate = asyncio.Semaphore(target.max_in_flight)

        async def one(row: int, attrs: Mapping[str, Any], data: Mapping[str, Any]) -> None:
            async with gate:
                ok, tries, reason, error = await self._post(target, retry, secret, attrs, data)
            outcome.attempts += tries
            if ok:
                outcome.delivered += 1
            else:
                outcome.dead_letters.append((row, reason, error))

        rows = events_from_batch(events)
        await asyncio.gather(*(one(i, {k: v for k, v in e.items() if k != "data"}, e["data"]) for i, e in enumerate(rows)))
        outcome.dead_letters.sort()
        outcome.seconds = time.monotonic() - started
        if outcome.dead_letters:
            log.warning("route %s: webhook %s: %d of %d events dead-lettered (%s)", route, target.webhook,
                        len(outcome.dead_letters), len(rows), outcome.dead_letters[0][2])
        return outcome

    async def _post(self, target: WebhookTarget, retry: RetryPolicy, secret: bytes | None,
                    attrs: Mapping[str, Any], data: Mapping[str, Any]) -> tuple[bool, int, str, str]:
        headers, body = http_message(attrs, data)
        headers.update(target.headers)
        error = ""
        for attempt in range(1, retry.attempts + 1):
            if secret is not None:
                headers[SIGNATURE_HEADER] = sign(secret, body, int(self.clock()))
            try:
                response = await self.client.post(target.webhook, content=body, headers=headers, timeout=target.timeout_s)
            except httpx.TimeoutException:
                error = f"timed out after {target.timeout_s:g} s"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= response.status_code < 300:
                    return True, attempt, "", ""
                error = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code not in RETRYABLE_STATUS:
                    return False, attempt, WEBHOOK_REJECTED, error
            if attempt < retry.attempts:
                await self.sleep(retry.delay_ms(attempt) / 1000.0)
        return False, retry.attempts, WEBHOOK_FAILED, f"{error} (after {retry.attempts} attempts)"

    async def deliver(self, result: RouteResult, ruleset: RuleSet) -> list[WebhookOutcome]:
        """Deliver every webhook target of a routed batch concurrently (independent of each other)."""
        jobs = []
        for name, batch in result.per_route.items():
            route = ruleset.get(name)
            for target in route.spec.to:
                if isinstance(target, WebhookTarget):
                    jobs.append(self.send(name, target, route.spec.retry, batch))
        return list(await asyncio.gather(*jobs))
