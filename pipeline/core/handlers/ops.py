"""Vectorised building blocks for handlers: per-vehicle groups, runs, as-of joins, geometry.

Every function works on columns sorted by (vehicle, t), the order `HandlerInput.signal`
returns, so a whole batch is processed with numpy and no loop per reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.core.clean.groups import rank_in_group  # noqa: F401 - part of the handlers' toolbox

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

EARTH_RADIUS_M = 6_371_008.8
NO_TIME = np.iinfo(np.int64).min // 4  # "no such time" that still subtracts without overflow


def _i64(a: npt.ArrayLike) -> IntArray:
    return np.asarray(a, dtype=np.int64)


def first_of_group(vehicle: npt.ArrayLike) -> BoolArray:
    """True on the first row of each vehicle in an array sorted by vehicle."""
    v = np.asarray(vehicle)
    out = np.ones(v.shape[0], dtype=bool)
    if v.shape[0] > 1:
        out[1:] = v[1:] != v[:-1]
    return out


def last_of_group(vehicle: npt.ArrayLike) -> BoolArray:
    """True on the last row of each vehicle in an array sorted by vehicle."""
    v = np.asarray(vehicle)
    out = np.ones(v.shape[0], dtype=bool)
    if v.shape[0] > 1:
        out[:-1] = v[1:] != v[:-1]
    return out


def positions_of(sorted_keys: npt.ArrayLike, keys: npt.ArrayLike) -> tuple[IntArray, BoolArray]:
    """(position of each key in an ascending array of distinct keys, whether it is there)."""
    a, k = _i64(sorted_keys), _i64(keys)
    pos = np.searchsorted(a, k)
    if not a.shape[0]:
        return pos, np.zeros(k.shape[0], dtype=bool)
    return pos, (pos < a.shape[0]) & (a[np.minimum(pos, a.shape[0] - 1)] == k)


def group_bounds(vehicle: npt.ArrayLike) -> tuple[IntArray, IntArray]:
    """(first, last) row index of each vehicle's block in an array sorted by vehicle."""
    return np.flatnonzero(first_of_group(vehicle)), np.flatnonzero(last_of_group(vehicle))


class KeySpace:
    """Maps (vehicle, t) to one int64 that sorts like the pair, for searchsorted joins."""

    def __init__(self, *times: npt.ArrayLike) -> None:
        lo, hi = 0, 1
        arrays = [np.asarray(t, dtype=np.int64) for t in times]
        arrays = [a[(a > NO_TIME) & (a < -NO_TIME)] for a in arrays]
        arrays = [a for a in arrays if a.shape[0]]
        if arrays:
            lo = int(min(int(a.min()) for a in arrays))
            hi = int(max(int(a.max()) for a in arrays))
        self.lo = lo
        self.span = hi - lo + 3  # room for -inf/+inf sentinels at 0 and span-1

    @classmethod
    def covering(cls, lo: int, hi: int) -> KeySpace:
        """A space for sample times in [lo, hi]; queries outside clamp, which joins still get right."""
        ks = cls()
        ks.lo, ks.span = int(lo), int(hi) - int(lo) + 3
        return ks

    def key(self, vehicle: npt.ArrayLike, t: npt.ArrayLike) -> IntArray:
        """Composite key; times outside the space clamp to the vehicle's -inf/+inf slots."""
        rel = _i64(t) - (self.lo - 1)
        np.maximum(rel, 0, out=rel)
        np.minimum(rel, self.span - 1, out=rel)
        key = _i64(vehicle) * self.span
        key += rel
        return key


def _space(st: IntArray, sv: IntArray, space: KeySpace | None, skeys: IntArray | None,
           *queries: npt.ArrayLike) -> tuple[KeySpace, IntArray]:
    if space is not None:
        return space, skeys if skeys is not None else space.key(sv, st)
    # The samples' times only: query times outside them clamp to the vehicle's -inf/+inf
    # slots, which orders them the same. Spanning the queries too would let an "open end"
    # (far-future) query stretch the span until vehicle * span overflows int64.
    ks = KeySpace(st)
    return ks, ks.key(sv, st)


def asof_index(sv: npt.ArrayLike, st: npt.ArrayLike, qv: npt.ArrayLike, qt: npt.ArrayLike,
               *, max_age_ms: int | None = None, space: KeySpace | None = None,
               skeys: IntArray | None = None) -> IntArray:
    """Index of the last sample (sv, st) at or before each query of the same vehicle, else -1.

    `space` (covering the sample times) and `skeys` (the samples' keys in it) may be
    passed to reuse them across joins on the same samples.
    """
    sv_, st_, qv_, qt_ = _i64(sv), _i64(st), _i64(qv), _i64(qt)
    if not sv_.shape[0] or not qv_.shape[0]:
        return np.full(qv_.shape[0], -1, dtype=np.int64)
    ks, keys = _space(st_, sv_, space, skeys, qt_)
    idx = np.searchsorted(keys, ks.key(qv_, qt_), side="right") - 1
    ok = idx >= 0
    safe = np.where(ok, idx, 0)
    ok &= sv_[safe] == qv_
    if max_age_ms is not None:
        ok &= qt_ - st_[safe] <= max_age_ms
    return np.where(ok, idx, -1)


def nearest_index(sv: npt.ArrayLike, st: npt.ArrayLike, qv: npt.ArrayLike, qt: npt.ArrayLike,
                  *, max_dist_ms: int | None = None, space: KeySpace | None = None,
                  skeys: IntArray | None = None) -> IntArray:
    """Index of the sample of the same vehicle nearest in time to each query, else -1."""
    sv_, st_, qv_, qt_ = _i64(sv), _i64(st), _i64(qv), _i64(qt)
    n = sv_.shape[0]
    if not n or not qv_.shape[0]:
        return np.full(qv_.shape[0], -1, dtype=np.int64)
    ks, keys = _space(st_, sv_, space, skeys, qt_)
    right = np.searchsorted(keys, ks.key(qv_, qt_), side="left")
    return _nearest_of(sv_, st_, qv_, qt_, right, max_dist_ms)


def _nearest_of(sv_: IntArray, st_: IntArray, qv_: IntArray, qt_: IntArray, right: IntArray,
                max_dist_ms: int | None) -> IntArray:
    """Given each query's insertion point among the samples' keys, the nearer of the samples
    either side of it that belong to the query's vehicle (the earlier on a tie), else -1."""
    n = sv_.shape[0]
    left = right - 1
    r_safe, l_safe = np.minimum(right, n - 1), np.maximum(left, 0)
    r_ok = (right < n) & (sv_[r_safe] == qv_)
    l_ok = (left >= 0) & (sv_[l_safe] == qv_)
    big = np.iinfo(np.int64).max
    r_dist = np.where(r_ok, np.abs(st_[r_safe] - qt_), big)
    l_dist = np.where(l_ok, np.abs(qt_ - st_[l_safe]), big)
    idx = np.where(l_dist <= r_dist, l_safe, r_safe)
    dist = np.minimum(l_dist, r_dist)
    ok = dist < big
    if max_dist_ms is not None:
        ok &= dist <= max_dist_ms
    return np.where(ok, idx, -1)


def take_or_nan(values: npt.ArrayLike, index: IntArray) -> FloatArray:
    """values[index] as float, NaN where index is -1."""
    v = np.asarray(values, dtype=np.float64)
    if not v.shape[0]:
        return np.full(index.shape[0], np.nan)
    return np.where(index >= 0, v[np.maximum(index, 0)], np.nan)


def range_bounds(sv: npt.ArrayLike, st: npt.ArrayLike, qv: npt.ArrayLike, t0: npt.ArrayLike,
                 t1: npt.ArrayLike, *, space: KeySpace | None = None,
                 skeys: IntArray | None = None) -> tuple[IntArray, IntArray]:
    """[lo, hi) row range of samples of vehicle qv with t0 <= t <= t1, per query."""
    sv_, st_ = _i64(sv), _i64(st)
    ks, keys = _space(st_, sv_, space, skeys, t0, t1)
    lo = np.searchsorted(keys, ks.key(qv, t0), side="left")
    hi = np.searchsorted(keys, ks.key(qv, t1), side="right")
    return lo.astype(np.int64), np.maximum(hi, lo).astype(np.int64)


def range_sum(values: npt.ArrayLike, lo: IntArray, hi: IntArray) -> FloatArray:
    """Per range [lo, hi): the sum of values (NaN counting as 0; 0 for an empty range).

    Each range is summed over its own rows only, so a vehicle's sum does not depend on what
    other vehicles share the batch (a running total across the batch would differ in the
    last bits). Ranges may overlap and come in any order.
    """
    v = np.asarray(values, dtype=np.float64)
    lo_, hi_ = _i64(lo), _i64(hi)
    out = np.zeros(lo_.shape[0])
    nonempty = hi_ > lo_
    if not nonempty.any():
        return out
    padded = np.append(v if np.isfinite(v).all() else np.nan_to_num(v), 0.0)
    edges = np.empty(2 * int(nonempty.sum()), dtype=np.int64)
    edges[0::2], edges[1::2] = lo_[nonempty], hi_[nonempty]
    out[nonempty] = np.add.reduceat(padded, edges)[0::2]
    return out


def range_reduce(values: npt.ArrayLike, lo: IntArray, hi: IntArray, op: str) -> FloatArray:
    """Per range [lo, hi): "sum", "count", "max" or "min" of values (NaN for empty max/min).

    Sums and counts work for any ranges; max and min need ranges that do not overlap,
    which holds for the per-vehicle, disjoint-in-time ranges handlers ask about.
    """
    v = np.asarray(values, dtype=np.float64)
    n_q = lo.shape[0]
    if op == "count":
        return np.maximum(hi - lo, 0).astype(np.float64)
    if op == "sum":
        return range_sum(v, lo, hi)
    out = np.full(n_q, np.nan)
    nonempty = hi > lo
    if not nonempty.any() or not v.shape[0]:
        return out
    ufunc = np.maximum if op == "max" else np.minimum
    order = np.argsort(lo[nonempty], kind="stable")
    los, his = lo[nonempty][order], hi[nonempty][order]
    padded = np.concatenate([v, [np.nan]])
    edges = np.empty(2 * los.shape[0], dtype=np.int64)
    edges[0::2], edges[1::2] = los, his
    red = ufunc.reduceat(padded, edges)[0::2]
    res = np.empty_like(red)
    res[order] = red
    out[nonempty] = res
    return out


def runs(vehicle: npt.ArrayLike, t: npt.ArrayLike, cond: npt.ArrayLike,
         *, max_gap_ms: int) -> tuple[IntArray, IntArray]:
    """(first, last) row of every maximal run of `cond` per vehicle, split at gaps > max_gap_ms.

    Works on the rows where `cond` holds only, so rare conditions cost little beyond one scan.
    """
    idx = np.flatnonzero(np.asarray(cond, dtype=bool))
    if not idx.shape[0]:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    v, tt = np.asarray(vehicle), np.asarray(t)
    vi, ti = v[idx], tt[idx]
    linked = (np.diff(idx) == 1) & (vi[1:] == vi[:-1]) & (np.diff(ti) <= max_gap_ms)
    brk = np.flatnonzero(~linked)
    first = idx[np.concatenate([[0], brk + 1])]
    last = idx[np.concatenate([brk, [idx.shape[0] - 1]])]
    return first.astype(np.int64), last.astype(np.int64)


def run_reduce(values: npt.ArrayLike, cond: npt.ArrayLike, first: IntArray, op: str = "max",
               last: IntArray | None = None) -> FloatArray:
    """max/min of values over each run [first, last] (as returned by `runs`)."""
    if not first.shape[0]:
        return np.empty(0)
    vals = np.asarray(values, dtype=np.float64)
    ufunc = np.maximum if op == "max" else np.minimum
    if last is None:
        fill = -np.inf if op == "max" else np.inf
        return ufunc.reduceat(np.where(np.asarray(cond, dtype=bool), vals, fill), first)
    edges = np.empty(2 * first.shape[0], dtype=np.int64)
    edges[0::2], edges[1::2] = first, last + 1
    padded = np.concatenate([vals, [np.nan]]) if edges[-1] >= vals.shape[0] else vals
    return ufunc.reduceat(padded, edges)[0::2]


def is_group_end(vehicle: npt.ArrayLike, rows: IntArray) -> BoolArray:
    """For given rows of an array sorted by vehicle: is the row its vehicle's last?"""
    v = np.asarray(vehicle)
    n = v.shape[0]
    nxt = np.minimum(rows + 1, max(n - 1, 0))
    return (rows == n - 1) | (v[nxt] != v[rows])


@dataclass(slots=True)
class Runs:
    """Runs of a condition in this batch, merged with runs still open from earlier batches.

    Row i is one run of vehicle `vehicle[i]`; `first`/`last` index the series of this batch
    (-1 when the run has no sample here: a carried run that closed before this batch's
    first sample). `open` runs reach the vehicle's last sample and may continue in the
    next batch; `carried` runs began in an earlier batch and `carried_state` is what was
    stored for them.
    """

    vehicle: IntArray
    first: IntArray
    last: IntArray
    start_t: IntArray
    end_t: IntArray
    peak: FloatArray
    open: BoolArray
    carried: BoolArray
    carried_state: list[dict[str, Any] | None]

    def __len__(self) -> int:
        return int(self.vehicle.shape[0])

    @property
    def duration_ms(self) -> IntArray:
        return self.end_t - self.start_t


def track_runs(vehicle: npt.ArrayLike, t: npt.ArrayLike, cond: npt.ArrayLike, peak_values: npt.ArrayLike,
               *, max_gap_ms: int, carried: Mapping[int, Mapping[str, Any]]) -> Runs:
    """Runs of `cond` per vehicle, continuing runs left open by the previous batch.

    `carried` maps a vehicle index to the open run stored for it: `start_t`, `last_t` and
    `peak` (plus whatever the handler keeps). A carried run continues if the vehicle's
    first sample here meets the condition within `max_gap_ms`; otherwise it is closed at
    its `last_t`. Vehicles without samples here keep their open run untouched (not listed).
    """
    v, tt = _i64(vehicle), _i64(t)
    c = np.asarray(cond, dtype=bool)
    pv = np.asarray(peak_values, dtype=np.float64)
    first, last = runs(v, tt, c, max_gap_ms=max_gap_ms)
    peak = run_reduce(pv, c, first, "max", last)
    run_vehicle = v[first]
    start_t, end_t = tt[first].copy(), tt[last].copy()
    open_ = is_group_end(v, last)
    carried_mask = np.zeros(first.shape[0], dtype=bool)
    carried_state: list[dict[str, Any] | None] = [None] * first.shape[0]
    extra_rows: list[tuple[int, dict[str, Any]]] = []
    if carried:
        n = v.shape[0]
        run_at_row = {int(f): i for i, f in enumerate(first.tolist())} if first.shape[0] else {}
        cv = np.fromiter(carried.keys(), dtype=np.int64, count=len(carried))
        pos = np.searchsorted(v, cv, side="left")
        has = (pos < n) & (v[np.minimum(pos, max(n - 1, 0))] == cv) if n else np.zeros(cv.shape[0], bool)
        for vi, p, h in zip(cv.tolist(), pos.tolist(), has.tolist(), strict=True):
            if not h:
                continue  # no samples for this vehicle here: its open run stays as stored
            st = dict(carried[vi])
            if c[p] and tt[p] - int(st["last_t"]) <= max_gap_ms:
                i = run_at_row[p]
                start_t[i] = int(st["start_t"])
                peak[i] = max(float(peak[i]), float(st.get("peak", -np.inf)))
                carried_mask[i] = True
                carried_state[i] = st
            else:
                extra_rows.append((vi, st))
    if extra_rows:
        k = len(extra_rows)
        run_vehicle = np.concatenate([run_vehicle, np.array([r[0] for r in extra_rows], np.int64)])
        first = np.concatenate([first, np.full(k, -1, np.int64)])
        last = np.concatenate([last, np.full(k, -1, np.int64)])
        start_t = np.concatenate([start_t, np.array([int(r[1]["start_t"]) for r in extra_rows], np.int64)])
        end_t = np.concatenate([end_t, np.array([int(r[1]["last_t"]) for r in extra_rows], np.int64)])
        peak = np.concatenate([peak, np.array([float(r[1].get("peak", np.nan)) for r in extra_rows])])
        open_ = np.concatenate([open_, np.zeros(k, dtype=bool)])
        carried_mask = np.concatenate([carried_mask, np.ones(k, dtype=bool)])
        carried_state = carried_state + [r[1] for r in extra_rows]
    return Runs(run_vehicle, first, last, start_t, end_t, peak, open_, carried_mask, carried_state)


def ffill_in_groups(vehicle: npt.ArrayLike, values: npt.ArrayLike, initial: npt.ArrayLike) -> FloatArray:
    """Forward-fill NaNs within each vehicle's block; a leading NaN takes `initial` (per row's vehicle block)."""
    v = np.asarray(vehicle)
    x = np.asarray(values, dtype=np.float64).copy()
    n = x.shape[0]
    if not n:
        return x
    first = first_of_group(v)
    init = np.asarray(initial, dtype=np.float64)
    x[first] = np.where(np.isnan(x[first]), init[first], x[first])
    idx = np.where(~np.isnan(x) | first, np.arange(n), 0)
    np.maximum.accumulate(idx, out=idx)
    return x[idx]


def haversine_m(lat1: npt.ArrayLike, lon1: npt.ArrayLike, lat2: npt.ArrayLike, lon2: npt.ArrayLike) -> FloatArray:
    """Great-circle distance in metres between points given in degrees."""
    p1, p2 = np.radians(np.asarray(lat1, np.float64)), np.radians(np.asarray(lat2, np.float64))
    dphi = p2 - p1
    dl = np.radians(np.asarray(lon2, np.float64) - np.asarray(lon1, np.float64))
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def points_in_polygon(lat: npt.ArrayLike, lon: npt.ArrayLike, polygon: npt.ArrayLike) -> BoolArray:
    """Even-odd rule for many points in one polygon given as [[lat, lon], ...] (small areas)."""
    y, x = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    poly = np.asarray(polygon, np.float64)
    py, px = poly[:, 0], poly[:, 1]
    inside = np.zeros(y.shape[0], dtype=bool)
    bbox = (y >= py.min()) & (y <= py.max()) & (x >= px.min()) & (x <= px.max())
    if not bbox.any():
        return inside
    yy, xx = y[bbox], x[bbox]
    hit = np.zeros(yy.shape[0], dtype=bool)
    for j in range(poly.shape[0]):
        y1, x1 = py[j - 1], px[j - 1]
        y2, x2 = py[j], px[j]
        crosses = (y1 > yy) != (y2 > yy)
        if y2 != y1:
            x_at = x1 + (yy - y1) * (x2 - x1) / (y2 - y1)
            hit ^= crosses & (xx < x_at)
    inside[bbox] = hit
    return inside


_BASE32 = np.frombuffer(b"0123456789bcdefghjkmnpqrstuvwxyz", dtype=np.uint8)


def geohash(lat: npt.ArrayLike, lon: npt.ArrayLike, precision: int = 5) -> npt.NDArray[np.object_]:
    """Standard geohash strings of the given length for arrays of points (vectorised)."""
    la, lo = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    bits = 5 * precision
    lon_bits, lat_bits = (bits + 1) // 2, bits // 2
    xi = np.clip(((lo + 180.0) / 360.0 * (1 << lon_bits)).astype(np.int64), 0, (1 << lon_bits) - 1)
    yi = np.clip(((la + 90.0) / 180.0 * (1 << lat_bits)).astype(np.int64), 0, (1 << lat_bits) - 1)
    code = np.zeros(la.shape[0], dtype=np.int64)
    for b in range(bits):  # bit b from the top: even positions take longitude bits
        src, width = (xi, lon_bits) if b % 2 == 0 else (yi, lat_bits)
        bit = (src >> (width - 1 - b // 2)) & 1
        code = (code << 1) | bit
    chars = np.empty((la.shape[0], precision), dtype=np.uint8)
    for k in range(precision):
        chars[:, k] = _BASE32[(code >> (5 * (precision - 1 - k))) & 31]
    return np.array([row.tobytes().decode() for row in chars], dtype=object)


def geohash_center(cells: list[str]) -> tuple[FloatArray, FloatArray]:
    """Centre (lat, lon) of each geohash cell."""
    lookup = {ch: i for i, ch in enumerate(_BASE32.tobytes().decode())}
    lats, lons = [], []
    for cell in cells:
        lat_lo, lat_hi, lon_lo, lon_hi = -90.0, 90.0, -180.0, 180.0
        even = True
        for ch in cell:
            val = lookup[ch]
            for shift in range(4, -1, -1):
                bit = (val >> shift) & 1
                if even:
                    mid = (lon_lo + lon_hi) / 2
                    lon_lo, lon_hi = (mid, lon_hi) if bit else (lon_lo, mid)
                else:
                    mid = (lat_lo + lat_hi) / 2
                    lat_lo, lat_hi = (mid, lat_hi) if bit else (lat_lo, mid)
                even = not even
        lats.append((lat_lo + lat_hi) / 2)
        lons.append((lon_lo + lon_hi) / 2)
    return np.asarray(lats, np.float64), np.asarray(lons, np.float64)


SMALL_QUERIES = 16  # up to this many queries, `nearest_rows` answers them in plain Python


def nearest_rows(sv: npt.ArrayLike, st: npt.ArrayLike, skeys: IntArray, qv: npt.ArrayLike, qt: npt.ArrayLike,
                 qkeys: IntArray, *, max_dist_ms: int | None = None) -> IntArray:
    """`nearest_index` with the samples' keys and the queries' keys given, both in one `KeySpace`
    (so a handler asking several signals about the same few (vehicle, t) computes the query keys
    once): index of the sample of the same vehicle nearest in time to each query (the earlier on
    a tie), -1 where there is none or none within `max_dist_ms`.

    A few queries (at most `SMALL_QUERIES`) are answered in plain Python after one search, which
    costs less than a dozen numpy calls on tiny arrays; the result is the same either way.
    """
    sv_, st_, qv_, qt_ = _i64(sv), _i64(st), _i64(qv), _i64(qt)
    n, q = sv_.shape[0], qv_.shape[0]
    if not n or not q:
        return np.full(q, -1, dtype=np.int64)
    right_all = np.searchsorted(skeys, qkeys, side="left")
    if q > SMALL_QUERIES:
        return _nearest_of(sv_, st_, qv_, qt_, right_all, max_dist_ms)
    out: list[int] = []
    for r, v, t in zip(right_all.tolist(), qv_.tolist(), qt_.tolist(), strict=True):
        left_d = right_d = None
        if r > 0 and int(sv_[r - 1]) == v:
            left_d = abs(t - int(st_[r - 1]))
        if r < n and int(sv_[r]) == v:
            right_d = abs(int(st_[r]) - t)
        if left_d is not None and (right_d is None or left_d <= right_d):
            best, d = r - 1, left_d
        elif right_d is not None:
            best, d = r, right_d
        else:
            out.append(-1)
            continue
        out.append(best if max_dist_ms is None or d <= max_dist_ms else -1)
    return np.array(out, dtype=np.int64)


@dataclass(slots=True)
class StoredSpans:
    """Open spans (a charging session, an idling spell, a speeding run ...) as a stateful
    handler keeps them per vehicle: `start_t` and `last_t` (epoch ms) and other values."""

    vehicle: IntArray
    states: list[Mapping[str, Any]]
    start_t: IntArray
    last_t: IntArray

    def values(self, *keys: str) -> list[FloatArray]:
        """A float column per key over the spans, NaN where a state lacks it."""
        return [np.array([np.nan if st.get(k) is None else float(st[k]) for st in self.states], dtype=np.float64)
                for k in keys]


def stored_spans(stored: Mapping[int, Mapping[str, Any]]) -> StoredSpans | None:
    """The open spans among stored states (`ctx.states(...)`), or None when there are none;
    what handlers close when their vehicles fall silent (`batch.silent`)."""
    if not stored:
        return None
    states = list(stored.values())
    return StoredSpans(np.fromiter(stored, dtype=np.int64, count=len(stored)), states,
                       np.array([int(st["start_t"]) for st in states], dtype=np.int64),
                       np.array([int(st["last_t"]) for st in states], dtype=np.int64))
