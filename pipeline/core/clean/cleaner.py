"""The cleaning stage: every reading of a batch ends kept, repaired or dropped with one reason.

Vectorised over the whole batch, no Python loop per reading:
- per row, in input order: signal in the catalog, unit (converted to the canonical unit
  or unconvertible), finite value, timestamp against the frame's send and ingest times
  and against now; per frame: resends (frame fingerprints remembered per vehicle) and
  vehicle clocks that went back (seq order against send times);
- one stable sort of all rows by (vehicle, signal, t), then group-wise on the sorted
  rows (boundaries from the group key, no per-group loops): duplicates, range and
  allowed values, spikes (Hampel, one pass per window size for all its signals), GPS
  fixes (null island, bounds, accuracy, jumps and teleports by dead reckoning), rate of
  change (isolated excursions), stuck values; then late arrivals are marked.
History across batches (last readings, Hampel tails, stuck runs, GPS track, frame
memory, clock) lives in `VehicleState`, per vehicle, bounded and movable by VIN.
Where a check must walk in order (a GPS jump with its return), it does so only for the
few vehicles with a suspicious step.

Outcome codes: `kept`, `repaired` (unit converted and spike repaired), `repaired.unit`,
`repaired.spike`, then one `dropped.<reason>` per check. Unit normalisation counts as a
repair, so wrong-unit faults are visible in the counts and the quality report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.core.batch import Readings
from pipeline.core.clean.clock import ClockHistory, judge_vehicle
from pipeline.core.clean.config import CleaningConfig, SpikeRule, StuckRule
from pipeline.core.clean.gps import M_PER_DEG, TrackRules, resolve_vehicle
from pipeline.core.clean.groups import (
    ranges,
    rank_in_group,
    starts_of,
    suffix_min_in_group,
    window_median,
)
from pipeline.core.clean.state import NO_T, VehicleState
from pipeline.core.clean.stuck import StuckCheck, StuckParams

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
CodeArray = npt.NDArray[np.int8]

# Outcome codes: index into REASONS. The order of the dropped reasons is the order in
# which the checks run; the first check a reading fails is its reason.
REASONS: tuple[str, ...] = (
    "kept",
    "repaired",  # repaired in more than one way (unit converted and spike repaired)
    "repaired.unit",  # value converted to the catalog's canonical unit
    "repaired.spike",  # value replaced by its Hampel window median
    "repaired.clock_skew",  # times shifted by the vehicle's estimated clock offset
    "dropped.unknown_signal",
    "dropped.unit_unconvertible",
    "dropped.non_finite",
    "dropped.future_timestamp",
    "dropped.too_old",
    "dropped.duplicate",
    "dropped.clock_skew",
    "dropped.out_of_range",
    "dropped.spike",
    "dropped.gps_null_island",
    "dropped.gps_out_of_bounds",
    "dropped.gps_poor_accuracy",
    "dropped.gps_implied_speed",
    "dropped.rate_of_change",
    "dropped.stuck",
)
CODE = {name: i for i, name in enumerate(REASONS)}
KEPT, REPAIRED, REPAIRED_UNIT, REPAIRED_SPIKE, REPAIRED_CLOCK = 0, 1, 2, 3, 4
UNKNOWN_SIGNAL = CODE["dropped.unknown_signal"]
UNIT_UNCONVERTIBLE = CODE["dropped.unit_unconvertible"]
NON_FINITE = CODE["dropped.non_finite"]
FUTURE_TIMESTAMP = CODE["dropped.future_timestamp"]
TOO_OLD = CODE["dropped.too_old"]
DUPLICATE = CODE["dropped.duplicate"]
CLOCK_SKEW = CODE["dropped.clock_skew"]
OUT_OF_RANGE = CODE["dropped.out_of_range"]
GPS_NULL_ISLAND = CODE["dropped.gps_null_island"]
GPS_OUT_OF_BOUNDS = CODE["dropped.gps_out_of_bounds"]
GPS_POOR_ACCURACY = CODE["dropped.gps_poor_accuracy"]
GPS_IMPLIED_SPEED = CODE["dropped.gps_implied_speed"]
SPIKE = CODE["dropped.spike"]
RATE_OF_CHANGE = CODE["dropped.rate_of_change"]
STUCK = CODE["dropped.stuck"]
FIRST_DROPPED = UNKNOWN_SIGNAL

MAD_TO_SIGMA = 1.4826


def frame_fingerprint(seq: IntArray, sent_at: IntArray) -> IntArray:
    """A 64-bit fingerprint of a frame (seq, sent_at): a resend carries the same pair."""
    with np.errstate(over="ignore"):
        return (sent_at.astype(np.int64) * np.int64(1_000_003)) ^ seq.astype(np.int64)


@dataclass(slots=True)
class CleanResult:
    """Clean readings and the account of every input reading.

    `readings`: kept and repaired rows, sorted by (vehicle, signal, t), signal indexes
    into the catalog, values in canonical units (unit index 0). `repaired` and `late`
    are aligned with `readings`; `late` marks rows that arrived after a later reading of
    the same series. `outcome` is per input row, an index into `reasons`. `counts` has
    `in`, `kept`, `repaired`, `dropped`, `late` and one entry per reason that occurred,
    so `in == kept + repaired + dropped`.
    """

    readings: Readings
    repaired: BoolArray
    outcome: CodeArray
    reasons: list[str]
    counts: dict[str, int]
    late: BoolArray
    timings: dict[str, float] = field(default_factory=dict)


class _Clock:
    """Optional per-check timing (`Cleaner.clean(profile=True)`)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter() if enabled else 0.0

    def lap(self, name: str) -> None:
        if self.enabled:
            now = time.perf_counter()
            self.timings[name] = self.timings.get(name, 0.0) + now - self._last
            self._last = now


@dataclass(slots=True)
class _Sorted:
    """Every row of the batch, sorted by (vehicle, signal, t); dead rows keep their place."""

    order: IntArray  # input row of each sorted row
    vehicle: npt.NDArray[np.int32]
    signal: npt.NDArray[np.int32]  # catalog index
    t: IntArray
    value: FloatArray  # canonical units; repairs are written here
    code: CodeArray  # 0 while alive, else the dropped reason
    repaired: BoolArray  # spike repaired
    gkey: IntArray  # (vehicle, signal) group key, non-decreasing
    new: BoolArray  # first row of a group
    gstart: IntArray  # first row of each group
    glen: IntArray
    gsig: npt.NDArray[np.int32]
    gslot: IntArray  # vehicle's state slot, per group
    vslot: IntArray  # state slot per batch vehicle

    def alive(self, idx: IntArray) -> IntArray:
        """The positions in `idx` still alive."""
        return idx[self.code[idx] == 0]

    def rows_of(self, groups: IntArray) -> IntArray:
        """Positions of the rows of these groups (ascending)."""
        return ranges(self.gstart[groups], self.glen[groups])

    def gid(self) -> IntArray:
        """Group number of every row."""
        return np.repeat(np.arange(self.gstart.size, dtype=np.int64), self.glen)


@dataclass(slots=True)
class _SpikeParams:
    """Hampel rules of the signals sharing one window size, as arrays by catalog signal."""

    member: BoolArray
    slot_of: IntArray  # index into the state's Hampel tails
    n_sigmas: FloatArray
    min_deviation: FloatArray
    edge_factor: FloatArray
    circular: FloatArray  # period, 0 = not an angle
    repair: BoolArray

    @classmethod
    def of(cls, rules: list[tuple[int, SpikeRule]], every: list[tuple[int, SpikeRule]],
           n_signals: int) -> _SpikeParams:
        p = cls(np.zeros(n_signals, bool), np.zeros(n_signals, np.int64), np.zeros(n_signals),
                np.zeros(n_signals), np.ones(n_signals), np.zeros(n_signals), np.zeros(n_signals, bool))
        tails = {s: h for h, (s, _) in enumerate(every)}
        for s, r in rules:
            p.member[s], p.slot_of[s] = True, tails[s]
            p.n_sigmas[s], p.min_deviation[s], p.edge_factor[s] = r.n_sigmas, r.min_deviation, r.edge_factor
            p.circular[s], p.repair[s] = r.circular or 0.0, r.action == "repair"
        return p


class Cleaner:
    """Cleans batches of readings against the catalog and `rules/cleaning.yaml`.

    Stateful across batches (per vehicle, bounded); see `export_state`/`import_state`/
    `forget` for moving that history with partitions.
    """

    def __init__(self, catalog: Any, config: CleaningConfig | None = None) -> None:
        self.catalog = catalog
        self.config = config if config is not None else CleaningConfig()
        cfg = self.config
        names = list(catalog.names)
        self.n_signals = len(names)
        self.signal_bits = max(self.n_signals - 1, 1).bit_length()

        def signal_index(name: str, *path: str) -> int:
            if name not in catalog.index:
                raise cfg.error(f"unknown signal {name!r} (not in the catalog)", *path)
            return int(catalog.index[name])

        # Range limits per signal, open for exempt signals.
        self.range_lo = np.asarray(catalog.min, dtype=np.float64).copy()
        self.range_hi = np.asarray(catalog.max, dtype=np.float64).copy()
        for i, name in enumerate(cfg.range.exempt):
            s = signal_index(name, "range", "exempt", str(i))
            self.range_lo[s], self.range_hi[s] = -np.inf, np.inf
        self.range_open = bool(np.all(~np.isfinite(self.range_lo) & ~np.isfinite(self.range_hi)))
        self.allowed = {signal_index(name, "range", "allowed_values", name): np.asarray(values, dtype=np.float64)
                        for name, values in cfg.range.allowed_values.items()}

        # Rate caps per signal (NaN = no check).
        self.rate_cap = np.asarray(catalog.max_rate, dtype=np.float64) * cfg.rate_of_change.tolerance
        for i, name in enumerate(cfg.rate_of_change.exempt):
            self.rate_cap[signal_index(name, "rate_of_change", "exempt", str(i))] = np.nan
        if not cfg.rate_of_change.enabled:
            self.rate_cap[:] = np.nan
        self.rate_checked = ~np.isnan(self.rate_cap)
        self.rate_cap_ms = self.rate_cap / 1000.0
        self.interval_ms = np.asarray(catalog.interval_ms, dtype=np.int64)

        self.spikes: list[tuple[int, SpikeRule]] = [
            (signal_index(name, "spikes", name), rule) for name, rule in cfg.spikes.items()
        ]
        checks = cfg.stuck_checks()
        self.stuck: list[tuple[int, StuckRule]] = [(signal_index(c.signal, *c.path), c.rule) for c in checks]
        gps = cfg.gps
        self.lat_sig = signal_index(gps.latitude, "gps", "latitude")
        self.lon_sig = signal_index(gps.longitude, "gps", "longitude")
        self.acc_sig = signal_index(gps.accuracy, "gps", "accuracy") if gps.accuracy else -1

        self.track_rules = TrackRules(
            jump_m=gps.jump_m, max_accel_ms2=gps.max_accel_ms2,
            max_speed_kmh=gps.max_speed_kmh if gps.max_speed_kmh is not None else math.inf,
            relocate_after_ms=gps.relocate_after_ms)
        self.spike_params = {
            window: _SpikeParams.of([(s, r) for s, r in self.spikes if r.window == window],
                                    self.spikes, self.n_signals)
            for window in sorted({r.window for _, r in self.spikes})}
        self.stuck_check = StuckCheck(StuckParams.of(
            self.stuck, [signal_index(c.rule.against, *c.path, "against") if c.rule.against else -1
                         for c in checks]), [c.layer for c in checks], self.n_signals, self.signal_bits, STUCK)

        tail = max((rule.window - 1 for _, rule in self.spikes), default=1)
        self.state = VehicleState(
            names,
            [names[s] for s, _ in self.spikes],
            tail,
            [c.key for c in checks],
            cfg.duplicates.frame_memory,
            cfg.state.max_vehicles,
            gps.velocity_window // 2 + 1,
        )
        self.reasons = list(REASONS)

    # --- partitions ------------------------------------------------------------------------

    def export_state(self, vins: Iterable[str]) -> bytes:
        """History of these vehicles, to restore on the worker that takes their partition."""
        return self.state.export(vins)

    def import_state(self, blob: bytes) -> list[str]:
        """Restore history exported by `export_state`; returns the VINs restored."""
        return self.state.load(blob)

    def forget(self, vins: Iterable[str]) -> int:
        """Drop the history of these vehicles (their partition was revoked)."""
        return self.state.forget(vins)

    # --- the stage -----------------------------------------------------------------------------

    def clean(self, readings: Readings, *, now_ms: int | None = None,
              profile: bool = False) -> CleanResult:
        """Clean one batch. `now_ms` is the ingest time of frames without a record timestamp
        (default: the latest frame received_at); stamped frames are judged by their own."""
        clock = _Clock(profile)
        cat = self.catalog
        cfg = self.config
        n = len(readings)
        frames = readings.frames
        if now_ms is None and len(frames):
            latest = int(frames.received_at.max())
            now_ms = latest if latest > 0 else None

        # --- per-row checks, input order -------------------------------------------------
        code = np.zeros(n, dtype=np.int8)
        sig_map = cat.lookup(readings.signal_names).astype(np.int32)
        csig = sig_map[readings.signal] if n else np.empty(0, dtype=np.int32)
        if sig_map.size and sig_map.min() < 0:
            unknown = csig < 0
            code[unknown] = UNKNOWN_SIGNAL
            csig = np.where(unknown, 0, csig).astype(np.int32)
        value = readings.value
        converted: BoolArray | None = None
        labelled = np.flatnonzero(readings.unit != 0) if n and len(readings.unit_names) > 1 else ()
        if len(labelled):  # samples that carry a unit: few, converted where they are
            scale, offset, ok = cat.conversion_table(readings.unit_names)
            unit, sig = readings.unit[labelled].astype(np.intp), csig[labelled]
            ok_row = ok[sig, unit]
            code[labelled[~ok_row & (code[labelled] == 0)]] = UNIT_UNCONVERTIBLE
            sc, off = scale[sig, unit], offset[sig, unit]
            value = value.copy()
            with np.errstate(invalid="ignore"):
                value[labelled] = value[labelled] * sc + off
            converted = np.zeros(n, dtype=bool)
            converted[labelled] = ok_row & ((sc != 1.0) | (off != 0.0))
        bad = ~np.isfinite(value)
        if bad.any():
            code[bad & (code == 0)] = NON_FINITE
        clock.lap("signal_unit_value")

        tcfg = cfg.time
        vehicle_slot = self.state.slots(readings.vins)
        t, sent_at, clock_fixed = self._clock_skew(readings, vehicle_slot, code)
        clock.lap("clock_skew")
        old: BoolArray | None = None
        if n and len(frames):
            # Each frame is judged by its own ingest time (record timestamp; now_ms for frames
            # without one), never by the other frames of the batch: a batch that also holds a
            # much later upload must not make this frame's readings "too old".
            received = frames.received_at
            stamped = received > 0
            big = np.iinfo(np.int64).max - tcfg.max_future_vs_ingest_ms
            ingest = np.where(stamped, received, now_ms if now_ms is not None else big)
            # the latest plausible time per frame: its send time (vehicle clock) and its ingest time
            limit = np.minimum(sent_at + tcfg.max_future_vs_sent_ms,
                               ingest + tcfg.max_future_vs_ingest_ms)
            future = t > limit[readings.frame]
            if now_ms is not None:
                floor = ingest - tcfg.max_age_ms  # per frame: older than this is too old
                cand = np.flatnonzero(t < int(floor.max()))  # usually none: one scalar compare
                if cand.shape[0]:
                    old = np.zeros(n, dtype=bool)
                    old[cand[t[cand] < floor[readings.frame[cand]]]] = True
        elif now_ms is not None:
            future = t > now_ms + tcfg.max_future_vs_ingest_ms
            old = t < now_ms - tcfg.max_age_ms
        else:
            future = np.zeros(n, dtype=bool)
        if future.any():
            code[future & (code == 0)] = FUTURE_TIMESTAMP
        if old is not None and old.any():
            code[old & (code == 0)] = TOO_OLD
        clock.lap("time")

        *new_frames, resent = self._frame_resends(readings, vehicle_slot, code)
        clock.lap("resends")
        self._clock_behind(readings, sent_at, vehicle_slot, code, resent)
        clock.lap("clock")

        # --- sort once, then group-wise checks -------------------------------------------
        rows = self._sort(readings, t, csig, value, code, vehicle_slot)
        clock.lap("sort")
        self._duplicates(rows)
        clock.lap("duplicates")
        if not self.range_open or self.allowed:
            self._range(rows)
        clock.lap("range")
        for window, params in self.spike_params.items():
            self._spikes(rows, window, params)
        clock.lap("spikes")
        self._gps(rows)
        clock.lap("gps")
        self._rate(rows)
        clock.lap("rate_of_change")
        if self.stuck:
            self.stuck_check.run(rows, self.state)
        clock.lap("stuck")

        # --- outcome, output and history ---------------------------------------------------
        result = self._finish(readings, rows, code, converted, clock_fixed, (new_frames[0], new_frames[1]),
                              clock)
        clock.lap("output_state")
        result.timings = clock.timings
        return result

    # --- per-row checks ------------------------------------------------------------------------

    def _frame_resends(self, readings: Readings, vehicle_slot: IntArray,
                       code: CodeArray) -> tuple[IntArray, IntArray, BoolArray]:
        """Drop readings of frames seen before (same vehicle, seq, sent_at): resends.

        Returns the (slot, fingerprint) of frames seen for the first time, for the memory,
        and which frames were resends.
        """
        frames = readings.frames
        memory = self.state.frame_memory
        empty = np.empty(0, dtype=np.int64)
        if not len(frames) or memory == 0:
            return empty, empty, np.zeros(len(frames), dtype=bool)
        fslot = vehicle_slot[frames.vehicle]
        fp = frame_fingerprint(frames.seq, frames.sent_at)
        filled = np.minimum(self.state.frame_n[fslot], memory)
        ring = self.state.frame_fp[fslot]
        seen = ((ring == fp[:, None]) & (np.arange(memory)[None, :] < filled[:, None])).any(axis=1)
        # A frame repeated within the batch: every copy after the first.
        by_key = np.lexsort((np.arange(len(frames)), fp, fslot))
        again = np.zeros(len(frames), dtype=bool)
        same = (fslot[by_key][1:] == fslot[by_key][:-1]) & (fp[by_key][1:] == fp[by_key][:-1])
        again[by_key[1:][same]] = True
        resent = seen | again
        if resent.any():
            code[resent[readings.frame] & (code == 0)] = DUPLICATE
        fresh = ~resent
        return fslot[fresh], fp[fresh], resent

    def _clock_skew(self, readings: Readings, vehicle_slot: IntArray,
                    code: CodeArray) -> tuple[IntArray, IntArray, BoolArray | None]:
        """Repair or drop frames whose vehicle clock is off by more than `max_clock_skew_s`.

        Returns the readings' times and the frames' send times with repairs applied, and
        which readings were repaired (None: none). Only the vehicles with a frame beyond
        the bound, or a skew episode open in history, are walked (`clock.judge_vehicle`).
        """
        frames = readings.frames
        tcfg = self.config.time
        t, sent = readings.t, frames.sent_at
        if tcfg.max_clock_skew_s is None or not len(frames) or not len(readings):
            return t, sent, None
        max_skew = int(tcfg.max_clock_skew_s * 1000)
        state = self.state
        fslot = vehicle_slot[frames.vehicle]
        received = frames.received_at
        odd = (received > 0) & (np.abs(sent - received) > max_skew)
        look = odd | (state.clock_offset[fslot] != NO_T)
        if not look.any():
            return t, sent, None
        judged = np.flatnonzero(np.isin(frames.vehicle, frames.vehicle[look]))
        # plain lists indexed by frame, filled only for the frames judged (few)
        seq_l, sent_l, recv_l = [0] * len(frames), [0] * len(frames), [0] * len(frames)
        by_vehicle: dict[int, list[int]] = {}
        for f, v, q, sa, r in zip(judged.tolist(), frames.vehicle[judged].tolist(), frames.seq[judged].tolist(),
                                  sent[judged].tolist(), received[judged].tolist(), strict=True):
            seq_l[f], sent_l[f], recv_l[f] = q, sa, r
            by_vehicle.setdefault(v, []).append(f)
        shift = np.zeros(len(frames), dtype=np.int64)
        dropped = np.zeros(len(frames), dtype=bool)
        no_seq = np.iinfo(np.int64).min
        for v, fs in by_vehicle.items():  # few: vehicles with a skewed or late frame
            slot = int(vehicle_slot[v])
            h_off, h_seq = int(state.clock_offset[slot]), int(state.clock_offset_seq[slot])
            t_seq, t_sent = int(state.clock_seq[slot]), int(state.clock_sent[slot])
            verdict = judge_vehicle(
                fs, seq_l, sent_l, recv_l,
                ClockHistory(None if h_off == NO_T else h_off, h_seq,
                             None if t_seq == no_seq else t_seq, None if t_sent == NO_T else t_sent),
                max_skew, tcfg.clock_agree_ms, tcfg.max_clock_step_back_ms or 0)
            for f, s in verdict.shift.items():
                shift[f] = s
            dropped[verdict.dropped] = True
            after = verdict.history
            state.clock_offset[slot] = NO_T if after.offset is None else after.offset
            state.clock_offset_seq[slot] = after.offset_seq
        if dropped.any():
            code[dropped[readings.frame] & (code == 0)] = CLOCK_SKEW
        if not shift.any():
            return t, sent, None
        row_shift = shift[readings.frame]
        return t - row_shift, sent - shift, row_shift != 0

    def _clock_behind(self, readings: Readings, sent: IntArray, vehicle_slot: IntArray, code: CodeArray,
                      resent: BoolArray) -> None:
        """Drop readings of frames whose vehicle clock went back: a newer frame (higher seq)
        sent more than `max_clock_step_back_ms` before an older one (a late or reordered
        frame has a lower seq and is not affected). Resends and frames stamped in the
        future are not judged; only frames not sent after they arrived set the pace (a
        clock running ahead must not make the frames after it look late). The history
        keeps the newest such frame.
        """
        frames = readings.frames
        back = self.config.time.max_clock_step_back_ms
        nf = len(frames)
        if not nf or back is None:
            return
        state = self.state
        fslot = vehicle_slot[frames.vehicle]
        seq, received = frames.seq, frames.received_at
        stamped = received > 0
        ahead = stamped & (sent > received + self.config.time.max_future_vs_ingest_ms)
        judged = ~resent & ~ahead
        # only frames sent no later than they arrived (within the tolerance) set the pace
        pace = judged & ~(stamped & (sent > received + back))
        order = np.lexsort((seq, fslot))
        o_slot, o_seq, o_sent, o_judged = fslot[order], seq[order], sent[order], judged[order]
        o_pace = pace[order]
        new = starts_of(o_slot)
        base = int(o_sent.min())
        span = max(int(o_sent.max()) - base, 1).bit_length() + 1
        offset = (np.cumsum(new) - 1).astype(np.int64) << span
        latest = np.maximum.accumulate(offset + np.where(o_pace, o_sent - base, -1)) - offset
        before = np.full(nf, -1, dtype=np.int64)  # newest judged send time among lower seqs
        before[1:] = np.where(new[1:], -1, latest[:-1])
        reference = np.where(before >= 0, before + base, NO_T)
        h_seq, h_sent = state.clock_seq[o_slot], state.clock_sent[o_slot]
        from_history = (h_sent != NO_T) & (o_seq > h_seq)
        reference = np.where(from_history, np.maximum(reference, h_sent), reference)
        behind = o_judged & (reference != NO_T) & (o_sent < reference - back)
        if behind.any():
            frame_behind = np.zeros(nf, dtype=bool)
            frame_behind[order[behind]] = True
            code[frame_behind[readings.frame] & (code == 0)] = CLOCK_SKEW
        trusted = o_pace & ~behind
        if trusted.any():
            ts, tq, tt = o_slot[trusted], o_seq[trusted], o_sent[trusted]
            np.maximum.at(state.clock_seq, ts, tq)
            np.maximum.at(state.clock_sent, ts, tt)

    def _sort(self, readings: Readings, t: IntArray, csig: npt.NDArray[np.int32], value: FloatArray,
              code: CodeArray, vehicle_slot: IntArray) -> _Sorted:
        """One stable sort of every row by (vehicle, signal, t): arrival order breaks ties."""
        veh = readings.vehicle
        n = t.size
        s_bits = self.signal_bits
        if n:
            t_lo = int(t.min())
            t_bits = max(int(t.max()) - t_lo, 1).bit_length()
            v_bits = max(len(readings.vins) - 1, 1).bit_length()
        if n and t_bits + s_bits + v_bits <= 63:
            group = (veh.astype(np.int64) << s_bits) | csig
            key = (group << t_bits) | (t - t_lo)
            order = np.argsort(key, kind="stable")
            gkey = group[order]
        else:
            order = np.lexsort((t, csig, veh)) if n else np.empty(0, dtype=np.int64)
            gkey = ((veh.astype(np.int64) << s_bits) | csig)[order]
        sv, ss = veh[order], csig[order]
        new = starts_of(gkey)
        gstart = np.flatnonzero(new)
        glen = np.diff(np.append(gstart, n))
        return _Sorted(
            order=order, vehicle=sv, signal=ss, t=t[order], value=value[order], code=code[order],
            repaired=np.zeros(n, dtype=bool), gkey=gkey, new=new, gstart=gstart, glen=glen,
            gsig=ss[gstart], gslot=vehicle_slot[sv[gstart]], vslot=vehicle_slot)

    # --- group-wise checks -------------------------------------------------------------------

    def _duplicates(self, rows: _Sorted) -> None:
        """A reading with the same (vehicle, signal, t) as an earlier live arrival is a duplicate."""
        if rows.t.size < 2:
            return
        t, code = rows.t, rows.code
        same = (t[1:] == t[:-1]) & ~rows.new[1:]
        if not same.any():
            return
        alive = code == 0
        dup = np.flatnonzero(same & alive[1:] & alive[:-1]) + 1
        # an alive row after dead copies: a duplicate if an earlier copy is alive (rare)
        hidden = np.flatnonzero(same & alive[1:] & ~alive[:-1]) + 1
        if hidden.size:
            prev = hidden - 1
            while prev.size:
                found = alive[prev]
                dup = np.append(dup, hidden[found])
                more = ~found & (prev > 0) & same[np.maximum(prev - 1, 0)]
                hidden, prev = hidden[more], prev[more] - 1
        code[dup] = DUPLICATE

    def _range(self, rows: _Sorted) -> None:
        """Values outside the catalog's plausible range (canonical units)."""
        x, s = rows.value, rows.signal
        bad = (x < self.range_lo[s]) | (x > self.range_hi[s])
        if bad.any():
            rows.code[bad & (rows.code == 0)] = OUT_OF_RANGE
        for sig, allowed in self.allowed.items():  # enumerated signals (few)
            idx = self._alive_rows_of(rows, sig)
            if idx.size:
                rows.code[idx[~np.isin(rows.value[idx], allowed)]] = OUT_OF_RANGE

    def _alive_rows_of(self, rows: _Sorted, sig: int) -> IntArray:
        """Sorted positions of the alive rows of one signal (all vehicles)."""
        return rows.alive(rows.rows_of(np.flatnonzero(rows.gsig == sig)))

    def _gps(self, rows: _Sorted) -> None:
        """Fix checks on latitude/longitude joined by (vehicle, t); a bad fix drops both."""
        gps = self.config.gps
        lat_idx = self._alive_rows_of(rows, self.lat_sig)
        lon_idx = self._alive_rows_of(rows, self.lon_sig)
        if not lat_idx.size or not lon_idx.size:
            return
        li, oi = _join(rows.vehicle, rows.t, lat_idx, lon_idx)
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
            acc_idx = self._alive_rows_of(rows, self.acc_sig)
            if acc_idx.size:
                fi, ai = _join(rows.vehicle, rows.t, li, acc_idx)
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

    def _implied_speed(self, rows: _Sorted, li: IntArray, lat: FloatArray, lon: FloatArray) -> BoolArray:
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

    def _spikes(self, rows: _Sorted, window: int, p: _SpikeParams) -> None:
        """Hampel filter over every vehicle's series of the signals with this window size.

        Each series is extended in front with the tail the previous batch left (when this
        batch's readings are newer); windows are centred and slide inward at the ends,
        where the threshold is `edge_factor` times stricter. One pass for all signals
        sharing the window, with per-signal thresholds.
        """
        idx = rows.alive(rows.rows_of(np.flatnonzero(p.member[rows.gsig])))
        if not idx.size:
            return
        state = self.state
        half, width = window // 2, state.tail_width
        tail_len = window - 1
        m = idx.size
        new = starts_of(rows.gkey[idx])
        first = np.flatnonzero(new)
        count = np.diff(np.append(first, m))
        head = idx[first]
        slot, sig = rows.vslot[rows.vehicle[head]], rows.signal[head]
        h = p.slot_of[sig]
        tail_n = np.minimum(state.tail_n[slot, h], tail_len).astype(np.int64)
        attach = np.where((tail_n > 0) & (rows.t[head] > state.tail_t[slot, h]), tail_n, 0)

        # The series laid end to end: [tail of the last batch, this batch's readings] each.
        ext_len = attach + count
        ext_end = np.cumsum(ext_len)
        ext_off = ext_end - ext_len
        size = int(ext_end[-1])
        ext = np.empty(size, dtype=np.float64)
        ext_row = np.full(size, -1, dtype=np.int64)  # sorted row of each element, -1 = tail
        pos = np.arange(m) + np.repeat(ext_off + attach - first, count)
        ext[pos] = rows.value[idx]
        ext_row[pos] = idx
        with_tail = np.flatnonzero(attach)
        if with_tail.size:
            k = attach[with_tail]
            col = width - np.repeat(k, k) + rank_in_group(starts_of(np.repeat(with_tail, k)))
            ext[ranges(ext_off[with_tail], k)] = state.tail_v[np.repeat(slot[with_tail], k),
                                                              np.repeat(h[with_tail], k), col]
        raw = ext
        period = p.circular[sig]
        angles = np.flatnonzero(period)
        if angles.size:  # unwrap angle series so that 359 -> 1 is a step of 2
            at = ranges(ext_off[angles], ext_len[angles])
            per = np.repeat(period[angles], ext_len[angles])
            step = np.zeros(at.size)
            step[1:] = (np.diff(ext[at]) + per[1:] / 2) % per[1:] - per[1:] / 2
            starts = np.cumsum(ext_len[angles]) - ext_len[angles]
            step[starts] = 0.0
            run = np.cumsum(step)
            base = np.repeat(ext[ext_off[angles]] - run[starts], ext_len[angles])
            ext = ext.copy()
            ext[at] = base + run

        # Window of every element: centred, slid inward at the ends of its series.
        judged_series = ext_len >= window
        lo = np.repeat(ext_off, ext_len)
        hi = np.repeat(ext_end, ext_len) - window
        start = np.clip(np.arange(size) - half, lo, hi)
        if window == 3:  # median of three by comparisons
            a, b, c = ext[np.maximum(start, 0)], ext[np.maximum(start, 0) + 1], ext[np.minimum(start + 2, size - 1)]
            median = np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))
            win = None
        else:
            win = ext[np.clip(start[:, None] + np.arange(window)[None, :], 0, size - 1)]
            median = window_median(win)
        threshold = np.repeat(p.min_deviation[sig], ext_len)
        if p.n_sigmas[sig].any():
            if win is None:
                a, b, c = np.abs(a - median), np.abs(b - median), np.abs(c - median)
                mad = np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))
            else:
                mad = window_median(np.abs(win - median[:, None]))
            threshold = np.maximum(np.repeat(p.n_sigmas[sig], ext_len) * MAD_TO_SIGMA * mad, threshold)
        edge = start != np.arange(size) - half
        threshold[edge] *= np.repeat(p.edge_factor[sig], ext_len)[edge]
        hit = (np.abs(ext - median) > threshold) & (ext_row >= 0) & np.repeat(judged_series, ext_len)
        keep = None
        if hit.any():
            hit_pos = np.flatnonzero(hit)
            hit_rows = ext_row[hit_pos]
            hit_sig = rows.signal[hit_rows]
            repair = p.repair[hit_sig]
            fixed = median[hit_pos]
            hp = p.circular[hit_sig]
            fixed = np.where(hp > 0, fixed % np.where(hp > 0, hp, 1.0), fixed)
            rows.value[hit_rows[repair]] = fixed[repair]
            rows.repaired[hit_rows[repair]] = True
            rows.code[hit_rows[~repair]] = SPIKE
            if repair.any():
                raw = raw.copy()
                raw[hit_pos[repair]] = fixed[repair]
            if not repair.all():
                keep = np.ones(size, dtype=bool)
                keep[hit_pos[~repair]] = False
        self._store_tail(raw, ext_row, ext_len, keep, rows, slot, h, tail_len)

    def _store_tail(self, series: FloatArray, series_row: IntArray, length: IntArray,
                    keep: BoolArray | None, rows: _Sorted, slot: IntArray, h: IntArray,
                    tail_len: int) -> None:
        """Keep the last `tail_len` values of each series as its tail for the next batch.

        `series` holds the series end to end (`length` each; `keep` False for dropped
        values). Only series whose newest value is a reading of this batch, newer than
        the stored tail, are updated (a batch of late readings leaves the tail alone).
        """
        state = self.state
        if keep is not None:
            length = np.bincount(np.repeat(np.arange(length.size), length)[keep], minlength=length.size)
            series, series_row = series[keep], series_row[keep]
        end = np.cumsum(length)
        filled = length > 0
        newest_row = np.full(length.size, -1, dtype=np.int64)
        newest_row[filled] = series_row[end[filled] - 1]
        newest_t = np.where(newest_row >= 0, rows.t[np.maximum(newest_row, 0)], NO_T)
        upd = np.flatnonzero((newest_row >= 0) & (newest_t > state.tail_t[slot, h]))
        if not upd.size:
            return
        us, uh = slot[upd], h[upd]
        n = np.minimum(length[upd], tail_len)
        state.tail_v[us, uh, :] = np.nan
        take = np.repeat(end[upd], n) - n.repeat(n) + rank_in_group(starts_of(np.repeat(upd, n)))
        state.tail_v[np.repeat(us, n), np.repeat(uh, n),
                     state.tail_width - np.repeat(n, n) + rank_in_group(starts_of(np.repeat(upd, n)))] = series[take]
        state.tail_n[us, uh] = n
        state.tail_t[us, uh] = newest_t[upd]

    def _rate(self, rows: _Sorted) -> None:
        """Excursions beyond the catalog's max_rate: readings too fast in and out again.

        A step is too fast when |dv| > cap * min(dt, step): cap = max_rate / 1000 times the
        tolerance (per ms), step the sampling step (the catalog's interval, or the series'
        own if slower), so a spike next to a gap or a dropped reading is still seen. A
        reading too fast on the way in and on the way out is an excursion; so are two
        readings off together (fast in, quiet, fast back, the readings around agreeing).
        The ends of a series have one neighbour: the last is judged on the way in, the
        first (when the history does not reach it and two more follow) on the way out,
        from the nearest reading that is not an excursion, against cap * edge_factor.
        """
        idx = np.flatnonzero(self.rate_checked[rows.signal] & (rows.code == 0))
        if not idx.size:
            return
        m = idx.size
        x, t = rows.value[idx], rows.t[idx]
        new = starts_of(rows.gkey[idx])
        first = np.flatnonzero(new)
        count = np.diff(np.append(first, m))
        ends = first + count - 1
        head = idx[first]
        slot, sig = rows.vslot[rows.vehicle[head]], rows.signal[head]
        cap_g = self.rate_cap_ms[sig]  # per millisecond
        # the sampling step: the catalog's interval, or the series' own if it is slower
        dt = np.diff(t)
        within = np.empty(m, dtype=np.int64)  # each reading's step to the next in its series
        within[:-1] = dt
        within[ends] = np.iinfo(np.int64).max
        step_g = np.maximum(self.interval_ms[sig], np.minimum.reduceat(within, first))
        strict_g = cap_g * self.config.rate_of_change.edge_factor
        fast = np.empty(m, dtype=bool)  # too fast on the way in
        dx = np.diff(x)
        fast[1:] = np.abs(dx) > np.minimum(dt, np.repeat(step_g, count)[1:]) * np.repeat(cap_g, count)[1:]
        last_t, last_v = self.state.last_t[slot, sig], self.state.last_v[slot, sig]
        linked = (last_t != NO_T) & (t[first] > last_t)

        def too_fast(i: IntArray, j: IntArray, limit: FloatArray, step: IntArray) -> BoolArray:
            return np.abs(x[i] - x[j]) > np.minimum(np.abs(t[i] - t[j]), step) * limit

        def from_history(i: IntArray, g: IntArray, limit: FloatArray) -> BoolArray:
            return linked[g] & (np.abs(x[i] - last_v[g]) > np.minimum(t[i] - last_t[g], step_g[g]) * limit)

        groups = np.arange(first.size)
        fast[first] = from_history(first, groups, cap_g)
        excursion = np.zeros(m, dtype=bool)
        excursion[:-1] = fast[:-1] & fast[1:] & ~new[1:]
        # Two readings off together: in fast, a quiet step, out fast and back the other way,
        # the readings around them agreeing with each other (and not an excursion).
        if m > 2:
            # candidates first (fast steps are few), then the rest of the pattern on them
            at = np.flatnonzero(fast[:-2] & fast[2:])
            at = at[~fast[at + 1] & ~new[at + 1] & ~new[at + 2]]
            g = np.searchsorted(first, at, side="right") - 1
            opens = at == first[g]  # the reading before the pair is the history's
            # the step into the pair (from the history at a series' start) and out of it
            rise_in = np.where(opens, np.where(linked[g], x[at] - last_v[g], 0.0), x[at] - x[np.maximum(at - 1, 0)])
            back = rise_in * (x[at + 2] - x[at + 1]) < 0
            at, g, opens = at[back], g[back], opens[back]
            if at.size:
                b = np.maximum(at - 1, 0)
                x0 = np.where(opens, last_v[g], x[b])
                t0 = np.where(opens, last_t[g], t[b])
                calm = np.abs(x[at + 2] - x0) <= (t[at + 2] - t0) * cap_g[g]
                calm &= np.where(opens, True, ~excursion[b])
                at = at[calm]
                excursion[at] = True
                excursion[at + 1] = True
        # The first of a series the history does not reach: on the way out.
        lone = np.flatnonzero(~linked & (count >= 3))
        if lone.size:
            nxt = first[lone] + 1
            ahead = (nxt < ends[lone]) & excursion[nxt]
            while ahead.any():  # a run of excursions after the start (rare)
                nxt[ahead] += 1
                ahead &= (nxt < ends[lone]) & excursion[nxt]
            excursion[first[lone]] = too_fast(first[lone], nxt, strict_g[lone], step_g[lone])
        # The last of a series: on the way in (from the history if nothing earlier is left).
        prev = ends - 1
        back = (prev >= first) & excursion[np.maximum(prev, 0)]
        while back.any():  # a run of excursions before the end (rare)
            prev[back] -= 1
            back &= (prev >= first) & excursion[np.maximum(prev, 0)]
        inside = prev >= first
        pc = np.maximum(prev, 0)
        excursion[ends] = np.where(inside, too_fast(ends, pc, strict_g, step_g),
                                   from_history(ends, groups, strict_g))
        if excursion.any():
            rows.code[idx[excursion]] = RATE_OF_CHANGE

    # --- result ----------------------------------------------------------------------------

    def _finish(self, readings: Readings, rows: _Sorted, code: CodeArray,
                converted: BoolArray | None, clock_fixed: BoolArray | None,
                new_frames: tuple[IntArray, IntArray], clock: _Clock) -> CleanResult:
        state = self.state
        outcome = code  # per input row; drops decided after the sort are scattered in
        keep = rows.code == 0
        dropped = np.flatnonzero(~keep)  # (on a bool array: several times faster than on the codes)
        outcome[rows.order[dropped]] = rows.code[dropped]
        src = rows.order[keep]
        spike_fixed = rows.repaired[keep]
        unit_fixed = converted[src] if converted is not None else np.zeros(src.size, dtype=bool)
        any_fixed = spike_fixed | unit_fixed
        if clock_fixed is not None:  # frames with repaired times (rare)
            time_fixed = clock_fixed[src]
            any_fixed |= time_fixed
        else:
            time_fixed = np.zeros(src.size, dtype=bool)
        fixed = np.flatnonzero(any_fixed)
        if fixed.size:
            u, s, c = unit_fixed[fixed], spike_fixed[fixed], time_fixed[fixed]
            single = np.where(s, REPAIRED_SPIKE, np.where(u, REPAIRED_UNIT, REPAIRED_CLOCK))
            several = u.astype(np.int8) + s + c > 1
            outcome[src[fixed]] = np.where(several, REPAIRED, single)

        # Late: an earlier arrival of the same series has a later time, or history does.
        gkey, t, value, vehicle = rows.gkey[keep], rows.t[keep], rows.value[keep], rows.vehicle[keep]
        m = src.size
        new = starts_of(gkey)
        first = np.flatnonzero(new)
        count = np.diff(np.append(first, m))
        late = np.zeros(m, dtype=bool)
        if m > 1:
            behind = np.flatnonzero((src[1:] < src[:-1]) & ~new[1:]) + 1
            if behind.size:  # some series arrived out of order within the batch
                gid = np.searchsorted(first, behind, side="right") - 1  # non-decreasing
                groups = gid[starts_of(gid)]
                at = ranges(first[groups], count[groups])
                late[at] = suffix_min_in_group(src[at], np.repeat(groups, count[groups])) < src[at]
        slot, sig = rows.vslot[vehicle[first]], gkey[first] % (1 << self.signal_bits)
        last_t = state.last_t[slot, sig]
        behind_history = t[first] < last_t
        if behind_history.any():
            late |= t < np.repeat(np.where(behind_history, last_t, NO_T), count)
        clock.lap("late")

        # History: newest reading per series, frames seen, batch clock, eviction.
        if m:
            last = np.append(first[1:], m) - 1
            newer = t[last] > last_t
            ls, lg = slot[newer], sig[newer]
            state.last_t[ls, lg] = t[last][newer]
            state.last_v[ls, lg] = value[last[newer]]
        self._remember_frames(*new_frames)
        state.touch(rows.vslot)
        state.evict(rows.vslot)

        clean = Readings(
            vehicle=vehicle,
            signal=(gkey & ((1 << self.signal_bits) - 1)).astype(np.int32),
            unit=np.zeros(m, dtype=np.int16),
            t=t,
            value=value,
            frame=readings.frame[src],
            vins=readings.vins,
            signal_names=list(self.catalog.names),
            unit_names=[""],
            frames=readings.frames,
            blocks=first,
        )
        counts_arr = np.bincount(outcome[outcome != 0], minlength=len(REASONS))
        counts_arr[KEPT] = outcome.size - int(counts_arr[1:].sum())
        counts = {"in": int(outcome.size)}
        counts["kept"] = int(counts_arr[KEPT])
        counts["repaired"] = int(counts_arr[REPAIRED:FIRST_DROPPED].sum())
        counts["dropped"] = int(counts_arr[FIRST_DROPPED:].sum())
        counts["late"] = int(late.sum())
        for i in range(REPAIRED, len(REASONS)):
            if counts_arr[i]:
                counts[REASONS[i]] = int(counts_arr[i])
        return CleanResult(readings=clean, repaired=any_fixed, outcome=outcome,
                           reasons=list(REASONS), counts=counts, late=late)

    def _remember_frames(self, slot: IntArray, fp: IntArray) -> None:
        """Append first-seen frame fingerprints to each vehicle's ring (newest `memory` kept)."""
        memory = self.state.frame_memory
        if not slot.size or memory == 0:
            return
        by_slot = np.argsort(slot, kind="stable")
        slot, fp = slot[by_slot], fp[by_slot]
        new = starts_of(slot)
        rank = rank_in_group(new)
        size = np.diff(np.append(np.flatnonzero(new), slot.size))
        per_row_size = np.repeat(size, size)
        recent = rank >= per_row_size - memory
        written = self.state.frame_n[slot]
        self.state.frame_fp[slot[recent], (written[recent] + rank[recent]) % memory] = fp[recent]
        first = np.flatnonzero(new)
        self.state.frame_n[slot[first]] += size


def _join(vehicle: npt.NDArray[np.int32], t: IntArray, a: IntArray, b: IntArray) -> tuple[IntArray, IntArray]:
    """Pairs of sorted positions (i in a, j in b) with equal (vehicle, t); both sorted."""
    va, vb = vehicle[a].astype(np.int64), vehicle[b].astype(np.int64)
    ta, tb = t[a], t[b]
    t_lo = min(int(ta.min()), int(tb.min()))
    t_bits = max(max(int(ta.max()), int(tb.max())) - t_lo, 1).bit_length()
    v_bits = max(int(max(va.max(), vb.max())), 1).bit_length()
    if t_bits + v_bits <= 62:
        ka = (va << t_bits) | (ta - t_lo)
        kb = (vb << t_bits) | (tb - t_lo)
        j = np.searchsorted(kb, ka)
        jc = np.minimum(j, kb.size - 1)
        hit = kb[jc] == ka
        return a[hit], b[jc[hit]]
    both_v = np.concatenate((va, vb))
    both_t = np.concatenate((ta, tb))
    side = np.concatenate((np.zeros(a.size, np.int8), np.ones(b.size, np.int8)))
    where = np.concatenate((a, b))
    o = np.lexsort((side, both_t, both_v))
    pair = (side[o][:-1] == 0) & (side[o][1:] == 1) & (both_v[o][:-1] == both_v[o][1:]) \
        & (both_t[o][:-1] == both_t[o][1:])
    return where[o][:-1][pair], where[o][1:][pair]
