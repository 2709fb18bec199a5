"""Operating regions: per region the workers' consumer lag, MirrorMaker 2's replication lag
per topic and its last checkpoint (`pipeline regions status`).

MirrorMaker 2 keeps its own progress where anyone can read it: on each target cluster,
`mm2-offsets.<source>.internal` holds, per source topic-partition, the last source offset it
copied (flushed every offset.flush.interval.ms, 1 s locally), and
`<source>.checkpoints.internal` holds the translated consumer-group offsets. Replication lag
of a partition is what the source holds beyond that offset: in records, and in seconds as
the age of the oldest record not yet copied, capped by the time since MirrorMaker last
advanced on that partition (0 when nothing waits).
"""

from __future__ import annotations

import asyncio
import re
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.runtime.lag import read_group_lag
from pipeline.tools.region_services import DEFAULT_TOPICS
from pipeline.tools.regions import Region, Regions


@dataclass(slots=True)
class TopicReplication:
    source: str
    target: str
    topic: str
    source_end: int = 0
    replicated: int = 0  # records of the source the target has (per MirrorMaker's offsets)
    lag_records: int = 0
    lag_s: float = 0.0


@dataclass(slots=True)
class RegionStatus:
    name: str
    reachable: bool
    consumer_lag: int | None = None
    replication: list[TopicReplication] = field(default_factory=list)  # into this region
    last_checkpoint_age_s: dict[str, float | None] = field(default_factory=dict)  # by source
    error: str | None = None

    @property
    def max_replication_lag_s(self) -> float:
        return max((t.lag_s for t in self.replication), default=0.0)


async def _read_all(bootstrap: str, topic: str, timeout_s: float = 5.0) -> list[Any]:
    """Every record of a topic, from its start to its end now (empty if it does not exist)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", request_timeout_ms=int(timeout_s * 1000))
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - no public refresh
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            return []
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


async def mirror_progress(source: str, target_bootstrap: str) -> dict[TopicPartition, tuple[int, float]]:
    """Per source topic-partition, the next source offset MirrorMaker will copy and when it
    last recorded progress there (epoch seconds, from its offsets records)."""
    done: dict[TopicPartition, tuple[int, float]] = {}
    for record in await _read_all(target_bootstrap, f"mm2-offsets.{source}.internal"):
        try:
            name, part = orjson.loads(record.key)
            value = orjson.loads(record.value) if record.value else None
        except (orjson.JSONDecodeError, ValueError, TypeError):
            continue
        if name != "MirrorSourceConnector" or part.get("cluster") != source or value is None:
            continue
        done[TopicPartition(part["topic"], int(part["partition"]))] = (int(value["offset"]) + 1,
                                                                        record.timestamp / 1000)
    return done


async def last_checkpoint_age(source: str, target_bootstrap: str) -> float | None:
    """Seconds since MirrorMaker last wrote a consumer-group checkpoint from `source`."""
    records = await _read_all(target_bootstrap, f"{source}.checkpoints.internal")
    if not records:
        return None
    return max(0.0, time.time() - max(r.timestamp for r in records) / 1000)


def decode_checkpoint(key: bytes, value: bytes) -> tuple[str, str, int, int, int]:
    """(group, topic, partition, upstream offset, downstream offset) of a checkpoint record."""
    (n,) = struct.unpack_from(">h", key, 0)
    group = key[2:2 + n].decode()
    (m,) = struct.unpack_from(">h", key, 2 + n)
    topic = key[4 + n:4 + n + m].decode()
    (partition,) = struct.unpack_from(">i", key, 4 + n + m)
    upstream, downstream = struct.unpack_from(">qq", value, 2)
    return group, topic, partition, upstream, downstream


async def replication_lag(source: str, source_bootstrap: str, target: str, target_bootstrap: str,
                          topics: str = DEFAULT_TOPICS) -> list[TopicReplication]:
    """Per mirrored topic of `source`, how far `target` is behind it."""
    pattern = re.compile(topics)
    progress = await mirror_progress(source, target_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=source_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=source_bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(None)
        finally:
            await admin.close()
        # the target's own topics copied into the source (`<target>.x`) are not copied back
        counts = {d["topic"]: len(d.get("partitions") or []) for d in described
                  if pattern.fullmatch(d["topic"]) and not d.get("error_code")
                  and not d["topic"].startswith(f"{target}.")}
        names = sorted(counts)
        tps = [TopicPartition(t, p) for t in names for p in range(counts[t])]
        ends = await consumer.end_offsets(tps) if tps else {}
        starts = await consumer.beginning_offsets(tps) if tps else {}
        out = {t: TopicReplication(source, target, t) for t in names}
        now = time.time()
        waiting: list[tuple[TopicPartition, int]] = []
        for tp in tps:
            row = out[tp.topic]
            done = max(progress.get(tp, (starts[tp], 0.0))[0], starts[tp])
            row.source_end += ends[tp]
            row.replicated += min(done, ends[tp])
            row.lag_records += max(0, ends[tp] - done)
            if ends[tp] > done:
                waiting.append((tp, done))
        if waiting:
            # How long the oldest record not copied yet has waited: its age, but no more than
            # the time since MirrorMaker last advanced on the partition (records can carry
            # old event times as their timestamps: replays, routed events).
            consumer.assign([tp for tp, _ in waiting])
            for tp, offset in waiting:
                consumer.seek(tp, offset)
                batch = await consumer.getmany(tp, timeout_ms=2000, max_records=1)
                for record in batch.get(tp, [])[:1]:
                    age = now - record.timestamp / 1000
                    if tp in progress:
                        age = min(age, now - progress[tp][1])
                    row = out[tp.topic]
                    row.lag_s = max(row.lag_s, max(0.0, age))
        return list(out.values())
    finally:
        await consumer.stop()


async def _reachable(bootstrap: str) -> str | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        return None
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return f"{type(exc).__name__}: {exc}"
    finally:
        await admin.close()


async def region_status(regions: Regions, ingest_topics: list[str], topics: str = DEFAULT_TOPICS
                        ) -> list[RegionStatus]:
    """Every region's consumer lag, replication into it and last checkpoint per source."""
    out: list[RegionStatus] = []
    for name, region in regions.regions.items():
        why = await _reachable(region.kafka_bootstrap)
        status = RegionStatus(name, why is None, error=why)
        out.append(status)
        if why is not None:
            continue
        lag = await read_group_lag(region.app_id, ingest_topics, region.settings())
        status.consumer_lag = lag.total
        for source, other in regions.regions.items():
            if source == name or await _reachable(other.kafka_bootstrap) is not None:
                continue
            status.replication += await replication_lag(source, other.kafka_bootstrap, name,
                                                        region.kafka_bootstrap, topics)
            status.last_checkpoint_age_s[source] = await last_checkpoint_age(source, region.kafka_bootstrap)
    return out


async def rehome_state(vin: str, source: Region, target: Region, partitions: int) -> int:
    """Carry a vehicle's handler state (open trip, charging session, geofence membership, ...)
    from `source` to `target`: its latest entries in the replica MirrorMaker keeps in the
    target (`<source>.<source app_id>-handler-state`) are written to the target's own
    changelog, in the partition the vehicle's frames will take there. The target's workers
    load it when they take that partition (start them, or restart the one that owns it,
    after this). Returns the entries carried (0: nothing to carry)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    from pipeline.core.handlers.state import split_key
    from pipeline.runtime.state_sync import changelog_topic, ensure_changelog

    replica = f"{source.name}.{source.app_id}-handler-state"
    latest: dict[bytes, bytes | None] = {}
    for record in await _read_all(target.kafka_bootstrap, replica, timeout_s=20):
        if record.key is not None and split_key(record.key.decode())[1] == vin:
            latest[record.key] = record.value
    if not latest:
        return 0
    settings = target.settings().model_copy(update={"partitions": partitions})
    await ensure_changelog(settings)
    every = list(range(partitions))
    partition = DefaultPartitioner()(vin.encode(), every, every)
    producer = AIOKafkaProducer(bootstrap_servers=target.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in latest.items():
            await producer.send_and_wait(changelog_topic(settings), value, key=key, partition=partition)
    finally:
        await producer.stop()
    return len(latest)
