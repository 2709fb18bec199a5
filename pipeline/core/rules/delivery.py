"""A route's topic targets under the route's `retry` and `dead_letter`, as for webhooks.

The runtime produces; this module decides, without importing Kafka: `topic_deliveries`
lists what one routed batch owes each topic target with the route's retry policy, and
`deliver` runs one such delivery through a `send` coroutine the runtime supplies (it
produces the events and returns once Kafka acknowledged them all, or raises). After the
route's attempts the events come back as failure events (`failures.py`) for the route's
dead-letter target, so a broken target costs that route its retries, not the worker its
progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from pipeline.core.batch import EventBatch
from pipeline.core.rules.failures import failure_events
from pipeline.core.rules.loader import RuleSet
from pipeline.core.rules.router import RouteResult
from pipeline.core.rules.schema import RetryPolicy, Target, TopicTarget

TOPIC_FAILED = "topic_failed"  # a topic target refused every attempt

Send = Callable[[str, EventBatch], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TopicDelivery:
    """The events one route owes one topic target, and what to do when they cannot go."""

    route: str
    topic: str
    events: EventBatch
    retry: RetryPolicy
    dead_letter: Target


@dataclass(slots=True)
class TopicOutcome:
    """How a delivery went: attempts made, and the failure events if the target refused."""

    delivery: TopicDelivery
    attempts: int
    failed: EventBatch | None = None
    error: str = ""


def topic_deliveries(result: RouteResult, ruleset: RuleSet) -> list[TopicDelivery]:
    """Every (route, topic target) of a routed batch with the route's retry and dead letter."""
    out: list[TopicDelivery] = []
    for name, batch in result.per_route.items():
        if not len(batch):
            continue
        route = ruleset.get(name)
        for target in route.spec.to:
            if isinstance(target, TopicTarget):
                out.append(TopicDelivery(name, target.topic, batch, route.spec.retry, route.spec.dead_letter))
    return out


async def deliver(delivery: TopicDelivery, send: Send, *, sleep: Sleep = asyncio.sleep) -> TopicOutcome:
    """Send with the route's retries; after the last attempt the events become failure events."""
    retry, error = delivery.retry, ""
    for attempt in range(1, retry.attempts + 1):
        try:
            await send(delivery.topic, delivery.events)
            return TopicOutcome(delivery, attempt)
        except Exception as exc:  # any producer error counts as a failed attempt
            error = f"{type(exc).__name__}: {exc}"
        if attempt < retry.attempts:
            await sleep(retry.delay_ms(attempt) / 1000.0)
    message = f"{error} (after {retry.attempts} attempts)"
    failed = failure_events(delivery.events, np.arange(len(delivery.events)), route=delivery.route,
                            target=f"topic:{delivery.topic}", reason=TOPIC_FAILED, attempts=retry.attempts,
                            error=message)
    return TopicOutcome(delivery, retry.attempts, failed, message)
