"""The ingest's long-running tasks under failure, and the worker's interpreter settings: a
changelog that does not answer is asked again (not given up on, which once left a worker
fetching and never processing), a task that fails crashes the worker instead of leaving it
hanging, and the garbage collector is tuned as documented. No services needed."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.core.batch import RawRecord
from pipeline.core.process import Core
from pipeline.runtime.ingest import BatchIngest
from pipeline.runtime.settings import Settings


def ingest() -> BatchIngest:
    settings = Settings(plan_in_process=False)  # type: ignore[call-arg]
    return BatchIngest(settings, Core.from_settings(Settings(handlers_enabled=False)))  # type: ignore[call-arg]


class FlakyChangelog:
    """Handler-state changelog whose broker is down for the first `failures` reads."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.restored: set[int] = set()
        self.calls = 0

    async def restore(self, partitions: Any) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("broker not reachable")
        self.restored.update(partitions)
        return 0


def record(partition: int) -> RawRecord:
    return RawRecord("vehicle.sensor.raw", partition, 0, b"VIN", b"{}", [], 0)


def test_state_restore_is_retried_until_the_changelog_answers(monkeypatch: Any) -> None:
    it = ingest()
    it.state = FlakyChangelog(failures=2)
    slept: list[float] = []

    async def no_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("pipeline.runtime.ingest_stages.asyncio.sleep", no_sleep)
    asyncio.run(it._restore_state([record(1), record(3)]))  # noqa: SLF001
    assert it.state.restored == {1, 3}
    assert it.state.calls == 3
    assert slept == [0.5, 1.0]  # backs off between attempts


def test_a_failed_ingest_task_crashes_the_worker() -> None:
    it = ingest()
    crashed: list[BaseException] = []
    it.on_crash = crashed.append

    async def main() -> None:
        async def assemble() -> None:
            raise RuntimeError("assembler died")

        task = asyncio.ensure_future(assemble())
        task.add_done_callback(it._task_done)  # noqa: SLF001 - as start() wires its tasks
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(main())
    assert len(crashed) == 1 and str(crashed[0]) == "assembler died"


def test_a_stopping_ingest_does_not_crash_on_its_cancelled_tasks() -> None:
    it = ingest()
    crashed: list[BaseException] = []
    it.on_crash = crashed.append

    async def main() -> None:
        task = asyncio.ensure_future(asyncio.sleep(10))
        task.add_done_callback(it._task_done)  # noqa: SLF001
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(main())
    assert crashed == []


def test_tune_gc_raises_the_young_threshold_and_freezes_start_up_objects() -> None:
    import gc

    from pipeline.runtime.app import tune_gc

    before = gc.get_threshold()
    try:
        tune_gc(Settings(gc_gen0_threshold=12_345))  # type: ignore[call-arg]
        assert gc.get_threshold()[0] == 12_345
        assert gc.get_freeze_count() > 0
        gc.unfreeze()
        tune_gc(Settings(gc_gen0_threshold=0))  # type: ignore[call-arg]
        assert gc.get_threshold()[0] == 12_345  # 0: left as it was
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_frames_decoded_in_the_decoder_process_give_the_core_the_same_result() -> None:
    """The runtime decodes a batch in another process, one batch ahead of the core; what
    crosses the process boundary must give the same readings, dead letters and outputs."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.runtime.ingest_procs import decode_job
    from tests.unit.runtime.test_plan import fleet_records

    records = fleet_records(vehicles=12, seconds=300)
    records.append(RawRecord("vehicle.sensor.raw", 0, 10_000, b"VIN", b"{not json", [], 0))  # a dead letter
    settings = Settings()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        predecoded = pool.submit(decode_job, records, settings.max_frame_bytes).result()
    here = Core.from_settings(settings).process(records)
    there = Core.from_settings(settings).process(records, predecoded=predecoded)
    assert there.timings["decode"] == predecoded[2]
    assert len(here.clean) == len(there.clean) > 0
    assert [(d.record.offset, d.reason) for d in here.dead_letters] == \
        [(d.record.offset, d.reason) for d in there.dead_letters]
    assert any(d.stage == "decode" and d.record.offset == 10_000 for d in there.dead_letters)
    # the output plan finds a dead letter's record by identity (manifests count them so)
    assert {id(d.record) for d in there.dead_letters} <= {id(r) for r in records}
    from pipeline.runtime.plan import plan_outputs

    def dead_counts(result: Any) -> list[dict[str, int]]:
        import orjson

        return [orjson.loads(o.body)["dead_letters"] for o in plan_outputs(result.slim(), dlq_topic="dlq").objects
                if o.key.startswith("manifests/")]

    assert dead_counts(there) == dead_counts(here) and any(dead_counts(there))
    assert there.clean.value.tolist() == here.clean.value.tolist()
    assert sorted(there.events.attrs["id"].tolist()) == sorted(here.events.attrs["id"].tolist())
    assert len(there.events) == len(here.events)


class CountingChangelog(FlakyChangelog):
    """A changelog that answers, slowly, and counts for which partitions it was read."""

    def __init__(self) -> None:
        super().__init__(failures=0)
        self.reads: list[set[int]] = []

    async def restore(self, partitions: Any) -> int:
        self.reads.append(set(partitions))
        await asyncio.sleep(0.05)
        return await super().restore(partitions)


def test_handler_state_is_read_at_assignment_not_at_the_first_batch() -> None:
    """All assigned partitions are read at once when the group assigns them; the first batch
    waits for that read instead of starting one per set of partitions it happens to hold (at
    a worker's start that cost a second or more before the first batch)."""
    it = ingest()
    it.state = CountingChangelog()

    async def scenario() -> None:
        it.assigned([("vehicle.sensor.raw", p) for p in (0, 1, 2)] + [("vehicle.gps.raw", p) for p in (0, 1, 2)])
        assert it._restoring is not None and not it._restoring.done()  # noqa: SLF001 - started, not awaited
        await it._restore_state([record(1)])  # noqa: SLF001 - a batch that came before the read ended
        assert it.state.restored == {0, 1, 2}
        await it._restore_state([record(0), record(2)])  # noqa: SLF001

    asyncio.run(scenario())
    assert it.state.reads == [{0, 1, 2}]  # one read, all partitions


def test_a_revoke_stops_a_state_read_in_progress() -> None:
    it = ingest()
    it.state = CountingChangelog()
    dropped: list[set[int]] = []
    it.state.drop = lambda parts: dropped.append(set(parts))  # type: ignore[attr-defined]

    async def scenario() -> None:
        it.assigned([("vehicle.sensor.raw", 0), ("vehicle.gps.raw", 0)])
        task = it._restoring  # noqa: SLF001
        await it.revoked([("vehicle.sensor.raw", 0), ("vehicle.gps.raw", 0)])
        assert task is not None and task.cancelled()

    asyncio.run(scenario())
    assert it.state.restored == set() and dropped == [{0}]


def test_records_cross_to_the_decoder_and_encoder_processes_unchanged() -> None:
    import pickle

    r = RawRecord("vehicle.gps.raw", 4, 17, b"VIN", b'{"a":1}', (("ce_type", b"x"),), 1_700_000_000_123)
    back = pickle.loads(pickle.dumps([r, r], protocol=pickle.HIGHEST_PROTOCOL))
    assert back == [r, r] and back[0].where == r.where


def test_fetches_wait_for_data_as_configured(monkeypatch: Any) -> None:
    """Faust sets no fetch minimum: the fetch thread sets the worker's own on the consumer
    before it starts (aiokafka reads them when it builds its fetcher)."""
    from types import SimpleNamespace

    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from pipeline.runtime.consumer import BatchConsumerThread

    made = SimpleNamespace(_fetch_min_bytes=1, _fetch_max_wait_ms=1500)
    monkeypatch.setattr(AIOKafkaConsumerThread, "_create_worker_consumer", lambda self, transport: made)
    thread = BatchConsumerThread.__new__(BatchConsumerThread)
    settings = Settings(fetch_min_bytes=131072, fetch_max_wait_ms=40)  # type: ignore[call-arg]
    thread.consumer = SimpleNamespace(ingest=SimpleNamespace(settings=settings))  # type: ignore[assignment]
    assert thread._create_worker_consumer(None) is made  # noqa: SLF001
    assert (made._fetch_min_bytes, made._fetch_max_wait_ms) == (131072, 40)


def fetched(topic: str, partition: int, offsets: range, ts: int) -> list[Any]:
    from types import SimpleNamespace

    return [SimpleNamespace(offset=o, key=b"VIN", value=b"{}", headers=[], timestamp=ts + o) for o in offsets]


def test_a_batch_waits_batch_wait_s_from_when_its_records_were_ready(monkeypatch: Any) -> None:
    """Records are released from the aligner as they arrive, so their wait for a batch counts
    from then: when the core frees up after `batch_wait_s`, the batch forms at once. (They
    used to be released only when the assembler next looked, after the core had started the
    previous batch, and every batch then waited `batch_wait_s` more.)"""
    import time
    from types import SimpleNamespace

    import pipeline.runtime.ingest_stages as stages_module

    clock = [1000.0]  # the ingest's clock only (the event loop keeps the real one)
    monkeypatch.setattr(stages_module, "time", SimpleNamespace(
        monotonic=lambda: clock[0], time=time.time, perf_counter=time.perf_counter))
    it = ingest()

    async def scenario() -> None:
        it.assigned([("vehicle.sensor.raw", 0), ("vehicle.gps.raw", 0)])
        it.offer({("vehicle.sensor.raw", 0): fetched("vehicle.sensor.raw", 0, range(3), 5_000),
                  ("vehicle.gps.raw", 0): fetched("vehicle.gps.raw", 0, range(3), 5_000)})
        clock[0] += it.settings.batch_wait_s + 0.01  # the core was busy meanwhile
        batch = await asyncio.wait_for(it._next_batch(), timeout=0.5 * it.settings.batch_wait_s)  # noqa: SLF001
        assert len(batch.records) == 6

    asyncio.run(scenario())


def test_records_ready_for_a_full_batch_stay_in_the_aligner() -> None:
    """Release in `offer` stops once a batch's worth is ready: the rest stays in the aligner,
    whose per-partition bound pauses fetching (memory stays bounded under a backlog)."""
    it = BatchIngest(Settings(plan_in_process=False, batch_size=4, align_max_buffered=10),  # type: ignore[call-arg]
                     Core.from_settings(Settings(handlers_enabled=False)))  # type: ignore[call-arg]
    paused: list[Any] = []
    it.consumer = type("Consumer", (), {"pause": lambda self, tps: paused.extend(tps),
                                        "resume": lambda self, tps: None})()  # type: ignore[assignment]

    async def scenario() -> None:
        it.assigned([("vehicle.sensor.raw", 0), ("vehicle.gps.raw", 0)])
        for start in range(0, 40, 4):
            it.offer({("vehicle.sensor.raw", 0): fetched("vehicle.sensor.raw", 0, range(start, start + 4), 0),
                      ("vehicle.gps.raw", 0): fetched("vehicle.gps.raw", 0, range(start, start + 4), 0)})

    asyncio.run(scenario())
    assert 4 <= len(it._ready) < 12  # noqa: SLF001 - one release past the batch size at most
    assert ("vehicle.sensor.raw", 0) in paused and ("vehicle.gps.raw", 0) in paused


def test_the_encoder_process_runs_at_the_configured_niceness() -> None:
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.runtime.ingest_procs import warm_up

    base = os.nice(0)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(warm_up, 7).result()
        assert pool.submit(os.nice, 0).result() == min(base + 7, 19)
    assert Settings().encoder_nice == 10  # type: ignore[call-arg]


def test_a_batch_through_the_core_and_its_plan_leaves_no_reference_cycles() -> None:
    """Everything a batch builds is freed by reference counting when the batch is done. A
    cycle (a handler view's series held a bound method of the view) once kept every batch's
    records and headers alive until the garbage collector freed tens of thousands at once, in
    50-200 ms pauses of the whole worker."""
    import gc

    from pipeline.runtime.plan import plan_outputs
    from tests.unit.runtime.test_plan import fleet_records

    core = Core.from_settings(Settings())  # type: ignore[call-arg]
    everything = fleet_records(vehicles=20, seconds=600)
    half = len(everything) // 2
    core.process(everything[:half])  # the first batch: caches, state
    records = everything[half:]
    del everything
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        result = core.process(records)
        assert len(result.clean) and len(result.events)  # the handlers ran and emitted
        plan_outputs(result.slim(), dlq_topic="dlq")
        del result
        gc.collect()
        kinds = {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not kinds & {"RawRecord", "BatchView", "SignalSeries", "Readings", "BatchResult"}, kinds


def test_forgotten_cleaning_history_is_counted_and_logged(caplog: Any) -> None:
    """A worker that sees more vehicles than the cleaner keeps history for says so: a metric
    and a warning (their next frames are judged without history)."""
    import logging

    from pipeline.runtime import metrics
    from pipeline.runtime.ingest_batch import Batch
    from tests.unit.runtime.test_plan import fleet_records

    it = ingest()
    it.core.cleaner.state.max_vehicles = 3
    records = fleet_records(vehicles=40, seconds=300)
    vins = sorted({r.key for r in records})
    first, second = set(vins[: len(vins) // 2]), set(vins[len(vins) // 2:])
    assert len(first) > 3 and len(second) > 3
    before = metrics.CLEAN_HISTORY_EVICTED._value.get()  # noqa: SLF001 - prometheus_client's value
    with caplog.at_level(logging.WARNING, logger="pipeline.worker"):
        it._core_job(Batch(1, [r for r in records if r.key in first]))  # noqa: SLF001
        it._core_job(Batch(2, [r for r in records if r.key in second]))  # noqa: SLF001
    # the batch's own vehicles are never forgotten: all of the first batch's go
    assert metrics.CLEAN_HISTORY_EVICTED._value.get() - before == len(first)  # noqa: SLF001
    assert it.core.cleaner.state.evicted == len(first)
    assert any("state.max_vehicles (3)" in m for m in caplog.messages)


def test_the_idle_signal_table_keeps_no_frame_values() -> None:
    """A vehicle's last frame is kept for its idle signal by where and when it was, not whole
    (the values held ~4 KB per vehicle of a worker's whole fleet)."""
    it = ingest()
    r = RawRecord("vehicle.gps.raw", 3, 41, b"VIN1", b'{"big": "frame"}', (("ce_id", b"x"),), 1_700_000_000_000)
    it._note_seen([r])  # noqa: SLF001
    kept = it._last_seen[b"VIN1"][1]  # noqa: SLF001
    assert (kept.topic, kept.partition, kept.offset, kept.key, kept.timestamp_ms) == \
        ("vehicle.gps.raw", 3, 41, b"VIN1", 1_700_000_000_000)
    assert kept.value is None and kept.headers == ()
