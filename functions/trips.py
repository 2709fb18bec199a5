"""Trips: start and end with a summary, and the trip's driving-behaviour features.

A trip starts at the first reading at or above `move_kmh` and ends at the last one
before the vehicle stands still (or stops reporting) for `stop_s`. The end is therefore
known once the vehicle has reported for `stop_s` without moving (its speed, or, parked with
the ignition off, its state of charge, odometer or fuel level: a parked EV reports its
battery once a minute), or when it moves again after a longer pause (`end_reason` "stop").
A vehicle that sends nothing at all while parked keeps its trip open until it next reports,
or until the worker declares it silent (`batch.silent`, after `vehicle_idle_timeout_s` of
processing time): then the trip ends at its last movement with the summary kept in state
(`end_reason` "silent"). An open trip is kept in state, so trips span any number of batches.

GPS fixes come on their own topic and may reach a batch before or after the same minutes'
speed readings. The handler keeps a GPS odometer per vehicle (the distance along its fixes,
in the order of their times, wherever they arrive) with checkpoints of the fixes that run
ahead of the speed readings, so a trip's GPS distance is that odometer at the trip's end
minus at its start. A trip that ends at a stop waits for the vehicle's fixes to reach its
end. With the worker's watermark (`batch.watermark`: both topics delivered up to that event
time) it waits exactly until the watermark passes the end. Without one it guesses: at most
another `stop_s`, for a vehicle whose GPS went quiet, and when the topics drift further apart
than that (a backlog, a replay at full speed: hours of event time), the GPS distance is
approximate or absent.

Distance comes from the odometer when the vehicle sends one, else from the GPS track;
energy from the fall in state of charge times `battery_capacity_kwh`; fuel from the fall
in fuel level times `fuel_tank_l`. Harsh events, speeding and idling are counted from
the events of the harsh_driving, speeding and idling handlers, which run before this one.
At trip end it also emits `fleet.behaviour.features` for the recommendation service.

Counts cover the trip from its start to its end. While a trip is open, what comes after
its last movement so far is kept apart (`pending_*` in state): it joins the trip if the
vehicle moves again within `stop_s`, and is dropped if the trip turns out to have ended.
The values at the end (location, odometer, SoC, fuel) are looked up in the batch that holds
the last movement and kept in state. So the summary does not depend on how the stream was
cut into batches, except that a start or end value is the reading nearest that time (within
`context_ms`) among those in the deciding batch, and the GPS odometer is read at the last
kept checkpoint before a time when more than `gps_checkpoints` fixes ran ahead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.handlers import HandlerContext, HandlerInput, handler, ops

SPEED = "Vehicle.Speed"
ODOMETER = "Vehicle.TraveledDistance"  # metres
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
FUEL = "Vehicle.Powertrain.FuelSystem.RelativeLevel"
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
HARSH = ("fleet.driving.harsh_braking", "fleet.driving.harsh_acceleration", "fleet.driving.harsh_cornering")
SPEEDING, IDLING = "fleet.driving.speeding", "fleet.driving.idling"
END = np.iinfo(np.int64).max // 4  # "still open" end of a range

# accumulated per open trip (state), summed over the batches the trip spans
COUNTERS = ("n_braking", "n_acceleration", "n_cornering", "speeding_ms", "idle_s")
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
    emits={"fleet.trip.started": {"vin": "string", "trip_id": "string", "odometer_km": "number?", "location.lat": "number?", "location.lon": "number?"},
           "fleet.trip.ended": {"vin": "string", "trip_id": "string", "end_reason": "string", "duration_s": "number",
                                "distance_km": "number?", "energy_kwh": "number?", "fuel_l": "number?",
                                "harsh_events": "integer", "start.lat": "number?", "start.lon": "number?",
                                "end.lat": "number?", "end.lon": "number?"},
           "fleet.behaviour.features": {"vin": "string", "trip_id": "string", "distance_km": "number?",
                                        "duration_s": "number", "mean_speed_kmh": "number?",
                                        "max_speed_kmh": "number?", "harsh_braking_per_100km": "number?",
                                        "harsh_accel_per_100km": "number?",
                                        "harsh_cornering_per_100km": "number?", "speeding_share": "number?",
                                        "idle_share": "number?", "energy_kwh_per_100km": "number?"}},
    identity=["trip_id"],  # `<VIN>-<start ms>`
    state=True,
    defaults={"move_kmh": 5.0, "stop_s": 300, "battery_capacity_kwh": 6.1, "fuel_tank_l": 50.0,
              "context_ms": 60_000, "min_distance_km_for_rates": 0.5, "gps_checkpoints": 48,
              "gps_ahead_s": 3600},
)
def trips(batch: HandlerInput, ctx: HandlerContext) -> None:
    """fleet.trip.started / ended (with summary) and fleet.behaviour.features per trip."""
    cfg = ctx.config
    if batch.silent.shape[0]:  # vehicles that fell silent (no readings of theirs here)
        _end_silent(batch, ctx)
    s = batch.signal(SPEED)
    n_vins = len(batch.vins)
    last_t, last_rec = _last_reports(batch, n_vins)
    p = batch.positions() if batch.has(LAT) and batch.has(LON) else None
    fix_t = np.full(n_vins, ops.NO_TIME, dtype=np.int64)  # each vehicle's last fix here
    fix_rec = np.full(n_vins, -1, dtype=np.int64)
    if p is not None and len(p):
        rows = np.flatnonzero(ops.last_of_group(p.vehicle))
        fix_t[p.vehicle[rows]], fix_rec[p.vehicle[rows]] = p.t[rows], p.record[rows]
    # vehicles that report, and those that only send fixes (their GPS odometers move on)
    seen = np.flatnonzero((last_t != ops.NO_TIME) | (fix_t != ops.NO_TIME))
    if not seen.shape[0]:
        return
    stop_ms, ctx_ms = int(cfg["stop_s"]) * 1000, int(cfg["context_ms"])
    stored = {v: _compact(st) for v, st in ctx.states(seen).items()}
    odo = _GpsOdometer(stored, p, n_vins)
    s_vehicle, s_t = s.vehicle, s.t
    # latest report so far (this batch, or the ones before)
    report_t = last_t.copy()
    if stored:
        sv = np.fromiter(stored, dtype=np.int64, count=len(stored))
        before = np.array([st["odo"][0] for st in stored.values()], dtype=np.float64)  # None -> NaN
        report_t[sv] = np.maximum(report_t[sv], np.where(np.isnan(before), ops.NO_TIME, before).astype(np.int64))

    # --- the open trips carried from earlier batches ----------------------------------------
    open_trips = {v: st["trip"] for v, st in stored.items() if "trip" in st}
    nc = len(open_trips)
    sts = list(open_trips.values())  # [trip_id, start_t, last_moving_t, *F_FIELDS] each
    carried_last = np.full(n_vins, ops.NO_TIME, dtype=np.int64)
    cv = np.fromiter(open_trips, dtype=np.int64, count=nc)  # ascending
    c_start = np.empty(0, dtype=np.int64)
    if nc:
        carried_last[cv] = [tr[2] for tr in sts]
        c_start = np.array([tr[1] for tr in sts], dtype=np.int64)

    # --- boundaries among moving readings ---------------------------------------------
    mi = np.flatnonzero(s.v >= float(cfg["move_kmh"]))
    mv, mt = s_vehicle[mi], s_t[mi]
    # Late readings from before a vehicle's open trip (a delayed upload) must neither split
    # nor restart it: only movement after the trip's last known movement counts.
    floor = carried_last
    quiet = [(v, st["quiet_until"]) for v, st in stored.items() if "quiet_until" in st]
    if quiet:  # a trip ended by silence: its own late readings must not start it again
        floor = carried_last.copy()
        qv = np.array([q[0] for q in quiet], dtype=np.int64)
        floor[qv] = np.maximum(floor[qv], np.array([q[1] for q in quiet], dtype=np.int64))
    newer = mt > floor[mv]
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
    if not n:  # no trip here: only the GPS odometers move on
        odometers = odo.states(report_t, int(cfg["gps_checkpoints"]), int(cfg["gps_ahead_s"]) * 1000)
        ctx.save_states(_odometer_updates(stored, odometers), plain=True)
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
    # hops must be in before it closes). With a watermark, that is known: both topics have been
    # delivered past the end. Without one, a vehicle without fixes, or still for 2 x stop_s
    # without its fixes catching up, does not wait for them.
    lpv = piece_v[last_rows]
    lmov = last_moving_of[lpv]
    still_for = report_t[lpv] - lmov
    fix_so_far = odo.latest_t[lpv]
    if batch.watermark is not None:
        gps_in = (fix_so_far >= lmov) | (batch.watermark[lpv] >= lmov)
    else:
        gps_in = (fix_so_far == ops.NO_TIME) | (fix_so_far >= lmov) | (still_for >= 2 * stop_ms)
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
    # per piece: 0-4 start lat, lon, odometer, SoC, fuel; 5 max speed; 6-10 COUNTERS;
    # 11-15 PENDING; 16-20 END_VALUES; 21-22 GPS odometer at the start and at the end so far
    f = np.zeros((len(F_FIELDS), n))
    space = batch.space
    # Counters run to the trip's end, which for an open trip is its last movement so far; what
    # comes after is kept pending. So a trip counts the same however the stream is cut into
    # batches (its end is only known stop_s later, usually batches later).
    count_end = np.where(closed_mask, end_t, last_moving_of[piece_v])
    # [start, end] of every piece as a key range; ends as exclusive keys (key + 1: side="right")
    qk = space.key(np.concatenate((piece_v, piece_v)), np.concatenate((piece_start, end_t)))
    qk[n:] += 1
    bounds = np.searchsorted(batch.keys(SPEED), qk)
    lo = bounds[:n]
    hi = np.maximum(bounds[n:], lo)
    # max over each piece's readings (ranges [lo, hi) of one array; empty ones are NaN)
    edges = np.empty(2 * n, dtype=np.int64)
    edges[0::2], edges[1::2] = lo, hi
    vmax = np.maximum.reduceat(np.append(s.v, np.nan), edges)[0::2]
    f[5] = np.where(hi > lo, vmax, np.nan)
    _event_sums(batch, piece_v, piece_start, count_end, f)
    if not closed_mask.all():  # after the last movement of open trips (closed ones: empty ranges)
        after = np.zeros_like(f)
        _event_sums(batch, piece_v, count_end + 1, np.where(closed_mask, count_end, END), after)
        f[11:16] = after[6:11]
    # the GPS odometer at the start and at the end so far (NaN: its fixes are not in yet)
    both = odo.cum_at(np.concatenate((piece_v, piece_v)), np.concatenate((piece_start, count_end)),
                      first_after=np.arange(2 * n) < n)
    f[21], f[22] = both[:n], both[n:]

    # --- start values (new trips), and end values where the last movement is in this batch ---
    f[0:5, :] = np.nan
    f[16:21, :] = np.nan
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
        f[16:21, ends] = at[:, n_new:]

    # --- merge with what the carried trips accumulated in earlier batches --------------
    trip_id = np.empty(n, dtype=object)
    if n_new:
        nv = piece_v[new_rows]
        trip_id[new_rows] = [f"{vin}-{t}" for vin, t in zip(ctx.vin(nv).tolist(), piece_start[new_rows].tolist(),
                                                            strict=True)]
    if nc:
        table = np.array([tr[3:] for tr in sts], dtype=np.float64).reshape(nc, len(F_FIELDS))  # None -> NaN
        trip_id[carried_rows] = [tr[0] for tr in sts]
        f[6:11, carried_rows] += np.nan_to_num(table[:, 6:11]).T
        # earlier batches' pending share: the trip's if it moved again here, else still pending
        # (and dropped if it ends here at its earlier last movement)
        moved = fresh[carried_rows]
        earlier = np.nan_to_num(table[:, 11:16]).T
        f[6:11, carried_rows] += np.where(moved, earlier, 0.0)
        f[11:16, carried_rows] += np.where(moved, 0.0, earlier)
        f[5, carried_rows] = np.fmax(f[5, carried_rows], table[:, 5])
        f[0:5, carried_rows] = table[:, 0:5].T
        stale = carried_rows[~fresh[carried_rows]]  # no movement here: the stored end values hold
        f[16:21, stale] = table[~fresh[carried_rows], 16:21].T
        # odometer readings already taken hold; those not known then may be now
        f[21, carried_rows] = np.where(np.isnan(table[:, 21]), f[21, carried_rows], table[:, 21])
        held = table[~fresh[carried_rows], 22]
        f[22, stale] = np.where(np.isnan(held), f[22, stale], held)

    # --- events ------------------------------------------------------------------------
    if n_new:
        r = new_rows
        ctx.emit("fleet.trip.started", time=piece_start[r], origin=b_rec, vehicle=piece_v[r],
                 data={"trip_id": trip_id[r], "location.lat": f[0, r], "location.lon": f[1, r],
                       "odometer_km": np.round(f[2, r] / 1000.0, 3)})
    if n_closed:
        c = closed
        _emit_ended(ctx, f[:, c], piece_start[c], end_t[c], end_rec[c], piece_v[c], trip_id[c], odo, "stop")

    # --- state: open trips kept, closed ones dropped; the GPS odometer kept with an open trip,
    # or on its own while fixes run ahead of the speed readings -------------------------
    odometers = odo.states(report_t, int(cfg["gps_checkpoints"]), int(cfg["gps_ahead_s"]) * 1000)
    updates = _odometer_updates(stored, odometers)
    keep = np.flatnonzero(~closed_mask)
    if keep.shape[0]:
        kept_v = piece_v[keep]
        values = f[:, keep].T
        bad = ~np.isfinite(values)
        if bad.any():  # NaN (and infinity) as None, which is what the state store makes of them
            values = values.astype(object)
            values[bad] = None
        # the values as the state store keeps them (plain Python), in the compact layout; a
        # vehicle without fixes keeps its latest report only
        odo_parts = [odometers.get(k) or ([r, None, None, None, None, None], [])
                     for k, r in zip(kept_v.tolist(), _plain_times(report_t[kept_v]), strict=True)]
        updates.update(zip(kept_v.tolist(), [
            {"trip": [i, t0, tm, *v], "odo": o[0], "ahead": o[1]}
            for i, t0, tm, v, o in zip(trip_id[keep].tolist(), piece_start[keep].tolist(),
                                       last_moving_of[kept_v].tolist(), values.tolist(), odo_parts, strict=True)],
            strict=True))
    ctx.save_states(updates, plain=True)


def _emit_ended(ctx: HandlerContext, f: np.ndarray, start_t: np.ndarray, end_t: np.ndarray, origin: np.ndarray,
                vehicle: np.ndarray, trip_id: np.ndarray, odo: _GpsOdometer, end_reason: str) -> None:
    """fleet.trip.ended and fleet.behaviour.features of closed trips, from their columns of the
    per-piece table (`F_FIELDS` rows); `end_reason` is "stop" or "silent"."""
    cfg = ctx.config
    start_lat, start_lon, start_odo, start_soc, start_fuel = f[0:5]
    end_lat, end_lon, end_odo, end_soc, end_fuel = f[16:21]
    n_braking, n_acceleration, n_cornering, speeding_ms, idle_s = f[6:11]
    # GPS: the odometer at the end; for a vehicle whose fixes stopped before the end, its latest
    # (a fix later than the end but no reading at or before it: unknown, the fixes drifted too far)
    quiet = np.isnan(f[22]) & (odo.latest_t[vehicle] < end_t)
    gps_end = np.where(quiet, odo.latest_cum[vehicle], f[22])
    gps_end = np.where(np.isnan(gps_end) & (f[21] < 0), 0.0, gps_end)  # a migrated trip, no GPS since
    gps_km = np.clip(gps_end - f[21], 0, None) / 1000.0
    odo_km = (end_odo - start_odo) / 1000.0
    distance_km = np.where(np.isnan(odo_km) | (odo_km < 0), gps_km, odo_km)
    duration_s = (end_t - start_t) / 1000.0
    energy = np.clip(start_soc - end_soc, 0, None) / 100.0 * float(cfg["battery_capacity_kwh"])
    fuel = np.clip(start_fuel - end_fuel, 0, None) / 100.0 * float(cfg["fuel_tank_l"])
    harsh = n_braking + n_acceleration + n_cornering
    ctx.emit("fleet.trip.ended", time=end_t, origin=origin, vehicle=vehicle,
             data={"trip_id": trip_id, "end_reason": np.full(end_t.shape[0], end_reason, dtype=object),
                   "duration_s": duration_s,
                   "distance_km": np.round(distance_km, 3), "energy_kwh": np.round(energy, 3),
                   "fuel_l": np.round(fuel, 2), "harsh_events": harsh.astype(np.int64),
                   "start.lat": start_lat, "start.lon": start_lon,
                   "end.lat": end_lat, "end.lon": end_lon})
    with np.errstate(divide="ignore", invalid="ignore"):
        rated = distance_km >= float(cfg["min_distance_km_for_rates"])
        per100 = np.where(rated, 100.0 / distance_km, np.nan)
        dur = np.where(duration_s > 0, duration_s, np.nan)
        ctx.emit("fleet.behaviour.features", time=end_t, origin=origin, vehicle=vehicle,
                 data={"trip_id": trip_id, "distance_km": np.round(distance_km, 3),
                       "duration_s": duration_s,
                       "mean_speed_kmh": np.round(distance_km / (dur / 3600.0), 2),
                       "max_speed_kmh": np.round(f[5], 1),
                       "harsh_braking_per_100km": np.round(n_braking * per100, 3),
                       "harsh_accel_per_100km": np.round(n_acceleration * per100, 3),
                       "harsh_cornering_per_100km": np.round(n_cornering * per100, 3),
                       "speeding_share": np.round(np.clip(speeding_ms / 1000.0 / dur, 0, 1), 4),
                       "idle_share": np.round(np.clip(idle_s / dur, 0, 1), 4),
                       "energy_kwh_per_100km": np.round(energy * per100, 3)})


def _end_silent(batch: HandlerInput, ctx: HandlerContext) -> None:
    """End the open trips of vehicles that fell silent, at their last movement, with the summary
    kept in state (what came after the last movement is dropped, as at a stop); the origin is
    the vehicle's last frame. Their state goes, but for the end time: readings of the trip that
    arrive late (a delayed upload, a replay) must not start it again."""
    stored = {v: _compact(st) for v, st in ctx.states(batch.silent).items()}
    if not stored:
        return
    # pending state goes (an earlier silence's marker stays: the vehicle has not reported since)
    updates: dict[int, dict[str, Any] | None] = {v: None for v, st in stored.items() if "quiet_until" not in st}
    tv = np.array([v for v in sorted(stored) if "trip" in stored[v]], dtype=np.int64)
    if tv.shape[0]:
        sts = [stored[v]["trip"] for v in tv.tolist()]
        f = np.array([tr[3:] for tr in sts], dtype=np.float64).reshape(tv.shape[0], len(F_FIELDS)).T  # None -> NaN
        start_t = np.array([tr[1] for tr in sts], dtype=np.int64)
        end_t = np.array([tr[2] for tr in sts], dtype=np.int64)
        odo = _GpsOdometer(stored, None, len(batch.vins))
        # harsh, speeding and idling events the silence itself closed (emitted in this batch)
        extra = np.zeros_like(f)
        _event_sums(batch, tv, start_t, end_t, extra)
        f[6:11] += extra[6:11]
        unknown = np.isnan(f[22])  # the GPS odometer at the end, if it was not read yet
        if unknown.any():
            f[22, unknown] = odo.cum_at(tv[unknown], end_t[unknown])
        trip_id = np.array([tr[0] for tr in sts], dtype=object)
        _emit_ended(ctx, f, start_t, end_t, batch.first_record(tv), tv, trip_id, odo, "silent")
        for v, t_end in zip(tv.tolist(), end_t.tolist(), strict=True):
            updates[v] = {"odo": [stored[v]["odo"][0], None, None, None, None, None], "ahead": [],
                          "quiet_until": t_end}
    ctx.save_states(updates, plain=True)


# the float columns of the per-piece table, in the order the state lists them after
# trip_id, start_t and last_moving_t (the last two: the GPS odometer at the start and the end)
F_FIELDS = ("start_lat", "start_lon", "start_odo", "start_soc", "start_fuel", "max_speed", *COUNTERS,
            *PENDING, *END_VALUES, "start_gps_m", "end_gps_m")
TRIP_FIELDS = ("trip_id", "start_t", "last_moving_t", *F_FIELDS)
# per vehicle: its latest report, and the GPS odometer: metres along its fixes up to the latest
# one (at last_fix_t, last_lat/lon), and [t, metres] at fixes that came ahead of its reports
ODOMETER_FIELDS = ("last_report_t", "gps_m", "gps_since_t", "last_fix_t", "last_lat", "last_lon", "ahead")
# A vehicle's state is read and written for every batch it reports in, so it is kept compact,
# as lists in the order of the names above (`named` gives the named view):
#   "trip":  TRIP_FIELDS, while a trip is open
#   "odo":   ODOMETER_FIELDS but the last
#   "ahead": [[t, metres], ...]
# Half the cost of a dict of named fields to build, check and store, for 97 vehicles a batch.


def named(state: dict[str, Any]) -> dict[str, Any]:
    """A vehicle's state with each value under its name (TRIP_FIELDS, then ODOMETER_FIELDS)."""
    st = _compact(state)
    out = dict(zip(TRIP_FIELDS, st["trip"], strict=True)) if "trip" in st else {}
    out.update(zip(ODOMETER_FIELDS, (*st["odo"], st["ahead"]), strict=True))
    return out


def _odometer_updates(stored: dict[int, dict[str, Any]],
                      odometers: dict[int, tuple[list[Any], list[list[Any]]]]) -> dict[int, dict[str, Any] | None]:
    """State writes for the vehicles seen here without an open trip: the GPS odometer while
    fixes run ahead of the vehicle's reports, else nothing (stored state deleted)."""
    updates: dict[int, dict[str, Any] | None] = dict.fromkeys(stored)
    for v, (odo, ahead) in odometers.items():
        if ahead:  # checkpoints ahead
            updates[v] = {"odo": odo, "ahead": ahead}
    return updates


def _compact(st: dict[str, Any]) -> dict[str, Any]:
    """The state in the compact layout; states stored by earlier versions (named fields) are
    converted. One stored by the version that summed GPS hops into `dist_m`: the odometer
    starts at 0 at its last fix and the trip's start reads -dist_m, so the distance so far
    carries over (the only way a start reads below 0)."""
    if "odo" in st:
        return st
    get = st.get
    gps_m = get("gps_m")
    start_gps_m = get("start_gps_m")
    if "dist_m" in st and start_gps_m is None:
        start_gps_m = -float(get("dist_m") or 0.0)
        if get("last_fix_t") is not None:  # it had fixes: its odometer goes on from the last one
            gps_m = 0.0
    out: dict[str, Any] = {
        "odo": [get("last_report_t"), gps_m, get("gps_since_t", get("last_fix_t")), get("last_fix_t"),
                get("last_lat"), get("last_lon")],
        "ahead": get("ahead") or []}
    if "trip_id" in st:
        out["trip"] = [st["trip_id"], int(st["start_t"]), int(st["last_moving_t"]),
                       *(start_gps_m if k == "start_gps_m" else get(k) for k in F_FIELDS)]
    return out


def _plain_times(t: np.ndarray) -> list[int | None]:
    return [None if x == ops.NO_TIME else x for x in t.tolist()]


class _GpsOdometer:
    """Metres along each vehicle's GPS fixes in the order of their times, across batches.

    Fixes come on their own topic, possibly ahead of or behind the speed readings. The
    odometer takes each vehicle's new fixes (later than its latest) as they arrive; `cum_at`
    reads it at a time from this batch's fixes, the latest fix before it, or the checkpoints
    kept of fixes that came ahead of the vehicle's reports (NaN where the fixes up to that
    time are not in yet). Sums run over each vehicle's own hops only (ops.range_sum), so a
    vehicle's odometer does not depend on the other vehicles of the batch.
    """

    def __init__(self, stored: dict[int, dict[str, Any]], p: Any, n_vins: int) -> None:
        self.base = np.full(n_vins, np.nan)  # metres at the latest stored fix
        lat0, lon0 = np.full(n_vins, np.nan), np.full(n_vins, np.nan)
        t0 = np.full(n_vins, ops.NO_TIME, dtype=np.int64)
        self.since = np.full(n_vins, ops.NO_TIME, dtype=np.int64)  # time of the odometer's first fix
        with_gps = [(v, st) for v, st in stored.items() if st["odo"][1] is not None]
        pv = pt = np.empty(0, np.int64)
        pc = np.empty(0)
        if with_gps:
            gv = np.array([v for v, _ in with_gps], dtype=np.int64)
            # gps_m, gps_since_t, last_fix_t, last_lat, last_lon
            got = np.array([st["odo"][1:6] for _, st in with_gps], dtype=np.float64)  # None -> NaN
            self.base[gv], t0[gv], lat0[gv], lon0[gv] = got[:, 0], got[:, 2].astype(np.int64), got[:, 3], got[:, 4]
            self.since[gv] = got[:, 1].astype(np.int64)
            # stored points, sorted by (vehicle, t): each vehicle's checkpoints, then its latest fix
            n_ahead = [len(st["ahead"]) for _, st in with_gps]
            if any(n_ahead):
                flat = np.array([tc for _, st in with_gps for tc in st["ahead"]],
                                dtype=np.float64).reshape(-1, 2)
                counts = np.array(n_ahead, dtype=np.int64) + 1
                at = np.cumsum(counts) - 1  # where each vehicle's latest fix goes
                pv = np.repeat(gv, counts)
                pt, pc = np.empty(pv.shape[0], np.int64), np.empty(pv.shape[0])
                mask = np.ones(pv.shape[0], dtype=bool)
                mask[at] = False
                pt[mask], pc[mask] = flat[:, 0].astype(np.int64), flat[:, 1]
                pt[at], pc[at] = t0[gv], self.base[gv]
            else:
                pv, pt, pc = gv, t0[gv].copy(), self.base[gv].copy()
        self.pv, self.pt, self.pc = pv, pt, pc
        self.latest_t, self.latest_cum = t0, self.base.copy()
        self.latest_lat, self.latest_lon = lat0, lon0
        self.nv = self.nt = np.empty(0, np.int64)
        self.hop = np.empty(0)
        self.gstart = np.zeros(n_vins, dtype=np.int64)
        if p is None or not len(p):
            return
        new = p.t > t0[p.vehicle]
        nv, nt, lat, lon = p.vehicle[new], p.t[new], p.lat[new], p.lon[new]
        if not nv.shape[0]:
            return
        hop = np.zeros(nv.shape[0])
        if nv.shape[0] > 1:
            hop[1:] = ops.haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:])
        first = np.flatnonzero(ops.first_of_group(nv))
        fv = nv[first]
        into = ops.haversine_m(lat0[fv], lon0[fv], lat[first], lon[first])  # from the latest stored fix
        hop[first] = np.where(np.isnan(into), 0.0, into)
        last = np.append(first[1:], nv.shape[0]) - 1
        self.nv, self.nt, self.hop = nv, nt, hop
        self.gstart[fv] = first
        fresh = np.isnan(self.base[fv])  # a new odometer: 0 at its first fix
        self.since[fv[fresh]] = nt[first[fresh]]
        self.base[fv] = np.where(fresh, 0.0, self.base[fv])
        self.latest_t[fv], self.latest_lat[fv], self.latest_lon[fv] = nt[last], lat[last], lon[last]
        self.latest_cum[fv] = self.base[fv] + ops.range_sum(hop, first, last + 1)

    def _at_new(self, v: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Metres at new fix j of vehicle v."""
        return self.base[v] + ops.range_sum(self.hop, self.gstart[v], j + 1)

    def cum_at(self, v: np.ndarray, t: np.ndarray, *, first_after: Any = False) -> np.ndarray:
        """The odometer at the latest fix at or before each (v, t); NaN while the vehicle's
        fixes have not reached t. `first_after` (per query or for all): for a time before the
        odometer's first fix, the reading there (0)."""
        out = np.full(v.shape[0], np.nan)
        if not v.shape[0]:
            return out
        j = ops.asof_index(self.nv, self.nt, v, t) if self.nv.shape[0] else np.full(v.shape[0], -1)
        hit = j >= 0
        if hit.any():
            out[hit] = self._at_new(v[hit], j[hit])
        rest = np.flatnonzero(~hit)
        if rest.shape[0] and self.pv.shape[0]:
            k = ops.asof_index(self.pv, self.pt, v[rest], t[rest])
            out[rest[k >= 0]] = self.pc[k[k >= 0]]
        if np.any(first_after):
            before = np.isnan(out) & (self.latest_t[v] >= t) & (t < self.since[v]) & first_after
            out[before] = 0.0
        out[t > self.latest_t[v]] = np.nan
        return out

    def states(self, report_t: np.ndarray, max_points: int,
               max_ahead_ms: int) -> dict[int, tuple[list[Any], list[list[Any]]]]:
        """The odometer part of the state, ("odo", "ahead") lists, of every vehicle that has
        one; `ahead` holds up to `max_points` [t, metres] of the fixes later than the vehicle's
        latest report (and within `max_ahead_ms` of its latest fix), the latest fix left out."""
        has = np.flatnonzero(self.latest_t != ops.NO_TIME)
        if not has.shape[0]:
            return {}
        # candidate checkpoints: stored points and new fixes, later than the latest report
        av = [self.pv, self.nv]
        at = [self.pt, self.nt]
        src = [np.arange(self.pv.shape[0]), -1 - np.arange(self.nv.shape[0])]  # >= 0 stored, < 0 new
        cv, ct, cs = np.concatenate(av), np.concatenate(at), np.concatenate(src)
        floor = np.maximum(report_t[cv], self.latest_t[cv] - max_ahead_ms)
        keep = (ct > floor) & (ct < self.latest_t[cv])
        cv, ct, cs = cv[keep], ct[keep], cs[keep]
        order = np.lexsort((ct, cv))
        cv, ct, cs = cv[order], ct[order], cs[order]
        if cv.shape[0]:
            # at most max_points per vehicle, spread evenly over its checkpoints
            new_group = ops.first_of_group(cv)
            rank = ops.rank_in_group(new_group)
            size = np.diff(np.append(np.flatnonzero(new_group), cv.shape[0]))
            n_of = np.repeat(size, size)
            k = max(int(max_points), 2)
            thin = n_of > k
            i = (rank * (k - 1) + (n_of - 2)) // np.maximum(n_of - 1, 1)
            chosen = ~thin | ((i * (n_of - 1)) // (k - 1) == rank)
            cv, ct, cs = cv[chosen], ct[chosen], cs[chosen]
        metres = np.empty(cs.shape[0])
        stored_pt = cs >= 0
        metres[stored_pt] = self.pc[cs[stored_pt]]
        new_pt = np.flatnonzero(~stored_pt)
        if new_pt.shape[0]:
            j = -1 - cs[new_pt]
            metres[new_pt] = self._at_new(self.nv[j], j)
        ahead: dict[int, list[list[Any]]] = {}
        for v, t, m in zip(cv.tolist(), ct.tolist(), metres.tolist(), strict=True):
            ahead.setdefault(v, []).append([t, m])
        reports = _plain_times(report_t[has])
        return {v: ([r, c, since, t, la, lo], ahead.get(v, []))
                for v, r, c, since, t, la, lo in zip(has.tolist(), reports, self.latest_cum[has].tolist(),
                                                     self.since[has].tolist(), self.latest_t[has].tolist(),
                                                     self.latest_lat[has].tolist(), self.latest_lon[has].tolist(),
                                                     strict=True)}


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


_KINDS = ((6, HARSH[0], None), (7, HARSH[1], None), (8, HARSH[2], None), (9, SPEEDING, "duration_ms"),
          (10, IDLING, "duration_s"))


def _event_sums(batch: HandlerInput, piece_v: np.ndarray, start: np.ndarray, end: np.ndarray,
                out: np.ndarray) -> None:
    """Per piece, into rows 6-10 of `out`: harsh-event counts by kind, speeding ms and idling s
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

