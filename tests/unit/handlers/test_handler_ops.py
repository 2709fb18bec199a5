"""Vectorised building blocks: runs, carried runs, joins, ranges and geometry."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.handlers import ops


def test_runs_split_by_vehicle_gap_and_condition() -> None:
    vehicle = np.array([0, 0, 0, 0, 1, 1, 1])
    t = np.array([0, 100, 200, 900, 0, 100, 200])
    cond = np.array([True, True, False, True, True, True, True])
    first, last = ops.runs(vehicle, t, cond, max_gap_ms=300)
    assert first.tolist() == [0, 3, 4]
    assert last.tolist() == [1, 3, 6]


def test_track_runs_continues_a_carried_run_and_closes_another() -> None:
    vehicle = np.array([0, 0, 1, 1])
    t = np.array([1000, 1100, 1000, 1100])
    cond = np.array([True, False, False, True])
    peak = np.array([5.0, 0.0, 0.0, 7.0])
    carried = {0: {"start_t": 800, "last_t": 900, "peak": 6.0},
               1: {"start_t": 700, "last_t": 900, "peak": 9.0},
               2: {"start_t": 100, "last_t": 200, "peak": 1.0}}
    runs = ops.track_runs(vehicle, t, cond, peak, max_gap_ms=150, carried=carried)
    rows = sorted(zip(runs.vehicle.tolist(), runs.start_t.tolist(), runs.end_t.tolist(), runs.peak.tolist(),
                      runs.open.tolist(), runs.carried.tolist(), strict=True))
    assert rows == [
        (0, 800, 1000, 6.0, False, True),   # continued from the carried run, then ended
        (1, 700, 900, 9.0, False, True),    # carried run closed: first sample is below threshold
        (1, 1100, 1100, 7.0, True, False),  # a new run reaching the end of the batch
    ]  # vehicle 2 has no samples here: its run stays as stored (not listed)


def test_asof_and_nearest_stay_within_a_vehicle() -> None:
    sv, st = np.array([0, 0, 1]), np.array([100, 300, 150])
    qv, qt = np.array([0, 0, 1, 1, 2]), np.array([50, 250, 100, 200, 100])
    assert ops.asof_index(sv, st, qv, qt).tolist() == [-1, 0, -1, 2, -1]
    assert ops.nearest_index(sv, st, qv, qt).tolist() == [0, 1, 2, 2, -1]
    assert ops.nearest_index(sv, st, qv, qt, max_dist_ms=40).tolist() == [-1, -1, -1, -1, -1]


def test_range_reduce_sums_and_maxima_per_vehicle_range() -> None:
    sv, st = np.array([0, 0, 0, 1, 1]), np.array([10, 20, 30, 10, 20])
    vals = np.array([1.0, 5.0, 2.0, 4.0, 3.0])
    lo, hi = ops.range_bounds(sv, st, np.array([0, 1, 1]), np.array([15, 0, 50]), np.array([40, 15, 60]))
    assert ops.range_reduce(vals, lo, hi, "sum").tolist() == [7.0, 4.0, 0.0]
    mx = ops.range_reduce(vals, lo, hi, "max")
    assert mx[:2].tolist() == [5.0, 4.0] and np.isnan(mx[2])
    assert ops.range_reduce(vals, lo, hi, "count").tolist() == [2.0, 1.0, 0.0]


def test_ffill_in_groups_uses_initial_per_vehicle() -> None:
    out = ops.ffill_in_groups(np.array([0, 0, 0, 1, 1]), np.array([np.nan, 1.0, np.nan, np.nan, 0.0]),
                              np.array([0.0, 0, 0, 1.0, 0]))
    assert out.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_haversine_one_degree_of_latitude() -> None:
    assert ops.haversine_m(0.0, 0.0, 1.0, 0.0) == pytest.approx(111_195, rel=1e-3)


def test_points_in_polygon_square_and_concave() -> None:
    square = [[0, 0], [0, 1], [1, 1], [1, 0]]
    inside = ops.points_in_polygon(np.array([0.5, 1.5, 0.5]), np.array([0.5, 0.5, -0.1]), square)
    assert inside.tolist() == [True, False, False]
    l_shape = [[0, 0], [0, 2], [1, 2], [1, 1], [2, 1], [2, 0]]
    assert ops.points_in_polygon(np.array([1.5, 0.5]), np.array([1.5, 1.5]), l_shape).tolist() == [False, True]


def test_geohash_matches_the_reference_example_and_centre_round_trips() -> None:
    assert ops.geohash(np.array([57.64911]), np.array([10.40744]), 11)[0] == "u4pruydqqvj"
    cells = ops.geohash(np.array([34.0209, -33.9]), np.array([-6.8416, 151.2]), 5).tolist()
    lat, lon = ops.geohash_center(cells)
    assert ops.geohash(lat, lon, 5).tolist() == cells
    assert abs(lat[0] - 34.0209) < 0.03 and abs(lon[0] + 6.8416) < 0.03


def test_range_bounds_with_open_ended_queries_and_many_vehicles() -> None:
    """A far-future range end (an open trip) must not stretch the key space into overflow."""
    n = 8
    sv = np.arange(n).repeat(2)  # two samples per vehicle
    st = np.tile([1_700_000_000_000, 1_700_000_060_000], n)
    open_end = np.full(n, np.iinfo(np.int64).max // 4)
    lo, hi = ops.range_bounds(sv, st, np.arange(n), np.full(n, 1_700_000_030_000), open_end)
    assert (hi - lo).tolist() == [1] * n
    lo, hi = ops.range_bounds(sv, st, np.arange(n), np.full(n, ops.NO_TIME + 1), open_end)
    assert (hi - lo).tolist() == [2] * n
