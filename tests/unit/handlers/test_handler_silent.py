"""Watermark and silent vehicles as handlers see them: `batch.watermark`, `batch.silent`,
`silent_batch`, and which handlers the runner calls for a silent batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipeline.core.batch import RawRecord, deterministic_id
from pipeline.core.handlers import (
    HandlerContext,
    HandlerHarness,
    HandlerInput,
    handler,
    make_readings,
)
from pipeline.core.handlers.runner import HandlerRunner, silent_batch

SPEED = "Vehicle.Speed"
seen: dict[str, Any] = {}


@handler(name="looks", consumes=[SPEED], emits=["fleet.test.silence"], state=True)
def looks(batch: HandlerInput, ctx: HandlerContext) -> None:
    seen["watermark"] = None if batch.watermark is None else batch.watermark.tolist()
    seen["silent"] = batch.silent.tolist()
    seen["rows"] = len(batch.signal(SPEED))
    s = batch.silent
    if s.shape[0]:  # one event per silent vehicle, from its last frame
        ctx.emit("fleet.test.silence", time=np.zeros(s.shape[0], np.int64), origin=batch.first_record(s),
                 vehicle=s)
    else:  # and one per vehicle of an ordinary batch, from its first record
        v = batch.vehicles(SPEED)
        ctx.emit("fleet.test.silence", time=np.ones(v.shape[0], np.int64), origin=batch.first_record(v), vehicle=v)


@handler(name="stateless", consumes=[SPEED], emits=["fleet.test.stateless"])
def stateless(batch: HandlerInput, ctx: HandlerContext) -> None:
    seen["stateless_called"] = True


@handler(name="fails_on_silence", consumes=[SPEED], emits=["fleet.test.x"], state=True, retries=0)
def fails_on_silence(batch: HandlerInput, ctx: HandlerContext) -> None:
    if batch.silent.shape[0]:
        raise RuntimeError("cannot close")


BATCH = {"V1": {SPEED: ([0, 1000], [10.0, 20.0])}, "V2": {SPEED: ([0], [5.0])}}


@pytest.fixture(autouse=True)
def _clear() -> None:
    seen.clear()


def test_watermark_reaches_handlers_per_vehicle_and_is_none_when_unknown() -> None:
    h = HandlerHarness(looks)
    h.run(BATCH)
    assert seen["watermark"] is None and seen["silent"] == []
    h.run(BATCH, watermark={"V1": 5_000, "V2": 7_000})
    assert seen["watermark"] == [5_000, 7_000]
    h.close()


def test_a_watermark_of_the_wrong_length_is_refused() -> None:
    readings, records = make_readings(BATCH)
    runner = HandlerRunner(HandlerHarness(looks).registry)
    with pytest.raises(ValueError, match="watermark"):
        runner.run(readings, records, watermark=np.array([1], dtype=np.int64))
    runner.close()


def test_silent_batch_has_no_readings_and_one_frame_per_vehicle_at_its_last_record() -> None:
    records = [RawRecord("vehicle.sensor.raw", 3, 41, b"V1", b"{}", timestamp_ms=9),
               RawRecord("vehicle.gps.raw", 3, 7, b"V2", b"{}", timestamp_ms=8)]
    b = silent_batch(["V1", "V2"], records)
    assert len(b) == 0 and b.vins == ["V1", "V2"]
    assert b.frames.record.tolist() == [0, 1] and b.frames.vehicle.tolist() == [0, 1]
    assert b.frames.received_at.tolist() == [9, 8] and b.frames.n_readings.tolist() == [0, 0]
    with pytest.raises(ValueError, match="one last frame each"):
        silent_batch(["V1"], records)


def test_stateful_handlers_are_called_for_silent_vehicles_and_stateless_ones_are_not() -> None:
    h = HandlerHarness(looks, stateless)
    h.run(BATCH)
    seen.clear()
    out = h.silence(["V2"])
    h.close()
    assert seen == {"watermark": None, "silent": [0], "rows": 0}  # V2 is vehicle 0 of the silent batch
    assert out.stats["looks"].calls == 1 and out.stats["stateless"].calls == 0
    [ev] = out.events_of("fleet.test.silence")
    assert ev["subject"] == "V2" and out.records[ev["origin"]].offset == 1  # V2's frame of the first run


def test_silence_event_ids_are_deterministic_and_apart_from_the_records_other_events() -> None:
    def once() -> tuple[list[str], list[str]]:
        h = HandlerHarness(looks)
        first = h.run(BATCH)
        silent = h.silence(["V1", "V2"])
        h.close()
        return ([e["id"] for e in first.events_of()], [e["id"] for e in silent.events_of()])

    normal, silent = once()
    assert once() == (normal, silent)  # same inputs, same ids
    r = RawRecord("vehicle.sensor.raw", 0, 0, b"V1", b"{}")
    assert silent[0] == deterministic_id(r.topic, r.partition, r.offset, "looks:silent", 0)
    assert not set(silent) & set(normal)  # the same records were origins in the first run


def test_a_handler_failing_on_silence_dead_letters_the_vehicles_last_frame() -> None:
    h = HandlerHarness(fails_on_silence)
    h.run(BATCH)
    out = h.silence(["V1"])
    h.close()
    [letter] = out.dead_letters
    assert letter.stage == "handler:fails_on_silence" and letter.record.key == b"V1"


def test_a_silent_vehicle_may_not_have_readings_in_the_batch() -> None:
    readings, records = make_readings(BATCH)
    runner = HandlerRunner(HandlerHarness(looks).registry)
    with pytest.raises(ValueError, match="has readings"):
        runner.run(readings, records, silent=np.array([1], dtype=np.int64))
    runner.close()


def test_the_readmes_silent_vehicle_example_runs_as_documented(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from pipeline.core.handlers.loader import import_file

    readme = (Path(__file__).resolve().parents[3] / "functions" / "README.md").read_text()
    section = readme.split("### Silent vehicles", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "went_quiet.py").write_text(code)
    [spec] = import_file(tmp_path / "went_quiet.py")
    soc = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
    h = HandlerHarness(spec)
    assert h.run({"V1": {soc: ([0, 60_000], [81.0, 80.0])}, "V2": {soc: ([0], [50.0])}}).events_of() == []
    [quiet] = h.silence(["V1"]).events_of("fleet.status.quiet")
    assert (quiet["subject"], quiet["time"], quiet["soc_pct"]) == ("V1", 60_000, 80.0)
    assert h.silence(["V1"]).events_of() == []  # said once
    h.close()
