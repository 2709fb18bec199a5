"""The ingest's write stage: one batch's output plan made durable.

`PlanWriter._write` runs on the event loop: the plan's objects are PUT to the store
(concurrently, bounded) as soon as the encoder has made them, while dead letters and state
changes are produced, routed events delivered to their topic targets under each route's
retry, and webhooks posted; what a target refuses to the end goes to its route's
dead-letter target as failure events. `BatchIngest` inherits it (`pipeline.runtime.ingest`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from pipeline.core.batch import EventBatch
from pipeline.core.process import BatchResult, Core
from pipeline.runtime import metrics
from pipeline.runtime.plan import (
    OutputPlan,
    RouteDelivery,
    SegmentDone,
    dead_letter_topic,
    failure_messages,
)
from pipeline.runtime.settings import Settings
from pipeline.runtime.sinks import ObjectStoreSink, OutMessage, PutObject, TopicSink

log = logging.getLogger("pipeline.worker")


class PlanWriter:
    """The write stage of `BatchIngest` (whose `__init__` and `start` set what it uses)."""

    settings: Settings
    core: Core
    store: ObjectStoreSink
    sink: TopicSink | None
    webhooks: Any

    async def _write(self, plan: OutputPlan, result: BatchResult,
                     objects: asyncio.Future[tuple[list[PutObject], list[SegmentDone]]]) -> None:
        """Execute a plan: produces and webhooks at once, PUTs as soon as `objects` (the plan's
        second part, still being encoded) is ready; returns when all are durable.

        Dead letters and state changes are retried until Kafka takes them; routed events go to
        each topic target under their route's `retry`, and what a target still refuses goes to
        the route's dead-letter target as failure events (as for webhooks)."""
        assert self.sink is not None
        sink = self.sink

        async def put_all() -> float | None:
            encoded, segments = await objects
            plan.objects.extend(encoded)
            plan.segments.extend(segments)
            if not plan.objects:
                return None
            return await self.store.write(plan.objects, concurrency=self.settings.put_concurrency)

        puts = asyncio.ensure_future(put_all())
        try:
            started = time.perf_counter()
            parts = [self._deliver(d) for d in plan.deliveries]
            if plan.webhooks:
                parts.append(self._deliver_webhooks(result))
            if plan.messages:
                parts.append(self._produce(plan.messages))
            failures = [m for out in await asyncio.gather(*parts) for m in out]
            if failures:
                await sink.write(failures)
            if plan.messages or plan.deliveries or failures:
                metrics.SINK_SECONDS.labels("kafka").observe(time.perf_counter() - started)
            for route, n in plan.routed.items():
                metrics.EVENTS_ROUTED.labels(route).inc(n)
            for (route, reason), n in plan.route_failures.items():
                metrics.DEAD_LETTERS.labels(f"route:{route}", reason).inc(n)
            for topic, partition, first, last in plan.spans:
                log.info("%s[%d] offsets %d..%d routed", topic, partition, first, last)
            seconds = await puts
            if seconds is not None:
                metrics.SINK_SECONDS.labels("s3").observe(seconds)
                metrics.BACKPRESSURE.set(0)
        finally:
            if not puts.done():
                puts.cancel()
        for obj in plan.objects:
            metrics.OBJECTS_WRITTEN.labels(obj.key.split("/", 1)[0]).inc()
        wall = time.time()
        for seg in plan.segments:
            metrics.SEGMENTS_FLUSHED.inc()
            metrics.E2E_LATENCY.observe(max(0.0, wall - seg.oldest_ms / 1000))
            log.info("%s[%d] offsets %d..%d flushed: %d frames, %d readings in, %d objects",
                     seg.topic, seg.partition, seg.first, seg.last, seg.frames, seg.readings, seg.objects)

    async def _produce(self, messages: list[OutMessage]) -> list[OutMessage]:
        assert self.sink is not None
        await self.sink.write(messages)
        return []

    async def _deliver(self, delivery: RouteDelivery) -> list[OutMessage]:
        """One route's events to one topic target under the route's retry; returns the failure
        events for its dead-letter target if the target refused them to the end."""
        from pipeline.core.rules.delivery import TopicDelivery, deliver

        assert self.sink is not None
        sink = self.sink

        async def send(topic: str, events: EventBatch) -> None:
            await sink.send_once(delivery.messages)

        outcome = await deliver(TopicDelivery(delivery.route, delivery.topic, delivery.events, delivery.retry,
                                              delivery.dead_letter), send)
        if outcome.failed is None or not len(outcome.failed):
            return []
        log.error("route %s: topic %s refused %d events after %d attempts (%s); they go to %s",
                  delivery.route, delivery.topic, len(outcome.failed), outcome.attempts, outcome.error,
                  delivery.dead_letter_topic)
        metrics.DEAD_LETTERS.labels(f"route:{delivery.route}", "topic_failed").inc(len(outcome.failed))
        return failure_messages(outcome.failed, delivery.dead_letter_topic)

    async def _deliver_webhooks(self, result: BatchResult) -> list[OutMessage]:
        """POST routed events to webhook targets (concurrently, each with its own retries and
        timeout); events a webhook refused after its retries go to their route's dead-letter
        target as failure events, once each."""
        from pipeline.core.rules.failures import failure_events

        if result.route_result is None or self.core.router is None:
            return []
        if self.webhooks is None:
            from pipeline.core.rules.webhook import WebhookSender

            self.webhooks = WebhookSender()
        out: list[OutMessage] = []
        for outcome in await self.webhooks.deliver(result.route_result, self.core.router.ruleset):
            if not outcome.dead_letters:
                continue
            batch = result.routed[outcome.route]
            topic = dead_letter_topic(result.route_specs.get(outcome.route), self.settings.topic_dlq)
            by_reason: dict[str, tuple[list[int], list[str]]] = {}
            for row, reason, error in outcome.dead_letters:
                rows, errors = by_reason.setdefault(reason, ([], []))
                rows.append(row)
                errors.append(f"{outcome.url}: {error}")
            for reason, (rows, errors) in by_reason.items():
                failed = failure_events(batch, np.asarray(rows, dtype=np.int64), route=outcome.route,
                                        target=f"webhook:{outcome.url}", reason=reason,
                                        attempts=outcome.attempts, error=errors)
                out.extend(failure_messages(failed, topic))
                metrics.DEAD_LETTERS.labels(f"route:{outcome.route}", reason).inc(len(rows))
        return out

    def _store_failed(self, exc: Exception) -> None:
        metrics.SINK_RETRIES.labels("s3").inc()
        metrics.BACKPRESSURE.set(1)
