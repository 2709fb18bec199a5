"""The signal catalog: which VSS signals the fleet sends, in which units, within which limits.

Loaded from `rules/signals.yaml` and validated at start (errors name file, line, signal and
field). Cleaning uses its numpy arrays, indexed by signal, to normalise units and check
ranges and rates for a whole batch at once.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from pipeline.core.errors import ConfigError
from pipeline.core.paths import REPO_ROOT
from pipeline.core.yamlfile import Loc, YamlDoc, load_yaml, parse_yaml

DEFAULT_PATH = REPO_ROOT / "rules" / "signals.yaml"

SignalKind = Literal["sensor", "gps"]
KINDS: tuple[str, ...] = ("sensor", "gps")

# VSS datatypes that can be carried as numbers, with the range each can represent.
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "boolean": (0, 1),
    "int8": (-(2**7), 2**7 - 1),
    "uint8": (0, 2**8 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
DATATYPES: tuple[str, ...] = (*INTEGER_RANGES, "float", "double")

REQUIRED_FIELDS = ("name", "datatype", "unit", "min", "max", "interval_ms", "kind", "description")
OPTIONAL_FIELDS = ("max_rate", "units")
TOP_LEVEL_FIELDS = ("version", "vss_version", "signals")
SUPPORTED_VERSIONS = (1,)

_VSS_NAME = re.compile(r"^Vehicle(\.[A-Z][A-Za-z0-9]*)+$")


@dataclass(frozen=True, slots=True)
class Conversion:
    """How to reach the canonical unit: canonical = value * scale + offset."""

    scale: float
    offset: float = 0.0

    def apply(self, value: Any) -> Any:
        """Convert a value (scalar or array) to the canonical unit."""
        return value * self.scale + self.offset


CANONICAL = Conversion(1.0, 0.0)


@dataclass(frozen=True, slots=True)
class Signal:
    """One catalog entry: a VSS signal with its canonical unit and plausibility limits."""

    name: str
    datatype: str
    unit: str
    min: float
    max: float
    max_rate: float | None
    interval_ms: int
    kind: SignalKind
    description: str
    units: dict[str, Conversion] = field(default_factory=dict)
    line: int | None = None

    @property
    def is_integral(self) -> bool:
        """True for booleans and integer datatypes (values are whole numbers)."""
        return self.datatype in INTEGER_RANGES

    def conversion(self, unit: str) -> Conversion | None:
        """Conversion from `unit` ("" or the canonical unit means none), None if not accepted."""
        if unit == "" or unit == self.unit:
            return CANONICAL
        return self.units.get(unit)


@dataclass(slots=True)
class Catalog:
    """All signals, plus per-signal numpy arrays for vectorised cleaning.

    Arrays are indexed by signal index (position in `names`): `min`, `max`, `max_rate`
    (NaN where a signal has no rate limit), `interval_ms`, `is_gps` and `is_integral`.
    """

    version: int
    vss_version: str
    signals: list[Signal]
    path: Path | None = None
    names: list[str] = field(init=False)
    index: dict[str, int] = field(init=False)
    min: npt.NDArray[np.float64] = field(init=False)
    max: npt.NDArray[np.float64] = field(init=False)
    max_rate: npt.NDArray[np.float64] = field(init=False)
    interval_ms: npt.NDArray[np.int64] = field(init=False)
    is_gps: npt.NDArray[np.bool_] = field(init=False)
    is_integral: npt.NDArray[np.bool_] = field(init=False)
    _by_unit: dict[str, tuple[npt.NDArray[np.intp], npt.NDArray[np.float64], npt.NDArray[np.float64]]] = field(init=False)
    _tables: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = field(init=False)

    def __post_init__(self) -> None:
        sigs = self.signals
        self.names = [s.name for s in sigs]
        self.index = {name: i for i, name in enumerate(self.names)}
        if len(self.index) != len(self.names):
            raise ValueError("duplicate signal names")
        self.min = np.array([s.min for s in sigs], dtype=np.float64)
        self.max = np.array([s.max for s in sigs], dtype=np.float64)
        self.max_rate = np.array([np.nan if s.max_rate is None else s.max_rate for s in sigs],
                                 dtype=np.float64)
        self.interval_ms = np.array([s.interval_ms for s in sigs], dtype=np.int64)
        self.is_gps = np.array([s.kind == "gps" for s in sigs], dtype=bool)
        self.is_integral = np.array([s.is_integral for s in sigs], dtype=bool)
        # unit name -> (signal indexes accepting it, scale, offset); canonical names included.
        grouped: dict[str, list[tuple[int, Conversion]]] = {}
        for i, s in enumerate(sigs):
            if s.unit:
                grouped.setdefault(s.unit, []).append((i, CANONICAL))
            for unit, conv in s.units.items():
                if unit != s.unit:
                    grouped.setdefault(unit, []).append((i, conv))
        self._by_unit = {
            unit: (np.array([i for i, _ in rows], dtype=np.intp),
                   np.array([c.scale for _, c in rows], dtype=np.float64),
                   np.array([c.offset for _, c in rows], dtype=np.float64))
            for unit, rows in grouped.items()
        }
        self._tables = {}

    def __len__(self) -> int:
        return len(self.signals)

    def __contains__(self, name: object) -> bool:
        return name in self.index

    def signal(self, name: str) -> Signal:
        """The entry of a signal by name (KeyError if unknown)."""
        return self.signals[self.index[name]]

    def lookup(self, names: Sequence[str]) -> npt.NDArray[np.int32]:
        """Catalog index of each name, -1 where the name is not in the catalog."""
        get = self.index.get
        return np.fromiter((get(n, -1) for n in names), dtype=np.int32, count=len(names))

    def conversion_table(
        self, unit_names: Sequence[str]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Unit normalisation as arrays: `(scale, offset, ok)`, each `[n_signals, n_units]`.

        For signal s and unit index u (into `unit_names`), canonical value =
        `value * scale[s, u] + offset[s, u]` where `ok[s, u]`; where a signal does not
        accept a unit, ok is False and scale/offset are NaN. Unit "" (index 0 by
        convention) and each signal's own canonical unit are ok with scale 1, offset 0.
        The returned arrays are shared between calls with the same units: do not modify.
        """
        key = tuple(unit_names)
        cached = self._tables.get(key)
        if cached is not None:
            return cached
        n_sig, n_units = len(self.signals), len(key)
        scale = np.full((n_sig, n_units), np.nan, dtype=np.float64)
        offset = np.full((n_sig, n_units), np.nan, dtype=np.float64)
        ok = np.zeros((n_sig, n_units), dtype=bool)
        for u, unit in enumerate(key):
            if unit == "":
                scale[:, u], offset[:, u], ok[:, u] = 1.0, 0.0, True
                continue
            rows = self._by_unit.get(unit)
            if rows is None:
                continue
            idx, sc, off = rows
            scale[idx, u], offset[idx, u], ok[idx, u] = sc, off, True
        for arr in (scale, offset, ok):
            arr.flags.writeable = False
        if len(self._tables) >= 64:  # unit dictionaries are small and repeat; keep it bounded
            self._tables.clear()
        self._tables[key] = (scale, offset, ok)
        return scale, offset, ok

    def of_kind(self, kind: SignalKind) -> list[Signal]:
        """Signals sent in frames of one kind (sensor or gps)."""
        return [s for s in self.signals if s.kind == kind]


# --- loading -----------------------------------------------------------------------------


def _number(value: Any, *, file: str, line: int | None, rule: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"must be a number, got {value!r}", file=file, line=line, rule=rule, field=name)
    out = float(value)
    if not math.isfinite(out):
        raise ConfigError(f"must be finite, got {value!r}", file=file, line=line, rule=rule, field=name)
    return out


def _parse_units(raw: Any, *, doc: YamlDoc, at: Loc, rule: str) -> dict[str, Conversion]:
    file, line = doc.file, doc.line(*at)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("must be a mapping of unit name to scale or {scale, offset}",
                          file=file, line=line, rule=rule, field="units")
    units: dict[str, Conversion] = {}
    for unit, spec in raw.items():
        uline = doc.line(*at, str(unit))
        fname = f"units.{unit}"
        if not unit:
            raise ConfigError("unit name must not be empty", file=file, line=uline, rule=rule, field="units")
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - {"scale", "offset"})
            if unknown:
                raise ConfigError(f"unknown keys {unknown}; expected scale and offset",
                                  file=file, line=uline, rule=rule, field=fname)
            if "scale" not in spec:
                raise ConfigError("missing 'scale'", file=file, line=uline, rule=rule, field=fname)
            scale = _number(spec["scale"], file=file, line=uline, rule=rule, name=f"{fname}.scale")
            offset = _number(spec.get("offset", 0.0), file=file, line=uline, rule=rule, name=f"{fname}.offset")
        else:
            scale = _number(spec, file=file, line=uline, rule=rule, name=fname)
            offset = 0.0
        if scale == 0.0:
            raise ConfigError("scale must not be zero", file=file, line=uline, rule=rule, field=fname)
        units[str(unit)] = Conversion(scale, offset)
    return units


def _parse_signal(raw: Any, *, doc: YamlDoc, position: int) -> Signal:
    file, at = doc.file, ("signals", position)
    line = doc.line(*at)
    if not isinstance(raw, dict):
        raise ConfigError(f"signal #{position + 1} must be a mapping", file=file, line=line, field="signals")
    name = raw.get("name")
    rule = f"signal {name}" if isinstance(name, str) and name else f"signal #{position + 1}"

    def where(key: str) -> int | None:
        return doc.line(*at, key)

    unknown = [k for k in raw if k not in REQUIRED_FIELDS and k not in OPTIONAL_FIELDS]
    if unknown:
        key = unknown[0]
        raise ConfigError(f"unknown key {key!r}; allowed: {', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)}",
                          file=file, line=where(key), rule=rule, field=key)
    for key in REQUIRED_FIELDS:
        if key not in raw:
            raise ConfigError("missing required key", file=file, line=line, rule=rule, field=key)

    if not isinstance(name, str) or not _VSS_NAME.match(name):
        raise ConfigError(f"must be a VSS path like Vehicle.Speed, got {name!r}",
                          file=file, line=where("name"), rule=rule, field="name")
    datatype = raw["datatype"]
    if datatype not in DATATYPES:
        raise ConfigError(f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}",
                          file=file, line=where("datatype"), rule=rule, field="datatype")
    unit = raw["unit"]
    if unit is None:
        unit = ""
    if not isinstance(unit, str):
        raise ConfigError(f"must be a string, got {unit!r}", file=file, line=where("unit"), rule=rule, field="unit")
    lo = _number(raw["min"], file=file, line=where("min"), rule=rule, name="min")
    hi = _number(raw["max"], file=file, line=where("max"), rule=rule, name="max")
    if lo >= hi:
        raise ConfigError(f"min ({raw['min']}) must be below max ({raw['max']})",
                          file=file, line=where("max"), rule=rule, field="max")
    if datatype in INTEGER_RANGES:
        dlo, dhi = INTEGER_RANGES[datatype]
        if lo < dlo:
            raise ConfigError(f"min {raw['min']} is below what {datatype} can hold ({dlo})",
                              file=file, line=where("min"), rule=rule, field="min")
        if hi > dhi:
            raise ConfigError(f"max {raw['max']} is above what {datatype} can hold ({dhi})",
                              file=file, line=where("max"), rule=rule, field="max")
    max_rate: float | None = None
    if raw.get("max_rate") is not None:
        max_rate = _number(raw["max_rate"], file=file, line=where("max_rate"), rule=rule, name="max_rate")
        if max_rate <= 0:
            raise ConfigError(f"must be positive, got {raw['max_rate']}",
                              file=file, line=where("max_rate"), rule=rule, field="max_rate")
    interval = raw["interval_ms"]
    if isinstance(interval, bool) or not isinstance(interval, int):
        raise ConfigError(f"must be a whole number of milliseconds, got {interval!r}",
                          file=file, line=where("interval_ms"), rule=rule, field="interval_ms")
    if interval <= 0:
        raise ConfigError(f"must be positive, got {interval}",
                          file=file, line=where("interval_ms"), rule=rule, field="interval_ms")
    kind = raw["kind"]
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}; expected sensor or gps",
                          file=file, line=where("kind"), rule=rule, field="kind")
    description = raw["description"]
    if not isinstance(description, str) or not description.strip():
        raise ConfigError("must be a non-empty string", file=file, line=where("description"),
                          rule=rule, field="description")
    units = _parse_units(raw.get("units"), doc=doc, at=(*at, "units"), rule=rule)
    if unit in units and units[unit] != CANONICAL:
        raise ConfigError(f"the canonical unit {unit!r} cannot have a conversion",
                          file=file, line=where("units"), rule=rule, field=f"units.{unit}")
    return Signal(name=name, datatype=str(datatype), unit=unit, min=lo, max=hi, max_rate=max_rate,
                  interval_ms=int(interval), kind=kind, description=description.strip(),
                  units=units, line=line)


def parse_catalog(text: str, *, file: str = "<catalog>") -> Catalog:
    """Parse and validate catalog YAML text (ConfigError on any problem)."""
    return _catalog(parse_yaml(text, file))


def _catalog(parsed: YamlDoc) -> Catalog:
    file, doc = parsed.file, parsed.data
    if not isinstance(doc, dict):
        raise ConfigError("the catalog must be a mapping with 'version' and 'signals'", file=file)
    unknown = [k for k in doc if k not in TOP_LEVEL_FIELDS]
    if unknown:
        raise ConfigError(f"unknown top-level key {unknown[0]!r}; allowed: {', '.join(TOP_LEVEL_FIELDS)}",
                          file=file, line=parsed.line(str(unknown[0])), field=str(unknown[0]))
    if "version" not in doc:
        raise ConfigError("missing required key", file=file, line=1, field="version")
    version = doc["version"]
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise ConfigError(f"unsupported catalog version {version!r}; supported: {SUPPORTED_VERSIONS}",
                          file=file, line=parsed.line("version"), field="version")
    raw_signals = doc.get("signals")
    if not isinstance(raw_signals, list) or not raw_signals:
        raise ConfigError("must be a non-empty list of signals", file=file,
                          line=parsed.line("signals"), field="signals")
    signals: list[Signal] = []
    first_line: dict[str, int | None] = {}
    for i, raw in enumerate(raw_signals):
        sig = _parse_signal(raw, doc=parsed, position=i)
        if sig.name in first_line:
            raise ConfigError(f"duplicate signal (first defined at line {first_line[sig.name]})",
                              file=file, line=sig.line, rule=f"signal {sig.name}", field="name")
        first_line[sig.name] = sig.line
        signals.append(sig)
    return Catalog(version=int(version), vss_version=str(doc.get("vss_version", "")), signals=signals)


_cache: dict[Path, tuple[tuple[int, int], Catalog]] = {}
_cache_lock = threading.Lock()


def load_catalog(path: Path | str | None = None) -> Catalog:
    """Load and validate the catalog (default `<repo>/rules/signals.yaml`).

    Cached per file; the file is read again when its modification time or size changes.
    """
    resolved = Path(path if path is not None else DEFAULT_PATH).resolve()
    try:
        st = resolved.stat()
    except FileNotFoundError as exc:
        raise ConfigError("catalog file not found", file=str(resolved)) from exc
    stamp = (st.st_mtime_ns, st.st_size)
    with _cache_lock:
        hit = _cache.get(resolved)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    catalog = _catalog(load_yaml(resolved))
    catalog.path = resolved
    with _cache_lock:
        _cache[resolved] = (stamp, catalog)
    return catalog

