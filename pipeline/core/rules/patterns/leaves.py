"""Pattern leaves: one condition on one field's value (exact, prefix, numeric, cidr, geo, ...),
each evaluated over a whole column; `PatternError` and `Loc` for where a pattern is wrong."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from pipeline.core.batch import BoolArray
from pipeline.core.errors import PipelineError

Loc = tuple[str | int, ...]

EARTH_RADIUS_M = 6_371_008.8
EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
DATA_FIELD = re.compile(r"^[A-Za-z0-9_\-]+$")
COMBINATORS = ("$or", "any", "all", "not")


class PatternError(PipelineError):
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
class _Affix(Leaf):
    """A string starting (`Prefix`) or ending (`Suffix`) with `text`, optionally ignoring case."""

    text: str
    ignore_case: bool = False

    def describe(self) -> str:
        return f"{self._kind} {self.text!r}" + (" (ignore case)" if self.ignore_case else "")

    def test(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        if self.ignore_case:
            return self._has(value.casefold(), self.text.casefold())
        return self._has(value, self.text)

    _kind: ClassVar[str] = ""

    def _has(self, value: str, text: str) -> bool:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Prefix(_Affix):
    """A string starting with `text` (optionally ignoring case)."""

    _kind: ClassVar[str] = "prefix"

    def _has(self, value: str, text: str) -> bool:
        return value.startswith(text)


@dataclass(frozen=True, slots=True)
class Suffix(_Affix):
    """A string ending with `text` (optionally ignoring case)."""

    _kind: ClassVar[str] = "suffix"

    def _has(self, value: str, text: str) -> bool:
        return value.endswith(text)


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


