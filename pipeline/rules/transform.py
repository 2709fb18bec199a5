"""Vectorised transforms of routed events: reshape, desensitise and split, column by column.

A route's transform is a list of steps, each a mapping with one operation key (see
`schema.STEP_DOCS`) and optionally `if_missing: dead_letter|skip`. Steps run on a `Frame`,
a lazy view of the matched rows of the batch: a column is copied only when a step reads
it or when the result is built, so `pick` of 3 fields out of 60 costs 3 columns.
Events that lack a field a step needs leave the frame as dead letters with the reason.
"""

from __future__ import annotations

import hmac as hmac_lib
import math
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from pipeline.batch import BoolArray, EventBatch, IntArray, ObjArray
from pipeline.rules.columns import (
    DATA_PREFIX,
    NUMBER_TYPES,
    OPAQUE,
    REQUIRED_ATTRIBUTES,
    Columns,
    _column,
    data_key,
    is_data_path,
    not_none,
    under,
)
from pipeline.rules.patterns import Loc, PatternError
from pipeline.rules.schema import (
    DEFAULT_HMAC_KEY_ENV,
    PATH,
    STEP_DOCS,
    BucketSpec,
    CoarsenSpec,
    HmacSpec,
    MaskSpec,
    SplitSpec,
)

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


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------
@dataclass
class Context:
    """What steps need besides the frame: HMAC keys and the pseudonym cache."""

    keys: Mapping[str, bytes]
    pseudonyms: dict[tuple[str, int, str], dict[Any, str]] = field(default_factory=dict)
    max_cached: int = 200_000


@dataclass
class Step:
    """One compiled step. `needs` are paths every processed row must have."""

    op: str
    if_missing: str
    loc: Loc

    def needs(self) -> list[str]:
        return []

    def apply(self, frame: Frame, ctx: Context) -> None:
        raise NotImplementedError

    def run(self, frame: Frame, ctx: Context, position: int) -> None:
        if self.if_missing == "dead_letter":
            for path in self.needs():
                missing = ~frame.presence(path)
                frame.dead_letter(missing, MISSING_FIELD, f"step {position + 1} ({self.op}): field '{path}' is missing")
        if len(frame):
            self.apply(frame, ctx)


@dataclass
class Pick(Step):
    paths: tuple[str, ...] = ()

    def apply(self, frame: Frame, ctx: Context) -> None:
        keep = [data_key(p) for p in self.paths]
        for key in list(frame.data):
            if not any(under(key, k) for k in keep):
                frame.delete_key(key)


@dataclass
class Drop(Step):
    paths: tuple[str, ...] = ()

    def apply(self, frame: Frame, ctx: Context) -> None:
        for path in self.paths:
            frame.delete(path)


def _move(frame: Frame, src: str, dst: str) -> None:
    """Move a field or object; rows without it keep whatever `dst` held."""
    where = frame.presence(src)
    if not where.any():
        return
    frame.clear(dst, where)
    got = frame.read(src)
    if got is not None:
        values, present = got
        frame.delete(src)
        frame.assign(dst, values, present, where)
        return
    for key in frame.keys_under(src):
        suffix = key[len(data_key(src)):]
        values, present = frame.data_column(key), frame.data_present(key)
        frame.delete_key(key)
        frame.assign(dst + suffix, values, present, where)


@dataclass
class Rename(Step):
    mapping: tuple[tuple[str, str], ...] = ()

    def needs(self) -> list[str]:
        return [src for src, _ in self.mapping]

    def apply(self, frame: Frame, ctx: Context) -> None:
        for src, dst in self.mapping:
            _move(frame, src, dst)


def _constant(value: Any, n: int) -> np.ndarray:
    if isinstance(value, bool):
        return np.full(n, value, dtype=bool)
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return np.full(n, value, dtype=np.int64)
    if isinstance(value, float):
        return np.full(n, value, dtype=np.float64)
    out = np.empty(n, dtype=object)
    out[:] = [value] * n
    return out


@dataclass
class SetConstants(Step):
    values: tuple[tuple[str, Any], ...] = ()

    def apply(self, frame: Frame, ctx: Context) -> None:
        for path, value in self.values:
            frame.write(path, _constant(value, len(frame)), None)


@dataclass
class Template(Step):
    templates: tuple[tuple[str, tuple[tuple[str, str | None], ...]], ...] = ()

    def needs(self) -> list[str]:
        return list(dict.fromkeys(ref for _, parts in self.templates for _, ref in parts if ref))

    def apply(self, frame: Frame, ctx: Context) -> None:
        n = len(frame)
        results = []
        for path, parts in self.templates:
            acc: Any = ""  # a plain string until the first variable, then an object array
            ok = np.ones(n, dtype=bool)
            for literal, ref in parts:
                if literal:
                    acc = acc + literal
                if ref:
                    got = frame.read(ref)
                    if got is None:
                        ok[:] = False
                        continue
                    values, present = got
                    ok &= present
                    text = frame.map_unique(ref, text_of) if values.dtype == object and frame.untouched(ref) \
                        and frame.cols is not None and frame.cols.has_factorized(ref) else None
                    acc = acc + (text if text is not None else as_text(values))
            if isinstance(acc, str):
                constant = np.empty(n, dtype=object)
                constant[:] = [acc] * n
                acc = constant
            results.append((path, acc, ok))
        for path, acc, ok in results:  # all templates read the event as it was before the step
            frame.write(path, acc, ok)


def _pseudonym(key: bytes, length: int, prefix: str, value: Any) -> str:
    """HMAC-SHA256 of the value's text, hex, truncated to `length`, after `prefix`."""
    return prefix + hmac_lib.digest(key, text_of(value).encode(), "sha256").hex()[:length]


@dataclass
class Hmac(Step):
    spec: HmacSpec = field(default_factory=lambda: HmacSpec(field="data.vin"))

    def needs(self) -> list[str]:
        return [self.spec.field]

    def apply(self, frame: Frame, ctx: Context) -> None:
        spec = self.spec
        path = spec.field
        untouched = frame.cols is not None and (
            frame.data.get(data_key(path)) is _LAZY if is_data_path(path) else frame.attrs.get(path) is _LAZY)
        got = frame.read(path)
        if got is None:
            return
        values, present = got
        key = ctx.keys[spec.key_env]
        cache = ctx.pseudonyms.setdefault((spec.key_env, spec.length, spec.prefix), {})
        if len(cache) > ctx.max_cached:
            cache.clear()
        make = partial(_pseudonym, key, spec.length, spec.prefix)

        def lookup(value: Any) -> str:
            if type(value) is not str:
                return make(value)
            hit = cache.get(value)
            if hit is None:
                hit = cache[value] = make(value)
            return hit

        def lookup_all(values: list[Any]) -> list[Any]:
            hits = list(map(cache.get, values))  # C-level for values seen before
            if None in hits:
                hits = [h if h is not None else (None if v is OPAQUE else lookup(v)) for v, h in zip(values, hits, strict=True)]
            return hits

        out = frame.map_unique(path, lookup, lookup_all) if untouched else None
        if out is None:
            out = _unique_map(values if values.dtype == object else as_text(values), lookup, lookup_all)
        if spec.to:
            frame.delete(path)
            frame.assign(spec.to, out, present, present)
        else:
            frame.write(path, out, present)


def _mask_text(spec: MaskSpec, value: Any) -> str:
    text = text_of(value)
    n = len(text)
    first = min(spec.keep_first, n)
    last = min(spec.keep_last, n - first)
    return text[:first] + spec.char * (n - first - last) + (text[n - last:] if last else "")


@dataclass
class Mask(Step):
    spec: MaskSpec = field(default_factory=lambda: MaskSpec(field="data.vin"))

    def needs(self) -> list[str]:
        return [self.spec.field]

    def apply(self, frame: Frame, ctx: Context) -> None:
        got = frame.read(self.spec.field)
        if got is None:
            return
        values, present = got
        masker = partial(_mask_text, self.spec)
        out = frame.map_unique(self.spec.field, masker) if values.dtype == object else None
        if out is None:
            out = _unique_map(values if values.dtype == object else as_text(values), masker)
        if self.spec.to:
            frame.delete(self.spec.field)
            frame.assign(self.spec.to, out, present, present)
        else:
            frame.write(self.spec.field, out, present)


def _numeric(values: np.ndarray, present: BoolArray) -> tuple[np.ndarray, BoolArray]:
    """Float view of a column and the rows holding a real number (not bool, not text)."""
    if values.dtype.kind in "iuf":
        return values.astype(np.float64, copy=False), present
    if values.dtype.kind == "b":
        return np.zeros(values.shape[0]), np.zeros(values.shape[0], dtype=bool)
    ok = np.fromiter((isinstance(v, int | float) and not isinstance(v, bool) for v in values.tolist()),
                     dtype=bool, count=values.shape[0])
    out = np.zeros(values.shape[0])
    out[ok] = np.asarray([v for v, k in zip(values.tolist(), ok.tolist(), strict=True) if k], dtype=np.float64)
    return out, present & ok


def coarsen_coordinates(lat: np.ndarray, lon: np.ndarray, spec: CoarsenSpec) -> tuple[np.ndarray, np.ndarray]:
    """Snap latitude/longitude to a grid of `precision_m` metres (or round to `decimals`)."""
    if spec.decimals is not None:
        return np.round(lat, spec.decimals), np.round(lon, spec.decimals)
    step_lat = float(spec.precision_m or 0.0) / METRES_PER_DEGREE
    lat2 = np.clip(np.round(lat / step_lat) * step_lat, -90.0, 90.0)
    step_lon = step_lat / np.maximum(np.cos(np.radians(lat2)), 0.01)
    lon2 = np.round(lon / step_lon) * step_lon
    lon2 = (lon2 + 180.0) % 360.0 - 180.0
    return np.round(lat2, 6), np.round(lon2, 6)


@dataclass
class Coarsen(Step):
    spec: CoarsenSpec = field(default_factory=lambda: CoarsenSpec(field="data.location", precision_m=1000))

    def fields(self) -> tuple[str, str]:
        if self.spec.field:
            return f"{self.spec.field}.lat", f"{self.spec.field}.lon"
        return str(self.spec.lat), str(self.spec.lon)

    def needs(self) -> list[str]:
        return list(self.fields())

    def apply(self, frame: Frame, ctx: Context) -> None:
        lat_path, lon_path = self.fields()
        lat_got, lon_got = frame.read(lat_path), frame.read(lon_path)
        if lat_got is None or lon_got is None:
            return
        lat, lat_ok = _numeric(*lat_got)
        lon, lon_ok = _numeric(*lon_got)
        ok = lat_ok & lon_ok
        bad = (lat_got[1] | lon_got[1]) & ~ok
        if self.if_missing == "dead_letter" and bad.any():
            frame.dead_letter(bad, WRONG_TYPE, f"coarsen: '{lat_path}'/'{lon_path}' are not numbers")
            self.apply(frame, ctx)
            return
        lat2, lon2 = coarsen_coordinates(lat, lon, self.spec)
        frame.write(lat_path, lat2, ok)
        frame.write(lon_path, lon2, ok)


@dataclass
class Bucket(Step):
    spec: BucketSpec = field(default_factory=lambda: BucketSpec(field="data.x", width=1))

    def needs(self) -> list[str]:
        return [self.spec.field]

    def apply(self, frame: Frame, ctx: Context) -> None:
        spec = self.spec
        got = frame.read(spec.field)
        if got is None:
            return
        values, ok = _numeric(*got)
        bad = got[1] & ~ok
        if self.if_missing == "dead_letter" and bad.any():
            frame.dead_letter(bad, WRONG_TYPE, f"bucket: '{spec.field}' is not a number")
            self.apply(frame, ctx)
            return
        ok = ok & np.isfinite(values)
        out: np.ndarray
        if spec.width is not None:
            out = np.floor((values - spec.offset) / spec.width) * spec.width + spec.offset
        else:
            labels = np.asarray(spec.labels, dtype=object)
            out = labels[np.searchsorted(np.asarray(spec.edges, dtype=np.float64), values, side="right")]
        if spec.to:
            frame.delete(spec.field)
            frame.assign(spec.to, out, ok, ok)
        else:
            frame.write(spec.field, out, ok)


@dataclass
class Split(Step):
    spec: SplitSpec = field(default_factory=lambda: SplitSpec(field="data.x"))

    def needs(self) -> list[str]:
        return [self.spec.field] if self.spec.field else []

    def run(self, frame: Frame, ctx: Context, position: int) -> None:
        if self.spec.by is not None and self.if_missing == "dead_letter":
            anywhere = np.zeros(len(frame), dtype=bool)
            for path in self.spec.by:
                anywhere |= frame.presence(path)
            frame.dead_letter(~anywhere, MISSING_FIELD,
                              f"step {position + 1} (split): none of {', '.join(self.spec.by)} is present")
        super().run(frame, ctx, position)

    def apply(self, frame: Frame, ctx: Context) -> None:
        if self.spec.field is not None:
            self._split_array(frame, self.spec.field)
        else:
            self._split_by(frame, list(self.spec.by or ()))

    def _split_array(self, frame: Frame, path: str) -> None:
        got = frame.read(path)
        if got is None:
            return
        values, present = got
        items = values.tolist()
        pres = present.tolist()
        counts = np.fromiter(((len(v) if isinstance(v, list | tuple) else 1) if p else 1
                              for v, p in zip(items, pres, strict=True)), dtype=np.int64, count=len(items))
        flat: list[Any] = []
        flat_present: list[bool] = []
        for v, p in zip(items, pres, strict=True):
            if not p:
                flat.append(None)
                flat_present.append(False)
            elif isinstance(v, list | tuple):
                flat.extend(v)
                flat_present.extend([True] * len(v))
            else:
                flat.append(v)
                flat_present.append(True)
        rows = np.repeat(np.arange(len(items)), counts)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        element = np.arange(rows.shape[0]) - starts
        prior = frame.part[rows]
        frame.take(rows)
        frame.part = prior * SPLIT_ARRAY_WIDTH + element
        mask = np.asarray(flat_present, dtype=bool)
        target = self.spec.to or path
        if target != path:
            frame.delete(path)
        frame.write(target, _column(flat, flat_present), mask)
        if self.spec.index_to:
            frame.write(self.spec.index_to, element.astype(np.int64), mask)

    def _split_by(self, frame: Frame, paths: list[str]) -> None:
        target = str(self.spec.to)
        rows_per_part = [np.flatnonzero(frame.presence(p)) for p in paths]
        # Gather each part's columns (relative to its path) before the frame is reindexed.
        pieces: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        for k, (path, rows) in enumerate(zip(paths, rows_per_part, strict=True)):
            got = frame.read(path)
            if got is not None:
                pieces.setdefault("", {})[k] = (got[0][rows], got[1][rows])
                continue
            for key in frame.keys_under(path):
                suffix = key[len(data_key(path)):]
                pieces.setdefault(suffix, {})[k] = (frame.data_column(key)[rows], frame.data_present(key)[rows])
        sizes = [rows.shape[0] for rows in rows_per_part]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        all_rows = np.concatenate(rows_per_part)
        part_index = np.repeat(np.arange(len(paths), dtype=np.int64), sizes)
        # Event-major output order (each event's parts together), so per-vehicle order holds.
        order = np.lexsort((part_index, all_rows))
        all_rows, part_index = all_rows[order], part_index[order]
        prior = frame.part[all_rows]
        for path in paths:
            frame.delete(path)
        frame.delete(target)
        frame.take(all_rows)
        frame.part = prior * len(paths) + part_index
        total = int(all_rows.shape[0])
        for suffix, by_part in pieces.items():
            arrays = [values for values, _ in by_part.values()]
            dtype = np.result_type(*arrays) if all(a.dtype != object for a in arrays) else np.dtype(object)
            column = np.full(total, None, dtype=object) if dtype == np.dtype(object) else np.zeros(total, dtype=dtype)
            mask = np.zeros(total, dtype=bool)
            for k, (values, present) in by_part.items():
                column[offsets[k]:offsets[k + 1]] = values
                mask[offsets[k]:offsets[k + 1]] = present
            frame.write(target + suffix, column[order], mask[order])
        if self.spec.index_to:
            names = np.asarray([p.rsplit(".", 1)[-1] for p in paths], dtype=object)
            frame.write(self.spec.index_to, names[part_index], None)


# ---------------------------------------------------------------------------------------------
# Compiled transform
# ---------------------------------------------------------------------------------------------
@dataclass
class Transform:
    """A route's compiled steps."""

    steps: tuple[Step, ...] = ()

    def apply(self, frame: Frame, ctx: Context) -> Frame:
        for position, step in enumerate(self.steps):
            if not len(frame):
                break
            step.run(frame, ctx, position)
        return frame

    def key_envs(self) -> set[str]:
        """Environment variables whose HMAC keys the steps need."""
        return {s.spec.key_env for s in self.steps if isinstance(s, Hmac)}


def deterministic_ids(event_ids: ObjArray, route: str, parts: IntArray) -> ObjArray:
    """`<event id>/<route>/<part>` for every row: deterministic (a replay yields the same id),
    unique per route and split part, and traceable to the derived event it came from.
    Built by vectorised string concatenation: hashing every routed event (blake2b) cost
    more than matching and transforming it."""
    n = event_ids.shape[0]
    if n == 0:
        return np.empty(0, dtype=object)
    if not parts.any():
        return np.asarray(event_ids + f"/{route}/0", dtype=object)
    return np.asarray(event_ids + f"/{route}/" + parts.astype(str).astype(object), dtype=object)


# ---------------------------------------------------------------------------------------------
# Compiler
# ---------------------------------------------------------------------------------------------
def _writable(path: str) -> bool:
    return is_data_path(path) or path in WRITABLE_ATTRIBUTES_FIXED or (
        path not in REQUIRED_ATTRIBUTES and path not in ("specversion", "datacontenttype") and bool(PATH.match(path)))


def _removable(path: str) -> bool:
    return is_data_path(path) or path in OPTIONAL_ATTRIBUTES_FIXED or (
        path not in REQUIRED_ATTRIBUTES and path not in ("specversion", "datacontenttype", "type", "source")
        and bool(PATH.match(path)))


class _StepCompiler:
    def __init__(self) -> None:
        self.errors: list[TransformError] = []

    def fail(self, message: str, loc: Loc, path: str | None = None) -> None:
        self.errors.append(TransformError(message, loc, path))

    def path(self, value: Any, loc: Loc, *, write: bool = False, remove: bool = False) -> str | None:
        if not isinstance(value, str) or not PATH.match(value):
            self.fail(f"{value!r} is not a field path (an attribute name or data.<field>)", loc, str(value))
            return None
        if write and not _writable(value):
            self.fail(f"attribute {value!r} cannot be written by a transform (id and time belong to the pipeline)", loc, value)
            return None
        if remove and not _removable(value):
            self.fail(f"attribute {value!r} is required by CloudEvents and cannot be removed or moved", loc, value)
            return None
        return value

    def paths(self, value: Any, loc: Loc, **kw: bool) -> tuple[str, ...] | None:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.fail(f"expected a list of field paths, got {type(value).__name__}", loc)
            return None
        if not value:
            self.fail("empty list", loc)
            return None
        got = [self.path(v, (*loc, i), **kw) for i, v in enumerate(value)]
        if any(g is None for g in got):
            return None
        if len(set(got)) != len(got):
            self.fail("a field is listed twice", loc)
            return None
        return tuple(g for g in got if g is not None)

    def mapping(self, value: Any, loc: Loc) -> Mapping[str, Any] | None:
        if not isinstance(value, Mapping):
            self.fail(f"expected a mapping, got {type(value).__name__}", loc)
            return None
        if not value:
            self.fail("empty mapping", loc)
            return None
        return value

    def model(self, cls: type[BaseModel], value: Any, loc: Loc) -> Any:
        if not isinstance(value, Mapping):
            self.fail(f"expected a mapping ({cls.__name__}), got {type(value).__name__}", loc)
            return None
        try:
            return cls.model_validate(dict(value))
        except ValidationError as exc:
            for err in exc.errors():
                where = tuple(err["loc"])
                field_name = ".".join(map(str, where)) or None
                self.fail(err["msg"].removeprefix("Value error, "), (*loc, *where), field_name)
            return None

    def step(self, raw: Any, loc: Loc) -> Step | None:
        if not isinstance(raw, Mapping):
            self.fail(f"a step is a mapping with one operation ({', '.join(STEP_DOCS)})", loc)
            return None
        ops = [k for k in raw if k in STEP_DOCS]
        unknown = [k for k in raw if k not in STEP_DOCS and k not in ("if_missing", "description")]
        if unknown:
            self.fail(f"unknown transform operation {unknown[0]!r} (known: {', '.join(STEP_DOCS)}, options: if_missing, description)",
                      (*loc, unknown[0]))
            return None
        if len(ops) != 1:
            self.fail(f"a step has exactly one operation, got {ops or 'none'}", loc)
            return None
        op = ops[0]
        if_missing = raw.get("if_missing", "dead_letter")
        if if_missing not in ("dead_letter", "skip"):
            self.fail(f"`if_missing` is dead_letter or skip, got {if_missing!r}", (*loc, "if_missing"), "if_missing")
            return None
        arg = raw[op]
        at = (*loc, op)
        builder = getattr(self, f"op_{op}")
        result: Step | None = builder(arg, at, if_missing)
        return result

    def op_pick(self, arg: Any, loc: Loc, if_missing: str) -> Step | None:
        paths = self.paths(arg, loc)
        if paths is None:
            return None
        attrs = [p for p in paths if not is_data_path(p)]
        if attrs:
            self.fail(f"`pick` keeps data fields; attributes always stay (drop optional ones with `drop`): {attrs[0]!r}", loc, attrs[0])
            return None
        return Pick("pick", if_missing, loc, paths)

    def op_drop(self, arg: Any, loc: Loc, if_missing: str) -> Step | None:
        paths = self.paths(arg, loc, remove=True)
        return Drop("drop", if_missing, loc, paths) if paths is not None else None

    def op_rename(self, arg: Any, loc: Loc, if_missing: str) -> Step | None:
        mapping = self.mapping(arg, loc)
        if mapping is None:
            return None
        pairs = []
        for src, dst in mapping.items():
            s = self.path(src, (*loc, src), remove=True)
            d = self.path(dst, (*loc, src), write=True)
            if s is None or d is None:
                return None
            if under(d, s) or under(s, d):
                self.fail(f"cannot rename {s!r} to {d!r}: one is inside the other", (*loc, src), s)
                return None
            pairs.append((s, d))
        targets = [d for _, d in pairs]
        if len(set(targets)) != len(targets):
            self.fail("two fields renamed to the same name", loc)
            return None
        return Rename("rename", if_missing, loc, tuple(pairs))

    def op_set(self, arg: Any, loc: Loc, if_missing: str) -> Step | None:
        mapping = self.mapping(arg, loc)
        if mapping is None:
            return None
        values = []
        for path, value in mapping.items():
            p = self.path(path, (*loc, path), write=True)
            if p is None:
                return None
            if isinstance(value, list | Mapping):
                self.fail("`set` takes constants (string, number, boolean or null)", (*loc, path), p)
                return None
            if isinstance(value, float) and not math.isfinite(value):
                self.fail("constants must be finite numbers", (*loc, path), p)
                return None
            if not is_data_path(p) and not (isinstance(value, str) and value):
                self.fail(f"attribute {p!r} takes a non-empty string", (*loc, path), p)
                return None
            values.append((p, value))
        return SetConstants("set", if_missing, loc, tuple(values))

    def op_template(self, arg: Any, loc: Loc, if_missing: str) -> Step | None:
        mapping = self.mapping(arg, loc)
        if mapping is None:
            return None
        templates = []
        for path, text in mapping.items():
            p = self.path(path, (*loc, path), write=True)
            if p is None:
                return None
            if not isinstance(text, str):
                self.fail("a template is a string", (*loc, path), p)
                return None
            try:
                parsed = list(string.Formatter().parse(text))
            except ValueError as exc:
                self.fail(f"bad template: {exc}", (*loc, path), p)
                return None
            parts: list[tuple[str, str | None]] = []
            for literal, ref, spec, conversion in parsed:
                if ref is not None:
                    if spec or conversion:
                        self.fail(f"template variable {{{ref}}}: format specs and conversions are not supported", (*loc, path), p)
                        return None
                    if not ref or not PATH.match(ref):
                        self.fail(f"template variable {{{ref}}} is not a field path (an attribute name or data.<field>)", (*loc, path), p)
                        return None
                parts.append((literal, ref))
            templates.append((p, tuple(parts)))
        return Template("template", if_missing, loc, tuple(templates))

    def op_hmac(self, arg: Any, loc: Loc, if_missing: str) -> Step | list[Step] | None:
        if isinstance(arg, str | list):
            paths = self.paths(arg, loc, write=True)
            if paths is None:
                return None
            return _Group("hmac", if_missing, loc, tuple(Hmac("hmac", if_missing, loc, HmacSpec(field=p)) for p in paths))
        spec = self.model(HmacSpec, arg, loc)
        if spec is None or not self._spec_paths(spec, loc, ("field",), ("to",)):
            return None
        return Hmac("hmac", if_missing, loc, spec)

    def _spec_paths(self, spec: Any, loc: Loc, reads: Iterable[str], writes: Iterable[str]) -> bool:
        ok = True
        for name in reads:
            value = getattr(spec, name)
            if value is not None and self.path(value, (*loc, name)) is None:
                ok = False
        for name in writes:
            value = getattr(spec, name)
            if value is not None and self.path(value, (*loc, name), write=True) is None:
                ok = False
        if ok and getattr(spec, "to", None) and getattr(spec, "field", None):
            src = spec.field
            if not _removable(src):
                self.fail(f"`to` moves the value, but attribute {src!r} cannot be removed; hash it in place", (*loc, "to"), src)
                ok = False
        return ok

    def op_mask(self, arg: Any, loc: Loc, if_missing: str) -> Step | None:
        spec = self.model(MaskSpec, arg, loc)
        if spec is None or not self._spec_paths(spec, loc, ("field",), ("to",)):
            return None
        return Mask("mask", if_missing, loc, spec)

    def op_coarsen(self, arg: Any, loc: Loc, if_missing: str) -> Step | None:
        spec = self.model(CoarsenSpec, arg, loc)
        if spec is None or not self._spec_paths(spec, loc, ("field", "lat", "lon"), ()):
            return None
        for name in ("field", "lat", "lon"):
            value = getattr(spec, name)
            if value is not None and not is_data_path(value):
                self.fail("coordinates live under data", (*loc, name), value)
                return None
        return Coarsen("coarsen", if_missing, loc, spec)

    def op_bucket(self, arg: Any, loc: Loc, if_missing: str) -> Step | None:
        spec = self.model(BucketSpec, arg, loc)
        if spec is None or not self._spec_paths(spec, loc, ("field",), ("to",)):
            return None
        if not is_data_path(spec.field):
            self.fail("`bucket` works on numeric data fields", (*loc, "field"), spec.field)
            return None
        return Bucket("bucket", if_missing, loc, spec)

    def op_split(self, arg: Any, loc: Loc, if_missing: str) -> Step | None:
        spec = self.model(SplitSpec, arg, loc)
        if spec is None or not self._spec_paths(spec, loc, ("field",), ("to", "index_to")):
            return None
        for name, value in (("field", spec.field), *((f"by[{i}]", p) for i, p in enumerate(spec.by or ()))):
            if value is not None and (not is_data_path(value) or self.path(value, (*loc, name)) is None):
                self.fail("`split` works on data fields", (*loc, name.split("[")[0]), value)
                return None
        if spec.to is not None and not is_data_path(spec.to):
            self.fail("`split.to` must be a data field", (*loc, "to"), spec.to)
            return None
        return Split("split", if_missing, loc, spec)


@dataclass
class _Group(Step):
    """Several steps written as one (`hmac: [a, b]`)."""

    members: tuple[Step, ...] = ()

    def run(self, frame: Frame, ctx: Context, position: int) -> None:
        for step in self.members:
            if len(frame):
                step.run(frame, ctx, position)


def compile_transform(steps: Sequence[Any], loc: Loc = ()) -> Transform:
    """Compile a route's `transform` list; raises `TransformGroupError` with every mistake."""
    compiler = _StepCompiler()
    compiled: list[Step] = []
    for i, raw in enumerate(steps):
        step = compiler.step(raw, (*loc, i))
        if isinstance(step, Step):
            compiled.append(step)
    if compiler.errors:
        raise TransformGroupError(compiler.errors)
    return Transform(tuple(compiled))


def flat_steps(transform: Transform) -> list[Step]:
    """Steps with groups expanded (for data-policy checks and display)."""
    out: list[Step] = []
    for step in transform.steps:
        out.extend(step.members if isinstance(step, _Group) else (step,))
    return out


class TransformGroupError(ValueError):
    """All errors found in one transform."""

    def __init__(self, errors: list[TransformError]) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors


__all__ = [
    "DATA_PREFIX", "DEFAULT_HMAC_KEY_ENV", "Context", "Frame", "MISSING_FIELD", "Step", "Transform",
    "TransformError", "WRONG_TYPE", "as_text", "coarsen_coordinates", "compile_transform",
    "deterministic_ids", "flat_steps", "text_of",
]
