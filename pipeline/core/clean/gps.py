"""GPS track checks: jumps and teleports found by dead reckoning on robust local velocity.

A receiver may hold its position between fixes, so fixes are first collapsed into runs
of one position (timed by their first appearance). Each step between runs is compared
with the step the local velocity predicts: the velocity is the component-wise median of
the steps around it (a window of `velocity_window` steps), so one or a few displaced
fixes do not move it. The difference, the step's anomaly in metres, is what a jump
looks like: a multipath jump of 60 m while driving at 100 km/h is obvious here, while
its implied speed is unremarkable.

Deciding which side of an anomaly is wrong needs order: `resolve_track` walks a
vehicle's runs, accumulating anomalies since the last accepted run (the dead-reckoning
residual); a run is accepted while that residual stays within `jump_m` plus what the
velocity estimate may be off by (it grows with the step's duration and the time span of
the window the median came from, so receivers that update every 10 s are judged as
loosely as they must be), so the fixes of a jump are rejected and the track is accepted
again where it returns. A run let in only by the room a gap in the fixes allows is in
doubt until the next run: if that one fits the track before it and not it, the run was
the jump (a receiver that returns from an outage on a multipath fix). It runs only for
vehicles with a suspicious step or a jump still open from the last batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core.batch import BoolArray, FloatArray, IntArray
from pipeline.core.clean.config import CleaningConfig
from pipeline.core.clean.groups import ranges, rank_in_group, starts_of, window_median
from pipeline.core.clean.outcomes import (
    GPS_IMPLIED_SPEED,
    GPS_NULL_ISLAND,
    GPS_OUT_OF_BOUNDS,
    GPS_POOR_ACCURACY,
)
from pipeline.core.clean.rows import SortedRows, alive_rows_of, join_by_time
from pipeline.core.clean.state import NO_T, VehicleState

M_PER_DEG = 111_320.0


@dataclass(frozen=True, slots=True)
class TrackRules:
    """Parameters of the track check (from `gps` in cleaning.yaml)."""

    jump_m: float  # residual allowed whatever the motion (receiver noise)
    max_accel_ms2: float  # velocity change the prediction allows for, per second
    max_speed_kmh: float  # implied speed from the last accepted run
    relocate_after_ms: float  # an open jump lasting this long is accepted as the new track

    def allowance(self, dt_s: float, tau_s: float) -> float:
        """Extra residual (m) a step of `dt_s` may show when the velocity is known `tau_s` away.

        The local velocity is a median over a window of steps spanning about 2 * tau_s,
        so the true velocity may differ from it by max_accel * (tau + dt / 2).
        """
        return self.max_accel_ms2 * dt_s * (dt_s / 2 + tau_s)


def resolve_track(x: Sequence[float], y: Sequence[float], t: Sequence[float], t_last: Sequence[float],
                  anomaly_x: Sequence[float], anomaly_y: Sequence[float], allowance: Sequence[float],
                  judged: Sequence[bool], rules: TrackRules,
                  open_since: float | None) -> tuple[list[bool], float | None]:
    """Accept or reject the runs of one vehicle, in time order; returns (rejected, open_since).

    `x`, `y` are metres, `t` the first and `t_last` the last appearance (ms) of each run;
    `anomaly_*[j]` is the step into run j minus the step the local velocity predicts and
    `allowance[j]` how far that prediction may be off. Since the last accepted run the
    anomalies add up to the dead-reckoning residual; run j is accepted while it stays
    within `jump_m` plus the summed allowances (and the implied speed within the cap).
    Runs not `judged` (history) are accepted as they are. `open_since` is when a jump
    that is still open began (None if the track is closed).
    """
    n = len(x)
    rejected = [False] * n
    anchor = 0
    ax = ay = room = 0.0
    since = open_since
    cap = rules.max_speed_kmh / 3.6
    # how the anchor was let in when only the room a gap allows let it in (its residual was
    # beyond jump_m): the anchor before it, the residual and the room (else None)
    unconfirmed: tuple[int, float, float, float] | None = None

    def fits(j: int, a: int, rx: float, ry: float, allowed: float) -> bool:
        dt = (t[j] - t[a]) / 1000.0
        dist = math.hypot(x[j] - x[a], y[j] - y[a])
        fast = dist > 0 and (dt <= 0 or dist / dt > cap)
        return not fast and math.hypot(rx, ry) <= rules.jump_m + allowed

    for j in range(1, n):
        ax += anomaly_x[j]
        ay += anomaly_y[j]
        room += allowance[j]
        if not judged[j]:
            anchor, ax, ay, room, unconfirmed = j, 0.0, 0.0, 0.0, None
            continue
        if x[j] == x[anchor] and y[j] == y[anchor]:
            since = None  # back on the trusted position: the receiver held it (anchor stays)
            continue
        if fits(j, anchor, ax, ay, room):
            # let in on the room alone (a residual beyond jump_m): unconfirmed
            unconfirmed = (anchor, ax, ay, room) if math.hypot(ax, ay) > rules.jump_m else None
            anchor, ax, ay, room, since = j, 0.0, 0.0, 0.0, None
        elif since is not None and t_last[j] - since >= rules.relocate_after_ms:
            anchor, ax, ay, room, since, unconfirmed = j, 0.0, 0.0, 0.0, None, None  # stayed away: relocated
        elif unconfirmed is not None and fits(
                j, unconfirmed[0], unconfirmed[1] + ax, unconfirmed[2] + ay, unconfirmed[3] + room):
            # the run agrees with the track before the anchor, which did not: the anchor (let
            # in on its own step, by the room a gap in the fixes allows) was the jump
            rejected[anchor] = True
            anchor, ax, ay, room, since, unconfirmed = j, 0.0, 0.0, 0.0, None, None
        else:
            rejected[j] = True
            if since is None:
                since = t[j]
    return rejected, since


def resolve_vehicle(x: Sequence[float], y: Sequence[float], t: Sequence[float], t_last: Sequence[float],
                    anomaly_x: Sequence[float], anomaly_y: Sequence[float], allowance: Sequence[float],
                    judged: Sequence[bool], rules: TrackRules, open_since: float | None,
                    has_history: bool) -> tuple[list[bool], float | None]:
    """`resolve_track`, and for a vehicle seen for the first time also backwards.

    Without history the first run is trusted only by position; if the forward walk
    rejects more time than it accepts, the walk from the last run is taken instead.
    """
    rejected, since = resolve_track(x, y, t, t_last, anomaly_x, anomaly_y, allowance, judged, rules,
                                    open_since)
    if has_history or not any(rejected):
        return rejected, since
    n = len(x)
    bad = sum(t_last[j] - t[j] + 1 for j in range(n) if rejected[j])
    good = sum(t_last[j] - t[j] + 1 for j in range(n) if not rejected[j])
    if bad <= good:
        return rejected, since
    rev_t = [-v for v in reversed(t)]
    rev_ax = [0.0] + [-anomaly_x[n - j] for j in range(1, n)]
    rev_ay = [0.0] + [-anomaly_y[n - j] for j in range(1, n)]
    rev_room = [0.0] + [allowance[n - j] for j in range(1, n)]
    back, _ = resolve_track(list(reversed(x)), list(reversed(y)), rev_t, rev_t, rev_ax, rev_ay,
                            rev_room, list(reversed(judged)), rules, None)
    return list(reversed(back)), None


REASONS = ("dropped.gps_null_island", "dropped.gps_out_of_bounds", "dropped.gps_poor_accuracy",
           "dropped.gps_implied_speed")


class GpsCheck:
    """Fix checks on latitude and longitude joined by (vehicle, t): a bad fix drops both."""

    def __init__(self, cfg: CleaningConfig, signal_index: Callable[..., int], state: VehicleState) -> None:
        self.config = cfg
        self.state = state
        gps = cfg.gps
        self.lat_sig = signal_index(gps.latitude, "gps", "latitude")
        self.lon_sig = signal_index(gps.longitude, "gps", "longitude")
        self.acc_sig = signal_index(gps.accuracy, "gps", "accuracy") if gps.accuracy else -1
        self.track_rules = TrackRules(
            jump_m=gps.jump_m, max_accel_ms2=gps.max_accel_ms2,
            max_speed_kmh=gps.max_speed_kmh if gps.max_speed_kmh is not None else math.inf,
            relocate_after_ms=gps.relocate_after_ms)

    def run(self, rows: SortedRows) -> None:
        """Fix checks on latitude/longitude joined by (vehicle, t); a bad fix drops both."""
        gps = self.config.gps
        lat_idx = alive_rows_of(rows, self.lat_sig)
        lon_idx = alive_rows_of(rows, self.lon_sig)
        if not lat_idx.size or not lon_idx.size:
            return
        li, oi = join_by_time(rows.vehicle, rows.t, lat_idx, lon_idx)
        if not li.size:
            return
        lat, lon = rows.value[li], rows.value[oi]
        fix_code = np.zeros(li.size, dtype=np.int8)
        eps = gps.null_island_deg
        fix_code[(np.abs(lat) < eps) & (np.abs(lon) < eps)] = GPS_NULL_ISLAND
        b = gps.bounds
        out = (lat < b.lat_min) | (lat > b.lat_max) | (lon < b.lon_min) | (lon > b.lon_max)
        fix_code[out & (fix_code == 0)] = GPS_OUT_OF_BOUNDS
        if self.acc_sig >= 0 and gps.max_horizontal_accuracy_m is not None:
            acc_idx = alive_rows_of(rows, self.acc_sig)
            if acc_idx.size:
                fi, ai = join_by_time(rows.vehicle, rows.t, li, acc_idx)
                poor = np.zeros(li.size, dtype=bool)
                poor[np.searchsorted(li, fi)] = rows.value[ai] > gps.max_horizontal_accuracy_m
                fix_code[poor & (fix_code == 0)] = GPS_POOR_ACCURACY
        if gps.track:
            ok = np.flatnonzero(fix_code == 0)
            if ok.size:
                jumped = self._implied_speed(rows, li[ok], lat[ok], lon[ok])
                fix_code[ok[jumped]] = GPS_IMPLIED_SPEED
        rows.code[li] = np.where(fix_code != 0, fix_code, rows.code[li])
        rows.code[oi] = np.where(fix_code != 0, fix_code, rows.code[oi])

    def _implied_speed(self, rows: SortedRows, li: IntArray, lat: FloatArray, lon: FloatArray) -> BoolArray:
        """Fixes of jumps and teleports (see `pipeline.core.clean.gps`); True = reject.

        Vectorised: runs of held positions, the vehicle's recent trusted runs from history
        in front, metric steps, the robust local velocity (median over a window of
        steps) and each step's anomaly against it. Only vehicles with a step outside the
        gate, or a jump still open, are walked in order by `resolve_vehicle`.
        """
        state = self.state
        rules = self.track_rules
        width = state.gps_width
        veh = rows.vehicle[li]
        t = rows.t[li]
        n = li.size
        new_vehicle = starts_of(veh)
        new_run = new_vehicle.copy()
        new_run[1:] |= (lat[1:] != lat[:-1]) | (lon[1:] != lon[:-1])
        rs = np.flatnonzero(new_run)
        run_of = np.cumsum(new_run) - 1
        r_lat, r_lon = lat[rs], lon[rs]
        r_t = t[rs].astype(np.float64)
        r_tlast = t[np.append(rs[1:], n) - 1].astype(np.float64)
        v_first = np.flatnonzero(new_vehicle[rs])  # first run of each vehicle
        v_runs = np.diff(np.append(v_first, rs.size))
        slot = rows.vslot[rows.vehicle[li[rs[v_first]]]]

        # History: the last trusted runs, attached when this batch's fixes are newer.
        tail = state.gps_tail[slot]  # (vehicles, width, 3), right-aligned
        tail_n = state.gps_tail_n[slot].astype(np.int64)
        last_t = tail[:, -1, 2]
        attach = (tail_n > 0) & (r_t[v_first] > last_t)
        held = attach & (tail[:, -1, 0] == r_lat[v_first]) & (tail[:, -1, 1] == r_lon[v_first])
        r_t[v_first[held]] = last_t[held]  # the position was held across the batch boundary
        k = np.where(attach, tail_n - held, 0).astype(np.int64)

        ext_len = k + v_runs
        ext_off = np.concatenate(([0], np.cumsum(ext_len)[:-1]))
        size = int(ext_len.sum())
        e_lat, e_lon = np.empty(size), np.empty(size)
        e_t, e_tlast = np.empty(size), np.empty(size)
        e_run = np.full(size, -1, dtype=np.int64)
        pos = np.repeat(ext_off + k, v_runs) + rank_in_group(new_vehicle[rs])
        e_lat[pos], e_lon[pos], e_t[pos], e_tlast[pos] = r_lat, r_lon, r_t, r_tlast
        e_run[pos] = np.arange(rs.size)
        with_tail = np.flatnonzero(k)
        if with_tail.size:
            kk = k[with_tail]
            tpos = ranges(ext_off[with_tail], kk)
            col = width - held[with_tail].repeat(kk) - np.repeat(kk, kk) \
                + rank_in_group(starts_of(np.repeat(with_tail, kk)))
            src = tail[np.repeat(with_tail, kk), col]
            e_lat[tpos], e_lon[tpos], e_t[tpos] = src[:, 0], src[:, 1], src[:, 2]
            e_tlast[tpos] = src[:, 2]

        # Metric coordinates around each vehicle's first position; steps between runs.
        group = np.repeat(np.arange(v_first.size), ext_len)
        lat0, lon0 = e_lat[ext_off][group], e_lon[ext_off][group]
        x = (e_lon - lon0) * (M_PER_DEG * np.cos(np.radians(lat0)))
        y = (e_lat - lat0) * M_PER_DEG
        step = np.zeros(size, dtype=bool)  # an edge into element j from j - 1
        step[1:] = group[1:] == group[:-1]
        dt = np.ones(size)
        dt[1:] = np.where(step[1:], (e_t[1:] - e_t[:-1]) / 1000.0, 1.0)
        vx, vy = np.zeros(size), np.zeros(size)
        vx[1:] = np.where(step[1:], (x[1:] - x[:-1]) / dt[1:], 0.0)
        vy[1:] = np.where(step[1:], (y[1:] - y[:-1]) / dt[1:], 0.0)
        edges = np.flatnonzero(step)
        half = self.config.gps.velocity_window // 2
        w = 2 * half + 1
        lo = ext_off[group[edges]] + 1  # first edge of the vehicle
        hi = ext_off[group[edges]] + ext_len[group[edges]] - 1  # last edge
        start = np.clip(edges - half, lo, np.maximum(hi - w + 1, lo))
        win = np.minimum(start[:, None] + np.arange(w)[None, :], hi[:, None])
        ax, ay, room = np.zeros(size), np.zeros(size), np.zeros(size)
        if edges.size:
            ax[edges] = (vx[edges] - window_median(vx[win])) * dt[edges]
            ay[edges] = (vy[edges] - window_median(vy[win])) * dt[edges]
            tau = half * window_median(dt[win])  # about half the window's time span
            room[edges] = rules.max_accel_ms2 * dt[edges] * (dt[edges] / 2 + tau)

        judged = e_run >= 0
        fast = np.hypot(vx, vy) > rules.max_speed_kmh / 3.6
        odd = step & judged & ((np.hypot(ax, ay) > rules.jump_m + room) | fast)
        odd_vehicle = np.bincount(group[odd], minlength=v_first.size) > 0
        open_since = state.gps_since[slot]
        walk = np.flatnonzero(odd_vehicle | (attach & (open_since != NO_T)))
        rejected_el = np.zeros(size, dtype=bool)
        new_since = np.full(v_first.size, NO_T, dtype=np.int64)
        unsure = np.zeros(v_first.size, dtype=bool)
        for v in walk.tolist():  # rare: vehicles with a suspicious step or an open jump
            a, b = int(ext_off[v]), int(ext_off[v] + ext_len[v])
            since = float(open_since[v]) if attach[v] and open_since[v] != NO_T else None
            bad, after = resolve_vehicle(
                x[a:b].tolist(), y[a:b].tolist(), e_t[a:b].tolist(), e_tlast[a:b].tolist(),
                ax[a:b].tolist(), ay[a:b].tolist(), room[a:b].tolist(), judged[a:b].tolist(), rules,
                since, bool(attach[v]))
            rejected_el[a:b] = bad
            new_since[v] = NO_T if after is None else int(after)
            # Without history, which side of a jump was right is a guess: do not let it
            # become the history the next batch is judged against.
            unsure[v] = not attach[v] and any(bad)

        # History: the newest trusted runs of each vehicle, and whether a jump is open.
        kept = np.flatnonzero(~rejected_el)
        kept_group = group[kept]
        count = np.bincount(kept_group, minlength=v_first.size)
        end = np.cumsum(count)
        from_end = end[kept_group] - 1 - np.arange(kept.size)
        newest = np.full(v_first.size, -np.inf)
        has = count > 0
        newest[has] = e_t[kept[end[has] - 1]]
        upd = has & (newest > np.where(tail_n > 0, last_t, -np.inf)) & ~unsure
        take = upd[kept_group] & (from_end < width)
        state.gps_tail[slot[upd]] = np.nan
        sel = kept[take]
        state.gps_tail[slot[group[sel]], width - 1 - from_end[take]] = np.stack(
            [e_lat[sel], e_lon[sel], e_t[sel]], axis=1)
        state.gps_tail_n[slot[upd]] = np.minimum(count[upd], width)
        fresh = (attach | (tail_n == 0)) & ~unsure
        state.gps_since[slot[fresh]] = new_since[fresh]
        run_rejected = np.zeros(rs.size, dtype=bool)
        run_rejected[e_run[judged & rejected_el]] = True
        return run_rejected[run_of]
