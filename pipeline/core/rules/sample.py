"""Synthetic derived-event batches with the fleet's event types, for benchmarks and tests.

Columns are built directly (no per-event dicts), with the data fields of each event type
(see the shared vocabulary), presence masks for fields only some types carry, a pool of
vehicles around a few cities, and deterministic content for a given seed.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.batch import EventBatch, deterministic_id

#: Event type -> (relative frequency, data fields). `location` stands for location.lat/lon.
EVENT_TYPES: dict[str, tuple[float, tuple[str, ...]]] = {
    "fleet.driving.harsh_braking": (12, ("accel_ms2", "duration_ms", "speed_kmh", "location")),
    "fleet.driving.harsh_acceleration": (10, ("accel_ms2", "duration_ms", "speed_kmh", "location")),
    "fleet.driving.harsh_cornering": (8, ("accel_ms2", "duration_ms", "speed_kmh", "location")),
    "fleet.driving.speeding": (12, ("speed_kmh", "limit_kmh", "duration_ms", "location")),
    "fleet.driving.idling": (8, ("duration_s", "location")),
    "fleet.trip.started": (6, ("trip_id", "location", "odometer_km")),
    "fleet.trip.ended": (6, ("trip_id", "duration_s", "distance_km", "energy_kwh", "fuel_l", "harsh_events",
                             "start", "end")),
    "fleet.geofence.entered": (5, ("zone", "location")),
    "fleet.geofence.exited": (5, ("zone", "location")),
    "fleet.charging.started": (3, ("session_id", "soc_pct", "location", "charger_kind")),
    "fleet.charging.ended": (3, ("session_id", "energy_kwh", "duration_s", "soc_start_pct", "soc_end_pct",
                                 "max_power_kw", "location")),
    "fleet.grid.charging_demand": (2, ("cell", "cell_lat", "cell_lon", "horizon_start", "expected_kw", "sessions")),
    "fleet.battery.low_soc": (4, ("soc_pct", "location")),
    "fleet.battery.low_12v": (2, ("voltage_v",)),
    "fleet.dtc.appeared": (3, ("dtc_count", "previous_count")),
    "fleet.dtc.cleared": (2, ("dtc_count", "previous_count")),
    "fleet.behaviour.features": (6, ("trip_id", "distance_km", "duration_s", "mean_speed_kmh", "max_speed_kmh",
                                     "harsh_braking_per_100km", "harsh_accel_per_100km",
                                     "harsh_cornering_per_100km", "speeding_share", "idle_share",
                                     "energy_kwh_per_100km")),
}
CITIES = ((48.8566, 2.3522), (33.5731, -7.5898), (52.5200, 13.4050), (40.4168, -3.7038))
STRING_FIELDS = ("trip_id", "zone", "session_id", "charger_kind", "cell")
INT_FIELDS = ("duration_ms", "harsh_events", "horizon_start", "sessions", "dtc_count", "previous_count")


def synthetic_events(n: int, *, seed: int = 7, vehicles: int = 2000, start_ms: int = 1_700_000_000_000) -> EventBatch:
    """A batch of `n` derived events mixing every event type, with realistic value ranges."""
    rng = np.random.default_rng(seed)
    names = list(EVENT_TYPES)
    weights = np.array([EVENT_TYPES[t][0] for t in names], dtype=float)
    type_code = rng.choice(len(names), size=n, p=weights / weights.sum())
    vins = np.array([f"VF1AG000{seed % 10}{i:08d}" for i in range(vehicles)], dtype=object)
    vehicle = rng.integers(0, vehicles, size=n)
    vin = vins[vehicle]
    home = np.array(CITIES)[vehicle % len(CITIES)]
    lat = home[:, 0] + rng.normal(0, 0.08, n)
    lon = home[:, 1] + rng.normal(0, 0.08, n)
    time = start_ms + np.sort(rng.integers(0, 3_600_000, size=n))
    type_names = np.array(names, dtype=object)
    grid = names.index("fleet.grid.charging_demand")
    is_grid = type_code == grid
    cells = np.array([f"u{c:04x}" for c in range(512)], dtype=object)
    cell = cells[rng.integers(0, 512, size=n)]
    subject = np.where(is_grid, cell, vin)
    source = np.where(is_grid, np.array(["/grid/cells/" + c for c in cells], dtype=object)[rng.integers(0, 512, size=n)],
                      np.array(["/vehicles/" + v for v in vins], dtype=object)[vehicle])
    ids = np.array([deterministic_id("vehicle.sensor.raw", seed, i) for i in range(n)], dtype=object)
    attrs = {"id": ids, "type": type_names[type_code], "source": source, "subject": subject,
             "partitionkey": subject, "time": time.astype(np.int64)}
    data: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}

    def field_rows(name: str) -> np.ndarray:
        has = np.zeros(len(names), dtype=bool)
        for k, t in enumerate(names):
            has[k] = name in EVENT_TYPES[t][1]
        return np.asarray(has[type_code])

    all_fields = dict.fromkeys(f for t in names for f in EVENT_TYPES[t][1])
    values: dict[str, np.ndarray] = {
        "accel_ms2": rng.normal(-6.0, 1.5, n), "duration_ms": rng.integers(200, 4000, n),
        "speed_kmh": rng.gamma(6.0, 9.0, n), "limit_kmh": rng.choice([30.0, 50.0, 80.0, 110.0, 130.0], n),
        "duration_s": rng.gamma(2.0, 300.0, n), "odometer_km": rng.uniform(1000, 90000, n),
        "distance_km": rng.gamma(2.0, 8.0, n), "energy_kwh": rng.gamma(2.0, 4.0, n),
        "fuel_l": np.zeros(n), "harsh_events": rng.poisson(1.5, n),
        "zone": np.array(["depot-north", "depot-south", "city-centre", "test-track", "customer-site"], dtype=object)[rng.integers(0, 5, n)],
        "session_id": np.array([f"cs-{i:07d}" for i in rng.integers(0, 10_000_000, n)], dtype=object),
        "trip_id": np.array([f"trip-{i:07d}" for i in rng.integers(0, 10_000_000, n)], dtype=object),
        "soc_pct": rng.uniform(2, 95, n), "charger_kind": np.array(["ac", "dc"], dtype=object)[rng.integers(0, 2, n)],
        "soc_start_pct": rng.uniform(5, 50, n), "soc_end_pct": rng.uniform(50, 100, n),
        "max_power_kw": rng.choice([7.4, 11.0, 22.0, 50.0, 150.0], n), "cell": cell,
        "cell_lat": np.round(lat, 3), "cell_lon": np.round(lon, 3), "horizon_start": time + 900_000,
        "expected_kw": rng.gamma(3.0, 40.0, n), "sessions": rng.integers(1, 40, n),
        "voltage_v": rng.normal(12.1, 0.4, n), "dtc_count": rng.integers(0, 6, n), "previous_count": rng.integers(0, 6, n),
        "mean_speed_kmh": rng.gamma(5.0, 8.0, n), "max_speed_kmh": rng.gamma(9.0, 12.0, n),
        "harsh_braking_per_100km": rng.gamma(1.5, 2.0, n), "harsh_accel_per_100km": rng.gamma(1.5, 2.0, n),
        "harsh_cornering_per_100km": rng.gamma(1.5, 1.5, n), "speeding_share": rng.beta(2, 12, n),
        "idle_share": rng.beta(2, 8, n), "energy_kwh_per_100km": rng.normal(14.0, 2.5, n),
    }
    data["vin"] = vin
    present["vin"] = ~is_grid
    for name in all_fields:
        rows = field_rows(name)
        if name in ("location", "start", "end"):
            shift = 0.0 if name != "end" else 0.02
            data[f"{name}.lat"] = np.where(rows, lat + shift, np.nan)
            data[f"{name}.lon"] = np.where(rows, lon - shift, np.nan)
            present[f"{name}.lat"] = rows
            present[f"{name}.lon"] = rows
            continue
        column = values[name]
        if column.dtype == object:
            column = column.copy()
            column[~rows] = None
        elif name in INT_FIELDS:
            column = np.where(rows, column, 0).astype(np.int64)
        else:
            column = np.where(rows, column, np.nan).astype(np.float64)
        data[name] = column
        present[name] = rows
    return EventBatch(attrs=attrs, data=data, present=present, origin=np.arange(n, dtype=np.int64) // 4)
