"""What a handler sees: its input columns (`HandlerInput`) and its context (`HandlerContext`).

A `BatchView` is built once per batch and shared by all handlers, so selecting a signal,
pairing GPS fixes or finding a vehicle's records is done once, not once per handler.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from pipeline.batch import EventBatch, RawRecord, Readings
from pipeline.errors import HandlerError
from pipeline.handlers import ops
from pipeline.handlers.config import Zone
from pipeline.handlers.registry import HandlerSpec, emitted_field_errors, handler_source
from pipeline.handlers.state import StateView

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
        self._origin: IntArray | None = None
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
        if self._origin is None:
            c = self.clean
            if len(c.frames) and len(c):
                self._origin = c.frames.record[c.frame].astype(np.int64)
            else:
                self._origin = c.frame.astype(np.int64) if len(c) else np.empty(0, np.int64)
        return self._origin

    def _record_of(self, rows: IntArray) -> IntArray:
        c = self.clean
        if self._origin is not None:
            return self._origin[rows]
        if len(c.frames):
            return c.frames.record[c.frame[rows]].astype(np.int64)
        return c.frame[rows].astype(np.int64)

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
                    self._origin = None
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


_SIGNALS: dict[int, tuple[HandlerSpec, tuple[str, ...], frozenset[str]]] = {}


def _signals_of(spec: HandlerSpec) -> tuple[tuple[str, ...], frozenset[str]]:
    """`spec.all_signals()` and that as a set, worked out once per spec rather than per call."""
    hit = _SIGNALS.get(id(spec))
    if hit is None or hit[0] is not spec:
        if len(_SIGNALS) > 1024:  # specs of reloaded handlers: start over rather than grow
            _SIGNALS.clear()
        names = spec.all_signals()
        hit = _SIGNALS[id(spec)] = (spec, names, frozenset(names))
    return hit[1], hit[2]


class HandlerInput:
    """A handler's input: the clean readings of the signals it consumes, and consumed events."""

    def __init__(self, view: BatchView, spec: HandlerSpec, events: EventBatch | None = None) -> None:
        self._view = view
        self.spec = spec
        self._signals, self._allowed = _signals_of(spec)
        self._events = events
        self._readings: Readings | None = None

    @property
    def events(self) -> EventBatch:
        """The consumed events of this batch (emitted by handlers that ran before this one)."""
        if self._events is None:
            self._events = EventBatch.empty()  # made only for handlers that look
        return self._events

    @events.setter
    def events(self, events: EventBatch) -> None:
        self._events = events

    @property
    def vins(self) -> list[str]:
        return self._view.vins

    @property
    def records(self) -> list[RawRecord]:
        return self._view.records

    @property
    def watermark(self) -> IntArray | None:
        """Per vehicle index (into `vins`): the event time (epoch ms) up to which both ingest
        topics of the vehicle's partition have been delivered, sensor and GPS alike; None
        when unknown (unit tests, a runtime that does not align the topics)."""
        return self._view.watermark

    @property
    def silent(self) -> IntArray:
        """Sorted indexes (into `vins`) of vehicles that sent nothing for the worker's idle
        timeout; they have no readings in this batch. Empty in ordinary batches."""
        return self._view.silent

    @property
    def readings(self) -> Readings:
        """Clean readings of the consumed signals, in (vehicle, signal, t) order."""
        if self._readings is None:
            parts = [self._view.rows(n) for n in self._signals]
            rows = np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)
            self._readings = self._view.clean.take(rows)
        return self._readings

    @property
    def origin(self) -> IntArray:
        """Record index of every row of `readings` (Readings.frame -> Frames.record)."""
        r = self.readings
        if len(r.frames) and len(r):
            return r.frames.record[r.frame].astype(np.int64)
        return r.frame.astype(np.int64)

    def input_records(self) -> IntArray:
        """Distinct record indexes this handler reads from (its readings and events, and for a
        stateful handler the last frames of silent vehicles)."""
        parts = [self._view.series(n).record for n in self._signals]
        if self._events is not None and len(self._events):
            parts.append(self._events.origin)
        if self.spec.state and len(self._view.silent):
            fr = self.first_record(self._view.silent)
            parts.append(fr[fr >= 0])
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)

    def rows_in(self) -> int:
        rows = self._view.rows
        return sum(len(rows(n)) for n in self._signals) + (len(self._events) if self._events is not None else 0)

    def _check(self, name: str) -> None:
        if name not in self._allowed:
            raise HandlerError(f"handler {self.spec.name} reads {name!r}, which it does not consume")

    def has(self, name: str) -> bool:
        """True when the batch holds readings of this (consumed or optional) signal."""
        self._check(name)
        return self._view.has(name)

    def vehicles(self, *names: str) -> IntArray:
        """Sorted distinct vehicle indexes with readings of any of these signals (for state look-ups)."""
        for n in names:
            self._check(n)
        parts = [self._view.vehicles_of(n) for n in names]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return np.empty(0, np.int64)
        seen = np.zeros(len(self._view.vins), dtype=bool)
        for p in parts:
            seen[p] = True
        return np.flatnonzero(seen)

    def signal(self, name: str) -> SignalSeries:
        """(vehicle, t, v) of one consumed signal, sorted by (vehicle, t); empty if absent."""
        self._check(name)
        return self._view.series(name)

    def positions(self) -> Positions:
        """Paired GPS fixes of the batch (the handler must consume latitude and longitude)."""
        self._check(LAT)
        self._check(LON)
        return self._view.positions()

    def nearest(self, name: str, vehicle: npt.ArrayLike, t: npt.ArrayLike,
                *, max_dist_ms: int | None = None) -> FloatArray:
        """Value of a signal nearest in time to each (vehicle, t); NaN where none."""
        s = self.signal(name)
        v = self._view
        return ops.take_or_nan(s.v, ops.nearest_index(s.vehicle, s.t, vehicle, t, max_dist_ms=max_dist_ms,
                                                      space=v.space, skeys=v.keys(name)))

    def asof(self, name: str, vehicle: npt.ArrayLike, t: npt.ArrayLike,
             *, max_age_ms: int | None = None) -> FloatArray:
        """Last value of a signal at or before each (vehicle, t); NaN where none."""
        s = self.signal(name)
        v = self._view
        return ops.take_or_nan(s.v, ops.asof_index(s.vehicle, s.t, vehicle, t, max_age_ms=max_age_ms,
                                                   space=v.space, skeys=v.keys(name)))

    def location(self, vehicle: npt.ArrayLike, t: npt.ArrayLike,
                 *, max_dist_ms: int = 30_000) -> tuple[FloatArray, FloatArray]:
        """(lat, lon) of the fix nearest each (vehicle, t), NaN where none is close enough."""
        if LAT not in self._allowed or LON not in self._allowed:
            n = np.asarray(t).shape[0]
            return np.full(n, np.nan), np.full(n, np.nan)
        p = self._view.positions()
        j = self._view.nearest_fix(vehicle, t, max_dist_ms)
        return ops.take_or_nan(p.lat, j), ops.take_or_nan(p.lon, j)

    def nearest_fix(self, vehicle: npt.ArrayLike, t: npt.ArrayLike, *, max_dist_ms: int = 30_000) -> IntArray:
        """Index into `positions()` of the fix nearest each (vehicle, t) (what `location` reads),
        -1 where none is close enough."""
        self._check(LAT)
        self._check(LON)
        return self._view.nearest_fix(vehicle, t, max_dist_ms)

    def fix_zones(self, zones: Sequence[Zone]) -> IntArray:
        """Per fix of `positions()`: bit i set when it is inside zones[i]. Computed once per batch
        and zone list, so handlers testing the same zones share the work."""
        self._check(LAT)
        self._check(LON)
        return self._view.fix_zones(zones)

    @property
    def space(self) -> ops.KeySpace:
        """The batch's (vehicle, t) key space, for `ops` joins with cached keys."""
        return self._view.space

    def keys(self, name: str) -> IntArray:
        """Cached keys of a consumed signal's readings ("@positions" for GPS fixes) in `space`."""
        if name != "@positions":
            self._check(name)
        return self._view.keys(name)

    def first_record(self, vehicle: npt.ArrayLike) -> IntArray:
        """Earliest record of each vehicle in this batch: the origin of events that only
        close something an earlier batch opened."""
        fr = self._view.first_record()
        return fr[np.asarray(vehicle, dtype=np.int64)] if fr.shape[0] else np.empty(0, np.int64)

    def event_vehicle(self) -> IntArray:
        """Vehicle index (into `vins`) of each consumed event, -1 for events of unknown VINs."""
        if self._events is None or not len(self._events):
            return np.empty(0, np.int64)
        subj = self._events.attrs.get("subject")
        if subj is None:
            return np.empty(0, np.int64)
        idx = self._view.vin_index
        return np.fromiter((idx.get(s, -1) for s in subj.tolist()), dtype=np.int64, count=len(subj))


class HandlerMetrics(Counter[str]):
    """Custom counters of one handler (`ctx.metrics.inc("zones_checked", n)`), merged into stats."""

    def inc(self, name: str, n: int = 1) -> None:
        self[name] += int(n)


class HandlerContext:
    """A handler's context: emit events as columns, its per-vehicle state, config, log, metrics."""

    def __init__(self, spec: HandlerSpec, view: BatchView, *, config: Mapping[str, Any],
                 zones: Sequence[Zone] = (), state: StateView | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.config: dict[str, Any] = dict(config)
        self.zones: tuple[Zone, ...] = tuple(zones)
        self._state = state
        self._view = view
        self.logger = logging.getLogger(f"pipeline.handler.{spec.name}")
        self.metrics = HandlerMetrics()
        self._emitted: list[EventBatch] = []
        self.source = handler_source(spec.name)

    @property
    def state(self) -> StateView:
        """Per-vehicle state (declare `state=True`); writes apply only if the call succeeds."""
        if self._state is None:
            raise HandlerError(f"handler {self.name} uses state but is declared with state=False")
        return self._state

    @property
    def vins(self) -> list[str]:
        return self._view.vins

    def vin(self, vehicle: npt.ArrayLike) -> npt.NDArray[np.object_]:
        """VIN strings of vehicle indexes."""
        return self._view.vins_array[np.asarray(vehicle, dtype=np.int64)]

    def states(self, vehicles: npt.ArrayLike) -> dict[int, dict[str, Any]]:
        """Stored state of each distinct vehicle index given (vehicles without state left out).

        Pass `batch.vehicles(...)` (already distinct) rather than a per-reading column."""
        v = np.asarray(vehicles, dtype=np.int64)
        if not v.shape[0]:
            return {}
        if v.shape[0] > 1 and not (np.diff(v) > 0).all():
            v = np.flatnonzero(np.bincount(v, minlength=len(self._view.vins)))
        sv = self.state
        n_known = sv.count_hint()
        if not n_known:
            return {}
        vins = self._view.vins
        if n_known < v.shape[0]:
            # few vehicles have state: look up only those among the ones asked for
            wanted = np.zeros(len(vins), dtype=bool)
            wanted[v] = True
            index = self._view.vin_index
            hits = {i for vin in sv.known_vins() if (i := index.get(vin)) is not None and wanted[i]}
            vs = sorted(hits)
        else:
            vs = v.tolist()
        got = sv.get_many([vins[i] for i in vs])
        return {i: s for i, s in zip(vs, got, strict=True) if s is not None}

    def save_states(self, updates: Mapping[int, Mapping[str, Any] | None], *, plain: bool = False) -> None:
        """Write state by vehicle index; None or an empty dict deletes it.

        `plain=True`: the values are already plain (see `StateView.put_many`) and are kept as given."""
        vins = self._view.vins
        self.state.put_many({vins[v]: (value if value else None) for v, value in updates.items()}, plain=plain)

    def emit(self, type: str, *, time: npt.ArrayLike, origin: npt.ArrayLike,
             vehicle: npt.ArrayLike | None = None, subject: npt.ArrayLike | None = None,
             data: Mapping[str, npt.ArrayLike] | None = None,
             present: Mapping[str, npt.ArrayLike] | None = None) -> int:
        """Emit events of one type as columns; returns how many.

        `vehicle` (indexes into `vins`) sets subject, partition key and `data.vin`;
        `subject` is for events about something else (a grid cell). Float data that is
        NaN is treated as absent in that row. Ids are assigned by the runner from origin.
        """
        if type not in self.spec.emits:
            raise HandlerError(f"handler {self.name} emitted {type!r}, not in its emits "
                               f"{list(self.spec.emits)}")
        t = np.atleast_1d(np.asarray(time, dtype=np.int64))
        n = t.shape[0]
        if n == 0:
            return 0
        org = np.broadcast_to(np.asarray(origin, dtype=np.int64), (n,)).copy()
        cols: dict[str, np.ndarray] = {}
        masks: dict[str, np.ndarray] = {}
        for key, value in (data or {}).items():
            arr = np.asarray(value)
            if arr.ndim == 0:
                arr = np.full(n, arr.item(), dtype=arr.dtype if arr.dtype != np.str_ else object)
            if arr.dtype.kind == "U":
                arr = arr.astype(object)
            cols[key] = arr
            if arr.dtype.kind == "f":
                nan = np.isnan(arr)
                if nan.any():
                    masks[key] = ~nan
        for key, mask in (present or {}).items():
            m = np.asarray(mask, dtype=bool)
            masks[key] = masks[key] & m if key in masks else m
        if vehicle is not None:
            vins = self.vin(np.broadcast_to(np.asarray(vehicle, dtype=np.int64), (n,)))
            cols = {"vin": vins, **cols}
            subj = vins
        elif subject is not None:
            subj = np.broadcast_to(np.asarray(subject, dtype=object), (n,)).copy()
        else:
            raise HandlerError(f"handler {self.name}: emit needs vehicle= or subject=")
        wrong = emitted_field_errors(self.spec, type, cols, masks)
        if wrong:
            raise HandlerError(f"handler {self.name} emitted {type} against its declaration: "
                               + "; ".join(wrong))
        batch = EventBatch.build(type=type, source=self.source, vin=subj, time=t, origin=org,
                                 ids=np.full(n, "", dtype=object), data=cols, present=masks)
        self._emitted.append(batch)
        return n

    def collected(self) -> EventBatch:
        return EventBatch.concat(self._emitted)
