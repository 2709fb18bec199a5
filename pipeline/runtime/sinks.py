"""Outputs: Parquet objects in S3, CloudEvents on Kafka topics, dead letters.

Error policy, decided here once: a write is retried with exponential backoff until it
succeeds or the worker is stopped. Nothing is acknowledged upstream until every write of
a segment succeeded (the delivery invariant), so an unreachable store means backpressure,
not loss.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.batch import DeadLetter, EventBatch, RawRecord, Readings

log = logging.getLogger("pipeline.runtime.sinks")
T = TypeVar("T")

OFFSET_WIDTH = 12


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with a ceiling; `attempts=0` retries until stopped."""

    initial_s: float = 0.2
    max_s: float = 5.0
    attempts: int = 0

    def delays(self) -> Iterable[float]:
        delay, n = self.initial_s, 0
        while self.attempts == 0 or n < self.attempts:
            yield delay
            delay = min(delay * 2, self.max_s)
            n += 1


async def retry(
    what: str,
    call: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    on_retry: Callable[[Exception], None] | None = None,
) -> T:
    """Await `call()` until it succeeds; log and back off between failures."""
    delays = iter(backoff.delays())
    while True:
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = next(delays, None)
            if delay is None:
                raise
            if on_retry:
                on_retry(exc)
            log.warning("%s failed (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)


def segment_name(topic: str, partition: int, first: int, last: int) -> str:
    """`<topic>-<partition>-<first>-<last>`: the deterministic part of every object key."""
    return f"{topic}-{partition:03d}-{first:0{OFFSET_WIDTH}d}-{last:0{OFFSET_WIDTH}d}"


def hive_prefix(hour_start_ms: int) -> str:
    """`year=YYYY/month=MM/date=DD/hour=HH` of a record-time hour (UTC)."""
    d = datetime.fromtimestamp(hour_start_ms / 1000, tz=UTC)
    return f"year={d.year:04d}/month={d.month:02d}/date={d.day:02d}/hour={d.hour:02d}"


HOUR_MS = 3_600_000


def readings_table(clean: Readings, repaired: np.ndarray | None, records: Sequence[RawRecord]) -> pa.Table:
    """Clean readings as an Arrow table: vin, signal (dictionary), t, value, repaired, source offset."""
    rec_index = clean.frames.record[clean.frame] if len(clean) else np.empty(0, dtype=np.int64)
    offsets = np.fromiter((r.offset for r in records), dtype=np.int64, count=len(records))
    vins = pa.DictionaryArray.from_arrays(pa.array(clean.vehicle, pa.int32()), pa.array(clean.vins, pa.string()))
    signals = pa.DictionaryArray.from_arrays(
        pa.array(clean.signal, pa.int32()), pa.array(clean.signal_names, pa.string())
    )
    return pa.table(
        {
            "vin": vins,
            "signal": signals,
            "t": pa.array(clean.t.astype("datetime64[ms]")),
            "value": pa.array(clean.value, pa.float64()),
            "repaired": pa.array(repaired if repaired is not None else np.zeros(len(clean), dtype=bool)),
            "offset": pa.array(offsets[rec_index] if len(records) else rec_index),
        }
    )


def events_table(events: EventBatch) -> pa.Table:
    """Derived events of one type as an Arrow table (attributes + flattened data)."""
    cols: dict[str, Any] = {}
    for name, values in events.attrs.items():
        cols[name] = pa.array(values.astype("datetime64[ms]")) if name == "time" else pa.array(values.tolist())
    for name, values in events.data.items():
        mask = events.present.get(name)
        arr = values.tolist()
        if mask is not None:
            arr = [v if m else None for v, m in zip(arr, mask.tolist(), strict=True)]
        cols[f"data.{name}"] = pa.array(arr)
    return pa.table(cols)


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialise deterministically (same table, same bytes: replays overwrite identically)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True, store_schema=True)
    return buf.getvalue()


@dataclass(slots=True)
class PutObject:
    key: str
    body: bytes
    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)


class ObjectStoreSink:
    """Writes objects to an S3-compatible bucket through the `minio` client (in a thread)."""

    def __init__(self, client: Any, bucket: str, backoff: Backoff | None = None,
                 on_retry: Callable[[Exception], None] | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.backoff = backoff or Backoff()
        self.on_retry = on_retry

    def ensure_bucket(self) -> None:
        from minio.error import S3Error

        if not self.client.bucket_exists(self.bucket):
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:  # replicas starting together race to create it
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def _put(self, obj: PutObject) -> None:
        self.client.put_object(
            self.bucket, obj.key, io.BytesIO(obj.body), len(obj.body),
            content_type=obj.content_type, metadata=obj.metadata,
        )

    async def write(self, objects: Sequence[PutObject], concurrency: int = 8) -> float:
        """PUT every object, several at a time, each retried until it lands; returns seconds."""
        started = time.perf_counter()
        limit = asyncio.Semaphore(concurrency)

        async def put(obj: PutObject) -> None:
            async with limit:
                await retry(f"PUT s3://{self.bucket}/{obj.key}",
                            lambda: asyncio.to_thread(self._put, obj), self.backoff, on_retry=self.on_retry)

        await asyncio.gather(*(put(o) for o in objects))
        return time.perf_counter() - started


def metadata_value(value: Any) -> str:
    """S3 user metadata must be ASCII; JSON-encode structured values."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def dead_letter_record(dl: DeadLetter) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """The dead-letter message: original key and bytes and headers, plus why, in `dlq_*` headers."""
    rec = dl.record
    headers = list(rec.headers) + [
        ("dlq_stage", dl.stage.encode()),
        ("dlq_reason", dl.reason.encode()),
        ("dlq_error", dl.error.encode("utf-8", "replace")[:4000]),
        ("dlq_topic", rec.topic.encode()),
        ("dlq_partition", str(rec.partition).encode()),
        ("dlq_offset", str(rec.offset).encode()),
    ]
    if dl.detail:
        headers.append(("dlq_detail", orjson.dumps(dl.detail, default=str)))
    return rec.key, rec.value if rec.value is not None else b"", headers


@dataclass(slots=True)
class OutMessage:
    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone (compacted topics)
    headers: list[tuple[str, bytes]]
    timestamp_ms: int | None = None
    partition: int | None = None  # None: the producer's partitioner (murmur2 of the key)


class TopicSink:
    """Produces messages with an idempotent, acks=all aiokafka producer and waits for every ack."""

    def __init__(self, producer: Any, backoff: Backoff | None = None) -> None:
        self.producer = producer
        self.backoff = backoff or Backoff()

    async def write(self, messages: Sequence[OutMessage]) -> float:
        started = time.perf_counter()
        if not messages:
            return 0.0

        async def send_all() -> None:
            futures = [
                await self.producer.send(m.topic, m.value, key=m.key, headers=m.headers,
                                         timestamp_ms=m.timestamp_ms, partition=m.partition)
                for m in messages
            ]
            await asyncio.gather(*futures)

        # A resend after a partial failure repeats ids: consumers drop duplicates by id.
        await retry(f"produce {len(messages)} messages", send_all, self.backoff)
        return time.perf_counter() - started

    async def send_once(self, messages: Sequence[OutMessage]) -> None:
        """One attempt: produce every message and wait for every ack, raising on any failure
        (a route's `retry` decides what happens next)."""
        futures = [
            await self.producer.send(m.topic, m.value, key=m.key, headers=m.headers,
                                     timestamp_ms=m.timestamp_ms, partition=m.partition)
            for m in messages
        ]
        await asyncio.gather(*futures)
