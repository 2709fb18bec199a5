"""A straightforward per-reading implementation of the cleaning rules, in plain Python.

Dicts, deques and `statistics` instead of arrays: the specification the vectorised
`Cleaner` is checked against (same outcomes on the same batches) and the baseline its
speed is measured against. Kept with the tests: the installed package does not ship it.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

from pipeline.core.batch import Readings
from pipeline.core.clean.clock import ClockHistory, judge_vehicle
from pipeline.core.clean.config import CleaningConfig
from pipeline.core.clean.gps import M_PER_DEG, TrackRules, resolve_vehicle
from pipeline.core.clean.outcomes import (
    CLOCK_SKEW,
    DUPLICATE,
    FUTURE_TIMESTAMP,
    GPS_IMPLIED_SPEED,
    GPS_NULL_ISLAND,
    GPS_OUT_OF_BOUNDS,
    GPS_POOR_ACCURACY,
    KEPT,
    NON_FINITE,
    OUT_OF_RANGE,
    RATE_OF_CHANGE,
    REPAIRED,
    REPAIRED_CLOCK,
    REPAIRED_SPIKE,
    REPAIRED_UNIT,
    SPIKE,
    STUCK,
    TOO_OLD,
    UNIT_UNCONVERTIBLE,
    UNKNOWN_SIGNAL,
)
from pipeline.core.clean.spikes import MAD_TO_SIGMA
from pipeline.core.clean.stuck import ONSET_SHARE


@dataclass(slots=True)
class ReferenceResult:
    """Outcome code per input reading; clean rows as (vin, signal, t, value, repaired, late)."""

    outcome: list[int]
    rows: list[tuple[str, str, int, float, bool, bool]]


class ReferenceCleaner:
    """The cleaning rules one reading at a time, with per-vehicle history in dicts."""

    def __init__(self, catalog: Any, config: CleaningConfig | None = None) -> None:
        self.catalog = catalog
        self.config = cfg = config if config is not None else CleaningConfig()
        self.range_exempt = set(cfg.range.exempt)
        self.rate_exempt = set(cfg.rate_of_change.exempt)
        self.last: dict[tuple[str, str], tuple[int, float]] = {}
        self.tails: dict[tuple[str, str], tuple[deque[float], int]] = {}
        # value, start, n, t, the reference's measure at the start, judged stuck
        self.runs: dict[tuple[str, str], tuple[float, int, int, int, float | None, bool]] = {}
        self.past: dict[tuple[str, str], tuple[float, int, int]] = {}  # newest ended stuck run
        self.gps_tail: dict[str, list[tuple[float, float, float]]] = {}
        self.gps_since: dict[str, float] = {}
        self.frames: dict[str, deque[tuple[int, int]]] = {}
        self.clock: dict[str, tuple[int, int]] = {}  # newest trusted (seq, sent_at) per vehicle
        self.clock_offset: dict[str, tuple[int | None, int]] = {}  # open skew episode per vehicle

    def clean(self, readings: Readings, *, now_ms: int | None = None) -> ReferenceResult:
        cfg, cat = self.config, self.catalog
        frames = readings.frames
        n = len(readings)
        if now_ms is None and len(frames):
            latest = max(int(x) for x in frames.received_at)
            now_ms = latest if latest > 0 else None
        vins = readings.vins
        names = readings.signal_names
        units = readings.unit_names
        vehicle = readings.vehicle.tolist()
        signal = readings.signal.tolist()
        unit = readings.unit.tolist()
        times = readings.t.tolist()
        raw = readings.value.tolist()
        frame_of = readings.frame.tolist()
        sent_at = frames.sent_at.tolist()
        received_at = frames.received_at.tolist()
        outcome = [KEPT] * n
        value = [0.0] * n
        converted = [False] * n
        skew_dropped, shifted = self._clock_skew(readings, sent_at, received_at)
        times = [t - shifted.get(f, 0) for t, f in zip(times, frame_of, strict=True)]
        sent_at = [s - shifted.get(f, 0) for f, s in enumerate(sent_at)]

        for i in range(n):
            name = names[signal[i]]
            if name not in cat.index:
                outcome[i] = UNKNOWN_SIGNAL
                continue
            conv = cat.signal(name).conversion(units[unit[i]])
            if conv is None:
                outcome[i] = UNIT_UNCONVERTIBLE
                continue
            v = raw[i]
            if units[unit[i]] != "" and (conv.scale != 1.0 or conv.offset != 0.0):
                v = v * conv.scale + conv.offset
                converted[i] = True
            value[i] = v
            if not math.isfinite(v):
                outcome[i] = NON_FINITE
                continue
            if frame_of[i] in skew_dropped:
                outcome[i] = CLOCK_SKEW
                continue
            t = times[i]
            ingest = now_ms
            if len(frames):
                if received_at[frame_of[i]] > 0:
                    ingest = received_at[frame_of[i]]
                if t > sent_at[frame_of[i]] + cfg.time.max_future_vs_sent_ms:
                    outcome[i] = FUTURE_TIMESTAMP
                    continue
            if ingest is not None and t > ingest + cfg.time.max_future_vs_ingest_ms:
                outcome[i] = FUTURE_TIMESTAMP
            elif now_ms is not None and t < now_ms - cfg.time.max_age_ms:
                outcome[i] = TOO_OLD

        # Resent frames (same vehicle, seq, sent_at) seen before or earlier in the batch.
        memory = cfg.duplicates.frame_memory
        fresh: list[tuple[str, tuple[int, int]]] = []
        resent: list[bool] = []
        if len(frames) and memory:
            seen_now: set[tuple[str, int, int]] = set()
            for f in range(len(frames)):
                vin = vins[int(frames.vehicle[f])]
                fkey = (int(frames.seq[f]), int(frames.sent_at[f]))
                again = (vin, *fkey) in seen_now or fkey in self.frames.get(vin, ())
                seen_now.add((vin, *fkey))
                resent.append(again)
                if not again:
                    fresh.append((vin, fkey))
            for i in range(n):
                if outcome[i] == KEPT and resent[frame_of[i]]:
                    outcome[i] = DUPLICATE

        # Vehicle clocks that went back: a higher seq sent well before a lower one.
        back = cfg.time.max_clock_step_back_ms
        if len(frames) and back is not None:
            resent_frames = resent if memory else [False] * len(frames)
            by_vehicle: dict[str, list[int]] = {}
            for f in range(len(frames)):
                by_vehicle.setdefault(vins[int(frames.vehicle[f])], []).append(f)
            behind_frames: set[int] = set()
            for vin, fs in by_vehicle.items():
                fs.sort(key=lambda f: (int(frames.seq[f]), f))
                newest: int | None = None
                h_seq, h_sent = self.clock.get(vin, (None, None))
                for f in fs:
                    f_seq, f_sent, f_recv = int(frames.seq[f]), sent_at[f], received_at[f]
                    if resent_frames[f] or (f_recv > 0 and f_sent > f_recv + cfg.time.max_future_vs_ingest_ms):
                        continue
                    reference = newest
                    if h_seq is not None and h_sent is not None and f_seq > h_seq:
                        reference = h_sent if reference is None else max(reference, h_sent)
                    if reference is not None and f_sent < reference - back:
                        behind_frames.add(f)
                        continue
                    if f_recv > 0 and f_sent > f_recv + back:
                        continue  # sent after it arrived: judged, but does not set the pace
                    newest = f_sent if newest is None else max(newest, f_sent)
                    h_seq_new, h_sent_new = self.clock.get(vin, (f_seq, f_sent))
                    self.clock[vin] = (max(h_seq_new, f_seq), max(h_sent_new, f_sent))
            for i in range(n):
                if outcome[i] == KEPT and frame_of[i] in behind_frames:
                    outcome[i] = CLOCK_SKEW

        # Series per (vehicle, signal), in time order (arrival order among equal times).
        series: dict[tuple[int, str], list[int]] = {}
        for i in range(n):
            if outcome[i] == KEPT:
                series.setdefault((vehicle[i], names[signal[i]]), []).append(i)
        for rows in series.values():
            rows.sort(key=lambda i: (times[i], i))
        keys = sorted(series, key=lambda k: (k[0], cat.index[k[1]]))

        for key in keys:
            rows = series[key]
            for a, b in zip(rows, rows[1:], strict=False):
                if times[a] == times[b]:
                    outcome[b] = DUPLICATE
            if key[1] not in self.range_exempt:
                sig = cat.signal(key[1])
                for i in rows:
                    if outcome[i] == KEPT and not sig.min <= value[i] <= sig.max:
                        outcome[i] = OUT_OF_RANGE
            allowed = cfg.range.allowed_values.get(key[1])
            if allowed is not None:
                for i in rows:
                    if outcome[i] == KEPT and value[i] not in allowed:
                        outcome[i] = OUT_OF_RANGE

        repaired_spike = [False] * n
        for name, rule in cfg.spikes.items():
            for key in keys:
                if key[1] == name:
                    self._hampel(vins[key[0]], name, rule, series[key], times, value, outcome,
                                 repaired_spike)
        self._gps(series, vins, times, value, outcome)
        for key in keys:
            self._rate(vins[key[0]], key[1], series[key], times, value, outcome)
        # references as they arrived, before any stuck reading is dropped
        checks = cfg.stuck_checks()
        measures = {(vins[key[0]], c.key): self._reference(c.rule, series, key[0], times, value, outcome)
                    for c in checks if c.rule.against for key in keys if key[1] == c.signal}
        before = list(outcome)  # every check judges the readings alive when the stage began
        for c in checks:
            for key in keys:
                if key[1] == c.signal:
                    self._stuck(vins[key[0]], c.key, c.rule, series[key], times, value, outcome,
                                measures.get((vins[key[0]], c.key)), before)

        out: list[tuple[str, str, int, float, bool, bool]] = []
        for key in keys:
            vin, name = vins[key[0]], key[1]
            kept = [i for i in series[key] if outcome[i] == KEPT]
            history = self.last.get((vin, name))
            for i in kept:
                late = any(j < i and times[j] > times[i] for j in kept)
                late = late or (history is not None and times[i] < history[0])
                fixes = [code for code, done in ((REPAIRED_SPIKE, repaired_spike[i]), (REPAIRED_UNIT, converted[i]),
                                                 (REPAIRED_CLOCK, frame_of[i] in shifted)) if done]
                if fixes:
                    outcome[i] = fixes[0] if len(fixes) == 1 else REPAIRED
                out.append((vin, name, times[i], value[i], bool(fixes), late))
            if kept and (history is None or times[kept[-1]] > history[0]):
                self.last[(vin, name)] = (times[kept[-1]], value[kept[-1]])
        for vin, fkey in fresh:
            self.frames.setdefault(vin, deque(maxlen=memory)).append(fkey)
        return ReferenceResult(outcome, out)

    # --- checks ------------------------------------------------------------------------------

    def _clock_skew(self, readings: Readings, sent_at: list[int],
                    received_at: list[int]) -> tuple[set[int], dict[int, int]]:
        """Frames dropped for clock skew, and the shift of each repaired frame."""
        cfg = self.config.time
        frames = readings.frames
        if cfg.max_clock_skew_s is None or not len(frames):
            return set(), {}
        by_vehicle: dict[str, list[int]] = {}
        for f in range(len(frames)):
            by_vehicle.setdefault(readings.vins[int(frames.vehicle[f])], []).append(f)
        seq = [int(x) for x in frames.seq]
        dropped: set[int] = set()
        shifted: dict[int, int] = {}
        for vin, fs in by_vehicle.items():
            offset, offset_seq = self.clock_offset.get(vin, (None, -(2**63)))
            trusted = self.clock.get(vin)
            verdict = judge_vehicle(fs, seq, sent_at, received_at,
                                    ClockHistory(offset, offset_seq, trusted[0] if trusted else None,
                                                 trusted[1] if trusted else None),
                                    int(cfg.max_clock_skew_s * 1000), cfg.clock_agree_ms,
                                    cfg.max_clock_step_back_ms or 0)
            dropped.update(verdict.dropped)
            shifted.update(verdict.shift)
            if verdict.history.offset is not None or vin in self.clock_offset:
                self.clock_offset[vin] = (verdict.history.offset, verdict.history.offset_seq)
        return dropped, shifted

    def _gps(self, series: dict[tuple[int, str], list[int]], vins: list[str], times: list[int],
             value: list[float], outcome: list[int]) -> None:
        gps = self.config.gps
        vehicles = sorted({k[0] for k in series if k[1] == gps.latitude})
        for veh in vehicles:
            lats = [i for i in series.get((veh, gps.latitude), []) if outcome[i] == KEPT]
            lons = {times[i]: i for i in series.get((veh, gps.longitude), []) if outcome[i] == KEPT}
            accs: dict[int, int] = {}
            if gps.accuracy:
                accs = {times[i]: i for i in series.get((veh, gps.accuracy), []) if outcome[i] == KEPT}
            fixes: list[tuple[int, int]] = []
            for i in lats:
                j = lons.get(times[i])
                if j is None:
                    continue
                lat, lon = value[i], value[j]
                b = gps.bounds
                bad = KEPT
                if abs(lat) < gps.null_island_deg and abs(lon) < gps.null_island_deg:
                    bad = GPS_NULL_ISLAND
                elif not (b.lat_min <= lat <= b.lat_max and b.lon_min <= lon <= b.lon_max):
                    bad = GPS_OUT_OF_BOUNDS
                elif (gps.max_horizontal_accuracy_m is not None and times[i] in accs
                      and value[accs[times[i]]] > gps.max_horizontal_accuracy_m):
                    bad = GPS_POOR_ACCURACY
                if bad != KEPT:
                    outcome[i] = outcome[j] = bad
                else:
                    fixes.append((i, j))
            if fixes and gps.track:
                for i, j in self._jumps(vins[veh], fixes, times, value):
                    outcome[i] = outcome[j] = GPS_IMPLIED_SPEED

    def _jumps(self, vin: str, fixes: list[tuple[int, int]], times: list[int],
               value: list[float]) -> list[tuple[int, int]]:
        """Fixes of jumps and teleports: runs of held positions, robust velocity, dead reckoning."""
        gps = self.config.gps
        rules = TrackRules(gps.jump_m, gps.max_accel_ms2,
                           gps.max_speed_kmh if gps.max_speed_kmh is not None else math.inf,
                           gps.relocate_after_ms)
        runs: list[list[Any]] = []  # [lat, lon, t_first, t_last, fixes]
        for i, j in fixes:
            lat, lon, when = value[i], value[j], float(times[i])
            if runs and runs[-1][0] == lat and runs[-1][1] == lon:
                runs[-1][3] = when
                runs[-1][4].append((i, j))
            else:
                runs.append([lat, lon, when, when, [(i, j)]])
        tail = self.gps_tail.get(vin, [])
        attach = bool(tail) and runs[0][2] > tail[-1][2]
        history: list[list[Any]] = []
        if attach:
            held = tail[-1][0] == runs[0][0] and tail[-1][1] == runs[0][1]
            if held:
                runs[0][2] = tail[-1][2]
            history = [[a, b, c, c, []] for a, b, c in (tail[:-1] if held else tail)]
        series = history + runs
        lat0, lon0 = series[0][0], series[0][1]
        scale = M_PER_DEG * math.cos(math.radians(lat0))
        x = [(r[1] - lon0) * scale for r in series]
        y = [(r[0] - lat0) * M_PER_DEG for r in series]
        t = [r[2] for r in series]
        n = len(series)
        dt = [1.0] + [(t[j] - t[j - 1]) / 1000.0 for j in range(1, n)]
        vx = [0.0] + [(x[j] - x[j - 1]) / dt[j] for j in range(1, n)]
        vy = [0.0] + [(y[j] - y[j - 1]) / dt[j] for j in range(1, n)]
        half = gps.velocity_window // 2
        w = 2 * half + 1
        ax, ay, room = [0.0] * n, [0.0] * n, [0.0] * n
        for j in range(1, n):
            start = min(max(j - half, 1), max(n - 1 - w + 1, 1))
            window = [min(start + m, n - 1) for m in range(w)]
            ax[j] = (vx[j] - statistics.median(vx[m] for m in window)) * dt[j]
            ay[j] = (vy[j] - statistics.median(vy[m] for m in window)) * dt[j]
            tau = half * statistics.median(dt[m] for m in window)
            room[j] = gps.max_accel_ms2 * dt[j] * (dt[j] / 2 + tau)
        judged = [False] * len(history) + [True] * len(runs)
        since = self.gps_since.get(vin) if attach else None
        rejected, after = resolve_vehicle(x, y, t, [r[3] for r in series], ax, ay, room, judged,
                                          rules, since, attach)
        unsure = not attach and any(rejected)  # no history: which side was right is a guess
        if (attach or not tail) and not unsure:
            if after is None:
                self.gps_since.pop(vin, None)
            else:
                self.gps_since[vin] = after
        accepted = [(r[0], r[1], r[2]) for r, bad in zip(series, rejected, strict=True) if not bad]
        if accepted and (not tail or accepted[-1][2] > tail[-1][2]) and not unsure:
            self.gps_tail[vin] = accepted[-(half + 1):]
        return [fix for r, bad in zip(series, rejected, strict=True) if bad for fix in r[4]]

    def _hampel(self, vin: str, name: str, rule: Any, rows: list[int], times: list[int],
                value: list[float], outcome: list[int], repaired: list[bool]) -> None:
        alive = [i for i in rows if outcome[i] == KEPT]
        if not alive:
            return
        tail_len = rule.window - 1
        tail, tail_t = self.tails.get((vin, name), (deque(maxlen=tail_len), None))
        attached = list(tail) if tail and tail_t is not None and times[alive[0]] > tail_t else []
        series = attached + [value[i] for i in alive]
        if rule.circular:
            period = rule.circular
            run, unwrapped = 0.0, [series[0]]
            for a, b in zip(series, series[1:], strict=False):
                run += (b - a + period / 2) % period - period / 2
                unwrapped.append(series[0] + run)
            series = unwrapped
        half, w = rule.window // 2, rule.window
        hits: dict[int, float] = {}
        if len(series) >= w:
            for k, i in enumerate(alive):
                p = len(attached) + k
                start = min(max(p - half, 0), len(series) - w)
                window = series[start:start + w]
                med = statistics.median(window)
                mad = statistics.median([abs(x - med) for x in window])
                threshold = max(rule.n_sigmas * MAD_TO_SIGMA * mad, rule.min_deviation)
                if start != p - half:
                    threshold *= rule.edge_factor
                if abs(series[p] - med) > threshold:
                    hits[i] = med
        after = list(attached)
        for i in alive:
            if i in hits:
                if rule.action == "repair":
                    value[i] = hits[i] % rule.circular if rule.circular else hits[i]
                    repaired[i] = True
                    after.append(hits[i] % rule.circular if rule.circular else hits[i])
                    continue
                else:
                    outcome[i] = SPIKE
                    continue
            after.append(value[i])
        survivors = [i for i in alive if outcome[i] == KEPT]
        if survivors and (tail_t is None or times[survivors[-1]] > tail_t):
            self.tails[(vin, name)] = (deque(after[-tail_len:], maxlen=tail_len), times[survivors[-1]])

    def _rate(self, vin: str, name: str, rows: list[int], times: list[int], value: list[float],
              outcome: list[int]) -> None:
        sig = self.catalog.signal(name)
        if (sig.max_rate is None or name in self.rate_exempt
                or not self.config.rate_of_change.enabled):
            return
        cap = sig.max_rate * self.config.rate_of_change.tolerance / 1000.0  # per ms
        strict = cap * self.config.rate_of_change.edge_factor
        alive = [i for i in rows if outcome[i] == KEPT]
        if not alive:
            return
        steps = [times[b] - times[a] for a, b in zip(alive, alive[1:], strict=False)]
        step = max(sig.interval_ms, min(steps)) if steps else math.inf  # the series' sampling step
        history = self.last.get((vin, name))
        linked = history is not None and times[alive[0]] > history[0]

        def too_fast(i: int, j: int | None, limit: float) -> bool:
            """|dv| > limit * min(dt, interval) from reading j (None: the last batch's last)."""
            if j is None:
                if not linked or history is None:
                    return False
                return abs(value[i] - history[1]) > min(times[i] - history[0], step) * limit
            return abs(value[i] - value[j]) > min(abs(times[i] - times[j]), step) * limit

        n = len(alive)
        fast_in = [too_fast(i, alive[k - 1] if k else None, cap) for k, i in enumerate(alive)]
        flagged = [k + 1 < n and fast_in[k] and fast_in[k + 1] for k in range(n)]
        # two readings off together: in fast, a quiet step, out fast and back the other way
        isolated = list(flagged)
        for k in range(n - 2):
            if fast_in[k] and not fast_in[k + 1] and fast_in[k + 2]:
                if k:
                    before, before_t = value[alive[k - 1]], times[alive[k - 1]]
                elif linked and history is not None:
                    before, before_t = history[1], history[0]
                else:
                    continue
                if (value[alive[k]] - before) * (value[alive[k + 2]] - value[alive[k + 1]]) >= 0:
                    continue
                calm = abs(value[alive[k + 2]] - before) <= (times[alive[k + 2]] - before_t) * cap
                if calm and not (k and isolated[k - 1]):
                    flagged[k] = flagged[k + 1] = True
        if not linked and n >= 3:  # the first, on the way out
            later = [j for j in range(1, n - 1) if not flagged[j]] + [n - 1]
            flagged[0] = too_fast(alive[0], alive[later[0]], strict)
        # the last, on the way in, from the nearest earlier reading that is not an excursion
        earlier = [j for j in range(n - 1) if not flagged[j]]
        flagged[n - 1] = too_fast(alive[n - 1], alive[earlier[-1]] if earlier else None, strict)
        for k, i in enumerate(alive):
            if flagged[k]:
                outcome[i] = RATE_OF_CHANGE

    def _reference(self, rule: Any, series: dict[tuple[int, str], list[int]], veh: int, times: list[int],
                   value: list[float], outcome: list[int]) -> list[tuple[int, float]]:
        """(t, measure) at each of the vehicle's reference readings in this batch, in time order.

        The measure is the value for `change`, else the integral since the first reading.
        """
        points: list[tuple[int, float]] = []
        cum = 0.0
        prev: int | None = None
        for i in series.get((veh, rule.against), []):
            if outcome[i] != KEPT:
                continue
            t, v = times[i], value[i]
            if rule.measure == "change":
                points.append((t, v))
                continue
            dt = 0 if prev is None or t - prev > rule.max_gap_ms else t - prev
            cum += (v if rule.measure == "integral" else abs(v)) * (dt / 1000.0)
            prev = t
            points.append((t, cum))
        return points

    def _stuck(self, vin: str, name: str, rule: Any, rows: list[int], times: list[int],
               value: list[float], outcome: list[int], reference: list[tuple[int, float]] | None,
               before: list[int]) -> None:
        alive = [i for i in rows if before[i] == KEPT]
        run = self.runs.get((vin, name))
        if not alive:
            return
        integral = rule.measure != "change"

        def measure_at(t: int, since: int | None = None) -> float | None:
            """The measure at `t`; a change only from readings at or after `since`."""
            if reference is None:
                return None
            found: float | None = 0.0 if integral else None
            for rt, m in reference:
                if rt <= t and (integral or since is None or rt >= since):
                    found = m
            return found

        def measure_from(t: int) -> float | None:  # where a run begins: the first reading from t
            for rt, m in reference or []:
                if rt >= t:
                    return m
            return measure_at(t) if integral else None  # a change: from the next batch's first

        past = self.past.get((vin, name))  # the newest run judged stuck that has ended

        def judge(series: list[int], run: tuple[Any, ...] | None,
                  remember: bool = True) -> tuple[float, int, int, float | None, bool]:
            nonlocal past
            members: list[int] = []
            last_t = run[3] if run is not None else 0
            if remember and run is not None and run[5] and value[series[0]] != run[0]:
                past = (run[0], run[1], run[3])
            if run is not None and value[series[0]] == run[0]:
                current, start, count, ref0, hit = run[0], run[1], run[2], run[4], run[5]
                if ref0 is None and reference is not None:  # a run of one: from its start
                    ref0 = measure_from(start)
                elif ref0 is not None and integral and reference is not None:
                    # the integral goes on from the first reading since the run's last one
                    # (readings of late frames from before add nothing)
                    there = measure_from(run[3])
                    ref0 = ref0 + there if there is not None else None
            else:
                current, start, count = value[series[0]], times[series[0]], 0
                ref0, hit = measure_from(times[series[0]]), False
            onset = hit or not rule.against  # stuck from where the reference began to move
            for i in series:
                if value[i] != current:
                    if remember and hit:
                        past = (current, start, last_t)
                    current, start, count = value[i], times[i], 0
                    ref0, hit = measure_from(times[i]), False
                    onset = not rule.against
                    members = []
                count += 1
                moved: float | None = None
                if rule.against:
                    now = measure_at(times[i], start)
                    moved = abs(now - ref0) if now is not None and ref0 is not None else None
                    onset = onset or (moved is not None and moved >= ONSET_SHARE * rule.min_reference)
                if count >= 2 and onset:
                    members.append(i)
                held = (times[i] - start >= rule.min_duration_ms and count >= rule.min_count
                        and value[i] not in rule.ignore_values
                        and (rule.rest_above is None or value[i] < rule.rest_above))
                if held and rule.against:
                    held = moved is not None and moved >= rule.min_reference
                hit = hit or held
                if hit:
                    for j in members:
                        outcome[j] = STUCK
                last_t = times[i]
            return current, start, count, ref0, hit

        if run is not None:
            # readings of late frames the run in history has passed: a series of their own,
            # which leaves the history as it is; stuck too when they repeat a stuck run
            old = [i for i in alive if times[i] <= run[3]]
            for i in old:
                if run[5] and value[i] == run[0] and times[i] > run[1]:
                    outcome[i] = STUCK
                if past is not None and value[i] == past[0] and past[1] < times[i] <= past[2]:
                    outcome[i] = STUCK
            if old:
                judge(old, None, remember=False)
            alive = [i for i in alive if times[i] > run[3]]
            if not alive:
                return
        current, start, count, ref0, hit = judge(alive, run)
        if run is None or times[alive[-1]] > run[3]:
            carried = None  # a run of one: the next batch measures from its first reading
            if rule.against and count > 1 and ref0 is not None:
                # an integral starts again at 0 next batch: keep the start relative to it
                carried = ref0 - (reference[-1][1] if reference else 0.0) if integral else ref0
            self.runs[(vin, name)] = (current, start, count, times[alive[-1]], carried, hit)
            if past is not None:
                self.past[(vin, name)] = past
