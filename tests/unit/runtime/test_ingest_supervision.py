"""The ingest's long-running tasks under failure, and the worker's interpreter settings: a
changelog that does not answer is asked again (not given up on, which once left a worker
fetching and never processing), a task that fails crashes the worker instead of leaving it
hanging, and the garbage collector is tuned as documented. No services needed."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.batch import RawRecord
from pipeline.config import Settings
from pipeline.core import Core
from pipeline.runtime.ingest import BatchIngest


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

    monkeypatch.setattr("pipeline.runtime.ingest.asyncio.sleep", no_sleep)
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

    from pipeline.runtime.ingest import decode_job
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
