"""Cleaning gives each vehicle the same result whether it shares a batch with others or not.

A metamorphic check over simulated traffic with the default fault mix: one cleaner cleans
fleet batches; then, per vehicle, a fresh cleaner cleans the same batches cut down to that
vehicle's records. For every vehicle, the clean rows (signal, time, value bit for bit,
repaired and late flags) and the outcome of every input reading must be the same. Cleaning
keeps history per series, so the check runs over many batches.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from pipeline.core.batch import RawRecord
from pipeline.core.catalog import load_catalog
from pipeline.core.clean import Cleaner, load_cleaning_config
from pipeline.core.events import decode_records
from pipeline.tools.simulate import FleetSimulator, SimConfig, to_record

REPO = Path(__file__).resolve().parents[2]


def record_batches(vehicles: int, seconds: int, per_batch: int) -> list[list[RawRecord]]:
    sim = FleetSimulator(SimConfig(vehicles=vehicles, duration_s=float(seconds), seed=11))
    topics = {"sensor": sim.config.sensor_topic, "gps": sim.config.gps_topic}
    out: list[list[RawRecord]] = []
    batch: list[RawRecord] = []
    n = 0
    for offset, frame in enumerate(sim.frames()):
        rec = to_record(frame, topics)
        batch.append(RawRecord(rec.topic, 0, offset, rec.key, rec.value, rec.headers, rec.timestamp_ms))
        n += frame.n_readings
        if n >= per_batch:
            out.append(batch)
            batch, n = [], 0
    if batch:
        out.append(batch)
    return out


def per_vehicle(cleaner: Cleaner, records: list[RawRecord], now_ms: int,
                into: dict[str, dict[str, collections.Counter[Any]]]) -> None:
    """Clean one batch; add each vehicle's clean rows and input outcomes to `into`."""
    decoded = decode_records(records)[0]
    res = cleaner.clean(decoded, now_ms=now_ms)
    c = res.readings
    names = c.signal_names
    for i in range(len(c)):
        vin = c.vins[int(c.vehicle[i])]
        row = (names[int(c.signal[i])], int(c.t[i]), float(c.value[i]).hex(), bool(res.repaired[i]),
               bool(res.late[i]))
        into.setdefault(vin, {"rows": collections.Counter(), "outcomes": collections.Counter()})["rows"][row] += 1
    in_names = decoded.signal_names
    for i in range(len(decoded)):
        vin = decoded.vins[int(decoded.vehicle[i])]
        key = (in_names[int(decoded.signal[i])], int(decoded.t[i]), res.reasons[int(res.outcome[i])])
        into.setdefault(vin, {"rows": collections.Counter(), "outcomes": collections.Counter()})["outcomes"][key] += 1


def test_each_vehicle_is_cleaned_the_same_alone_or_in_a_fleet() -> None:
    catalog = load_catalog()
    config = load_cleaning_config(REPO / "rules" / "cleaning.yaml")
    batches = record_batches(vehicles=40, seconds=1800, per_batch=10_000)
    assert len(batches) >= 20
    now = [max(r.timestamp_ms for r in b) + 1000 for b in batches]

    fleet: dict[str, dict[str, collections.Counter[Any]]] = {}
    cleaner = Cleaner(catalog, config)
    for records, now_ms in zip(batches, now, strict=True):
        per_vehicle(cleaner, records, now_ms, fleet)
    reasons = collections.Counter(k[2] for v in fleet.values() for k in v["outcomes"].elements())
    assert len(fleet) >= 10 and len(reasons) >= 4, reasons  # many vehicles, several outcomes

    for vin in sorted(fleet):
        alone: dict[str, dict[str, collections.Counter[Any]]] = {}
        own = Cleaner(catalog, config)
        key = vin.encode()
        for records, now_ms in zip(batches, now, strict=True):
            mine = [r for r in records if r.key == key]
            if mine:
                per_vehicle(own, mine, now_ms, alone)
        assert set(alone) == {vin}
        assert alone[vin]["outcomes"] == fleet[vin]["outcomes"], vin
        assert alone[vin]["rows"] == fleet[vin]["rows"], vin
