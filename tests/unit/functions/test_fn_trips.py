"""trips: start and end across batches, summary from odometer or GPS, harsh counts, behaviour features."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.handlers import HandlerHarness

SPEED, ODO = "Vehicle.Speed", "Vehicle.TraveledDistance"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
LONG, LAT_ACC = "Vehicle.Acceleration.Longitudinal", "Vehicle.Acceleration.Lateral"
S = 1000


@pytest.fixture
def trip_state(shipped):  # type: ignore[no-untyped-def]
    """`trip_state(h, "V1")`: the vehicle's trips state with its fields named (or None)."""
    named = shipped("trips").fn.__globals__["named"]

    def get(h: HandlerHarness, vin: str) -> dict | None:
        st = h.state.get("trips", vin)
        return None if st is None else named(st)

    return get


def drive(t_s: np.ndarray, moving: np.ndarray, brake_at_s: list[int]) -> dict:
    """1 Hz speed, odometer (+10 m per moving second), SoC, GPS; 10 Hz braking bursts."""
    t = t_s * S
    speed = np.where(moving, 36.0, 0.0)
    odo = 1_000_000 + 10.0 * np.cumsum(moving)  # metres, continues across calls via t_s offset
    soc = 80.0 - 0.01 * np.cumsum(moving)
    lat = 34.0 + 0.0001 * np.cumsum(moving)
    acc_t = np.concatenate([np.arange(b * S, b * S + 600, 100) for b in brake_at_s]) if brake_at_s else np.empty(0)
    acc_v = np.tile([-6.0, -6.0, -6.0, -6.0, -6.0, 0.0], len(brake_at_s))  # 400 ms of hard braking
    return {SPEED: (t, speed), ODO: (t, odo), SOC: (t, soc), LAT: (t, lat), LON: (t, np.full(t.shape[0], -6.8)),
            LONG: (acc_t, acc_v), LAT_ACC: (acc_t, np.zeros(acc_t.shape[0]))}


def test_trip_spanning_batches_with_summary_and_features(shipped) -> None:
    t_all = np.arange(0, 900)
    moving = (t_all >= 10) & (t_all < 400)
    full = drive(t_all, moving, [])
    brakes = {100: 0, 350: 1}

    def part(lo: int, hi: int) -> dict:
        sel = (t_all >= lo) & (t_all < hi)
        out = {k: (tv[0][(tv[0] >= lo * S) & (tv[0] < hi * S)], np.asarray(tv[1])[(tv[0] >= lo * S) & (tv[0] < hi * S)])
               for k, tv in full.items() if k not in (LONG, LAT_ACC)}
        bursts = [b for b in brakes if lo <= b < hi]
        extra = drive(t_all[sel], moving[sel], bursts)
        out[LONG], out[LAT_ACC] = extra[LONG], extra[LAT_ACC]
        return {"V1": out}

    h = HandlerHarness(shipped("harsh_driving"), shipped("speeding"), shipped("idling"), shipped("trips"))
    first = h.run(part(0, 300))
    started = first.events_of("fleet.trip.started")
    assert [(e["time"], e["trip_id"], e["odometer_km"]) for e in started] == [(10_000, "V1-10000", 1000.01)]
    assert first.events_of("fleet.trip.ended") == []
    second = h.run(part(300, 900))
    h.close()
    assert second.events_of("fleet.trip.started") == []
    [ended] = second.events_of("fleet.trip.ended")
    assert ended["trip_id"] == "V1-10000" and ended["time"] == 399_000
    assert ended["duration_s"] == 389.0
    assert ended["distance_km"] == pytest.approx(3.89, abs=1e-6)  # odometer: 389 s at 10 m/s
    assert ended["energy_kwh"] == pytest.approx(389 * 0.01 / 100 * 6.1, abs=1e-3)
    assert ended["harsh_events"] == 2
    assert ended["start.lat"] == pytest.approx(34.0001) and ended["end.lat"] == pytest.approx(34.0 + 0.0001 * 390)
    [feat] = second.events_of("fleet.behaviour.features")
    assert feat["trip_id"] == "V1-10000" and feat["max_speed_kmh"] == 36.0
    assert feat["mean_speed_kmh"] == pytest.approx(3.89 / (389 / 3600), abs=0.01)
    assert feat["harsh_braking_per_100km"] == pytest.approx(2 / 3.89 * 100, abs=1e-3)
    assert feat["harsh_accel_per_100km"] == 0 and feat["speeding_share"] == 0 and feat["idle_share"] == 0
    assert h.state.get("trips", "V1") is None  # closed trips leave no state


def test_a_long_pause_splits_trips_within_one_batch(shipped, trip_state) -> None:
    t = np.concatenate([np.arange(0, 61), np.arange(1000, 1061)])
    h = HandlerHarness(shipped("trips"))
    out = h.run({"V1": {SPEED: (t * S, np.full(t.shape[0], 30.0))}})
    h.close()
    assert [e["time"] for e in out.events_of("fleet.trip.started")] == [0, 1_000_000]
    [ended] = out.events_of("fleet.trip.ended")
    assert (ended["time"], ended["duration_s"]) == (60_000, 60.0)
    assert trip_state(h, "V1")["trip_id"] == "V1-1000000"  # type: ignore[index]


def test_gps_distance_is_the_same_whether_or_not_the_trip_is_split(shipped) -> None:
    t = np.arange(0, 500)
    moving = t < 100
    lat = 34.0 + 0.0001 * np.minimum(t, 99)
    speed = np.where(moving, 40.0, 0.0)

    def batch(lo: int, hi: int) -> dict:
        s = (t >= lo) & (t < hi)
        return {"V1": {SPEED: (t[s] * S, speed[s]), LAT: (t[s] * S, lat[s]), LON: (t[s] * S, np.full(s.sum(), -6.8))}}

    whole = HandlerHarness(shipped("trips"))
    [one] = whole.run(batch(0, 500)).events_of("fleet.trip.ended")
    split = HandlerHarness(shipped("trips"))
    assert split.run(batch(0, 50)).events_of("fleet.trip.ended") == []
    [two] = split.run(batch(50, 500)).events_of("fleet.trip.ended")
    whole.close()
    split.close()
    assert one["distance_km"] == pytest.approx(99 * 0.0111195, rel=1e-3)
    assert two["distance_km"] == pytest.approx(one["distance_km"], abs=1e-6)
    assert "energy_kwh" not in one  # no state of charge sent: the field is absent


def test_still_vehicle_does_not_start_a_trip(shipped) -> None:
    h = HandlerHarness(shipped("trips"))
    out = h.run({"V1": {SPEED: (np.arange(100) * S, np.full(100, 2.0))}})
    h.close()
    assert out.events_of() == []


def test_state_restored_from_the_changelog_continues_the_trip(shipped) -> None:
    """A restarted worker loads the persisted state (as from the table's changelog) and carries on."""
    from pipeline.core.handlers.state import StateStore

    t = np.arange(0, 500)
    speed = np.where(t < 100, 40.0, 0.0)

    def batch(lo: int, hi: int) -> dict:
        s = (t >= lo) & (t < hi)
        return {"V1": {SPEED: (t[s] * S, speed[s])}}

    first = HandlerHarness(shipped("trips"))
    first.run(batch(0, 50))
    changelog = list(first.state.dirty().items())
    first.close()
    restored = StateStore()
    restored.load(changelog)
    second = HandlerHarness(shipped("trips"), state=restored)
    [ended] = second.run(batch(50, 500)).events_of("fleet.trip.ended")
    second.close()
    assert (ended["trip_id"], ended["time"], ended["duration_s"]) == ("V1-0", 99_000, 99.0)


def test_late_readings_from_before_an_open_trip_do_not_break_it(shipped, trip_state) -> None:
    # An open trip started at t=10000 s; a late upload then brings readings from t=100..160 s
    # together with the trip's continuation. Every event time must be a real time, and the
    # open trip must not be ended or restarted by the late data.
    h = HandlerHarness(shipped("trips"))
    t1 = np.arange(10_000, 10_060)
    h.run({"V1": {SPEED: (t1 * S, np.full(t1.shape[0], 30.0))}})
    late = np.arange(100, 160)
    t2 = np.concatenate([late, np.arange(10_060, 10_120)])
    out = h.run({"V1": {SPEED: (t2 * S, np.full(t2.shape[0], 30.0))}})
    h.close()
    times = [e["time"] for e in out.events_of()]
    assert all(0 <= t < 4_102_444_800_000 for t in times), times
    assert out.events_of("fleet.trip.started") == []
    assert trip_state(h, "V1")["trip_id"] == "V1-10000000"  # type: ignore[index]


def test_carried_trip_ends_and_a_new_one_starts_in_the_same_batch(shipped, trip_state) -> None:
    # vehicle V1 carries an open trip into a batch where it pauses longer than stop_s and drives
    # again; V2 (no trip yet) starts one in the same batch and V3 just keeps its open trip.
    h = HandlerHarness(shipped("trips"))
    t1 = np.arange(0, 60)
    first = h.run({"V1": {SPEED: (t1 * S, np.full(60, 30.0))}, "V3": {SPEED: (t1 * S, np.full(60, 30.0))}})
    assert [e["trip_id"] for e in first.events_of("fleet.trip.started")] == ["V1-0", "V3-0"]
    t2 = np.concatenate([np.arange(60, 100), np.arange(1000, 1050)])
    t3 = np.arange(60, 120)
    out = h.run({"V1": {SPEED: (t2 * S, np.full(t2.shape[0], 30.0))},
                 "V2": {SPEED: (t3 * S, np.full(60, 20.0))},
                 "V3": {SPEED: (t3 * S, np.full(60, 25.0))}})
    h.close()
    [ended] = out.events_of("fleet.trip.ended")
    assert (ended["trip_id"], ended["time"], ended["duration_s"]) == ("V1-0", 99_000, 99.0)
    [feat] = out.events_of("fleet.behaviour.features")
    assert feat["trip_id"] == "V1-0" and feat["max_speed_kmh"] == 30.0
    assert [(e["trip_id"], e["time"]) for e in out.events_of("fleet.trip.started")] == [
        ("V1-1000000", 1_000_000), ("V2-60000", 60_000)]
    states = {vin: trip_state(h, vin) for vin in ("V1", "V2", "V3")}
    assert {vin: (st["trip_id"], st["start_t"], st["last_moving_t"], st["max_speed"])  # type: ignore[index]
            for vin, st in states.items()} == {"V1": ("V1-1000000", 1_000_000, 1_049_000, 30.0),
                                               "V2": ("V2-60000", 60_000, 119_000, 20.0),
                                               "V3": ("V3-0", 0, 119_000, 30.0)}
    assert list(states["V3"]) == ["trip_id", "start_t", "last_moving_t", "start_lat", "start_lon",  # type: ignore[arg-type]
                                  "start_odo", "start_soc", "start_fuel", "max_speed", "n_braking",
                                  "n_acceleration", "n_cornering", "speeding_ms", "idle_s",
                                  "pending_n_braking", "pending_n_acceleration",
                                  "pending_n_cornering", "pending_speeding_ms", "pending_idle_s",
                                  "end_lat", "end_lon", "end_odo", "end_soc", "end_fuel", "start_gps_m",
                                  "end_gps_m", "last_report_t", "gps_m", "gps_since_t", "last_fix_t", "last_lat",
                                  "last_lon",
                                  "ahead"]


def test_a_state_stored_with_named_fields_carries_on_the_same(shipped, trip_state) -> None:
    """States written by the version that kept every field under its name are read as they
    are: the trip ends with the same summary as when its state was never converted."""
    from pipeline.core.handlers.state import StateStore

    t_all = np.arange(0, 900)
    full = drive(t_all, (t_all >= 10) & (t_all < 400), [])
    first = {"V1": {k: (tv[0][tv[0] < 300 * S], tv[1][tv[0] < 300 * S]) for k, tv in full.items()}}
    rest = {"V1": {k: (tv[0][tv[0] >= 300 * S], tv[1][tv[0] >= 300 * S]) for k, tv in full.items()}}
    h = HandlerHarness(shipped("trips"))
    h.run(first)
    old = trip_state(h, "V1")
    assert old is not None and old["trip_id"] == "V1-10000" and "odo" not in old
    store = StateStore()
    store.load([("trips/V1", old)])
    h2 = HandlerHarness(shipped("trips"), state=store)
    [kept] = h.run(rest).events_of("fleet.trip.ended")
    [converted] = h2.run(rest).events_of("fleet.trip.ended")
    h.close()
    h2.close()
    assert {k: v for k, v in converted.items() if k != "id"} == {k: v for k, v in kept.items() if k != "id"}
    assert kept["distance_km"] == 3.89  # odometer from the first moving second to the last


def test_a_state_without_some_fields_still_continues_its_trip(shipped) -> None:
    """A stored trip missing the optional fields (absent = unknown) is carried on and ended."""
    from pipeline.core.handlers.state import StateStore

    store = StateStore()
    store.load([("trips/V1", {"trip_id": "V1-0", "start_t": 0, "last_moving_t": 49_000, "dist_m": 100.0})])
    h = HandlerHarness(shipped("trips"), state=store)
    t = np.arange(50, 500)
    [ended] = h.run({"V1": {SPEED: (t * S, np.where(t < 100, 40.0, 0.0))}}).events_of("fleet.trip.ended")
    h.close()
    assert (ended["trip_id"], ended["time"], ended["duration_s"]) == ("V1-0", 99_000, 99.0)
    assert ended["distance_km"] == 0.1  # what the stored trip had accumulated; no GPS here
    assert h.state.get("trips", "V1") is None


def test_harsh_counts_of_open_trips_are_per_vehicle_with_many_vehicles(shipped, trip_state) -> None:
    """Eight vehicles, one harsh braking each while their trips are open: each trip counts one.

    (Events are counted into open trips up to an "open end" far in the future; that end
    once stretched the join's key space until vehicle * span overflowed int64, giving
    counts like [1, 1, 6, 0, 0, 0, 0, 0].)"""
    t_all = np.arange(0, 900)
    moving = (t_all >= 10) & (t_all < 400)
    vins = [f"V{i}" for i in range(8)]

    def part(lo: int, hi: int, brake: bool) -> dict:
        sel = (t_all >= lo) & (t_all < hi)
        return {v: drive(t_all[sel], moving[sel], [100 + 10 * i] if brake else []) for i, v in enumerate(vins)}

    h = HandlerHarness(shipped("harsh_driving"), shipped("speeding"), shipped("idling"), shipped("trips"))
    first = h.run(part(0, 300, brake=True))
    assert len(first.events_of("fleet.driving.harsh_braking")) == 8
    assert [trip_state(h, v)["n_braking"] for v in vins] == [1] * 8
    second = h.run(part(300, 900, brake=False))
    h.close()
    ended = sorted(second.events_of("fleet.trip.ended"), key=lambda e: e["subject"])
    assert [e["subject"] for e in ended] == vins
    assert [e["harsh_events"] for e in ended] == [1] * 8


@pytest.mark.parametrize(("brake_s", "counted"), [(395, 1), (405, 0)])
def test_events_after_the_last_movement_count_only_if_the_trip_goes_on(shipped, brake_s: int, counted: int) -> None:
    """The trip ends at its last movement (399 s); the end is only known once the vehicle has
    stood still for stop_s, two batches later. A harsh braking before the end belongs to the
    trip; one after it does not, even though it arrives while the trip is still open."""
    t_all = np.arange(0, 900)
    moving = (t_all >= 10) & (t_all < 400)

    full = drive(t_all, moving, [])

    def part(lo: int, hi: int) -> dict:  # the 1 Hz signals cut from one drive; the braking burst
        out = {k: (t[(t >= lo * S) & (t < hi * S)], np.asarray(v)[(t >= lo * S) & (t < hi * S)])
               for k, (t, v) in full.items() if k not in (LONG, LAT_ACC)}
        sel = (t_all >= lo) & (t_all < hi)
        burst = drive(t_all[sel], moving[sel], [brake_s] if lo <= brake_s < hi else [])
        out[LONG], out[LAT_ACC] = burst[LONG], burst[LAT_ACC]
        return {"V1": out}

    h = HandlerHarness(shipped("harsh_driving"), shipped("speeding"), shipped("idling"), shipped("trips"))
    outs = [h.run(part(lo, hi)) for lo, hi in ((0, 390), (390, 410), (410, 900))]
    h.close()
    assert sum(len(o.events_of("fleet.driving.harsh_braking")) for o in outs) == 1
    [ended] = outs[2].events_of("fleet.trip.ended")
    assert ended["time"] == 399_000 and ended["harsh_events"] == counted
    [feat] = outs[2].events_of("fleet.behaviour.features")
    assert feat["harsh_braking_per_100km"] == pytest.approx(counted / 3.89 * 100, abs=1e-3)


def test_a_parked_ev_that_reports_only_its_battery_ends_its_trip(shipped) -> None:
    """Ignition off: no more speed, but the SoC once a minute. The trip ends at its last
    movement once a report comes stop_s after it, in a batch with no speed reading at all."""
    h = HandlerHarness(shipped("trips"))
    t = np.arange(0, 120)
    first = h.run({"V1": {SPEED: (t * S, np.where(t < 100, 40.0, 0.0)), SOC: (t * S, np.full(120, 70.0))}})
    assert first.events_of("fleet.trip.ended") == []
    early = np.arange(180, 400, 60)  # parked reports before stop_s has passed: still open
    assert h.run({"V1": {SOC: (early * S, np.full(early.shape[0], 70.0))}}).events_of("fleet.trip.ended") == []
    later = np.arange(420, 700, 60)
    out = h.run({"V1": {SOC: (later * S, np.full(later.shape[0], 70.0))}})
    h.close()
    [ended] = out.events_of("fleet.trip.ended")
    assert (ended["trip_id"], ended["time"], ended["duration_s"]) == ("V1-0", 99_000, 99.0)
    assert out.records[ended["origin"]].key == b"V1"  # the parked report that proved the stop
    assert h.state.get("trips", "V1") is None


def test_gps_fixes_alone_do_not_end_a_trip(shipped, trip_state) -> None:
    """Fixes come on their own topic and may run ahead of the speed readings: they are no
    proof that the vehicle stood still."""
    h = HandlerHarness(shipped("trips"))
    t = np.arange(0, 100)
    h.run({"V1": {SPEED: (t * S, np.full(100, 40.0))}})
    fixes = np.arange(100, 1000, 10)
    out = h.run({"V1": {LAT: (fixes * S, np.full(fixes.shape[0], 34.0)),
                        LON: (fixes * S, np.full(fixes.shape[0], -6.8))}})
    h.close()
    assert out.events_of("fleet.trip.ended") == []
    assert trip_state(h, "V1")["last_moving_t"] == 99_000  # type: ignore[index]


def test_a_trip_waits_for_its_fixes_when_the_gps_lags_the_speed(shipped) -> None:
    """Speed readings come in one batch, the same minutes' fixes in the next (another topic):
    the trip stays open until the fixes reach its end, and its distance is the whole track."""
    t = np.arange(0, 500)
    moving = t < 100
    lat = 34.0 + 0.0001 * np.cumsum(moving)  # ~11 m per moving second, no odometer
    lon = np.full(t.shape[0], -6.8)

    def sensor(lo: int, hi: int) -> dict:
        s = (t >= lo) & (t < hi)
        return {"V1": {SPEED: (t[s] * S, np.where(moving[s], 40.0, 0.0))}}

    def gps(lo: int, hi: int) -> dict:
        s = (t >= lo) & (t < hi)
        return {"V1": {LAT: (t[s] * S, lat[s]), LON: (t[s] * S, lon[s])}}

    h = HandlerHarness(shipped("trips"))
    assert h.run(sensor(0, 50)).events_of("fleet.trip.started") != []
    h.run(gps(0, 50))
    early = h.run(sensor(50, 500))  # still for 400 s, but no fix after t=49 yet
    assert early.events_of("fleet.trip.ended") == []
    out = h.run(gps(50, 500))
    h.close()
    [ended] = out.events_of("fleet.trip.ended")
    assert (ended["time"], ended["duration_s"]) == (99_000, 99.0)
    assert ended["distance_km"] == pytest.approx(99 * 0.0111195, rel=1e-3)


def test_a_trip_does_not_wait_for_fixes_that_stopped_coming(shipped) -> None:
    """A vehicle whose GPS went quiet: after 2 x stop_s of reported stillness the trip ends anyway."""
    t = np.arange(0, 800)
    h = HandlerHarness(shipped("trips"))
    first = t < 60
    h.run({"V1": {SPEED: (t[first] * S, np.full(60, 40.0)), LAT: (t[first] * S, np.full(60, 34.0)),
                  LON: (t[first] * S, np.full(60, -6.8))}})
    rest = (t >= 60) & (t < 500)  # moves until 99, then still; no fixes any more
    assert h.run({"V1": {SPEED: (t[rest] * S, np.where(t[rest] < 100, 40.0, 0.0))}}).events_of(
        "fleet.trip.ended") == []  # still for 400 s < 2 x 300 s
    last = t >= 500
    [ended] = h.run({"V1": {SPEED: (t[last] * S, np.zeros(last.sum()))}}).events_of("fleet.trip.ended")
    h.close()
    assert ended["time"] == 99_000


def test_fixes_far_ahead_of_the_speed_give_no_distance_rather_than_a_wrong_one(shipped) -> None:
    """GPS hours ahead of the speed readings (a backlog): the fixes of the trip's time are no
    longer kept (gps_ahead_s), so the trip has no GPS distance instead of a made-up one."""
    t = np.arange(0, 500)
    far = np.arange(10_000, 20_000, 5)
    fix_t = np.concatenate([t, far])
    lat = np.concatenate([34.0 + 0.0001 * np.minimum(t, 99), np.full(far.shape[0], 35.0)])
    h = HandlerHarness(shipped("trips"))
    h.run({"V1": {LAT: (fix_t * S, lat), LON: (fix_t * S, np.full(fix_t.shape[0], -6.8))}})
    [ended] = h.run({"V1": {SPEED: (t * S, np.where(t < 100, 40.0, 0.0))}}).events_of("fleet.trip.ended")
    h.close()
    assert (ended["time"], ended["duration_s"]) == (99_000, 99.0)
    assert "distance_km" not in ended


def test_fixes_a_little_ahead_of_the_speed_are_read_at_the_trip_times(shipped, trip_state) -> None:
    """GPS a few minutes ahead: the fixes wait as checkpoints until the speed readings say
    where the trip starts and ends."""
    t = np.arange(0, 500)
    lat = 34.0 + 0.0001 * np.minimum(t, 99)
    h = HandlerHarness(shipped("trips"))
    h.run({"V1": {LAT: (t * S, lat), LON: (t * S, np.full(500, -6.8))}})
    assert trip_state(h, "V1")["ahead"]  # type: ignore[index]
    [ended] = h.run({"V1": {SPEED: (t * S, np.where(t < 100, 40.0, 0.0))}}).events_of("fleet.trip.ended")
    h.close()
    assert ended["distance_km"] == pytest.approx(99 * 0.0111195, rel=0.05)  # read at thinned checkpoints
