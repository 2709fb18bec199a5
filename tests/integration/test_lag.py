"""Consumer-group lag read from the real broker equals end offset minus committed offset."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.runtime.lag import LagReader, group_lag
from pipeline.runtime.settings import get_settings

pytestmark = pytest.mark.integration

# Records produced per partition and the offset the group commits there (None = never).
PRODUCED = {0: 40, 1: 25, 2: 17}
COMMITTED: dict[int, int | None] = {0: 15, 1: 25, 2: None}


async def _broker_answers(deadline_s: float) -> None:
    """Ask the broker for metadata until it answers; a missing broker is a failure, not a skip."""
    kwargs = get_settings().kafka_client_kwargs()
    admin = AIOKafkaAdminClient(request_timeout_ms=3000, **kwargs)
    try:
        await asyncio.wait_for(admin.start(), deadline_s)
        await asyncio.wait_for(admin.list_topics(), deadline_s)
    except Exception as exc:
        pytest.fail(f"Kafka at {kwargs['bootstrap_servers']} did not answer within {deadline_s}s "
                    f"(start it with scripts/services start): {exc!r}")
    finally:
        await admin.close()


async def _prepare(topic: str, group: str) -> None:
    kwargs = get_settings().kafka_client_kwargs()
    admin = AIOKafkaAdminClient(**kwargs)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=len(PRODUCED), replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(acks="all", **kwargs)
    await producer.start()
    try:
        for partition, count in PRODUCED.items():
            for i in range(count):
                await producer.send(topic, f"frame {i}".encode(), key=b"VIN", partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **kwargs)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in PRODUCED]
        consumer.assign(tps)
        await consumer.commit({TopicPartition(topic, p): offset for p, offset in COMMITTED.items()
                               if offset is not None})
    finally:
        await consumer.stop()


@pytest.fixture(scope="module")
def topic_and_group() -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:10]
    topic, group = f"test.lag.{suffix}", f"test-lag-{suffix}"
    asyncio.run(_broker_answers(20.0))
    asyncio.run(_prepare(topic, group))
    yield topic, group
    asyncio.run(_delete([topic]))


async def _delete(topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(**get_settings().kafka_client_kwargs())
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()


def test_lag_is_end_minus_committed_per_partition(topic_and_group: tuple[str, str]) -> None:
    topic, group = topic_and_group
    lag = group_lag(group, [topic])
    rows = {p.partition: p for p in lag.by_partition}
    assert sorted(rows) == sorted(PRODUCED)
    for partition, produced in PRODUCED.items():
        row = rows[partition]
        assert row.log_end == produced
        assert row.committed == COMMITTED[partition]
        expected = produced - (COMMITTED[partition] or 0)  # never committed: reset to earliest
        assert row.lag == expected, partition
    assert lag.total == sum(PRODUCED.values()) - sum(c or 0 for c in COMMITTED.values())
    assert lag.partitions == len(PRODUCED)
    assert lag.partitions_by_topic == {topic: len(PRODUCED)}
    assert lag.missing_topics == ()


def test_latest_reset_counts_uncommitted_partitions_as_caught_up(topic_and_group: tuple[str, str]) -> None:
    topic, group = topic_and_group
    lag = group_lag(group, [topic], offset_reset="latest")
    assert {p.partition: p.lag for p in lag.by_partition} == {0: 25, 1: 0, 2: 0}


def test_a_group_that_never_committed_lags_by_everything(topic_and_group: tuple[str, str]) -> None:
    topic, _ = topic_and_group
    lag = group_lag(f"never-{uuid.uuid4().hex[:8]}", [topic])
    assert lag.total == sum(PRODUCED.values())
    assert all(p.committed is None for p in lag.by_partition)


def test_missing_topics_are_reported_and_not_created(topic_and_group: tuple[str, str]) -> None:
    topic, group = topic_and_group
    absent = f"test.absent.{uuid.uuid4().hex[:8]}"

    async def read_twice() -> tuple[tuple[str, ...], tuple[str, ...]]:
        async with LagReader(group, [topic, absent]) as reader:
            first = await reader.read()
            await asyncio.sleep(1.0)  # a broker that auto-creates would have the topic by now
            second = await reader.read()
        return first.missing_topics, second.missing_topics

    first, second = asyncio.run(read_twice())
    assert first == (absent,)
    assert second == (absent,)


def test_reader_follows_new_commits(topic_and_group: tuple[str, str]) -> None:
    topic, _ = topic_and_group
    group = f"test-lag-follow-{uuid.uuid4().hex[:8]}"

    async def scenario() -> list[int]:
        kwargs = get_settings().kafka_client_kwargs()
        consumer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **kwargs)
        await consumer.start()
        totals = []
        try:
            consumer.assign([TopicPartition(topic, p) for p in PRODUCED])
            async with LagReader(group, [topic]) as reader:
                totals.append((await reader.read()).total)
                await consumer.commit({TopicPartition(topic, 0): 30})
                totals.append((await reader.read()).total)
                await consumer.commit({TopicPartition(topic, p): n for p, n in PRODUCED.items()})
                totals.append((await reader.read()).total)
        finally:
            await consumer.stop()
        return totals

    everything = sum(PRODUCED.values())
    assert asyncio.run(scenario()) == [everything, everything - 30, 0]
