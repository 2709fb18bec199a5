"""Transform steps, one class per operation (pick, drop, rename, set, template, hmac, mask,
coarsen, bucket, split), the `Transform` that runs them, and deterministic event ids."""

from __future__ import annotations

import hmac as hmac_lib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from pipeline.core.batch import BoolArray, IntArray, ObjArray
from pipeline.core.rules.columns import (
    OPAQUE,
    _column,
    data_key,
    is_data_path,
    under,
)
from pipeline.core.rules.patterns import Loc
from pipeline.core.rules.schema import (
    BucketSpec,
    CoarsenSpec,
    HmacSpec,
    MaskSpec,
    SplitSpec,
)
from pipeline.core.rules.transform.frame import (
    _LAZY,
    METRES_PER_DEGREE,
    MISSING_FIELD,
    SPLIT_ARRAY_WIDTH,
    WRONG_TYPE,
    Frame,
    _unique_map,
    as_text,
    text_of,
)


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


