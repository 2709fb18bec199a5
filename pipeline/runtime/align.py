"""Event-time alignment of a partition's sensor and GPS records (as Kafka Streams' PartitionGroup).

The ingest topics are co-partitioned: partition p of each carries the same vehicles, and one
worker owns both. A vehicle's sensor and GPS frames of the same minutes must reach the core
in the same batch, or handlers that join them (trips, geofences) see one without the other.
Consumed independently, the two topics drift apart on a backlog by as much as the fetcher
happens to read of one before the other: hours of event time on a replay at full speed.

So records wait here per topic-partition. A partition's watermark is the smaller of its two
topics' highest record timestamps so far; each topic releases, in offset order, the records
at or below it. The leading topic is thereby held back until the other catches up. A topic
that delivers nothing while the other's records wait for `max_wait_ms` is marked idle (as
Kafka Streams does after `max.task.idle.ms`): the partition then releases everything until
that topic delivers again, unless the broker still holds records of it that the consumer
has not fetched yet (`backlog`): then it is not quiet, only slow, and the wait goes on, as
Kafka Streams does since KIP-695. A topic-partition holding more than `max_buffered` records is
reported by `over_limit`, so the consumer can pause fetching it (the bound on memory).

Pure: no Kafka, no clock of its own (callers pass `now_ms`).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from pipeline.core.batch import RawRecord

TopicPartition = tuple[str, int]
NEVER = -(1 << 62)  # "no record seen yet"
ALWAYS = 1 << 62  # watermark of a partition whose topics are all idle


def _timestamp(record: RawRecord) -> int:
    return record.timestamp_ms


class Aligner:
    """Buffers of the co-partitioned ingest topics, released in event-time order."""

    def __init__(self, topics: Sequence[str], *, max_wait_ms: int = 500, max_buffered: int = 4000,
                 backlog: Callable[[str, int], bool] | None = None) -> None:
        if len(set(topics)) != len(topics) or not topics:
            raise ValueError(f"aligned topics must be distinct and at least one: {list(topics)}")
        self.topics = tuple(topics)
        self.max_wait_ms = int(max_wait_ms)
        self.max_buffered = int(max_buffered)
        self.backlog = backlog  # (topic, partition) -> records wait in the broker for it
        self.partitions: set[int] = set()
        self._buf: dict[TopicPartition, deque[RawRecord]] = {}
        self._high: dict[TopicPartition, int] = {}
        self._next: dict[TopicPartition, int] = {}
        self.gaps: dict[TopicPartition, int] = {}  # topic-partition -> offset to seek back to
        self._idle: set[TopicPartition] = set()
        self._held_since: dict[int, int] = {}
        self._turn = 0
        self.forced = 0  # releases forced by an idle topic (a metric)

    # --- assignment --------------------------------------------------------------------------
    def assign(self, partitions: Iterable[int], resume: dict[TopicPartition, int] | None = None) -> None:
        """Take partitions; `resume` gives the next offset to accept of topic-partitions this
        worker owned until the rebalance (what it had not processed when they were revoked):
        records before it are skipped, a fetch that starts after it is a gap (see `gaps`)."""
        self.partitions.update(partitions)
        for key, offset in (resume or {}).items():
            if key[1] in self.partitions and key[0] in self.topics:
                self._next[key] = offset

    def revoke(self, partitions: Iterable[int]) -> int:
        """Forget partitions; returns how many buffered records were dropped (their new
        owner reads them again from the committed offset)."""
        dropped = 0
        for p in set(partitions):
            self.partitions.discard(p)
            self._held_since.pop(p, None)
            for t in self.topics:
                key = (t, p)
                dropped += len(self._buf.pop(key, ()))
                self._high.pop(key, None)
                self._next.pop(key, None)
                self.gaps.pop(key, None)
                self._idle.discard(key)
        return dropped

    # --- input -------------------------------------------------------------------------------
    def add(self, topic: str, partition: int, records: Sequence[RawRecord]) -> int:
        """Buffer records of one topic-partition (in offset order). Offsets already buffered or
        released are skipped (a re-fetch), so is anything of a partition not assigned.
        Returns the number accepted."""
        if partition not in self.partitions or not records or topic not in self.topics:
            return 0
        key = (topic, partition)
        nxt = self._next.get(key)
        if nxt is not None and records[0].offset < nxt:
            records = [r for r in records if r.offset >= nxt]
            if not records:
                return 0
        if nxt is not None and records[0].offset > nxt:
            # the consumer is past records this worker never processed (its position survived
            # a rebalance while their buffer did not): refuse, and ask for a seek back
            self.gaps[key] = nxt
            return 0
        self.gaps.pop(key, None)
        buf = self._buf.get(key)
        if buf is None:
            buf = self._buf[key] = deque()
        buf.extend(records)
        self._next[key] = records[-1].offset + 1
        high = max(r.timestamp_ms for r in records)
        if high > self._high.get(key, NEVER):
            self._high[key] = high
        self._idle.discard(key)
        return len(records)

    # --- state -------------------------------------------------------------------------------
    def resume_offsets(self, partitions: Iterable[int]) -> dict[TopicPartition, int]:
        """Per topic-partition of these partitions: the first offset not handed on yet (the
        oldest buffered record, else the next one expected)."""
        out = {}
        for p in partitions:
            for t in self.topics:
                key = (t, p)
                buf = self._buf.get(key)
                if buf:
                    out[key] = buf[0].offset
                elif key in self._next:
                    out[key] = self._next[key]
        return out

    def buffered(self, topic: str | None = None, partition: int | None = None) -> int:
        return sum(len(b) for (t, p), b in self._buf.items()
                   if (topic is None or t == topic) and (partition is None or p == partition))

    def over_limit(self) -> set[TopicPartition]:
        """Topic-partitions holding `max_buffered` records or more (pause their fetching)."""
        return {k for k, b in self._buf.items() if len(b) >= self.max_buffered}

    def watermark(self, partition: int) -> int | None:
        """Event time up to which every non-idle topic of the partition has delivered
        (ms); None until each topic has delivered or been marked idle."""
        marks = []
        for t in self.topics:
            key = (t, partition)
            if key in self._idle:
                continue
            high = self._high.get(key)
            if high is None:
                return None
            marks.append(high)
        if not marks:
            seen = [self._high[(t, partition)] for t in self.topics if (t, partition) in self._high]
            return max(seen) if seen else ALWAYS
        return min(marks)

    def delivered_watermarks(self, delivered: dict[TopicPartition, int]) -> dict[int, int]:
        """Per assigned partition, the event time up to which the core has been given every
        non-idle topic's records: the smaller of the highest timestamps handed on per topic
        (`delivered`, kept by the caller as batches are formed). Records released but not
        yet in a batch do not count, so a handler never takes a time as complete while some
        of its records wait for the next batch."""
        out = {}
        for p in self.partitions:
            marks: list[int] = []
            unknown = False
            for t in self.topics:
                key = (t, p)
                if key in self._idle:  # a quiet topic does not hold event time back
                    continue
                high = delivered.get(key)
                if high is None:
                    unknown = True
                    break
                marks.append(high)
            if unknown:
                continue
            if not marks:
                marks = [max(delivered[(t, p)] for t in self.topics if (t, p) in delivered)] \
                    if any((t, p) in delivered for t in self.topics) else []
            if marks:
                out[p] = min(marks)
        return out

    def next_deadline(self) -> int | None:
        """When (ms) the earliest held partition is released by the idle rule, if any holds."""
        if not self._held_since:
            return None
        return min(self._held_since.values()) + self.max_wait_ms

    def idle_topics(self) -> set[TopicPartition]:
        return set(self._idle)

    # --- output ------------------------------------------------------------------------------
    def release(self, now_ms: int, limit: int | None = None) -> list[RawRecord]:
        """Records ready for the core, each partition's merged by timestamp (each topic's in
        offset order). Stops after the partition that reaches `limit` records."""
        out: list[RawRecord] = []
        parts = sorted(self.partitions)
        if not parts:
            return out
        start = self._turn % len(parts)
        self._turn += 1
        for p in parts[start:] + parts[:start]:
            if limit is not None and len(out) >= limit:
                break
            out.extend(self._release_partition(p, now_ms))
        return out

    def _release_partition(self, p: int, now_ms: int) -> list[RawRecord]:
        bufs = [self._buf.get((t, p)) for t in self.topics]
        if not any(bufs):
            self._held_since.pop(p, None)
            return []
        mark = self.watermark(p)
        taken: list[list[RawRecord]] = []
        for buf in bufs:
            part: list[RawRecord] = []
            if buf and mark is not None:
                while buf and buf[0].timestamp_ms <= mark:
                    part.append(buf.popleft())
            taken.append(part)
        if any(bufs):  # something is held back
            progressed = any(taken)
            since = self._held_since.get(p)
            if since is None or progressed:
                since = self._held_since[p] = now_ms
            quiet = [t for t, buf in zip(self.topics, bufs, strict=True) if not buf]
            slow = self.backlog is not None and any(self.backlog(t, p) for t in quiet)
            if now_ms - since >= self.max_wait_ms and not slow:
                # the topics that delivered nothing meanwhile are idle: release the rest
                for t, buf in zip(self.topics, bufs, strict=True):
                    if not buf:
                        self._idle.add((t, p))
                for part, buf in zip(taken, bufs, strict=True):
                    if buf:
                        part.extend(buf)
                        buf.clear()
                self._held_since.pop(p, None)
                self.forced += 1
        else:
            self._held_since.pop(p, None)
        nonempty = [t for t in taken if t]
        if len(nonempty) <= 1:
            return nonempty[0] if nonempty else []
        return list(heapq.merge(*nonempty, key=_timestamp))
