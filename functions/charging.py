"""Charging sessions: start and end, with energy, duration, state of charge and peak power.

A session is a run of `IsCharging` = 1; a gap in the data shorter than `max_gap_ms`
does not split it. Energy is the rise in state of charge times the battery capacity
(`battery_capacity_kwh`); the charger is `dc` when the battery takes more than
`dc_threshold_kw`, else `ac` (`unknown` without power readings). Sessions spanning
batches are kept in state. A session open when its vehicle falls silent (`batch.silent`)
ends at its last charging reading, from what state kept (`end_reason` "silent"; "stop"
when the readings show the end).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.handlers import HandlerContext, HandlerInput, handler, ops

IS_CHARGING = "Vehicle.Powertrain.TractionBattery.Charging.IsCharging"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
POWER = "Vehicle.Powertrain.TractionBattery.CurrentPower"
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"


@handler(
    name="charging",
    consumes=[IS_CHARGING, SOC],
    optional=[POWER, LAT, LON],
    emits={"fleet.charging.started": {"vin": "string", "session_id": "string", "soc_pct": "number?",
                                    "charger_kind": "string", "location.lat": "number?", "location.lon": "number?"},
           "fleet.charging.ended": {"vin": "string", "session_id": "string", "end_reason": "string", "energy_kwh": "number?",
                                  "duration_s": "number", "soc_start_pct": "number?", "soc_end_pct": "number?",
                                  "max_power_kw": "number?", "location.lat": "number?", "location.lon": "number?"}},
    identity=["session_id"],  # `<VIN>-<start ms>`
    state=True,
    defaults={"battery_capacity_kwh": 6.1, "max_gap_ms": 900_000, "dc_threshold_kw": 22.0,
              "soc_ms": 120_000, "location_ms": 300_000},
)
def charging(batch: HandlerInput, ctx: HandlerContext) -> None:
    """fleet.charging.started / ended for each charging session."""
    cfg = ctx.config
    if batch.silent.shape[0]:
        _end_silent(batch, ctx)
    s = batch.signal(IS_CHARGING)
    if not len(s):
        return
    stored = ctx.states(batch.vehicles(IS_CHARGING))
    runs = ops.track_runs(s.vehicle, s.t, s.v >= 0.5, np.zeros(len(s)), max_gap_ms=int(cfg["max_gap_ms"]),
                          carried=stored)
    updates: dict[int, dict[str, Any] | None] = {v: None for v in stored}
    if not len(runs):
        ctx.save_states(updates)
        return
    soc_ms, loc_ms = int(cfg["soc_ms"]), int(cfg["location_ms"])
    vin = ctx.vin(runs.vehicle)
    new = ~runs.carried
    soc_start = batch.nearest(SOC, runs.vehicle, runs.start_t, max_dist_ms=soc_ms)
    soc_end = batch.nearest(SOC, runs.vehicle, runs.end_t, max_dist_ms=soc_ms)
    lat, lon = batch.location(runs.vehicle, runs.start_t, max_dist_ms=loc_ms)
    max_kw = np.full(len(runs), np.nan)
    p = batch.signal(POWER)
    if len(p):
        lo, hi = ops.range_bounds(p.vehicle, p.t, runs.vehicle, runs.start_t, runs.end_t, space=batch.space,
                                  skeys=batch.keys(POWER))
        max_kw = ops.range_reduce(p.v / 1000.0, lo, hi, "max")
    session = np.array([f"{v}-{t}" for v, t in zip(vin.tolist(), runs.start_t.tolist(), strict=True)], dtype=object)
    for i in np.flatnonzero(runs.carried).tolist():
        st = runs.carried_state[i] or {}
        session[i] = st.get("session_id", session[i])
        soc_start[i], lat[i], lon[i] = (_f(st.get(k)) for k in ("soc_start", "lat", "lon"))
        max_kw[i] = np.fmax(max_kw[i], _f(st.get("max_power_kw")))
        if np.isnan(soc_end[i]):
            soc_end[i] = _f(st.get("soc_last"))
    has = runs.first >= 0
    start_origin = np.where(has, s.record_at(np.maximum(runs.first, 0)), -1)
    start_origin[~has] = batch.first_record(runs.vehicle[~has])
    if new.any():
        kind = np.where(np.isnan(max_kw), "unknown", np.where(max_kw > float(cfg["dc_threshold_kw"]), "dc", "ac"))
        ctx.emit("fleet.charging.started", time=runs.start_t[new], origin=start_origin[new],
                 vehicle=runs.vehicle[new],
                 data={"session_id": session[new], "soc_pct": soc_start[new], "location.lat": lat[new],
                       "location.lon": lon[new], "charger_kind": kind[new].astype(object)})
    done = ~runs.open
    if done.any():
        end_origin = np.where(runs.last >= 0, s.record_at(np.maximum(runs.last, 0)), start_origin)
        energy = np.clip(soc_end - soc_start, 0, None) / 100.0 * float(cfg["battery_capacity_kwh"])
        ctx.emit("fleet.charging.ended", time=runs.end_t[done], origin=end_origin[done],
                 vehicle=runs.vehicle[done],
                 data={"session_id": session[done], "end_reason": "stop", "energy_kwh": np.round(energy[done], 3),
                       "duration_s": runs.duration_ms[done] / 1000.0, "soc_start_pct": soc_start[done],
                       "soc_end_pct": soc_end[done], "max_power_kw": np.round(max_kw[done], 2),
                       "location.lat": lat[done], "location.lon": lon[done]})
    for i in np.flatnonzero(runs.open).tolist():
        updates[int(runs.vehicle[i])] = {
            "start_t": int(runs.start_t[i]), "last_t": int(s.t[runs.last[i]]), "peak": 0.0,
            "session_id": str(session[i]), "soc_start": _num(soc_start[i]), "lat": _num(lat[i]),
            "lon": _num(lon[i]), "max_power_kw": _num(max_kw[i]), "soc_last": _num(soc_end[i])}
    ctx.save_states(updates)


def _end_silent(batch: HandlerInput, ctx: HandlerContext) -> None:
    """End the open sessions of vehicles that fell silent at their last charging reading, with
    the values kept in state; the origin is the vehicle's last frame."""
    spans = ops.stored_spans(ctx.states(batch.silent))
    if spans is None:
        return
    v, start_t, end_t = spans.vehicle, spans.start_t, spans.last_t
    soc_start, soc_end, max_kw, lat, lon = spans.values("soc_start", "soc_last", "max_power_kw", "lat", "lon")
    energy = np.clip(soc_end - soc_start, 0, None) / 100.0 * float(ctx.config["battery_capacity_kwh"])
    ctx.emit("fleet.charging.ended", time=end_t, origin=batch.first_record(v), vehicle=v,
             data={"session_id": np.array([st["session_id"] for st in spans.states], dtype=object),
                   "end_reason": "silent",
                   "energy_kwh": np.round(energy, 3), "duration_s": (end_t - start_t) / 1000.0,
                   "soc_start_pct": soc_start, "soc_end_pct": soc_end, "max_power_kw": np.round(max_kw, 2),
                   "location.lat": lat, "location.lon": lon})
    ctx.save_states(dict.fromkeys(v.tolist()))


def _f(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)
