"""The shipped handlers' events reach their consumers through the shipped rules in rules/routes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.handlers import HandlerHarness
from pipeline.core.handlers.loader import load_functions

REPO = Path(__file__).resolve().parents[3]
S = 1000


def scenario() -> dict:
    """One vehicle: DTC appears, 12 V and SoC very low, hard braking, a 400 s trip, then charging."""
    t = np.arange(0, 1200) * S  # 1 Hz, 20 minutes
    moving = (t >= 10 * S) & (t < 410 * S)
    charging = t >= 800 * S
    accel_t = np.arange(100 * S, 101 * S, 100)
    return {"VIN00000000000001": {
        "Vehicle.Speed": (t, np.where(moving, 40.0, 0.0)),
        "Vehicle.TraveledDistance": (t, 1_000_000 + 11.0 * np.cumsum(moving)),
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current": (t, np.where(charging, 30.0, 8.0)),
        "Vehicle.Powertrain.TractionBattery.Charging.IsCharging": (t, charging.astype(float)),
        "Vehicle.Powertrain.TractionBattery.CurrentPower": (t, np.where(charging, 7000.0, -3000.0)),
        "Vehicle.LowVoltageBattery.CurrentVoltage": (t, np.full(t.shape[0], 11.2)),
        "Vehicle.OBD.Status.DTCCount": (t, (t >= 50 * S).astype(float)),
        "Vehicle.CurrentLocation.Latitude": (t, 34.0 + 0.0001 * np.cumsum(moving)),
        "Vehicle.CurrentLocation.Longitude": (t, np.full(t.shape[0], -6.8)),
        "Vehicle.Acceleration.Longitudinal": (accel_t, np.r_[np.full(6, -6.0), np.zeros(4)]),
        "Vehicle.Acceleration.Lateral": (accel_t, np.zeros(10)),
    }}


def test_shipped_events_are_routed_to_their_consumers() -> None:
    from pipeline.core.rules.loader import load_rules
    from pipeline.core.rules.router import Router

    registry = load_functions(REPO / "functions", strict=True)
    h = HandlerHarness(*registry.ordered())
    out = h.run(scenario())
    h.close()
    assert out.dead_letters == []
    types = set(out.types())
    assert {"fleet.dtc.appeared", "fleet.battery.low_12v", "fleet.battery.low_soc", "fleet.driving.harsh_braking",
            "fleet.trip.started", "fleet.trip.ended", "fleet.behaviour.features", "fleet.charging.started",
            "fleet.grid.charging_demand"} <= types
    result = Router(load_rules(REPO / "rules" / "routes"), hmac_secret=b"test-key").route(out.events)
    routed = {name: set(batch.attrs["type"].tolist()) for name, batch in result.per_route.items()}
    assert "fleet.grid.charging_demand" in routed["peak-shaving"]
    assert "fleet.behaviour.features" in routed["recommendation"]
    assert {"fleet.dtc.appeared", "fleet.battery.low_12v", "fleet.driving.harsh_braking",
            "fleet.trip.ended"} <= routed["dept.maintenance"]
    assert "fleet.battery.low_soc" in routed["dept.customer-service"]
