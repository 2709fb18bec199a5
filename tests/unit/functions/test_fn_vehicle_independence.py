"""Per-vehicle handlers give each vehicle the same events and state whether it shares a batch
with other vehicles or not.

A metamorphic check over simulated fleet traffic: the shipped handler set runs once over
batches holding many vehicles, and once per vehicle over the same batches cut down to that
vehicle's readings. Every per-vehicle handler must produce, for each vehicle, the same
events (every column, ids included, since origins keep pointing at the same records) and
the same stored state. It catches joins that mix vehicles up, such as the int64 key
overflow that once sent harsh-event counts of open trips to the wrong trips.
`charging_demand` aggregates vehicles per grid cell by design and is left out.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.batch import RawRecord, Readings
from pipeline.catalog import load_catalog
from pipeline.clean import Cleaner, load_cleaning_config
from pipeline.events import decode_records
from pipeline.handlers.config import HandlerConfig, load_handler_config
from pipeline.handlers.loader import load_functions
from pipeline.handlers.runner import HandlerRunner
from pipeline.handlers.state import StateStore
from pipeline.simulate import FleetSimulator, SimConfig, to_record

REPO = Path(__file__).resolve().parents[3]
CROSS_VEHICLE = {"charging_demand"}


def fleet_batches(vehicles: int, seconds: int, per_batch: int) -> list[tuple[Readings, list[RawRecord]]]:
    """Clean batches of simulated traffic (one cleaner, as in a worker), about `per_batch` readings each."""
    catalog = load_catalog()
    cleaner = Cleaner(catalog, load_cleaning_config(REPO / "rules" / "cleaning.yaml"))
    sim = FleetSimulator(SimConfig(vehicles=vehicles, duration_s=float(seconds), seed=3))
    topics = {"sensor": sim.config.sensor_topic, "gps": sim.config.gps_topic}
    out: list[tuple[Readings, list[RawRecord]]] = []
    records: list[RawRecord] = []
    n = 0
    for frame in sim.frames():
        rec = to_record(frame, topics)
        records.append(RawRecord(rec.topic, 0, len(records), rec.key, rec.value, rec.headers, rec.timestamp_ms))
        n += frame.n_readings
        if n >= per_batch:
            out.append((cleaner.clean(decode_records(records)[0]).readings, records))
            records, n = [], 0
    if records:
        out.append((cleaner.clean(decode_records(records)[0]).readings, records))
    return out


def with_vins(clean: Readings, vins: list[str], rows: np.ndarray | None = None) -> Readings:
    """The same readings (or some rows of them) over another list of vehicle ids."""
    part = clean.take(rows) if rows is not None else clean
    index = np.array([vins.index(v) for v in clean.vins], dtype=np.int32)
    return dataclasses.replace(part, vehicle=index[part.vehicle], vins=vins)


def runner(config: HandlerConfig) -> HandlerRunner:
    registry = load_functions(REPO / "functions", catalog_names=list(load_catalog().names))
    for name in CROSS_VEHICLE:
        config.handlers.setdefault(name, {})["enabled"] = False
    return HandlerRunner(registry, config, StateStore())


def rows_by_vehicle(events: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Events as comparable rows (all attributes and data fields), grouped by subject vehicle."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for i in range(len(events)):
        attrs = tuple((k, _plain(v[i])) for k, v in sorted(events.attrs.items()))
        data = tuple((k, _plain(v[i])) for k, v in sorted(events.data.items()) if events.is_present(k)[i])
        out.setdefault(str(events.attrs["subject"][i]), []).append((int(events.origin[i]), attrs, data))
    return out


def _plain(x: Any) -> Any:
    if isinstance(x, np.generic):
        x = x.item()
    return None if isinstance(x, float) and np.isnan(x) else x


def run_all(r: HandlerRunner, batches: list[tuple[Readings, list[RawRecord]]]) -> dict[str, list[Any]]:
    events: dict[str, list[Any]] = {}
    for clean, records in batches:
        result = r.run(clean, records)
        assert not result.dead_letters, [(d.stage, d.error) for d in result.dead_letters[:3]]
        for vin, rows in rows_by_vehicle(result.events).items():
            events.setdefault(vin, []).extend(rows)
    return events


def handler_states(r: HandlerRunner, vin: str) -> dict[str, Any]:
    """Every handler's stored state of one vehicle."""
    return {h: r.state_store.get(h, vin) for h in r.registry.names() if r.state_store.get(h, vin) is not None}


SENSITIVE = {  # thresholds low enough that most handlers fire on ordinary simulated driving
    "trips": {"move_kmh": 30.0, "stop_s": 20},
    "idling": {"min_duration_s": 20},
    "speeding": {"limit_kmh": 40.0, "tolerance_kmh": 0.0, "min_duration_ms": 2000},
    "battery_alerts": {"low_soc_pct": 70.0, "soc_rearm_pct": 75.0, "low_12v_v": 12.7, "v12_rearm_v": 12.9,
                       "v12_min_duration_s": 2},
    "harsh_driving": {"longitudinal_ms2": 2.0, "lateral_ms2": 2.0},
}


@pytest.mark.parametrize(("fleet", "overrides", "expect"), [
    ((30, 1200, 8_000), {}, {"fleet.trip.started", "fleet.geofence.entered"}),
    ((40, 3600, 10_000), SENSITIVE,
     {"fleet.trip.ended", "fleet.behaviour.features", "fleet.driving.speeding", "fleet.driving.idling",
      "fleet.driving.harsh_braking", "fleet.driving.harsh_cornering", "fleet.battery.low_soc",
      "fleet.charging.started", "fleet.geofence.exited"}),
], ids=["shipped-thresholds", "sensitive-thresholds"])
def test_each_vehicle_gets_the_same_events_alone_or_in_a_fleet(
        fleet: tuple[int, int, int], overrides: dict[str, Any], expect: set[str]) -> None:
    batches = fleet_batches(*fleet)
    assert len(batches) >= 20  # state has to cross many batch boundaries

    def config() -> HandlerConfig:
        base = load_handler_config(REPO / "functions" / "handlers.yaml")
        for name, values in overrides.items():
            base.handlers.setdefault(name, {}).update(values)
        return base

    # vehicle indexes shifted past a few ids without readings, so that bugs tied to large
    # vehicle indexes show (the alone runs below have every vehicle at index 0)
    padded = [(with_vins(clean, [f"PAD{i}" for i in range(3)] + list(clean.vins)), records)
              for clean, records in batches]
    fleet_runner = runner(config())
    events = run_all(fleet_runner, padded)
    assert len(events) >= 5  # several vehicles produce events, of the kinds this case is about
    assert expect <= {dict(attrs)["type"] for rows in events.values() for _, attrs, _ in rows}
    vins = sorted({clean.vins[v] for clean, _ in batches for v in np.unique(clean.vehicle).tolist()})
    for vin in vins:
        alone_runner = runner(config())
        # the batches with this vehicle's readings only (a handler does nothing for a vehicle
        # without readings in the batch, so batches without it are left out)
        alone_batches = []
        for clean, records in batches:
            mine = clean.vehicle == clean.vins.index(vin) if vin in clean.vins else None
            if mine is not None and mine.any():
                alone_batches.append((with_vins(clean, [vin] + [v for v in clean.vins if v != vin], mine),
                                      records))
        alone = run_all(alone_runner, alone_batches)
        assert set(alone) <= {vin}
        assert alone.get(vin, []) == events.get(vin, []), vin
        assert handler_states(alone_runner, vin) == handler_states(fleet_runner, vin), vin
        alone_runner.close()
    fleet_runner.close()
