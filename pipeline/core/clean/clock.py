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
