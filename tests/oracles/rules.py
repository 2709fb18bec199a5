"""A per-event interpreter of the same rules: walks one event dict at a time.

It is the yardstick for the vectorised router: the benchmark runs both on the same
events, and property tests check they agree. Events are CloudEvent-shaped dicts
(attributes plus a nested `data` mapping); the output has the same shape.
"""

from __future__ import annotations

import hashlib
import hmac as hmac_lib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.core.rules.loader import CompiledRoute, RuleSet
from pipeline.core.rules.patterns import lookup
from pipeline.core.rules.schema import DEFAULT_HMAC_KEY_ENV, CoarsenSpec
from pipeline.core.rules.transform import (
    MISSING_FIELD,
    SPLIT_ARRAY_WIDTH,
    WRONG_TYPE,
    Bucket,
    Coarsen,
    Drop,
    Hmac,
    Mask,
    Pick,
    Rename,
    SetConstants,
    Split,
    Step,
    Template,
    _mask_text,
    coarsen_coordinates,
    flat_steps,
    text_of,
)


class _DeadLetter(Exception):
    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason, self.error = reason, error


@dataclass
class ReferenceResult:
    """Per-route output events, dead letters (route, event index, reason) and the unmatched count."""

    per_route: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dead_letters: list[tuple[str, int, str]] = field(default_factory=list)
    unmatched: int = 0


def _present(event: Mapping[str, Any], path: str) -> bool:
    found, value = lookup(event, path)
    if not found:
        return False
    if not path.startswith("data."):
        return value is not None
    return not (isinstance(value, dict) and not value)


def _delete(event: dict[str, Any], path: str) -> None:
    parts = path.split(".")
    node: Any = event
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            return
        node = node[part]
    if isinstance(node, dict):
        node.pop(parts[-1], None)
    _prune(event.get("data"))


def _prune(node: Any) -> None:
    if isinstance(node, dict):
        for key in list(node):
            _prune(node[key])
            if isinstance(node[key], dict) and not node[key]:
                del node[key]


def _set(event: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = event
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _apply_step(step: Step, event: dict[str, Any], keys: Mapping[str, bytes], part: int) -> list[tuple[dict[str, Any], int]]:
    """Apply one step to one event; returns the resulting events (split) with their part index."""
    skip = step.if_missing == "skip"
    for path in step.needs():
        if not _present(event, path):
            if skip:
                return [(event, part)] if not isinstance(step, Template | Rename) else _partial(step, event, keys, part)
            raise _DeadLetter(MISSING_FIELD, f"field '{path}' is missing")
    if isinstance(step, Pick):
        kept: dict[str, Any] = {}
        for path in step.paths:
            found, value = lookup(event, path)
            if found:
                _set(kept, path[len("data."):], _copy(value))
        event["data"] = kept
    elif isinstance(step, Drop):
        for path in step.paths:
            _delete(event, path)
    elif isinstance(step, Rename):
        return _partial(step, event, keys, part)
    elif isinstance(step, SetConstants):
        for path, value in step.values:
            _delete(event, path)
            _set(event, path, value)
    elif isinstance(step, Template):
        return _partial(step, event, keys, part)
    elif isinstance(step, Hmac):
        spec = step.spec
        found, value = lookup(event, spec.field)
        if found and not isinstance(value, dict):
            digest = hmac_lib.new(keys[spec.key_env], text_of(value).encode(), hashlib.sha256).hexdigest()
            _delete(event, spec.field)
            _set(event, spec.to or spec.field, spec.prefix + digest[:spec.length])
    elif isinstance(step, Mask):
        found, value = lookup(event, step.spec.field)
        if found and not isinstance(value, dict):
            _delete(event, step.spec.field)
            _set(event, step.spec.to or step.spec.field, _mask_text(step.spec, value))
    elif isinstance(step, Coarsen):
        lat_path, lon_path = step.fields()
        lat_found, lat = lookup(event, lat_path)
        lon_found, lon = lookup(event, lon_path)
        if lat_found or lon_found:
            if not (_is_number(lat) and _is_number(lon)):
                if not skip:
                    raise _DeadLetter(WRONG_TYPE, f"coarsen: '{lat_path}'/'{lon_path}' are not numbers")
                _delete(event, lat_path)
                _delete(event, lon_path)
            else:
                lat2, lon2 = _coarsen_one(float(lat), float(lon), step.spec)
                _set(event, lat_path, lat2)
                _set(event, lon_path, lon2)
    elif isinstance(step, Bucket):
        bucket = step.spec
        found, value = lookup(event, bucket.field)
        if found:
            if not _is_number(value):
                if not skip:
                    raise _DeadLetter(WRONG_TYPE, f"bucket: '{bucket.field}' is not a number")
                _delete(event, bucket.field)
                return [(event, part)]
            _delete(event, bucket.field)
            if not math.isfinite(value):
                return [(event, part)]
            if bucket.width is not None:
                _set(event, bucket.to or bucket.field, math.floor((value - bucket.offset) / bucket.width) * bucket.width + bucket.offset)
            else:
                labels, edges = bucket.labels or [], bucket.edges or []
                _set(event, bucket.to or bucket.field, labels[int(np.searchsorted(np.asarray(edges, dtype=float), value, side="right"))])
    elif isinstance(step, Split):
        return _split(step, event, part)
    return [(event, part)]


def _coarsen_one(lat: float, lon: float, spec: CoarsenSpec) -> tuple[float, float]:
    lat2, lon2 = coarsen_coordinates(np.array([lat]), np.array([lon]), spec)
    return float(lat2[0]), float(lon2[0])


def _partial(step: Step, event: dict[str, Any], keys: Mapping[str, bytes], part: int) -> list[tuple[dict[str, Any], int]]:
    """Rename and template, which also run (partially) when a field is missing and `skip` is set."""
    if isinstance(step, Rename):
        for src, dst in step.mapping:
            found, value = lookup(event, src)
            if found and _present(event, src):
                _delete(event, src)
                _delete(event, dst)
                _set(event, dst, value)
    elif isinstance(step, Template):
        results: list[tuple[str, str | None]] = []
        for path, parts in step.templates:
            text = ""
            ok = True
            for literal, ref in parts:
                text += literal
                if ref:
                    if not _present(event, ref):
                        ok = False
                        continue
                    text += text_of(lookup(event, ref)[1])
            results.append((path, text if ok else None))
        for path, result in results:
            _delete(event, path)
            if result is not None:
                _set(event, path, result)
    return [(event, part)]


def _split(step: Split, event: dict[str, Any], part: int) -> list[tuple[dict[str, Any], int]]:
    spec = step.spec
    if spec.field is not None:
        found, value = lookup(event, spec.field)
        if not found:
            return [(event, part)]
        values = value if isinstance(value, list) else [value]
        out = []
        for k, item in enumerate(values):
            clone = _copy(event)
            _delete(clone, spec.field)
            _set(clone, spec.to or spec.field, item)
            if spec.index_to:
                _set(clone, spec.index_to, k)
            out.append((clone, part * SPLIT_ARRAY_WIDTH + k))
        return out
    out = []
    paths = list(spec.by or ())
    for k, path in enumerate(paths):
        if not _present(event, path):
            continue
        clone = _copy(event)
        value = lookup(event, path)[1]
        for other in paths:
            _delete(clone, other)
        _delete(clone, str(spec.to))
        _set(clone, str(spec.to), _copy(value))
        if spec.index_to:
            _set(clone, spec.index_to, path.rsplit(".", 1)[-1])
        out.append((clone, part * len(paths) + k))
    return out


def _copy(value: Any) -> Any:
    """Copy of nested dicts and lists (cheaper than deepcopy for JSON-like events)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _transform(route: CompiledRoute, event: Mapping[str, Any], keys: Mapping[str, bytes]) -> list[tuple[dict[str, Any], int]]:
    items: list[tuple[dict[str, Any], int]] = [(_copy(dict(event)), 0)]
    for step in flat_steps(route.transform):
        items = [res for item, part in items for res in _apply_step(step, item, keys, part)]
    return items


def route_events(ruleset: RuleSet, events: Sequence[Mapping[str, Any]], hmac_secret: bytes) -> ReferenceResult:
    """Route events one at a time with the same rules: the baseline for the vectorised router."""
    keys = {**ruleset.keys, DEFAULT_HMAC_KEY_ENV: hmac_secret}
    result = ReferenceResult()
    for index, event in enumerate(events):
        matched = False
        for route in ruleset.routes:
            if route.predicate.test(event):
                matched = True
                _emit(route, index, event, keys, result)
        if not matched:
            result.unmatched += 1
            if ruleset.default is not None:
                _emit(ruleset.default, index, event, keys, result)
    return result


def _emit(route: CompiledRoute, index: int, event: Mapping[str, Any], keys: Mapping[str, bytes],
          result: ReferenceResult) -> None:
    try:
        outputs = _transform(route, event, keys)
    except _DeadLetter as dead:
        result.dead_letters.append((route.name, index, dead.reason))
        return
    bucket = result.per_route.setdefault(route.name, [])
    for out, part in outputs:
        out["id"] = f"{event['id']}/{route.name}/{part}"  # as transform.deterministic_ids
        bucket.append(out)
