"""Cleaning stage: each check on hand-made batches, accounting, history across batches."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.clean import Cleaner, CleanResult, load_cleaning_config
from pipeline.core.clean.config import SpikeRule, StuckRule
from tests.oracles.clean import ReferenceCleaner
from tests.unit.test_clean_support import (
    ACC,
    ACCEL,
    LAT,
    LON,
    SOC,
    SPEED,
    T0,
    TYRE,
    frame,
    readings_of,
    seconds,
)

VIN = "VF1AAAAA000000001"
VIN2 = "VF1AAAAA000000002"


@pytest.fixture(scope="module")
def catalog():  # type: ignore[no-untyped-def]
    return load_catalog()


def cleaner(catalog, **updates) -> Cleaner:  # type: ignore[no-untyped-def]
    config = load_cleaning_config()
    if updates:
        config = config.model_copy(update=updates)
    return Cleaner(catalog, config)


def speed_hampel(catalog, action: str = "drop") -> Cleaner:  # type: ignore[no-untyped-def]
    """A Hampel filter on speed alone (rate of change off, so the spike check is seen)."""
    config = load_cleaning_config()
    rule = SpikeRule(window=7, n_sigmas=5, min_deviation=20, action=action)  # type: ignore[arg-type]
    return Cleaner(catalog, config.model_copy(update={
        "spikes": {SPEED: rule},
        "rate_of_change": config.rate_of_change.model_copy(update={"enabled": False})}))


def outcomes(result: CleanResult) -> list[str]:
    return [result.reasons[c] for c in result.outcome]


def accounted(result: CleanResult) -> None:
    c = result.counts
    assert c["in"] == c["kept"] + c["repaired"] + c["dropped"] == len(result.outcome)
    assert len(result.readings) == c["kept"] + c["repaired"]
    by_reason = sum(v for k, v in c.items() if k.startswith(("dropped.", "repaired.")))
    assert by_reason + c["kept"] + c.get("repaired", 0) - sum(
        v for k, v in c.items() if k.startswith("repaired.")) == c["in"]


def smooth(n: int, start: float = 50.0) -> list[float]:
    return [start + 0.5 * np.sin(k) for k in range(n)]


def test_per_row_reasons(catalog) -> None:  # type: ignore[no-untyped-def]
    t = seconds(0, 4)
    sent = t[-1] + 100
    batch = [frame(VIN, 1, sent, {
        SPEED: (t, [50.0, float("nan"), 51.0, 300.0]),
        "Vehicle.Nonsense": (t[:1], [1.0]),
        TYRE: (t[:2], [30.0, 31.0], "psi"),
        SOC: (t[:1], [0.5], "furlongs"),
        "Vehicle.Exterior.AirTemperature": ([t[0], sent + 60_000], [20.0, 20.5]),
    })]
    result = cleaner(catalog).clean(readings_of(batch))
    assert outcomes(result) == [
        "kept", "dropped.non_finite", "kept", "dropped.out_of_range",
        "dropped.unknown_signal",
        "repaired.unit", "repaired.unit",
        "dropped.unit_unconvertible",
        "kept", "dropped.future_timestamp",
    ]
    accounted(result)
    clean = result.readings
    assert clean.signal_names == catalog.names
    tyre = clean.value[clean.signal == catalog.index[TYRE]]
    assert tyre.tolist() == pytest.approx([30.0 * 6.894757293168361, 31.0 * 6.894757293168361])
    assert result.repaired.sum() == 2
    # sorted by (vehicle, signal, t)
    keys = list(zip(clean.vehicle.tolist(), clean.signal.tolist(), clean.t.tolist(), strict=True))
    assert keys == sorted(keys)


def test_time_checks_against_ingest(catalog) -> None:  # type: ignore[no-untyped-def]
    t = seconds(0, 3)
    now = T0 + 10 * 86_400_000
    batch = [frame(VIN, 1, t[-1], {SPEED: (t, [1.0, 2.0, 3.0])}, received_at=now)]
    result = cleaner(catalog).clean(readings_of(batch))
    assert set(outcomes(result)) == {"dropped.too_old"}
    ahead = [frame(VIN, 1, T0 + 3_600_000, {SPEED: ([T0 + 3_600_000], [1.0])}, received_at=T0)]
    result = cleaner(catalog).clean(readings_of(ahead))
    assert outcomes(result) == ["dropped.clock_skew"]  # a lone frame from a clock an hour ahead
    no_skew_check = load_cleaning_config().time.model_copy(update={"max_clock_skew_s": None})
    result = cleaner(catalog, time=no_skew_check).clean(readings_of(ahead))
    assert outcomes(result) == ["dropped.future_timestamp"]
    # each frame is judged against its own ingest time; without one, against now_ms
    unstamped = [frame(VIN, 1, T0 + 3_600_000, {SPEED: ([T0 + 3_600_000], [1.0])}, received_at=0)]
    assert outcomes(cleaner(catalog).clean(readings_of(unstamped), now_ms=T0 + 3_600_000)) == ["kept"]
    assert outcomes(cleaner(catalog).clean(readings_of(unstamped), now_ms=T0)) == \
        ["dropped.future_timestamp"]


def test_age_is_judged_by_each_frames_own_ingest_time(catalog) -> None:  # type: ignore[no-untyped-def]
    """A batch that holds an upload from ten days later (a replay of recorded trips, a backlog)
    must not make the earlier frames' readings too old: their age is against their own ingest."""
    t = seconds(0, 3)
    later = T0 + 10 * 86_400_000
    batch = [frame(VIN, 1, t[-1], {SPEED: (t, [1.0, 2.0, 3.0])}, received_at=T0 + 5_000),
             frame("VIN0000000000LATE", 1, later, {SPEED: ([later], [4.0])}, received_at=later + 1_000)]
    result = cleaner(catalog).clean(readings_of(batch))
    assert outcomes(result) == ["kept"] * 4
    # and a reading older than its own frame's ingest by more than max_age still goes
    stale = [frame(VIN, 1, later, {SPEED: ([T0, later], [1.0, 2.0])}, received_at=later + 1_000)]
    assert outcomes(cleaner(catalog).clean(readings_of(stale))) == ["dropped.too_old", "kept"]


def test_duplicates_within_batch_and_resends(catalog) -> None:  # type: ignore[no-untyped-def]
    c = cleaner(catalog)
    t = seconds(0, 5)
    f1 = frame(VIN, 1, t[-1] + 100, {SPEED: (t, smooth(5))})
    overlap = frame(VIN, 2, t[-1] + 200, {SPEED: (t[3:], smooth(5)[3:])})
    result = c.clean(readings_of([f1, f1, overlap]))
    assert outcomes(result) == ["kept"] * 5 + ["dropped.duplicate"] * 7
    # the same frame again in a later batch: a resend
    result = c.clean(readings_of([f1]))
    assert outcomes(result) == ["dropped.duplicate"] * 5
    # same seq but a different send time (seq counter reset): not a resend
    t2 = seconds(10, 2)
    again = frame(VIN, 1, t2[-1] + 100, {SPEED: (t2, [50.0, 50.5])})
    assert outcomes(c.clean(readings_of([again]))) == ["kept", "kept"]


def test_late_arrivals_marked_not_dropped(catalog) -> None:  # type: ignore[no-untyped-def]
    c = cleaner(catalog)
    early, later = seconds(0, 5), seconds(5, 5)
    f_late = frame(VIN, 2, later[-1] + 100, {SPEED: (later, smooth(5))})
    f_early = frame(VIN, 1, early[-1] + 100, {SPEED: (early, smooth(5))})
    result = c.clean(readings_of([f_late, f_early]))
    assert outcomes(result) == ["kept"] * 10
    assert result.late.tolist() == [True] * 5 + [False] * 5  # sorted by t: the early ones came late
    assert result.counts["late"] == 5
    older = seconds(-5, 3)
    result = c.clean(readings_of([frame(VIN, 0, older[-1] + 100, {SPEED: (older, smooth(3))})]))
    assert outcomes(result) == ["kept"] * 3 and result.late.all()


def test_hampel_drop_and_repair(catalog) -> None:  # type: ignore[no-untyped-def]
    t = seconds(0, 20, 0.5)
    values = smooth(20)
    values[8] = 140.0  # within range, far from its neighbours
    values[19] = 150.0  # at the end of the series: judged on a one-sided window
    batch = [frame(VIN, 1, t[-1] + 100, {SPEED: (t, values)})]
    result = speed_hampel(catalog).clean(readings_of(batch))
    out = outcomes(result)
    assert out[8] == "dropped.spike" and out[19] == "dropped.spike"
    assert out.count("kept") == 18
    result = speed_hampel(catalog, "repair").clean(readings_of(batch))
    assert outcomes(result)[8] == "repaired.spike"
    fixed = result.readings.value[result.readings.t == t[8]][0]
    assert abs(fixed - 50.0) < 1.0
    assert result.repaired.sum() == 2


def test_hampel_continues_across_batches(catalog) -> None:  # type: ignore[no-untyped-def]
    c = speed_hampel(catalog)
    t1 = seconds(0, 10, 0.5)
    c.clean(readings_of([frame(VIN, 1, t1[-1] + 100, {SPEED: (t1, smooth(10))})]))
    # three readings only: too few for a window alone, enough with the tail of the last batch
    t2 = seconds(5, 3, 0.5)
    result = c.clean(readings_of([frame(VIN, 2, t2[-1] + 100, {SPEED: (t2, [50.0, 130.0, 50.2])})]))
    assert outcomes(result) == ["kept", "dropped.spike", "kept"]
    fresh = speed_hampel(catalog)
    result = fresh.clean(readings_of([frame(VIN, 2, t2[-1] + 100, {SPEED: (t2, [50.0, 130.0, 50.2])})]))
    assert "dropped.spike" not in outcomes(result)  # no history: series shorter than the window


def test_rate_of_change_isolated_excursion(catalog) -> None:  # type: ignore[no-untyped-def]
    t = seconds(0, 8)
    temp = [20.0, 20.1, 20.2, 35.0, 20.3, 20.4, 25.0, 25.1]  # spike at 3, a step at 6
    name = "Vehicle.Cabin.HVAC.AmbientAirTemperature"  # max_rate 2 C/s, no Hampel
    result = cleaner(catalog).clean(readings_of([frame(VIN, 1, t[-1] + 100, {name: (t, temp)})]))
    assert outcomes(result) == ["kept"] * 3 + ["dropped.rate_of_change"] + ["kept"] * 4
    # a jump on the last reading of the series has no next reading: judged on the way in
    t2 = seconds(8, 2)
    result2 = cleaner(catalog).clean(readings_of([frame(VIN, 1, t2[-1] + 100, {name: (t2, [25.2, 40.0])})]))
    assert outcomes(result2) == ["kept", "dropped.rate_of_change"]
    # the first of a series without history is judged on the way out
    t3 = seconds(8, 3)
    result3 = cleaner(catalog).clean(readings_of([frame(VIN, 1, t3[-1] + 100, {name: (t3, [40.0, 25.2, 25.3])})]))
    assert outcomes(result3) == ["dropped.rate_of_change", "kept", "kept"]


def test_stuck_values(catalog) -> None:  # type: ignore[no-untyped-def]
    rule = StuckRule(min_duration_ms=5_000, min_count=4, ignore_values=(0.0,))
    c = cleaner(catalog, stuck={ACCEL: rule})
    t = seconds(0, 10)
    values = [0.1, 0.2, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 0.3]
    result = c.clean(readings_of([frame(VIN, 1, t[-1] + 100, {ACCEL: (t, values)})]))
    # run starts at t=2 s and is stuck at 7 s (5 s held, 4+ readings): every repeat of it
    # in the batch is dropped, the first reading (the last true value) is kept
    assert outcomes(result) == ["kept"] * 3 + ["dropped.stuck"] * 6 + ["kept"]
    zeros = c.clean(readings_of([frame(VIN, 2, T0 + 30_000, {ACCEL: (seconds(20, 10), [0.0] * 10)})]))
    assert set(outcomes(zeros)) == {"kept"}
    # a run continues across batches
    c2 = cleaner(catalog, stuck={ACCEL: rule})
    c2.clean(readings_of([frame(VIN, 1, T0 + 3_100, {ACCEL: (seconds(0, 4), [2.0] * 4)})]))
    result = c2.clean(readings_of([frame(VIN, 2, T0 + 7_100, {ACCEL: (seconds(4, 3), [2.0] * 3)})]))
    # the run began at 0 s and is stuck at 5 s: its repeats in this batch are dropped (the
    # previous batch's are gone)
    assert outcomes(result) == ["dropped.stuck"] * 3
    later = c2.clean(readings_of([frame(VIN, 3, T0 + 9_100, {ACCEL: (seconds(7, 2), [2.0, 2.5])})]))
    assert outcomes(later) == ["dropped.stuck", "kept"]  # a stuck run stays stuck until it changes


def gps_frame(vin: str, seq: int, t: list[int], lat: list[float], lon: list[float],
              acc: list[float] | None = None):  # type: ignore[no-untyped-def]
    samples = {LAT: (t, lat), LON: (t, lon)}
    if acc is not None:
        samples[ACC] = (t, acc)
    return frame(vin, seq, t[-1] + 100, samples)


def track(n: int, step: float = 1e-4, lat0: float = 34.0, lon0: float = -6.8) -> tuple[list[float], list[float]]:
    return [lat0 + k * step for k in range(n)], [lon0 + k * step for k in range(n)]


def test_gps_fix_checks_drop_both_coordinates(catalog) -> None:  # type: ignore[no-untyped-def]
    t = seconds(0, 10)
    lat, lon = track(10)
    acc = [5.0] * 10
    lat[2], lon[2] = 0.0, 0.0  # null island
    acc[4] = 400.0  # poor accuracy
    lat[6] += 0.05  # a teleport for one fix (~5.5 km in a second)
    result = cleaner(catalog).clean(readings_of([gps_frame(VIN, 1, t, lat, lon, acc)]))
    out = outcomes(result)
    lat_out, lon_out, acc_out = out[:10], out[10:20], out[20:]
    assert lat_out == lon_out
    assert lat_out[2] == "dropped.gps_null_island"
    assert lat_out[4] == "dropped.gps_poor_accuracy"
    assert lat_out[6] == "dropped.gps_implied_speed"
    assert lat_out.count("kept") == 7
    assert set(acc_out) == {"kept"}
    accounted(result)


def test_gps_bounds(catalog) -> None:  # type: ignore[no-untyped-def]
    config = load_cleaning_config()
    gps = config.gps.model_copy(update={"bounds": config.gps.bounds.model_copy(
        update={"lat_min": 33.0, "lat_max": 35.0, "lon_min": -8.0, "lon_max": -6.0})})
    c = Cleaner(catalog, config.model_copy(update={"gps": gps}))
    t = seconds(0, 3)
    result = c.clean(readings_of([gps_frame(VIN, 1, t, [34.0, 34.0001, 36.0], [-6.8, -6.8001, -6.8])]))
    assert outcomes(result) == ["kept", "kept", "dropped.gps_out_of_bounds"] * 2


def test_held_positions_and_multi_fix_jump(catalog) -> None:  # type: ignore[no-untyped-def]
    # A receiver that updates every 12 s at 80 km/h: each update moves ~270 m in "1 s".
    t = seconds(0, 48)
    lat, lon = [], []
    for k in range(48):
        step = k // 12
        lat.append(34.0 + step * 0.0024)
        lon.append(-6.8)
    c = cleaner(catalog)
    result = c.clean(readings_of([gps_frame(VIN, 1, t, lat, lon)]))
    assert set(outcomes(result)) == {"kept"}
    # held across the batch boundary, then a multipath jump of 4 fixes, then back on track
    t2 = seconds(48, 12)
    lat2 = [34.0 + 4 * 0.0024] * 12
    lon2 = [-6.8] * 12
    for k in range(3, 7):
        lat2[k] += 0.01  # ~1.1 km off
    result = c.clean(readings_of([gps_frame(VIN, 2, t2, lat2, lon2)]))
    out = outcomes(result)[:12]
    assert out == ["kept"] * 3 + ["dropped.gps_implied_speed"] * 4 + ["kept"] * 5


def test_a_jump_let_in_by_a_gap_is_found_by_the_fixes_after_it(catalog) -> None:  # type: ignore[no-untyped-def]
    # 10 m/s north-east; after 8 s without a fix the next one is 100 m off the track (within
    # the room a 9 s gap allows), and the fixes after it are back on the track: the jump
    # is the fix after the gap, not the track that follows it
    c = cleaner(catalog)
    lat, lon = track(10, 6.4e-5)
    assert set(outcomes(c.clean(readings_of([gps_frame(VIN, 1, seconds(0, 10), lat, lon)])))) == {"kept"}
    t2 = seconds(18, 5)
    lat2, lon2 = track(23, 6.4e-5)
    lat2, lon2 = lat2[18:], lon2[18:]
    lat2[0] += 0.0009  # ~100 m north
    out = outcomes(c.clean(readings_of([gps_frame(VIN, 2, t2, lat2, lon2)])))[:len(t2)]
    assert out == ["dropped.gps_implied_speed"] + ["kept"] * (len(t2) - 1)


def test_gps_first_batch_without_history(catalog) -> None:  # type: ignore[no-untyped-def]
    c = cleaner(catalog)
    # a new vehicle's first batch starts with a bad fix: the longer stretch is trusted
    t = seconds(0, 15)
    lat, lon = track(15, 5e-5)
    lat[0] += 0.2
    out = outcomes(c.clean(readings_of([gps_frame(VIN, 1, t, lat, lon)])))[:15]
    assert out == ["dropped.gps_implied_speed"] + ["kept"] * 14
    # that guess does not become history: a short batch later is judged on its own
    t2 = seconds(15, 3)
    lat2, lon2 = track(3, 5e-5, lat0=34.3, lon0=-6.5)
    assert set(outcomes(c.clean(readings_of([gps_frame(VIN, 2, t2, lat2, lon2)])))) == {"kept"}


def test_gps_relocation(catalog) -> None:  # type: ignore[no-untyped-def]
    config = load_cleaning_config()
    c = Cleaner(catalog, config.model_copy(update={"gps": config.gps.model_copy(
        update={"relocate_after_ms": 20_000})}))
    t = seconds(0, 15)
    lat, lon = track(15, 5e-5)
    assert set(outcomes(c.clean(readings_of([gps_frame(VIN, 1, t, lat, lon)])))) == {"kept"}
    # the vehicle was carried 20 km with the receiver off: dropped until the new stretch
    # has lasted relocate_after_ms (counted from where it began, across batches)
    t2 = seconds(15, 10)
    lat2, lon2 = track(10, 5e-5, lat0=34.2, lon0=lon[-1] + 5e-5)
    out = outcomes(c.clean(readings_of([gps_frame(VIN, 2, t2, lat2, lon2)])))[:10]
    assert out == ["dropped.gps_implied_speed"] * 10
    t3 = seconds(25, 15)
    lat3, lon3 = track(15, 5e-5, lat0=lat2[-1] + 5e-5, lon0=lon2[-1] + 5e-5)
    out = outcomes(c.clean(readings_of([gps_frame(VIN, 3, t3, lat3, lon3)])))[:15]
    assert out == ["dropped.gps_implied_speed"] * 10 + ["kept"] * 5  # from 35 s = 15 s + 20 s
    t4 = seconds(40, 3)
    lat4, lon4 = track(3, 5e-5, lat0=lat3[-1] + 5e-5, lon0=lon3[-1] + 5e-5)
    assert set(outcomes(c.clean(readings_of([gps_frame(VIN, 4, t4, lat4, lon4)])))) == {"kept"}


def test_unpaired_coordinates_are_kept(catalog) -> None:  # type: ignore[no-untyped-def]
    t = seconds(0, 3)
    batch = [frame(VIN, 1, t[-1] + 100, {LAT: (t, [34.0, 34.0001, float("nan")]),
                                          LON: (t, [-6.8, -6.8001, -6.8002])})]
    assert outcomes(cleaner(catalog).clean(readings_of(batch))) == \
        ["kept", "kept", "dropped.non_finite", "kept", "kept", "kept"]


def test_vehicles_do_not_share_history(catalog) -> None:  # type: ignore[no-untyped-def]
    c = cleaner(catalog)
    t = seconds(0, 10, 0.5)
    c.clean(readings_of([frame(VIN, 1, t[-1] + 100, {SPEED: (t, smooth(10))})]))
    # VIN2 with the same times is not a duplicate and not late
    result = c.clean(readings_of([frame(VIN2, 1, t[-1] + 100, {SPEED: (t, smooth(10))})]))
    assert set(outcomes(result)) == {"kept"} and not result.late.any()


def test_state_export_import_and_forget(catalog) -> None:  # type: ignore[no-untyped-def]
    a = speed_hampel(catalog)
    t1 = seconds(0, 10, 0.5)
    f1 = frame(VIN, 1, t1[-1] + 100, {SPEED: (t1, smooth(10)), **gps_frame(VIN, 1, t1, *track(10))["samples"]})
    a.clean(readings_of([f1]))
    blob = a.export_state([VIN, "UNKNOWNVIN"])
    b = speed_hampel(catalog)
    assert b.import_state(blob) == [VIN]
    t2 = seconds(5, 3, 0.5)
    nxt = [frame(VIN, 2, t2[-1] + 100, {SPEED: (t2, [50.0, 130.0, 50.2])}), f1]
    assert outcomes(b.clean(readings_of(nxt)))[:3] == ["kept", "dropped.spike", "kept"]
    assert set(outcomes(b.clean(readings_of([f1])))) == {"dropped.duplicate"}
    assert b.forget([VIN]) == 1
    assert set(outcomes(b.clean(readings_of([f1])))) == {"kept"}


def test_history_is_bounded(catalog) -> None:  # type: ignore[no-untyped-def]
    config = load_cleaning_config()
    c = Cleaner(catalog, config.model_copy(update={"state": config.state.model_copy(update={"max_vehicles": 5})}))
    for k in range(20):
        t = seconds(k, 2)
        c.clean(readings_of([frame(f"VIN{k:014d}", 1, t[-1] + 100, {SPEED: (t, [1.0, 1.5])})]))
        assert len(c.state) <= 5


def test_profile_and_empty_batch(catalog) -> None:  # type: ignore[no-untyped-def]
    c = cleaner(catalog)
    empty = readings_of([])
    result = c.clean(empty, profile=True)
    assert result.counts["in"] == 0 and len(result.readings) == 0
    t = seconds(0, 4)
    result = c.clean(readings_of([frame(VIN, 1, t[-1] + 100, {SPEED: (t, smooth(4))})]), profile=True)
    assert {"sort", "spikes", "gps", "rate_of_change"} <= set(result.timings)
    assert all(v >= 0 for v in result.timings.values())


def test_exported_state_carries_the_gps_track(catalog) -> None:  # type: ignore[no-untyped-def]
    a = cleaner(catalog)
    lat, lon = track(10, 5e-5)
    a.clean(readings_of([gps_frame(VIN, 1, seconds(0, 10), lat, lon)]))
    far_lat, far_lon = track(3, 5e-5, lat0=34.3, lon0=lon[-1])
    assert set(outcomes(a.clean(readings_of([gps_frame(VIN, 2, seconds(10, 3), far_lat, far_lon)])))) == \
        {"dropped.gps_implied_speed"}
    b = cleaner(catalog)
    b.import_state(a.export_state([VIN]))
    more_lat, more_lon = track(3, 5e-5, lat0=far_lat[-1] + 5e-5, lon0=far_lon[-1] + 5e-5)
    batch = readings_of([gps_frame(VIN, 3, seconds(13, 3), more_lat, more_lon)])
    assert set(outcomes(b.clean(batch))) == {"dropped.gps_implied_speed"}  # the jump is still open
    assert set(outcomes(cleaner(catalog).clean(batch))) == {"kept"}  # a worker without it cannot tell


def test_rate_of_change_two_readings_off_together(catalog) -> None:  # type: ignore[no-untyped-def]
    # two readings off together (fast in, a quiet step, fast back the other way, the
    # readings around agreeing) are dropped, inside a series and right after its history;
    # the same shape that does not come back (a step up, then on) is kept
    name = "Vehicle.Cabin.HVAC.AmbientAirTemperature"  # max_rate 2 C/s, no Hampel
    t = seconds(0, 7)
    inside = [20.0, 20.1, 30.0, 30.2, 20.2, 20.3, 20.4]
    step = [20.0, 20.1, 30.0, 30.2, 40.0, 40.1, 40.2]
    for values, want in ((inside, ["kept"] * 2 + ["dropped.rate_of_change"] * 2 + ["kept"] * 3),
                         (step, ["kept"] * 7)):
        result = cleaner(catalog).clean(readings_of([frame(VIN, 1, t[-1] + 100, {name: (t, values)})]))
        assert outcomes(result) == want
        assert ReferenceCleaner(catalog, load_cleaning_config()).clean(
            readings_of([frame(VIN, 1, t[-1] + 100, {name: (t, values)})])).outcome == result.outcome.tolist()
    first = cleaner(catalog)
    first.clean(readings_of([frame(VIN, 1, t[1] + 100, {name: (t[:2], [20.0, 20.1])})]))
    after = first.clean(readings_of([frame(VIN, 2, t[-1] + 100, {name: (t[2:], [30.0, 30.2, 20.2, 20.3, 20.4])})]))
    assert outcomes(after) == ["dropped.rate_of_change"] * 2 + ["kept"] * 3
