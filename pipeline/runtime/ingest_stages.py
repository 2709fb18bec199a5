"""The ingest's stages between the consumer and the commit: batches formed and run.

- Forming batches (event loop): records released from the aligner wait in `_ready` until
  `batch_size` are there, the oldest waited `batch_wait_s`, or an idle signal is due; at
  most `max_inflight_batches` are between assembly and commit, and the next one forms only
  once the core has taken (with the decoder process: started) the previous one. Handler
  state of a batch's partitions is restored first.
- One batch through its stages (`_run`): frames decoded in the decoder process one batch
  ahead (supervised: a broken pool is replaced and the core decodes what it lost), the core
  in its thread (`_core_job`: reloads, core, metrics, state changes, the plan's messages),
  the plan's objects in the encoder (`_plan_stage`), then the write (`PlanWriter`).
- Silent vehicles and forgotten cleaning history, noted between batches.

`BatchIngest` (`pipeline.runtime.ingest`) inherits these and sets the state they use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import time
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any

from pipeline.core.batch import DeadLetter, RawRecord
from pipeline.core.process import BatchResult
from pipeline.runtime import metrics
from pipeline.runtime.align import Aligner
from pipeline.runtime.ingest_batch import (
    Batch,
    GroupHandle,
    TopicPartition,
    failed_batch,
    now_ms,
    observe,
)
from pipeline.runtime.ingest_procs import decode_job
from pipeline.runtime.ingest_write import PlanWriter
from pipeline.runtime.plan import OutputPlan, SegmentDone, plan_messages, plan_objects
from pipeline.runtime.sinks import PutObject

log = logging.getLogger("pipeline.worker")


class BatchStages(PlanWriter):
    """Batch assembly and the stages of one batch, for `BatchIngest` (whose `__init__` sets
    the state below)."""

    aligner: Aligner
    consumer: GroupHandle | None
    state: Any
    rules_watcher: Any
    _core_pool: ThreadPoolExecutor
    _encode_pool: Executor
    _decode_pool: ProcessPoolExecutor | None
    _inflight: deque[Batch]
    _slots: asyncio.Semaphore
    _wakeup: asyncio.Event
    _started: asyncio.Event
    _ready: deque[RawRecord]
    _ready_since: float | None
    _accepting: bool
    _stopping: bool
    _numbers: int
    _last_core: Batch | None
    _paused: set[TopicPartition]
    _delivered: dict[TopicPartition, int]
    _restoring: asyncio.Task[None] | None
    _next_rules_poll: float
    _last_seen: dict[bytes, tuple[float, RawRecord]]
    _silenced: set[bytes]
    _next_silent_check: float
    _evicted_seen: int
    _next_eviction_warning: float

    # --- forming batches --------------------------------------------------------------------------
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

    # --- one batch through core, plan and write ------------------------------------------------
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

    # --- reloads, silent vehicles -----------------------------------------------------------------
    def _poll_reloads(self) -> None:
        """Between batches: pick up valid rule changes (functions reload inside the runner)."""
        now = time.monotonic()
        if self.rules_watcher is not None and now >= self._next_rules_poll:
            self._next_rules_poll = now + 1.0
            self.rules_watcher.poll()

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
