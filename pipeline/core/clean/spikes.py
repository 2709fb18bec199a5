"""Spikes: the Hampel filter, per signal, continued across batches by each series' tail.

Config: `spikes` in `rules/cleaning.yaml` (window, n_sigmas, min_deviation, edge factor,
circular, drop or repair).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.batch import BoolArray, FloatArray, IntArray
from pipeline.core.clean.config import SpikeRule
from pipeline.core.clean.groups import ranges, rank_in_group, starts_of, window_median
from pipeline.core.clean.outcomes import SPIKE
from pipeline.core.clean.rows import SortedRows
from pipeline.core.clean.state import NO_T, VehicleState

REASONS = ("dropped.spike",)  # and the repair `repaired.spike`
MAD_TO_SIGMA = 1.4826


@dataclass(slots=True)
class SpikeParams:
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
           n_signals: int) -> SpikeParams:
        p = cls(np.zeros(n_signals, bool), np.zeros(n_signals, np.int64), np.zeros(n_signals),
                np.zeros(n_signals), np.ones(n_signals), np.zeros(n_signals), np.zeros(n_signals, bool))
        tails = {s: h for h, (s, _) in enumerate(every)}
        for s, r in rules:
            p.member[s], p.slot_of[s] = True, tails[s]
            p.n_sigmas[s], p.min_deviation[s], p.edge_factor[s] = r.n_sigmas, r.min_deviation, r.edge_factor
            p.circular[s], p.repair[s] = r.circular or 0.0, r.action == "repair"
        return p


class SpikeCheck:
    """Hampel rules grouped by window size, one pass per window for all its signals."""

    def __init__(self, spikes: list[tuple[int, SpikeRule]], n_signals: int, state: VehicleState) -> None:
        self.state = state
        self.spike_params = {
            window: SpikeParams.of([(s, r) for s, r in spikes if r.window == window], spikes, n_signals)
            for window in sorted({r.window for _, r in spikes})}

    def run(self, rows: SortedRows) -> None:
        for window, params in self.spike_params.items():
            self._spikes(rows, window, params)

    def _spikes(self, rows: SortedRows, window: int, p: SpikeParams) -> None:
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
                    keep: BoolArray | None, rows: SortedRows, slot: IntArray, h: IntArray,
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
