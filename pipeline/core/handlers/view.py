"""The batch as handlers see it, built once per batch and shared by all of them: a signal's
series (`SignalSeries`), paired GPS fixes (`Positions`), and the `BatchView` that selects
them and finds a vehicle's records, so that work is done once, not once per handler."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from pipeline.core.batch import RawRecord, Readings
from pipeline.core.handlers import ops
from pipeline.core.handlers.config import Zone

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
_T = TypeVar("_T")
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
POSITION_PAIR_MS = 1000  # a latitude and a longitude this close in time form one fix


class SignalSeries:
    """One signal's readings sorted by (vehicle, t); unpacks as `vehicle, t, v = series`.

    `record` (index into the batch's records, for event origins) is computed on first use.
    """

    __slots__ = ("vehicle", "t", "v", "_record", "_record_fn", "_rows", "_record_of")

    def __init__(self, vehicle: IntArray, t: IntArray, v: FloatArray, record: IntArray | None = None,
                 record_fn: Callable[[], IntArray] | None = None, *, rows: IntArray | None = None,
                 record_of: Callable[[IntArray], IntArray] | None = None) -> None:
        self.vehicle = vehicle  # index into HandlerInput.vins
        self.t = t  # epoch ms
        self.v = v  # canonical unit
        self._record = record
        self._record_fn = record_fn
        self._rows = rows  # batch rows of this series, with record_of: records looked up on demand
        self._record_of = record_of

    @property
    def record(self) -> IntArray:
        if self._record is None:
            if self._record_of is not None and self._rows is not None:
                self._record = self._record_of(self._rows)
            else:
                self._record = self._record_fn() if self._record_fn is not None else np.empty(0, np.int64)
        return self._record

    def record_at(self, index: npt.ArrayLike) -> IntArray:
        """`record[index]`, looking up only those rows (events need the records of a few)."""
        idx = np.asarray(index)
        if idx.dtype.kind not in "bi":
            idx = idx.astype(np.int64)
        if self._record is None and self._record_of is not None and self._rows is not None:
            return self._record_of(self._rows[idx])
        return self.record[idx]

    def __iter__(self) -> Any:
        return iter((self.vehicle, self.t, self.v))

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @staticmethod
    def empty() -> SignalSeries:
        e = np.empty(0, np.int64)
        return SignalSeries(e, e, np.empty(0), e)


@dataclass(frozen=True, slots=True)
class Positions:
    """GPS fixes (latitude and longitude paired by time), sorted by (vehicle, t)."""

    vehicle: IntArray
    t: IntArray
    lat: FloatArray
    lon: FloatArray
    record: IntArray

    def __len__(self) -> int:
        return int(self.t.shape[0])


class _RecordOf:
    """Record index of batch rows (clean reading -> frame -> record), for a view's series.

    Not a bound method of the view: a series holding one would form a cycle with the view's
    cache, and every batch's records (and their headers) would then wait for the garbage
    collector, which freed tens of thousands at once in 50-200 ms pauses of the worker."""

    __slots__ = ("clean", "origin")

    def __init__(self, clean: Readings) -> None:
        self.clean = clean
        self.origin: IntArray | None = None  # every row's record, once a handler asked for all

    def __call__(self, rows: IntArray) -> IntArray:
        if self.origin is not None:
            return self.origin[rows]
        c = self.clean
        if len(c.frames):
            return c.frames.record[c.frame[rows]].astype(np.int64)
        return c.frame[rows].astype(np.int64)


class BatchView:
    """Per-batch caches over the clean readings, shared by every handler of the batch."""

    def __init__(self, clean: Readings, records: Sequence[RawRecord], wanted: Iterable[str] = (), *,
                 watermark: IntArray | None = None, silent: IntArray | None = None) -> None:
        self.clean = clean
        self.watermark = watermark  # per vehicle index, event time both ingest topics reached; None: unknown
        self.silent = silent if silent is not None else np.empty(0, np.int64)  # sorted vehicle indexes
        self._wanted = frozenset(wanted)  # signals selected together on first use
        self.records = list(records)
        self.vins = list(clean.vins)
        self.vin_index = {v: i for i, v in enumerate(self.vins)}
        self._sid = {n: i for i, n in enumerate(clean.signal_names)}
        self._record_of = _RecordOf(clean)
        self._blocks: tuple[IntArray, IntArray, IntArray] | None = None
        self._block_vehicle: IntArray = np.empty(0, np.int64)  # vehicle of each block
        self._rows: dict[str, IntArray] = {}
        self._keys: dict[str, IntArray] = {}
        self._space: ops.KeySpace | None = None
        self._series: dict[str, SignalSeries] = {}
        self._positions: Positions | None = None
        self._first_record: IntArray | None = None
        self._vins_arr: npt.NDArray[np.object_] | None = None
        self._vehicles: dict[str, IntArray] = {}
        self._fix_zones: dict[tuple[Zone, ...], IntArray] = {}

    @property
    def vins_array(self) -> npt.NDArray[np.object_]:
        if self._vins_arr is None:
            self._vins_arr = np.asarray(self.vins, dtype=object)
        return self._vins_arr

    def has(self, name: str) -> bool:
        return len(self.rows(name)) > 0

    @property
    def origin(self) -> IntArray:
        """Record index of every clean reading (Readings.frame -> Frames.record)."""
        lookup = self._record_of
        if lookup.origin is None:
            c = self.clean
            if len(c.frames) and len(c):
                lookup.origin = c.frames.record[c.frame].astype(np.int64)
            else:
                lookup.origin = c.frame.astype(np.int64) if len(c) else np.empty(0, np.int64)
        return lookup.origin

    @property
    def space(self) -> ops.KeySpace:
        """One (vehicle, t) key space for every join in this batch."""
        if self._space is None:
            t = self.clean.t
            self._space = ops.KeySpace.covering(int(t.min()), int(t.max())) if len(t) else ops.KeySpace()
        return self._space

    def keys(self, name: str) -> IntArray:
        """(vehicle, t) keys of a signal's readings (or "@positions") in `space`, cached."""
        k = self._keys.get(name)
        if k is None:
            if name == "@positions":
                p = self.positions()
                k = self.space.key(p.vehicle, p.t)
            else:
                s = self.series(name)
                k = self.space.key(s.vehicle, s.t)
            self._keys[name] = k
        return k

    def vehicles_of(self, name: str) -> IntArray:
        """Sorted distinct vehicle indexes that have readings of a signal in this batch."""
        return self._selected(self._vehicles, name)

    def blocks(self) -> tuple[IntArray, IntArray, IntArray]:
        """(start, end, signal) of every (vehicle, signal) block.

        Clean readings come sorted by (vehicle, signal, t) (the cleaning stage's contract)
        with the block starts attached. Readings without them are scanned once, their order
        checked, and readings in any other order are sorted here first.
        """
        if self._blocks is None:
            c = self.clean
            v, sig, t = c.vehicle, c.signal, c.t
            n = v.shape[0]
            if not n:
                e = np.empty(0, np.int64)
                self._blocks, self._block_vehicle = (e, e, e), e
                return self._blocks
            if c.blocks is not None:
                starts = c.blocks.astype(np.int64, copy=False)
            else:
                new_block = v[1:] != v[:-1]
                new_block |= sig[1:] != sig[:-1]
                # time may only fall where a new block starts
                back = t[1:] < t[:-1]
                ordered = not np.greater(back, new_block, out=back).any()
                change = np.flatnonzero(new_block)
                starts = np.empty(change.shape[0] + 1, np.int64)
                starts[0] = 0
                np.add(change, 1, out=starts[1:])
                if ordered and starts.shape[0] > 1:
                    # each (vehicle, signal) pair is one block: the pairs strictly increase
                    bv, bs = v[starts].astype(np.int64), sig[starts].astype(np.int64)
                    lo = int(bs.min())
                    key = bv * (int(bs.max()) - lo + 1) + (bs - lo)
                    ordered = bool((key[1:] > key[:-1]).all())
                if not ordered:
                    self.clean = c.take(np.lexsort((t, sig, v)))
                    self._record_of = _RecordOf(self.clean)
                    return self.blocks()
            ends = np.empty_like(starts)
            ends[:-1] = starts[1:]
            ends[-1] = n
            self._blocks = (starts, ends, sig[starts].astype(np.int64))
            self._block_vehicle = v[starts].astype(np.int64)
        return self._blocks

    def rows(self, name: str) -> IntArray:
        """Row indexes of one signal in (vehicle, t) order."""
        return self._selected(self._rows, name)

    def series(self, name: str) -> SignalSeries:
        return self._selected(self._series, name)

    def _selected(self, cache: dict[str, _T], name: str) -> _T:
        """One signal's entry of a per-signal cache, selecting the signal on first use."""
        out = cache.get(name)
        if out is None:
            self._select([name])
            out = cache[name]
        return out

    def _select(self, names: Iterable[str]) -> None:
        """Rows, series and vehicles of signals not selected yet. The first call also takes
        every wanted signal, so the batch's columns are gathered once for all of them, each
        signal's arrays a slice of that gather."""
        todo = {n for n in (*names, *self._wanted) if n not in self._series}
        self._wanted = frozenset()
        sids = {self._sid[n]: n for n in todo if n in self._sid}
        empty = np.empty(0, np.int64)
        missing = [n for n in todo if n not in self._sid]
        if sids and len(self.clean):
            missing += self._gather(sids)
        else:
            missing += list(sids.values())
        for n in missing:  # signals without readings in this batch
            self._rows[n] = empty
            self._series[n] = SignalSeries.empty()
            self._vehicles[n] = empty

    def _gather(self, sids: dict[int, str]) -> list[str]:
        """Gather the readings of the given signals (by signal index); returns the names without any."""
        starts, ends, bsig = self.blocks()
        c = self.clean  # after blocks(), which may have put it in order
        if len(sids) == 1:
            sel = np.flatnonzero(bsig == next(iter(sids)))
        else:
            lut = np.zeros(max(len(self._sid), int(bsig.max()) + 1), dtype=bool)
            lut[list(sids)] = True
            sel = np.flatnonzero(lut[bsig])
            # blocks of one signal keep their (vehicle) order; signals follow one another
            sel = sel[np.argsort(bsig[sel], kind="stable")]
        if not sel.shape[0]:
            return list(sids.values())
        bstart = starts[sel]
        lengths = ends[sel] - bstart
        before = np.cumsum(lengths)
        total = int(before[-1])
        before -= lengths  # rows of the selected blocks before each block
        # row of each selected reading: its block's start plus its place within the block
        rows_all = np.repeat(bstart - before, lengths)
        rows_all += np.arange(total)
        bveh = self._block_vehicle[sel]
        vehicle_all = np.repeat(bveh, lengths)
        t_all, v_all = c.t[rows_all], c.value[rows_all]
        # each signal's blocks and rows: a slice of the selection
        order = sorted(sids)
        b_at = np.searchsorted(bsig[sel], order + [order[-1] + 1]).tolist()
        r_at = [*before.tolist(), total]
        missing = []
        for k, sid in enumerate(order):
            name, b0, b1 = sids[sid], b_at[k], b_at[k + 1]
            if b0 == b1:
                missing.append(name)
                continue
            part = slice(r_at[b0], r_at[b1])
            rows = rows_all[part]
            self._rows[name] = rows
            self._series[name] = SignalSeries(vehicle_all[part], t_all[part], v_all[part], rows=rows,
                                              record_of=self._record_of)
            self._vehicles[name] = bveh[b0:b1]
        return missing

    def positions(self) -> Positions:
        """Fixes: each latitude paired with the longitude nearest in time (within 1 s)."""
        if self._positions is None:
            lat, lon = self.series(LAT), self.series(LON)
            if not len(lat) or not len(lon):
                e = np.empty(0, np.int64)
                self._positions = Positions(e, e, np.empty(0), np.empty(0), e)
            elif len(lat) == len(lon) and np.array_equal(lat.t, lon.t) and np.array_equal(lat.vehicle, lon.vehicle):
                self._positions = Positions(lat.vehicle, lat.t, lat.v, lon.v, lat.record)
            else:
                j = ops.nearest_index(lon.vehicle, lon.t, lat.vehicle, lat.t, max_dist_ms=POSITION_PAIR_MS)
                ok = j >= 0
                self._positions = Positions(lat.vehicle[ok], lat.t[ok], lat.v[ok], lon.v[j[ok]], lat.record[ok])
        return self._positions

    def nearest_fix(self, vehicle: npt.ArrayLike, t: npt.ArrayLike, max_dist_ms: int | None) -> IntArray:
        """Index into `positions()` of the fix nearest each (vehicle, t), -1 where none is close enough."""
        p = self.positions()
        return ops.nearest_index(p.vehicle, p.t, vehicle, t, max_dist_ms=max_dist_ms, space=self.space,
                                 skeys=self.keys("@positions"))

    def fix_zones(self, zones: Sequence[Zone]) -> IntArray:
        """Per fix of `positions()`: bit i set when the fix is inside zones[i] (cached per zone list)."""
        key = tuple(zones)
        mask = self._fix_zones.get(key)
        if mask is None:
            p = self.positions()
            mask = np.zeros(len(p), dtype=np.int64)
            for i, z in enumerate(key):
                mask |= z.contains(p.lat, p.lon).astype(np.int64) << i
            self._fix_zones[key] = mask
        return mask

    def first_record(self) -> IntArray:
        """Per vehicle index: the earliest record index among its readings; for a vehicle
        without readings, among its frames (a silent vehicle's last frame); -1 if none."""
        if self._first_record is None:
            out = np.full(len(self.vins), np.iinfo(np.int64).max, dtype=np.int64)
            if len(self.clean):
                # the earliest record of a vehicle holds the first reading of one of its
                # (vehicle, signal) blocks, so the blocks' first rows are enough
                starts, _, _ = self.blocks()
                bveh = self._block_vehicle  # ascending: the blocks of a vehicle are adjacent
                first = np.flatnonzero(ops.first_of_group(bveh))
                out[bveh[first]] = np.minimum.reduceat(self._record_of(starts), first)
            none = out == np.iinfo(np.int64).max
            f = self.clean.frames
            if none.any() and len(f):
                by_frame = np.full(len(self.vins), np.iinfo(np.int64).max, dtype=np.int64)
                np.minimum.at(by_frame, f.vehicle.astype(np.int64), f.record.astype(np.int64))
                out[none] = by_frame[none]
                none = out == np.iinfo(np.int64).max
            self._first_record = np.where(none, -1, out)
        return self._first_record
