"""Data policies: prove at load time that a route's transform cannot leak what the policy forbids.

The check follows sensitive input fields (the VIN carriers, coordinates, forbidden fields)
through the transform steps symbolically: renamed fields stay sensitive, templates
inherit what they read, `hmac`/`mask` turn a VIN into a pseudonym, `coarsen` and
`bucket` lower coordinate precision, `pick`/`drop`/`set` remove. Whatever sensitive data
can still reach the output is compared with the policy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pipeline.core.rules.columns import is_data_path, under
from pipeline.core.rules.patterns import Loc
from pipeline.core.rules.schema import DataPolicy
from pipeline.core.rules.transform import flat_steps
from pipeline.core.rules.transform import steps as st

NO_VIN, PSEUDONYM, RAW_VIN = 0, 1, 2
VIN_FORMS = {NO_VIN: "no VIN", PSEUDONYM: "a VIN pseudonym", RAW_VIN: "the raw VIN"}
LAT_LON_NAMES = ("lat", "lon", "latitude", "longitude")


@dataclass(frozen=True, slots=True)
class Taint:
    """What an output field may reveal: VIN form, coordinate precision, forbidden input."""

    origin: str
    vin: int = NO_VIN
    precision_m: float | None = None  # None: not a coordinate
    forbidden: bool = False

    def merge(self, other: Taint) -> Taint:
        precision = [p for p in (self.precision_m, other.precision_m) if p is not None]
        return Taint(self.origin, max(self.vin, other.vin), min(precision) if precision else None,
                     self.forbidden or other.forbidden)


@dataclass(frozen=True, slots=True)
class PolicyViolation:
    """A place where the transform lets through what the policy forbids."""

    path: str
    message: str
    loc: Loc


def _is_scalar_coordinate(path: str) -> bool:
    last = path.rsplit(".", 1)[-1]
    return last in LAT_LON_NAMES or last.endswith(("_lat", "_lon"))


def _initial(policy: DataPolicy) -> dict[str, Taint]:
    state: dict[str, Taint] = {}
    for path in policy.vin_fields:
        state[path] = Taint(path, vin=RAW_VIN)
    for path in policy.location_fields:
        if _is_scalar_coordinate(path):
            state[path] = state.get(path, Taint(path)).merge(Taint(path, precision_m=0.0))
        else:
            for part in ("lat", "lon"):
                key = f"{path}.{part}"
                state[key] = state.get(key, Taint(path)).merge(Taint(path, precision_m=0.0))
    for path in policy.forbidden_fields:
        state[path] = state.get(path, Taint(path)).merge(Taint(path, forbidden=True))
    return state


def _remove_under(state: dict[str, Taint], path: str) -> None:
    for key in [k for k in state if under(k, path)]:
        del state[key]


def _gather(state: dict[str, Taint], path: str) -> Taint | None:
    found = [t for k, t in state.items() if under(k, path)]
    if not found:
        return None
    merged = found[0]
    for t in found[1:]:
        merged = merged.merge(t)
    return merged


def _move(state: dict[str, Taint], src: str, dst: str) -> None:
    moved = {dst + k[len(src):]: t for k, t in state.items() if under(k, src)}
    _remove_under(state, src)
    _remove_under(state, dst)
    state.update(moved)


def _apply(state: dict[str, Taint], step: st.Step, policy: DataPolicy) -> None:
    if isinstance(step, st.Pick):
        for key in [k for k in state if is_data_path(k) and not any(under(k, p) for p in step.paths)]:
            del state[key]
    elif isinstance(step, st.Drop):
        for path in step.paths:
            _remove_under(state, path)
    elif isinstance(step, st.Rename):
        for src, dst in step.mapping:
            _move(state, src, dst)
    elif isinstance(step, st.SetConstants):
        for path, _ in step.values:
            _remove_under(state, path)
    elif isinstance(step, st.Template):
        updates: dict[str, Taint | None] = {}
        for path, parts in step.templates:
            taints = [t for _, ref in parts if ref for t in [_gather(state, ref)] if t is not None]
            merged = None
            for t in taints:
                merged = t if merged is None else merged.merge(t)
            # A coordinate pasted into text is still a coordinate at the same precision.
            updates[path] = replace(merged, origin=path) if merged is not None else None
        for path, taint in updates.items():
            _remove_under(state, path)
            if taint is not None:
                state[path] = taint
    elif isinstance(step, st.Hmac | st.Mask):
        spec = step.spec
        taint = _gather(state, spec.field)
        _remove_under(state, spec.field)
        target = spec.to or spec.field
        _remove_under(state, target)
        if taint is not None:
            if isinstance(step, st.Hmac):
                form = PSEUDONYM if taint.vin else NO_VIN
            else:
                visible = step.spec.keep_first + step.spec.keep_last
                form = (PSEUDONYM if visible <= policy.mask_max_visible else RAW_VIN) if taint.vin else NO_VIN
            state[target] = Taint(taint.origin, form, None, taint.forbidden)
    elif isinstance(step, st.Coarsen):
        precision = step.spec.effective_precision_m()
        for key in step.fields():
            taint = state.get(key)
            if taint is not None and taint.precision_m is not None:
                state[key] = replace(taint, precision_m=max(taint.precision_m, precision))
    elif isinstance(step, st.Bucket):
        bucket = step.spec
        taint = _gather(state, bucket.field)
        _remove_under(state, bucket.field)
        target = bucket.to or bucket.field
        _remove_under(state, target)
        if taint is not None:
            grid: float
            if bucket.width is not None:
                grid = bucket.width * 111_320.0
            else:
                edges = bucket.edges or [0.0]
                grid = min((b - a for a, b in zip(edges, edges[1:], strict=False)), default=0.0) * 111_320.0
            bucketed = None if taint.precision_m is None else max(taint.precision_m, grid)
            state[target] = Taint(taint.origin, NO_VIN, bucketed, taint.forbidden)
    elif isinstance(step, st.Split):
        split = step.spec
        target = str(split.to or split.field)
        sources = list(split.by) if split.by is not None else [str(split.field)]
        moved: dict[str, Taint] = {}
        for src in sources:
            for key, taint in state.items():
                if under(key, src):
                    new_key = target + key[len(src):]
                    moved[new_key] = moved[new_key].merge(taint) if new_key in moved else taint
        for src in sources:
            _remove_under(state, src)
        _remove_under(state, target)
        state.update(moved)


def check_policy(policy: DataPolicy, transform: st.Transform, policy_loc: Loc = ("policy",)) -> list[PolicyViolation]:
    """Every sensitive field the transform can still emit against the policy's limits."""
    state = _initial(policy)
    for step in flat_steps(transform):
        _apply(state, step, policy)
    violations: list[PolicyViolation] = []
    seen: set[tuple[str, str]] = set()

    def report(path: str, kind: str, message: str) -> None:
        if (path, kind) not in seen:
            seen.add((path, kind))
            violations.append(PolicyViolation(path, message, policy_loc))

    for key, taint in sorted(state.items()):
        # Report a location object once, not once per coordinate.
        path = key.rsplit(".", 1)[0] if key.endswith((".lat", ".lon")) else key
        if taint.forbidden:
            report(path, "forbidden", f"policy forbids '{taint.origin}', but the transform can still emit it as '{path}': drop it or leave it out of `pick`")
        if taint.vin and policy.vin == "forbidden":
            report(path, "vin", f"policy `vin: forbidden`, but '{path}' can carry {VIN_FORMS[taint.vin]} (from '{taint.origin}'): drop it or `set` a constant")
        elif taint.vin == RAW_VIN and policy.vin == "pseudonym":
            report(path, "vin", f"policy `vin: pseudonym`, but '{path}' can carry the raw VIN (from '{taint.origin}'): `hmac` it, mask it, drop it or `set` a constant")
        if taint.precision_m is not None:
            if policy.location == "forbidden":
                report(path, "location", f"policy `location: forbidden`, but '{path}' can carry coordinates (from '{taint.origin}'): drop it or leave it out of `pick`")
            elif taint.precision_m < policy.location_precision_m:
                finest = "exact" if taint.precision_m == 0 else f"{taint.precision_m:g} m"
                report(path, "location", f"policy needs locations no finer than {policy.location_precision_m:g} m, but '{path}' is {finest} "
                                         f"(from '{taint.origin}'): `coarsen` it to precision_m >= {policy.location_precision_m:g} or drop it")
    return violations
