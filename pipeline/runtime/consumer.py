"""Faust's aiokafka consumer, with the ingest topics' fetches handed over whole.

Faust keeps the consumer group, its co-partitioning assignor (partition p of both ingest
topics goes to the same member when their partition counts are equal), the fetch thread,
rebalance handling and the seek to committed offsets after an assignment. What changes is
the last step of `getmany`: instead of turning every record into a Faust `Message` and an
`Event` for a `Stream` (about 200 µs of CPU per frame here), the records of the ingest
topics go to `BatchIngest.offer` as aiokafka returned them, one list per partition. Records
of any other topic (none today) still take Faust's per-event path.

Offsets of the ingest topics are never acked to Faust's tracker, so Faust's own periodic
commit leaves them alone: `BatchIngest` commits them through `commit_offsets`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from aiokafka.structs import TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, Message

from pipeline.runtime.ingest import BatchIngest
from pipeline.runtime.ingest_batch import GroupHandle


class BatchConsumerThread(AIOKafkaConsumerThread):
    """Faust's fetch thread, with fetches that wait for some data (Faust sets no minimum, so
    under a steady trickle every fetch returns a few records: CPU in this thread and the
    broker for nothing)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        settings = self.consumer.ingest.settings  # type: ignore[attr-defined]
        # read by aiokafka's fetcher when the consumer starts (no public setter after creation)
        consumer._fetch_min_bytes = settings.fetch_min_bytes
        consumer._fetch_max_wait_ms = settings.fetch_max_wait_ms
        return consumer


class BatchConsumer(AIOKafkaConsumer):
    """The consumer class of the worker's Faust app (set on its transport)."""

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @property
    def ingest(self) -> BatchIngest:
        ingest: BatchIngest = self.app.pipeline_ingest  # type: ignore[attr-defined]
        return ingest

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """Fetch once; ingest-topic records go to the batch path, others to Faust's streams."""
        generation = self.app.consumer_generation_id
        records, _active = await self._wait_next_records(timeout)
        if records is None or self.should_stop:
            return
        if not self.flow_active:  # a rebalance began: Faust seeks back to committed offsets
            try:
                await self.perform_seek()
            except Exception as exc:  # as Faust's own getmany does
                self.log.warning("seek after stopped flow failed: %r", exc)
            return
        if self.app.consumer_generation_id != generation:
            return  # fetched for an assignment that is gone; the new one re-reads from commits
        ingest = self.ingest
        mine: dict[tuple[str, int], Any] = {}
        others = []
        for tp, batch in records.items():
            if tp.topic in ingest.topics:
                mine[(tp.topic, tp.partition)] = batch
            else:
                others.append((tp, batch))
        if mine:
            ingest.offer(mine)
        for tp, batch in others:
            for record in batch:
                yield tp, self._to_message(tp, record)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        # before Faust's callbacks, which may resume fetching
        self.ingest.assigned((tp.topic, tp.partition) for tp in assigned)
        await super().on_partitions_assigned(assigned, generation_id)

    def group_handle(self) -> GroupHandle:
        """Commit, pause and resume by (topic, partition), for `BatchIngest`."""
        return GroupHandle(commit=self.commit_offsets, pause=self._pause, resume=self._resume,
                           backlog=self.has_backlog, seek=self._seek_to)

    async def _seek_to(self, tp: tuple[str, int], offset: int) -> None:
        await self.seek(self._tp(*tp), offset)

    def has_backlog(self, topic: str, partition: int) -> bool:
        """True when the broker holds records of the partition past the consumer's position
        (from the last fetch response's high watermark; False while unknown)."""
        try:
            consumer = self._thread._ensure_consumer()
            tp = TopicPartition(topic, partition)
            high = consumer.highwater(tp)
            state = consumer._subscription.subscription.assignment.state_value(tp)
        except Exception:  # not started, or not assigned (any more)
            return False
        if high is None or state is None or not state.has_valid_position:
            return False
        return bool(high > state.position)

    async def commit_offsets(self, offsets: Mapping[tuple[str, int], int]) -> bool:
        """Commit these next offsets (only of partitions still assigned to this member)."""
        return bool(await self._thread.commit({self._tp(t, p): o for (t, p), o in offsets.items()}))

    @staticmethod
    def _tp(topic: str, partition: int) -> TP:
        return TP(topic, partition)  # Faust's own type: its partition sets assert on it

    def _pause(self, tps: Iterable[tuple[str, int]]) -> None:
        self.pause_partitions([self._tp(t, p) for t, p in tps])

    def _resume(self, tps: Iterable[tuple[str, int]]) -> None:
        assigned = self.assignment()
        self.resume_partitions([tp for tp in (self._tp(t, p) for t, p in tps) if tp in assigned])
