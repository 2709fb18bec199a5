"""Event patterns with EventBridge semantics, compiled once into vectorised predicates.

A pattern is a mapping from paths to lists of conditions: AND across fields, OR within a
list, an array in the event matches if any element does. Types are strict: a number
matches only numbers, a string only strings, and a missing field matches only
`exists: false`. `$or` / `any`, `all` and `not` compose patterns. Geo operators test
location objects (`data.location` = columns `location.lat` and `location.lon`).

Each leaf runs over a whole column: numeric columns with numpy comparisons, string
columns on their unique values (indexed back to rows), so cost grows with unique values,
not with events.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.batch import BoolArray
from pipeline.rules.columns import (
    CONTEXT_ATTRIBUTES,
    DATA_PREFIX,
    OPAQUE,
    Columns,
    data_key,
    is_data_path,
)

Loc = tuple[str | int, ...]

EARTH_RADIUS_M = 6_371_008.8
EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
DATA_FIELD = re.compile(r"^[A-Za-z0-9_\-]+$")
COMBINATORS = ("$or", "any", "all", "not")


class PatternError(ValueError):
    """A pattern is malformed; `loc` is where inside the route's `match`, `path` the field."""

    def __init__(self, message: str, loc: Loc, path: str | None = None) -> None:
        super().__init__(message)
        self.message, self.loc, self.path = message, loc, path


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    kind = {bool: "boolean", str: "string", int: "number", float: "number",
            list: "list", dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)
    return f"{kind} {value!r}"


# ---------------------------------------------------------------------------------------------
# Leaves: one condition on one field's value.
# ---------------------------------------------------------------------------------------------
class Leaf:
    """A condition on a value. Subclasses say how it runs on each kind of column."""

    #: Shown by `pipeline rules show` and in error messages.
    def describe(self) -> str:
        raise NotImplementedError

    def on_values(self, values: Sequence[Any]) -> BoolArray:
        """Per-value test over Python values (the unique values of an object column)."""
        return np.fromiter((self.test(v) for v in values), dtype=bool, count=len(values))

    def test(self, value: Any) -> bool:
        """The condition on one Python value (the per-event reference semantics)."""
        raise NotImplementedError

    def on_numbers(self, values: np.ndarray) -> BoolArray:
        """The condition on a numeric (int or float) column."""
        return np.zeros(values.shape[0], dtype=bool)

    def on_bools(self, values: np.ndarray) -> BoolArray:
        """The condition on a boolean column."""
        return np.zeros(values.shape[0], dtype=bool)


@dataclass(frozen=True, slots=True)
class Exact(Leaf):
    """Equal to one literal: string to string, number to number, boolean, or null."""

    value: Any

    def describe(self) -> str:
        return repr(self.value)

    def test(self, value: Any) -> bool:
        want = self.value
        if want is None:
            return value is None
        if isinstance(want, bool):
            return isinstance(value, bool) and value is want
        if isinstance(want, str):
            return isinstance(value, str) and value == want
        return _is_number(value) and value == want

    def on_numbers(self, values: np.ndarray) -> BoolArray:
        if _is_number(self.value):
            return np.asarray(values == self.value)
        return np.zeros(values.shape[0], dtype=bool)

    def on_bools(self, values: np.ndarray) -> BoolArray:
        if isinstance(self.value, bool):
            return np.asarray(values == self.value)
        return np.zeros(values.shape[0], dtype=bool)


@dataclass(frozen=True, slots=True)
class Prefix(Leaf):
    """A string starting with `prefix` (optionally ignoring case)."""

    prefix: str
    ignore_case: bool = False

    def describe(self) -> str:
        return f"prefix {self.prefix!r}" + (" (ignore case)" if self.ignore_case else "")

    def test(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        if self.ignore_case:
            return value.casefold().startswith(self.prefix.casefold())
        return value.startswith(self.prefix)


@dataclass(frozen=True, slots=True)
class Suffix(Leaf):
    """A string ending with `suffix` (optionally ignoring case)."""

    suffix: str
    ignore_case: bool = False

    def describe(self) -> str:
        return f"suffix {self.suffix!r}" + (" (ignore case)" if self.ignore_case else "")

    def test(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        if self.ignore_case:
            return value.casefold().endswith(self.suffix.casefold())
        return value.endswith(self.suffix)


@dataclass(frozen=True, slots=True)
class EqualsIgnoreCase(Leaf):
    """A string equal to `text` ignoring case."""

    text: str

    def describe(self) -> str:
        return f"equals-ignore-case {self.text!r}"

    def test(self, value: Any) -> bool:
        return isinstance(value, str) and value.casefold() == self.text.casefold()


@dataclass(frozen=True)
class Wildcard(Leaf):
    """A string matching a pattern where `*` stands for any run of characters (`\\*` is a star)."""

    pattern: str
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts: list[str] = []
        i = 0
        text = self.pattern
        while i < len(text):
            ch = text[i]
            if ch == "\\" and i + 1 < len(text) and text[i + 1] in "*\\":
                parts.append(re.escape(text[i + 1]))
                i += 2
                continue
            parts.append(".*" if ch == "*" else re.escape(ch))
            i += 1
        object.__setattr__(self, "regex", re.compile("".join(parts), re.DOTALL))

    def describe(self) -> str:
        return f"wildcard {self.pattern!r}"

    def test(self, value: Any) -> bool:
        return isinstance(value, str) and self.regex.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Numeric(Leaf):
    """A number within bounds (`lower`/`upper`, each inclusive or not; None = unbounded)."""

    lower: float | None = None
    lower_inclusive: bool = False
    upper: float | None = None
    upper_inclusive: bool = False

    def describe(self) -> str:
        parts = []
        if self.lower is not None and self.lower == self.upper:
            return f"numeric = {self.lower:g}"
        if self.lower is not None:
            parts.append(f"{'>=' if self.lower_inclusive else '>'} {self.lower:g}")
        if self.upper is not None:
            parts.append(f"{'<=' if self.upper_inclusive else '<'} {self.upper:g}")
        return "numeric " + " and ".join(parts)

    def is_empty(self) -> bool:
        """True if no number satisfies the bounds."""
        if self.lower is None or self.upper is None:
            return False
        if self.lower > self.upper:
            return True
        return self.lower == self.upper and not (self.lower_inclusive and self.upper_inclusive)

    def test(self, value: Any) -> bool:
        if not _is_number(value) or value != value:  # NaN is no number to compare
            return False
        if self.lower is not None and (value < self.lower or (value == self.lower and not self.lower_inclusive)):
            return False
        return not (self.upper is not None
                    and (value > self.upper or (value == self.upper and not self.upper_inclusive)))

    def on_numbers(self, values: np.ndarray) -> BoolArray:
        mask = np.ones(values.shape[0], dtype=bool)
        if self.lower is not None:
            mask &= (values >= self.lower) if self.lower_inclusive else (values > self.lower)
        if self.upper is not None:
            mask &= (values <= self.upper) if self.upper_inclusive else (values < self.upper)
        return mask


@dataclass(frozen=True, slots=True)
class Cidr(Leaf):
    """A string IP address inside a network (`10.0.0.0/8`)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network

    def describe(self) -> str:
        return f"cidr {self.network}"

    def test(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        try:
            return ipaddress.ip_address(value) in self.network
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class AnythingBut(Leaf):
    """Any present value the inner conditions reject (the field must exist)."""

    inner: tuple[Leaf, ...]

    def describe(self) -> str:
        return "anything-but " + " | ".join(leaf.describe() for leaf in self.inner)

    def test(self, value: Any) -> bool:
        return not any(leaf.test(value) for leaf in self.inner)

    def on_numbers(self, values: np.ndarray) -> BoolArray:
        hit = np.zeros(values.shape[0], dtype=bool)
        for leaf in self.inner:
            hit |= leaf.on_numbers(values)
        return ~hit

    def on_bools(self, values: np.ndarray) -> BoolArray:
        hit = np.zeros(values.shape[0], dtype=bool)
        for leaf in self.inner:
            hit |= leaf.on_bools(values)
        return ~hit


@dataclass(frozen=True, slots=True)
class Exists(Leaf):
    """The field is present (`true`) or absent (`false`)."""

    exists: bool

    def describe(self) -> str:
        return f"exists {str(self.exists).lower()}"

    def test(self, value: Any) -> bool:  # only called for present values
        return self.exists


class GeoLeaf(Leaf):
    """A condition on a location object: vectorised over latitude and longitude columns."""

    def on_geo(self, lat: np.ndarray, lon: np.ndarray) -> BoolArray:
        raise NotImplementedError

    def test(self, value: Any) -> bool:
        if not isinstance(value, Mapping):
            return False
        lat, lon = value.get("lat"), value.get("lon")
        if not (_is_number(lat) and _is_number(lon)):
            return False
        if not (math.isfinite(lat) and math.isfinite(lon)):  # type: ignore[arg-type]
            return False
        return bool(self.on_geo(np.array([lat], dtype=float), np.array([lon], dtype=float))[0])


@dataclass(frozen=True, slots=True)
class InsideCircle(GeoLeaf):
    """Within `radius_m` metres (great-circle distance) of a centre point."""

    lat: float
    lon: float
    radius_m: float

    def describe(self) -> str:
        return f"inside-circle ({self.lat}, {self.lon}) r={self.radius_m:g} m"

    def on_geo(self, lat: np.ndarray, lon: np.ndarray) -> BoolArray:
        # Cheap box around the circle first; the great-circle distance only for rows inside it.
        dlat = math.degrees(self.radius_m / EARTH_RADIUS_M) * 1.01
        widest = min(abs(self.lat) + dlat, 89.0)
        dlon = dlat / math.cos(math.radians(widest))
        if abs(self.lat) + dlat >= 89.0 or abs(self.lon) + dlon >= 180.0:
            candidates = np.flatnonzero(np.isfinite(lat) & np.isfinite(lon))
        else:
            candidates = np.flatnonzero((np.abs(lat - self.lat) <= dlat) & (np.abs(lon - self.lon) <= dlon))
        out = np.zeros(lat.shape[0], dtype=bool)
        if candidates.shape[0]:
            out[candidates] = self._distance(lat[candidates], lon[candidates]) <= self.radius_m
        return out

    def _distance(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        p1, p2 = np.radians(lat), math.radians(self.lat)
        dphi = p1 - p2
        dlmb = np.radians(lon - self.lon)
        a = np.sin(dphi / 2) ** 2 + np.cos(p1) * math.cos(p2) * np.sin(dlmb / 2) ** 2
        return np.asarray(2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0))))


@dataclass(frozen=True, slots=True)
class InsideBox(GeoLeaf):
    """Within a latitude/longitude box; `west > east` means the box crosses the antimeridian."""

    south: float
    west: float
    north: float
    east: float

    def describe(self) -> str:
        return f"inside-box S{self.south} W{self.west} N{self.north} E{self.east}"

    def on_geo(self, lat: np.ndarray, lon: np.ndarray) -> BoolArray:
        in_lat = (lat >= self.south) & (lat <= self.north)
        if self.west <= self.east:
            return np.asarray(in_lat & (lon >= self.west) & (lon <= self.east))
        return np.asarray(in_lat & ((lon >= self.west) | (lon <= self.east)))


@dataclass(frozen=True, slots=True)
class InsidePolygon(GeoLeaf):
    """Inside a simple polygon given as [lat, lon] vertices (even-odd rule)."""

    vertices: tuple[tuple[float, float], ...]

    def describe(self) -> str:
        return f"inside-polygon of {len(self.vertices)} vertices"

    def on_geo(self, lat: np.ndarray, lon: np.ndarray) -> BoolArray:
        lats = [p[0] for p in self.vertices]
        lons = [p[1] for p in self.vertices]
        candidates = np.flatnonzero((lat >= min(lats)) & (lat <= max(lats)) & (lon >= min(lons)) & (lon <= max(lons)))
        out = np.zeros(lat.shape[0], dtype=bool)
        if candidates.shape[0]:
            out[candidates] = self._ray_cast(lat[candidates], lon[candidates])
        return out

    def _ray_cast(self, lat: np.ndarray, lon: np.ndarray) -> BoolArray:
        inside = np.zeros(lat.shape[0], dtype=bool)
        pts = self.vertices
        j = len(pts) - 1
        for i in range(len(pts)):
            (yi, xi), (yj, xj) = pts[i], pts[j]
            crosses = (yi > lat) != (yj > lat)
            if yj != yi:
                x_at = (xj - xi) * (lat - yi) / (yj - yi) + xi
                inside ^= crosses & (lon < x_at)
            j = i
        return inside


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


# ---------------------------------------------------------------------------------------------
# Compiler: YAML/JSON pattern -> nodes, with precise errors.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Operator:
    """A documented operator (used for validation messages and the generated reference)."""

    name: str
    summary: str
    example: str


OPERATORS: tuple[Operator, ...] = (
    Operator("(literal)", "Exact value: string, number, boolean or null; types never coerce (5 does not match \"5\").", 'type: ["fleet.trip.ended"]'),
    Operator("prefix", "String starts with the text; `{prefix: {equals-ignore-case: x}}` ignores case.", 'source: [{prefix: "/vehicles/VF1"}]'),
    Operator("suffix", "String ends with the text; `{suffix: {equals-ignore-case: x}}` ignores case.", 'data: {zone: [{suffix: "-depot"}]}'),
    Operator("equals-ignore-case", "String equal to the text ignoring case.", 'data: {charger_kind: [{equals-ignore-case: "dc"}]}'),
    Operator("wildcard", "String matching a pattern where `*` is any run of characters (`\\*` a literal star; `**` is rejected).", 'type: [{wildcard: "fleet.*.ended"}]'),
    Operator("anything-but", "Present value other than the given value, list, `{prefix}`, `{suffix}`, `{equals-ignore-case}` or `{wildcard}`; a missing field never matches.", 'data: {zone: [{anything-but: ["test-track", "factory"]}]}'),
    Operator("numeric", "Number within comparisons: `[\">\", 0, \"<=\", 5]`, `[\"=\", 3]`; at most one lower and one upper bound; strings never match.", 'data: {soc_pct: [{numeric: ["<", 15]}]}'),
    Operator("exists", "`true`: the field is present (an empty array is not); `false`: it is absent.", 'data: {trip_id: [{exists: true}]}'),
    Operator("cidr", "String IP address inside a network.", 'gatewayip: [{cidr: "10.0.0.0/8"}]'),
    Operator("inside-circle", "Location object within `radius_m` metres of `lat`/`lon`.", 'data: {location: [{inside-circle: {lat: 48.86, lon: 2.35, radius_m: 5000}}]}'),
    Operator("inside-box", "Location object within `south`/`west`/`north`/`east` degrees (west > east crosses the antimeridian).", 'data: {location: [{inside-box: {south: 48.8, west: 2.2, north: 48.9, east: 2.4}}]}'),
    Operator("inside-polygon", "Location object inside a polygon of at least 3 `[lat, lon]` vertices.", 'data: {location: [{inside-polygon: [[48.8, 2.2], [48.9, 2.3], [48.8, 2.4]]}]}'),
    Operator("$or / any", "At least one of a list of patterns matches (at any level).", 'any: [{type: ["fleet.dtc.appeared"]}, {data: {voltage_v: [{numeric: ["<", 11.8]}]}}]'),
    Operator("all", "Every pattern of a list matches.", 'all: [{type: [{prefix: "fleet.charging."}]}, {data: {energy_kwh: [{numeric: [">", 0]}]}}]'),
    Operator("not", "The pattern does not match.", 'not: {data: {zone: ["test-track"]}}'),
)
OPERATOR_NAMES = tuple(op.name for op in OPERATORS if not op.name.startswith(("(", "$", "all", "not")))
NUMERIC_OPS = ("=", "<", "<=", ">", ">=")


class _Compiler:
    def __init__(self) -> None:
        self.errors: list[PatternError] = []

    # -- structure --------------------------------------------------------------------------
    def pattern(self, spec: Any, loc: Loc, prefix: str) -> Node | None:
        if not isinstance(spec, Mapping):
            self.fail(f"a pattern must be a mapping of fields to lists of conditions, got {_describe(spec)}", loc, prefix or None)
            return None
        if not spec:
            self.fail("empty pattern (remove it, or omit `match` to match every event)", loc, prefix or None)
            return None
        children: list[Node] = []
        for key, value in spec.items():
            child_loc = (*loc, key)
            if not isinstance(key, str):
                self.fail(f"field names are strings, got {_describe(key)}", child_loc, prefix or None)
                continue
            node: Node | None
            if key in ("$or", "any", "all"):
                node = self.composition(key, value, child_loc, prefix)
            elif key == "not":
                sub = self.pattern(value, child_loc, prefix)
                node = NoneOf(sub) if sub is not None else None
            else:
                node = self.field(key, value, child_loc, prefix)
            if node is not None:
                children.append(node)
        if len(children) == 1:
            return children[0]
        return AllOf(tuple(children))

    def composition(self, key: str, value: Any, loc: Loc, prefix: str) -> Node | None:
        if not isinstance(value, list) or not value:
            self.fail(f"`{key}` takes a non-empty list of patterns, got {_describe(value)}", loc, prefix or None)
            return None
        subs = [self.pattern(item, (*loc, i), prefix) for i, item in enumerate(value)]
        nodes = tuple(s for s in subs if s is not None)
        if len(nodes) != len(subs):
            return None
        return AllOf(nodes) if key == "all" else AnyOf(nodes)

    def field(self, key: str, value: Any, loc: Loc, prefix: str) -> Node | None:
        parts = key.split(".")
        path = f"{prefix}.{key}" if prefix else key
        if not prefix:
            head = parts[0]
            if head == "data":
                if len(parts) == 1:
                    if not isinstance(value, Mapping):
                        self.fail("`data` takes a mapping of data fields", loc, "data")
                        return None
                    return self.pattern(value, loc, "data")
            elif len(parts) > 1 or not (head in CONTEXT_ATTRIBUTES or EXTENSION_NAME.match(head)):
                self.fail(f"unknown field {key!r}: use a CloudEvents attribute (type, source, subject, ...), "
                          "an extension name (lowercase letters and digits) or data.<field>", loc, key)
                return None
            elif isinstance(value, Mapping):
                self.fail(f"attribute {key!r} is a single value: give a list of conditions, not a mapping", loc, key)
                return None
        bad = [p for p in parts if not DATA_FIELD.match(p)]
        if bad:
            self.fail(f"invalid field name {bad[0]!r} in {key!r}", loc, path)
            return None
        if isinstance(value, Mapping):
            return self.pattern(value, loc, path)
        if isinstance(value, list):
            if not value:
                self.fail("empty list: a field needs at least one condition", loc, path)
                return None
            leaves = [self.leaf(item, (*loc, i), path) for i, item in enumerate(value)]
            if any(leaf is None for leaf in leaves):
                return None
            return FieldCondition(path, tuple(leaf for leaf in leaves if leaf is not None), loc)
        leaf = self.literal(value, loc, path)
        return FieldCondition(path, (leaf,), loc) if leaf is not None else None

    # -- leaves --------------------------------------------------------------------------------
    def literal(self, value: Any, loc: Loc, path: str) -> Leaf | None:
        if value is None or isinstance(value, str | bool):
            return Exact(value)
        if _is_number(value):
            if isinstance(value, float) and not math.isfinite(value):
                self.fail(f"{value!r} is not a number an event can carry", loc, path)
                return None
            return Exact(value)
        self.fail(f"expected a literal or an operator, got {_describe(value)}", loc, path)
        return None

    def leaf(self, item: Any, loc: Loc, path: str) -> Leaf | None:
        if not isinstance(item, Mapping):
            return self.literal(item, loc, path)
        if len(item) != 1:
            self.fail(f"an operator is a mapping with one key, got keys {sorted(map(str, item))}", loc, path)
            return None
        ((op, arg),) = item.items()
        loc = (*loc, op)
        handler: Callable[[Any, Loc, str], Leaf | None] | None = {
            "prefix": self.op_prefix, "suffix": self.op_suffix,
            "equals-ignore-case": self.op_equals_ignore_case, "wildcard": self.op_wildcard,
            "anything-but": self.op_anything_but, "numeric": self.op_numeric,
            "exists": self.op_exists, "cidr": self.op_cidr,
            "inside-circle": self.op_circle, "inside-box": self.op_box,
            "inside-polygon": self.op_polygon,
        }.get(str(op))
        if handler is None:
            self.fail(f"unknown operator {op!r} (known: {', '.join(OPERATOR_NAMES)})", loc, path)
            return None
        if str(op).startswith("inside-") and not is_data_path(path):
            self.fail(f"`{op}` applies to location objects under data (e.g. data.location)", loc, path)
            return None
        return handler(arg, loc, path)

    def _string(self, op: str, arg: Any, loc: Loc, path: str) -> str | None:
        if not isinstance(arg, str):
            self.fail(f"`{op}` takes a string, got {_describe(arg)}", loc, path)
            return None
        return arg

    def _affix(self, op: str, arg: Any, loc: Loc, path: str) -> tuple[str, bool] | None:
        if isinstance(arg, Mapping):
            if list(arg) != ["equals-ignore-case"]:
                self.fail(f"`{op}` takes a string or {{equals-ignore-case: <string>}}", loc, path)
                return None
            text = self._string(f"{op}.equals-ignore-case", arg["equals-ignore-case"], (*loc, "equals-ignore-case"), path)
            return None if text is None else (text, True)
        text = self._string(op, arg, loc, path)
        return None if text is None else (text, False)

    def op_prefix(self, arg: Any, loc: Loc, path: str) -> Leaf | None:
        got = self._affix("prefix", arg, loc, path)
        return Prefix(*got) if got else None

    def op_suffix(self, arg: Any, loc: Loc, path: str) -> Leaf | None:
        got = self._affix("suffix", arg, loc, path)
        return Suffix(*got) if got else None

    def op_equals_ignore_case(self, arg: Any, loc: Loc, path: str) -> Leaf | None:
        text = self._string("equals-ignore-case", arg, loc, path)
        return EqualsIgnoreCase(text) if text is not None else None

    def op_wildcard(self, arg: Any, loc: Loc, path: str) -> Leaf | None:
        text = self._string("wildcard", arg, loc, path)
        if text is None:
            return None
        if "**" in text.replace("\\*", ""):
            self.fail("`wildcard` does not allow consecutive `**`", loc, path)
            return None
        return Wildcard(text)

    def op_exists(self, arg: Any, loc: Loc, path: str) -> Leaf | None:
        if not isinstance(arg, bool):
            self.fail(f"`exists` takes true or false, got {_describe(arg)}", loc, path)
            return None
        return Exists(arg)

    def op_cidr(self, arg: Any, loc: Loc, path: str) -> Leaf | None:
        text = self._string("cidr", arg, loc, path)
        if text is None:
            return None
        try:
            return Cidr(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            self.fail(f"`cidr`: {exc}", loc, path)
            return None

    def op_numeric(self, arg: Any, loc: Loc, path: str) -> Leaf | None:
        if not isinstance(arg, list) or not arg or len(arg) % 2:
            self.fail('`numeric` takes a list of operator/number pairs, e.g. [">", 0, "<=", 5]', loc, path)
            return None
        lower: float | None = None
        upper: float | None = None
        lower_inc = upper_inc = False
        equal = False
        for i in range(0, len(arg), 2):
            op, num = arg[i], arg[i + 1]
            if op not in NUMERIC_OPS:
                self.fail(f"`numeric`: unknown comparison {op!r} (use one of {', '.join(NUMERIC_OPS)})", (*loc, i), path)
                return None
            if not _is_number(num) or not math.isfinite(num):
                self.fail(f"`numeric`: {op!r} needs a number, got {_describe(num)}", (*loc, i + 1), path)
                return None
            if op == "=":
                if len(arg) != 2:
                    self.fail('`numeric`: "=" cannot be combined with other comparisons', loc, path)
                    return None
                equal = True
                lower = upper = float(num)
                lower_inc = upper_inc = True
            elif op in (">", ">="):
                if lower is not None:
                    self.fail("`numeric`: more than one lower bound", loc, path)
                    return None
                lower, lower_inc = float(num), op == ">="
            else:
                if upper is not None:
                    self.fail("`numeric`: more than one upper bound", loc, path)
                    return None
                upper, upper_inc = float(num), op == "<="
        leaf = Numeric(lower, lower_inc, upper, upper_inc)
        if not equal and leaf.is_empty():
            self.fail(f"`numeric`: empty range, lower bound {lower:g} is not below upper bound {upper:g}", loc, path)
            return None
        return leaf

    def op_anything_but(self, arg: Any, loc: Loc, path: str) -> Leaf | None:
        if isinstance(arg, Mapping):
            if len(arg) != 1:
                self.fail("`anything-but` takes a value, a list, or one of {prefix|suffix|equals-ignore-case|wildcard: ...}", loc, path)
                return None
            ((op, inner),) = arg.items()
            inner_loc = (*loc, op)
            if op == "equals-ignore-case" and isinstance(inner, list):
                if not inner:
                    self.fail("`anything-but.equals-ignore-case`: empty list", inner_loc, path)
                    return None
                texts = [self._string("anything-but.equals-ignore-case", t, (*inner_loc, i), path) for i, t in enumerate(inner)]
                if any(t is None for t in texts):
                    return None
                return AnythingBut(tuple(EqualsIgnoreCase(t) for t in texts if t is not None))
            if op == "wildcard" and isinstance(inner, list):
                leaves = [self.op_wildcard(t, (*inner_loc, i), path) for i, t in enumerate(inner)]
                if not leaves or any(leaf is None for leaf in leaves):
                    if not leaves:
                        self.fail("`anything-but.wildcard`: empty list", inner_loc, path)
                    return None
                return AnythingBut(tuple(leaf for leaf in leaves if leaf is not None))
            if op not in ("prefix", "suffix", "equals-ignore-case", "wildcard"):
                self.fail(f"`anything-but` does not take {op!r} (use prefix, suffix, equals-ignore-case or wildcard)", inner_loc, path)
                return None
            leaf = self.leaf({op: inner}, loc, path)
            return AnythingBut((leaf,)) if leaf is not None else None
        items = arg if isinstance(arg, list) else [arg]
        if not items:
            self.fail("`anything-but`: empty list", loc, path)
            return None
        literals: list[Leaf] = []
        for i, item in enumerate(items):
            if isinstance(item, list | Mapping) or item is None or isinstance(item, bool):
                self.fail(f"`anything-but` lists strings or numbers, got {_describe(item)}", (*loc, i) if isinstance(arg, list) else loc, path)
                return None
            lit = self.literal(item, loc, path)
            if lit is None:
                return None
            literals.append(lit)
        return AnythingBut(tuple(literals))

    def _coordinate(self, what: str, value: Any, limit: float, loc: Loc, path: str) -> float | None:
        if not _is_number(value) or not math.isfinite(value) or abs(value) > limit:
            self.fail(f"{what} must be a number within ±{limit:g}, got {_describe(value)}", loc, path)
            return None
        return float(value)

    def op_circle(self, arg: Any, loc: Loc, path: str) -> Leaf | None:
        if not isinstance(arg, Mapping) or set(arg) != {"lat", "lon", "radius_m"}:
            self.fail("`inside-circle` takes {lat, lon, radius_m}", loc, path)
            return None
        lat = self._coordinate("lat", arg["lat"], 90, (*loc, "lat"), path)
        lon = self._coordinate("lon", arg["lon"], 180, (*loc, "lon"), path)
        radius = arg["radius_m"]
        if not _is_number(radius) or not math.isfinite(radius) or radius <= 0:
            self.fail(f"`inside-circle.radius_m` must be a positive number of metres, got {_describe(radius)}", (*loc, "radius_m"), path)
            return None
        if lat is None or lon is None:
            return None
        return InsideCircle(lat, lon, float(radius))

    def op_box(self, arg: Any, loc: Loc, path: str) -> Leaf | None:
        keys = ("south", "west", "north", "east")
        if not isinstance(arg, Mapping) or set(arg) != set(keys):
            self.fail("`inside-box` takes {south, west, north, east}", loc, path)
            return None
        south = self._coordinate("south", arg["south"], 90, (*loc, "south"), path)
        north = self._coordinate("north", arg["north"], 90, (*loc, "north"), path)
        west = self._coordinate("west", arg["west"], 180, (*loc, "west"), path)
        east = self._coordinate("east", arg["east"], 180, (*loc, "east"), path)
        if south is None or north is None or west is None or east is None:
            return None
        if south > north:
            self.fail(f"`inside-box`: south {south:g} is north of north {north:g}", loc, path)
            return None
        return InsideBox(south, west, north, east)

    def op_polygon(self, arg: Any, loc: Loc, path: str) -> Leaf | None:
        if not isinstance(arg, list) or len(arg) < 3:
            self.fail("`inside-polygon` takes a list of at least 3 [lat, lon] vertices", loc, path)
            return None
        vertices: list[tuple[float, float]] = []
        for i, vertex in enumerate(arg):
            if not isinstance(vertex, list) or len(vertex) != 2:
                self.fail(f"vertex {i} must be [lat, lon], got {_describe(vertex)}", (*loc, i), path)
                return None
            lat = self._coordinate("lat", vertex[0], 90, (*loc, i), path)
            lon = self._coordinate("lon", vertex[1], 180, (*loc, i), path)
            if lat is None or lon is None:
                return None
            vertices.append((lat, lon))
        return InsidePolygon(tuple(vertices))

    def fail(self, message: str, loc: Loc, path: str | None) -> None:
        self.errors.append(PatternError(message, loc, path))


# ---------------------------------------------------------------------------------------------
# Contradictions: conditions under one AND that no event can satisfy together.
# ---------------------------------------------------------------------------------------------
def _conjuncts(node: Node) -> Iterator[Node]:
    if isinstance(node, AllOf):
        for child in node.children:
            yield from _conjuncts(child)
    else:
        yield node


def contradictions(node: Node) -> list[tuple[str, Loc, str]]:
    """(path, loc, message) for fields whose AND-ed single conditions can never hold together."""
    found: list[tuple[str, Loc, str]] = []
    by_path: dict[str, list[Leaf]] = {}
    where: dict[str, Loc] = {}
    for child in _conjuncts(node):
        if isinstance(child, FieldCondition) and len(child.leaves) == 1:
            by_path.setdefault(child.path, []).append(child.leaves[0])
            where[child.path] = child.loc
        elif isinstance(child, AnyOf):
            for sub in child.children:
                found.extend(contradictions(sub))
        elif isinstance(child, NoneOf):
            found.extend(contradictions(child.child))
    for path, leaves in by_path.items():
        exists = {leaf.exists for leaf in leaves if isinstance(leaf, Exists)}
        if exists == {True, False}:
            found.append((path, where[path], "`exists: true` and `exists: false` on the same field can never both hold"))
            continue
        others = [leaf for leaf in leaves if not isinstance(leaf, Exists)]
        if False in exists and others:
            found.append((path, where[path], f"`exists: false` contradicts {others[0].describe()} (every other condition needs the field present)"))
            continue
        numerics = [leaf for leaf in others if isinstance(leaf, Numeric)]
        if len(numerics) > 1:
            merged = _intersect(numerics)
            if merged.is_empty():
                found.append((path, where[path], "numeric conditions under the same AND leave an empty range"))
                continue
        exacts = [leaf for leaf in others if isinstance(leaf, Exact)]
        if len({(type(e.value), e.value) for e in exacts}) > 1:
            found.append((path, where[path], f"exact values {', '.join(e.describe() for e in exacts)} under the same AND can never all hold"))
    return found


def _intersect(leaves: list[Numeric]) -> Numeric:
    lower, lower_inc, upper, upper_inc = None, False, None, False
    for leaf in leaves:
        if leaf.lower is not None and (lower is None or leaf.lower > lower
                                       or (leaf.lower == lower and not leaf.lower_inclusive)):
            lower, lower_inc = leaf.lower, leaf.lower_inclusive
        if leaf.upper is not None and (upper is None or leaf.upper < upper
                                       or (leaf.upper == upper and not leaf.upper_inclusive)):
            upper, upper_inc = leaf.upper, leaf.upper_inclusive
    return Numeric(lower, lower_inc, upper, upper_inc)


def compile_pattern(spec: Any, loc: Loc = ()) -> Node:
    """Compile a pattern (the value of a route's `match`); raises `PatternGroupError`."""
    compiler = _Compiler()
    node = compiler.pattern(spec, loc, "")
    if node is not None and not compiler.errors:
        for path, where, message in contradictions(node):
            compiler.errors.append(PatternError(f"contradictory conditions: {message}", where, path))
    if compiler.errors or node is None:
        raise PatternGroupError(compiler.errors)
    return node


class PatternGroupError(ValueError):
    """All errors found in one pattern."""

    def __init__(self, errors: list[PatternError]) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors
