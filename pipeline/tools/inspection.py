"""A summary of what the pipeline wrote: objects by prefix, route topics, dead letters.

Run as `python -m pipeline.tools.inspection`; the demo prints it at the end.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from pipeline.runtime.settings import Settings, get_settings

console = Console()


def object_summary(settings: Settings) -> tuple[Counter[str], dict[str, str], int]:
    client = settings.minio_client()
    counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    total_bytes = 0
    # ListObjects V1 (marker paging): S3Proxy rejects V2 continuation tokens past 1000 keys.
    for obj in client.list_objects(settings.s3_bucket, recursive=True, use_api_v1=True):
        name = obj.object_name
        top = name.split("/", 1)[0]
        group = top if top != "events" else "/".join(name.split("/")[:2])
        counts[group] += 1
        examples.setdefault(group, name)
        total_bytes += obj.size or 0
    return counts, examples, total_bytes


async def topic_summary(settings: Settings) -> tuple[dict[str, int], Counter[str], dict[str, Any]]:
    """Message count per route/DLQ topic, DLQ reasons, and one routed event per topic."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from pipeline.runtime.topics import topic_partitions

    consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    sizes: dict[str, int] = {}
    reasons: Counter[str] = Counter()
    samples: dict[str, Any] = {}
    try:
        topics = sorted(t for t in await consumer.topics()
                        if t.startswith(settings.topic_prefix_route) or t == settings.topic_dlq)
        for topic in topics:
            tps = [TopicPartition(topic, p) for p in await topic_partitions(settings, topic)]
            starts = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
            sizes[topic] = sum(ends[tp] - starts[tp] for tp in tps)
            if not sizes[topic]:
                continue
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            limit = 20000 if topic == settings.topic_dlq else 1
            got = 0
            for _ in range(20):
                batch = await consumer.getmany(timeout_ms=300, max_records=2000)
                for msgs in batch.values():
                    for m in msgs:
                        headers = dict(m.headers or ())
                        if topic == settings.topic_dlq:
                            if "ce_dlqroute" in headers:  # a routed event a route could not let out
                                reasons[f"route:{headers['ce_dlqroute'].decode()}:"
                                         f"{headers.get('ce_dlqreason', b'?').decode()}"] += 1
                            else:  # a frame that failed before routing
                                reasons[f"{headers.get('dlq_stage', b'?').decode()}:"
                                         f"{headers.get('dlq_reason', b'?').decode()}"] += 1
                        elif topic not in samples:
                            samples[topic] = {
                                "headers": {k: v.decode(errors="replace") for k, v in headers.items()},
                                "data": orjson.loads(m.value),
                            }
                        got += 1
                if got >= limit or got >= sizes[topic]:
                    break
    finally:
        await consumer.stop()
    return sizes, reasons, samples


def main() -> None:
    settings = get_settings()
    counts, examples, total_bytes = object_summary(settings)
    table = Table("prefix", "objects", "example key", title=f"s3://{settings.s3_bucket} ({total_bytes / 1e6:.1f} MB)")
    for group in sorted(counts):
        table.add_row(group, str(counts[group]), examples[group])
    console.print(table)
    sizes, reasons, samples = asyncio.run(topic_summary(settings))
    topics = Table("topic", "messages", title="route and dead-letter topics")
    for topic, n in sizes.items():
        topics.add_row(topic, f"{n:,}")
    console.print(topics)
    if reasons:
        dlq = Table("stage:reason", "dead letters", title=settings.topic_dlq)
        for reason, n in reasons.most_common():
            dlq.add_row(reason, f"{n:,}")
        console.print(dlq)
    for topic, sample in list(samples.items())[:3]:
        console.print(f"[bold]example CloudEvent on {topic}[/bold]")
        console.print_json(orjson.dumps(sample).decode())


if __name__ == "__main__":
    main()
