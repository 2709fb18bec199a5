"""What a handler sees: its input columns (`HandlerInput`) and its context (`HandlerContext`),
both over the batch's shared `BatchView` (see `pipeline.core.handlers.view`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from pipeline.core.batch import EventBatch, RawRecord, Readings
from pipeline.core.errors import HandlerError
from pipeline.core.handlers import ops
from pipeline.core.handlers.config import Zone
from pipeline.core.handlers.registry import HandlerSpec, emitted_field_errors, handler_source
from pipeline.core.handlers.state import StateView
from pipeline.core.handlers.view import (
    LAT,
    LON,
    BatchView,
    FloatArray,
    IntArray,
    Positions,
    SignalSeries,
)

_T = TypeVar("_T")
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
