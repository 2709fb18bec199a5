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
from collections.abc import Sequence
from dataclasses import dataclass

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
