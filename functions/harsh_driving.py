"""Harsh braking, acceleration and cornering: acceleration beyond a threshold, sustained.

A harsh event is a run of consecutive acceleration samples beyond the threshold lasting
at least `min_duration_ms` (first to last sample). A run still going at the end of a
batch is kept in state and finished by the next batch, so an event is never cut in two.
`accel_ms2` is the peak magnitude (positive for all three kinds).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.handlers import HandlerContext, HandlerInput, SignalSeries, handler, ops

LONGITUDINAL = "Vehicle.Acceleration.Longitudinal"
LATERAL = "Vehicle.Acceleration.Lateral"
SPEED = "Vehicle.Speed"
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"


@handler(
    name="harsh_driving",
    consumes=[LONGITUDINAL, LATERAL],
    optional=[SPEED, LAT, LON],
    emits={f"fleet.driving.harsh_{kind}": {"vin": "string", "accel_ms2": "number", "duration_ms": "integer",
                                          "speed_kmh": "number?", "location.lat": "number?", "location.lon": "number?"}
           for kind in ("braking", "acceleration", "cornering")},
    state=True,
    defaults={"longitudinal_ms2": 4.4, "lateral_ms2": 5.5, "min_duration_ms": 100,
              "max_gap_ms": 300, "context_ms": 5000},
)
def harsh_driving(batch: HandlerInput, ctx: HandlerContext) -> None:
    """Harsh braking, acceleration and cornering from 10 Hz acceleration signals."""
    cfg = ctx.config
    lon_s, lat_s = batch.signal(LONGITUDINAL), batch.signal(LATERAL)
    if not len(lon_s) and not len(lat_s):
        return
    stored = ctx.states(batch.vehicles(LONGITUDINAL, LATERAL))
    new_state: dict[int, dict[str, Any]] = {v: dict(st) for v, st in stored.items()}
    kinds = (
        ("braking", lon_s, lon_s.v <= -cfg["longitudinal_ms2"], -lon_s.v),
        ("acceleration", lon_s, lon_s.v >= cfg["longitudinal_ms2"], lon_s.v),
        ("cornering", lat_s, np.abs(lat_s.v) >= cfg["lateral_ms2"], np.abs(lat_s.v)),
    )
    for kind, series, cond, magnitude in kinds:
        carried = {v: st[kind] for v, st in stored.items() if kind in st}
        runs = ops.track_runs(series.vehicle, series.t, cond, magnitude,
                              max_gap_ms=int(cfg["max_gap_ms"]), carried=carried)
        for v in carried:  # finished here or continued below; untouched vehicles keep theirs
            if _touched(series, v):
                new_state[v].pop(kind)
        if not len(runs):
            continue
        speed, lat, lon = _context_at_start(batch, runs, int(cfg["context_ms"]))
        done = ~runs.open & (runs.duration_ms >= int(cfg["min_duration_ms"]))
        if done.any():
            origin = _origin(batch, series, runs)
            ctx.emit(f"fleet.driving.harsh_{kind}", time=runs.start_t[done], origin=origin[done],
                     vehicle=runs.vehicle[done],
                     data={"accel_ms2": np.round(runs.peak[done], 3),
                           "duration_ms": runs.duration_ms[done],
                           "speed_kmh": speed[done], "location.lat": lat[done],
                           "location.lon": lon[done]})
        for i in np.flatnonzero(runs.open).tolist():
            v = int(runs.vehicle[i])
            new_state.setdefault(v, {})[kind] = {
                "start_t": int(runs.start_t[i]), "last_t": int(series.t[runs.last[i]]),
                "peak": float(runs.peak[i]), "speed": _num(speed[i]), "lat": _num(lat[i]),
                "lon": _num(lon[i])}
    ctx.save_states({v: st for v, st in new_state.items() if st != stored.get(v)})


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _touched(series: SignalSeries, vehicle: int) -> bool:
    pos = int(np.searchsorted(series.vehicle, vehicle))
    return pos < len(series) and int(series.vehicle[pos]) == vehicle


def _origin(batch: HandlerInput, series: SignalSeries, runs: ops.Runs) -> np.ndarray:
    """Record of the run's first sample here, or the vehicle's first record for runs that
    only close something opened by an earlier batch."""
    has = runs.first >= 0
    origin = np.where(has, series.record_at(np.maximum(runs.first, 0)) if len(series) else -1, -1)
    if (~has).any():
        origin[~has] = batch.first_record(runs.vehicle[~has])
    return origin


def _context_at_start(batch: HandlerInput, runs: ops.Runs, max_ms: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Speed and location at each run's start; carried runs reuse what was stored."""
    speed = batch.nearest(SPEED, runs.vehicle, runs.start_t, max_dist_ms=max_ms)
    lat, lon = batch.location(runs.vehicle, runs.start_t, max_dist_ms=max_ms)
    for i in np.flatnonzero(runs.carried).tolist():
        st = runs.carried_state[i] or {}
        for arr, key in ((speed, "speed"), (lat, "lat"), (lon, "lon")):
            if st.get(key) is not None:
                arr[i] = st[key]
    return speed, lat, lon
