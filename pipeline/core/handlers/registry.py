"""The `@handler(...)` decorator and the Registry of loaded handlers.

The decorator only describes a function (`HandlerSpec`, attached as `__handler_spec__`);
the loader collects the described functions of every module in `functions/` into a
`Registry`, which checks names, inputs and outputs and orders handlers so that one
consuming another's events runs after it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.errors import ConfigError

SIGNAL_PREFIX = "Vehicle."
EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$")
HANDLER_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
IDENTITY_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")

DEFAULT_TIMEOUT_MS = 2000
DEFAULT_RETRIES = 1

#: Types a handler declares for the fields of the events it emits; `?` after one marks a
#: field that may be absent (a float field is absent in a row where it is NaN).
FIELD_TYPES = ("string", "number", "integer", "boolean")
#: numpy dtype kinds each field type accepts.
FIELD_KINDS = {"string": "OUS", "number": "fiu", "integer": "iu", "boolean": "b"}
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One declared field of an event's data: dotted name (nesting), type, required or not."""

    name: str
    type: str
    required: bool

    @classmethod
    def parse(cls, name: str, text: str) -> FieldSpec:
        optional = text.endswith("?")
        return cls(name, text.rstrip("?"), not optional)


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """What a handler is: its name, inputs, outputs, state and failure policy."""

    name: str
    fn: Callable[..., Any]
    signals: tuple[str, ...]  # consumed signals (required: must be in the catalog)
    events: tuple[str, ...]  # consumed event types (emitted by other handlers)
    optional: tuple[str, ...]  # signals used when the catalog and batch have them
    emits: tuple[str, ...]
    state: bool
    timeout_ms: int
    retries: int
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    source_file: str = ""
    line: int = 0
    #: event type -> its data fields, where the handler declared them (`emits` as a mapping)
    fields: Mapping[str, tuple[FieldSpec, ...]] = field(default_factory=dict)
    # Data fields of the emitted events that carry a vehicle identity (built from the VIN,
    # like a trip id `<VIN>-<start>`): routes with a VIN policy must not emit them raw.
    identity: tuple[str, ...] = ()

    @property
    def consumes(self) -> tuple[str, ...]:
        return self.signals + self.events

    @property
    def where(self) -> str:
        return f"{self.source_file}:{self.line}" if self.source_file else self.name

    def all_signals(self) -> tuple[str, ...]:
        return self.signals + tuple(s for s in self.optional if s not in self.signals)


def handler(
    *,
    name: str,
    consumes: Sequence[str],
    emits: Sequence[str] | Mapping[str, Mapping[str, str]],
    state: bool = False,
    optional: Sequence[str] = (),
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    retries: int = DEFAULT_RETRIES,
    defaults: Mapping[str, Any] | None = None,
    identity: Sequence[str] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn(batch: HandlerInput, ctx: HandlerContext) -> EventBatch | None` as a handler.

    `consumes` lists VSS signal names (`Vehicle.*`) and/or event types emitted by other
    handlers; `optional` lists signals used only when present; `defaults` are config
    values that `functions/handlers.yaml` may override.

    `emits` lists the event types, or maps each to its data fields and their types
    (`{"fleet.x.y": {"vin": "string", "speed_kmh": "number", "location.lat": "number?"}}`,
    types from FIELD_TYPES, `?` for a field that may be absent). Declared fields are
    checked on every emit and are the source of the event's JSON Schema in the contract
    (`pipeline contract`).
    `identity` names the data fields of the emitted events that carry a vehicle identity
    (`pipeline rules check` warns when a route with a VIN policy lets them out unhashed).
    """
    declared: dict[str, tuple[FieldSpec, ...]] = {}
    if isinstance(emits, Mapping):
        for etype, fields in emits.items():
            declared[etype] = tuple(FieldSpec.parse(k, v) for k, v in (fields or {}).items())

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        code = getattr(fn, "__code__", None)
        source_file = code.co_filename if code is not None else ""
        line = code.co_firstlineno if code is not None else 0
        spec = HandlerSpec(
            name=name,
            fn=fn,
            signals=tuple(c for c in consumes if c.startswith(SIGNAL_PREFIX)),
            events=tuple(c for c in consumes if not c.startswith(SIGNAL_PREFIX)),
            optional=tuple(optional),
            emits=tuple(emits),
            state=bool(state),
            timeout_ms=int(timeout_ms),
            retries=int(retries),
            defaults=dict(defaults or {}),
            description=(inspect.getdoc(fn) or "").split("\n", 1)[0],
            source_file=source_file,
            line=line,
            fields=declared,
            identity=tuple(f.removeprefix("data.") for f in identity),
        )
        check_spec(spec)
        fn.__handler_spec__ = spec  # type: ignore[attr-defined]
        return fn

    return decorate


def emitted_field_errors(spec: HandlerSpec, event_type: str, columns: Mapping[str, Any],
                         present: Mapping[str, Any]) -> list[str]:
    """How emitted data columns break the handler's declaration of `event_type` (none if undeclared).

    A column must be declared and of a dtype its type accepts; a required field must be
    there in every row (`present` holds the rows where an optional column has a value).
    """
    fields = spec.fields.get(event_type)
    if fields is None:
        return []
    declared = {f.name: f for f in fields}
    errors = []
    for name, values in columns.items():
        f = declared.get(name)
        if f is None:
            errors.append(f"{name!r} is not declared (declared: {', '.join(declared) or 'none'})")
            continue
        kind = getattr(values, "dtype", None)
        if kind is not None and kind.kind not in FIELD_KINDS[f.type]:
            errors.append(f"{name!r} is declared {f.type} but has dtype {values.dtype}")
        mask = present.get(name)
        if f.required and mask is not None and not bool(mask.all()):
            errors.append(f"{name!r} is required but absent (NaN) in {int((~mask).sum())} row(s); "
                          f"declare it {f.type}? if it may be absent")
    errors.extend(f"required {f.name!r} not emitted" for f in fields if f.required and f.name not in columns)
    return errors


def handler_source(name: str) -> str:
    """The CloudEvents `source` of the events a handler emits."""
    return f"/handlers/{name}"


def spec_of(fn: Any) -> HandlerSpec | None:
    """The spec a function was decorated with, if any."""
    spec = getattr(fn, "__handler_spec__", None)
    return spec if isinstance(spec, HandlerSpec) else None


def check_spec(spec: HandlerSpec) -> None:
    """Checks that need nothing but the spec; raise ConfigError naming the handler."""

    def fail(message: str, fld: str) -> None:
        raise ConfigError(message, file=spec.source_file or None, line=spec.line or None,
                          rule=f"handler {spec.name}", field=fld)

    if not HANDLER_NAME.match(spec.name):
        fail("name must be lower_snake_case (letters, digits, _)", "name")
    if not spec.consumes:
        fail("consumes must list at least one signal or event type", "consumes")
    for ev in spec.events:
        if not EVENT_TYPE.match(ev):
            fail(f"{ev!r} is neither a VSS signal (Vehicle.*) nor an event type (a.b.c)", "consumes")
    if not spec.emits:
        fail("emits must list at least one event type", "emits")
    for ev in spec.emits:
        if not EVENT_TYPE.match(ev):
            fail(f"{ev!r} is not a valid event type (lower-case dotted, e.g. fleet.driving.x)", "emits")
        if ev.startswith("fleet.vehicle."):
            fail(f"{ev!r}: fleet.vehicle.* is reserved for the vehicles' own frames", "emits")
    for ev, fields in spec.fields.items():
        for f in fields:
            if f.type not in FIELD_TYPES:
                fail(f"{ev}: field {f.name!r} has type {f.type!r}, not one of {', '.join(FIELD_TYPES)} "
                     f"(with ? if it may be absent)", "emits")
            if not FIELD_NAME.match(f.name):
                fail(f"{ev}: {f.name!r} is not a field name (letters, digits, _; dots nest)", "emits")
        names = {f.name for f in fields}
        for f in fields:  # `location` and `location.lat` cannot both be leaves
            parent = f.name.rsplit(".", 1)[0] if "." in f.name else None
            if parent in names:
                fail(f"{ev}: {parent!r} is declared both as a field and as an object of {f.name!r}", "emits")
    if set(spec.events) & set(spec.emits):
        fail("a handler cannot consume an event type it emits", "consumes")
    for name in spec.identity:
        if not IDENTITY_FIELD.match(name):
            fail(f"{name!r} is not a data field name (e.g. trip_id or session.id)", "identity")
    if spec.timeout_ms <= 0:
        fail("timeout_ms must be positive", "timeout_ms")
    if spec.retries < 0:
        fail("retries must be >= 0", "retries")
    if not callable(spec.fn):
        fail("decorated object is not callable", "fn")


class Registry:
    """Handlers by name, in an order where event producers run before their consumers."""

    def __init__(self, specs: Sequence[HandlerSpec] = (), *, errors: Sequence[ConfigError] = ()) -> None:
        self._specs: dict[str, HandlerSpec] = {}
        self._order: list[HandlerSpec] | None = None  # ordered(), until the next add
        self.errors: list[ConfigError] = list(errors)  # files that failed to load
        self.files: dict[str, list[str]] = {}  # source file -> handler names
        for spec in specs:
            self.add(spec)

    def add(self, spec: HandlerSpec) -> None:
        """Add a handler; a second handler of the same name is a ConfigError."""
        other = self._specs.get(spec.name)
        if other is not None:
            raise ConfigError(f"duplicate handler name, already defined at {other.where}",
                              file=spec.source_file or None, line=spec.line or None,
                              rule=f"handler {spec.name}", field="name")
        self._specs[spec.name] = spec
        self._order = None
        self.files.setdefault(spec.source_file, []).append(spec.name)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __getitem__(self, name: str) -> HandlerSpec:
        return self._specs[name]

    def __len__(self) -> int:
        return len(self._specs)

    def __iter__(self) -> Iterator[HandlerSpec]:
        return iter(self.ordered())

    def names(self) -> list[str]:
        return [s.name for s in self.ordered()]

    def validate(self, catalog_names: Collection[str] | None = None) -> list[str]:
        """Cross-handler checks; raises ConfigError, returns warnings.

        Required signals must be in the catalog (when one is given), consumed event types
        should be emitted by some handler (warning only), and event dependencies must
        not form a cycle.
        """
        warnings: list[str] = []
        known = set(catalog_names) if catalog_names is not None else None
        emitted = {e for s in self._specs.values() for e in s.emits}
        for spec in self._specs.values():
            if known is not None:
                missing = [s for s in spec.signals if s not in known]
                if missing:
                    raise ConfigError(f"signal(s) not in the catalog: {', '.join(missing)}",
                                      file=spec.source_file or None, line=spec.line or None,
                                      rule=f"handler {spec.name}", field="consumes")
                absent = [s for s in spec.optional if s not in known]
                if absent:
                    warnings.append(f"handler {spec.name}: optional signal(s) not in the catalog, "
                                    f"unused: {', '.join(absent)}")
            for ev in spec.events:
                if ev not in emitted:
                    warnings.append(f"handler {spec.name}: no loaded handler emits {ev}")
        self.ordered()  # raises on a cycle
        return warnings

    def ordered(self) -> list[HandlerSpec]:
        """Topological order by event dependencies, ties broken by name (deterministic)."""
        if self._order is None:
            self._order = self._topological()
        return list(self._order)

    def _topological(self) -> list[HandlerSpec]:
        producers: dict[str, set[str]] = {}
        for spec in self._specs.values():
            for ev in spec.emits:
                producers.setdefault(ev, set()).add(spec.name)
        deps = {s.name: {p for ev in s.events for p in producers.get(ev, set())} - {s.name}
                for s in self._specs.values()}
        order: list[HandlerSpec] = []
        done: set[str] = set()
        pending = sorted(deps)
        while pending:
            ready = [n for n in pending if deps[n] <= done]
            if not ready:
                spec = self._specs[pending[0]]
                raise ConfigError(f"event dependency cycle among: {', '.join(pending)}",
                                  file=spec.source_file or None, line=spec.line or None,
                                  rule=f"handler {spec.name}", field="consumes")
            for n in ready:
                order.append(self._specs[n])
                done.add(n)
            pending = [n for n in pending if n not in done]
        return order

    def with_file(self, source_file: str, specs: Sequence[HandlerSpec]) -> Registry:
        """A copy where the handlers of one file are replaced by `specs`."""
        kept = [s for s in self._specs.values() if s.source_file != source_file]
        reg = Registry(kept)
        for spec in specs:
            reg.add(spec)
        reg.errors = [e for e in self.errors if e.file != source_file]
        return reg

    def without_file(self, source_file: str) -> Registry:
        return self.with_file(source_file, [])
