"""geofence enter/exit (circle and polygon, across batches); charging sessions; charging demand."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.handlers import HandlerHarness, Zone

LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
IS_CHARGING = "Vehicle.Powertrain.TractionBattery.Charging.IsCharging"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
POWER = "Vehicle.Powertrain.TractionBattery.CurrentPower"
S = 1000
ZONES = (Zone("yard", lat=34.0, lon=-6.8, radius_m=200),
         Zone("square", polygon=((34.01, -6.81), (34.01, -6.79), (34.03, -6.79), (34.03, -6.81))))


def fixes(lat: list[float], lon: list[float], t0: int = 0) -> dict:
    t = t0 + np.arange(len(lat)) * S
    return {LAT: (t, lat), LON: (t, lon)}


def test_enter_and_exit_circle_and_polygon(shipped) -> None:
    lat = [33.99, 34.0, 34.0005, 34.005, 34.02, 34.02, 34.05]
    lon = [-6.8] * 7
    h = HandlerHarness(shipped("geofence"), zones=ZONES)
    out = h.run({"V1": fixes(lat, lon)})
    h.close()
    rows = sorted((e["time"], e["type"].rsplit(".", 1)[1], e["zone"]) for e in out.events_of())
    assert rows == [(1000, "entered", "yard"), (3000, "exited", "yard"), (4000, "entered", "square"),
                    (6000, "exited", "square")]
    entered = next(e for e in out.events_of("fleet.geofence.entered") if e["zone"] == "yard")
    assert entered["location.lat"] == 34.0 and entered["vin"] == "V1"


def test_crossing_between_batches_is_seen(shipped) -> None:
    h = HandlerHarness(shipped("geofence"), zones=ZONES)
    first = h.run({"V1": fixes([33.99, 34.0], [-6.8, -6.8])})
    assert [e["zone"] for e in first.events_of("fleet.geofence.entered")] == ["yard"]
    assert h.state.get("geofence", "V1") == {"inside": ["yard"]}
    still = h.run({"V1": fixes([34.0001, 34.0], [-6.8, -6.8], t0=2 * S)})
    assert still.events_of() == []
    out = h.run({"V1": fixes([34.1], [-6.8], t0=4 * S)})
    h.close()
    assert [(e["type"], e["zone"], e["time"]) for e in out.events_of()] == [("fleet.geofence.exited", "yard", 4000)]
    assert h.state.get("geofence", "V1") is None


def charging_batch(t_s: np.ndarray, on: list[int], soc: list[float], kw: float) -> dict:
    t = t_s * S
    return {"V1": {IS_CHARGING: (t, on), SOC: (t, soc), POWER: (t, np.full(t.shape[0], kw * 1000)),
                   LAT: (t, np.full(t.shape[0], 34.0)), LON: (t, np.full(t.shape[0], -6.8))}}


def test_charging_session_in_one_batch(shipped) -> None:
    t = np.arange(0, 8) * 60
    h = HandlerHarness(shipped("charging"))
    out = h.run(charging_batch(t, [0, 1, 1, 1, 1, 1, 0, 0], [40, 40, 45, 50, 55, 60, 60, 60], kw=7.0))
    h.close()
    [start] = out.events_of("fleet.charging.started")
    assert (start["time"], start["session_id"], start["soc_pct"], start["charger_kind"]) == (60_000, "V1-60000", 40.0, "ac")
    [end] = out.events_of("fleet.charging.ended")
    assert end["session_id"] == "V1-60000" and end["time"] == 300_000 and end["duration_s"] == 240.0
    assert (end["soc_start_pct"], end["soc_end_pct"]) == (40.0, 60.0)
    assert end["energy_kwh"] == pytest.approx(0.2 * 6.1) and end["max_power_kw"] == 7.0
    assert end["location.lat"] == 34.0


def test_dc_session_spanning_batches_keeps_its_id(shipped) -> None:
    h = HandlerHarness(shipped("charging"))
    first = h.run(charging_batch(np.arange(0, 5) * 60, [0, 1, 1, 1, 1], [20, 20, 30, 40, 50], kw=50.0))
    [start] = first.events_of("fleet.charging.started")
    assert start["charger_kind"] == "dc" and first.events_of("fleet.charging.ended") == []
    second = h.run(charging_batch(np.arange(5, 9) * 60, [1, 1, 0, 0], [60, 70, 70, 70], kw=50.0))
    h.close()
    [end] = second.events_of("fleet.charging.ended")
    assert end["session_id"] == start["session_id"] and end["duration_s"] == 300.0
    assert end["energy_kwh"] == pytest.approx(0.5 * 6.1)


def test_charging_demand_per_cell(shipped) -> None:
    t = np.arange(0, 3) * 60 * S

    def veh(lat: float, charging: int, soc: float, kw: float | None) -> dict:
        d = {IS_CHARGING: (t, [charging] * 3), SOC: (t, [soc] * 3), LAT: (t, [lat] * 3), LON: (t, [-6.8] * 3)}
        if kw is not None:
            d[POWER] = (t, [kw * 1000] * 3)
        return d

    h = HandlerHarness(shipped("charging_demand"))
    out = h.run({"A": veh(34.0, 1, 50, 7.0),     # needs 3.05 kWh < 7 kWh in the hour -> 3.05 kW
                 "B": veh(34.0001, 1, 90, 2.0),  # needs 0.61 kWh < 2 kWh -> 0.61 kW
                 "C": veh(35.0, 1, 0, None),     # default 7 kW, needs 6.1 -> 6.1 kW, other cell
                 "D": veh(34.0, 0, 10, None)})   # parked, not charging
    rows = sorted(out.events_of("fleet.grid.charging_demand"), key=lambda e: e["cell_lat"])
    assert [(r["sessions"], r["expected_kw"]) for r in rows] == [(2, pytest.approx(3.66)), (1, pytest.approx(6.1))]
    assert rows[0]["subject"] == rows[0]["cell"] and "vin" not in rows[0] and len(rows[0]["cell"]) == 5
    assert abs(rows[0]["cell_lat"] - 34.0) < 0.05 and rows[0]["partition"] == 0
    # B stops charging: its cell is updated at once
    t2 = t + 10 * 60 * S
    nxt = h.run({"B": {IS_CHARGING: (t2, [0, 0, 0]), SOC: (t2, [95] * 3), LAT: (t2, [34.0001] * 3),
                       LON: (t2, [-6.8] * 3)}})
    h.close()
    [row] = nxt.events_of("fleet.grid.charging_demand")
    assert (row["sessions"], row["expected_kw"], row["cell"]) == (1, pytest.approx(3.05), rows[0]["cell"])
