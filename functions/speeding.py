"""Speeding: faster than the applicable limit (plus a tolerance) for a sustained time.

The limit of each speed reading is the lowest of: the absolute `limit_kmh`, the
`speed_limit_kmh` of any configured zone the vehicle is in, and a posted limit sent by
the vehicle (`Vehicle.Private.SpeedLimit`, when present). A run still going at the end
of a batch is finished by the next one (`end_reason` "stop"), or at its last reading when
the vehicle falls silent (`batch.silent`; `end_reason` "silent").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.handlers import HandlerContext, HandlerInput, handler, ops

SPEED = "Vehicle.Speed"
POSTED_LIMIT = "Vehicle.Private.SpeedLimit"
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"


@handler(
    name="speeding",
    consumes=[SPEED],
    optional=[POSTED_LIMIT, LAT, LON],
    emits={"fleet.driving.speeding": {"vin": "string", "speed_kmh": "number", "limit_kmh": "number", "end_reason": "string",
                                     "duration_ms": "integer", "location.lat": "number?", "location.lon": "number?"}},
    state=True,
    defaults={"limit_kmh": 130.0, "tolerance_kmh": 5.0, "min_duration_ms": 10_000,
              "max_gap_ms": 5_000, "posted_limit_max_age_ms": 60_000, "location_ms": 10_000},
)
def speeding(batch: HandlerInput, ctx: HandlerContext) -> None:
    """Speed above the absolute, zone or posted limit for at least min_duration_ms."""
    cfg = ctx.config
    if batch.silent.shape[0]:
        _end_silent(batch, ctx)
    s = batch.signal(SPEED)
    if not len(s):
        return
    tolerance = float(cfg["tolerance_kmh"])
    limited = [(i, z) for i, z in enumerate(ctx.zones) if z.speed_limit_kmh is not None]
    posted_here = batch.has(POSTED_LIMIT)
    # A reading no faster than the lowest limit that can apply is not speeding whatever its
    # location, and the limit and location are only read where speeding starts: without
    # posted limits (which may be lower still), only the faster readings are located.
    lowest = min([float(cfg["limit_kmh"]), *(float(z.speed_limit_kmh or np.inf) for _, z in limited)])
    rows = None if posted_here else np.flatnonzero(s.v > lowest + tolerance)
    qv, qt = (s.vehicle, s.t) if rows is None else (s.vehicle[rows], s.t[rows])
    # each reading is located at its nearest GPS fix, so it is inside the zones that fix is in
    fix = batch.nearest_fix(qv, qt, max_dist_ms=int(cfg["location_ms"]))
    p = batch.positions()
    q_lat, q_lon = ops.take_or_nan(p.lat, fix), ops.take_or_nan(p.lon, fix)
    q_limit = np.full(qv.shape[0], float(cfg["limit_kmh"]))
    if limited:
        # zone bits of every reading's fix (0 where there is no fix), shared with geofence
        in_zones = np.where(fix >= 0, batch.fix_zones(ctx.zones)[np.maximum(fix, 0)], 0) if len(p) else fix * 0
        for i, z in limited:
            inside = ((in_zones >> i) & 1).astype(bool)
            q_limit = np.where(inside, np.minimum(q_limit, float(z.speed_limit_kmh or np.inf)), q_limit)
    if rows is None:
        limit, lat, lon = q_limit, q_lat, q_lon
    else:
        limit = np.full(len(s), float(cfg["limit_kmh"]))
        lat, lon = np.full(len(s), np.nan), np.full(len(s), np.nan)
        limit[rows], lat[rows], lon[rows] = q_limit, q_lat, q_lon
    if posted_here:
        posted = batch.asof(POSTED_LIMIT, s.vehicle, s.t, max_age_ms=int(cfg["posted_limit_max_age_ms"]))
        limit = np.where(posted > 0, np.fmin(limit, posted), limit)
    cond = s.v > limit + tolerance
    stored = ctx.states(batch.vehicles(SPEED))
    runs = ops.track_runs(s.vehicle, s.t, cond, s.v, max_gap_ms=int(cfg["max_gap_ms"]), carried=stored)
    if not len(runs):
        ctx.save_states({v: None for v in stored})
        return
    has = runs.first >= 0
    first = np.maximum(runs.first, 0)
    run_limit = np.where(has, limit[first], np.nan)
    run_lat, run_lon = np.where(has, lat[first], np.nan), np.where(has, lon[first], np.nan)
    for i in np.flatnonzero(runs.carried).tolist():
        st = runs.carried_state[i] or {}
        run_limit[i], run_lat[i], run_lon[i] = (_f(st.get(k)) for k in ("limit", "lat", "lon"))
    done = ~runs.open & (runs.duration_ms >= int(cfg["min_duration_ms"]))
    if done.any():
        origin = np.where(has, s.record_at(first), -1)
        origin[~has] = batch.first_record(runs.vehicle[~has])
        ctx.emit("fleet.driving.speeding", time=runs.start_t[done], origin=origin[done],
                 vehicle=runs.vehicle[done],
                 data={"speed_kmh": np.round(runs.peak[done], 1), "limit_kmh": run_limit[done], "end_reason": "stop",
                       "duration_ms": runs.duration_ms[done], "location.lat": run_lat[done],
                       "location.lon": run_lon[done]})
    updates: dict[int, dict[str, Any] | None] = {v: None for v in stored}
    for i in np.flatnonzero(runs.open).tolist():
        updates[int(runs.vehicle[i])] = {
            "start_t": int(runs.start_t[i]), "last_t": int(s.t[runs.last[i]]), "peak": float(runs.peak[i]),
            "limit": _num(run_limit[i]), "lat": _num(run_lat[i]), "lon": _num(run_lon[i])}
    ctx.save_states(updates)


def _end_silent(batch: HandlerInput, ctx: HandlerContext) -> None:
    """End the speeding runs of vehicles that fell silent at their last reading (an event if long
    enough), from what state kept; the origin is the vehicle's last frame."""
    spans = ops.stored_spans(ctx.states(batch.silent))
    if spans is None:
        return
    v, start_t = spans.vehicle, spans.start_t
    duration_ms = spans.last_t - start_t
    long = duration_ms >= int(ctx.config["min_duration_ms"])
    if long.any():
        peak, limit, lat, lon = (c[long] for c in spans.values("peak", "limit", "lat", "lon"))
        ctx.emit("fleet.driving.speeding", time=start_t[long], origin=batch.first_record(v[long]), vehicle=v[long],
                 data={"speed_kmh": np.round(peak, 1), "limit_kmh": limit, "end_reason": "silent",
                       "duration_ms": duration_ms[long], "location.lat": lat, "location.lon": lon})
    ctx.save_states(dict.fromkeys(v.tolist()))


def _f(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)
