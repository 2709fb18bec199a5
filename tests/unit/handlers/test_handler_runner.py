"""Runner isolation: failing and hanging handlers are dead-lettered, the others are unaffected."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from pipeline.core.batch import deterministic_id
from pipeline.core.handlers import HandlerContext, HandlerInput, handler
from pipeline.core.handlers.testing import HandlerHarness, event_dicts

SPEED = "Vehicle.Speed"
BATCH = {
    "VIN_A": {SPEED: ([0, 1000, 2000], [50.0, 95.0, 120.0])},
    "VIN_B": {SPEED: ([0, 1000], [100.0, 10.0])},
}
release = threading.Event()
calls = {"flaky": 0}


@handler(name="fast", consumes=[SPEED], emits=["fleet.test.fast"], state=True)
def fast(batch: HandlerInput, ctx: HandlerContext) -> None:
    s = batch.signal(SPEED)
    hit = s.v > 90
    ctx.emit("fleet.test.fast", time=s.t[hit], origin=s.record[hit], vehicle=s.vehicle[hit],
             data={"speed_kmh": s.v[hit]})
    for v in np.unique(s.vehicle[hit]).tolist():
        seen = (ctx.state.get(ctx.vins[v]) or {}).get("seen", 0)
        ctx.state.put(ctx.vins[v], {"seen": seen + 1})


@handler(name="broken", consumes=[SPEED], emits=["fleet.test.broken"], state=True, retries=2)
def broken(batch: HandlerInput, ctx: HandlerContext) -> None:
    ctx.state.put("VIN_A", {"should": "not persist"})
    raise ValueError("bad threshold")


@handler(name="hangs", consumes=[SPEED], emits=["fleet.test.hangs"], timeout_ms=100, retries=3)
def hangs(batch: HandlerInput, ctx: HandlerContext) -> None:
    release.wait(10)
    ctx.emit("fleet.test.hangs", time=[0], origin=[0], vehicle=[0])


@handler(name="flaky", consumes=[SPEED], emits=["fleet.test.flaky"], retries=1)
def flaky(batch: HandlerInput, ctx: HandlerContext) -> None:
    calls["flaky"] += 1
    if calls["flaky"] % 2 == 1:
        raise RuntimeError("transient")
    ctx.emit("fleet.test.flaky", time=[1], origin=[0], vehicle=[0])


@handler(name="liar", consumes=[SPEED], emits=["fleet.test.declared"])
def liar(batch: HandlerInput, ctx: HandlerContext) -> Any:
    from pipeline.core.batch import EventBatch

    return EventBatch.build(type="fleet.test.undeclared", source="/x", vin=["VIN_A"], time=[0], origin=[0],
                            ids=[""])


def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["subject"], r["time"]))


def test_raising_and_hanging_handlers_are_isolated_and_dead_lettered() -> None:
    release.clear()
    alone = HandlerHarness(fast)
    baseline = alone.run(BATCH)
    alone.close()
    h = HandlerHarness(fast, broken, hangs)
    try:
        out = h.run(BATCH)
        # the batch came back while the hanging call is still blocked (it is never released
        # before this point): the hang did not hold the batch
        assert not release.is_set() and h.runner.quarantined() == ["hangs"]
        assert strip(out.events_of()) == strip(baseline.events_of())  # others' output unchanged
        by_stage: dict[str, list[Any]] = {}
        for dl in out.dead_letters:
            by_stage.setdefault(dl.stage, []).append(dl)
        assert set(by_stage) == {"handler:broken", "handler:hangs"}
        # one dead letter per input record of the failing handler
        for dls in by_stage.values():
            assert sorted(d.record.offset for d in dls) == [r.offset for r in out.records]
        err = by_stage["handler:broken"][0]
        assert err.reason == "handler_error" and err.error == "ValueError: bad threshold"
        assert "test_handler_runner.py" in err.detail["traceback"] and err.detail["attempts"] == 3
        assert by_stage["handler:hangs"][0].reason == "handler_timeout"
        assert out.stats["broken"].errors == 3 and out.stats["broken"].retries == 2
        assert out.stats["hangs"].timeouts == 1 and out.stats["hangs"].calls == 1  # timeouts are not retried
        assert h.state.get("broken", "VIN_A") is None  # a failed call's state writes are discarded
        assert h.state.get("fast", "VIN_A") == {"seen": 1}

        # while its call is still running the handler is quarantined, not called again
        again = h.run(BATCH)
        assert again.stats["hangs"].calls == 0 and again.stats["hangs"].quarantined == 1
        assert {d.stage for d in again.dead_letters} == {"handler:broken", "handler:hangs"}
        assert len(again.events_of("fleet.test.fast")) == 3
        # once it returns, its late output is discarded and it runs normally again
        deadline = time.time() + 5
        assert h.runner.quarantined() == ["hangs"]
        release.set()
        while time.time() < deadline and h.runner.quarantined():
            time.sleep(0.01)
        third = h.run(BATCH)
        assert third.stats["hangs"].calls == 1 and len(third.events_of("fleet.test.hangs")) == 1
        assert {d.stage for d in third.dead_letters} == {"handler:broken"}
    finally:
        release.set()
        h.close()


def test_a_transient_failure_is_retried_and_succeeds() -> None:
    calls["flaky"] = 0
    h = HandlerHarness(flaky)
    out = h.run(BATCH)
    h.close()
    assert out.dead_letters == []
    assert out.stats["flaky"].calls == 2 and out.stats["flaky"].retries == 1
    assert len(out.events_of("fleet.test.flaky")) == 1


def test_undeclared_event_types_are_dead_lettered() -> None:
    h = HandlerHarness(liar)
    out = h.run(BATCH)
    h.close()
    assert len(out.events) == 0
    assert out.dead_letters and "undeclared" in out.dead_letters[0].error


def test_event_ids_are_deterministic_from_record_handler_and_index() -> None:
    h1, h2 = HandlerHarness(fast), HandlerHarness(fast)
    a, b = h1.run(BATCH), h2.run(BATCH)
    h1.close()
    h2.close()
    assert a.events.attrs["id"].tolist() == b.events.attrs["id"].tolist()
    rows = event_dicts(a.events)
    rec = a.records[rows[0]["origin"]]
    assert rows[0]["id"] == deterministic_id(rec.topic, rec.partition, rec.offset, "fast", 0)
    assert len(set(a.events.attrs["id"].tolist())) == len(rows)


def test_stats_count_rows_events_and_latency() -> None:
    h = HandlerHarness(fast)
    out = h.run(BATCH)
    h.close()
    st = out.stats["fast"]
    assert (st.calls, st.rows_in, st.events_out, st.errors) == (1, 5, 3, 0)
    assert st.latency_s > 0
    assert h.runner.totals["fast"].events_out == 3


def test_emit_marks_nan_fields_absent_and_sets_subject() -> None:
    @handler(name="nanny", consumes=[SPEED], emits=["fleet.test.nan"])
    def nanny(batch: HandlerInput, ctx: HandlerContext) -> None:
        ctx.emit("fleet.test.nan", time=[1, 2], origin=[0, 1], vehicle=[0, 1],
                 data={"x": np.array([1.0, np.nan]), "location.lat": np.array([np.nan, 3.0])})

    h = HandlerHarness(nanny)
    rows = h.run(BATCH).events_of()
    h.close()
    assert rows[0]["x"] == 1.0 and "location.lat" not in rows[0]
    assert "x" not in rows[1] and rows[1]["location.lat"] == 3.0
    assert rows[1]["subject"] == rows[1]["partitionkey"] == rows[1]["vin"] == "VIN_B"


def test_reading_an_unconsumed_signal_is_an_error() -> None:
    @handler(name="sneaky", consumes=[SPEED], emits=["fleet.test.s"], retries=0)
    def sneaky(batch: HandlerInput, ctx: HandlerContext) -> None:
        batch.signal("Vehicle.TraveledDistance")

    h = HandlerHarness(sneaky)
    out = h.run(BATCH)
    h.close()
    assert out.dead_letters and "does not consume" in out.dead_letters[0].error


@pytest.mark.parametrize("enabled", [True, False])
def test_a_handler_can_be_disabled_in_config(enabled: bool) -> None:
    h = HandlerHarness(fast, config={"fast": {"enabled": enabled}})
    out = h.run(BATCH)
    h.close()
    assert (len(out.events) > 0) is enabled


def test_assign_ids_counts_events_per_record_in_emission_order_and_keeps_given_ids() -> None:
    from pipeline.core.batch import EventBatch, RawRecord
    from pipeline.core.handlers.runner import assign_ids

    records = [RawRecord("t", 0, off, b"A", b"", [], 0) for off in range(3)]
    origin = [2, 0, 2, 2, 0, 1]
    ids = ["", "", "given", "", "", ""]
    events = EventBatch.build(type="fleet.test.fast", source="/h", vin=np.full(6, "A", dtype=object),
                              time=np.arange(6, dtype=np.int64), origin=np.array(origin, np.int64),
                              ids=np.array(ids, dtype=object), data={}, present={})
    assign_ids(events, records, "h")
    ordinal = [0, 0, 1, 2, 1, 0]  # per record, counting the event that kept its id
    want = [ids[i] or deterministic_id("t", 0, o, "h", ordinal[i]) for i, o in enumerate(origin)]
    assert events.attrs["id"].tolist() == want
