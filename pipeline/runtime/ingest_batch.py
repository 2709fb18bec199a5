"""A batch on the worker's path, and what the ingest's parts share around it.

- `TopicPartition` and `GroupHandle`: how the ingest names partitions and what it needs of
  the group consumer (commit, pause, resume, backlog, seek).
- `Batch`: one batch between assembly and commit, with the events and futures its stages
  signal each other by.
- A batch result outside the stages: dead-lettered whole when the core fails on it
  (`failed_batch`), and counted as Prometheus metrics (`observe`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.core.batch import DeadLetter, RawRecord
from pipeline.core.process import BatchResult
from pipeline.runtime import metrics

log = logging.getLogger("pipeline.worker")

TopicPartition = tuple[str, int]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(eq=False)
class Batch:
    """One batch between assembly and commit."""

    number: int
    records: list[RawRecord]
    watermarks: dict[int, int] = field(default_factory=dict)
    silent: bool = False
    core_started: asyncio.Event = field(default_factory=asyncio.Event)
    core_done: asyncio.Event = field(default_factory=asyncio.Event)
    decoded: asyncio.Future[tuple[Any, list[DeadLetter], float]] | None = None  # from the decoder process
    decoder: Any = None  # the decoder pool `decoded` came from
    done: asyncio.Future[dict[TopicPartition, int]] | None = None


def failed_batch(records: list[RawRecord], exc: Exception) -> BatchResult:
    """The core failed as a whole on a batch: every record is dead-lettered with the error."""
    return BatchResult.without_readings(
        records, dead_letters=[DeadLetter(r, "core", "core_error", f"{type(exc).__name__}: {exc}") for r in records])


def observe(result: BatchResult, seconds: float, *, silent: bool = False) -> None:
    """A batch result's counts and timings as Prometheus metrics (an idle signal's records
    were counted with the batch that held them)."""
    if not silent:
        for topic, frames in Counter(r.topic for r in result.records).items():
            metrics.FRAMES_IN.labels(topic).inc(frames)
    for stage, s in result.timings.items():
        metrics.BATCH_SECONDS.labels(stage).observe(s)
    metrics.BATCH_SECONDS.labels("total").observe(seconds)
    if len(result.outcome):
        counts = np.bincount(result.outcome.astype(np.int64), minlength=len(result.reasons)).tolist()
        for name, n in zip(result.reasons, counts, strict=False):
            if n:
                metrics.READINGS_OUT.labels(name).inc(n)
    decoded_frames = result.decoded.frames
    if len(decoded_frames) and not silent:
        names: dict[str, int] = {}
        topic_of = np.fromiter((names.setdefault(r.topic, len(names)) for r in result.records), dtype=np.int64,
                               count=len(result.records))
        per_topic = np.bincount(topic_of[decoded_frames.record], weights=decoded_frames.n_readings,
                                minlength=len(names))
        for t, i in names.items():
            if per_topic[i]:
                metrics.READINGS_IN.labels(t).inc(int(per_topic[i]))
    for dl in result.dead_letters:
        metrics.DEAD_LETTERS.labels(dl.stage, dl.reason).inc()
        if dl.stage == "decode":
            metrics.FRAMES_DEAD.labels(dl.reason).inc()
        log.warning("dead letter %s stage=%s reason=%s: %s", dl.record.where, dl.stage, dl.reason, dl.error[:200])
    if len(result.events):
        types, n = np.unique(result.events.attrs["type"].astype(str), return_counts=True)
        for t, c in zip(types.tolist(), n.tolist(), strict=True):
            metrics.EVENTS_DERIVED.labels(t).inc(c)
    if result.unmatched:
        metrics.EVENTS_UNMATCHED.inc(result.unmatched)
    for name, st in (result.handler_stats or {}).items():
        st = st if isinstance(st, dict) else getattr(st, "__dict__", {})
        metrics.HANDLER_CALLS.labels(name).inc(st.get("calls", 0))
        metrics.HANDLER_ERRORS.labels(name).inc(st.get("errors", 0))
        metrics.HANDLER_ROWS.labels(name).inc(st.get("rows_in", 0))
        metrics.HANDLER_EVENTS.labels(name).inc(st.get("events_out", 0))
        if st.get("latency_s") is not None:
            metrics.HANDLER_SECONDS.labels(name).observe(st["latency_s"])


class GroupHandle:
    """What the ingest needs of the group consumer (Faust's, in the worker; a test double
    never: integration tests run the real one). Partitions are (topic, partition) pairs."""

    def __init__(self, commit: Callable[[dict[TopicPartition, int]], Awaitable[bool]],
                 pause: Callable[[Iterable[TopicPartition]], None],
                 resume: Callable[[Iterable[TopicPartition]], None],
                 backlog: Callable[[str, int], bool] | None = None,
                 seek: Callable[[TopicPartition, int], Awaitable[None]] | None = None) -> None:
        self.commit = commit
        self.pause = pause
        self.resume = resume
        self.backlog = backlog  # records of (topic, partition) in the broker not fetched yet
        self.seek = seek  # move the fetch position of (topic, partition) to an offset
