"""Trips: start and end with a summary, and the trip's driving-behaviour features.

A trip starts at the first reading at or above `move_kmh` and ends at the last one
before the vehicle stands still (or stops reporting) for `stop_s`. The end is therefore
known once the vehicle has reported standing still for `stop_s`, or when it moves again
after a longer pause. An open trip is kept in state, so trips span any number of batches.

Distance comes from the odometer when the vehicle sends one, else from the GPS track;
energy from the fall in state of charge times `battery_capacity_kwh`; fuel from the fall
in fuel level times `fuel_tank_l`. Harsh events, speeding and idling are counted from
the events of the harsh_driving, speeding and idling handlers, which run before this one.
At trip end it also emits `fleet.behaviour.features` for the recommendation service.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from pipeline.handlers import HandlerContext, HandlerInput, handler, ops

SPEED = "Vehicle.Speed"
ODOMETER = "Vehicle.TraveledDistance"  # metres
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
FUEL = "Vehicle.Powertrain.FuelSystem.RelativeLevel"
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
HARSH = ("fleet.driving.harsh_braking", "fleet.driving.harsh_acceleration", "fleet.driving.harsh_cornering")
SPEEDING, IDLING = "fleet.driving.speeding", "fleet.driving.idling"
END = np.iinfo(np.int64).max // 4  # "still open" end of a range

# accumulated per open trip (state), summed over the batches the trip spans
COUNTERS = ("dist_m", "n_braking", "n_acceleration", "n_cornering", "speeding_ms", "idle_s")


@handler(
    name="trips",
    consumes=[SPEED, *HARSH, SPEEDING, IDLING],
    optional=[ODOMETER, SOC, FUEL, LAT, LON],
    emits=["fleet.trip.started", "fleet.trip.ended", "fleet.behaviour.features"],
    state=True,
    defaults={"move_kmh": 5.0, "stop_s": 300, "battery_capacity_kwh": 6.1, "fuel_tank_l": 50.0,
              "context_ms": 60_000, "min_distance_km_for_rates": 0.5},
)
def trips(batch: HandlerInput, ctx: HandlerContext) -> None:
    """fleet.trip.started / ended (with summary) and fleet.behaviour.features per trip."""
    cfg = ctx.config
    s = batch.signal(SPEED)
    if not len(s):
        return
    stop_ms, ctx_ms = int(cfg["stop_s"]) * 1000, int(cfg["context_ms"])
    stored = ctx.states(batch.vehicles(SPEED))
    n_vins = len(batch.vins)

    # --- boundaries among moving readings ---------------------------------------------
    mi = np.flatnonzero(s.v >= float(cfg["move_kmh"]))
    mv, mt = s.vehicle[mi], s.t[mi]
    carried_last = np.full(n_vins, ops.NO_TIME, dtype=np.int64)
    for v, st in stored.items():
        carried_last[v] = int(st["last_moving_t"])
    # Late readings from before a vehicle's open trip (a delayed upload) must neither split
    # nor restart it: only movement after the trip's last known movement counts.
    newer = mt > carried_last[mv]
    if not newer.all():
        mi, mv, mt = mi[newer], mv[newer], mt[newer]
    prev_t = np.empty_like(mt)
    if mt.shape[0]:
        prev_t[1:] = mt[:-1]
        first_moving = ops.first_of_group(mv)
        prev_t[first_moving] = carried_last[mv[first_moving]]
    boundary = (prev_t == ops.NO_TIME) | (mt - prev_t >= stop_ms)
    b_rows = mi[boundary]

    # --- trip pieces: a carried open trip, then one per new start ----------------------
    cv = np.fromiter(stored, dtype=np.int64, count=len(stored))
    piece_v = np.concatenate([cv, s.vehicle[b_rows]])
    piece_start = np.concatenate([np.array([int(stored[v]["start_t"]) for v in cv.tolist()], np.int64),
                                  s.t[b_rows]])
    piece_new = np.concatenate([np.zeros(cv.shape[0], bool), np.ones(b_rows.shape[0], bool)])
    piece_start_rec = np.concatenate([np.full(cv.shape[0], -1, np.int64), s.record_at(b_rows)])
    piece_prev_end = np.concatenate([np.full(cv.shape[0], ops.NO_TIME, np.int64), prev_t[boundary]])
    order = np.lexsort((piece_start, piece_v))
    piece_v, piece_start, piece_new = piece_v[order], piece_start[order], piece_new[order]
    piece_start_rec, piece_prev_end = piece_start_rec[order], piece_prev_end[order]
    n = piece_v.shape[0]
    if not n:
        return
    last_piece = ops.last_of_group(piece_v)
    end_t = np.full(n, END, dtype=np.int64)
    end_rec = np.full(n, -1, dtype=np.int64)
    # a piece followed by another of the same vehicle ended at that start's previous movement
    nxt = np.flatnonzero(~last_piece)
    end_t[nxt] = piece_prev_end[nxt + 1]
    end_rec[nxt] = piece_start_rec[nxt + 1]
    # the last piece ends if the vehicle has been still for stop_s by its last reading
    s_first, s_last = ops.group_bounds(s.vehicle)
    last_t_of = np.full(n_vins, ops.NO_TIME, np.int64)
    last_t_of[s.vehicle[s_last]] = s.t[s_last]
    last_rec_of = np.full(n_vins, -1, np.int64)
    last_rec_of[s.vehicle[s_last]] = s.record_at(s_last)
    last_moving_of = carried_last.copy()
    if mt.shape[0]:
        lm = ops.last_of_group(mv)
        last_moving_of[mv[lm]] = mt[lm]
    lp = np.flatnonzero(last_piece)
    lpv = piece_v[lp]
    closes = last_t_of[lpv] - last_moving_of[lpv] >= stop_ms
    end_t[lp[closes]] = last_moving_of[lpv[closes]]
    end_rec[lp[closes]] = last_rec_of[lpv[closes]]
    closed = end_t != END
    start_rec = piece_start_rec.copy()
    if (start_rec < 0).any():
        start_rec[start_rec < 0] = batch.first_record(piece_v[start_rec < 0])
    end_rec = np.where(end_rec >= 0, end_rec, start_rec)

    # --- what happened within each piece (this batch's share) --------------------------
    space = batch.space
    vmax = ops.range_reduce(s.v, *ops.range_bounds(s.vehicle, s.t, piece_v, piece_start, end_t, space=space,
                                                   skeys=batch.keys(SPEED)), "max")
    counts = _event_sums(batch, piece_v, piece_start, end_t)
    p = batch.positions() if batch.has(LAT) and batch.has(LON) else None
    gps_m = np.zeros(n)
    first_fix = np.full(n, -1, np.int64)
    last_fix = np.full(n, -1, np.int64)
    if p is not None and len(p):
        step = np.zeros(len(p))  # metres from the vehicle's previous fix (0 at its first)
        if len(p) > 1:
            hop = ops.haversine_m(p.lat[:-1], p.lon[:-1], p.lat[1:], p.lon[1:])
            step[1:] = np.where(p.vehicle[1:] == p.vehicle[:-1], hop, 0.0)
        lo, hi = ops.range_bounds(p.vehicle, p.t, piece_v, piece_start, end_t, space=space,
                                  skeys=batch.keys("@positions"))
        gps_m = ops.range_reduce(step, np.minimum(lo + 1, hi), hi, "sum")
        first_fix = np.where(hi > lo, lo, -1)
        last_fix = np.where(hi > lo, hi - 1, -1)

    # --- start values (new trips) and end values (closed trips) ------------------------
    def values_at(rows: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, ...]:
        """lat, lon, odometer, SoC and fuel nearest to t for the given pieces (NaN elsewhere)."""
        out = [np.full(n, np.nan) for _ in range(5)]
        if rows.shape[0]:
            v, tq = piece_v[rows], t[rows]
            out[0][rows], out[1][rows] = batch.location(v, tq, max_dist_ms=ctx_ms)
            for k, name in ((2, ODOMETER), (3, SOC), (4, FUEL)):
                if batch.has(name):
                    out[k][rows] = batch.nearest(name, v, tq, max_dist_ms=ctx_ms)
        return tuple(out)

    start_lat, start_lon, start_odo, start_soc, start_fuel = values_at(np.flatnonzero(piece_new), piece_start)
    end_lat, end_lon, end_odo, end_soc, end_fuel = values_at(np.flatnonzero(closed), end_t)

    # --- merge with what the carried trips accumulated in earlier batches --------------
    acc = {k: counts.get(k, np.zeros(n)) for k in COUNTERS}
    acc["dist_m"] = gps_m
    max_speed = vmax
    carried_last_lat = carried_last_lon = np.empty(0)
    trip_id = np.array([f"{vin}-{t}" for vin, t in zip(ctx.vin(piece_v).tolist(), piece_start.tolist(),
                                                        strict=True)], dtype=object)
    carried_rows = np.flatnonzero(~piece_new)
    if carried_rows.shape[0]:
        sts = [stored[v] for v in piece_v[carried_rows].tolist()]
        fields = (*COUNTERS, "max_speed", "last_lat", "last_lon", "start_lat", "start_lon", "start_odo",
                  "start_soc", "start_fuel")
        pick = operator.itemgetter(*fields)
        try:
            picked = [pick(st) for st in sts]
        except KeyError:  # a state without some field (stored by an older version): absent = None
            picked = [tuple(st.get(f) for f in fields) for st in sts]
        table = np.array(picked, dtype=np.float64).reshape(len(sts), len(fields))  # None -> NaN
        column = {f: table[:, i] for i, f in enumerate(fields)}

        def col(key: str) -> np.ndarray:
            return column[key]

        trip_id[carried_rows] = [st["trip_id"] for st in sts]
        counters = np.nan_to_num(table[:, :len(COUNTERS)])
        for i, k in enumerate(COUNTERS):
            acc[k][carried_rows] += counters[:, i]
        max_speed[carried_rows] = np.fmax(max_speed[carried_rows], col("max_speed"))
        if p is not None:
            ff = first_fix[carried_rows]
            ok = ff >= 0
            bridge = ops.haversine_m(col("last_lat"), col("last_lon"), p.lat[np.maximum(ff, 0)] if len(p) else np.nan,
                                     p.lon[np.maximum(ff, 0)] if len(p) else np.nan)
            acc["dist_m"][carried_rows] += np.where(ok & ~np.isnan(bridge), bridge, 0.0)
        for arr, key in ((start_lat, "start_lat"), (start_lon, "start_lon"), (start_odo, "start_odo"),
                         (start_soc, "start_soc"), (start_fuel, "start_fuel")):
            arr[carried_rows] = col(key)
        carried_last_lat, carried_last_lon = col("last_lat"), col("last_lon")

    # --- events ------------------------------------------------------------------------
    new = piece_new
    if new.any():
        ctx.emit("fleet.trip.started", time=piece_start[new], origin=start_rec[new], vehicle=piece_v[new],
                 data={"trip_id": trip_id[new], "location.lat": start_lat[new], "location.lon": start_lon[new],
                       "odometer_km": np.round(start_odo[new] / 1000.0, 3)})
    if closed.any():
        c = closed
        odo_km = (end_odo - start_odo) / 1000.0
        distance_km = np.where(np.isnan(odo_km) | (odo_km < 0), acc["dist_m"] / 1000.0, odo_km)
        duration_s = (end_t - piece_start) / 1000.0
        energy = np.clip(start_soc - end_soc, 0, None) / 100.0 * float(cfg["battery_capacity_kwh"])
        fuel = np.clip(start_fuel - end_fuel, 0, None) / 100.0 * float(cfg["fuel_tank_l"])
        harsh = acc["n_braking"] + acc["n_acceleration"] + acc["n_cornering"]
        ctx.emit("fleet.trip.ended", time=end_t[c], origin=end_rec[c], vehicle=piece_v[c],
                 data={"trip_id": trip_id[c], "duration_s": duration_s[c],
                       "distance_km": np.round(distance_km[c], 3), "energy_kwh": np.round(energy[c], 3),
                       "fuel_l": np.round(fuel[c], 2), "harsh_events": harsh[c].astype(np.int64),
                       "start.lat": start_lat[c], "start.lon": start_lon[c],
                       "end.lat": end_lat[c], "end.lon": end_lon[c]})
        with np.errstate(divide="ignore", invalid="ignore"):
            rated = distance_km >= float(cfg["min_distance_km_for_rates"])
            per100 = np.where(rated, 100.0 / distance_km, np.nan)
            dur = np.where(duration_s > 0, duration_s, np.nan)
            ctx.emit("fleet.behaviour.features", time=end_t[c], origin=end_rec[c], vehicle=piece_v[c],
                     data={"trip_id": trip_id[c], "distance_km": np.round(distance_km[c], 3),
                           "duration_s": duration_s[c],
                           "mean_speed_kmh": np.round(distance_km[c] / (dur[c] / 3600.0), 2),
                           "max_speed_kmh": np.round(max_speed[c], 1),
                           "harsh_braking_per_100km": np.round(acc["n_braking"][c] * per100[c], 3),
                           "harsh_accel_per_100km": np.round(acc["n_acceleration"][c] * per100[c], 3),
                           "harsh_cornering_per_100km": np.round(acc["n_cornering"][c] * per100[c], 3),
                           "speeding_share": np.round(np.clip(acc["speeding_ms"][c] / 1000.0 / dur[c], 0, 1), 4),
                           "idle_share": np.round(np.clip(acc["idle_s"][c] / dur[c], 0, 1), 4),
                           "energy_kwh_per_100km": np.round(energy[c] * per100[c], 3)})

    # --- state: open trips kept, closed ones dropped ------------------------------------
    updates: dict[int, dict[str, Any] | None] = {v: None for v in stored}
    keep = np.flatnonzero(~closed)
    if keep.shape[0]:
        last_lat, last_lon = np.full(n, np.nan), np.full(n, np.nan)
        if carried_rows.shape[0]:
            last_lat[carried_rows], last_lon[carried_rows] = carried_last_lat, carried_last_lon
        if p is not None and len(p):
            has_fix = last_fix >= 0
            last_lat = np.where(has_fix, p.lat[np.maximum(last_fix, 0)], last_lat)
            last_lon = np.where(has_fix, p.lon[np.maximum(last_fix, 0)], last_lon)
        columns = {"trip_id": trip_id[keep], "start_t": piece_start[keep],
                   "last_moving_t": last_moving_of[piece_v[keep]], "start_lat": start_lat[keep],
                   "start_lon": start_lon[keep], "start_odo": start_odo[keep], "start_soc": start_soc[keep],
                   "start_fuel": start_fuel[keep], "max_speed": max_speed[keep],
                   **{k: acc[k][keep] for k in COUNTERS},
                   "last_lat": last_lat[keep], "last_lon": last_lon[keep]}
        names = list(columns)
        # the values as the state store keeps them (plain Python, NaN as None), built by column
        rows = zip(*(_plain(c) for c in columns.values()), strict=True)
        updates.update(zip(piece_v[keep].tolist(), (dict(zip(names, row, strict=True)) for row in rows),
                           strict=True))
    ctx.save_states(updates, plain=True)


def _event_sums(batch: HandlerInput, piece_v: np.ndarray, start: np.ndarray, end: np.ndarray
                ) -> dict[str, np.ndarray]:
    """Per piece: harsh-event counts by kind, speeding ms and idling s of events in its time range."""
    n = piece_v.shape[0]
    out = {k: np.zeros(n) for k in COUNTERS}
    ev = batch.events
    if not len(ev):
        return out
    ev_v = batch.event_vehicle()
    types = ev.attrs["type"]
    for key, etype, field in (("n_braking", HARSH[0], None), ("n_acceleration", HARSH[1], None),
                              ("n_cornering", HARSH[2], None), ("speeding_ms", SPEEDING, "duration_ms"),
                              ("idle_s", IDLING, "duration_s")):
        sel = np.flatnonzero((types == etype) & (ev_v >= 0))
        if not sel.shape[0]:
            continue
        t = ev.attrs["time"][sel]
        order = np.lexsort((t, ev_v[sel]))
        sel, t = sel[order], t[order]
        lo, hi = ops.range_bounds(ev_v[sel], t, piece_v, start, end)
        if field is None:
            out[key] = (hi - lo).astype(np.float64)
        else:
            vals = np.nan_to_num(ev.data[field][sel].astype(np.float64)) if field in ev.data else np.zeros(sel.shape[0])
            out[key] = ops.range_reduce(vals, lo, hi, "sum")
    return out


def _plain(column: np.ndarray) -> list[Any]:
    """A column as Python values, NaN (and infinity) as None, which is what the state store's
    serialisation makes of them."""
    if column.dtype.kind != "f":
        return column.tolist()
    bad = ~np.isfinite(column)
    if not bad.any():
        return column.tolist()
    out = column.astype(object)
    out[bad] = None
    return out.tolist()


def _f(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)
