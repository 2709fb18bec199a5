"""Columnar batches: the shapes the pure core passes between its stages.

A batch of Kafka records is decoded into `Readings` (struct of arrays: one row per
reading, dictionary-encoded vehicles, signals and units). Cleaning returns `Readings`
again, indexed by the signal catalog. Handlers emit `EventBatch`es (struct of arrays of
CloudEvents, one row per event) that the rules route. Rows only become individual
CloudEvents at the edge, when they are written to Kafka or the object store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
Int32Array = npt.NDArray[np.int32]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
CodeArray = npt.NDArray[np.int8]  # outcome codes (cleaning's reasons)
ObjArray = npt.NDArray[np.object_]


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kafka record as consumed: the unit of offsets, dead letters and replays."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = 0

    @property
    def where(self) -> str:
        """`topic[partition]@offset`, the form logs and errors use."""
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def without_payload(self) -> RawRecord:
        """The same record without value and headers: where it was and when (what the output
        plan and idle signals need of it)."""
        return RawRecord(self.topic, self.partition, self.offset, self.key, None, (), self.timestamp_ms)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickled as a plain tuple: batches cross to the decoder and encoder processes, and
        # the dataclass default (a field list per record) cost three times as much there.
        return (RawRecord, (self.topic, self.partition, self.offset, self.key, self.value, self.headers,
                            self.timestamp_ms))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record (or the part of it) that could not be processed, and why.

    `stage` is where it failed (`decode`, `clean`, `handler:<name>`, `route:<name>`,
    `sink`); `reason` is a short stable code used in metrics; `error` is human detail.
    """

    record: RawRecord
    stage: str
    reason: str
    error: str
    detail: Mapping[str, Any] = field(default_factory=dict)


def _empty(dtype: Any) -> np.ndarray:
    return np.empty(0, dtype=dtype)


@dataclass(slots=True)
class Frames:
    """One row per decoded frame; readings point here with `Readings.frame`."""

    record: IntArray  # index into the batch's list of RawRecords
    vehicle: Int32Array  # index into Readings.vins
    seq: IntArray
    sent_at: IntArray  # epoch ms, the vehicle's clock at upload
    received_at: IntArray  # epoch ms, the Kafka record timestamp (ingest time)
    n_readings: IntArray

    @classmethod
    def empty(cls) -> Frames:
        return cls(_empty(np.int64), _empty(np.int32), _empty(np.int64), _empty(np.int64),
                   _empty(np.int64), _empty(np.int64))

    def __len__(self) -> int:
        return int(self.record.shape[0])


@dataclass(slots=True)
class Readings:
    """Readings as columns: row i is (vehicle, signal, unit, t, value) from frame `frame[i]`.

    `vehicle`, `signal` and `unit` are indexes into the dictionaries `vins`,
    `signal_names` and `unit_names`. Unit index 0 is always "" (the catalog's canonical
    unit, which is what a sample without a unit means). After cleaning, `signal_names` is
    the catalog's list of names, so a signal index is stable across batches.
    """

    vehicle: Int32Array
    signal: Int32Array
    unit: npt.NDArray[np.int16]
    t: IntArray
    value: FloatArray
    frame: Int32Array
    vins: list[str]
    signal_names: list[str]
    unit_names: list[str] = field(default_factory=lambda: [""])
    frames: Frames = field(default_factory=Frames.empty)
    # First row of every (vehicle, signal) run, when the rows are known to be sorted by
    # (vehicle, signal, t) with one run per pair (cleaning sets it); None: not known.
    blocks: IntArray | None = None

    @classmethod
    def empty(cls, signal_names: Sequence[str] = ()) -> Readings:
        return cls(_empty(np.int32), _empty(np.int32), _empty(np.int16), _empty(np.int64),
                   _empty(np.float64), _empty(np.int32), [], list(signal_names))

    def __len__(self) -> int:
        return int(self.value.shape[0])

    def take(self, index: npt.NDArray[Any]) -> Readings:
        """Rows selected by a boolean mask or an index array; dictionaries are shared."""
        return Readings(self.vehicle[index], self.signal[index], self.unit[index], self.t[index],
                        self.value[index], self.frame[index], self.vins, self.signal_names,
                        self.unit_names, self.frames)

    def signal_id(self, name: str) -> int:
        """Index of a signal name in this batch's dictionary, -1 if absent."""
        try:
            return self.signal_names.index(name)
        except ValueError:
            return -1

    def select(self, name: str) -> Readings:
        """Only the readings of one signal (order preserved)."""
        sid = self.signal_id(name)
        if sid < 0:
            return self.take(np.zeros(len(self), dtype=bool))
        return self.take(self.signal == sid)

    def vin_array(self) -> ObjArray:
        """VIN of every row as an object array (materialised; for the edges only)."""
        return np.asarray(self.vins, dtype=object)[self.vehicle] if len(self) else _empty(object)


def deterministic_id(*parts: object) -> str:
    """A stable event id from what produced it (topic, partition, offset, step, index).

    A replay of the same input yields the same ids, so consumers can drop duplicates.
    """
    return hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=16).hexdigest()


@dataclass(slots=True)
class EventBatch:
    """Derived events as columns (struct of arrays), one row per CloudEvent.

    - `attrs`: CloudEvents attributes present on every row: `id`, `type`, `source`,
      `subject` (the VIN), `partitionkey` (the VIN) as object arrays of str, and `time`
      as int64 epoch ms. Extensions may be added as further object/numeric arrays.
    - `data`: the event data, one array per field, dotted paths for nesting
      (`location.lat`). Numeric fields are float64/int64/bool arrays; strings are object
      arrays. A field absent from some rows has a boolean mask in `present`; a field with
      no mask is present in every row.
    - `origin`: index of the RawRecord each row derives from (offsets, dead letters).
    """

    attrs: dict[str, np.ndarray]
    data: dict[str, np.ndarray] = field(default_factory=dict)
    present: dict[str, BoolArray] = field(default_factory=dict)
    origin: IntArray = field(default_factory=lambda: _empty(np.int64))

    REQUIRED = ("id", "type", "source", "subject", "time")

    def __len__(self) -> int:
        return int(self.origin.shape[0])

    @classmethod
    def empty(cls) -> EventBatch:
        attrs = {k: _empty(object) for k in cls.REQUIRED if k != "time"}
        attrs["time"] = _empty(np.int64)
        attrs["partitionkey"] = _empty(object)
        return cls(attrs=attrs)

    @classmethod
    def build(
        cls,
        *,
        type: str | ObjArray,
        source: str,
        vin: ObjArray | Sequence[str],
        time: npt.ArrayLike,
        origin: npt.ArrayLike,
        ids: ObjArray | Sequence[str],
        data: Mapping[str, npt.ArrayLike] | None = None,
        present: Mapping[str, BoolArray] | None = None,
    ) -> EventBatch:
        """Assemble a batch from columns; scalars for `type`/`source` are broadcast."""
        origin_arr = np.asarray(origin, dtype=np.int64)
        n = origin_arr.shape[0]
        vin_arr = np.asarray(vin, dtype=object)
        type_arr = np.full(n, type, dtype=object) if isinstance(type, str) else np.asarray(type, dtype=object)
        attrs: dict[str, np.ndarray] = {
            "id": np.asarray(ids, dtype=object),
            "type": type_arr,
            "source": np.full(n, source, dtype=object),
            "subject": vin_arr,
            "partitionkey": vin_arr,
            "time": np.asarray(time, dtype=np.int64),
        }
        cols = {k: np.asarray(v) for k, v in (data or {}).items()}
        for k, v in cols.items():
            if v.shape[0] != n:
                raise ValueError(f"data column {k!r} has {v.shape[0]} rows, expected {n}")
        return cls(attrs=attrs, data=cols, present=dict(present or {}), origin=origin_arr)

    def take(self, index: npt.NDArray[Any]) -> EventBatch:
        """Rows selected by a boolean mask or an index array."""
        return EventBatch(
            attrs={k: v[index] for k, v in self.attrs.items()},
            data={k: v[index] for k, v in self.data.items()},
            present={k: v[index] for k, v in self.present.items()},
            origin=self.origin[index],
        )

    def is_present(self, name: str) -> BoolArray:
        """Presence mask of a data field (all False if the batch has no such field)."""
        if name not in self.data:
            return np.zeros(len(self), dtype=bool)
        mask = self.present.get(name)
        return np.ones(len(self), dtype=bool) if mask is None else mask

    @staticmethod
    def concat(batches: Iterable[EventBatch]) -> EventBatch:
        """Union of batches; fields missing from some batches get presence masks."""
        parts = [b for b in batches if len(b)]
        if not parts:
            return EventBatch.empty()
        if len(parts) == 1:
            return parts[0]
        lengths = [len(b) for b in parts]
        total = sum(lengths)
        bounds = list(zip(np.cumsum([0, *lengths[:-1]]).tolist(), np.cumsum(lengths).tolist(), strict=True))
        attr_srcs = [b.attrs for b in parts]
        data_srcs = [b.data for b in parts]

        def column(srcs: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
            arrs = [src.get(name) for src in srcs]
            have = [a for a in arrs if a is not None]
            dtype = have[0].dtype
            if any(a.dtype != dtype for a in have):
                dtype = np.dtype(object) if any(a.dtype.kind == "O" for a in have) else np.result_type(*have)
            if len(have) == len(arrs):
                return np.concatenate(have, dtype=dtype)  # type: ignore[call-overload]
            # rows of batches without the field: None (object) or 0, masked by `present`
            out = np.empty(total, dtype=dtype) if dtype.kind == "O" else np.zeros(total, dtype=dtype)
            for a, (lo, hi) in zip(arrs, bounds, strict=True):
                if a is not None:
                    out[lo:hi] = a
            return out

        attrs = {k: column(attr_srcs, k) for k in dict.fromkeys(k for src in attr_srcs for k in src)}
        data_names = list(dict.fromkeys(k for src in data_srcs for k in src))
        data = {k: column(data_srcs, k) for k in data_names}
        present: dict[str, BoolArray] = {}
        masks = [b.present for b in parts]
        for name in data_names:
            if all(name in src and name not in m for src, m in zip(data_srcs, masks, strict=True)):
                continue
            mask = np.ones(total, dtype=bool)
            for src, m, (lo, hi) in zip(data_srcs, masks, bounds, strict=True):
                if name not in src:
                    mask[lo:hi] = False
                elif name in m:
                    mask[lo:hi] = m[name]
            present[name] = mask
        return EventBatch(attrs=attrs, data=data, present=present,
                          origin=np.concatenate([b.origin for b in parts]))

    def rows(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(attributes, data) per row, with dotted data paths nested; for the edges only."""
        n = len(self)
        attr_lists = {k: v.tolist() for k, v in self.attrs.items()}
        data_lists = {k: v.tolist() for k, v in self.data.items()}
        masks = {k: v.tolist() for k, v in self.present.items()}
        out: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for i in range(n):
            attrs = {k: v[i] for k, v in attr_lists.items() if v[i] is not None}
            data: dict[str, Any] = {}
            for k, v in data_lists.items():
                m = masks.get(k)
                if m is not None and not m[i]:
                    continue
                set_path(data, k, v[i])
            out.append((attrs, data))
        return out


def set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating the intermediate dicts."""
    parts = dotted.split(".")
    node = target
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
