"""Handler state that survives restarts and moves with partitions: a compacted changelog.

Each stateful handler keeps small per-vehicle dicts in a `StateStore`. After every batch
the worker writes the changed entries to `<app_id>-handler-state`, a compacted topic with
the ingest topics' partition count, into the same partition number as the vehicle's ingest
partition (key `handler/vin`, value JSON, tombstone on delete). Before a worker processes
its first batch from a partition it reads that partition of the changelog back, so state
follows the partition to whichever replica owns it, and a restarted worker resumes where
the last acknowledged batch left off. The changelog write is part of the batch's outputs:
it is acknowledged by Kafka before the input offsets are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import orjson

from pipeline.core.batch import RawRecord
from pipeline.core.handlers.state import StateStore, split_key
from pipeline.runtime.settings import Settings
from pipeline.runtime.sinks import OutMessage
from pipeline.runtime.topics import read_to_end

log = logging.getLogger("pipeline.state")


def changelog_topic(settings: Settings) -> str:
    return f"{settings.app_id}-handler-state"


class StateChangelog:
    """Keeps a StateStore in step with its changelog topic, partition by partition."""

    def __init__(self, settings: Settings, store: StateStore) -> None:
        self.settings = settings
        self.store = store
        self.topic = changelog_topic(settings)
        self.vin_partition: dict[str, int] = {}
        self.restored: set[int] = set()

    def note(self, records: Iterable[RawRecord]) -> None:
        """Remember which partition each vehicle's frames come from (the key is the VIN)."""
        for r in records:
            if r.key:
                self.vin_partition[r.key.decode("utf-8", "replace")] = r.partition

    def partition_of(self, key: str) -> int | None:
        _, subject = split_key(key)
        if "@" in subject:  # aggregate keys carry their partition: `cell@3`
            tail = subject.rsplit("@", 1)[1]
            if tail.isdigit():
                return int(tail)
        return self.vin_partition.get(subject)

    def changes(self) -> list[OutMessage]:
        """The store's changed entries as changelog messages (tombstones for deletes)."""
        out: list[OutMessage] = []
        for key, value in self.store.dirty().items():
            partition = self.partition_of(key)
            if partition is None:
                log.warning("handler state %s: no partition known for it, not persisted", key)
                continue
            out.append(OutMessage(self.topic, key.encode(), orjson.dumps(value) if value is not None else None,
                                  [], partition=partition))
        return out

    async def restore(self, partitions: Iterable[int], timeout_s: float = 60.0) -> int:
        """Load the changelog of these partitions into the store (before their first batch)."""
        wanted = sorted(set(partitions) - self.restored)
        if not wanted:
            return 0
        loaded = 0
        async for msgs in read_to_end(self.settings, self.topic, wanted, timeout_s):
            loaded += self.store.load((m.key.decode(), orjson.loads(m.value) if m.value is not None else None)
                                      for m in msgs)
        self.restored.update(wanted)
        if loaded:
            log.info("handler state: restored %d entries of partitions %s", loaded, wanted)
        return loaded

    def drop(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: forget their vehicles' state (the new owner restores it)."""
        gone = set(partitions)
        self.restored -= gone
        keys = [k for k in self.store.keys(None) if self.partition_of(k) in gone]
        self.store.load((k, None) for k in keys)
        for vin in [v for v, p in self.vin_partition.items() if p in gone]:
            del self.vin_partition[vin]


async def ensure_changelog(settings: Settings) -> None:
    """Create the compacted changelog topic (same partition count as the ingest topics)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        topic = changelog_topic(settings)
        if topic not in set(await admin.list_topics()):
            await admin.create_topics([NewTopic(topic, settings.partitions, settings.replication_factor,
                                                topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
