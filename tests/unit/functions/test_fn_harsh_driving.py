"""harsh_driving: thresholds, sustain time, peak, context, and events spanning batches."""

from __future__ import annotations

import numpy as np

from pipeline.core.handlers import HandlerHarness

LONG, LAT_ACC = "Vehicle.Acceleration.Longitudinal", "Vehicle.Acceleration.Lateral"
SPEED, LAT, LON = "Vehicle.Speed", "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
T = np.arange(0, 3000, 100)  # 10 Hz, 3 s


def batch(long: np.ndarray, lat: np.ndarray | None = None, t: np.ndarray = T, vin: str = "V1") -> dict:
    n = t.shape[0]
    return {vin: {LONG: (t, long), LAT_ACC: (t, np.zeros(n) if lat is None else lat),
                  SPEED: (t, np.full(n, 60.0)), LAT: (t, np.full(n, 34.0)), LON: (t, np.full(n, -6.8))}}


def test_braking_acceleration_and_cornering_with_known_answers(shipped) -> None:
    long = np.zeros(30)
    long[3:7] = [-5.0, -6.5, -6.0, -4.5]  # 4 samples: 300 ms, peak 6.5
    long[12] = -9.0  # a single spike: 0 ms, not sustained
    long[20:23] = [4.6, 5.0, 4.8]  # 200 ms of acceleration
    long[26:28] = [-4.3, -4.3]  # below the threshold
    lat = np.zeros(30)
    lat[15:18] = [5.6, -6.0, 5.7]  # |lateral| counts either way
    h = HandlerHarness(shipped("harsh_driving"))
    out = h.run(batch(long, lat))
    h.close()
    brake = out.events_of("fleet.driving.harsh_braking")
    assert [(e["time"], e["duration_ms"], e["accel_ms2"]) for e in brake] == [(300, 300, 6.5)]
    assert brake[0]["speed_kmh"] == 60.0 and brake[0]["location.lat"] == 34.0 and brake[0]["vin"] == "V1"
    accel = out.events_of("fleet.driving.harsh_acceleration")
    assert [(e["time"], e["duration_ms"], e["accel_ms2"]) for e in accel] == [(2000, 200, 5.0)]
    corner = out.events_of("fleet.driving.harsh_cornering")
    assert [(e["time"], e["duration_ms"], e["accel_ms2"]) for e in corner] == [(1500, 200, 6.0)]


def test_thresholds_come_from_config(shipped) -> None:
    long = np.zeros(30)
    long[3:7] = -4.0
    h = HandlerHarness(shipped("harsh_driving"), config={"harsh_driving": {"longitudinal_ms2": 3.5}})
    out = h.run(batch(long))
    h.close()
    assert len(out.events_of("fleet.driving.harsh_braking")) == 1


def test_a_braking_event_spanning_two_batches_is_one_event(shipped) -> None:
    h = HandlerHarness(shipped("harsh_driving"))
    first = np.zeros(30)
    first[27:] = [-5.0, -7.0, -5.5]  # still braking at the end of the batch
    out1 = h.run(batch(first))
    assert out1.events_of() == []
    second = np.zeros(30)
    second[:2] = [-6.0, -5.0]
    out2 = h.run(batch(second, t=T + 3000))
    events = out2.events_of("fleet.driving.harsh_braking")
    assert [(e["time"], e["duration_ms"], e["accel_ms2"]) for e in events] == [(2700, 400, 7.0)]
    assert events[0]["speed_kmh"] == 60.0  # context from where it started
    assert h.state.get("harsh_driving", "V1") is None
    h.close()


def test_a_run_that_ends_exactly_at_the_batch_boundary_is_emitted_next_batch(shipped) -> None:
    h = HandlerHarness(shipped("harsh_driving"))
    first = np.zeros(30)
    first[28:] = -6.0
    assert h.run(batch(first)).events_of() == []
    out = h.run(batch(np.zeros(30), t=T + 3000))
    assert [(e["time"], e["duration_ms"]) for e in out.events_of()] == [(2800, 100)]
    h.close()


def test_vehicles_are_independent(shipped) -> None:
    long_a, long_b = np.zeros(30), np.zeros(30)
    long_a[:5] = -6.0
    long_b[29] = -6.0
    data = {**batch(long_a, vin="A"), **batch(long_b, vin="B")}
    h = HandlerHarness(shipped("harsh_driving"))
    out = h.run(data)
    h.close()
    assert [e["vin"] for e in out.events_of()] == ["A"]
