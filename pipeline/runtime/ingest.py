"""The worker's batch path: fetch -> align -> core -> plan -> write -> commit, in stages.

```
 Faust consumer thread      event loop                       core thread      encode thread
 fetch (aiokafka) ──> offer ──> Aligner ──> assemble batch N+1
                                                 └─────────────> core N ──────> plan N-1 (Parquet)
                                 write N-2 (PUTs ‖ produces) <───────────────────────┘
                                 commit in batch order, once a batch's outputs are durable
```
- Whole fetches per partition come from Faust's consumer (no per-event Stream objects).
  The `Aligner` merges a partition's sensor and GPS records by event time.
- A batch is formed when `batch_size` records are ready, when the first ready record has
  waited `batch_wait_s`, and never before the previous batch left the core: under load
  batches grow by themselves, at low rates they stay small and fast.
- The core (decode, clean, handlers, rules) runs in one thread, batch after batch, so
  handler state sees batches in order. Its result becomes an `OutputPlan` (Parquet and
  manifests included) in a second thread; the event loop writes the plan: objects PUT
  concurrently (bounded), routed events, dead letters and state changes produced and
  acknowledged (idempotent producer, acks=all).
- Offsets are committed in batch order, each only after everything derived from it is
  durable (the delivery invariant). At most `max_inflight_batches` batches are between
  assembly and commit: a slow store slows consumption, and buffers that fill pause their
  partitions' fetching.
- Revoke: no new batch starts; in-flight batches finish (up to `revoke_timeout_s`) and are
  committed; buffered records of the revoked partitions are dropped (the next owner reads
  them from the committed offset). Assign: handler state of new partitions is restored
  from the changelog before their first batch.
- Silent vehicles: a vehicle that sent nothing for `vehicle_idle_timeout_s` of processing
  time gets an idle signal (a batch of no readings, `silent` set) through the same stages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from pipeline.core.batch import DeadLetter, EventBatch, RawRecord
from pipeline.core.process import BatchResult, Core
from pipeline.runtime import metrics
from pipeline.runtime.align import Aligner
from pipeline.runtime.plan import (
    OutputPlan,
    RouteDelivery,
    SegmentDone,
    dead_letter_topic,
    failure_messages,
    plan_messages,
    plan_objects,
)
from pipeline.runtime.settings import Settings
from pipeline.runtime.sinks import Backoff, ObjectStoreSink, OutMessage, PutObject, TopicSink

log = logging.getLogger("pipeline.worker")

TopicPartition = tuple[str, int]


def warm_up(nice: int = 0) -> None:
    """Runs once in the encoder and decoder processes so that their imports happen before the
    first batch; `nice` lowers the process's CPU priority by that much."""
    if nice:
        os.nice(nice)
    import pipeline.core.events  # noqa: F401
    import pipeline.runtime.plan  # noqa: F401


def decode_job(records: list[RawRecord], max_frame_bytes: int) -> tuple[Any, list[DeadLetter], float]:
    """Decoder process: a batch's frames into columns (what `Core.process` would do first)."""
    from pipeline.core.events import decode_records

    started = time.perf_counter()
    readings, dead_letters = decode_records(records, max_frame_bytes=max_frame_bytes)
    return readings, dead_letters, time.perf_counter() - started


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


class BatchIngest:
    """State of one worker's batch path; see the module docstring."""

    def __init__(self, settings: Settings, core: Core) -> None:
        self.settings = settings
        self.core = core
        self.topics = settings.ingest_topics
        self.aligner = Aligner(self.topics, max_wait_ms=settings.align_max_wait_ms,
                               max_buffered=settings.align_max_buffered)
        self.consumer: GroupHandle | None = None
        self.store = ObjectStoreSink(settings.minio_client(), settings.s3_bucket, Backoff(0.2, 5.0),
                                     on_retry=self._store_failed)
        self.producer: Any = None
        self.sink: TopicSink | None = None
        self.webhooks: Any = None
        self._core_pool = ThreadPoolExecutor(1, thread_name_prefix="core")
        # Output plans (Parquet above all) are encoded in a process of their own by default:
        # in a second thread of this one they fought the core for the GIL, and both ran
        # 1.4-2.9x slower than alone (scripts/bench).
        self._encode_pool: Executor = (
            ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            if settings.plan_in_process else ThreadPoolExecutor(1, thread_name_prefix="encode"))
        # Frames are decoded in a process of their own, one batch ahead of the core: decoding
        # was 40 % of the core thread's time, and the core thread is what bounds the worker.
        self._decode_pool: ProcessPoolExecutor | None = (
            ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            if settings.decode_in_process else None)
        self._inflight: deque[Batch] = deque()
        self._slots = asyncio.Semaphore(settings.max_inflight_batches)
        self._wakeup = asyncio.Event()
        self._started = asyncio.Event()  # a batch was added to `_inflight`
        self._ready: deque[RawRecord] = deque()
        self._ready_since: float | None = None
        self._accepting = False  # partitions assigned and no revoke in progress
        self._stopping = False
        self._numbers = 0
        self._last_core: Batch | None = None
        self._paused: set[TopicPartition] = set()
        self._to_commit: dict[TopicPartition, int] = {}
        self._delivered: dict[TopicPartition, int] = {}  # highest record time handed to the core
        self._resume: dict[TopicPartition, int] = {}  # where revoked partitions stopped
        self._seeking: dict[TopicPartition, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.on_crash: Callable[[BaseException], None] | None = None
        self._last_seen: dict[bytes, tuple[float, RawRecord]] = {}  # VIN -> (monotonic s, last frame)
        self._silenced: set[bytes] = set()
        self._next_silent_check = 0.0
        self._evicted_seen = 0
        self._next_eviction_warning = 0.0
        self.state: Any = None
        self._restoring: asyncio.Task[None] | None = None  # the state read started at assignment
        if core.handlers is not None:
            from pipeline.runtime.state_sync import StateChangelog

            self.state = StateChangelog(settings, core.handlers.state_store)
        self.rules_watcher: Any = None
        self._next_rules_poll = 0.0
        if core.router is not None:
            from pipeline.core.rules import RulesWatcher

            def rejected(message: str) -> None:
                metrics.RELOADS.labels("rules", "rejected").inc()

            def accepted(ruleset: Any) -> None:
                assert core.router is not None
                from pipeline.runtime.topics import (
                    create_topics_now,  # new routes' topics, as at start
                )

                create_topics_now(settings, core.router.ruleset.topics_added(ruleset))
                core.router.update(ruleset)
                metrics.RELOADS.labels("rules", "ok").inc()
                log.info("rules reloaded: version %s", ruleset.digest[:12])

            self.rules_watcher = RulesWatcher(settings.rules_dir / "routes", accepted,
                                              initial=core.router.ruleset, on_error=rejected)

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self, consumer: GroupHandle) -> None:
        """Start the producer and the assembler and committer tasks."""
        from aiokafka import AIOKafkaProducer

        self.consumer = consumer
        self.aligner.backlog = consumer.backlog
        if self.producer is None:
            self.producer = AIOKafkaProducer(
                **self.settings.kafka_client_kwargs(), enable_idempotence=True, acks="all",
                linger_ms=5, max_batch_size=1 << 20, max_request_size=8 << 20)
            await self.producer.start()
            self.sink = TopicSink(self.producer, Backoff(0.2, 5.0))
        for pool in (self._encode_pool, self._decode_pool):
            if isinstance(pool, ProcessPoolExecutor):  # start it (imports) before the first batch
                nice = self.settings.encoder_nice if pool is self._encode_pool else 0
                await asyncio.get_running_loop().run_in_executor(pool, warm_up, nice)
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._assemble(), name="batch assembler"),
                           asyncio.create_task(self._commit_loop(), name="committer")]
            for task in self._tasks:
                task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """The assembler and the committer run for the worker's life: if one of them fails,
        the worker would keep fetching and never process or commit again. Say so and crash
        (`on_crash`: the Faust app stops, the process exits, a supervisor restarts it and the
        group hands its partitions on), rather than hang with a growing lag."""
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        if exc is None:
            return
        log.critical("ingest %s failed; the worker stops", task.get_name(), exc_info=exc)
        if self.on_crash is not None:
            self.on_crash(exc)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Finish what is in flight (up to `timeout_s`), commit it, stop the producer."""
        self._stopping = True
        self._accepting = False
        self._wakeup.set()
        drained = await self._drain(timeout_s)
        if self._restoring is not None:
            self._restoring.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
        self._core_pool.shutdown(wait=True)
        self._encode_pool.shutdown(wait=True)
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=True)
        log.info("ingest stopped (%s)", "all in-flight batches committed" if drained else
                 "in-flight batches left uncommitted: the next owner replays them")

    # --- input from the consumer ----------------------------------------------------------------
    def offer(self, fetched: Mapping[TopicPartition, Sequence[Any]]) -> int:
        """Take one fetch (aiokafka ConsumerRecords per partition) into the aligner; returns
        the records accepted. Called by the consumer between fetches, on the event loop."""
        if not self._accepting:
            return 0
        accepted = 0
        for (topic, partition), recs in fetched.items():
            raws = [RawRecord(topic, partition, r.offset, r.key, r.value, r.headers, r.timestamp or 0)
                    for r in recs]
            accepted += self.aligner.add(topic, partition, raws)
        if self.aligner.gaps:
            self._seek_back()
        if accepted and len(self._ready) < self.settings.batch_size:
            # Release now, so that a record's wait for its batch (`batch_wait_s`) counts from
            # when it became ready, not from when the assembler next looked (after the core
            # started the previous batch: every batch then waited `batch_wait_s` more).
            self._release()
        full = self.aligner.over_limit() - self._paused
        if full and self.consumer is not None:
            self.consumer.pause(full)
            self._paused |= full
        if accepted:
            self._wakeup.set()
        return accepted

    def _seek_back(self) -> None:
        """Ask the consumer to fetch again from where this worker stopped (one seek at a time
        per partition; records past the gap are refused until the seek lands)."""
        if self.consumer is None or self.consumer.seek is None:
            return
        for tp, offset in self.aligner.gaps.items():
            if self._seeking.get(tp) == offset:
                continue
            self._seeking[tp] = offset
            log.info("%s[%d]: fetch resumed past offset %d, which this worker had not processed; "
                     "seeking back", tp[0], tp[1], offset)
            asyncio.ensure_future(self._seek(tp, offset))

    async def _seek(self, tp: TopicPartition, offset: int) -> None:
        assert self.consumer is not None and self.consumer.seek is not None
        try:
            await self.consumer.seek(tp, offset)
        except Exception as exc:  # not assigned any more: the next owner reads from the commit
            log.warning("%s[%d]: seek to %d failed (%s: %s)", tp[0], tp[1], offset, type(exc).__name__, exc)
        finally:
            self._seeking.pop(tp, None)

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """The group gave this worker these partitions (both topics of each, co-partitioned).
        Partitions it held until this rebalance resume exactly where it stopped."""
        tps = set(partitions)
        mine = {p for t, p in tps if t in self.topics}
        resume = {tp: o for tp, o in self._resume.items() if tp in tps}
        self._resume = {}
        self.aligner.assign(mine, resume)
        self._paused.clear()
        self._accepting = not self._stopping
        self._wakeup.set()
        if mine:
            log.info("assigned partitions %s of %s", sorted(mine), ", ".join(self.topics))
        self._start_restore(mine)

    def _start_restore(self, partitions: set[int]) -> None:
        """Read the handler state of newly assigned partitions now, all at once, while the
        first fetches arrive (a batch waits for it only if it is not done by then)."""
        if self.state is None or not partitions - self.state.restored:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a direct call): each batch restores what it needs
            return
        self._restoring = loop.create_task(self._restore_partitions(set(partitions)), name="restore state")

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions are taken away: finish and commit in-flight batches, drop the rest."""
        self._accepting = False
        gone = {p for t, p in partitions if t in self.topics}
        drained = await self._drain(self.settings.revoke_timeout_s)
        if not drained:
            log.warning("revoke: in-flight batches still not durable after %.0f s; their offsets stay "
                        "uncommitted and the partitions' next owner replays them", self.settings.revoke_timeout_s)
        self._resume = self._resume_offsets(gone)
        dropped = self.aligner.revoke(gone)
        kept = [r for r in self._ready if r.partition not in gone]
        dropped += len(self._ready) - len(kept)
        self._ready = deque(kept)
        self._paused = {tp for tp in self._paused if tp[1] not in gone}
        self._delivered = {tp: t for tp, t in self._delivered.items() if tp[1] not in gone}
        if self._last_core is not None:
            await self._last_core.core_done.wait()
        if self._restoring is not None and not self._restoring.done():
            self._restoring.cancel()  # for partitions that may be among those going
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._restoring
        if self.state is not None:
            self.state.drop(gone)
        for vin in [v for v, (_, r) in self._last_seen.items() if r.partition in gone]:
            del self._last_seen[vin]
            self._silenced.discard(vin)
        if gone:
            log.info("revoked partitions %s: %d buffered records left for the next owner", sorted(gone), dropped)

    def _resume_offsets(self, partitions: set[int]) -> dict[TopicPartition, int]:
        """Per topic-partition being revoked, the first offset this worker has not made durable:
        from batches still in flight (a drain that timed out), records released but not yet in
        a batch, and the aligner's buffers. If the rebalance gives the partition straight back,
        the worker resumes exactly there, whatever the consumer's position or commit."""
        out = self.aligner.resume_offsets(partitions)

        def lower(tp: TopicPartition, offset: int) -> None:
            if offset < out.get(tp, offset + 1):
                out[tp] = offset

        for r in self._ready:
            if r.partition in partitions:
                lower((r.topic, r.partition), r.offset)
        for batch in self._inflight:
            if batch.silent:
                continue
            for r in batch.records:
                if r.partition in partitions:
                    lower((r.topic, r.partition), r.offset)
        return out

    # --- stages ---------------------------------------------------------------------------------
    async def _assemble(self) -> None:
        """Form batches from aligned records and start them, at most K in flight."""
        wait = metrics.INGEST_WAIT
        while True:
            t0 = time.perf_counter()
            await self._slots.acquire()
            t1 = time.perf_counter()
            # The core takes batches in order, one at a time: form the next one only when it is
            # free, so that it holds everything that arrived meanwhile (batches grow with load).
            # With the decoder process, when the core starts the previous one: the next batch is
            # decoded while the core works, and no more than one waits decoded.
            if self._last_core is not None:
                if self._decode_pool is not None:
                    await self._last_core.core_started.wait()
                else:
                    await self._last_core.core_done.wait()
            t2 = time.perf_counter()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            wait.labels("slots").inc(t1 - t0)
            wait.labels("core").inc(t2 - t1)
            wait.labels("records").inc(time.perf_counter() - t2)
            await self._restore_state(batch.records)
            if self._decode_pool is not None and not batch.silent:
                self._submit_decode(batch)
            batch.done = asyncio.get_running_loop().create_future()
            self._inflight.append(batch)
            self._last_core = batch
            self._started.set()
            asyncio.ensure_future(self._run(batch))

    async def _next_batch(self) -> Batch:
        """Wait until a batch is due: `batch_size` ready, or the oldest ready record waited
        `batch_wait_s`, or an idle signal is due."""
        settings = self.settings
        while True:
            silent = self._due_silent()
            if silent is not None:
                return silent
            if self._accepting:
                self._release()
            n = len(self._ready)
            now = time.monotonic()
            if n and (n >= settings.batch_size or self._stopping
                      or now - (self._ready_since or now) >= settings.batch_wait_s):
                records = [self._ready.popleft() for _ in range(min(n, settings.batch_size))]
                self._ready_since = now if self._ready else None
                self._numbers += 1
                delivered = self._delivered
                for r in records:
                    key = (r.topic, r.partition)
                    if r.timestamp_ms > delivered.get(key, -1):
                        delivered[key] = r.timestamp_ms
                return Batch(self._numbers, records, self.aligner.delivered_watermarks(delivered))
            if self._stopping and not self._ready:
                raise asyncio.CancelledError("ingest stopping")
            timeout = self._wait_time(now)
            self._wakeup.clear()
            # asyncio.wait, not wait_for: wait_for of Python 3.11 can swallow a cancellation
            # that arrives as its timeout fires, and the stop would then wait for ever
            waiter = asyncio.ensure_future(self._wakeup.wait())
            try:
                await asyncio.wait({waiter}, timeout=timeout)
            finally:
                waiter.cancel()

    def _release(self) -> None:
        forced = self.aligner.forced
        released = self.aligner.release(now_ms(), limit=self.settings.batch_size)
        if self.aligner.forced > forced:
            metrics.ALIGN_IDLE_RELEASES.inc(self.aligner.forced - forced)
        if released:
            if not self._ready:
                self._ready_since = time.monotonic()
            self._ready.extend(released)
        if self._paused:
            resumed = {tp for tp in self._paused
                       if self.aligner.buffered(tp[0], tp[1]) < self.aligner.max_buffered // 2}
            if resumed and self.consumer is not None:
                self.consumer.resume(resumed)
                self._paused -= resumed

    def _wait_time(self, now: float) -> float:
        waits = [1.0]
        if self._ready_since is not None and self._ready:
            waits.append(self._ready_since + self.settings.batch_wait_s - now)
        deadline = self.aligner.next_deadline()
        if deadline is not None:
            waits.append((deadline - now_ms()) / 1000)
        return max(0.005, min(waits))

    async def _restore_state(self, records: list[RawRecord]) -> None:
        """Handler state of the batch's partitions, read from the changelog before their first
        batch (usually done already: the read starts at assignment)."""
        if self.state is None or not records:
            return
        partitions = {r.partition for r in records}
        if not partitions - self.state.restored:
            return
        pending = self._restoring
        if pending is not None and not pending.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(pending)
        await self._restore_partitions(partitions)

    async def _restore_partitions(self, partitions: set[int]) -> None:
        """Read these partitions' handler state from the changelog. The broker may be
        unreachable (a restart, an outage): try again until it answers, since a batch run
        without its vehicles' state would start their trips afresh."""
        assert self.state is not None
        delay = 0.5
        while partitions - self.state.restored:
            try:
                await self.state.restore(partitions)
            except Exception as exc:  # noqa: BLE001 - any broker error: wait and ask again
                log.warning("handler state of partitions %s not restored (%s: %s); retrying in %.1f s",
                            sorted(partitions - self.state.restored), type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _run(self, batch: Batch) -> None:
        """One batch through core, plan and write; resolves `batch.done` with its offsets."""
        loop = asyncio.get_running_loop()
        assert batch.done is not None
        try:
            decoded = None
            if batch.decoded is not None:
                try:
                    decoded = await batch.decoded
                except Exception as exc:  # noqa: BLE001 - whatever went wrong there, the core decodes it
                    log.warning("decoder process failed on batch %d (%s: %s); the core decodes it",
                                batch.number, type(exc).__name__, exc)
                    if isinstance(exc, BrokenProcessPool) and batch.decoder is self._decode_pool:
                        self._restart_decoder()  # once per broken pool, not once per batch it held
            # In batch order: the assembler formed this batch only once the core had started
            # the one before, and the core's single thread takes jobs as they are submitted.
            try:
                result, to_plan, plan = await loop.run_in_executor(
                    self._core_pool, self._core_job, batch, decoded, loop)
            finally:
                batch.core_started.set()
                batch.core_done.set()
            if not batch.silent:
                self._note_seen(batch.records)
            # the objects are encoded (encoder process) while the messages are produced
            objects = asyncio.ensure_future(self._plan_stage(to_plan, plan.failed_by_part, batch.silent))
            try:
                await self._write(plan, result, objects)
            finally:
                if not objects.done():
                    objects.cancel()
            batch.done.set_result(plan.offsets)
        except Exception as exc:
            batch.done.set_exception(exc)

    def _submit_decode(self, batch: Batch) -> None:
        """Hand the batch to the decoder process; a pool found broken (its process died while
        idle) is replaced first, and if even that fails the core decodes the batch itself."""
        for _ in range(2):
            assert self._decode_pool is not None
            try:
                batch.decoded = asyncio.get_running_loop().run_in_executor(  # type: ignore[assignment]
                    self._decode_pool, decode_job, batch.records, self.core.max_frame_bytes)
            except (BrokenProcessPool, RuntimeError) as exc:
                log.warning("decoder process unavailable (%s: %s); starting a new one", type(exc).__name__, exc)
                self._restart_decoder()
                continue
            batch.decoder = self._decode_pool
            return

    def _restart_decoder(self) -> None:
        """A new decoder process for a broken one (its pending batches fail and are decoded by
        the core; none is cancelled, which would leave its batch unresolved)."""
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=False)
            self._decode_pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    def _core_job(self, batch: Batch, decoded: tuple[Any, list[DeadLetter], float] | None = None,
                  loop: asyncio.AbstractEventLoop | None = None) -> tuple[BatchResult, BatchResult, OutputPlan]:
        """Core thread: reloads, the core, metrics, the batch's handler-state changes and the
        message part of its plan (the objects are left to the encoder)."""
        if loop is not None:  # the assembler may form the next batch now
            loop.call_soon_threadsafe(batch.core_started.set)
        self._poll_reloads()
        records = batch.records
        if self.state is not None:
            self.state.note(records)
        started = time.perf_counter()
        try:
            if batch.silent:
                result = self.core.silent(records)
            else:
                result = self.core.process(records, watermarks=batch.watermarks, predecoded=decoded)
        except Exception as exc:  # the core failed as a whole: dead-letter the batch
            log.exception("core failed on %d records %s..%s", len(records), records[0].where, records[-1].where)
            result = failed_batch(records, exc)
        observe(result, time.perf_counter() - started, silent=batch.silent)
        self._note_evictions()
        changes = self.state.changes() if self.state is not None else []
        plan = plan_messages(result, dlq_topic=self.settings.topic_dlq, state_messages=changes, silent=batch.silent)
        if isinstance(self._encode_pool, ProcessPoolExecutor):
            return result, result.slim(), plan  # slim: what the encoder process needs, small to send
        return result, result, plan

    async def _plan_stage(self, result: BatchResult, failed_by_part: dict[TopicPartition, dict[str, int]],
                          silent: bool) -> tuple[list[PutObject], list[SegmentDone]]:
        """The objects of a core result, encoded off the core's thread (and process)."""
        loop = asyncio.get_running_loop()
        job = partial(plan_objects, silent=silent, failed_by_part=failed_by_part)
        return await loop.run_in_executor(self._encode_pool, job, result)

    async def _write(self, plan: OutputPlan, result: BatchResult,
                     objects: asyncio.Future[tuple[list[PutObject], list[SegmentDone]]]) -> None:
        """Execute a plan: produces and webhooks at once, PUTs as soon as `objects` (the plan's
        second part, still being encoded) is ready; returns when all are durable.

        Dead letters and state changes are retried until Kafka takes them; routed events go to
        each topic target under their route's `retry`, and what a target still refuses goes to
        the route's dead-letter target as failure events (as for webhooks)."""
        assert self.sink is not None
        sink = self.sink

        async def put_all() -> float | None:
            encoded, segments = await objects
            plan.objects.extend(encoded)
            plan.segments.extend(segments)
            if not plan.objects:
                return None
            return await self.store.write(plan.objects, concurrency=self.settings.put_concurrency)

        puts = asyncio.ensure_future(put_all())
        try:
            started = time.perf_counter()
            parts = [self._deliver(d) for d in plan.deliveries]
            if plan.webhooks:
                parts.append(self._deliver_webhooks(result))
            if plan.messages:
                parts.append(self._produce(plan.messages))
            failures = [m for out in await asyncio.gather(*parts) for m in out]
            if failures:
                await sink.write(failures)
            if plan.messages or plan.deliveries or failures:
                metrics.SINK_SECONDS.labels("kafka").observe(time.perf_counter() - started)
            for route, n in plan.routed.items():
                metrics.EVENTS_ROUTED.labels(route).inc(n)
            for (route, reason), n in plan.route_failures.items():
                metrics.DEAD_LETTERS.labels(f"route:{route}", reason).inc(n)
            for topic, partition, first, last in plan.spans:
                log.info("%s[%d] offsets %d..%d routed", topic, partition, first, last)
            seconds = await puts
            if seconds is not None:
                metrics.SINK_SECONDS.labels("s3").observe(seconds)
                metrics.BACKPRESSURE.set(0)
        finally:
            if not puts.done():
                puts.cancel()
        for obj in plan.objects:
            metrics.OBJECTS_WRITTEN.labels(obj.key.split("/", 1)[0]).inc()
        wall = time.time()
        for seg in plan.segments:
            metrics.SEGMENTS_FLUSHED.inc()
            metrics.E2E_LATENCY.observe(max(0.0, wall - seg.oldest_ms / 1000))
            log.info("%s[%d] offsets %d..%d flushed: %d frames, %d readings in, %d objects",
                     seg.topic, seg.partition, seg.first, seg.last, seg.frames, seg.readings, seg.objects)

    async def _produce(self, messages: list[OutMessage]) -> list[OutMessage]:
        assert self.sink is not None
        await self.sink.write(messages)
        return []

    async def _deliver(self, delivery: RouteDelivery) -> list[OutMessage]:
        """One route's events to one topic target under the route's retry; returns the failure
        events for its dead-letter target if the target refused them to the end."""
        from pipeline.core.rules.delivery import TopicDelivery, deliver

        assert self.sink is not None
        sink = self.sink

        async def send(topic: str, events: EventBatch) -> None:
            await sink.send_once(delivery.messages)

        outcome = await deliver(TopicDelivery(delivery.route, delivery.topic, delivery.events, delivery.retry,
                                              delivery.dead_letter), send)
        if outcome.failed is None or not len(outcome.failed):
            return []
        log.error("route %s: topic %s refused %d events after %d attempts (%s); they go to %s",
                  delivery.route, delivery.topic, len(outcome.failed), outcome.attempts, outcome.error,
                  delivery.dead_letter_topic)
        metrics.DEAD_LETTERS.labels(f"route:{delivery.route}", "topic_failed").inc(len(outcome.failed))
        return failure_messages(outcome.failed, delivery.dead_letter_topic)

    async def _deliver_webhooks(self, result: BatchResult) -> list[OutMessage]:
        """POST routed events to webhook targets (concurrently, each with its own retries and
        timeout); events a webhook refused after its retries go to their route's dead-letter
        target as failure events, once each."""
        from pipeline.core.rules.failures import failure_events

        if result.route_result is None or self.core.router is None:
            return []
        if self.webhooks is None:
            from pipeline.core.rules.webhook import WebhookSender

            self.webhooks = WebhookSender()
        out: list[OutMessage] = []
        for outcome in await self.webhooks.deliver(result.route_result, self.core.router.ruleset):
            if not outcome.dead_letters:
                continue
            batch = result.routed[outcome.route]
            topic = dead_letter_topic(result.route_specs.get(outcome.route), self.settings.topic_dlq)
            by_reason: dict[str, tuple[list[int], list[str]]] = {}
            for row, reason, error in outcome.dead_letters:
                rows, errors = by_reason.setdefault(reason, ([], []))
                rows.append(row)
                errors.append(f"{outcome.url}: {error}")
            for reason, (rows, errors) in by_reason.items():
                failed = failure_events(batch, np.asarray(rows, dtype=np.int64), route=outcome.route,
                                        target=f"webhook:{outcome.url}", reason=reason,
                                        attempts=outcome.attempts, error=errors)
                out.extend(failure_messages(failed, topic))
                metrics.DEAD_LETTERS.labels(f"route:{outcome.route}", reason).inc(len(rows))
        return out

    async def _commit_loop(self) -> None:
        """Commit offsets in batch order as batches become durable; a batch that failed outside
        the dead-letter path stops the worker (its offsets must never be committed)."""
        while True:
            if not self._inflight:
                self._started.clear()
                await self._started.wait()
                continue
            head = self._inflight[0]
            assert head.done is not None
            try:
                offsets = await head.done
            except Exception:
                log.critical("batch failed outside the dead-letter path; stopping the worker", exc_info=True)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            self._inflight.popleft()
            self._slots.release()
            for tp, off in offsets.items():
                if off > self._to_commit.get(tp, -1):
                    self._to_commit[tp] = off
            if self._inflight and self._inflight[0].done is not None and self._inflight[0].done.done():
                continue  # more done: commit them together
            await self._commit_now()

    async def _commit_now(self) -> None:
        if not self._to_commit or self.consumer is None:
            return
        offsets, self._to_commit = self._to_commit, {}
        try:
            await self.consumer.commit(offsets)
        except Exception as exc:  # a rebalance moved the partitions: their new owner replays
            log.warning("commit of %s failed (%s: %s); the partitions' next owner replays from the last "
                        "commit", offsets, type(exc).__name__, exc)

    async def _drain(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight and it is committed; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._inflight or self._to_commit:
            if time.monotonic() >= deadline:
                return False
            if not self._inflight and self._to_commit:
                await self._commit_now()
                continue
            await asyncio.sleep(0.01)
        return True

    def _note_evictions(self) -> None:
        """Count vehicles whose cleaning history was forgotten for room (`state.max_vehicles` in
        rules/cleaning.yaml): their next frames are judged without history (no duplicate,
        rate-of-change or stuck check across the gap). Warn at most once a minute."""
        state = self.core.cleaner.state
        evicted = state.evicted
        if evicted <= self._evicted_seen:
            return
        metrics.CLEAN_HISTORY_EVICTED.inc(evicted - self._evicted_seen)
        now = time.monotonic()
        if now >= self._next_eviction_warning:
            self._next_eviction_warning = now + 60.0
            log.warning("cleaning history of %d vehicle(s) forgotten so far: this worker sees more than "
                        "state.max_vehicles (%d) vehicles; raise it in cleaning.yaml (about 2.8 KB each)",
                        evicted, state.max_vehicles)
        self._evicted_seen = evicted

    # --- reloads, failures, silent vehicles -------------------------------------------------------
    def _poll_reloads(self) -> None:
        """Between batches: pick up valid rule changes (functions reload inside the runner)."""
        now = time.monotonic()
        if self.rules_watcher is not None and now >= self._next_rules_poll:
            self._next_rules_poll = now + 1.0
            self.rules_watcher.poll()

    def _store_failed(self, exc: Exception) -> None:
        metrics.SINK_RETRIES.labels("s3").inc()
        metrics.BACKPRESSURE.set(1)

    def _note_seen(self, records: list[RawRecord]) -> None:
        """Each vehicle's last frame and when it came (processing time), for idle signals. The
        frame is kept without its value and headers (an idle signal needs where it was and when):
        whole, they held 4 KB per vehicle, 260 MB for a worker's 65,000 vehicles."""
        seen = time.monotonic()
        last_seen, silenced = self._last_seen, self._silenced
        for r in records:
            if r.key:
                last_seen[r.key] = (seen, r.without_payload())
        if silenced:
            silenced.difference_update(r.key for r in records)

    def _due_silent(self) -> Batch | None:
        """An idle-signal batch for vehicles silent for `vehicle_idle_timeout_s`, if any."""
        if self.core.handlers is None or not self._accepting or not self._last_seen:
            return None
        timeout = self.settings.vehicle_idle_timeout_s
        now = time.monotonic()
        if now < self._next_silent_check:
            return None
        self._next_silent_check = now + min(1.0, timeout / 4)
        due = [(vin, rec) for vin, (seen, rec) in self._last_seen.items()
               if now - seen >= timeout and vin not in self._silenced]
        if not due:
            return None
        due.sort(key=lambda item: (item[1].partition, item[1].topic, item[1].offset))
        for vin, _ in due:
            self._silenced.add(vin)
        self._numbers += 1
        log.info("%d vehicle(s) silent for %.0f s: idle signal to the handlers", len(due), timeout)
        return Batch(self._numbers, [rec for _, rec in due], silent=True)
