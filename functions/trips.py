"""Trips: start and end with a summary, and the trip's driving-behaviour features.

A trip starts at the first reading at or above `move_kmh` and ends at the last one
before the vehicle stands still (or stops reporting) for `stop_s`. The end is therefore
known once the vehicle has reported for `stop_s` without moving (its speed, or, parked with
the ignition off, its state of charge, odometer or fuel level: a parked EV reports its
battery once a minute), or when it moves again after a longer pause. A vehicle that sends
nothing at all while parked keeps its trip open until it next reports. An open trip is kept
in state, so trips span any number of batches.

GPS fixes come on their own topic and may reach a batch without the same minutes' speed
readings. Fixes of a vehicle with an open trip count wherever they arrive, and a trip that
ends at a stop waits for the vehicle's fixes to reach its end before it closes (for at most
another `stop_s`, for a vehicle whose GPS went quiet), so its track is complete.

Distance comes from the odometer when the vehicle sends one, else from the GPS track;
energy from the fall in state of charge times `battery_capacity_kwh`; fuel from the fall
in fuel level times `fuel_tank_l`. Harsh events, speeding and idling are counted from
the events of the harsh_driving, speeding and idling handlers, which run before this one.
At trip end it also emits `fleet.behaviour.features` for the recommendation service.

Counts and distance cover the trip from its start to its end. While a trip is open, what
comes after its last movement so far is kept apart (`pending_*` in state): it joins the
trip if the vehicle moves again within `stop_s`, and is dropped if the trip turns out to
have ended. The values at the end (location, odometer, SoC, fuel) are looked up in the
batch that holds the last movement and kept in state. So the summary does not depend on
how the stream was cut into batches, except that a start or end value is the reading
nearest that time (within `context_ms`) among those in the deciding batch.
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
# the same, for what came after the trip's last movement so far: it belongs to the trip only
# if the vehicle moves again before stop_s (then it is added), else the trip ended before it
PENDING = tuple(f"pending_{k}" for k in COUNTERS)
# location, odometer, SoC and fuel level at the trip's last movement so far (looked up in the
# batch that holds that movement), for a trip that ends batches later
END_VALUES = ("end_lat", "end_lon", "end_odo", "end_soc", "end_fuel")


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
    n_vins = len(batch.vins)
    last_t, last_rec = _last_reports(batch, n_vins)
    p = batch.positions() if batch.has(LAT) and batch.has(LON) else None
    fix_t = np.full(n_vins, ops.NO_TIME, dtype=np.int64)  # each vehicle's last fix here
    fix_rec = np.full(n_vins, -1, dtype=np.int64)
    if p is not None and len(p):
        rows = np.flatnonzero(ops.last_of_group(p.vehicle))
        fix_t[p.vehicle[rows]], fix_rec[p.vehicle[rows]] = p.t[rows], p.record[rows]
    # vehicles that report, and (for the distance of an open trip) those that only send fixes
    seen = np.flatnonzero((last_t != ops.NO_TIME) | (fix_t != ops.NO_TIME))
    if not seen.shape[0]:
        return
    stop_ms, ctx_ms = int(cfg["stop_s"]) * 1000, int(cfg["context_ms"])
    stored = ctx.states(seen)
    s_vehicle, s_t = s.vehicle, s.t

    # --- the open trips carried from earlier batches ----------------------------------------
    nc = len(stored)
    sts = list(stored.values())
    carried_last = np.full(n_vins, ops.NO_TIME, dtype=np.int64)
    cv = np.fromiter(stored, dtype=np.int64, count=nc)  # ascending
    c_start = np.empty(0, dtype=np.int64)
    # latest report and fix so far (this batch or, for an open trip, the ones before)
    report_t, seen_fix_t = last_t.copy(), fix_t.copy()
    if nc:
        carried_last[cv] = [int(st["last_moving_t"]) for st in sts]
        c_start = np.array([int(st["start_t"]) for st in sts], dtype=np.int64)
        before = np.array([(st.get("last_report_t"), st.get("last_fix_t")) for st in sts],
                          dtype=np.float64).reshape(nc, 2)  # None -> NaN
        before = np.where(np.isnan(before), ops.NO_TIME, before).astype(np.int64)
        report_t[cv] = np.maximum(report_t[cv], before[:, 0])
        seen_fix_t[cv] = np.maximum(seen_fix_t[cv], before[:, 1])

    # --- boundaries among moving readings ---------------------------------------------
    mi = np.flatnonzero(s.v >= float(cfg["move_kmh"]))
    mv, mt = s_vehicle[mi], s_t[mi]
    # Late readings from before a vehicle's open trip (a delayed upload) must neither split
    # nor restart it: only movement after the trip's last known movement counts.
    newer = mt > carried_last[mv]
    if not newer.all():
        mi, mv, mt = mi[newer], mv[newer], mt[newer]
    m = mt.shape[0]
    last_moving_of = carried_last.copy()
    if m:
        # first moving reading of each vehicle (its previous movement is the carried one)
        # and its last (the vehicle's last movement)
        change = np.flatnonzero(mv[1:] != mv[:-1])
        firsts = np.empty(change.shape[0] + 1, dtype=np.int64)
        firsts[0] = 0
        np.add(change, 1, out=firsts[1:])
        lasts = np.empty_like(firsts)
        lasts[:-1] = change
        lasts[-1] = m - 1
        prev_t = np.empty_like(mt)
        prev_t[1:] = mt[:-1]
        prev_first = carried_last[mv[firsts]]
        prev_t[firsts] = prev_first
        boundary = mt - prev_t >= stop_ms
        # only a first moving reading can follow "no movement" (the others follow a real time)
        boundary[firsts] |= prev_first == ops.NO_TIME
        bi = np.flatnonzero(boundary)
        last_moving_of[mv[lasts]] = mt[lasts]
        b_v, b_t, b_prev = mv[bi], mt[bi], prev_t[bi]
        b_rec = s.record_at(mi[bi])
    else:
        b_v = b_t = b_prev = b_rec = np.empty(0, np.int64)

    # --- trip pieces: a carried open trip, then one per new start, by (vehicle, start) -------
    nb = b_v.shape[0]
    n = nc + nb
    if not n:
        return
    if nc and nb:
        piece_v, piece_start = np.concatenate((cv, b_v)), np.concatenate((c_start, b_t))
        order = np.lexsort((piece_start, piece_v))
        piece_v, piece_start = piece_v[order], piece_start[order]
        is_new = order >= nc
        new_rows, carried_rows = np.flatnonzero(is_new), np.flatnonzero(~is_new)
    elif nc:  # carried pieces are one per vehicle, in vehicle order
        piece_v, piece_start = cv, c_start
        new_rows, carried_rows = np.empty(0, np.int64), np.arange(nc)
    else:  # new pieces come in (vehicle, t) order
        piece_v, piece_start = b_v, b_t
        new_rows, carried_rows = np.arange(nb), np.empty(0, np.int64)
    # (new pieces keep their order among themselves, and carried ones theirs)
    end_t = np.full(n, END, dtype=np.int64)
    end_rec = np.full(n, -1, dtype=np.int64)
    if nb:
        same = piece_v[1:] == piece_v[:-1]
        nxt = np.flatnonzero(same)
        if nxt.shape[0]:
            # a piece followed by another of the same vehicle ended at that start's previous movement
            prev_end = np.full(n, ops.NO_TIME, dtype=np.int64)
            start_rec = np.full(n, -1, dtype=np.int64)
            prev_end[new_rows], start_rec[new_rows] = b_prev, b_rec
            end_t[nxt] = prev_end[nxt + 1]
            end_rec[nxt] = start_rec[nxt + 1]
            last_rows = np.flatnonzero(~same)
            last_rows = np.append(last_rows, n - 1)
        else:
            last_rows = np.arange(n)
    else:
        last_rows = np.arange(n)
    # The last piece ends once the vehicle has been still for stop_s by its latest report, and
    # its fixes have caught up with the end (the GPS topic may lag the speed: the trip's last
    # hops must be in before it closes); a vehicle without fixes, or still for 2 x stop_s
    # without its fixes catching up, does not wait for them.
    lpv = piece_v[last_rows]
    lmov = last_moving_of[lpv]
    still_for = report_t[lpv] - lmov
    gps_in = (seen_fix_t[lpv] == ops.NO_TIME) | (seen_fix_t[lpv] >= lmov) | (still_for >= 2 * stop_ms)
    closes = np.flatnonzero((still_for >= stop_ms) & gps_in)
    if closes.shape[0]:
        cvv = lpv[closes]
        end_t[last_rows[closes]] = lmov[closes]
        # origin: the latest report here, else the latest fix (the GPS that let it close)
        end_rec[last_rows[closes]] = np.where(last_t[cvv] >= fix_t[cvv], last_rec[cvv], fix_rec[cvv])
    closed_mask = end_t != END
    closed = np.flatnonzero(closed_mask)
    n_new, n_closed = new_rows.shape[0], closed.shape[0]
    if n_closed and (end_rec[closed] < 0).any():  # ended before any reading of its own here
        start_rec = np.full(n, -1, dtype=np.int64)
        start_rec[new_rows] = b_rec
        if (start_rec < 0).any():
            start_rec[start_rec < 0] = batch.first_record(piece_v[start_rec < 0])
        end_rec = np.where(end_rec >= 0, end_rec, start_rec)

    # --- what happened within each piece (this batch's share) --------------------------
    # per piece: 0-4 start lat, lon, odometer, SoC, fuel; 5 max speed; 6-11 COUNTERS; 12-13 last fix;
    # 14-19 PENDING; 20-24 END_VALUES; 25-26 latest report and fix times (set when saved)
    f = np.zeros((len(F_FIELDS), n))
    space = batch.space
    # Counters run to the trip's end, which for an open trip is its last movement so far; what
    # comes after is kept pending. So a trip counts the same however the stream is cut into
    # batches (its end is only known stop_s later, usually batches later).
    count_end = np.where(closed_mask, end_t, last_moving_of[piece_v])
    # [start, end] of every piece as a key range, then [start, count_end]; ends as exclusive
    # keys (key + 1: side="right")
    qk = space.key(np.concatenate((piece_v, piece_v, piece_v)), np.concatenate((piece_start, end_t, count_end)))
    qk[n:] += 1
    bounds = np.searchsorted(batch.keys(SPEED), qk)
    lo = bounds[:n]
    hi = np.maximum(bounds[n:2 * n], lo)
    # max over each piece's readings (ranges [lo, hi) of one array; empty ones are NaN)
    edges = np.empty(2 * n, dtype=np.int64)
    edges[0::2], edges[1::2] = lo, hi
    vmax = np.maximum.reduceat(np.append(s.v, np.nan), edges)[0::2]
    f[5] = np.where(hi > lo, vmax, np.nan)
    _event_sums(batch, piece_v, piece_start, count_end, f)
    if not closed_mask.all():  # after the last movement of open trips (closed ones: empty ranges)
        after = np.zeros_like(f)
        _event_sums(batch, piece_v, count_end + 1, np.where(closed_mask, count_end, END), after)
        f[15:20] = after[7:12]
    first_fix = last_fix = None
    if p is not None and len(p):
        step = np.zeros(len(p))  # metres from the vehicle's previous fix (0 at its first)
        if len(p) > 1:
            hop = ops.haversine_m(p.lat[:-1], p.lon[:-1], p.lat[1:], p.lon[1:])
            step[1:] = np.where(p.vehicle[1:] == p.vehicle[:-1], hop, 0.0)
        bounds = np.searchsorted(batch.keys("@positions"), qk)
        lo = bounds[:n]
        hi = np.maximum(bounds[n:2 * n], lo)
        hi_c = np.clip(bounds[2 * n:], lo, hi)  # fixes up to the counting end
        # the hops between the piece's fixes: into fixes up to count_end, and after it
        f[6] = ops.range_sum(step, np.minimum(lo + 1, hi_c), hi_c)
        f[14] = ops.range_sum(step, np.maximum(np.minimum(lo + 1, hi), hi_c), hi)
        has_fix = hi > lo
        first_fix = np.where(has_fix, lo, -1)
        first_fix_counts = hi_c > lo  # the first fix here is within the counting range
        last_fix = np.where(has_fix, hi - 1, -1)

    # --- start values (new trips), and end values where the last movement is in this batch ---
    f[0:5, :] = np.nan
    f[20:25, :] = np.nan
    # the piece's own last movement (its end so far) is in this batch: always for new pieces, and
    # for a carried trip that went on here (a later trip of the same vehicle does not count)
    fresh = np.ones(n, dtype=bool)
    if nc:
        fresh[carried_rows] = count_end[carried_rows] > carried_last[cv]
    ends = np.flatnonzero(fresh)
    if n_new or ends.shape[0]:
        rows = np.concatenate((new_rows, ends))
        at = _values_at(batch, p, piece_v[rows], np.concatenate((piece_start[new_rows], count_end[ends])), ctx_ms)
        f[0:5, new_rows] = at[:, :n_new]
        f[20:25, ends] = at[:, n_new:]

    # --- merge with what the carried trips accumulated in earlier batches --------------
    trip_id = np.empty(n, dtype=object)
    if n_new:
        nv = piece_v[new_rows]
        trip_id[new_rows] = [f"{vin}-{t}" for vin, t in zip(ctx.vin(nv).tolist(), piece_start[new_rows].tolist(),
                                                            strict=True)]
    if nc:
        pick = operator.itemgetter(*F_FIELDS)
        try:
            picked = [pick(st) for st in sts]
        except KeyError:  # a state without some field (stored by an older version): absent = None
            picked = [tuple(st.get(k) for k in F_FIELDS) for st in sts]
        table = np.array(picked, dtype=np.float64).reshape(nc, len(F_FIELDS))  # None -> NaN
        trip_id[carried_rows] = [st["trip_id"] for st in sts]
        f[6:12, carried_rows] += np.nan_to_num(table[:, 6:12]).T
        # earlier batches' pending share: the trip's if it moved again here, else still pending
        # (and dropped if it ends here at its earlier last movement)
        moved = fresh[carried_rows]
        earlier = np.nan_to_num(table[:, 14:20]).T
        f[6:12, carried_rows] += np.where(moved, earlier, 0.0)
        f[14:20, carried_rows] += np.where(moved, 0.0, earlier)
        f[5, carried_rows] = np.fmax(f[5, carried_rows], table[:, 5])
        if p is not None:
            ok = np.zeros(nc, dtype=bool)
            counts = np.zeros(nc, dtype=bool)
            lat2: Any = np.nan
            lon2: Any = np.nan
            if first_fix is not None:
                ff = first_fix[carried_rows]
                ok = ff >= 0
                counts = first_fix_counts[carried_rows]
                lat2, lon2 = p.lat[np.maximum(ff, 0)], p.lon[np.maximum(ff, 0)]
            # from the last fix before this batch to the first here: the trip's, or pending
            bridge = ops.haversine_m(table[:, 12], table[:, 13], lat2, lon2)
            bridge = np.where(ok & ~np.isnan(bridge), bridge, 0.0)
            f[6, carried_rows] += np.where(counts, bridge, 0.0)
            f[14, carried_rows] += np.where(counts, 0.0, bridge)
        f[0:5, carried_rows] = table[:, 0:5].T
        stale = carried_rows[~fresh[carried_rows]]  # no movement here: the stored end values hold
        f[20:25, stale] = table[~fresh[carried_rows], 20:25].T
        f[12:14, :] = np.nan
        f[12:14, carried_rows] = table[:, 12:14].T
    else:
        f[12:14, :] = np.nan

    # --- events ------------------------------------------------------------------------
    if n_new:
        r = new_rows
        ctx.emit("fleet.trip.started", time=piece_start[r], origin=b_rec, vehicle=piece_v[r],
                 data={"trip_id": trip_id[r], "location.lat": f[0, r], "location.lon": f[1, r],
                       "odometer_km": np.round(f[2, r] / 1000.0, 3)})
    if n_closed:
        c = closed
        start_lat, start_lon, start_odo, start_soc, start_fuel = f[0:5, c]
        end_lat, end_lon, end_odo, end_soc, end_fuel = f[20:25, c]
        dist_m, n_braking, n_acceleration, n_cornering, speeding_ms, idle_s = f[6:12, c]
        odo_km = (end_odo - start_odo) / 1000.0
        distance_km = np.where(np.isnan(odo_km) | (odo_km < 0), dist_m / 1000.0, odo_km)
        duration_s = (end_t[c] - piece_start[c]) / 1000.0
        energy = np.clip(start_soc - end_soc, 0, None) / 100.0 * float(cfg["battery_capacity_kwh"])
        fuel = np.clip(start_fuel - end_fuel, 0, None) / 100.0 * float(cfg["fuel_tank_l"])
        harsh = n_braking + n_acceleration + n_cornering
        end_time, origin, vehicle, ids = end_t[c], end_rec[c], piece_v[c], trip_id[c]
        ctx.emit("fleet.trip.ended", time=end_time, origin=origin, vehicle=vehicle,
                 data={"trip_id": ids, "duration_s": duration_s,
                       "distance_km": np.round(distance_km, 3), "energy_kwh": np.round(energy, 3),
                       "fuel_l": np.round(fuel, 2), "harsh_events": harsh.astype(np.int64),
                       "start.lat": start_lat, "start.lon": start_lon,
                       "end.lat": end_lat, "end.lon": end_lon})
        with np.errstate(divide="ignore", invalid="ignore"):
            rated = distance_km >= float(cfg["min_distance_km_for_rates"])
            per100 = np.where(rated, 100.0 / distance_km, np.nan)
            dur = np.where(duration_s > 0, duration_s, np.nan)
            ctx.emit("fleet.behaviour.features", time=end_time, origin=origin, vehicle=vehicle,
                     data={"trip_id": ids, "distance_km": np.round(distance_km, 3),
                           "duration_s": duration_s,
                           "mean_speed_kmh": np.round(distance_km / (dur / 3600.0), 2),
                           "max_speed_kmh": np.round(f[5, c], 1),
                           "harsh_braking_per_100km": np.round(n_braking * per100, 3),
                           "harsh_accel_per_100km": np.round(n_acceleration * per100, 3),
                           "harsh_cornering_per_100km": np.round(n_cornering * per100, 3),
                           "speeding_share": np.round(np.clip(speeding_ms / 1000.0 / dur, 0, 1), 4),
                           "idle_share": np.round(np.clip(idle_s / dur, 0, 1), 4),
                           "energy_kwh_per_100km": np.round(energy * per100, 3)})

    # --- state: open trips kept, closed ones dropped ------------------------------------
    updates: dict[int, dict[str, Any] | None] = dict.fromkeys(stored)
    keep = np.flatnonzero(~closed_mask)
    if keep.shape[0]:
        if last_fix is not None:
            has_fix = last_fix >= 0
            at_fix = np.maximum(last_fix, 0)
            f[12] = np.where(has_fix, p.lat[at_fix], f[12])  # type: ignore[union-attr]
            f[13] = np.where(has_fix, p.lon[at_fix], f[13])  # type: ignore[union-attr]
        kept_v = piece_v[keep]
        for row, times in ((25, report_t), (26, seen_fix_t)):
            tv = times[kept_v]
            f[row, keep] = np.where(tv != ops.NO_TIME, tv, np.nan)
        values = f[:, keep].T
        bad = ~np.isfinite(values)
        if bad.any():  # NaN (and infinity) as None, which is what the state store makes of them
            values = values.astype(object)
            values[bad] = None
        # the values as the state store keeps them (plain Python), keyed in the order of STATE_FIELDS
        updates.update(zip(kept_v.tolist(), [
            dict(zip(STATE_FIELDS, (i, t0, tm, *v), strict=True))
            for i, t0, tm, v in zip(trip_id[keep].tolist(), piece_start[keep].tolist(),
                                    last_moving_of[kept_v].tolist(), values.tolist(), strict=True)], strict=True))
    ctx.save_states(updates, plain=True)


# the float columns of the per-piece table, in the order the state lists them after
# trip_id, start_t and last_moving_t (the last two: epoch ms of the latest report and fix)
F_FIELDS = ("start_lat", "start_lon", "start_odo", "start_soc", "start_fuel", "max_speed", *COUNTERS,
            "last_lat", "last_lon", *PENDING, *END_VALUES, "last_report_t", "last_fix_t")
STATE_FIELDS = ("trip_id", "start_t", "last_moving_t", *F_FIELDS)  # the state's keys, in order


# What tells that a vehicle is still there: its speed, or (parked, ignition off: no speed) any
# other of these readings, which travel in the same frames and topic as the speed. GPS fixes
# do not count: they come on their own topic, consumed on its own, and may run ahead of the
# speed readings, so a fix could "prove" a stop before the movement that preceded it arrived.
REPORTS = (SPEED, SOC, ODOMETER, FUEL)


def _last_reports(batch: HandlerInput, n_vins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per vehicle index: the time and record of its latest reading among REPORTS in this
    batch (ops.NO_TIME and -1 where it has none); the speed wins a tie."""
    last_t = np.full(n_vins, ops.NO_TIME, dtype=np.int64)
    last_rec = np.full(n_vins, -1, dtype=np.int64)
    for name in REPORTS:
        if name != SPEED and not batch.has(name):
            continue
        sig = batch.signal(name)
        if not len(sig):
            continue
        rows = np.flatnonzero(ops.last_of_group(sig.vehicle))
        v, t = sig.vehicle[rows], sig.t[rows]
        later = t > last_t[v]
        if later.any():
            v, rows = v[later], rows[later]
            last_t[v] = t[later]
            last_rec[v] = sig.record_at(rows)
    return last_t, last_rec


def _values_at(batch: HandlerInput, p: Any, v: np.ndarray, t: np.ndarray, ctx_ms: int) -> np.ndarray:
    """Rows lat, lon, odometer, SoC and fuel nearest to each (v, t) within ctx_ms (NaN where none)."""
    out = np.full((5, v.shape[0]), np.nan)
    qk = batch.space.key(v, t)
    if p is not None and len(p):
        j = ops.nearest_rows(p.vehicle, p.t, batch.keys("@positions"), v, t, qk, max_dist_ms=ctx_ms)
        out[0], out[1] = ops.take_or_nan(p.lat, j), ops.take_or_nan(p.lon, j)
    for k, name in ((2, ODOMETER), (3, SOC), (4, FUEL)):
        if batch.has(name):
            sig = batch.signal(name)
            j = ops.nearest_rows(sig.vehicle, sig.t, batch.keys(name), v, t, qk, max_dist_ms=ctx_ms)
            out[k] = ops.take_or_nan(sig.v, j)
    return out


_KINDS = ((7, HARSH[0], None), (8, HARSH[1], None), (9, HARSH[2], None), (10, SPEEDING, "duration_ms"),
          (11, IDLING, "duration_s"))


def _event_sums(batch: HandlerInput, piece_v: np.ndarray, start: np.ndarray, end: np.ndarray,
                out: np.ndarray) -> None:
    """Per piece, into rows 7-11 of `out`: harsh-event counts by kind, speeding ms and idling s
    of events in its time range."""
    ev = batch.events
    if not len(ev):
        return
    types = ev.attrs["type"]
    present = set(types.tolist())
    if not any(etype in present for _, etype, _ in _KINDS):
        return
    ev_v = batch.event_vehicle()
    for row, etype, field in _KINDS:
        if etype not in present:
            continue
        sel = np.flatnonzero((types == etype) & (ev_v >= 0))
        if not sel.shape[0]:
            continue
        t = ev.attrs["time"][sel]
        order = np.lexsort((t, ev_v[sel]))
        sel, t = sel[order], np.asarray(t[order], dtype=np.int64)
        lo, hi = ops.range_bounds(ev_v[sel], t, piece_v, start, end)
        if field is None:
            out[row] = (hi - lo).astype(np.float64)
        else:
            vals = np.nan_to_num(ev.data[field][sel].astype(np.float64)) if field in ev.data else np.zeros(sel.shape[0])
            out[row] = ops.range_reduce(vals, lo, hi, "sum")

