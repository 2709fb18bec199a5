"""BatchView: signal selection by (vehicle, signal) blocks, in any input order; joins and helpers."""

from __future__ import annotations

import numpy as np

from pipeline.batch import Readings
from pipeline.handlers.context import BatchView
from pipeline.handlers.testing import make_readings


def random_readings(seed: int) -> Readings:
    rng = np.random.default_rng(seed)
    data = {}
    for vin in ("A", "B", "C"):
        sigs = {}
        for name in ("Vehicle.Speed", "Vehicle.TraveledDistance", "Vehicle.CurrentLocation.Latitude"):
            if rng.random() < 0.8:
                t = np.sort(rng.choice(10_000, size=int(rng.integers(1, 20)), replace=False))
                sigs[name] = (t, rng.normal(size=t.shape[0]))
        data[vin] = sigs
    readings, _ = make_readings(data)
    return readings


def expected(readings: Readings, name: str) -> list[tuple[int, int, float]]:
    sid = readings.signal_names.index(name)
    m = readings.signal == sid
    rows = sorted(zip(readings.vehicle[m].tolist(), readings.t[m].tolist(), readings.value[m].tolist(), strict=True))
    return rows


def test_series_match_a_plain_selection_sorted_or_shuffled() -> None:
    for seed in range(20):
        readings = random_readings(seed)
        shuffled = readings.take(np.random.default_rng(seed).permutation(len(readings)))
        for r in (readings, shuffled):
            view = BatchView(r, [])
            for name in ("Vehicle.Speed", "Vehicle.TraveledDistance", "Vehicle.CurrentLocation.Latitude"):
                s = view.series(name)
                got = list(zip(s.vehicle.tolist(), s.t.tolist(), s.v.tolist(), strict=True))
                assert got == expected(readings, name)


def test_first_record_and_vehicles_of() -> None:
    readings, records = make_readings({"A": {"Vehicle.Speed": ([5], [1.0])},
                                       "B": {"Vehicle.TraveledDistance": ([1], [2.0])}})
    view = BatchView(readings, records)
    assert view.first_record().tolist() == [0, 1]
    assert view.vehicles_of("Vehicle.Speed").tolist() == [0]
    assert view.vehicles_of("Vehicle.Nope").tolist() == []
