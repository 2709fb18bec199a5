"""speeding and idling: absolute, zone and posted limits; engine/EV on while still; across batches."""

from __future__ import annotations

import numpy as np

from pipeline.core.handlers import HandlerHarness

SPEED, LAT, LON = "Vehicle.Speed", "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
POSTED = "Vehicle.Private.SpeedLimit"
RUNNING = "Vehicle.Powertrain.CombustionEngine.IsRunning"
POWER = "Vehicle.Powertrain.TractionBattery.CurrentPower"
S = 1000


def test_speeding_over_the_absolute_limit_for_long_enough(shipped) -> None:
    t = np.arange(0, 40) * S
    v = np.full(40, 100.0)
    v[5:20] = 140.0  # 15 readings over 135 -> 14 s
    v[25:30] = 150.0  # 4 s: too short
    h = HandlerHarness(shipped("speeding"))
    out = h.run({"V1": {SPEED: (t, v)}})
    h.close()
    ev = out.events_of("fleet.driving.speeding")
    assert [(e["time"], e["duration_ms"], e["speed_kmh"], e["limit_kmh"]) for e in ev] == [(5000, 14000, 140.0, 130.0)]


def test_zone_limit_applies_inside_the_zone(shipped, shipped_zones) -> None:
    depot = next(z for z in shipped_zones if z.name == "depot-rabat")
    t = np.arange(0, 30) * S
    v = np.full(30, 40.0)  # fine on the road, too fast in the depot (20 + 5)
    lat = np.where(np.arange(30) < 15, depot.lat, depot.lat + 0.05)
    h = HandlerHarness(shipped("speeding"), zones=shipped_zones)
    out = h.run({"V1": {SPEED: (t, v), LAT: (t, lat), LON: (t, np.full(30, depot.lon))}})
    h.close()
    ev = out.events_of("fleet.driving.speeding")
    assert [(e["time"], e["duration_ms"], e["limit_kmh"]) for e in ev] == [(0, 14000, 20.0)]
    assert abs(ev[0]["location.lat"] - depot.lat) < 1e-9


def test_posted_limit_from_the_vehicle(shipped) -> None:
    t = np.arange(0, 20) * S
    h = HandlerHarness(shipped("speeding"))
    v = np.full(20, 70.0)
    v[-1] = 40.0  # the run must end within the batch to be reported here
    out = h.run({"V1": {SPEED: (t, v), POSTED: (t[:1], [50.0])}})
    h.close()
    ev = out.events_of("fleet.driving.speeding")
    assert [(e["limit_kmh"], e["duration_ms"]) for e in ev] == [(50.0, 18000)]


def test_speeding_spanning_batches_is_one_event(shipped) -> None:
    h = HandlerHarness(shipped("speeding"))
    t = np.arange(0, 10) * S
    assert h.run({"V1": {SPEED: (t, np.full(10, 150.0))}}).events_of() == []
    v2 = np.full(10, 100.0)
    v2[:5] = 160.0
    out = h.run({"V1": {SPEED: (t + 10 * S, v2)}})
    h.close()
    assert [(e["time"], e["duration_ms"], e["speed_kmh"]) for e in out.events_of()] == [(0, 14000, 160.0)]


def test_idling_with_engine_running(shipped) -> None:
    t = np.arange(0, 700, 10) * S  # every 10 s for 700 s
    v = np.zeros(70)
    v[40:] = 30.0  # moves off after 400 s
    h = HandlerHarness(shipped("idling"))
    out = h.run({"V1": {SPEED: (t, v), RUNNING: (t, np.ones(70)), LAT: (t, np.full(70, 34.0)),
                        LON: (t, np.full(70, -6.8))}})
    h.close()
    ev = out.events_of("fleet.driving.idling")
    assert [(e["time"], e["duration_s"], e["location.lat"]) for e in ev] == [(0, 390.0, 34.0)]


def test_no_idling_when_switched_off_and_ev_idling_from_battery_draw(shipped) -> None:
    t = np.arange(0, 700, 10) * S
    v = np.zeros(70)
    v[-1] = 20.0
    h = HandlerHarness(shipped("idling"))
    off = h.run({"OFF": {SPEED: (t, v), RUNNING: (t, np.zeros(70))}})
    ev = h.run({"EV": {SPEED: (t, v), POWER: (t, np.full(70, -1500.0))}})
    quiet = h.run({"EV2": {SPEED: (t, v), POWER: (t, np.full(70, -100.0))}})
    h.close()
    assert off.events_of() == [] and quiet.events_of() == []
    assert [e["duration_s"] for e in ev.events_of()] == [680.0]


def test_idling_across_batches(shipped) -> None:
    h = HandlerHarness(shipped("idling"))
    t = np.arange(0, 200, 10) * S
    assert h.run({"V1": {SPEED: (t, np.zeros(20)), RUNNING: (t, np.ones(20))}}).events_of() == []
    v = np.zeros(20)
    v[15:] = 25.0
    out = h.run({"V1": {SPEED: (t + 200 * S, v), RUNNING: (t + 200 * S, np.ones(20))}})
    h.close()
    assert [(e["time"], e["duration_s"]) for e in out.events_of()] == [(0, 340.0)]


def test_zone_limits_hold_for_readings_slower_than_the_absolute_limit_only(shipped, shipped_zones) -> None:
    """Only readings faster than the lowest zone limit are located; the result is unchanged."""
    depot = next(z for z in shipped_zones if z.name == "depot-rabat")
    t = np.arange(0, 40) * S
    v = np.where(np.arange(40) % 4 == 0, 10.0, 28.0)  # mostly above the depot's 20 + 5, briefly below
    v[30:] = 22.0  # still in the depot, within the tolerance
    h = HandlerHarness(shipped("speeding"), zones=shipped_zones)
    out = h.run({"V1": {SPEED: (t, v), LAT: (t, np.full(40, depot.lat)), LON: (t, np.full(40, depot.lon))}})
    h.close()
    assert out.events_of("fleet.driving.speeding") == []  # every 4th reading breaks the run into 3 s pieces
    h = HandlerHarness(shipped("speeding"), config={"speeding": {"min_duration_ms": 2000}}, zones=shipped_zones)
    out = h.run({"V1": {SPEED: (t, v), LAT: (t, np.full(40, depot.lat)), LON: (t, np.full(40, depot.lon))}})
    h.close()
    ev = out.events_of("fleet.driving.speeding")
    assert [(e["time"], e["duration_ms"], e["limit_kmh"]) for e in ev] == [(k * S, 2000, 20.0) for k in (1, 5, 9, 13, 17,
                                                                                                          21, 25)]
    assert all(abs(e["location.lat"] - depot.lat) < 1e-9 for e in ev)
