"""Topic targets under the route's retry and dead letter (the decisions; producing is the runtime's)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pipeline.core.batch import EventBatch
from pipeline.core.rules.columns import batch_from_events
from pipeline.core.rules.delivery import TOPIC_FAILED, deliver, topic_deliveries
from pipeline.core.rules.loader import RuleSet
from pipeline.core.rules.router import Router

from .conftest import event

RULES = """
routes:
  - name: dept.x
    match: {type: [fleet.trip.ended]}
    to: [{topic: route.dept.x}, {topic: route.dept.x2}, {webhook: 'https://crm.example/h'}]
    retry: {attempts: 3, backoff_ms: 100, max_backoff_ms: 150}
    dead_letter: {topic: route.dept.x.dlq}
"""


def deliveries(rules_from: Callable[[str], RuleSet]) -> list:
    rules = rules_from(RULES)
    result = Router(rules, b"k").route(batch_from_events([event("fleet.trip.ended", trip_id="t1"),
                                                          event("fleet.trip.ended", trip_id="t2")]))
    return topic_deliveries(result, rules)


def test_each_topic_target_gets_the_routes_retry_and_dead_letter(rules_from: Callable[[str], RuleSet]) -> None:
    found = deliveries(rules_from)
    assert [(d.route, d.topic, len(d.events)) for d in found] == [("dept.x", "route.dept.x", 2), ("dept.x", "route.dept.x2", 2)]
    assert found[0].retry.attempts == 3 and found[0].dead_letter.describe() == "topic:route.dept.x.dlq"


def test_a_refusing_topic_is_retried_then_its_events_are_failure_events(rules_from: Callable[[str], RuleSet]) -> None:
    delivery = deliveries(rules_from)[0]
    tries: list[str] = []
    waits: list[float] = []

    async def broken(topic: str, events: EventBatch) -> None:
        tries.append(topic)
        raise ConnectionError("broker unreachable")

    async def sleep(s: float) -> None:
        waits.append(s)

    outcome = asyncio.run(deliver(delivery, broken, sleep=sleep))
    assert tries == ["route.dept.x"] * 3 and waits == [0.1, 0.15]
    assert outcome.failed is not None and outcome.attempts == 3
    rows = outcome.failed.rows()
    assert len(rows) == 2
    assert {(a["dlqroute"], a["dlqtarget"], a["dlqreason"], a["dlqattempts"]) for a, _ in rows} == \
        {("dept.x", "topic:route.dept.x", TOPIC_FAILED, 3)}
    assert rows[0][0]["dlqerror"] == "ConnectionError: broker unreachable (after 3 attempts)"
    assert [d["trip_id"] for _, d in rows] == ["t1", "t2"]  # the routed events themselves, once each


def test_a_topic_that_recovers_is_not_dead_lettered(rules_from: Callable[[str], RuleSet]) -> None:
    delivery = deliveries(rules_from)[0]
    calls = 0

    async def flaky(topic: str, events: EventBatch) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TimeoutError("request timed out")

    async def no_wait(s: float) -> None:
        return None

    outcome = asyncio.run(deliver(delivery, flaky, sleep=no_wait))
    assert outcome.failed is None and outcome.attempts == 2
