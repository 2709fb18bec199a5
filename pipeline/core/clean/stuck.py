"""Stuck sensors: runs of one held value, judged on their own or against another signal.

A run of one unchanged value is stuck once it has lasted `min_duration_ms` and
`min_count` readings and, for a rule checked against another signal of the same vehicle
(a rationality check), that signal moved by `min_reference` since the run began. History
of the runs across batches lives in `VehicleState` (`stuck_*`, one column per rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.batch import BoolArray, FloatArray, IntArray
from pipeline.core.clean.config import StuckRule
from pipeline.core.clean.groups import ranges, starts_of
from pipeline.core.clean.state import VehicleState

if TYPE_CHECKING:
    from pipeline.core.clean.rows import SortedRows as _Sorted


REASONS = ("dropped.stuck",)
MEASURES = ("change", "integral", "integral_abs")
# A cross-checked run is stuck from the reading at which its reference had moved by this
# share of `min_reference`: the held readings before agreed with the reference (a parked
# car's speed of 0 before it pulls away).
ONSET_SHARE = 0.25


@dataclass(slots=True)
class StuckParams:
    """Stuck rules as arrays by stuck slot (one slot per check)."""

    signal: IntArray  # by stuck slot: the signal it checks
    min_duration_ms: IntArray  # by stuck slot
    min_count: IntArray
    # resting values by stuck slot: `ignore` (NaN-padded columns) and `rest_above` (inf: none)
    ignore: FloatArray
    rest_above: FloatArray
    # cross-checks by stuck slot: reference signal (-1: none), measure (index into
    # MEASURES), min_reference, max_gap_ms
    ref_sig: IntArray
    measure: IntArray
    min_reference: FloatArray
    max_gap_ms: IntArray

    @classmethod
    def of(cls, rules: list[tuple[int, StuckRule]], references: list[int]) -> StuckParams:
        width = max((len(r.ignore_values) for _, r in rules), default=0)
        ignore = np.full((len(rules), width), np.nan)
        for k, (_, r) in enumerate(rules):
            ignore[k, :len(r.ignore_values)] = r.ignore_values
        return cls(np.asarray([s for s, _ in rules], dtype=np.int64).reshape(-1),
                   np.asarray([r.min_duration_ms for _, r in rules], dtype=np.int64),
                   np.asarray([r.min_count for _, r in rules], dtype=np.int64),
                   ignore,
                   np.asarray([np.inf if r.rest_above is None else r.rest_above for _, r in rules],
                              dtype=np.float64),
                   np.asarray(references, dtype=np.int64).reshape(-1),
                   np.asarray([MEASURES.index(r.measure) for _, r in rules], dtype=np.int64),
                   np.asarray([r.min_reference for _, r in rules], dtype=np.float64),
                   np.asarray([r.max_gap_ms for _, r in rules], dtype=np.int64))

    def resting(self, x: FloatArray, k: IntArray) -> BoolArray:
        """Readings at a resting value of their check `k`: one of `ignore_values`, or at or
        above `rest_above`."""
        out = x >= self.rest_above[k]
        for j in range(self.ignore.shape[1]):
            out |= x == self.ignore[k, j]
        return out


def _retire(state: VehicleState, slot: IntArray, k: IntArray) -> None:
    """The runs in history at (`slot`, `k`) are about to be replaced by newer ones: those
    found stuck become the newest ended runs found stuck."""
    hit = state.stuck_hit[slot, k]
    if hit.any():
        s, kk = slot[hit], k[hit]
        state.stuck_past_v[s, kk] = state.stuck_v[s, kk]
        state.stuck_past_start[s, kk] = state.stuck_start[s, kk]
        state.stuck_past_end[s, kk] = state.stuck_t[s, kk]


class StuckCheck:
    """The stuck checks of a cleaner, vectorised over a batch's sorted rows.

    Every check of every signal is judged in one pass, each on the readings alive when
    the stage begins (so a signal's checks share its references as they arrived): a
    series is a vehicle's readings of a signal, once per check of that signal (`layers`:
    0 for a signal's rule, 1, 2... for the checks its `also` lists). A reading is stuck
    when any check of its signal finds it so.
    """

    def __init__(self, params: StuckParams, layers: list[int], n_signals: int, signal_bits: int,
                 code: int) -> None:
        self.p = params
        self.slot_of = np.full((max(layers, default=-1) + 1, n_signals), -1, dtype=np.int64)
        self.min_count_of = np.zeros(n_signals, dtype=np.int64)  # the fewest of a signal's checks
        for k, sig in enumerate(params.signal.tolist()):
            self.slot_of[layers[k], sig] = k
            count = int(params.min_count[k])
            self.min_count_of[sig] = min(count, self.min_count_of[sig] or count)
        self.checked: BoolArray = np.asarray((self.slot_of >= 0).any(axis=0))  # signals with a check
        self.signal_bits = signal_bits
        self.code = code  # outcome code of a stuck reading

    def run(self, rows: _Sorted, state: VehicleState) -> None:
        """Judge the batch (`_judge`); the late readings found stuck are marked last, like
        the others, so that every check reads its references as they arrived."""
        self._late_stuck: IntArray = np.empty(0, dtype=np.int64)
        self._judge(rows, state)
        rows.code[self._late_stuck] = self.code

    def _judge(self, rows: _Sorted, state: VehicleState) -> None:
        """Runs of one unchanged value that last too long (continued from history).

        A run is stuck once one of its readings has held for `min_duration_ms` and
        `min_count` readings (and, for a cross-checked rule, the reference moved by
        `min_reference` since the run began: its readings as they arrived, before this
        stage, measured within the batch); then all its repeats in the batch are dropped,
        and the run's later readings while it lasts. Only series that can hold such a run
        are worked out in full: those continuing a run from the last batch, holding
        `min_count` equal readings in a row, or ending in a repeat (whose run the next
        batch continues); the others just start a run.
        """
        p = self.p
        # the rows of each check's series that may hold a run, one layer after another
        groups = self._screen(rows, state)
        glen = rows.glen[np.concatenate(groups)] if groups else np.empty(0, np.int64)
        idx = ranges(rows.gstart[np.concatenate(groups)], glen) if groups else np.empty(0, np.int64)
        sizes = np.asarray([int(rows.glen[g].sum()) for g in groups], dtype=np.int64)
        new = np.zeros(idx.size, dtype=bool)
        new[np.cumsum(glen) - glen] = True
        alive = rows.code[idx] == 0
        if not alive.all():
            ends = np.cumsum(sizes)
            sizes = np.asarray([np.count_nonzero(alive[e - n:e]) for e, n in zip(ends.tolist(), sizes.tolist(),
                                                                                strict=True)], dtype=np.int64)
            # a series whose first row is dead starts at its first alive one (a series all
            # dead marks the next series' start, a start anyway)
            starts = np.flatnonzero(new)
            lost = starts[~alive[starts]]
            new = new[alive]
            idx = idx[alive]
            at = lost - np.searchsorted(np.flatnonzero(~alive), lost)
            new[at[at < idx.size]] = True
        if not idx.size:
            return
        m = idx.size
        x = rows.value[idx]
        part_start = np.cumsum(sizes) - sizes

        def series() -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray]:
            """Each series' first and last row, its vehicle's state slot, its check and its first time."""
            first = np.flatnonzero(new)
            head = idx[first]
            layer = np.searchsorted(part_start, first, side="right") - 1
            return (first, np.append(first[1:], m) - 1, rows.vslot[rows.vehicle[head]],
                    self.slot_of[layer, rows.signal[head]], rows.t[head])

        first, last, slot, k, t_first = series()
        behind = np.flatnonzero(t_first <= state.stuck_t[slot, k])
        if behind.size:  # readings of late frames, which the series' run in history has passed
            split = self._behind(rows, state, idx, first, last, slot, k, behind)
            if split.size:  # judged as a series of their own, before the batch's own readings
                new[split] = True
                first, last, slot, k, t_first = series()
        go_on = (x[first] == state.stuck_v[slot, k]) & (t_first > state.stuck_t[slot, k])
        eq = np.zeros(m, dtype=bool)
        eq[1:] = (x[1:] == x[:-1]) & ~new[1:]
        # runs of a resting value are never stuck (nor continued)
        rep = np.flatnonzero(eq)
        of = np.searchsorted(first, rep, side="right") - 1
        resting = p.resting(x[rep], k[of])
        if resting.any():
            eq[rep[resting]] = False
            rep, of = rep[~resting], of[~resting]
        held_on = go_on.copy()  # continuing a run that could be stuck
        cont = np.flatnonzero(go_on)
        held_on[cont] = ~p.resting(x[first[cont]], k[cont])
        # a series holds min_count equal readings in a row when the repeat min_count - 2
        # repeats after one is min_count - 2 rows further on (repeats are few)
        streak = np.zeros(first.size, dtype=bool)
        if rep.size:
            span = p.min_count[k[of]] - 2
            ahead = np.arange(rep.size) + span
            inside = ahead < rep.size
            streak[of[inside & (rep[np.minimum(ahead, rep.size - 1)] - rep == span)]] = True
        full = held_on | eq[last] | streak
        t_last = rows.t[idx[last]]
        newer = t_last > state.stuck_t[slot, k]
        easy = newer & ~full  # the series ends on a fresh value: a run of one
        us, uk = slot[easy], k[easy]
        _retire(state, us, uk)
        state.stuck_v[us, uk] = x[last][easy]
        state.stuck_start[us, uk] = t_last[easy]
        state.stuck_n[us, uk] = 1
        state.stuck_t[us, uk] = t_last[easy]
        state.stuck_hit[us, uk] = False
        state.stuck_ref0[us, uk] = np.nan  # a run of one: the next batch measures from its start
        if not full.any():
            return
        sel = np.flatnonzero(full)
        count = last[sel] - first[sel] + 1
        sub = idx[ranges(first[sel], count)]
        x, t = rows.value[sub], rows.t[sub]
        first = np.cumsum(count) - count
        new_group = np.zeros(sub.size, dtype=bool)
        new_group[first] = True
        slot, k, go_on = slot[sel], k[sel], go_on[sel]
        new_run = new_group.copy()
        new_run[1:] |= x[1:] != x[:-1]
        run_first = np.flatnonzero(new_run)
        run_of = np.cumsum(new_run) - 1
        run_start = t[run_first]
        run_offset = np.zeros(run_first.size, dtype=np.int64)
        first_run = run_of[first]
        run_start[first_run] = np.where(go_on, state.stuck_start[slot, k], run_start[first_run])
        run_offset[first_run] = np.where(go_on, state.stuck_n[slot, k], 0)
        in_run = np.arange(sub.size) - run_first[run_of] + 1 + run_offset[run_of]
        since = t - run_start[run_of]
        row_k = np.repeat(k, count)
        bad = (since >= p.min_duration_ms[row_k]) & (in_run >= p.min_count[row_k])
        cand = np.flatnonzero(bad)
        bad[cand[p.resting(x[cand], row_k[cand])]] = False
        run_ref0 = np.full(run_first.size, np.nan)
        ref_next = np.full(first.size, np.nan)  # per series: where the next batch measures from
        checked = np.flatnonzero(p.ref_sig[k] >= 0)
        moved = np.ones(sub.size, dtype=bool)  # the reference began to move (unchecked: always)
        if checked.size:  # cross-checked rules: the reference must have moved
            # the reference is read only where it matters: in runs that may be stuck, and
            # where the runs the next batch continues begin
            need = np.zeros(run_first.size, dtype=bool)
            need[run_of[bad]] = True
            ends = first + count - 1
            need[run_of[ends[in_run[ends] > 1]]] = True
            self._cross_check(rows, state, sub, t, run_start[run_of], first, count, k, slot, go_on,
                              new_run, run_of, first_run, checked, bad, moved, run_ref0, ref_next,
                              need[run_of])
        run_hit = np.zeros(run_first.size, dtype=bool)
        run_hit[run_of[bad]] = True
        # a run's readings are stuck from the first at which its reference began to move
        # (or all of them when the run was already stuck in an earlier batch)
        onset = np.full(run_first.size, sub.size, dtype=np.int64)
        at_moved = np.flatnonzero(moved)
        if at_moved.size:
            runs_moved = run_of[at_moved]  # non-decreasing: each run's first is where it changes
            first_moved = np.flatnonzero(np.append(True, runs_moved[1:] != runs_moved[:-1]))
            onset[runs_moved[first_moved]] = at_moved[first_moved]
        before = go_on & state.stuck_hit[slot, k]
        run_hit[first_run[before]] = True
        onset[first_run[before]] = 0
        bad = run_hit[run_of] & (in_run >= 2) & (np.arange(sub.size) >= onset[run_of])
        rows.code[sub[bad]] = self.code
        last = first + count - 1
        newer = t[last] > state.stuck_t[slot, k]
        # the newest run found stuck that has ended is remembered: one that ended in the
        # batch, else the run in history when the series did not continue it
        last_run = run_of[last]
        ended = run_hit.copy()
        ended[last_run] = False
        past_run = np.full(first.size, -1, dtype=np.int64)
        cand = np.flatnonzero(ended)
        np.maximum.at(past_run, np.searchsorted(first, run_first[cand], side="right") - 1, cand)
        gone = newer & (past_run < 0) & ~go_on
        _retire(state, slot[gone], k[gone])
        ended_here = np.flatnonzero(newer & (past_run >= 0))
        if ended_here.size:
            pr = past_run[ended_here]
            run_last = np.append(run_first[1:], sub.size) - 1
            ps, pk = slot[ended_here], k[ended_here]
            state.stuck_past_v[ps, pk] = x[run_first[pr]]
            state.stuck_past_start[ps, pk] = run_start[pr]
            state.stuck_past_end[ps, pk] = t[run_last[pr]]
        us, uk = slot[newer], k[newer]
        state.stuck_v[us, uk] = x[last][newer]
        state.stuck_start[us, uk] = run_start[run_of[last]][newer]
        state.stuck_n[us, uk] = in_run[last][newer]
        state.stuck_t[us, uk] = t[last][newer]
        state.stuck_hit[us, uk] = run_hit[run_of[last]][newer]
        state.stuck_ref0[us, uk] = np.where(in_run[last] > 1, ref_next, np.nan)[newer]

    def _screen(self, rows: _Sorted, state: VehicleState) -> list[IntArray]:
        """The groups (by layer) that may hold a run, to be worked out in `_judge`; the
        others start a run with their last reading here.

        Read over the whole batch, without gathering the checked rows: a group whose rows
        are all alive, that does not continue a run from history (nor begin before its
        last reading there), ends on a fresh value and holds no `min_count` equal readings
        in a row (the fewest of its signal's checks) can only start a run. The rest (a
        superset of those `_judge` works out in full) go on to `_judge`.
        """
        p, v, t = self.p, rows.value, rows.t
        checked = self.checked[rows.gsig]
        eq = np.zeros(v.size, dtype=bool)
        if v.size > 1:
            np.equal(v[1:], v[:-1], out=eq[1:])
            eq[rows.gstart] = False
        rep = np.flatnonzero(eq)
        rep_g = np.searchsorted(rows.gstart, rep, side="right") - 1
        mine = checked[rep_g]
        rep, rep_g = rep[mine], rep_g[mine]
        base = np.zeros(rows.gstart.size, dtype=bool)  # with dead rows, or min_count in a row
        base[np.searchsorted(rows.gstart, np.flatnonzero(rows.code != 0), side="right") - 1] = True
        if rep.size:
            span = self.min_count_of[rows.gsig[rep_g]] - 2
            ahead = np.arange(rep.size) + span
            inside = ahead < rep.size
            base[rep_g[inside & (rep[np.minimum(ahead, rep.size - 1)] - rep == span)]] = True
        cg = np.flatnonzero(checked)
        k_of = self.slot_of[:, rows.gsig[cg]]  # (layer, checked group) -> check, -1: none
        layer, at = np.nonzero(k_of >= 0)  # every check's series, by layer
        groups, k = cg[at], k_of[layer, at]
        slot = rows.gslot[groups]
        first = rows.gstart[groups]
        last = first + rows.glen[groups] - 1
        go = base[groups] | (t[first] <= state.stuck_t[slot, k])
        go |= (v[first] == state.stuck_v[slot, k]) & ~p.resting(v[first], k)
        go |= eq[last] & ~p.resting(v[last], k)
        easy = ~go & (t[last] > state.stuck_t[slot, k])
        us, uk, ul = slot[easy], k[easy], last[easy]
        _retire(state, us, uk)
        state.stuck_v[us, uk] = v[ul]
        state.stuck_start[us, uk] = t[ul]
        state.stuck_n[us, uk] = 1
        state.stuck_t[us, uk] = t[ul]
        state.stuck_hit[us, uk] = False
        state.stuck_ref0[us, uk] = np.nan
        counts = np.bincount(layer[go], minlength=self.slot_of.shape[0])
        return np.split(groups[go], np.cumsum(counts)[:-1])

    def _behind(self, rows: _Sorted, state: VehicleState, idx: IntArray, first: IntArray, last: IntArray,
                slot: IntArray, k: IntArray, behind: IntArray) -> IntArray:
        """Where the batch's own readings begin (positions in `idx`) in `behind` series,
        which start with readings of late frames at or before the last reading of their
        run in history. Those are judged as a series of their own that leaves the history
        as it is (a run that starts again), and each of them is stuck too when it repeats
        the run's value after the run began and the run was found stuck (a late frame of a
        frozen sensor), or repeats the value of the newest run found stuck that has ended,
        within that run's time (a frame that arrives after the sensor recovered)."""
        n = last[behind] - first[behind] + 1
        at = ranges(first[behind], n)
        owner = np.repeat(behind, n)
        s, kk = slot[owner], k[owner]
        old = rows.t[idx[at]] <= state.stuck_t[s, kk]
        passed = np.bincount(np.searchsorted(behind, owner[old]), minlength=behind.size)
        at, s, kk = at[old], s[old], kk[old]
        rows_at = idx[at]
        v, t = rows.value[rows_at], rows.t[rows_at]
        stuck = state.stuck_hit[s, kk] & (v == state.stuck_v[s, kk]) & (t > state.stuck_start[s, kk])
        # or a repeat of the newest run found stuck that has ended, from within it
        stuck |= (v == state.stuck_past_v[s, kk]) & (t > state.stuck_past_start[s, kk]) & (
            t <= state.stuck_past_end[s, kk])
        self._late_stuck = rows_at[stuck]
        return (first[behind] + passed)[passed < n]

    def _cross_check(self, rows: _Sorted, state: VehicleState, sub: IntArray, t: IntArray, start_t: IntArray, first: IntArray, count: IntArray, k: IntArray, slot: IntArray, go_on: BoolArray, new_run: BoolArray, run_of: IntArray,
                     first_run: IntArray, checked: IntArray, bad: BoolArray, moved: BoolArray,
                     run_ref0: FloatArray, ref_next: FloatArray, asked: BoolArray) -> None:
        """Keep in `bad` only the readings whose reference moved enough since their run began;
        `moved`: those whose reference moved by `ONSET_SHARE` of that. Only the readings
        `asked` about are read (the others' runs cannot be stuck and are not carried on).

        All cross-checked series at once: each series' reference (same vehicle) is laid out
        beside it; its measure is the value (`change`) or the integral from its first reading
        in the batch, 0 there, and 0 before it (unknown for `change`). `run_ref0` gets the
        measure where each run began (at the reference's first reading from its start; a run
        from history: where it left off, an integral from the reference's first reading
        since the run's last one, and a run of one at the first reading from its start as
        well); `ref_next` where the next batch measures each series' last
        run from (relative to its own first reading, for an integral).
        """
        p = self.p
        kc = k[checked]
        veh = rows.vehicle[sub[first[checked]]]
        integral = p.measure[kc] != 0
        want = (veh.astype(np.int64) << self.signal_bits) | p.ref_sig[kc]
        lo = np.searchsorted(rows.gkey, want, side="left")  # the reference's rows, if any
        glen = np.searchsorted(rows.gkey, want, side="right") - lo
        ref_rows = ranges(lo, glen)
        owner = np.repeat(np.arange(checked.size), glen)
        live = rows.code[ref_rows] == 0  # as they arrived: the stage writes its codes last
        ref_rows, owner = ref_rows[live], owner[live]
        m_first = np.where(integral, 0.0, np.nan)
        m_last = m_first.copy()
        # the held readings asked about (positions in `sub`), with their series in `checked`
        owner_of = np.full(first.size, -1, dtype=np.int64)
        owner_of[checked] = np.arange(checked.size)
        row_owner = np.repeat(owner_of, count)
        at = np.flatnonzero(asked & (row_owner >= 0))
        q_owner = row_owner[at]
        now = np.where(integral[q_owner], 0.0, np.nan)
        if ref_rows.size:
            rt, rv = rows.t[ref_rows], rows.value[ref_rows]
            kind = p.measure[kc][owner]
            new = starts_of(owner)
            o_first = np.flatnonzero(new)
            o_count = np.diff(np.append(o_first, owner.size))
            dt = np.zeros(rt.size, dtype=np.int64)
            dt[1:] = np.diff(rt)
            dt[new | (dt > p.max_gap_ms[kc][owner])] = 0
            inc = np.where(kind == 2, np.abs(rv), rv) * (dt / 1000.0)
            run = np.cumsum(inc)
            measure = np.where(kind == 0, rv, run - np.repeat(run[o_first], o_count))
            m_first[owner[o_first]] = measure[o_first]
            m_last[owner[o_first]] = measure[o_first + o_count - 1]
            tq = t[at]
            t_lo = min(int(rt.min()), int(tq.min())) if tq.size else int(rt.min())
            span = (max(int(rt.max()), int(tq.max())) if tq.size else int(rt.max())) - t_lo + 2
            span = min(span, 2**62 // max(checked.size, 1))  # times too far apart: clipped
            rkey = owner * span + np.minimum(rt - t_lo, span - 1)
            pos = np.searchsorted(rkey, q_owner * span + np.minimum(tq - t_lo, span - 1), side="right") - 1
            ok = pos >= 0
            ok[ok] = owner[pos[ok]] == q_owner[ok]
            # a `change` is read from the reference's readings since the run began
            ok[ok] &= (rt[pos[ok]] >= start_t[at][ok]) | integral[q_owner[ok]]
            now[ok] = measure[pos[ok]]
            # where a run begins, the reference is read at its first reading from then on
            # (the one before may predate the held value: a car still rolling as it stops);
            # without one in the batch, a `change` is measured from the next batch's first
            begin = np.where(integral[q_owner], now, np.nan)
            ok[ok] = rt[pos[ok]] == tq[ok]  # a reference reading at the very time
            begin[ok] = now[ok]
            nxt = pos + 1
            later = ~ok & (nxt < rkey.size)
            later[later] = owner[nxt[later]] == q_owner[later]
            begin[later] = measure[nxt[later]]
        else:
            begin = now.copy()
        starts = new_run[at]
        run_ref0[run_of[at[starts]]] = begin[starts]
        cont = np.flatnonzero(go_on[checked])
        stored = state.stuck_ref0[slot[checked[cont]], kc[cont]]
        # A run of one in history (NaN) is measured from its start, and an integral goes on
        # from the last reading the run had: both at the reference's first reading from
        # then on, so that readings of late frames from before add nothing.
        unknown = np.isnan(stored)
        anchored = unknown | integral[cont]
        if ref_rows.size and anchored.any():
            q = cont[anchored]
            since = np.where(unknown[anchored], state.stuck_start[slot[checked[q]], kc[q]],
                             state.stuck_t[slot[checked[q]], kc[q]])
            nxt = np.searchsorted(rkey, q * span + np.clip(since - t_lo, 0, span - 1), side="left")
            found = nxt < rkey.size
            found[found] = owner[nxt[found]] == q[found]
            there = np.where(integral[q], m_last[q], np.nan)
            there[found] = measure[nxt[found]]
            stored[anchored] = np.where(unknown[anchored], there, stored[anchored] + there)
        else:
            stored[unknown] = m_first[cont[unknown]]
        run_ref0[first_run[checked[cont]]] = stored
        with np.errstate(invalid="ignore"):
            change = np.abs(now - run_ref0[run_of[at]])
            threshold = p.min_reference[kc][q_owner]
            bad[at] &= change >= threshold
            moved[at] = change >= ONSET_SHARE * threshold
        end = run_ref0[run_of[first[checked] + count[checked] - 1]]
        ref_next[checked] = np.where(integral, end - m_last, end)
