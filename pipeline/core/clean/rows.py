"""The batch as the group-wise checks see it: every row sorted by (vehicle, signal, t).

`SortedRows` keeps dead rows in place (their `code` is their dropped reason), so that a
check reads its neighbours as they arrived; `sort_rows` builds it with one stable sort.
Also the small helpers several checks share (`alive_rows_of`, `join_by_time`,
`frame_fingerprint`) and the optional per-check timer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.core.batch import BoolArray, CodeArray, FloatArray, IntArray, Readings
from pipeline.core.clean.groups import ranges, starts_of


def frame_fingerprint(seq: IntArray, sent_at: IntArray) -> IntArray:
    """A 64-bit fingerprint of a frame (seq, sent_at): a resend carries the same pair."""
    with np.errstate(over="ignore"):
        return (sent_at.astype(np.int64) * np.int64(1_000_003)) ^ seq.astype(np.int64)


class StageClock:
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
class SortedRows:
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


def sort_rows(readings: Readings, t: IntArray, csig: npt.NDArray[np.int32], value: FloatArray,
              code: CodeArray, vehicle_slot: IntArray, signal_bits: int) -> SortedRows:
    """One stable sort of every row by (vehicle, signal, t): arrival order breaks ties."""
    veh = readings.vehicle
    n = t.size
    s_bits = signal_bits
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
    return SortedRows(
        order=order, vehicle=sv, signal=ss, t=t[order], value=value[order], code=code[order],
        repaired=np.zeros(n, dtype=bool), gkey=gkey, new=new, gstart=gstart, glen=glen,
        gsig=ss[gstart], gslot=vehicle_slot[sv[gstart]], vslot=vehicle_slot)


def alive_rows_of(rows: SortedRows, sig: int) -> IntArray:
    """Sorted positions of the alive rows of one signal (all vehicles)."""
    return rows.alive(rows.rows_of(np.flatnonzero(rows.gsig == sig)))


def join_by_time(vehicle: npt.NDArray[np.int32], t: IntArray, a: IntArray, b: IntArray) -> tuple[IntArray, IntArray]:
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
