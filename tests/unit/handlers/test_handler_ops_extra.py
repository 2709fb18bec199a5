"""ops helpers added for the trips handler: nearest_rows agrees with nearest_index."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.handlers import ops


def _samples(rng: np.random.Generator, n: int, n_veh: int) -> tuple[np.ndarray, np.ndarray]:
    v = np.sort(rng.integers(0, n_veh, n))
    t = np.empty(n, np.int64)
    for veh in np.unique(v):
        sel = v == veh
        t[sel] = np.sort(rng.integers(0, 10_000, sel.sum()))
    return v.astype(np.int64), t


@pytest.mark.parametrize("n_queries", [1, 3, ops.SMALL_QUERIES, ops.SMALL_QUERIES + 1, 200])
@pytest.mark.parametrize("max_dist_ms", [None, 0, 50, 500])
def test_nearest_rows_matches_nearest_index(n_queries: int, max_dist_ms: int | None) -> None:
    rng = np.random.default_rng(n_queries * 7 + (max_dist_ms or 1))
    for _ in range(20):
        sv, st = _samples(rng, int(rng.integers(1, 60)), 6)
        qv = rng.integers(0, 8, n_queries).astype(np.int64)  # some vehicles without samples
        qt = rng.integers(-500, 10_500, n_queries).astype(np.int64)
        space = ops.KeySpace.covering(0, 10_000)
        want = ops.nearest_index(sv, st, qv, qt, max_dist_ms=max_dist_ms, space=space, skeys=space.key(sv, st))
        got = ops.nearest_rows(sv, st, space.key(sv, st), qv, qt, space.key(qv, qt), max_dist_ms=max_dist_ms)
        assert got.dtype == np.int64
        assert got.tolist() == want.tolist()


def test_nearest_rows_ties_go_to_the_earlier_sample_and_edges() -> None:
    sv = np.array([0, 0, 1], np.int64)
    st = np.array([100, 200, 150], np.int64)
    space = ops.KeySpace.covering(0, 1000)
    k = space.key(sv, st)
    for qv, qt, want in ([0, 150, 0], [0, 151, 1], [1, 0, 2], [2, 150, -1], [0, 1000, 1]):
        q_v, q_t = np.array([qv], np.int64), np.array([qt], np.int64)
        assert ops.nearest_rows(sv, st, k, q_v, q_t, space.key(q_v, q_t)).tolist() == [want]
    q_v, q_t = np.array([0], np.int64), np.array([400], np.int64)
    assert ops.nearest_rows(sv, st, k, q_v, q_t, space.key(q_v, q_t), max_dist_ms=199).tolist() == [-1]
    assert ops.nearest_rows(sv, st, k, q_v, q_t, space.key(q_v, q_t), max_dist_ms=200).tolist() == [1]


def test_nearest_rows_empty() -> None:
    e = np.empty(0, np.int64)
    one = np.array([1], np.int64)
    assert ops.nearest_rows(e, e, e, one, one, one).tolist() == [-1]
    assert ops.nearest_rows(one, one, one, e, e, e).tolist() == []
