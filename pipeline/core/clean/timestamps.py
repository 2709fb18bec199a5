"""Timestamps: samples stamped in the future or too long ago.

A sample later than its frame's send time (the vehicle clock) by `max_future_vs_sent_ms`,
or than its frame's ingest time (the Kafka record time) by `max_future_vs_ingest_ms`, is
`dropped.future_timestamp`; one older than the ingest time by `max_age_ms` is
`dropped.too_old`. Config: `time` in `rules/cleaning.yaml`.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.batch import BoolArray, CodeArray, IntArray, Readings
from pipeline.core.clean.config import TimeRules
from pipeline.core.clean.outcomes import FUTURE_TIMESTAMP, TOO_OLD

REASONS = ("dropped.future_timestamp", "dropped.too_old")


def check_times(tcfg: TimeRules, readings: Readings, t: IntArray, sent_at: IntArray, now_ms: int | None,
                code: CodeArray) -> None:
    """Write the codes of samples in the future or too old (times after any clock repair)."""
    n = len(readings)
    frames = readings.frames
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
