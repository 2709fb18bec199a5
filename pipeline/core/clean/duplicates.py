"""Duplicates: frames sent again (`duplicates.frame_memory` per vehicle) and readings repeated.

A resend carries the frame's (seq, sent_at): its fingerprint is remembered per vehicle
across batches, and every copy after the first in a batch is a resend too. A reading
with the same (vehicle, signal, t) as an earlier live arrival is a duplicate.
Config: `duplicates` in `rules/cleaning.yaml`.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.batch import BoolArray, CodeArray, IntArray, Readings
from pipeline.core.clean.groups import rank_in_group, starts_of
from pipeline.core.clean.outcomes import DUPLICATE
from pipeline.core.clean.rows import SortedRows, frame_fingerprint
from pipeline.core.clean.state import VehicleState

REASONS = ("dropped.duplicate",)


class Resends:
    """Frames seen before (per vehicle, in history or earlier in the batch)."""

    def __init__(self, state: VehicleState) -> None:
        self.state = state

    def run(self, readings: Readings, vehicle_slot: IntArray,
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

    def remember(self, slot: IntArray, fp: IntArray) -> None:
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


def duplicates(rows: SortedRows) -> None:
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
