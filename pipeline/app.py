"""The Faust worker: a thin adapter that feeds batches to the core and writes its outputs.

Delivery invariant: input events are taken with `noack_take` and acknowledged only after
every output derived from them is durable (objects PUT, routed and dead-letter events
acknowledged by Kafka). Faust's `take()` would ack in a `finally` even when the body
raised, so it is not used. Errors inside a batch become dead letters; a sink that fails
is retried with backoff while consumption waits (backpressure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import faust
import numpy as np
import orjson

from pipeline import metrics
from pipeline.batch import DeadLetter, RawRecord
from pipeline.config import Settings
from pipeline.core import BatchResult, Core
from pipeline.segments import Segment, add_to_segment, segment_objects, split_batch
from pipeline.sinks import (
    Backoff,
    ObjectStoreSink,
    OutMessage,
    PutObject,
    TopicSink,
    dead_letter_record,
    segment_name,
)

log = logging.getLogger("pipeline.worker")


def faust_broker_kwargs(settings: Settings) -> dict[str, Any]:
    """Broker URL and credentials for Faust from the typed settings."""
    servers = ";".join(f"kafka://{hp.strip()}" for hp in settings.kafka_bootstrap.split(","))
    kwargs: dict[str, Any] = {"broker": servers}
    client = settings.kafka_client_kwargs()
    if settings.kafka_sasl_mechanism:
        kwargs["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka_sasl_username or "",
            password=client.get("sasl_plain_password") or "",
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=client.get("ssl_context"),
        )
    elif "ssl_context" in client:
        kwargs["broker_credentials"] = faust.SSLCredentials(client["ssl_context"])
    return kwargs


def to_raw_record(event: Any) -> RawRecord:
    m = event.message
    headers = m.headers or ()
    if isinstance(headers, dict):
        headers = headers.items()
    return RawRecord(
        topic=m.topic,
        partition=m.partition,
        offset=m.offset,
        key=m.key,
        value=m.value,
        headers=tuple((k, bytes(v) if v is not None else b"") for k, v in headers),
        timestamp_ms=int(m.timestamp * 1000) if m.timestamp else 0,
    )


def current_events(events: Sequence[Any], generation: int) -> tuple[list[Any], list[Any], int]:
    """Split a take() batch into the events to process, the repeats to ack with them, and
    a count of stale events.

    Faust's take buffer survives a rebalance: events fetched under an earlier consumer
    generation may still sit in it while the consumer re-seeks to the committed offset and
    fetches them again, so one batch can hold the same offset several times. Stale events are
    left unacked (this partition's current owner fetches them again from the committed
    offset); a repeated offset is processed once, so a segment's frames match its offsets.
    """
    fresh: list[Any] = []
    repeats: list[Any] = []
    seen: set[tuple[str, int, int]] = set()
    stale = 0
    for event in events:
        m = event.message
        if m.generation_id is not None and m.generation_id != generation:
            stale += 1
            continue
        where = (m.topic, m.partition, m.offset)
        if where in seen:
            repeats.append(event)
            continue
        seen.add(where)
        fresh.append(event)
    return fresh, repeats, stale


class Worker:
    """State of one worker process: the core, the sinks and the open segments."""

    def __init__(self, settings: Settings, core: Core) -> None:
        self.settings = settings
        self.core = core
        self.segments: dict[tuple[str, int], Segment] = {}
        self.store = ObjectStoreSink(
            settings.minio_client(), settings.s3_bucket, Backoff(0.2, 5.0),
            on_retry=self._store_failed,
        )
        self.producer: Any = None
        self.topics: TopicSink | None = None
        self.busy = asyncio.Lock()
        self.webhooks: Any = None
        self.state: Any = None
        if core.handlers is not None:
            from pipeline.state_sync import StateChangelog

            self.state = StateChangelog(settings, core.handlers.state_store)
        self.rules_watcher: Any = None
        self._next_rules_poll = 0.0
        if core.router is not None:
            from pipeline.rules import RulesWatcher

            def rejected(message: str) -> None:
                metrics.RELOADS.labels("rules", "rejected").inc()

            def accepted(ruleset: Any) -> None:
                assert core.router is not None
                from pipeline.topics import create_topics_now  # new routes' topics, as at start

                create_topics_now(settings, core.router.ruleset.topics_added(ruleset))
                core.router.update(ruleset)
                metrics.RELOADS.labels("rules", "ok").inc()
                log.info("rules reloaded: version %s", ruleset.digest[:12])

            self.rules_watcher = RulesWatcher(settings.rules_dir / "routes", accepted,
                                              initial=core.router.ruleset, on_error=rejected)

    def poll_reloads(self) -> None:
        """Between batches: pick up valid rule changes (functions reload inside the runner)."""
        now = time.monotonic()
        if self.rules_watcher is not None and now >= self._next_rules_poll:
            self._next_rules_poll = now + 1.0
            self.rules_watcher.poll()

    def _store_failed(self, exc: Exception) -> None:
        metrics.SINK_RETRIES.labels("s3").inc()
        metrics.BACKPRESSURE.set(1)

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        if self.producer is not None:
            return
        self.producer = AIOKafkaProducer(
            **self.settings.kafka_client_kwargs(),
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_batch_size=1 << 20,
            max_request_size=8 << 20,
        )
        await self.producer.start()
        self.topics = TopicSink(self.producer, Backoff(0.2, 5.0))

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    # --- one batch ------------------------------------------------------------------------
    async def handle(self, stream: Any, events: Sequence[Any], generation: int | None = None) -> None:
        """Process one take() batch; ack its events once their outputs are durable."""
        async with self.busy:
            await self.start()
            self.poll_reloads()
            repeats: list[Any] = []
            if generation is not None:
                events, repeats, stale = current_events(events, generation)
                if stale or repeats:
                    log.info("batch: %d stale events from before a rebalance left for the partition's "
                             "owner, %d repeated offsets processed once", stale, len(repeats))
                if not events:
                    return
            records = [to_raw_record(e) for e in events]
            if self.state is not None:
                self.state.note(records)
                await self.state.restore({r.partition for r in records})
            started = time.perf_counter()
            try:
                result = self.core.process(records)
            except Exception as exc:  # the core failed as a whole: dead-letter the batch
                log.exception("core failed on %d records %s..%s", len(records),
                              records[0].where, records[-1].where)
                result = self._failed_batch(records, exc)
            self._observe(result, time.perf_counter() - started)

            await self._emit_topics(result)
            parts = split_batch(result)
            events_by_tp: dict[tuple[str, int], list[Any]] = {}
            for e, r in zip(events, records, strict=True):
                events_by_tp.setdefault((r.topic, r.partition), []).append(e)
            for key, part in parts.items():
                seg = self.segments.get(key)
                if seg is None:
                    seg = self.segments[key] = Segment(*key)
                add_to_segment(seg, part, records)
                seg.pending.extend(events_by_tp[key])
            for e in repeats:  # acked with the segment holding their offset
                self.segments[(e.message.topic, e.message.partition)].pending.append(e)

            # Flush every partition's share of the batch, then ack it. Holding acks across
            # batches stalls Faust's consumer (its fetch flow waits on acks), so a segment is
            # one batch's records of one partition.
            for key in list(self.segments):
                await self.flush(stream, key)

    def _failed_batch(self, records: list[RawRecord], exc: Exception) -> BatchResult:
        from pipeline.batch import EventBatch, Readings

        empty = Readings.empty()
        return BatchResult(
            records=records, decoded=empty, clean=empty, repaired=np.zeros(0, dtype=bool),
            outcome=np.zeros(0, dtype=np.int8), reasons=["kept"], events=EventBatch.empty(),
            routed={}, targets={},
            dead_letters=[DeadLetter(r, "core", "core_error", f"{type(exc).__name__}: {exc}") for r in records],
        )

    def _observe(self, result: BatchResult, seconds: float) -> None:
        for topic, frames in Counter(r.topic for r in result.records).items():
            metrics.FRAMES_IN.labels(topic).inc(frames)
        for stage, s in result.timings.items():
            metrics.BATCH_SECONDS.labels(stage).observe(s)
        metrics.BATCH_SECONDS.labels("total").observe(seconds)
        counts = result.readings_by_record().sum(axis=0).tolist() if result.records else []
        for name, n in zip(result.reasons, counts, strict=False):
            if n:
                metrics.READINGS_OUT.labels(name).inc(n)
        if len(result.decoded):
            metrics.READINGS_IN.labels(result.records[0].topic).inc(len(result.decoded))
        for dl in result.dead_letters:
            metrics.DEAD_LETTERS.labels(dl.stage, dl.reason).inc()
            if dl.stage == "decode":
                metrics.FRAMES_DEAD.labels(dl.reason).inc()
            log.warning("dead letter %s stage=%s reason=%s: %s", dl.record.where, dl.stage, dl.reason,
                        dl.error[:200])
        if len(result.events):
            types, n = np.unique(result.events.attrs["type"].astype(str), return_counts=True)
            for t, c in zip(types.tolist(), n.tolist(), strict=True):
                metrics.EVENTS_DERIVED.labels(t).inc(c)
        if result.unmatched:
            metrics.EVENTS_UNMATCHED.inc(result.unmatched)
        for name, st in (result.handler_stats or {}).items():
            st = st if isinstance(st, dict) else getattr(st, "__dict__", {})
            metrics.HANDLER_CALLS.labels(name).inc(st.get("calls", 0))
            metrics.HANDLER_ERRORS.labels(name).inc(st.get("errors", 0))
            metrics.HANDLER_ROWS.labels(name).inc(st.get("rows_in", 0))
            metrics.HANDLER_EVENTS.labels(name).inc(st.get("events_out", 0))
            if st.get("latency_s") is not None:
                metrics.HANDLER_SECONDS.labels(name).observe(st["latency_s"])

    async def _emit_topics(self, result: BatchResult) -> None:
        """Routed events and dead letters to Kafka; returns once every one is acknowledged."""
        from pipeline.events import encode_event

        assert self.topics is not None
        out: list[OutMessage] = []
        for route, batch in result.routed.items():
            topic_targets = [t for t in result.targets.get(route, []) if getattr(t, "kind", None) == "topic"]
            if not topic_targets or not len(batch):
                continue
            rows = batch.rows()
            for i, (attrs, data) in enumerate(rows):
                try:
                    rec = encode_event(attrs, data)
                except Exception as exc:  # one bad event must not fail the batch
                    result.dead_letters.append(DeadLetter(
                        result.records[int(batch.origin[i])], f"route:{route}", "encode_error",
                        f"{type(exc).__name__}: {exc}"))
                    continue
                for target in topic_targets:
                    out.append(OutMessage(target.topic, rec.key, rec.value, rec.headers))
            metrics.EVENTS_ROUTED.labels(route).inc(len(batch))
        if self.state is not None:
            out.extend(self.state.changes())
        webhook_dead = await self._deliver_webhooks(result)
        for dl in [*result.dead_letters, *webhook_dead]:
            key, value, headers = dead_letter_record(dl)
            topic = (dl.detail or {}).get("dead_letter_topic") or self.settings.topic_dlq
            out.append(OutMessage(topic, key, value, headers))
        if out:
            seconds = await self.topics.write(out)
            metrics.SINK_SECONDS.labels("kafka").observe(seconds)
        objects = route_objects(result)
        if objects:
            await self.store.write(objects)

    async def _deliver_webhooks(self, result: BatchResult) -> list[DeadLetter]:
        """POST routed events to webhook targets (concurrently, each with its own retries and
        timeout); events a webhook refused after its retries become dead letters."""
        if result.route_result is None or self.core.router is None:
            return []
        ruleset = self.core.router.ruleset
        if not any(getattr(t, "kind", None) == "webhook" for ts in result.targets.values() for t in ts):
            return []
        if self.webhooks is None:
            from pipeline.rules.webhook import WebhookSender

            self.webhooks = WebhookSender()
        dead: list[DeadLetter] = []
        for outcome in await self.webhooks.deliver(result.route_result, ruleset):
            batch = result.routed[outcome.route]
            for row, reason, error in outcome.dead_letters:
                record = result.records[int(batch.origin[row])]
                dead.append(DeadLetter(record, f"route:{outcome.route}", reason, f"{outcome.url}: {error}"))
        return dead

    async def flush(self, stream: Any, key: tuple[str, int]) -> None:
        """PUT a segment's objects, then ack its input events (the commit follows)."""
        seg = self.segments.pop(key, None)
        if seg is None:  # revoked while this batch ran: the new owner replays it
            return
        objects = segment_objects(seg)
        seconds = await self.store.write(objects)
        metrics.BACKPRESSURE.set(0)
        metrics.SINK_SECONDS.labels("s3").observe(seconds)
        for obj in objects:
            metrics.OBJECTS_WRITTEN.labels(obj.key.split("/", 1)[0]).inc()
        for event in seg.pending:
            await stream.ack(event)
        metrics.SEGMENTS_FLUSHED.inc()
        if seg.records:  # from the oldest record of the segment: the worst case it contains
            oldest = min(r.timestamp_ms for r in seg.records)
            metrics.E2E_LATENCY.observe(max(0.0, time.time() - oldest / 1000))
        log.info("%s[%d] offsets %d..%d flushed: %d frames, %d readings in, %d objects",
                 seg.topic, seg.partition, seg.first, seg.last, seg.frames_in, seg.readings_in, len(objects))

    def forget(self, partitions: Any) -> None:
        """Partitions revoked: drop their open segments. The cleaner's per-vehicle history is
        bounded (least recently seen first out) and rebuilt from new data by the new owner."""
        for tp in partitions:
            seg = self.segments.pop((tp.topic, tp.partition), None)
            if seg is not None:
                log.info("%s[%d] revoked: %d un-flushed records will be replayed by the new owner",
                         tp.topic, tp.partition, len(seg))
        if self.state is not None:
            self.state.drop({tp.partition for tp in partitions})


def route_objects(result: BatchResult) -> list[PutObject]:
    """Routed events for object-store targets: JSON lines per route, target and input partition,
    named from the partition's offsets in this batch."""
    from pipeline.events import encode_event

    objects: list[PutObject] = []
    offsets_by_part: dict[tuple[str, int], list[int]] = {}
    for r in result.records:
        offsets_by_part.setdefault((r.topic, r.partition), []).append(r.offset)
    for route, batch in result.routed.items():
        prefixes = [t.object for t in result.targets.get(route, []) if getattr(t, "kind", None) == "object"]
        if not prefixes or not len(batch):
            continue
        by_part: dict[tuple[str, int], list[int]] = {}
        for row, origin in enumerate(batch.origin.tolist()):
            rec = result.records[origin]
            by_part.setdefault((rec.topic, rec.partition), []).append(row)
        rows = batch.rows()
        for (topic, partition), idx in by_part.items():
            offsets = offsets_by_part[(topic, partition)]
            lines = []
            for i in idx:
                attrs, data = rows[i]
                rec = encode_event(attrs, data)
                lines.append(orjson.dumps({**{k[3:]: v.decode() for k, v in rec.headers if k.startswith("ce_")},
                                           "data": data}))
            body = b"\n".join(lines) + b"\n"
            name = segment_name(topic, partition, min(offsets), max(offsets))
            for prefix in prefixes:
                objects.append(PutObject(f"{prefix}{route}/{name}.jsonl", body, "application/x-ndjson",
                                         {"route": route, "events": str(len(idx))}))
    return objects


async def ensure_topics(settings: Settings, extra: Sequence[str] = ()) -> None:
    """Create the ingest, dead-letter and route topics if missing (partition count on purpose)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        configs = {"retention.ms": str(settings.topic_retention_ms)}
        wanted = [
            NewTopic(t, settings.partitions, settings.replication_factor, topic_configs=configs)
            for t in dict.fromkeys((*settings.ingest_topics, settings.topic_dlq, *extra))
            if t not in existing
        ]
        if wanted:
            from aiokafka.errors import TopicAlreadyExistsError

            with contextlib.suppress(TopicAlreadyExistsError):  # another replica was first
                await admin.create_topics(wanted)
            log.info("created topics %s", ", ".join(t.name for t in wanted))
    finally:
        await admin.close()


def route_topics(core: Core) -> list[str]:
    """Every topic the rules deliver to (targets and dead-letter targets), to create up front."""
    if core.router is None:
        return []
    topics: list[str] = []
    for route in core.router.ruleset.all_routes():
        for target in [*route.spec.to, route.spec.dead_letter]:
            if getattr(target, "kind", None) == "topic":
                topics.append(target.topic)
    return sorted(set(topics))


def create_app(settings: Settings, core: Core) -> tuple[faust.App, Worker]:
    """The Faust app with one agent on both (co-partitioned) ingest topics, concurrency 1."""
    app = faust.App(
        settings.app_id,
        **faust_broker_kwargs(settings),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=1.0,
        # Un-acked events are exactly those whose outputs are not durable; on shutdown they are
        # replayed by the next owner, so there is nothing to wait for (waiting would hang when
        # a batch failed and its events can never be acked).
        stream_wait_empty=False,
        # A crashed replica's partitions move after 10 s instead of Kafka's default 45-60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        stream_buffer_maxsize=max(4 * settings.batch_size, 4096),
        broker_max_poll_records=settings.batch_size,
        datadir=str(settings.data_dir),
    )
    worker = Worker(settings, core)
    topic = app.topic(*settings.ingest_topics, key_type=bytes, value_type=bytes,
                      partitions=settings.partitions)

    @app.agent(topic, concurrency=1, name="ingest")
    async def ingest(stream: Any) -> None:
        # Faust fills the take() buffer only while the agent body is not running, so the
        # body hands the batch to a task and returns: the next batch fills while this one
        # is processed. At most one batch is in flight, so acks stay in offset order.
        inflight: asyncio.Task[None] | None = None
        async for events in stream.noack_take(settings.batch_size, within=settings.batch_wait_s):
            if inflight is not None:
                await inflight
            inflight = asyncio.ensure_future(handle_or_stop(stream, events))
        if inflight is not None:
            await inflight

    async def handle_or_stop(stream: Any, events: Sequence[Any]) -> None:
        try:
            await worker.handle(stream, events, app.consumer_generation_id)
        except Exception:
            # Outputs of this batch are not durable, so its offsets must not be acked.
            # Carrying on would leave a hole the commit can never pass: stop instead,
            # and the restarted worker replays from the last commit.
            log.critical("batch failed outside the dead-letter path; stopping the worker",
                         exc_info=True)
            os.kill(os.getpid(), signal.SIGTERM)
            raise

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        worker.forget(revoked)

    @app.timer(10.0)
    async def export_lag() -> None:
        """Consumer lag per ingest partition as a gauge (the autoscaler reads the same numbers)."""
        from pipeline.lag import read_group_lag

        try:
            lag = await read_group_lag(settings.app_id, list(settings.ingest_topics), settings)
        except Exception as exc:  # a metrics refresh must never disturb processing
            log.debug("lag refresh failed: %s", exc)
            return
        for p in lag.by_partition:
            metrics.CONSUMER_LAG.labels(p.topic, str(p.partition)).set(p.lag)

    app.pipeline_worker = worker  # type: ignore[attr-defined]
    return app, worker


def run_worker(settings: Settings) -> None:
    """`pipeline worker`: check config, create topics and bucket, start metrics, run Faust."""
    from faust.worker import Worker as FaustWorker

    core = Core.from_settings(settings)
    asyncio.run(ensure_topics(settings, route_topics(core)))
    if core.handlers is not None:
        from pipeline.state_sync import ensure_changelog

        asyncio.run(ensure_changelog(settings))
    store = ObjectStoreSink(settings.minio_client(), settings.s3_bucket)
    store.ensure_bucket()
    metrics.serve(settings.metrics_port)
    app, worker = create_app(settings, core)
    log.info("worker %s: topics %s, bucket %s, metrics :%s", settings.app_id,
             ",".join(settings.ingest_topics), settings.s3_bucket, settings.metrics_port)
    # mode's Worker handles SIGTERM/SIGINT: agents stop, acked offsets are committed.
    FaustWorker(app, loglevel=settings.log_level, quiet=True).execute_from_commandline()
