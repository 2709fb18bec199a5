"""Pattern nodes: a field with its conditions, and AND / OR / NOT over them, evaluated over
columns (arrays of objects matched element by element) and per event (the reference)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.core.batch import BoolArray
from pipeline.core.rules.columns import (
    DATA_PREFIX,
    OPAQUE,
    Columns,
    data_key,
    is_data_path,
)
from pipeline.core.rules.patterns.leaves import Exists, GeoLeaf, Leaf, Loc


# ---------------------------------------------------------------------------------------------
# Nodes: fields and composition.
# ---------------------------------------------------------------------------------------------
class Node:
    """A compiled pattern node: evaluates to one boolean per event."""

    def evaluate(self, cols: Columns) -> BoolArray:
        raise NotImplementedError

    def test(self, event: Mapping[str, Any]) -> bool:
        """Per-event reference semantics over a nested event dict (attributes + `data`)."""
        raise NotImplementedError

    def fields(self) -> Iterator[FieldCondition]:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class FieldCondition(Node):
    """A field and the conditions of its list: true if any condition holds (OR)."""

    path: str
    leaves: tuple[Leaf, ...]
    loc: Loc = field(default=(), compare=False, repr=False)

    def fields(self) -> Iterator[FieldCondition]:
        yield self

    def evaluate(self, cols: Columns) -> BoolArray:
        key = ("field", self.path, self.leaves)
        cached = cols.memo.get(key)
        if cached is not None:
            return cached
        result = self._evaluate(cols)
        cols.memo[key] = result
        return result

    def _evaluate(self, cols: Columns) -> BoolArray:
        n = cols.n
        root = array_root(cols, self.path)
        if root is not None:
            # A field inside an array of objects (`data.legs.from`): per event, as EventBridge
            # crushes the array (any element may hold the value).
            items, sub = cols.batch.data[root].tolist(), self.path[len(DATA_PREFIX) + len(root) + 1:]
            present = cols.batch.is_present(root).tolist()
            return np.fromiter((self.test_found(*lookup_crushed(v, sub)) if p else self.test_found(False, None)
                                for v, p in zip(items, present, strict=True)), dtype=bool, count=n)
        out = np.zeros(n, dtype=bool)
        exists = [leaf for leaf in self.leaves if isinstance(leaf, Exists)]
        geo = [leaf for leaf in self.leaves if isinstance(leaf, GeoLeaf)]
        values = [leaf for leaf in self.leaves if not isinstance(leaf, Exists | GeoLeaf)]
        if exists:
            present = cols.presence(self.path)
            for e in exists:
                out |= present if e.exists else ~present
        if geo:
            located = cols.geo(self.path)
            if located is not None:
                lat, lon, located_rows = located
                for g in geo:
                    out |= g.on_geo(lat, lon) & located_rows
        if values:
            col = cols.values(self.path)
            if col is None:
                return out
            kind = col.dtype.kind
            if kind in "iuf":
                hit = np.zeros(n, dtype=bool)
                for leaf in values:
                    hit |= leaf.on_numbers(col)
                out |= hit & cols.value_presence(self.path)
            elif kind == "b":
                hit = np.zeros(n, dtype=bool)
                for leaf in values:
                    hit |= leaf.on_bools(col)
                out |= hit & cols.value_presence(self.path)
            else:
                f = cols.factorized(self.path)
                if f is None:
                    return out
                unique_hit = np.zeros(len(f.uniques), dtype=bool)
                for leaf in values:
                    unique_hit |= leaf.on_values(f.uniques)
                unique_hit &= np.fromiter((u is not OPAQUE for u in f.uniques), dtype=bool,
                                          count=len(f.uniques))
                if f.rows is None:
                    out |= unique_hit[f.codes] & cols.value_presence(self.path)
                else:
                    rows = f.rows[unique_hit[f.codes]]
                    hit = np.zeros(n, dtype=bool)
                    hit[rows] = True
                    out |= hit & cols.value_presence(self.path)
        return out

    def test(self, event: Mapping[str, Any]) -> bool:
        return self.test_found(*lookup_crushed(event, self.path))

    def test_found(self, found: bool, value: Any) -> bool:
        """The conditions on a looked-up value (`found` False: the field is absent)."""
        values: list[Any]
        if found and isinstance(value, list | tuple):
            values = []
            _flatten_into(value, values)
            found = bool(values)
        else:
            values = [value]
        for leaf in self.leaves:
            if isinstance(leaf, Exists):
                if leaf.exists == found:
                    return True
            elif found:
                geo = isinstance(leaf, GeoLeaf)
                if any(leaf.test(v) for v in values if geo or type(v) is not dict):
                    return True
        return False


def _flatten_into(value: Any, out: list[Any]) -> None:
    for item in value:
        if isinstance(item, list | tuple):
            _flatten_into(item, out)
        else:
            out.append(item)


def lookup_crushed(node: Any, path: str) -> tuple[bool, Any]:
    """(found, value) of a rule path, crushing arrays of objects on the way, as EventBridge
    does: `legs.from` in `{"legs": [{"from": "A"}, {"from": "B"}]}` is `["A", "B"]`."""
    parts = path.split(".") if path else []
    for i, part in enumerate(parts):
        if isinstance(node, list | tuple):
            items: list[Any] = []
            _flatten_into(node, items)
            rest = ".".join(parts[i:])
            found_any, values = False, list[Any]()
            for item in items:
                found, value = lookup_crushed(item, rest)
                if found:
                    found_any = True
                    values.extend(value if isinstance(value, list | tuple) else [value])
            return found_any, values
        if type(node) is not dict and not isinstance(node, Mapping):
            return False, None
        if part not in node:
            return False, None
        node = node[part]
    return True, node


def array_root(cols: Columns, path: str) -> str | None:
    """The data column holding an array (of objects) that `path` reaches into, if any."""
    if not is_data_path(path):
        return None
    key = data_key(path)
    if key in cols.batch.data:
        return None
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        root = ".".join(parts[:i])
        col = cols.batch.data.get(root)
        if col is not None:
            return root if col.dtype == object else None
    return None


def _element_root(event: Mapping[str, Any], path: str) -> str | None:
    """The prefix of `path` whose value in `event` is an array, if any (per-event twin of `array_root`)."""
    node: Any = event
    parts = path.split(".")
    for i, part in enumerate(parts[:-1]):
        if type(node) is not dict and not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
        if isinstance(node, list | tuple):
            return ".".join(parts[:i + 1])
    return None


def _consistent(conditions: list[FieldCondition], root: str, value: Any) -> bool:
    """True if one element of the array `value` (at `root`) satisfies every condition
    (EventBridge's array consistency: no match from fields of different elements)."""
    items: list[Any] = []
    _flatten_into(value if isinstance(value, list | tuple) else [value], items)
    subs = [c.path[len(root) + 1:] for c in conditions]
    return any(all(c.test_found(*lookup_crushed(item, sub)) for c, sub in zip(conditions, subs, strict=True))
               for item in items)


def lookup(event: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """(found, value) of a rule path in a nested event dict; `None` counts as found (null)."""
    node: Any = event
    for part in path.split("."):
        if type(node) is not dict and not isinstance(node, Mapping):
            return False, None
        if part not in node:
            return False, None
        node = node[part]
    return True, node


@dataclass(frozen=True, slots=True)
class AllOf(Node):
    """Every child matches (AND)."""

    children: tuple[Node, ...]

    def evaluate(self, cols: Columns) -> BoolArray:
        out: BoolArray | None = None
        for child in self.children:
            mask = child.evaluate(cols)
            out = mask.copy() if out is None else out & mask
            if not out.any():
                break
        if out is None:
            return np.ones(cols.n, dtype=bool)
        if out.any():
            for root, conditions in self._by_array_root(cols).items():
                # Fields of one array of objects must match in the same element.
                col, present = cols.batch.data[root], cols.batch.is_present(root)
                rows = np.flatnonzero(out & present)
                values = col[rows].tolist()
                keep = np.fromiter((_consistent(conditions, DATA_PREFIX + root, v) for v in values),
                                   dtype=bool, count=len(values))
                out[rows[~keep]] = False
        return out

    def _by_array_root(self, cols: Columns) -> dict[str, list[FieldCondition]]:
        groups: dict[str, list[FieldCondition]] = {}
        for child in self.children:
            if isinstance(child, FieldCondition):
                root = array_root(cols, child.path)
                if root is not None:
                    groups.setdefault(root, []).append(child)
        return {root: conditions for root, conditions in groups.items() if len(conditions) > 1}

    def test(self, event: Mapping[str, Any]) -> bool:
        if not all(child.test(event) for child in self.children):
            return False
        groups: dict[str, list[FieldCondition]] = {}
        for child in self.children:
            if isinstance(child, FieldCondition):
                root = _element_root(event, child.path)
                if root is not None:
                    groups.setdefault(root, []).append(child)
        for root, conditions in groups.items():
            if len(conditions) > 1 and not _consistent(conditions, root, lookup(event, root)[1]):
                return False
        return True

    def fields(self) -> Iterator[FieldCondition]:
        for child in self.children:
            yield from child.fields()


@dataclass(frozen=True, slots=True)
class AnyOf(Node):
    """At least one child matches (OR)."""

    children: tuple[Node, ...]

    def evaluate(self, cols: Columns) -> BoolArray:
        out = np.zeros(cols.n, dtype=bool)
        for child in self.children:
            out |= child.evaluate(cols)
        return out

    def test(self, event: Mapping[str, Any]) -> bool:
        return any(child.test(event) for child in self.children)

    def fields(self) -> Iterator[FieldCondition]:
        for child in self.children:
            yield from child.fields()


@dataclass(frozen=True, slots=True)
class NoneOf(Node):
    """The child does not match (NOT)."""

    child: Node

    def evaluate(self, cols: Columns) -> BoolArray:
        return ~self.child.evaluate(cols)

    def test(self, event: Mapping[str, Any]) -> bool:
        return not self.child.test(event)

    def fields(self) -> Iterator[FieldCondition]:
        yield from self.child.fields()


MATCH_ALL = AllOf(())


