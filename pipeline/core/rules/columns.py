"""Read access to an `EventBatch` by rule path, with per-batch caches shared by all routes.

Paths are the ones users write in rules: a CloudEvents attribute (`type`, `subject`, any
extension such as `partitionkey`) or `data.<dotted.path>`. String columns are factorised
once per batch (unique values plus codes), so a predicate runs on the few unique values of
`type` or `subject` and is indexed back to rows instead of running once per event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.batch import BoolArray, EventBatch

DATA_PREFIX = "data."
#: CloudEvents context attributes a route may read or write besides extensions.
CONTEXT_ATTRIBUTES = ("id", "type", "source", "subject", "time", "specversion",
                      "datacontenttype", "dataschema")
#: Attributes a transform must not remove: every CloudEvent carries them.
REQUIRED_ATTRIBUTES = ("id", "type", "source", "time")


def not_none(values: np.ndarray) -> BoolArray:
    """Rows of a column that hold a value (object columns use None for absent)."""
    if values.dtype != object:
        return np.ones(values.shape[0], dtype=bool)
    none: Any = None
    mask: BoolArray = np.not_equal(values, none).astype(np.bool_, copy=False)
    return mask


def is_data_path(path: str) -> bool:
    """True for `data.<field>` paths, False for attribute names."""
    return path.startswith(DATA_PREFIX)


def data_key(path: str) -> str:
    """The batch's data column name of a `data.` path (`data.location.lat` -> `location.lat`)."""
    return path[len(DATA_PREFIX):]


def under(name: str, prefix: str) -> bool:
    """True if column `name` is `prefix` itself or nested below it."""
    return name == prefix or name.startswith(prefix + ".")


#: Python equates True == 1 == 1.0, so columns holding these are factorised by (type, value).
NUMBER_TYPES = (bool, int, float)


class _Opaque:
    """Stands for a value predicates never match (a nested object kept in an object column)."""

    __slots__ = ()


OPAQUE = _Opaque()


@dataclass(slots=True)
class Factorized:
    """Unique values of an object column and, per row (or per array element), their code.

    `rows` is None when every value is a scalar; otherwise the column holds arrays and
    `codes[k]` is the code of element k, which belongs to row `rows[k]`.
    """

    uniques: list[Any]
    codes: np.ndarray
    rows: np.ndarray | None


def _flatten(value: Any, out: list[Any]) -> None:
    for item in value:
        if isinstance(item, list | tuple):
            _flatten(item, out)
        else:
            out.append(item)


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return OPAQUE
    return value


def _factorize_values(values: list[Any], uniques: list[Any] | None = None) -> tuple[list[Any], np.ndarray]:
    """Unique values (first-seen order) and codes, keeping 1, 1.0 and True apart by type."""
    n = len(values)
    if uniques is None:
        try:
            uniques = list(dict.fromkeys(values))
        except TypeError:
            values = [_hashable(v) for v in values]
            uniques = list(dict.fromkeys(values))
    if not any(type(u) in NUMBER_TYPES for u in uniques):  # strings and None never collide
        lookup = {u: i for i, u in enumerate(uniques)}
        return uniques, np.fromiter(map(lookup.__getitem__, values), dtype=np.intp, count=n)
    # Python equates True == 1 == 1.0; rules do not, so key non-strings by their kind too.
    keys = [(type(v) is bool, type(v) is str, _hashable(v)) for v in values]
    index: dict[Any, int] = {}
    codes = np.fromiter((index.setdefault(k, len(index)) for k in keys), dtype=np.intp, count=n)
    return [k[2] for k in index], codes


class Columns:
    """One batch seen through rule paths; caches factorisations and shared predicate results."""

    def __init__(self, batch: EventBatch) -> None:
        self.batch = batch
        self.n = len(batch)
        self._factorized: dict[str, Factorized] = {}
        self._presence: dict[str, BoolArray] = {}
        self.memo: dict[Any, BoolArray] = {}

    # -- raw access ---------------------------------------------------------------------------
    def values(self, path: str) -> np.ndarray | None:
        """The column of a path, or None when no row has it."""
        if is_data_path(path):
            return self.batch.data.get(data_key(path))
        return self.batch.attrs.get(path)

    def presence(self, path: str) -> BoolArray:
        """Rows where the path holds a value (an object path: where any field below it does)."""
        cached = self._presence.get(path)
        if cached is not None:
            return cached
        mask = self._compute_presence(path)
        self._presence[path] = mask
        return mask

    def _compute_presence(self, path: str) -> BoolArray:
        n = self.n
        if not is_data_path(path):
            col = self.batch.attrs.get(path)
            if col is None:
                return np.zeros(n, dtype=bool)
            return not_none(col) if path not in REQUIRED_ATTRIBUTES else np.ones(n, dtype=bool)
        mask = self.value_presence(path)
        # An object (`location` with `location.lat`, ...) exists where any field below it does.
        prefix = data_key(path) + "."
        for k in self.batch.data:
            if k.startswith(prefix):
                mask = mask | self.batch.is_present(k)
        return mask

    def value_presence(self, path: str) -> BoolArray:
        """Rows where the path's own column holds a value (objects below it do not count)."""
        cache_key = "\0value:" + path
        cached = self._presence.get(cache_key)
        if cached is not None:
            return cached
        n = self.n
        if not is_data_path(path):
            mask = self.presence(path)
        elif data_key(path) not in self.batch.data:
            mask = np.zeros(n, dtype=bool)
        else:
            key = data_key(path)
            mask = self.batch.is_present(key)
            if self.batch.data[key].dtype == object:
                f = self.factorized(path)
                if f is not None and f.rows is not None:
                    # An empty array holds no value, so it does not exist for matching.
                    nonempty = np.zeros(n, dtype=bool)
                    nonempty[f.rows] = True
                    mask = mask & nonempty
        self._presence[cache_key] = mask
        return mask

    def has_factorized(self, path: str) -> bool:
        """True if the column's factorisation is already cached for this batch."""
        return path in self._factorized

    def factorized(self, path: str) -> Factorized | None:
        """Unique values and codes of an object (string) column, cached for the batch."""
        cached = self._factorized.get(path)
        if cached is not None:
            return cached
        col = self.values(path)
        if col is None:
            return None
        if col.dtype.kind in "US":
            uniques_arr, codes = np.unique(col, return_inverse=True)
            result = Factorized([str(u) for u in uniques_arr.tolist()], codes.astype(np.intp), None)
        elif col.dtype == object:
            # A field most rows lack (one event type's field in a mixed batch) is factorised
            # over the rows that have it; the others get a value no condition matches.
            mask = self.batch.present.get(data_key(path)) if is_data_path(path) else None
            held = np.flatnonzero(mask) if mask is not None and 2 * int(mask.sum()) < self.n else None
            values = (col[held] if held is not None else col).tolist()
            try:
                uniques: list[Any] | None = list(dict.fromkeys(values))
            except TypeError:  # lists (arrays) or nested objects in the column
                uniques = None
            if uniques is None or any(isinstance(u, tuple) for u in uniques):
                result = self._factorize_arrays(values)
                if held is not None and result.rows is not None:
                    result.rows = held[result.rows]
            else:
                found, codes = _factorize_values(values, uniques)
                if held is not None:
                    full = np.full(self.n, len(found), dtype=np.intp)
                    full[held] = codes
                    found, codes = [*found, OPAQUE], full
                result = Factorized(found, codes, None)
        else:
            uniques_arr, codes = np.unique(col, return_inverse=True)
            result = Factorized(uniques_arr.tolist(), codes.astype(np.intp), None)
        self._factorized[path] = result
        return result

    @staticmethod
    def _factorize_arrays(values: list[Any]) -> Factorized:
        flat: list[Any] = []
        rows: list[int] = []
        for i, v in enumerate(values):
            if isinstance(v, list | tuple):
                start = len(flat)
                _flatten(v, flat)
                rows.extend([i] * (len(flat) - start))
            else:
                flat.append(v)
                rows.append(i)
        uniques, codes = _factorize_values(flat)
        return Factorized(uniques, codes, np.asarray(rows, dtype=np.intp))

    def geo(self, path: str) -> tuple[np.ndarray, np.ndarray, BoolArray] | None:
        """Latitude, longitude and presence of a location object (`data.location`)."""
        if not is_data_path(path):
            return None
        key = data_key(path)
        lat_key, lon_key = f"{key}.lat", f"{key}.lon"
        if lat_key not in self.batch.data or lon_key not in self.batch.data:
            return None
        lat_col, lon_col = self.batch.data[lat_key], self.batch.data[lon_key]
        if lat_col.dtype.kind not in "iuf" or lon_col.dtype.kind not in "iuf":
            return None
        lat = lat_col.astype(np.float64, copy=False)
        lon = lon_col.astype(np.float64, copy=False)
        present = self.batch.is_present(lat_key) & self.batch.is_present(lon_key)
        present = present & np.isfinite(lat) & np.isfinite(lon)
        return lat, lon, present


def _flatten_data(data: Any, prefix: str, out: dict[str, Any]) -> None:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            _flatten_data(value, name + ".", out)
        else:
            out[name] = value


def _column(values: list[Any], present: list[bool]) -> np.ndarray:
    """The tightest column type for values (bool, int64, float64, else object)."""
    got = [v for v, p in zip(values, present, strict=True) if p]
    kinds = {type(v) for v in got}
    n = len(values)
    if kinds and kinds <= {bool}:
        return np.array([bool(v) if p else False for v, p in zip(values, present, strict=True)], dtype=bool)
    if kinds and kinds <= {int} and all(-(2**63) <= v < 2**63 for v in got):
        return np.array([v if p else 0 for v, p in zip(values, present, strict=True)], dtype=np.int64)
    if kinds and kinds <= {int, float}:
        return np.array([float(v) if p else np.nan for v, p in zip(values, present, strict=True)], dtype=np.float64)
    column = np.empty(n, dtype=object)
    for i, (v, p) in enumerate(zip(values, present, strict=True)):
        column[i] = v if p else None
    return column


def batch_from_events(events: list[Mapping[str, Any]]) -> EventBatch:
    """An `EventBatch` from CloudEvent-shaped dicts (attributes plus a nested `data` mapping).

    For tests, `rules test` and the per-event reference; the pipeline builds batches from
    columns directly. `time` is epoch ms; `origin` defaults to the event's position.
    """
    n = len(events)
    flat = []
    for event in events:
        row: dict[str, Any] = {}
        _flatten_data(event.get("data") or {}, "", row)
        flat.append(row)
    attr_names = list(dict.fromkeys(k for e in events for k in e if k not in ("data", "origin")))
    for required in ("id", "type", "source", "subject", "time"):
        if required not in attr_names:
            attr_names.append(required)
    attrs: dict[str, np.ndarray] = {}
    for name in attr_names:
        if name == "time":
            attrs[name] = np.array([int(e.get("time", 0)) for e in events], dtype=np.int64)
        elif name == "id":
            attrs[name] = np.array([str(e.get("id", f"event-{i}")) for i, e in enumerate(events)], dtype=object)
        else:
            col = np.empty(n, dtype=object)
            for i, e in enumerate(events):
                col[i] = e.get(name)
            attrs[name] = col
    data: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for name in dict.fromkeys(k for row in flat for k in row):
        mask = [name in row for row in flat]
        data[name] = _column([row.get(name) for row in flat], mask)
        if not all(mask):
            present[name] = np.array(mask, dtype=bool)
    origin = np.array([int(e.get("origin", i)) for i, e in enumerate(events)], dtype=np.int64)
    return EventBatch(attrs=attrs, data=data, present=present, origin=origin)


def events_from_batch(batch: EventBatch) -> list[dict[str, Any]]:
    """CloudEvent-shaped dicts of a batch (attributes plus nested `data`), for the edges and tests."""
    out = []
    for attrs, data in batch.rows():
        event = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
        event["data"] = _plain(data)
        out.append(event)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
