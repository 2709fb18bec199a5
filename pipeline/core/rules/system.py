"""Rules checked against the system: the event types and identities the handlers emit.

A rules file is valid on its own, but it can still be wrong for this fleet: a `type`
pattern with a typo matches nothing (every event then falls to the default route), and a
route under a VIN policy can let out a field a handler built from the VIN (`trip_id` is
`<VIN>-<start>`). Both are warnings of `pipeline rules check`, with file and line: the
handlers' declarations (`emits`, `identity`) are what they are checked against.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pipeline.core.events import FRAME_TYPES
from pipeline.core.rules.loader import CompiledRoute, RuleSet
from pipeline.core.rules.patterns import AnythingBut, Exists, FieldCondition, Leaf, Node, NoneOf
from pipeline.core.rules.policy import check_policy


@dataclass(frozen=True, slots=True)
class Emitter:
    """Something that emits events: a handler (with its file:line) or the vehicles' frames."""

    name: str
    where: str
    types: tuple[str, ...]
    identity: tuple[str, ...] = ()


def frame_emitter() -> Emitter:
    """The vehicles themselves: their sensor and GPS frames."""
    return Emitter("vehicle frames", "pipeline/core/events/encode.py", tuple(FRAME_TYPES.values()))


def handler_emitters(specs: Iterable[object]) -> list[Emitter]:
    """Emitters from loaded handler specs (`pipeline.core.handlers.registry.HandlerSpec`)."""
    out: list[Emitter] = []
    for spec in specs:
        out.append(Emitter(getattr(spec, "name", "?"), getattr(spec, "where", "?"),
                           tuple(getattr(spec, "emits", ())), tuple(getattr(spec, "identity", ()))))
    return out


def _positive_type_conditions(node: Node, negated: bool = False) -> list[FieldCondition]:
    """`type` conditions that select events (those under `not` exclude them instead)."""
    if isinstance(node, FieldCondition):
        return [node] if node.path == "type" and not negated else []
    if isinstance(node, NoneOf):
        return _positive_type_conditions(node.child, not negated)
    out: list[FieldCondition] = []
    for child in getattr(node, "children", ()):
        out.extend(_positive_type_conditions(child, negated))
    return out


def _selects(leaf: Leaf) -> bool:
    return not isinstance(leaf, AnythingBut | Exists)


def _may_match(route: CompiledRoute, types: Sequence[str]) -> bool:
    """True unless the route's type conditions rule out every one of `types`."""
    conditions = _positive_type_conditions(route.predicate)
    leaves = [leaf for c in conditions for leaf in c.leaves if _selects(leaf)]
    if not leaves:
        return True
    return any(leaf.test(t) for leaf in leaves for t in types)


def unknown_type_warnings(ruleset: RuleSet, emitters: Sequence[Emitter]) -> list[str]:
    """Type patterns that no emitter's type matches (a typo routes nothing)."""
    known = sorted({t for e in emitters for t in e.types})
    warnings: list[str] = []
    for route in ruleset.all_routes():
        for condition in _positive_type_conditions(route.predicate):
            for leaf in condition.leaves:
                if _selects(leaf) and not any(leaf.test(t) for t in known):
                    line = route.line_of("match", *condition.loc)
                    warnings.append(f"{route.file}:{line}: route '{route.name}': type pattern {leaf.describe()} "
                                    f"matches no event type a loaded handler or the vehicles emit, so it matches "
                                    f"nothing (a typo?); known types: {', '.join(known)}")
    return warnings


def identity_warnings(ruleset: RuleSet, emitters: Sequence[Emitter]) -> list[str]:
    """Routes under a VIN policy that can emit a handler's identity field unhashed."""
    warnings: list[str] = []
    for route in ruleset.all_routes():
        policy = route.spec.policy
        if policy is None or policy.vin == "allowed":
            continue
        for emitter in emitters:
            if not emitter.identity or not _may_match(route, emitter.types):
                continue
            fields = [f"data.{name}" for name in emitter.identity]
            as_vin = policy.model_copy(update={"vin_fields": fields, "location_fields": [], "forbidden_fields": []})
            for violation in check_policy(as_vin, route.transform):
                line = route.line_of("transform") if route.spec.transform else route.line
                warnings.append(f"{route.file}:{line}: route '{route.name}': '{violation.path}' can carry "
                                f"{', '.join(fields)}, a vehicle identity made by handler {emitter.name} "
                                f"({emitter.where}), unhashed under policy `vin: {policy.vin}`: hmac it or drop it")
    return warnings


def system_warnings(ruleset: RuleSet, emitters: Sequence[Emitter]) -> list[str]:
    """Every warning of the rules against what the system emits."""
    everything = [*emitters, frame_emitter()]
    return unknown_type_warnings(ruleset, everything) + identity_warnings(ruleset, everything)
