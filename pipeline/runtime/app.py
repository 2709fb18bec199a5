"""The Faust app of a worker: process model, consumer group, timers; readings take the batch path.

Faust provides the worker command and its lifecycle (signals, graceful stop), the consumer
group with its co-partitioning assignor and rebalance protocol, and timers. Readings do not
pass through Faust agents or streams: `BatchConsumer` hands whole fetches to `BatchIngest`,
which aligns, processes, writes and commits them itself (see `pipeline.runtime.ingest`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

import faust

from pipeline.core.batch import RawRecord
from pipeline.core.errors import ConfigError
from pipeline.core.process import Core
from pipeline.runtime import metrics
from pipeline.runtime.consumer import BatchConsumer
from pipeline.runtime.ingest import BatchIngest
from pipeline.runtime.settings import Settings
from pipeline.runtime.sinks import ObjectStoreSink

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


def faust_app(settings: Settings, **options: Any) -> faust.App:
    """A Faust app on the settings' broker with raw keys and values, no tables' store, no web
    server, a new group reading from the earliest offset; `options` add to or override these."""
    return faust.App(settings.app_id, **{
        **faust_broker_kwargs(settings), "value_serializer": "raw", "key_serializer": "raw",
        "store": "memory://", "web_enabled": False, "consumer_auto_offset_reset": "earliest",
        "topic_partitions": settings.partitions, "datadir": str(settings.data_dir), **options})


def to_raw_record(event: Any) -> RawRecord:
    """A Faust event as a RawRecord (the per-event baseline of the benchmark uses this)."""
    m = event.message
    headers = m.headers or ()
    if isinstance(headers, dict):
        headers = headers.items()
    return RawRecord(
        topic=m.topic, partition=m.partition, offset=m.offset, key=m.key, value=m.value,
        headers=tuple((k, bytes(v) if v is not None else b"") for k, v in headers),
        timestamp_ms=int(m.timestamp * 1000) if m.timestamp else 0,
    )


async def ensure_topics(settings: Settings, extra: Sequence[str] = ()) -> None:
    """Create the ingest, dead-letter and route topics if missing (partition count on purpose),
    and refuse to start when the ingest topics are not co-partitioned."""
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
        described = await admin.describe_topics(list(settings.ingest_topics))
    finally:
        await admin.close()
    counts = {d["topic"]: len(d["partitions"]) for d in described}
    check_copartitioned(settings.ingest_topics, counts)


def check_copartitioned(topics: Sequence[str], counts: dict[str, int]) -> None:
    """The ingest topics must have one partition count: partition p of each carries the same
    vehicles and goes to the same worker, which merges them by event time."""
    if len({counts.get(t) for t in topics}) != 1:
        shown = ", ".join(f"{t}: {counts.get(t, 'missing')}" for t in topics)
        raise ConfigError(f"the ingest topics are not co-partitioned ({shown} partitions); give them the same "
                          f"partition count (kafka-topics --alter --partitions N) before starting workers")


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


def create_app(settings: Settings, core: Core) -> tuple[faust.App, BatchIngest]:
    """The Faust app subscribed to both ingest topics, with the batch consumer."""
    app = faust_app(
        settings,
        topic_replication_factor=settings.replication_factor,
        producer_acks=-1,
        stream_wait_empty=False,
        # A crashed replica's partitions move after 10 s instead of Kafka's default 45-60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        broker_max_poll_records=settings.fetch_max_records,
        consumer_max_fetch_size=settings.fetch_max_partition_bytes,
    )
    app.transport.Consumer = BatchConsumer  # type: ignore[misc]
    ingest = BatchIngest(settings, core)
    app.pipeline_ingest = ingest  # type: ignore[attr-defined]

    def crash(exc: BaseException) -> None:
        """A failed ingest task crashes the app: the worker exits with status 1 (then restarted)."""
        asyncio.ensure_future(app.crash(exc))

    ingest.on_crash = crash
    # Subscribed without an agent: the conductor subscribes the group to the topic, the
    # assignor co-partitions it, and BatchConsumer takes its records.
    app.topics.add(app.topic(*settings.ingest_topics, key_type=bytes, value_type=bytes,
                             partitions=settings.partitions))

    @app.task
    async def start_ingest() -> None:
        consumer = app.consumer
        assert isinstance(consumer, BatchConsumer)
        await ingest.start(consumer.group_handle())

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        await ingest.revoked((tp.topic, tp.partition) for tp in revoked)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def on_shutdown(app: Any, **kwargs: Any) -> None:
        await ingest.stop()

    @app.timer(10.0)
    async def export_lag() -> None:
        """Consumer lag per ingest partition as a gauge (the autoscaler reads the same numbers)."""
        from pipeline.runtime.lag import read_group_lag

        try:
            lag = await read_group_lag(settings.app_id, list(settings.ingest_topics), settings)
        except Exception as exc:  # a metrics refresh must never disturb processing
            log.debug("lag refresh failed: %s", exc)
            return
        for p in lag.by_partition:
            metrics.CONSUMER_LAG.labels(p.topic, str(p.partition)).set(p.lag)

    return app, ingest


def tune_gc(settings: Settings) -> None:
    """Collect cyclic garbage less often, and never scan what start-up built.

    A batch allocates millions of short-lived containers (decoded frames, handler state
    rows) and almost no reference cycles, and with Python's default threshold (700) the
    collector ran hundreds of times per batch and scanned every live object (per-vehicle
    state, buffered records) in its older generations: 7 % of the core's time and 45 % of the
    handlers' on 60,000 simulated vehicles (measured with `gc.callbacks`). Objects
    alive after start-up (modules, Faust, the core's tables) are frozen out of collection.
    """
    import gc

    if settings.gc_gen0_threshold:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(settings.gc_gen0_threshold, max(gen1, 20), max(gen2, 100))
    gc.collect()
    gc.freeze()


def run_worker(settings: Settings) -> None:
    """`pipeline worker`: check config, create topics and bucket, start metrics, run Faust."""
    from faust.worker import Worker as FaustWorker

    # With the encoder in a thread beside the core (PLAN_IN_PROCESS=false) the two hand the GIL
    # back and forth around every numpy and Arrow call, and a 5 ms switch interval made both
    # 1.4-2.9x slower than alone: that setup wants 0.0005. With the encoder in its own process
    # (the default) the core shares the GIL only with the event loop and the fetch thread, and
    # Python's 5 ms measured better (scripts/bench --phases latency at 250 k readings/s, two
    # runs each: routed p99 0.84/1.14 s at 5 ms, 1.01/1.20 s at 0.5 ms, and less CPU).
    sys.setswitchinterval(settings.gil_switch_interval_s)
    core = Core.from_settings(settings)
    tune_gc(settings)
    asyncio.run(ensure_topics(settings, route_topics(core)))
    if core.handlers is not None:
        from pipeline.runtime.state_sync import ensure_changelog

        asyncio.run(ensure_changelog(settings))
    store = ObjectStoreSink(settings.minio_client(), settings.s3_bucket)
    store.ensure_bucket()
    metrics.serve(settings.metrics_port)
    app, _ = create_app(settings, core)
    log.info("worker %s: topics %s, bucket %s, metrics :%s", settings.app_id,
             ",".join(settings.ingest_topics), settings.s3_bucket, settings.metrics_port)
    # mode's Worker handles SIGTERM/SIGINT: in-flight batches finish and are committed.
    FaustWorker(app, loglevel=settings.log_level, quiet=True).execute_from_commandline()
