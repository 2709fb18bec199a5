"""BatchView: signal selection by (vehicle, signal) blocks, in any input order; joins and helpers."""

from __future__ import annotations

import numpy as np

from pipeline.core.batch import Readings
from pipeline.core.handlers.context import BatchView
from pipeline.core.handlers.testing import make_readings


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


NAMES = ("Vehicle.Speed", "Vehicle.TraveledDistance", "Vehicle.CurrentLocation.Latitude")


def test_wanted_signals_selected_together_match_one_by_one_selection() -> None:
    for seed in range(20):
        readings = random_readings(seed)
        shuffled = readings.take(np.random.default_rng(seed).permutation(len(readings)))
        for r in (readings, shuffled):
            alone = BatchView(r, [])
            together = BatchView(r, [], wanted=(*NAMES, "Vehicle.Nope"))
            for name in (*NAMES, "Vehicle.Nope"):
                a, b = alone.series(name), together.series(name)
                assert together.rows(name).tolist() == alone.rows(name).tolist()
                for x, y in ((a.vehicle, b.vehicle), (a.t, b.t), (a.v, b.v), (a.record, b.record)):
                    assert x.tolist() == y.tolist()
                assert together.vehicles_of(name).tolist() == np.unique(a.vehicle).tolist()


def test_record_at_looks_up_the_same_records_as_record() -> None:
    readings = random_readings(3)
    view = BatchView(readings, [], wanted=NAMES)
    s = view.series("Vehicle.Speed")
    idx = np.arange(len(s))[::2]
    mask = np.zeros(len(s), dtype=bool)
    mask[1::3] = True
    by_index, by_mask = s.record_at(idx), s.record_at(mask)
    assert by_index.tolist() == s.record[idx].tolist()
    assert by_mask.tolist() == s.record[mask].tolist()
    assert s.record_at(np.empty(0, np.int64)).tolist() == []


def test_states_returns_the_same_whether_few_or_many_vehicles_have_state() -> None:
    from pipeline.core.handlers import handler
    from pipeline.core.handlers.context import HandlerContext
    from pipeline.core.handlers.registry import spec_of
    from pipeline.core.handlers.state import StateStore, StateView

    @handler(name="probe", consumes=["Vehicle.Speed"], emits=["fleet.test.probe"], state=True)
    def probe(batch: object, ctx: object) -> None:
        """Reads state only."""

    spec = spec_of(probe)
    assert spec is not None
    data = {vin: {"Vehicle.Speed": ([1, 2], [1.0, 2.0])} for vin in "ABCDEFGH"}
    readings, records = make_readings(data)
    view = BatchView(readings, records)
    vins = view.vins
    for stored in ([], ["C"], ["A", "H"], list("ABCDEFGH")):
        store = StateStore()
        store.load([(f"probe/{v}", {"v": v}) for v in [*stored, "ZZ"]])  # ZZ: not in this batch
        sv = StateView(store, "probe")
        sv.put("D", {"v": "pending"})
        ctx = HandlerContext(spec, view, config={}, state=sv)
        for asked in (np.arange(len(vins)), np.array([2, 3]), np.array([7, 3, 3, 0]), np.empty(0, np.int64)):
            want = sorted(set(asked.tolist()))
            expect = {i: ({"v": "pending"} if vins[i] == "D" else {"v": vins[i]}) for i in want
                      if vins[i] == "D" or vins[i] in stored}
            got = ctx.states(asked)
            assert got == expect
            assert list(got) == sorted(got)


def test_nearest_fix_and_fix_zones_agree_with_location_and_zone_tests() -> None:
    from pipeline.core.handlers import handler
    from pipeline.core.handlers.config import Zone
    from pipeline.core.handlers.context import HandlerInput
    from pipeline.core.handlers.registry import spec_of

    lat_n, lon_n = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"

    @handler(name="where", consumes=[lat_n, lon_n, "Vehicle.Speed"], emits=["fleet.test.where"])
    def where(batch: object, ctx: object) -> None:
        """Reads positions only."""

    spec = spec_of(where)
    assert spec is not None
    rng = np.random.default_rng(4)
    data = {}
    for vin in ("A", "B", "C"):
        t = np.sort(rng.choice(100_000, size=40, replace=False))
        data[vin] = {lat_n: (t, 34.02 + rng.normal(0, 0.002, 40)), lon_n: (t, -6.84 + rng.normal(0, 0.002, 40)),
                     "Vehicle.Speed": (t[::2] + 300, rng.uniform(0, 90, 20))}
    readings, records = make_readings(data)
    zones = (Zone("c", 34.02, -6.84, radius_m=150.0),
             Zone("p", polygon=((34.019, -6.842), (34.022, -6.842), (34.022, -6.839))))
    inp = HandlerInput(BatchView(readings, records), spec)
    s, p = inp.signal("Vehicle.Speed"), inp.positions()
    for max_ms in (200, 5_000):
        fix = inp.nearest_fix(s.vehicle, s.t, max_dist_ms=max_ms)
        lat, lon = inp.location(s.vehicle, s.t, max_dist_ms=max_ms)
        assert np.array_equal(np.where(fix >= 0, p.lat[fix], np.nan), lat, equal_nan=True)
        assert np.array_equal(np.where(fix >= 0, p.lon[fix], np.nan), lon, equal_nan=True)
    bits = inp.fix_zones(zones)
    assert inp.fix_zones(zones) is bits  # computed once per batch
    for i, z in enumerate(zones):
        assert np.array_equal((bits >> i) & 1 == 1, z.contains(p.lat, p.lon))


def test_block_starts_from_cleaning_give_the_same_selection_as_a_scan() -> None:
    """Clean readings carry their (vehicle, signal) block starts; a view that uses them selects
    exactly what a view scanning the same rows finds."""
    import dataclasses
    from pathlib import Path

    from pipeline.core.catalog import load_catalog
    from pipeline.core.clean import Cleaner, load_cleaning_config
    from pipeline.core.handlers.testing import synthetic_fleet

    catalog = load_catalog()
    cleaner = Cleaner(catalog, load_cleaning_config(Path(__file__).resolve().parents[3] / "rules" / "cleaning.yaml"))
    readings, records = synthetic_fleet(40, 20, signal_names=catalog.names)
    clean = cleaner.clean(readings).readings
    assert clean.blocks is not None and clean.blocks.shape[0] > 40
    scanned = dataclasses.replace(clean, blocks=None)
    names = sorted({catalog.names[i] for i in np.unique(clean.signal).tolist()})
    given, scan = BatchView(clean, records, wanted=names), BatchView(scanned, records, wanted=names)
    for a, b in zip(given.blocks(), scan.blocks(), strict=True):
        assert a.tolist() == b.tolist()
    for name in names:
        x, y = given.series(name), scan.series(name)
        assert x.vehicle.tolist() == y.vehicle.tolist() and x.t.tolist() == y.t.tolist()
        assert x.v.tolist() == y.v.tolist() and x.record.tolist() == y.record.tolist()
    assert clean.take(np.arange(len(clean))).blocks is None  # a selection must be scanned again
