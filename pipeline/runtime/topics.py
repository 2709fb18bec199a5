"""Small Kafka helpers shared by the operations code: partitions of a topic, read it to its end."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterable
from typing import Any

from pipeline.runtime.settings import Settings


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


async def create_topics(settings: Settings, topics: Iterable[str]) -> list[str]:
    """Create the missing ones of `topics` with the worker's partitions, replication and
    retention (the settings the worker creates its topics with at start); the created ones."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        configs = {"retention.ms": str(settings.topic_retention_ms)}
        wanted = [NewTopic(t, settings.partitions, settings.replication_factor, topic_configs=configs)
                  for t in dict.fromkeys(topics) if t not in existing]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another replica was first
                await admin.create_topics(wanted)
        return [t.name for t in wanted]
    finally:
        await admin.close()


def create_topics_now(settings: Settings, topics: Iterable[str], timeout_s: float = 30.0) -> list[str]:
    """`create_topics` from synchronous code, also from inside a running event loop (a rules
    reload between batches): it runs on its own loop in a helper thread and is waited for."""
    names = list(topics)
    if not names:
        return []
    result: list[str] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.extend(asyncio.run(asyncio.wait_for(create_topics(settings, names), timeout_s)))
        except BaseException as exc:  # handed to the caller
            failure.append(exc)

    thread = threading.Thread(target=run, name="create-topics", daemon=True)
    thread.start()
    thread.join(timeout_s + 5)
    if failure:
        raise failure[0]
    if thread.is_alive():
        raise TimeoutError(f"creating topics {', '.join(names)} took over {timeout_s}s")
    return result
