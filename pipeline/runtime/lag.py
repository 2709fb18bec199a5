"""Consumer-group lag on the ingest topics, read from the broker: committed offsets against
log-end offsets, per partition and in total, plus the partition count that bounds replicas."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.runtime.settings import Settings, get_settings

OffsetReset = Literal["earliest", "latest"]


def partition_lag(committed: int | None, log_start: int, log_end: int,
                  offset_reset: OffsetReset = "earliest") -> int:
    """Records the group still has to read on one partition.

    Without a committed offset (or one that retention has deleted), the group starts where
    its `auto.offset.reset` says: Faust's default `earliest` means the whole retained log.
    """
    if committed is None or committed < 0 or committed < log_start:
        return log_end - log_start if offset_reset == "earliest" else 0
    return max(0, log_end - committed)


@dataclass(frozen=True)
class PartitionLag:
    """One partition: the group's committed offset (None if never committed) and the log bounds."""

    topic: str
    partition: int
    committed: int | None
    log_start: int
    log_end: int
    lag: int


@dataclass(frozen=True)
class GroupLag:
    """A consumer group's lag over some topics at one moment."""

    group: str
    by_partition: tuple[PartitionLag, ...]
    partitions_by_topic: dict[str, int] = field(default_factory=dict)
    missing_topics: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.by_partition)

    @property
    def committed_total(self) -> int:
        """Sum of committed offsets (0 where none): grows as the group makes progress."""
        return sum(p.committed or 0 for p in self.by_partition)

    @property
    def end_total(self) -> int:
        return sum(p.log_end for p in self.by_partition)

    @property
    def partitions(self) -> int:
        """Units of parallelism: Faust assigns partition i of co-partitioned topics to one
        worker together, so the bound is the largest per-topic count, not the sum."""
        return max(self.partitions_by_topic.values(), default=0)

    def by_topic(self) -> dict[str, int]:
        """Total lag per topic."""
        totals: dict[str, int] = {t: 0 for t in self.partitions_by_topic}
        for p in self.by_partition:
            totals[p.topic] = totals.get(p.topic, 0) + p.lag
        return totals


class LagReader:
    """Reads a group's lag repeatedly over one admin client and one group-less consumer."""

    def __init__(self, group: str, topics: Sequence[str], settings: Settings | None = None,
                 offset_reset: OffsetReset = "earliest", client_kwargs: dict[str, Any] | None = None,
                 request_timeout_ms: int = 10_000) -> None:
        self.group = group
        self.topics = list(topics)
        self.offset_reset: OffsetReset = offset_reset
        kwargs = client_kwargs if client_kwargs is not None else (settings or get_settings()).kafka_client_kwargs()
        self._kwargs = dict(kwargs)
        self._request_timeout_ms = request_timeout_ms
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        admin = AIOKafkaAdminClient(request_timeout_ms=self._request_timeout_ms, **self._kwargs)
        consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False,
                                    request_timeout_ms=self._request_timeout_ms, **self._kwargs)
        try:
            await admin.start()
            await consumer.start()
        except BaseException:
            await asyncio.gather(admin.close(), consumer.stop(), return_exceptions=True)
            raise
        self._admin, self._consumer = admin, consumer

    async def close(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        if admin is not None:
            await admin.close()
        if consumer is not None:
            await consumer.stop()

    async def __aenter__(self) -> LagReader:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def partitions(self) -> tuple[dict[str, int], tuple[str, ...]]:
        """Partition count per existing topic, and the topics the broker does not know."""
        if self._admin is None:
            raise RuntimeError("LagReader not started")
        # Metadata for all topics: naming topics would let a broker with
        # auto.create.topics.enable create the ones that are missing.
        described = await self._admin.describe_topics(None)
        wanted = set(self.topics)
        counts: dict[str, int] = {}
        for entry in described:
            parts = entry.get("partitions") or []
            if entry["topic"] in wanted and not entry.get("error_code") and parts:
                counts[entry["topic"]] = len(parts)
        return counts, tuple(t for t in self.topics if t not in counts)

    async def read(self) -> GroupLag:
        """Committed, start and end offsets of every partition of the topics, now."""
        if self._admin is None or self._consumer is None:
            raise RuntimeError("LagReader not started")
        counts, missing = await self.partitions()
        tps = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
        if not tps:
            return GroupLag(self.group, (), counts, missing)
        committed_map, starts, ends = await asyncio.gather(
            self._admin.list_consumer_group_offsets(self.group, partitions=tps),
            self._consumer.beginning_offsets(tps),
            self._consumer.end_offsets(tps),
        )
        rows: list[PartitionLag] = []
        for tp in tps:
            meta = committed_map.get(tp)
            committed = meta.offset if meta is not None and meta.offset >= 0 else None
            start, end = int(starts[tp]), int(ends[tp])
            rows.append(PartitionLag(tp.topic, tp.partition, committed, start, end,
                                     partition_lag(committed, start, end, self.offset_reset)))
        return GroupLag(self.group, tuple(rows), counts, missing)


async def read_group_lag(group: str, topics: Sequence[str], settings: Settings | None = None,
                         offset_reset: OffsetReset = "earliest") -> GroupLag:
    """One lag reading with clients opened and closed around it."""
    async with LagReader(group, topics, settings, offset_reset) as reader:
        return await reader.read()


def group_lag(group: str, topics: Sequence[str], settings: Settings | None = None,
              offset_reset: OffsetReset = "earliest") -> GroupLag:
    """Blocking `read_group_lag` for scripts and the CLI."""
    return asyncio.run(read_group_lag(group, topics, settings, offset_reset))
