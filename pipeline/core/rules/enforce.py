"""Data policies enforced on values: what a route is about to emit, checked before it leaves.

`policy.py` proves at load time that a transform cannot leak what its route's policy
forbids, but only by following field names. A value can still carry a VIN under another
name (a trip id built from the VIN, a templated reference). So every routed batch of a
route whose policy restricts VINs or locations is checked here, on its output columns,
before encoding:

- `vin: pseudonym | forbidden`: no string attribute or data field holds a raw VIN, exact
  or embedded. The batch's VIN dictionary (every value of the policy's `vin_fields` in the
  batch) is matched, and so is any VIN-shaped text (17 characters of the VIN alphabet with
  letters and digits) the batch did not see. The text of each column is scanned once, as
  its unique values joined into one string, with one regular expression in C; rows are
  only looked at one by one when something was found.
- `location: forbidden`: no output field is a coordinate, by name (`lat`, `lon`,
  `latitude`, `longitude`, `*_lat`, `*_lon`) or by the policy's declared `location_fields`.
- `location_precision_m`: every coordinate pair is on that grid (snapping it again changes
  nothing).

An event that breaks its route's policy is taken out of the route's output and becomes a
dead letter with reason `policy_violation`, naming the field but never its value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import orjson

from pipeline.core.batch import BoolArray, EventBatch, IntArray
from pipeline.core.rules.columns import DATA_PREFIX, under
from pipeline.core.rules.policy import LAT_LON_NAMES
from pipeline.core.rules.schema import CoarsenSpec, DataPolicy
from pipeline.core.rules.transform import METRES_PER_DEGREE

POLICY_VIOLATION = "policy_violation"

#: Runs of the VIN alphabet (ISO 3779: digits and capitals without I, O, Q), 17 or longer.
VIN_RUN = re.compile(r"[A-HJ-NPR-Z0-9]{17,}")
VIN_LENGTH = 17
_HAS_LETTER = re.compile(r"[A-Z]")
_HAS_DIGIT = re.compile(r"[0-9]")
#: Shorter values of a VIN field outside the VIN alphabet are not searched for (too common).
MIN_ODD_VIN = 6
#: VIN-field values remembered across batches (a fleet's VINs recur); past this, start over.
MAX_KNOWN_VALUES = 1_000_000
_VIN_ALPHABET = frozenset("ABCDEFGHJKLMNPRSTUVWXYZ0123456789")
_SEPARATOR = "\x00"  # not a VIN character, so no run spans two joined values
_VIN_CHARS = str.maketrans({chr(i): "V" if chr(i) in _VIN_ALPHABET else "." for i in range(1, 128)})
_RUN_MARK = "V" * 17


def restricts(policy: DataPolicy | None) -> bool:
    """True if a policy asks for any value-level check."""
    return policy is not None and (policy.vin != "allowed" or policy.location == "forbidden"
                                   or policy.location_precision_m > 0)


def vin_shaped(text: str) -> bool:
    """A 17-character run of the VIN alphabet with at least one letter and one digit."""
    return (len(text) == VIN_LENGTH and VIN_RUN.fullmatch(text) is not None
            and _HAS_LETTER.search(text) is not None and _HAS_DIGIT.search(text) is not None)


def vin_runs(text: str) -> Iterator[str]:
    """Every run of 17 or more VIN characters in `text`.

    The text is mapped to a mask in one C pass (`str.translate`) and the runs are found in
    the mask with `str.find`, which is several times faster than a regular expression
    over text full of digits (hex pseudonyms have a 17-digit stretch now and then).
    """
    mask = text.translate(_VIN_CHARS)
    start = mask.find(_RUN_MARK)
    while start >= 0:
        end = start + VIN_LENGTH
        while end < len(mask) and mask[end] == "V":
            end += 1
        yield text[start:end]
        start = mask.find(_RUN_MARK, end)


@dataclass(frozen=True, slots=True)
class Violation:
    """Rows of a route's output that break its policy at one field."""

    rows: BoolArray
    field: str
    message: str  # says what is wrong, never the value


class VinFinder:
    """Finds raw VINs in text: the VINs it learnt (exact or embedded) and VIN-shaped text.

    It learns the values of the policies' VIN fields of every routed event, and keeps them
    across batches, so a fleet's VINs are classified once, not once per batch.
    """

    def __init__(self, vins: Iterable[str] = ()) -> None:
        self.vins: set[str] = set()
        self.odd: tuple[str, ...] = ()
        self._odd: re.Pattern[str] | None = None
        self._seen: set[object] = set()  # every value looked at, None and numbers included
        self.generation = 0  # grows whenever a VIN is learnt: verdicts from before may be stale
        self.learn(vins)

    def learn(self, vins: Iterable[object]) -> None:
        """Add the values of VIN fields; values seen before cost one pass of lookups."""
        if not isinstance(vins, list | tuple | set | frozenset):
            vins = list(vins)
        if self._seen.issuperset(vins):  # the usual case: a fleet's VINs recur batch after batch
            return
        if len(self._seen) + len(vins) > MAX_KNOWN_VALUES:  # a bound, not a cache policy
            self.vins, self.odd, self._odd, self._seen = set(), (), None, set()
        values = set(vins) - self._seen
        self._seen |= values
        texts = {v for v in values if isinstance(v, str) and v}
        if not texts:
            return
        self.generation += 1
        joined = _SEPARATOR.join(texts)
        # Runs never span two values: the separator is not a VIN character. A value with a
        # run inside (`source` is `/vehicles/<VIN>`) contributes that run.
        self.vins.update(VIN_RUN.findall(joined))
        # Values with no run at all are VINs the run scan cannot see (not of the VIN
        # alphabet): they are what is left whole once the runs are taken out.
        odd = {v for v in set(VIN_RUN.sub("", joined).split(_SEPARATOR)) & texts if len(v) >= MIN_ODD_VIN}
        if odd - set(self.odd):
            self.odd = tuple(sorted(odd | set(self.odd), key=lambda v: (-len(v), v)))
            self._odd = re.compile("|".join(map(re.escape, self.odd)))

    def _run_has_vin(self, run: str) -> bool:
        if len(run) == VIN_LENGTH:
            return run in self.vins or vin_shaped(run)
        return any(run[i:i + VIN_LENGTH] in self.vins for i in range(len(run) - VIN_LENGTH + 1))

    def has_vin(self, text: str) -> bool:
        """True if `text` holds a raw VIN anywhere."""
        if any(self._run_has_vin(run) for run in vin_runs(text)):
            return True
        return self._odd is not None and self._odd.search(text) is not None

    def texts_with_vin(self, texts: list[str]) -> set[str]:
        """The texts (of many) that hold a raw VIN; one scan of all of them when none does."""
        if not texts or not self.has_vin(_SEPARATOR.join(texts)):
            return set()
        return {t for t in texts if self.has_vin(t)}


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return None
    return orjson.dumps(value, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _equals_any(values: np.ndarray, columns: list[np.ndarray]) -> bool:
    first, last = values[0], values[-1]
    for other in columns:  # the ends first: columns that differ almost always differ there
        try:
            if (other.shape == values.shape and other[0] == first and other[-1] == last
                    and bool((other == values).all())):
                return True
        except (TypeError, ValueError):  # arrays inside the column: no cheap comparison
            continue
    return False


def column_vin_rows(values: np.ndarray, finder: VinFinder, clean: list[np.ndarray] | None = None) -> BoolArray | None:
    """Rows of a column holding a raw VIN, or None if none does (the usual case, and cheap).

    `clean` holds columns already found clean: a pseudonym is often in `subject`,
    `partitionkey` and a data field alike, and an equal column is not scanned again.
    """
    if values.dtype != object or not values.shape[0]:
        return None
    if clean is not None and _equals_any(values, clean):
        return None
    items = values.tolist()
    try:
        # Joining every value is cheaper than finding the unique ones first, for short texts.
        joined = _SEPARATOR.join(items)
    except TypeError:  # None, numbers, lists or objects among the texts
        try:
            uniques = dict.fromkeys(items)
        except TypeError:  # unhashable values: compare their JSON text
            items = [_text(v) for v in items]
            uniques = dict.fromkeys(items)
        uniques.pop(None, None)
        try:
            joined = _SEPARATOR.join(uniques)  # texts where present, None where absent
        except TypeError:
            joined = _SEPARATOR.join(t for t in map(_text, uniques) if t is not None)
    if not finder.has_vin(joined):
        if clean is not None:
            clean.append(values)
        return None
    texts = [t for t in (_text(u) for u in dict.fromkeys(items)) if t is not None]
    bad = finder.texts_with_vin(texts)
    if not bad:
        return None
    return np.fromiter((_text(v) in bad for v in items), dtype=bool, count=len(items))


def is_coordinate_name(key: str) -> bool:
    """A data column named like a latitude or longitude."""
    last = key.rsplit(".", 1)[-1]
    return last in LAT_LON_NAMES or last.endswith(("_lat", "_lon"))


def _coordinate_pairs(keys: Iterable[str]) -> list[tuple[str, str]]:
    keys = set(keys)
    pairs: list[tuple[str, str]] = []
    for key in sorted(keys):
        head, _, last = key.rpartition(".")
        prefix = f"{head}." if head else ""
        if last in ("lat", "latitude"):
            other = prefix + ("lon" if last == "lat" else "longitude")
        elif last.endswith("_lat"):
            other = prefix + last[:-4] + "_lon"
        else:
            continue
        if other in keys:
            pairs.append((key, other))
    return pairs


class PolicyGuard:
    """Value checks of one batch's routed output; the VIN dictionary is built once per batch."""

    def __init__(self, source: EventBatch, finder: VinFinder) -> None:
        self.source = source
        self.vin_finder = finder
        self._clean: list[np.ndarray] = []  # columns found clean in this batch ...
        self._generation = finder.generation  # ... with the VINs known then

    def finder(self, vin_fields: Iterable[str], rows: IntArray) -> VinFinder:
        """The finder, having learnt the VINs of the source events at `rows` (a route's
        output only derives from those)."""
        learnt: set[int] = set()
        for path in vin_fields:
            if path.startswith(DATA_PREFIX):
                key = path[len(DATA_PREFIX):]
                column = self.source.data.get(key)
                if column is None or column.dtype != object:
                    continue
                values = column[rows]
                mask = self.source.present.get(key)
                if mask is not None:
                    values = values[mask[rows]]
            else:
                column = self.source.attrs.get(path)
                if column is None or column.dtype != object:
                    continue
                if id(column) in learnt:  # handlers share one VIN column for subject and partitionkey
                    continue
                learnt.add(id(column))
                values = column[rows]
            self.vin_finder.learn(values.tolist())
        if self.vin_finder.generation != self._generation:
            self._clean, self._generation = [], self.vin_finder.generation
        return self.vin_finder

    def check(self, out: EventBatch, policy: DataPolicy, source_rows: IntArray) -> list[Violation]:
        """Every field of `out` (a route's output from `source_rows`) that breaks `policy`."""
        found: list[Violation] = []
        n = len(out)
        if not n:
            return found
        if policy.vin != "allowed":
            finder = self.finder(policy.vin_fields, source_rows)
            columns = [(name, values) for name, values in out.attrs.items() if name != "id"]
            columns += [(DATA_PREFIX + key, values) for key, values in out.data.items()]
            for name, values in columns:
                rows = column_vin_rows(values, finder, self._clean)
                if rows is not None and name.startswith(DATA_PREFIX):
                    rows &= out.is_present(name[len(DATA_PREFIX):])
                if rows is not None and rows.any():
                    found.append(Violation(rows, name, f"policy `vin: {policy.vin}`: '{name}' holds a raw VIN (value redacted)"))
        declared = [p[len(DATA_PREFIX):] for p in policy.location_fields if p.startswith(DATA_PREFIX)]
        if policy.location == "forbidden":
            for key in out.data:
                if is_coordinate_name(key) or any(under(key, d) for d in declared):
                    rows = out.is_present(key)
                    if rows.any():
                        found.append(Violation(rows.copy(), DATA_PREFIX + key,
                                               f"policy `location: forbidden`: '{DATA_PREFIX}{key}' holds a coordinate (value redacted)"))
        elif policy.location_precision_m > 0:
            spec = CoarsenSpec(lat="lat", lon="lon", precision_m=policy.location_precision_m)
            for lat_key, lon_key in _coordinate_pairs(out.data):
                rows = self._off_grid(out, lat_key, lon_key, spec)
                if rows.any():
                    name = DATA_PREFIX + lat_key.rpartition(".")[0] if "." in lat_key else DATA_PREFIX + lat_key
                    found.append(Violation(rows, name, f"policy `location_precision_m: {policy.location_precision_m:g}`: "
                                                       f"'{name}' is not on the {policy.location_precision_m:g} m grid (value redacted)"))
        return found

    @staticmethod
    def _off_grid(out: EventBatch, lat_key: str, lon_key: str, spec: CoarsenSpec) -> BoolArray:
        present = out.is_present(lat_key) | out.is_present(lon_key)
        lat_raw, lon_raw = out.data[lat_key], out.data[lon_key]
        if lat_raw.dtype.kind not in "iuf" or lon_raw.dtype.kind not in "iuf":
            # Text or mixed: a coordinate that is not a plain number cannot be shown to be snapped.
            lat_num = np.array([_as_float(v) for v in lat_raw.tolist()])
            lon_num = np.array([_as_float(v) for v in lon_raw.tolist()])
        else:
            lat_num, lon_num = lat_raw.astype(np.float64, copy=False), lon_raw.astype(np.float64, copy=False)
        on_grid = on_coarsen_grid(lat_num, lon_num, float(spec.precision_m or 0.0))
        # `coarsen: {decimals: d}` is accepted at load time when 10^-d degrees is at least the
        # precision, so coordinates rounded that coarsely pass here too.
        decimals = int(np.floor(np.log10(METRES_PER_DEGREE / float(spec.precision_m or 1.0))))
        if decimals >= 0 and not on_grid.all():
            on_grid |= ((np.abs(np.round(lat_num, decimals) - lat_num) <= 1e-9)
                        & (np.abs(np.round(lon_num, decimals) - lon_num) <= 1e-9))
        off: BoolArray = present & ~on_grid
        return off


def on_coarsen_grid(lat: np.ndarray, lon: np.ndarray, precision_m: float) -> BoolArray:
    """Rows whose coordinates `coarsen` at `precision_m` would leave where they are.

    The same grid as `transform.coarsen_coordinates` (latitude steps of `precision_m`,
    longitude steps widened by 1/cos(latitude)), tested without building the snapped
    copies; 1e-6 degrees of slack covers the 6 decimals coarsened values are rounded to.
    """
    step = precision_m / METRES_PER_DEGREE
    with np.errstate(invalid="ignore"):  # NaN is on no grid: it fails the comparisons
        k_lat = np.rint(lat / step)
        snapped_lat = np.clip(k_lat * step, -90.0, 90.0)
        step_lon = step / np.maximum(np.cos(np.radians(snapped_lat)), 0.01)
        lon_ok = _on_steps(lon, step_lon)
        if not lon_ok.all():
            # Longitudes are wrapped to [-180, 180): a grid line past the antimeridian is one too.
            rest = np.flatnonzero(~lon_ok)
            wrapped = lon[rest] - np.copysign(360.0, lon[rest])
            lon_ok[rest] = _on_steps(wrapped, step_lon[rest])
        ok: BoolArray = (np.abs(lat - snapped_lat) <= 1e-6) & lon_ok
    return ok


def _on_steps(values: np.ndarray, step: np.ndarray) -> BoolArray:
    k = values / step
    on: BoolArray = np.abs(k - np.rint(k)) * step <= 1e-6
    return on


def _as_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float("nan")
    return float(value)


def violating_rows(violations: list[Violation], n: int) -> tuple[BoolArray, list[tuple[BoolArray, str]]]:
    """All violating rows, and per violation the rows it is the first reason for."""
    bad = np.zeros(n, dtype=bool)
    first: list[tuple[BoolArray, str]] = []
    for v in violations:
        new = v.rows & ~bad
        if new.any():
            first.append((new, v.message))
            bad |= new
    return bad, first
