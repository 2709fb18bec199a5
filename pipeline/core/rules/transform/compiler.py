"""The transform compiler: a route's list of steps (YAML) to a `Transform`, with every error
at its place, and the flat list of steps (for policies and the reference)."""

from __future__ import annotations

import math
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from pipeline.core.errors import PipelineError
from pipeline.core.rules.columns import (
    REQUIRED_ATTRIBUTES,
    is_data_path,
    under,
)
from pipeline.core.rules.patterns import Loc
from pipeline.core.rules.schema import (
    PATH,
    STEP_DOCS,
    BucketSpec,
    CoarsenSpec,
    HmacSpec,
    MaskSpec,
    SplitSpec,
)
from pipeline.core.rules.transform import steps as st
from pipeline.core.rules.transform.frame import (
    OPTIONAL_ATTRIBUTES_FIXED,
    WRITABLE_ATTRIBUTES_FIXED,
    Frame,
    TransformError,
)


# ---------------------------------------------------------------------------------------------
# Compiler
# ---------------------------------------------------------------------------------------------
def _writable(path: str) -> bool:
    return is_data_path(path) or path in WRITABLE_ATTRIBUTES_FIXED or (
        path not in REQUIRED_ATTRIBUTES and path not in ("specversion", "datacontenttype") and bool(PATH.match(path)))


def _removable(path: str) -> bool:
    return is_data_path(path) or path in OPTIONAL_ATTRIBUTES_FIXED or (
        path not in REQUIRED_ATTRIBUTES and path not in ("specversion", "datacontenttype", "type", "source")
        and bool(PATH.match(path)))


class _StepCompiler:
    def __init__(self) -> None:
        self.errors: list[TransformError] = []

    def fail(self, message: str, loc: Loc, path: str | None = None) -> None:
        self.errors.append(TransformError(message, loc, path))

    def path(self, value: Any, loc: Loc, *, write: bool = False, remove: bool = False) -> str | None:
        if not isinstance(value, str) or not PATH.match(value):
            self.fail(f"{value!r} is not a field path (an attribute name or data.<field>)", loc, str(value))
            return None
        if write and not _writable(value):
            self.fail(f"attribute {value!r} cannot be written by a transform (id and time belong to the pipeline)", loc, value)
            return None
        if remove and not _removable(value):
            self.fail(f"attribute {value!r} is required by CloudEvents and cannot be removed or moved", loc, value)
            return None
        return value

    def paths(self, value: Any, loc: Loc, **kw: bool) -> tuple[str, ...] | None:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.fail(f"expected a list of field paths, got {type(value).__name__}", loc)
            return None
        if not value:
            self.fail("empty list", loc)
            return None
        got = [self.path(v, (*loc, i), **kw) for i, v in enumerate(value)]
        if any(g is None for g in got):
            return None
        if len(set(got)) != len(got):
            self.fail("a field is listed twice", loc)
            return None
        return tuple(g for g in got if g is not None)

    def mapping(self, value: Any, loc: Loc) -> Mapping[str, Any] | None:
        if not isinstance(value, Mapping):
            self.fail(f"expected a mapping, got {type(value).__name__}", loc)
            return None
        if not value:
            self.fail("empty mapping", loc)
            return None
        return value

    def model(self, cls: type[BaseModel], value: Any, loc: Loc) -> Any:
        if not isinstance(value, Mapping):
            self.fail(f"expected a mapping ({cls.__name__}), got {type(value).__name__}", loc)
            return None
        try:
            return cls.model_validate(dict(value))
        except ValidationError as exc:
            for err in exc.errors():
                where = tuple(err["loc"])
                field_name = ".".join(map(str, where)) or None
                self.fail(err["msg"].removeprefix("Value error, "), (*loc, *where), field_name)
            return None

    def step(self, raw: Any, loc: Loc) -> st.Step | None:
        if not isinstance(raw, Mapping):
            self.fail(f"a step is a mapping with one operation ({', '.join(STEP_DOCS)})", loc)
            return None
        ops = [k for k in raw if k in STEP_DOCS]
        unknown = [k for k in raw if k not in STEP_DOCS and k not in ("if_missing", "description")]
        if unknown:
            self.fail(f"unknown transform operation {unknown[0]!r} (known: {', '.join(STEP_DOCS)}, options: if_missing, description)",
                      (*loc, unknown[0]))
            return None
        if len(ops) != 1:
            self.fail(f"a step has exactly one operation, got {ops or 'none'}", loc)
            return None
        op = ops[0]
        if_missing = raw.get("if_missing", "dead_letter")
        if if_missing not in ("dead_letter", "skip"):
            self.fail(f"`if_missing` is dead_letter or skip, got {if_missing!r}", (*loc, "if_missing"), "if_missing")
            return None
        arg = raw[op]
        at = (*loc, op)
        builder = getattr(self, f"op_{op}")
        result: st.Step | None = builder(arg, at, if_missing)
        return result

    def op_pick(self, arg: Any, loc: Loc, if_missing: str) -> st.Step | None:
        paths = self.paths(arg, loc)
        if paths is None:
            return None
        attrs = [p for p in paths if not is_data_path(p)]
        if attrs:
            self.fail(f"`pick` keeps data fields; attributes always stay (drop optional ones with `drop`): {attrs[0]!r}", loc, attrs[0])
            return None
        return st.Pick("pick", if_missing, loc, paths)

    def op_drop(self, arg: Any, loc: Loc, if_missing: str) -> st.Step | None:
        paths = self.paths(arg, loc, remove=True)
        return st.Drop("drop", if_missing, loc, paths) if paths is not None else None

    def op_rename(self, arg: Any, loc: Loc, if_missing: str) -> st.Step | None:
        mapping = self.mapping(arg, loc)
        if mapping is None:
            return None
        pairs = []
        for src, dst in mapping.items():
            s = self.path(src, (*loc, src), remove=True)
            d = self.path(dst, (*loc, src), write=True)
            if s is None or d is None:
                return None
            if under(d, s) or under(s, d):
                self.fail(f"cannot rename {s!r} to {d!r}: one is inside the other", (*loc, src), s)
                return None
            pairs.append((s, d))
        targets = [d for _, d in pairs]
        if len(set(targets)) != len(targets):
            self.fail("two fields renamed to the same name", loc)
            return None
        return st.Rename("rename", if_missing, loc, tuple(pairs))

    def written(self, arg: Any, loc: Loc) -> list[tuple[str, Any, Loc]] | None:
        """Each entry of a mapping from field paths to write to values: (path, value, its
        location); None when the mapping or a path is bad (reported)."""
        mapping = self.mapping(arg, loc)
        if mapping is None:
            return None
        out = []
        for path, value in mapping.items():
            p = self.path(path, (*loc, path), write=True)
            if p is None:
                return None
            out.append((p, value, (*loc, path)))
        return out

    def op_set(self, arg: Any, loc: Loc, if_missing: str) -> st.Step | None:
        entries = self.written(arg, loc)
        if entries is None:
            return None
        values = []
        for p, value, at in entries:
            if isinstance(value, list | Mapping):
                self.fail("`set` takes constants (string, number, boolean or null)", at, p)
                return None
            if isinstance(value, float) and not math.isfinite(value):
                self.fail("constants must be finite numbers", at, p)
                return None
            if not is_data_path(p) and not (isinstance(value, str) and value):
                self.fail(f"attribute {p!r} takes a non-empty string", at, p)
                return None
            values.append((p, value))
        return st.SetConstants("set", if_missing, loc, tuple(values))

    def op_template(self, arg: Any, loc: Loc, if_missing: str) -> st.Step | None:
        entries = self.written(arg, loc)
        if entries is None:
            return None
        templates = []
        for p, text, at in entries:
            if not isinstance(text, str):
                self.fail("a template is a string", at, p)
                return None
            try:
                parsed = list(string.Formatter().parse(text))
            except ValueError as exc:
                self.fail(f"bad template: {exc}", at, p)
                return None
            parts: list[tuple[str, str | None]] = []
            for literal, ref, spec, conversion in parsed:
                if ref is not None:
                    if spec or conversion:
                        self.fail(f"template variable {{{ref}}}: format specs and conversions are not supported", at, p)
                        return None
                    if not ref or not PATH.match(ref):
                        self.fail(f"template variable {{{ref}}} is not a field path (an attribute name or data.<field>)", at, p)
                        return None
                parts.append((literal, ref))
            templates.append((p, tuple(parts)))
        return st.Template("template", if_missing, loc, tuple(templates))

    def op_hmac(self, arg: Any, loc: Loc, if_missing: str) -> st.Step | list[st.Step] | None:
        if isinstance(arg, str | list):
            paths = self.paths(arg, loc, write=True)
            if paths is None:
                return None
            return _Group("hmac", if_missing, loc, tuple(st.Hmac("hmac", if_missing, loc, HmacSpec(field=p)) for p in paths))
        spec = self.model(HmacSpec, arg, loc)
        if spec is None or not self._spec_paths(spec, loc, ("field",), ("to",)):
            return None
        return st.Hmac("hmac", if_missing, loc, spec)

    def _spec_paths(self, spec: Any, loc: Loc, reads: Iterable[str], writes: Iterable[str]) -> bool:
        ok = True
        for name in reads:
            value = getattr(spec, name)
            if value is not None and self.path(value, (*loc, name)) is None:
                ok = False
        for name in writes:
            value = getattr(spec, name)
            if value is not None and self.path(value, (*loc, name), write=True) is None:
                ok = False
        if ok and getattr(spec, "to", None) and getattr(spec, "field", None):
            src = spec.field
            if not _removable(src):
                self.fail(f"`to` moves the value, but attribute {src!r} cannot be removed; hash it in place", (*loc, "to"), src)
                ok = False
        return ok

    def op_mask(self, arg: Any, loc: Loc, if_missing: str) -> st.Step | None:
        spec = self.model(MaskSpec, arg, loc)
        if spec is None or not self._spec_paths(spec, loc, ("field",), ("to",)):
            return None
        return st.Mask("mask", if_missing, loc, spec)

    def op_coarsen(self, arg: Any, loc: Loc, if_missing: str) -> st.Step | None:
        spec = self.model(CoarsenSpec, arg, loc)
        if spec is None or not self._spec_paths(spec, loc, ("field", "lat", "lon"), ()):
            return None
        for name in ("field", "lat", "lon"):
            value = getattr(spec, name)
            if value is not None and not is_data_path(value):
                self.fail("coordinates live under data", (*loc, name), value)
                return None
        return st.Coarsen("coarsen", if_missing, loc, spec)

    def op_bucket(self, arg: Any, loc: Loc, if_missing: str) -> st.Step | None:
        spec = self.model(BucketSpec, arg, loc)
        if spec is None or not self._spec_paths(spec, loc, ("field",), ("to",)):
            return None
        if not is_data_path(spec.field):
            self.fail("`bucket` works on numeric data fields", (*loc, "field"), spec.field)
            return None
        return st.Bucket("bucket", if_missing, loc, spec)

    def op_split(self, arg: Any, loc: Loc, if_missing: str) -> st.Step | None:
        spec = self.model(SplitSpec, arg, loc)
        if spec is None or not self._spec_paths(spec, loc, ("field",), ("to", "index_to")):
            return None
        for name, value in (("field", spec.field), *((f"by[{i}]", p) for i, p in enumerate(spec.by or ()))):
            if value is not None and (not is_data_path(value) or self.path(value, (*loc, name)) is None):
                self.fail("`split` works on data fields", (*loc, name.split("[")[0]), value)
                return None
        if spec.to is not None and not is_data_path(spec.to):
            self.fail("`split.to` must be a data field", (*loc, "to"), spec.to)
            return None
        return st.Split("split", if_missing, loc, spec)


@dataclass
class _Group(st.Step):
    """Several steps written as one (`hmac: [a, b]`)."""

    members: tuple[st.Step, ...] = ()

    def run(self, frame: Frame, ctx: st.Context, position: int) -> None:
        for step in self.members:
            if len(frame):
                step.run(frame, ctx, position)


def compile_transform(steps: Sequence[Any], loc: Loc = ()) -> st.Transform:
    """Compile a route's `transform` list; raises `TransformGroupError` with every mistake."""
    compiler = _StepCompiler()
    compiled: list[st.Step] = []
    for i, raw in enumerate(steps):
        step = compiler.step(raw, (*loc, i))
        if isinstance(step, st.Step):
            compiled.append(step)
    if compiler.errors:
        raise TransformGroupError(compiler.errors)
    return st.Transform(tuple(compiled))


def flat_steps(transform: st.Transform) -> list[st.Step]:
    """Steps with groups expanded (for data-policy checks and display)."""
    out: list[st.Step] = []
    for step in transform.steps:
        out.extend(step.members if isinstance(step, _Group) else (step,))
    return out


class TransformGroupError(PipelineError):
    """All errors found in one transform."""

    def __init__(self, errors: list[TransformError]) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors

