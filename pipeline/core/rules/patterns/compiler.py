"""The pattern compiler: a route's `match` (YAML/JSON) to nodes, every error with its place,
contradictions under one AND, and the documented operators (the generated reference)."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.core.rules.columns import (
    CONTEXT_ATTRIBUTES,
    is_data_path,
)
from pipeline.core.rules.patterns.leaves import (
    DATA_FIELD,
    EXTENSION_NAME,
    AnythingBut,
    Cidr,
    EqualsIgnoreCase,
    Exact,
    Exists,
    InsideBox,
    InsideCircle,
    InsidePolygon,
    Leaf,
    Loc,
    Numeric,
    PatternError,
    Prefix,
    Suffix,
    Wildcard,
    _describe,
    _is_number,
)
from pipeline.core.rules.patterns.tree import AllOf, AnyOf, FieldCondition, Node, NoneOf


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


class PatternGroupError(PipelineError):
    """All errors found in one pattern."""

    def __init__(self, errors: list[PatternError]) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors
