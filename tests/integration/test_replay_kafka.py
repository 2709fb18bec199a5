"""Simulated and Twizy traffic through the real Kafka broker, read back with aiokafka.

Needs the broker at `Settings().kafka_bootstrap` (`scripts/services start`); fails, never
skips, when it does not answer. Every test writes to its own fresh topic pair.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson
import pytest

from pipeline.runtime.settings import Settings
from pipeline.tools.recording import Record
from pipeline.tools.replay import (
    Pacer,
    ProducerOptions,
    default_twizy_dir,
    load_mapping,
    load_trips,
    produce,
    twizy_items,
)
from pipeline.tools.sim.faults import parse_fault_rates
from pipeline.tools.simulate import FleetSimulator, SimConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker() -> Settings:
    """Settings of the local broker, after a metadata round trip with a deadline."""
    settings = Settings()

    async def ask() -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs(), request_timeout_ms=5000)
        await admin.start()
        try:
            await admin.list_topics()
        finally:
            await admin.close()

    try:
        asyncio.run(asyncio.wait_for(ask(), 20))
    except Exception as exc:  # integration tests fail loudly instead of skipping
        pytest.fail(f"Kafka at {settings.kafka_bootstrap} does not answer ({type(exc).__name__}: {exc}); "
                    "start it with scripts/services start")
    return settings


@pytest.fixture
def fresh(broker: Settings) -> Iterator[Callable[[str], Settings]]:
    """Settings with a new, unique topic pair per call; the topics are deleted afterwards."""
    made: list[str] = []

    def make(label: str) -> Settings:
        tag = uuid.uuid4().hex[:10]
        settings = broker.model_copy(update={"topic_sensor": f"it.{label}.sensor.{tag}",
                                             "topic_gps": f"it.{label}.gps.{tag}"})
        made.extend([settings.topic_sensor, settings.topic_gps])
        return settings

    yield make

    async def delete() -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**broker.kafka_client_kwargs())
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            if existing & set(made):
                await admin.delete_topics(sorted(existing & set(made)))
        finally:
            await admin.close()

    asyncio.run(delete())


async def _consume(settings: Settings, expected: int, timeout_s: float = 60.0) -> list[Any]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(settings.topic_sensor, settings.topic_gps, **settings.kafka_client_kwargs(),
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                group_id=f"it-{uuid.uuid4().hex[:8]}", max_partition_fetch_bytes=4 << 20,
                                fetch_max_bytes=16 << 20)
    await consumer.start()
    out: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(out) < expected and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for messages in batch.values():
                out.extend(messages)
    finally:
        await consumer.stop()
    return out


def _send_and_read(items: Iterable[tuple[Record, int]], settings: Settings) -> tuple[list[Record], list[Any], Any]:
    sent: list[Record] = []
    readings = 0

    def keep() -> Iterable[tuple[Record, int]]:
        nonlocal readings
        for record, n in items:
            sent.append(record)
            readings += n
            yield record, n

    async def run() -> tuple[Any, list[Any]]:
        stats = await produce(keep(), settings, pacer=Pacer(), options=ProducerOptions(acks="all"))
        received = await _consume(settings, len(sent))
        return stats, received

    stats, received = asyncio.run(run())
    assert stats.frames == len(sent) and stats.readings == readings
    return sent, received, stats


def _check_round_trip(sent: list[Record], received: list[Any], settings: Settings) -> None:
    assert len(received) == len(sent)
    by_topic = collections.Counter(m.topic for m in received)
    assert by_topic == collections.Counter(r.topic for r in sent)
    assert set(by_topic) == {settings.topic_sensor, settings.topic_gps}
    # one frame, byte for byte and decoded: key, value, headers, timestamp
    wanted = next(r for r in sent if r.topic == settings.topic_sensor and b'"Vehicle.Speed"' in (r.value or b""))
    match = [m for m in received if m.value == wanted.value]
    assert len(match) == 1
    got = match[0]
    assert got.key == wanted.key and got.timestamp == wanted.timestamp_ms
    assert list(got.headers) == list(wanted.headers)
    assert orjson.loads(got.value) == orjson.loads(wanted.value)
    # per vehicle and topic, frames stay in the order they were produced
    produced: dict[tuple[bytes | None, str], list[bytes | None]] = collections.defaultdict(list)
    consumed: dict[tuple[bytes | None, str], list[bytes | None]] = collections.defaultdict(list)
    for r in sent:
        produced[(r.key, r.topic)].append(r.value)
    for m in sorted(received, key=lambda m: (m.topic, m.partition, m.offset)):
        consumed[(m.key, m.topic)].append(m.value)
    assert consumed == produced


def test_simulated_fleet_round_trip(fresh: Callable[[str], Settings]) -> None:
    settings = fresh("sim")
    config = SimConfig(vehicles=60, duration_s=120, seed=21, sensor_topic=settings.topic_sensor,
                       gps_topic=settings.topic_gps, fault_rates=parse_fault_rates("none,duplicate=0.02,late=0.02"))
    sim = FleetSimulator(config)
    topics = {"sensor": settings.topic_sensor, "gps": settings.topic_gps}
    items = (item for records, _ in sim.record_windows(topics) for item in records)
    sent, received, stats = _send_and_read(items, settings)
    assert len(sent) > 150
    assert stats.readings == sim.stats.readings
    _check_round_trip(sent, received, settings)


def test_twizy_replay_round_trip(fresh: Callable[[str], Settings]) -> None:
    settings = fresh("twizy")
    mapping = load_mapping()
    trips = load_trips(default_twizy_dir(), mapping)[:2]
    sent, received, _ = _send_and_read(twizy_items(trips, mapping, vehicles=2, settings=settings), settings)
    assert len(sent) > 2000
    _check_round_trip(sent, received, settings)
    vins = {m.key for m in received}
    assert vins == {b"VF1TWZ00000000000", b"VF1TWZ00000000001"}
