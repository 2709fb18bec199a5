"""Two regions on real brokers with Kafka's MirrorMaker 2 between them.

The pair (two KRaft brokers and MirrorMaker 2 in dedicated mode) is this module's own, on
free ports in a temporary folder: the shared broker is never stopped or mirrored.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from pipeline import regions as reg
from pipeline.region_services import RegionServices, private_regions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegionServices]:
    base: Path = tmp_path_factory.mktemp("regions")
    with private_regions(base) as layout:
        yield layout


def model(layout: RegionServices) -> reg.Regions:
    boot = layout.bootstraps
    return reg.Regions.model_validate({"regions": {
        name: {"kafka_bootstrap": boot[name], "s3_bucket": f"telemetry-{name}", "app_id": f"app-{name}"}
        for name in layout.names}})


async def _produce(bootstrap: str, topic: str, ids: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for event_id in ids:
            await producer.send(topic, event_id.encode(), key=b"VIN", partition=0,
                                headers=[("ce_id", event_id.encode())])
        await producer.flush()
    finally:
        await producer.stop()


async def _read_route(regions: reg.Regions, local: str, route: str, expected: int,
                      timeout_s: float = 60) -> tuple[list[str], dict[str, str], int]:
    """Unique ids in arrival order, the topic each came from, and how many repeats were dropped."""
    consumer = await reg.consume_route(route, regions, local, group=None, auto_offset_reset="earliest",
                                       metadata_max_age_ms=1000)
    seen = reg.Deduplicator()
    ids: list[str] = []
    source: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(ids) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    event_id = reg.event_id(record.headers)
                    if seen.first(event_id):
                        assert event_id is not None
                        ids.append(event_id)
                        source[event_id] = tp.topic
    finally:
        await consumer.stop()
    return ids, source, seen.duplicates


def test_route_and_dead_letter_topics_replicate_both_ways(pair: RegionServices) -> None:
    regions = model(pair)
    a, b = pair.names
    uid = uuid.uuid4().hex[:6]
    route = f"route.it{uid}.dept.finance"
    from_a = [f"a-{uid}-{i}" for i in range(120)]
    from_b = [f"b-{uid}-{i}" for i in range(40)]
    asyncio.run(_produce(pair.bootstraps[a], route, from_a))
    asyncio.run(_produce(pair.bootstraps[b], route, from_b))
    asyncio.run(_produce(pair.bootstraps[a], "pipeline.dlq", [f"dlq-{uid}"]))

    # B's consumer sees one stream: its own events on route.x, A's on a.route.x, in order.
    ids, source, _ = asyncio.run(_read_route(regions, b, route, len(from_a) + len(from_b)))
    assert sorted(ids) == sorted(from_a + from_b)
    assert [i for i in ids if i.startswith("a-")] == from_a
    assert {source[i] for i in from_a} == {f"{a}.{route}"}
    assert {source[i] for i in from_b} == {route}
    # and the reverse direction: A sees B's events under b.route.x
    ids_a, source_a, _ = asyncio.run(_read_route(regions, a, route, len(from_a) + len(from_b)))
    assert sorted(ids_a) == sorted(from_a + from_b)
    assert {source_a[i] for i in from_b} == {f"{b}.{route}"}
    # dead letters are mirrored too
    dlq, _, _ = asyncio.run(_read_route(regions, b, "pipeline.dlq", 1))
    assert f"dlq-{uid}" in dlq


async def _switch_regions(pair: RegionServices, topic: str, group: str, total: int, first_part: int
                          ) -> tuple[int, int]:
    """Consume `first_part` records of `topic` in A as `group` and commit; then, as the same
    group in B, read the replica. Returns (translated offset committed in B, first index read)."""
    a, b = pair.names
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=pair.bootstraps[a], group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    got = 0
    try:
        while got < first_part:
            batch = await consumer.getmany(timeout_ms=1000, max_records=first_part - got)
            got += sum(len(r) for r in batch.values())
        await consumer.commit({TopicPartition(topic, 0): first_part})
    finally:
        await consumer.stop()
    replica = f"{a}.{topic}"
    admin = AIOKafkaAdminClient(bootstrap_servers=pair.bootstraps[b])
    await admin.start()
    translated = -1
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            offsets = await admin.list_consumer_group_offsets(group)
            meta = offsets.get(TopicPartition(replica, 0))
            if meta is not None and meta.offset > 0:
                translated = meta.offset
                break
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    assert translated > 0, f"MirrorMaker synced no offset of {group} to {b} within 60 s"
    consumer = AIOKafkaConsumer(replica, bootstrap_servers=pair.bootstraps[b], group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        batch: dict[TopicPartition, list] = {}  # type: ignore[type-arg]
        while not batch:
            batch = await consumer.getmany(timeout_ms=2000, max_records=1)
        first = int(next(iter(batch.values()))[0].value.decode().rsplit("-", 1)[1])
    finally:
        await consumer.stop()
    return translated, first


def test_consumer_moving_region_resumes_at_translated_offset(pair: RegionServices) -> None:
    uid = uuid.uuid4().hex[:6]
    topic = f"route.it{uid}.recommendation"
    group = f"it-{uid}-recommendation"
    total, first_part = 200, 100
    asyncio.run(_produce(pair.bootstraps[pair.names[0]], topic, [f"e-{i}" for i in range(total)]))
    translated, first = asyncio.run(_switch_regions(pair, topic, group, total, first_part))
    # MirrorMaker translates conservatively: never past the committed position, at most
    # offset.lag.max (10) records (+1) before it; the repeats are recognised by their ids.
    assert first_part - 11 <= translated <= first_part
    assert first == translated
    assert first > 0  # not from the beginning
