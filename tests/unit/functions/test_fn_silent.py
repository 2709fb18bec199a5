"""Shipped handlers and silent vehicles (the worker's idle timer) and the per-vehicle watermark:
an open trip, charging session or idling spell ends once, at its last reading, when its
vehicle falls silent; nothing is emitted for a vehicle with nothing open."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.handlers import HandlerHarness

SPEED, ODO = "Vehicle.Speed", "Vehicle.TraveledDistance"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
LONG, LAT_ACC = "Vehicle.Acceleration.Longitudinal", "Vehicle.Acceleration.Lateral"
IS_CHARGING = "Vehicle.Powertrain.TractionBattery.Charging.IsCharging"
POWER = "Vehicle.Powertrain.TractionBattery.CurrentPower"
ENGINE_SPEED = "Vehicle.Powertrain.CombustionEngine.Speed"
S = 1000
# the trip: moving from 10 s to 399 s at 36 km/h, then standing; hard braking at 100 s and 350 s
T = np.arange(0, 900)
MOVING = (T >= 10) & (T < 400)


def drive(lo: int, hi: int, *, odometer: bool = True, gps: bool = True, speed: bool = True) -> dict:
    sel = (lo <= T) & (hi > T)
    t = T[sel] * S
    out: dict = {}
    if speed:
        out[SPEED] = (t, np.where(MOVING[sel], 36.0, 0.0))
        out[SOC] = (t, (80.0 - 0.01 * np.cumsum(MOVING))[sel])
        if odometer:
            out[ODO] = (t, (1_000_000 + 10.0 * np.cumsum(MOVING))[sel])
        bursts = [b for b in (100, 350) if lo <= b < hi]
        acc_t = np.concatenate([np.arange(b * S, b * S + 600, 100) for b in bursts]) if bursts else np.empty(0)
        out[LONG] = (acc_t, np.tile([-6.0] * 5 + [0.0], len(bursts)))
        out[LAT_ACC] = (acc_t, np.zeros(acc_t.shape[0]))
    if gps:
        out[LAT] = (t, (34.0 + 0.0001 * np.cumsum(MOVING))[sel])
        out[LON] = (t, np.full(t.shape[0], -6.8))
    return {"V1": out}


def harness(shipped) -> HandlerHarness:  # type: ignore[no-untyped-def]
    return HandlerHarness(shipped("harsh_driving"), shipped("speeding"), shipped("idling"), shipped("trips"))


SUMMARY = ("trip_id", "time", "duration_s", "distance_km", "energy_kwh", "harsh_events", "start.lat", "start.lon",
           "end.lat", "end.lon")


@pytest.mark.parametrize("odometer", [True, False], ids=["odometer", "gps"])
def test_a_silent_vehicle_ends_its_open_trip_once_with_the_summary_it_had(shipped, odometer: bool) -> None:
    stopped = harness(shipped)  # the same trip, ended by standing still
    stopped.run(drive(0, 450, odometer=odometer))
    [by_stop] = stopped.run(drive(450, 900, odometer=odometer)).events_of("fleet.trip.ended")
    stopped.close()

    h = harness(shipped)
    first = h.run(drive(0, 450, odometer=odometer))  # still for 50 s only: the trip stays open
    assert first.events_of("fleet.trip.ended") == []
    out = h.silence(["V1"])
    [ended] = out.events_of("fleet.trip.ended")
    assert ended["end_reason"] == "silent" and by_stop["end_reason"] == "stop"
    assert {k: ended[k] for k in SUMMARY} == pytest.approx({k: by_stop[k] for k in SUMMARY})
    assert ended["time"] == 399_000 and ended["duration_s"] == 389.0
    assert ended["distance_km"] == pytest.approx(3.89 if odometer else 389 * 0.0111195, rel=1e-3)
    [features] = out.events_of("fleet.behaviour.features")
    assert features["trip_id"] == ended["trip_id"] and features["max_speed_kmh"] == 36.0
    assert out.records[ended["origin"]] == first.records[0]  # V1's last frame
    assert out.events_of("fleet.trip.started") == []
    # silent again, and the vehicle's standing readings afterwards: no second end
    assert h.silence(["V1"]).events_of() == []
    assert h.run(drive(450, 900, odometer=odometer)).events_of("fleet.trip.ended") == []
    h.close()


def test_a_silent_vehicle_without_an_open_trip_gets_nothing(shipped) -> None:
    h = harness(shipped)
    h.run({"V1": {SPEED: (np.arange(60) * S, np.zeros(60)), LAT: (np.arange(60) * S, np.full(60, 34.0)),
                  LON: (np.arange(60) * S, np.full(60, -6.8))}})
    out = h.silence(["V1"])
    h.close()
    assert out.events_of() == [] and out.dead_letters == []
    assert out.stats["trips"].calls == 1  # called, and chose to emit nothing


def test_after_silence_late_readings_do_not_restart_the_trip_but_new_movement_starts_one(shipped) -> None:
    h = HandlerHarness(shipped("trips"))
    t = np.arange(0, 120)
    h.run({"V1": {SPEED: (t * S, np.full(t.shape[0], 30.0))}})  # trip V1-0 open, last moving at 119 s
    [ended] = h.silence(["V1"]).events_of("fleet.trip.ended")
    assert (ended["trip_id"], ended["time"]) == ("V1-0", 119_000)
    assert h.silence(["V1"]).events_of() == []  # still silent: nothing more, and the trip stays ended
    late = np.arange(60, 120)  # a delayed upload of the trip's own minute
    again = np.arange(2000, 2100)  # and a new drive
    out = h.run({"V1": {SPEED: (np.concatenate([late, again]) * S, np.full(160, 30.0))}})
    h.close()
    assert [e["trip_id"] for e in out.events_of("fleet.trip.started")] == ["V1-2000000"]
    assert out.events_of("fleet.trip.ended") == []


def test_silence_event_ids_are_the_same_for_the_same_inputs(shipped) -> None:
    def ids() -> list[str]:
        h = harness(shipped)
        h.run(drive(0, 450))
        out = h.silence(["V1"])
        h.close()
        return [e["id"] for e in out.events_of()]

    first = ids()
    assert len(first) == 2 and len(set(first)) == 2 and ids() == first


def test_with_a_watermark_a_stopped_trip_waits_for_its_lagging_gps_and_gets_its_distance(shipped) -> None:
    guess = HandlerHarness(shipped("trips"))  # no watermark: the GPS is guessed absent and the trip closes
    [early] = guess.run(drive(0, 700, gps=False, odometer=False)).events_of("fleet.trip.ended")
    guess.close()
    assert "distance_km" not in early or early["distance_km"] == 0.0

    h = HandlerHarness(shipped("trips"))
    speed_only = h.run(drive(0, 700, gps=False, odometer=False), watermark={"V1": 0})  # GPS not delivered yet
    assert speed_only.events_of("fleet.trip.ended") == []
    gps_only = h.run(drive(0, 700, speed=False), watermark={"V1": 699_000})
    h.close()
    [ended] = gps_only.events_of("fleet.trip.ended")
    assert ended["end_reason"] == "stop" and ended["time"] == 399_000
    assert ended["distance_km"] == pytest.approx(389 * 0.0111195, rel=1e-3)



def test_a_silent_vehicle_ends_its_open_charging_session(shipped) -> None:
    t = np.arange(0, 600, 10)
    h = HandlerHarness(shipped("charging"))
    first = h.run({"V1": {IS_CHARGING: (t * S, np.ones(t.shape[0])), SOC: (t * S, 40.0 + t / 60.0),
                          POWER: (t * S, np.full(t.shape[0], 7000.0))}})
    [started] = first.events_of("fleet.charging.started")
    out = h.silence(["V1"])
    [ended] = out.events_of("fleet.charging.ended")
    assert ended["end_reason"] == "silent" and ended["session_id"] == started["session_id"]
    assert ended["time"] == 590_000 and ended["duration_s"] == 590.0
    assert ended["soc_start_pct"] == 40.0 and ended["soc_end_pct"] == pytest.approx(40.0 + 590 / 60.0)
    assert ended["energy_kwh"] == pytest.approx(590 / 60.0 / 100 * 6.1, abs=1e-3)
    assert ended["max_power_kw"] == 7.0
    assert h.silence(["V1"]).events_of() == []  # once
    later = h.run({"V1": {IS_CHARGING: ([5_000_000], [0.0]), SOC: ([5_000_000], [50.0])}})
    h.close()
    assert later.events_of() == []


def test_a_silent_vehicle_ends_its_idling_spell(shipped) -> None:
    t = np.arange(0, 400)
    h = HandlerHarness(shipped("idling"))
    first = h.run({"V1": {SPEED: (t * S, np.zeros(t.shape[0])), ENGINE_SPEED: (t * S, np.full(t.shape[0], 800.0))}})
    assert first.events_of() == []  # still idling at the end of the batch
    out = h.silence(["V1"])
    [idle] = out.events_of("fleet.driving.idling")
    assert idle["end_reason"] == "silent" and (idle["time"], idle["duration_s"]) == (0, 399.0)
    assert h.silence(["V1"]).events_of() == []
    # an idling spell shorter than min_duration_s is not an event, silent or not
    short = HandlerHarness(shipped("idling"))
    short.run({"V2": {SPEED: (t[:60] * S, np.zeros(60)), ENGINE_SPEED: (t[:60] * S, np.full(60, 800.0))}})
    assert short.silence(["V2"]).events_of() == []
    short.close()
    h.close()


def test_a_silent_charging_vehicle_leaves_its_demand_cell(shipped) -> None:
    t = np.arange(0, 3) * 60 * S

    def veh(lat: float) -> dict:
        return {IS_CHARGING: (t, [1] * 3), SOC: (t, [50.0] * 3), LAT: (t, [lat] * 3), LON: (t, [-6.8] * 3),
                POWER: (t, [7000.0] * 3)}

    h = HandlerHarness(shipped("charging_demand"))
    [cell] = h.run({"A": veh(34.0), "B": veh(34.0001)}).events_of("fleet.grid.charging_demand")
    assert (cell["sessions"], cell["expected_kw"]) == (2, pytest.approx(6.1))
    out = h.silence(["A"])
    [row] = out.events_of("fleet.grid.charging_demand")
    assert (row["cell"], row["sessions"], row["expected_kw"]) == (cell["cell"], 1, pytest.approx(3.05))
    assert row["time"] == 120_000 and out.records[row["origin"]].key == b"A"
    assert h.silence(["A"]).events_of() == []  # gone already
    h.close()


def test_a_silent_vehicle_ends_its_speeding_run(shipped) -> None:
    t = np.arange(0, 30)
    h = HandlerHarness(shipped("speeding"))
    assert h.run({"V1": {SPEED: (t * S, np.full(30, 150.0))}}).events_of() == []  # still speeding at the end
    [ev] = h.silence(["V1"]).events_of("fleet.driving.speeding")
    h.close()
    assert ev["end_reason"] == "silent" and (ev["time"], ev["duration_ms"], ev["speed_kmh"]) == (0, 29_000, 150.0)
    assert ev["limit_kmh"] == 130.0


def test_a_trip_ended_by_silence_counts_the_speeding_run_the_silence_closed(shipped) -> None:
    t = np.arange(0, 60)
    h = HandlerHarness(shipped("speeding"), shipped("trips"))
    h.run({"V1": {SPEED: (t * S, np.full(60, 150.0))}})  # trip and speeding run both open
    out = h.silence(["V1"])
    h.close()
    [speeding] = out.events_of("fleet.driving.speeding")
    [ended] = out.events_of("fleet.trip.ended")
    [features] = out.events_of("fleet.behaviour.features")
    assert speeding["duration_ms"] == 59_000 and ended["duration_s"] == 59.0
    assert features["speeding_share"] == 1.0
