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

Parts: `BatchIngest` here holds the state, the lifecycle, the consumer's side (fetches,
assignments, revokes) and the commits; it inherits the batch stages from
`pipeline.runtime.ingest_stages` and the write stage from `pipeline.runtime.ingest_write`.
`pipeline.runtime.ingest_batch` holds the `Batch` and what the parts share, and
`pipeline.runtime.ingest_procs` what the decoder and encoder processes run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from pipeline.core.batch import RawRecord
from pipeline.core.process import Core
from pipeline.runtime import metrics
from pipeline.runtime.align import Aligner
from pipeline.runtime.ingest_batch import Batch, GroupHandle, TopicPartition
from pipeline.runtime.ingest_procs import warm_up
from pipeline.runtime.ingest_stages import BatchStages
from pipeline.runtime.settings import Settings
from pipeline.runtime.sinks import Backoff, ObjectStoreSink, TopicSink

log = logging.getLogger("pipeline.worker")


class BatchIngest(BatchStages):
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

    # --- commits ---------------------------------------------------------------------------------
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
