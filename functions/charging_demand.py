"""Charging-demand forecast per grid cell for the next hour (for peak shaving).

Every vehicle charging now contributes the average power it is expected to draw over
the horizon: its current power (or `default_power_kw`), capped by the energy it still
needs to reach `target_soc_pct`. Contributions are summed per geohash cell and a
`fleet.grid.charging_demand` event (subject = cell) is emitted when a cell's sum moves
by `min_change_kw`, its session count changes, or `min_interval_s` has passed.

Vehicles are spread over partitions by VIN, so each worker sees only its partitions'
vehicles: an event is the demand of the vehicles of one ingest partition (`partition`),
and a consumer sums the latest event of each partition per cell and horizon. A charging
vehicle that falls silent (`batch.silent`) leaves its cell at once (an update is emitted),
rather than when the cell's next report finds it older than `stale_s`.
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
    name="charging_demand",
    consumes=[IS_CHARGING, SOC],
    optional=[POWER, LAT, LON],
    emits={"fleet.grid.charging_demand": {
        "cell": "string", "cell_lat": "number", "cell_lon": "number", "horizon_start": "integer",
        "horizon_s": "integer", "expected_kw": "number", "sessions": "integer", "partition": "integer"}},
    state=True,
    defaults={"geohash_precision": 5, "battery_capacity_kwh": 6.1, "default_power_kw": 7.0,
              "target_soc_pct": 100.0, "horizon_s": 3600, "stale_s": 900, "min_interval_s": 300,
              "min_change_kw": 1.0, "max_vehicles_per_cell": 200},
)
def charging_demand(batch: HandlerInput, ctx: HandlerContext) -> None:
    """fleet.grid.charging_demand: expected kW per grid cell over the next horizon."""
    cfg = ctx.config
    if batch.silent.shape[0]:
        _end_silent(batch, ctx)
    s = batch.signal(IS_CHARGING)
    if not len(s):
        return
    last = np.flatnonzero(ops.last_of_group(s.vehicle))
    vehicle, t, charging_now, record = s.vehicle[last], s.t[last], s.v[last] >= 0.5, s.record_at(last)
    # vehicles not charging matter only if they were (their contribution must go)
    was = ctx.states(vehicle[~charging_now])
    keep = charging_now | np.isin(vehicle, np.fromiter(was, dtype=np.int64, count=len(was)))
    vehicle, t, charging_now, record = vehicle[keep], t[keep], charging_now[keep], record[keep]
    if not vehicle.shape[0]:
        return
    vstate = {**was, **ctx.states(vehicle[charging_now])}
    soc = batch.nearest(SOC, vehicle, t, max_dist_ms=300_000)
    power_kw = batch.nearest(POWER, vehicle, t, max_dist_ms=120_000) / 1000.0
    power_kw = np.where(power_kw > 0.1, power_kw, float(cfg["default_power_kw"]))
    horizon_h = float(cfg["horizon_s"]) / 3600.0
    need_kwh = np.clip(float(cfg["target_soc_pct"]) - np.nan_to_num(soc, nan=50.0), 0, None) / 100.0 \
        * float(cfg["battery_capacity_kwh"])
    expected_kw = np.minimum(power_kw * horizon_h, need_kwh) / horizon_h
    lat, lon = batch.location(vehicle, t, max_dist_ms=600_000)
    cell = ops.geohash(np.nan_to_num(lat), np.nan_to_num(lon), int(cfg["geohash_precision"]))
    partition = np.array([batch.records[r].partition for r in record.tolist()], dtype=np.int64)
    vins = ctx.vin(vehicle).tolist()
    touched: dict[str, tuple[int, int]] = {}  # cell key -> (time, origin) of its latest report
    cells: dict[str, dict[str, Any]] = {}

    def cell_state(key: str) -> dict[str, Any]:
        if key not in cells:
            cells[key] = ctx.state.get(key) or {"vehicles": {}, "last_emit_t": 0, "last_kw": 0.0,
                                                 "last_sessions": 0}
        return cells[key]

    vehicle_updates: dict[str, dict[str, Any] | None] = {}
    for i, vin in enumerate(vins):
        prev_key = (vstate.get(int(vehicle[i])) or {}).get("cell_key")
        ti, oi = int(t[i]), int(record[i])
        known_pos = not np.isnan(lat[i])
        key = f"{cell[i]}@{partition[i]}" if known_pos else prev_key
        if prev_key and (not charging_now[i] or prev_key != key):
            cell_state(prev_key)["vehicles"].pop(vin, None)
            touched[prev_key] = max(touched.get(prev_key, (0, oi)), (ti, oi))
        if charging_now[i] and key:
            cell_state(key)["vehicles"][vin] = [round(float(expected_kw[i]), 3), ti]
            touched[key] = max(touched.get(key, (0, oi)), (ti, oi))
            if key != prev_key:
                vehicle_updates[vin] = {"cell_key": key}
        elif prev_key:
            vehicle_updates[vin] = None
    rows: list[tuple[str, int, int, float, int]] = []
    stale_ms, cap = int(cfg["stale_s"]) * 1000, int(cfg["max_vehicles_per_cell"])
    for key, (ti, oi) in sorted(touched.items()):
        st = cell_state(key)
        members = {v: e for v, e in st["vehicles"].items() if ti - int(e[1]) <= stale_ms}
        if len(members) > cap:  # bounded state: keep the most recent reporters
            members = dict(sorted(members.items(), key=lambda kv: -kv[1][1])[:cap])
        st["vehicles"] = members
        kw = round(sum(float(e[0]) for e in members.values()), 3)
        n = len(members)
        if (n != st["last_sessions"] or abs(kw - float(st["last_kw"])) >= float(cfg["min_change_kw"])
                or ti - int(st["last_emit_t"]) >= int(cfg["min_interval_s"]) * 1000):
            rows.append((key, ti, oi, kw, n))
            st.update(last_emit_t=ti, last_kw=kw, last_sessions=n)
    for key, st in cells.items():
        ctx.state.put(key, st if st["vehicles"] else None)
    for vin, value in vehicle_updates.items():
        ctx.state.put(vin, value)
    _emit(ctx, rows)


def _emit(ctx: HandlerContext, rows: list[tuple[str, int, int, float, int]]) -> None:
    """One fleet.grid.charging_demand per (cell key, time, origin, kW, sessions)."""
    if rows:
        keys = [r[0] for r in rows]
        cell_ids = [k.split("@")[0] for k in keys]
        clat, clon = ops.geohash_center(cell_ids)
        ctx.emit("fleet.grid.charging_demand", time=[r[1] for r in rows], origin=[r[2] for r in rows],
                 subject=np.array(cell_ids, dtype=object),
                 data={"cell": np.array(cell_ids, dtype=object), "cell_lat": clat, "cell_lon": clon,
                       "horizon_start": np.array([r[1] for r in rows], dtype=np.int64),
                       "horizon_s": np.full(len(rows), int(ctx.config["horizon_s"]), dtype=np.int64),
                       "expected_kw": np.array([r[3] for r in rows]),
                       "sessions": np.array([r[4] for r in rows], dtype=np.int64),
                       "partition": np.array([int(k.split("@")[1]) for k in keys], dtype=np.int64)})


def _end_silent(batch: HandlerInput, ctx: HandlerContext) -> None:
    """Take charging vehicles that fell silent out of their cells and report those cells, as of
    the vehicle's last report there; the origin is the vehicle's last frame."""
    stored = ctx.states(batch.silent)
    leaving = [(v, st["cell_key"]) for v, st in stored.items() if st.get("cell_key")]
    if not leaving:
        return
    origin = batch.first_record(np.array([v for v, _ in leaving], dtype=np.int64)).tolist()
    cells: dict[str, dict[str, Any]] = {}
    touched: dict[str, tuple[int, int]] = {}
    for (v, key), oi in zip(leaving, origin, strict=True):
        st = cells.get(key) or ctx.state.get(key)
        if st is None:
            continue
        cells[key] = st
        entry = st["vehicles"].pop(ctx.vins[v], None)
        if entry is not None:
            touched[key] = max(touched.get(key, (0, oi)), (max(int(entry[1]), int(st["last_emit_t"])), oi))
    rows = []
    for key, (ti, oi) in sorted(touched.items()):
        st = cells[key]
        kw = round(sum(float(e[0]) for e in st["vehicles"].values()), 3)
        n = len(st["vehicles"])
        rows.append((key, ti, oi, kw, n))
        st.update(last_emit_t=ti, last_kw=kw, last_sessions=n)
    for key, st in cells.items():
        ctx.state.put(key, st if st["vehicles"] else None)
    ctx.save_states(dict.fromkeys(v for v, _ in leaving))
    _emit(ctx, rows)
