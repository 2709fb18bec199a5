"""Idling: engine or motor on while the vehicle stands still, for longer than a duration.

"On" is taken from whichever the vehicle sends: engine speed > 0, the engine-running
flag, or (EVs) the traction battery delivering more than `ev_on_power_w` while parked
(climate control and electronics awake). The event is emitted when the idle period
ends (the vehicle moves or switches off: `end_reason` "stop"), with its full duration; a
period open when the vehicle falls silent (`batch.silent`) ends at its last idle reading
(`end_reason` "silent").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.handlers import HandlerContext, HandlerInput, handler, ops

SPEED = "Vehicle.Speed"
ENGINE_SPEED = "Vehicle.Powertrain.CombustionEngine.Speed"
ENGINE_RUNNING = "Vehicle.Powertrain.CombustionEngine.IsRunning"
BATTERY_POWER = "Vehicle.Powertrain.TractionBattery.CurrentPower"
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"


@handler(
    name="idling",
    consumes=[SPEED],
    optional=[ENGINE_SPEED, ENGINE_RUNNING, BATTERY_POWER, LAT, LON],
    emits={"fleet.driving.idling": {"vin": "string", "duration_s": "number", "end_reason": "string", "location.lat": "number?", "location.lon": "number?"}},
    state=True,
    defaults={"idle_speed_kmh": 1.0, "min_duration_s": 300, "max_gap_ms": 60_000,
              "ev_on_power_w": 500.0, "on_signal_ms": 10_000},
)
def idling(batch: HandlerInput, ctx: HandlerContext) -> None:
    """Standing still with the engine or motor on for at least min_duration_s."""
    cfg = ctx.config
    if batch.silent.shape[0]:
        _end_silent(batch, ctx)
    s = batch.signal(SPEED)
    if not len(s):
        return
    near = int(cfg["on_signal_ms"])
    still = np.flatnonzero(s.v <= float(cfg["idle_speed_kmh"]))
    sv, st = s.vehicle[still], s.t[still]
    on = np.zeros(still.shape[0], dtype=bool)  # "on" is only asked where the vehicle stands still
    if batch.has(ENGINE_SPEED):
        on |= batch.nearest(ENGINE_SPEED, sv, st, max_dist_ms=near) > 0
    if batch.has(ENGINE_RUNNING):
        on |= batch.nearest(ENGINE_RUNNING, sv, st, max_dist_ms=near) >= 0.5
    if batch.has(BATTERY_POWER):
        on |= batch.nearest(BATTERY_POWER, sv, st, max_dist_ms=near) <= -float(cfg["ev_on_power_w"])
    cond = np.zeros(len(s), dtype=bool)
    cond[still[on]] = True
    stored = ctx.states(batch.vehicles(SPEED))
    runs = ops.track_runs(s.vehicle, s.t, cond, np.zeros(len(s)), max_gap_ms=int(cfg["max_gap_ms"]),
                          carried=stored)
    has = runs.first >= 0
    done = ~runs.open & (runs.duration_ms >= int(cfg["min_duration_s"]) * 1000)
    # the start location is reported (done) or kept (open) only: look up just those
    lat, lon = np.full(len(runs), np.nan), np.full(len(runs), np.nan)
    wanted = np.flatnonzero(done | runs.open)
    if wanted.shape[0]:
        lat[wanted], lon[wanted] = batch.location(runs.vehicle[wanted], runs.start_t[wanted])
    for i in np.flatnonzero(runs.carried).tolist():
        kept = runs.carried_state[i] or {}
        lat[i], lon[i] = _f(kept.get("lat")), _f(kept.get("lon"))
    if done.any():
        origin = np.where(has, s.record_at(np.maximum(runs.first, 0)), -1) if len(runs) else runs.first
        origin[~has] = batch.first_record(runs.vehicle[~has])
        ctx.emit("fleet.driving.idling", time=runs.start_t[done], origin=origin[done],
                 vehicle=runs.vehicle[done],
                 data={"duration_s": runs.duration_ms[done] / 1000.0, "end_reason": "stop", "location.lat": lat[done],
                       "location.lon": lon[done]})
    updates: dict[int, dict[str, Any] | None] = {v: None for v in stored}
    for i in np.flatnonzero(runs.open).tolist():
        updates[int(runs.vehicle[i])] = {
            "start_t": int(runs.start_t[i]), "last_t": int(s.t[runs.last[i]]), "peak": 0.0,
            "lat": _num(lat[i]), "lon": _num(lon[i])}
    ctx.save_states(updates)


def _end_silent(batch: HandlerInput, ctx: HandlerContext) -> None:
    """End the idle periods of vehicles that fell silent at their last idle reading (an event if
    long enough), from what state kept; the origin is the vehicle's last frame."""
    spans = ops.stored_spans(ctx.states(batch.silent))
    if spans is None:
        return
    v, start_t = spans.vehicle, spans.start_t
    duration_ms = spans.last_t - start_t
    long = duration_ms >= int(ctx.config["min_duration_s"]) * 1000
    if long.any():
        lat, lon = spans.values("lat", "lon")
        ctx.emit("fleet.driving.idling", time=start_t[long], origin=batch.first_record(v[long]), vehicle=v[long],
                 data={"duration_s": duration_ms[long] / 1000.0, "end_reason": "silent",
                       "location.lat": lat[long], "location.lon": lon[long]})
    ctx.save_states(dict.fromkeys(v.tolist()))


def _f(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)
