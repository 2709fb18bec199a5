"""Small Kafka helpers shared by the operations code: partitions of a topic, read it to its end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from pipeline.config import Settings


async def topic_partitions(settings: Settings, topic: str) -> list[int]:
    """Partition ids of a topic from the cluster metadata ([] if the topic does not exist)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for item in described:
        if item.get("topic") == topic and not item.get("error_code"):
            return sorted(int(p["partition"]) for p in item.get("partitions", ()))
    return []


async def read_to_end(settings: Settings, topic: str, partitions: Iterable[int] | None = None,
                      timeout_s: float = 60.0) -> AsyncIterator[list[Any]]:
    """Read partitions of a topic (all of them by default) from the beginning to the end offsets
    seen at the start, yielding message batches; TimeoutError if that takes over `timeout_s`."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    parts = sorted(partitions) if partitions is not None else await topic_partitions(settings, topic)
    if not parts:
        return
    consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while remaining:
            if loop.time() > deadline:
                raise TimeoutError(f"could not read {topic} partitions {parts} to their end within {timeout_s}s")
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=10_000)
            for msgs in batch.values():
                if msgs:
                    yield msgs
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
