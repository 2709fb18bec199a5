"""Rate of change: isolated excursions faster than the catalog's `max_rate`.

Config: `rate_of_change` in `rules/cleaning.yaml` (tolerance, edge factor, exempt signals).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.core.batch import BoolArray, FloatArray, IntArray
from pipeline.core.clean.config import CleaningConfig
from pipeline.core.clean.groups import starts_of
from pipeline.core.clean.outcomes import RATE_OF_CHANGE
from pipeline.core.clean.rows import SortedRows
from pipeline.core.clean.state import NO_T, VehicleState

REASONS = ("dropped.rate_of_change",)


class RateCheck:
    """Excursions per catalog signal, continued from each series' last reading in history."""

    def __init__(self, catalog: Any, cfg: CleaningConfig, signal_index: Callable[..., int],
                 state: VehicleState) -> None:
        self.config = cfg
        self.state = state
        # Rate caps per signal (NaN = no check).
        self.rate_cap = np.asarray(catalog.max_rate, dtype=np.float64) * cfg.rate_of_change.tolerance
        for i, name in enumerate(cfg.rate_of_change.exempt):
            self.rate_cap[signal_index(name, "rate_of_change", "exempt", str(i))] = np.nan
        if not cfg.rate_of_change.enabled:
            self.rate_cap[:] = np.nan
        self.rate_checked = ~np.isnan(self.rate_cap)
        self.rate_cap_ms = self.rate_cap / 1000.0
        self.interval_ms = np.asarray(catalog.interval_ms, dtype=np.int64)

    def run(self, rows: SortedRows) -> None:
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
