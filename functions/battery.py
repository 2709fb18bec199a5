"""Low traction-battery state of charge and low 12 V battery, each alerted once per episode.

A value below the threshold starts an episode; it ends only when the value climbs back
above the re-arm level (hysteresis), so noise around the threshold does not repeat the
alert. The 12 V alert needs the voltage to stay low for `v12_min_duration_s`, which
ignores the dip while an engine cranks. Episodes carry across batches in state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.handlers import HandlerContext, HandlerInput, handler, ops

SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
V12 = "Vehicle.LowVoltageBattery.CurrentVoltage"
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
EPISODE_GAP_MS = 6 * 3600 * 1000  # an offline vehicle coming back still low is the same episode


@handler(
    name="battery_alerts",
    consumes=[SOC, V12],
    optional=[LAT, LON],
    emits={"fleet.battery.low_soc": {"vin": "string", "soc_pct": "number", "location.lat": "number?", "location.lon": "number?"},
           "fleet.battery.low_12v": {"vin": "string", "voltage_v": "number"}},
    state=True,
    defaults={"low_soc_pct": 20.0, "soc_rearm_pct": 25.0, "low_12v_v": 11.8, "v12_rearm_v": 12.2,
              "v12_min_duration_s": 10},
)
def battery_alerts(batch: HandlerInput, ctx: HandlerContext) -> None:
    """fleet.battery.low_soc and fleet.battery.low_12v, edge-triggered with hysteresis."""
    cfg = ctx.config
    soc, v12 = batch.signal(SOC), batch.signal(V12)
    if not len(soc) and not len(v12):
        return
    stored = ctx.states(batch.vehicles(SOC, V12))
    new_state = {v: dict(st) for v, st in stored.items()}
    for key, series, low, rearm, min_ms in (
            ("soc", soc, cfg["low_soc_pct"], cfg["soc_rearm_pct"], 0),
            ("v12", v12, cfg["low_12v_v"], cfg["v12_rearm_v"], int(cfg["v12_min_duration_s"] * 1000))):
        alerts = _episodes(batch, SOC if key == "soc" else V12, float(low), float(rearm), min_ms, key, stored,
                           new_state)
        if alerts is None:
            continue
        idx, vehicle = alerts
        if key == "soc":
            lat, lon = batch.location(vehicle, series.t[idx])
            ctx.emit("fleet.battery.low_soc", time=series.t[idx], origin=series.record_at(idx), vehicle=vehicle,
                     data={"soc_pct": np.round(series.v[idx], 2), "location.lat": lat, "location.lon": lon})
        else:
            ctx.emit("fleet.battery.low_12v", time=series.t[idx], origin=series.record_at(idx), vehicle=vehicle,
                     data={"voltage_v": np.round(series.v[idx], 3)})
    ctx.save_states({v: st for v, st in new_state.items() if st != stored.get(v)})


def _episodes(batch: HandlerInput, name: str, low: float, rearm: float, min_ms: int, key: str,
              stored: dict[int, dict[str, Any]], new_state: dict[int, dict[str, Any]]
              ) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows where an alert fires (index into the signal `name`, vehicle) and the episodes left open
    in new_state."""
    s = batch.signal(name)
    if not len(s):
        return None
    carried = {v: st[key] for v, st in stored.items() if key in st}
    cv = np.fromiter(carried, dtype=np.int64, count=len(carried))
    below = s.v < low
    # Only a vehicle that is below `low` here or carries an open episode can be in one, and
    # each vehicle's episodes depend on its own readings only: the others' rows are skipped.
    # `rows` maps positions in the kept rows back to the series (None: every row is kept).
    candidate = np.zeros(len(batch.vins), dtype=bool)
    candidate[s.vehicle[below]] = True
    candidate[cv] = True
    keep = candidate[s.vehicle]
    rows = None if keep.all() else np.flatnonzero(keep)
    if rows is None:
        vehicle, t, v, keys = s.vehicle, s.t, s.v, batch.keys(name)
    else:
        vehicle, t, v, below = s.vehicle[rows], s.t[rows], s.v[rows], below[rows]
        keys = batch.space.key(vehicle, t)  # the kept rows' keys in the batch's key space
    # hysteresis: 1 below `low`, 0 above `rearm`, in between keeps the previous state
    level = np.where(below, 1.0, np.where(v > rearm, 0.0, np.nan))
    first = ops.first_of_group(vehicle)
    initial = np.zeros(v.shape[0])
    if carried:
        initial[first] = np.isin(vehicle[first], cv)
    in_episode = ops.ffill_in_groups(vehicle, level, initial) >= 0.5
    runs = ops.track_runs(vehicle, t, in_episode, -v, max_gap_ms=EPISODE_GAP_MS, carried=carried)
    for vi in carried:
        if vi in new_state:
            new_state[vi].pop(key, None)
    alerted = np.array([bool((st or {}).get("alerted", False)) for st in runs.carried_state], dtype=bool)
    # the first sample of each run at which it has lasted min_ms fires the alert
    fire_t = runs.start_t + min_ms
    # in the batch's shared key space, with the samples' cached keys (times beyond the batch's
    # clamp to the vehicle's ends, which finds the same sample)
    fire = np.searchsorted(keys, batch.space.key(runs.vehicle, fire_t), side="left")
    ok = (runs.first >= 0) & ~alerted & (fire <= runs.last)
    for i in np.flatnonzero(runs.open).tolist():
        new_state.setdefault(int(runs.vehicle[i]), {})[key] = {
            "start_t": int(runs.start_t[i]), "last_t": int(t[runs.last[i]]), "peak": float(runs.peak[i]),
            "alerted": bool(alerted[i] or ok[i])}
    if not ok.any():
        return None
    return (fire[ok] if rows is None else rows[fire[ok]]), runs.vehicle[ok]
