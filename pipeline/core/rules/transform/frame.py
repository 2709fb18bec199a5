"""The frame a transform works on: a lazy view of the matched rows of a batch (a column is
copied only when a step reads it), text helpers, and `TransformError`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.core.batch import BoolArray, EventBatch, IntArray
from pipeline.core.rules.columns import (
    NUMBER_TYPES,
    OPAQUE,
    REQUIRED_ATTRIBUTES,
    Columns,
    data_key,
    is_data_path,
    not_none,
    under,
)
from pipeline.core.rules.patterns import PatternError

MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
#: Attributes a transform may write (`id` and `time` are the pipeline's).
WRITABLE_ATTRIBUTES_FIXED = ("type", "source", "subject", "dataschema")
#: Attributes a transform may remove.
OPTIONAL_ATTRIBUTES_FIXED = ("subject", "dataschema", "partitionkey")
METRES_PER_DEGREE = 111_320.0
#: Part index of an array split: prior part * this + element position (stable per event).
SPLIT_ARRAY_WIDTH = 1_000_000


class TransformError(PatternError):
    """A transform step is malformed (same shape as pattern errors: message, loc, path)."""


# ---------------------------------------------------------------------------------------------
# Frame: the rows of one route, columns taken lazily from the source batch.
# ---------------------------------------------------------------------------------------------
_LAZY: Any = object()


class Frame:
    """Matched rows of a batch while a route's steps run; builds the route's `EventBatch`."""

    def __init__(self, source: EventBatch, index: IntArray, cols: Columns | None = None) -> None:
        self.source = source
        self.cols = cols
        self.index = index  # row in `source` of each frame row
        self.part = np.zeros(index.shape[0], dtype=np.int64)
        self.attrs: dict[str, Any] = dict.fromkeys(source.attrs, _LAZY)
        self.data: dict[str, Any] = dict.fromkeys(source.data, _LAZY)
        self.present: dict[str, Any] = dict.fromkeys(source.data, _LAZY)
        self.dead: list[tuple[IntArray, str, str]] = []  # (source rows, reason, error)
        self._taken: dict[int, np.ndarray] = {}  # id(source column) -> its rows, while `index` holds

    def _take(self, column: np.ndarray) -> np.ndarray:
        """A source column at the frame's rows; columns shared in the source are taken once."""
        key = id(column)
        taken = self._taken.get(key)
        if taken is None:
            taken = self._taken[key] = column[self.index]
        return taken

    def __len__(self) -> int:
        return int(self.index.shape[0])

    # -- columns -------------------------------------------------------------------------------
    def is_source_column(self, key: str) -> bool:
        """True while a data column is still the untouched source column (cache-friendly)."""
        return self.data.get(key) is _LAZY

    def data_column(self, key: str) -> np.ndarray:
        value = self.data[key]
        if value is _LAZY:
            value = self._take(self.source.data[key])
            self.data[key] = value
        return value  # type: ignore[no-any-return]

    def data_present(self, key: str) -> BoolArray:
        mask = self.present.get(key)
        if mask is _LAZY:
            src = self.source.present.get(key)
            mask = None if src is None else src[self.index]
            self.present[key] = mask
        if mask is None:
            return np.ones(len(self), dtype=bool)
        return mask  # type: ignore[no-any-return]

    def attr_column(self, name: str) -> np.ndarray:
        value = self.attrs[name]
        if value is _LAZY:
            value = self._take(self.source.attrs[name])
            self.attrs[name] = value
        return value  # type: ignore[no-any-return]

    def untouched(self, path: str) -> bool:
        """True while a path is still the source batch's column (so batch-wide caches apply)."""
        if is_data_path(path):
            return self.data.get(data_key(path)) is _LAZY
        return self.attrs.get(path) is _LAZY

    def map_unique(self, path: str, func: Callable[[Any], Any],
                   func_all: Callable[[list[Any]], list[Any]] | None = None) -> np.ndarray | None:
        """`func` of every row's value, computed once per unique value of the batch's column.

        Uses the batch-wide factorisation shared by all routes; None if the column was
        changed by an earlier step (callers then map the frame's own values).
        """
        if self.cols is None or not self.untouched(path):
            return None
        if not self.cols.has_factorized(path) and 4 * len(self) < self.cols.n:
            return None  # a small share of a fresh column: factorising the frame's rows is cheaper
        fact = self.cols.factorized(path)
        if fact is None or fact.rows is not None:
            return None
        mapped = np.empty(len(fact.uniques), dtype=object)
        mapped[:] = func_all(fact.uniques) if func_all is not None else [None if u is OPAQUE else func(u) for u in fact.uniques]
        return mapped[fact.codes[self.index]]  # type: ignore[no-any-return]

    def keys_under(self, path: str) -> list[str]:
        """Data column names at or below a data path."""
        prefix = data_key(path)
        return [k for k in self.data if under(k, prefix)]

    def read(self, path: str) -> tuple[np.ndarray, BoolArray] | None:
        """(values, presence) of a scalar path, or None if no row has it."""
        if is_data_path(path):
            key = data_key(path)
            if key not in self.data:
                return None
            return self.data_column(key), self.data_present(key)
        if path not in self.attrs:
            return None
        values = self.attr_column(path)
        if path in REQUIRED_ATTRIBUTES:
            return values, np.ones(len(self), dtype=bool)
        return values, not_none(values)

    def presence(self, path: str) -> BoolArray:
        """Rows where a path (scalar or object) has a value."""
        got = self.read(path)
        if got is not None:
            return got[1]
        mask = np.zeros(len(self), dtype=bool)
        if is_data_path(path):
            for key in self.keys_under(path):
                mask |= self.data_present(key)
        return mask

    def write(self, path: str, values: np.ndarray, present: BoolArray | None) -> None:
        """Set a scalar path (replacing an object or column at that path)."""
        if is_data_path(path):
            key = data_key(path)
            for old in self.keys_under(path):
                self.delete_key(old)
            # A scalar replaces any object it would sit inside of (`a` replaced by `a.b`).
            parts = key.split(".")
            for i in range(1, len(parts)):
                self.delete_key(".".join(parts[:i]))
            self.data[key] = values
            self.present[key] = None if present is None or bool(present.all()) else present
        else:
            if values.dtype != object:
                values = values.astype(object)
            if present is not None and not bool(present.all()):
                values = values.copy()
                values[~present] = None
            self.attrs[path] = values

    def assign(self, path: str, values: np.ndarray, present: BoolArray, where: BoolArray) -> None:
        """Set a scalar path only in rows `where`; other rows keep what they had."""
        if bool(where.all()):
            self.write(path, values, present)
            return
        got = self.read(path)
        if got is None:
            self.write(path, values, present & where)
            return
        old, old_present = got
        dtype = np.dtype(object) if np.dtype(object) in (old.dtype, values.dtype) else np.result_type(old, values)
        merged = old.astype(dtype, copy=True)
        merged[where] = values[where]
        self.write(path, merged, (old_present & ~where) | (present & where))

    def clear(self, path: str, where: BoolArray) -> None:
        """Make a path (and everything below it) absent in rows `where`."""
        if not is_data_path(path):
            values = self.attr_column(path).copy() if path in self.attrs else None
            if values is not None:
                values[where] = None
                self.attrs[path] = values
            return
        for key in self.keys_under(path):
            self.present[key] = self.data_present(key) & ~where

    def delete_key(self, key: str) -> None:
        self.data.pop(key, None)
        self.present.pop(key, None)

    def delete(self, path: str) -> None:
        if is_data_path(path):
            for key in self.keys_under(path):
                self.delete_key(key)
        else:
            self.attrs.pop(path, None)

    # -- rows ----------------------------------------------------------------------------------
    def take(self, rows: np.ndarray) -> None:
        """Keep (or repeat) frame rows: materialised columns are indexed, lazy ones follow `index`."""
        for store in (self.attrs, self.data, self.present):
            for k, v in store.items():
                if v is not _LAZY and v is not None:
                    store[k] = v[rows]
        self.index = self.index[rows]
        self.part = self.part[rows]
        self._taken = {}

    def dead_letter(self, mask: BoolArray, reason: str, error: str) -> None:
        """Move rows out of the frame to the route's dead letters."""
        if not mask.any():
            return
        self.dead.append((self.index[mask], reason, error))
        self.take(np.flatnonzero(~mask))

    def build(self) -> EventBatch:
        """The route's batch: materialise the remaining columns, drop fields no row has."""
        attrs = {k: self.attr_column(k) for k in list(self.attrs)}
        data: dict[str, np.ndarray] = {}
        present: dict[str, BoolArray] = {}
        for key in list(self.data):
            mask = self.present.get(key)
            if mask is _LAZY:
                src = self.source.present.get(key)
                mask = None if src is None else src[self.index]
            if mask is not None:
                if not mask.any():
                    continue
                if not mask.all():
                    present[key] = mask
            data[key] = self.data_column(key)
        return EventBatch(attrs=attrs, data=data, present=present, origin=self.source.origin[self.index])


# ---------------------------------------------------------------------------------------------
# Value helpers shared by steps (vectorised over unique values where values repeat).
# ---------------------------------------------------------------------------------------------
def text_of(value: Any) -> str:
    """How a value reads inside templates, hashes and masks (JSON-like for booleans and null)."""
    if value is None:
        return "null"
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        return str(float(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    return str(value)


def _unique_map(values: np.ndarray, func: Callable[[Any], Any],
                func_all: Callable[[list[Any]], list[Any]] | None = None) -> np.ndarray:
    """Apply `func` once per unique value of an object column, indexed back to rows."""
    items = values.tolist()
    try:
        uniques = list(dict.fromkeys(items))
    except TypeError:
        out = np.empty(len(items), dtype=object)
        out[:] = [func(v) for v in items]
        return out
    if any(type(u) in NUMBER_TYPES for u in uniques):  # keep 1, 1.0 and True apart
        keyed = [(type(v), v) for v in items]
        cache: dict[Any, Any] = {}
        out = np.empty(len(items), dtype=object)
        out[:] = [cache[k] if k in cache else cache.setdefault(k, func(k[1])) for k in keyed]
        return out
    mapped = dict(zip(uniques, func_all(uniques), strict=True)) if func_all is not None else {u: func(u) for u in uniques}
    out = np.empty(len(items), dtype=object)
    out[:] = list(map(mapped.__getitem__, items))
    return out


def as_text(values: np.ndarray) -> np.ndarray:
    """Object array of the text form of each value (see `text_of`)."""
    kind = values.dtype.kind
    out = np.empty(values.shape[0], dtype=object)
    if kind == "O":
        items = values.tolist()
        try:
            kinds = {type(u) for u in dict.fromkeys(items)}
        except TypeError:
            kinds = {object}
        if kinds <= {str}:
            return values
        if kinds <= {str, type(None)}:  # text with gaps: the gaps are masked by the caller
            out[:] = [v if v is not None else "" for v in items]
            return out
        return _unique_map(values, text_of)
    if kind == "b":
        return np.where(values, "true", "false").astype(object)
    if kind == "f":
        out[:] = list(map(str, values.astype(np.float64, copy=False).tolist()))
        return out
    out[:] = list(map(str, values.tolist()))
    return out


