"""Vehicle clock skew: each frame's clock offset against its record time, repaired or dropped.

A frame's offset is `sent_at - received_at`: the vehicle clock at upload minus the Kafka
record time (stamped by the gateway or broker, a trusted clock). Network delay only makes
it smaller, so an offset above `max_clock_skew_s` is a clock running ahead. An offset far
below can also be a frame delivered late (a backlog after a dead zone), whose times are
right: it counts as a clock running behind only when its send time goes back against the
vehicle's sequence (a higher seq sent before a lower one) or when it matches the offset of
a behind-clock episode already found.

A skewed frame is repaired, its times shifted by the estimate, when the estimate is stable:
another frame of the vehicle (in the batch, or the episode kept in history) shows the same
offset within `clock_agree_ms`; the estimate is the median of those offsets. A lone skewed
frame is dropped (`dropped.clock_skew`). Skewed frames are rare, so this walks them in
Python, per vehicle, in seq order; the vectorised and the reference cleaner share it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core.batch import BoolArray, CodeArray, IntArray, Readings
from pipeline.core.clean.config import CleaningConfig
from pipeline.core.clean.groups import starts_of
from pipeline.core.clean.outcomes import CLOCK_SKEW
from pipeline.core.clean.state import NO_T, VehicleState


@dataclass(slots=True)
class ClockHistory:
    """What one vehicle's earlier batches tell about its clock.

    `offset`/`offset_seq`: the offset of a skew episode still open (the estimate, or the
    offset of a lone skewed frame that later frames may confirm) and the seq of its newest
    frame (None: no episode); `trusted_seq`/`trusted_sent`: the newest frame whose
    clock was trusted (from the step-back check's history).
    """

    offset: int | None
    offset_seq: int
    trusted_seq: int | None
    trusted_sent: int | None


@dataclass(slots=True)
class ClockVerdict:
    """Per judged frame: the shift to subtract from its times, or a drop."""

    shift: dict[int, int]  # frame -> offset (ms) to subtract from sent_at and t
    dropped: list[int]
    history: ClockHistory


def judge_vehicle(frames: Sequence[int], seq: Sequence[int], sent: Sequence[int], received: Sequence[int],
                  history: ClockHistory, max_skew_ms: int, agree_ms: int, step_back_ms: int) -> ClockVerdict:
    """Judge one vehicle's frames of a batch (indexes into seq/sent/received)."""
    order = sorted(frames, key=lambda f: (seq[f], f))
    offsets = {f: sent[f] - received[f] for f in order if received[f] > 0}
    # frames that arrived after a frame sent later (higher seq): held back on the way
    delayed: set[int] = set()
    if any(offsets[f] < -max_skew_ms for f in offsets):
        first_after = None  # earliest arrival among higher seqs, walking down the seqs
        for f in reversed(order):
            if first_after is not None and received[f] > first_after:
                delayed.add(f)
            if received[f] > 0:
                first_after = received[f] if first_after is None else min(first_after, received[f])
    shift: dict[int, int] = {}
    dropped: list[int] = []
    offset, offset_seq = history.offset, history.offset_seq
    trusted_seq, trusted_sent = history.trusted_seq, history.trusted_sent
    for f in order:
        o = offsets.get(f)
        if o is None:
            continue
        if abs(o) <= max_skew_ms:  # a clock in time: an open episode ends with a newer frame
            if offset is not None and seq[f] > offset_seq:
                offset = None
            if trusted_seq is None or seq[f] > trusted_seq:
                trusted_seq, trusted_sent = seq[f], sent[f] if trusted_sent is None else max(trusted_sent, sent[f])
            continue
        matches_episode = offset is not None and abs(o - offset) <= agree_ms
        if o < 0 and not matches_episode:
            went_back = (trusted_seq is not None and trusted_sent is not None and seq[f] > trusted_seq
                         and sent[f] < trusted_sent - step_back_ms)
            # the same offset on a frame sent well apart: a clock, not a delay (frames held
            # back and delivered late arrive together, their offsets as far apart as their
            # send times)
            persists = f not in delayed and any(
                abs(offsets[g] - o) <= agree_ms and abs(sent[g] - sent[f]) > agree_ms
                for g in order if g != f and g in offsets and g not in delayed)
            if not (went_back or persists):
                continue  # delivered late: its times are right
        agreeing = [offsets[g] for g in order if g != f and g in offsets and abs(offsets[g] - o) <= agree_ms]
        if matches_episode and offset is not None:
            agreeing.append(offset)
        if not agreeing:  # alone: dropped, but the frames after it may confirm its offset
            dropped.append(f)
            offset, offset_seq = o, max(offset_seq, seq[f])
            continue
        estimate = int(statistics.median([o, *agreeing]))
        shift[f] = estimate
        offset = estimate
        offset_seq = max(offset_seq, seq[f])
    return ClockVerdict(shift, dropped, ClockHistory(offset, offset_seq, trusted_seq, trusted_sent))


REASONS = ("dropped.clock_skew",)  # and the repair `repaired.clock_skew`


class ClockCheck:
    """Clock skew (repaired or dropped, `_skew`) and clocks that went back (`_behind`),
    with `time` in `rules/cleaning.yaml`; the history of each vehicle's clock is kept in
    `VehicleState`."""

    def __init__(self, cfg: CleaningConfig, state: VehicleState) -> None:
        self.config = cfg
        self.state = state

    def skew(self, readings: Readings, vehicle_slot: IntArray,
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

    def behind(self, readings: Readings, sent: IntArray, vehicle_slot: IntArray, code: CodeArray,
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
