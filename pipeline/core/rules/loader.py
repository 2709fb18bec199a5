"""Load `rules/routes/*.yaml` into a compiled `RuleSet`, reporting every mistake with its line.

Errors read `file:line: route 'x': field 'y': what is wrong`. All errors of all files are
collected (`check_rules`), so `pipeline rules check` shows them at once; `load_rules`
raises them together as one `RulesError`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.core.errors import ConfigError
from pipeline.core.paths import DLQ_TOPIC, REPO_ROOT, ROUTE_TOPIC_PREFIX
from pipeline.core.rules.patterns import MATCH_ALL, Loc, Node, PatternGroupError, compile_pattern
from pipeline.core.rules.policy import check_policy
from pipeline.core.rules.schema import (
    DEFAULT_HMAC_KEY_ENV,
    PATTERN_WORDS,
    Route,
    TopicTarget,
    WebhookTarget,
)
from pipeline.core.rules.transform import Transform, TransformGroupError, compile_transform
from pipeline.core.yamlfile import YamlDoc, line_in, parse_yaml

DEFAULT_RULES_DIR = REPO_ROOT / "rules" / "routes"
DEFAULT_TOPIC_PREFIX = ROUTE_TOPIC_PREFIX
DEFAULT_DLQ_TOPIC = DLQ_TOPIC


class RulesError(ConfigError):
    """One or more rules files are invalid; `errors` holds each as a `ConfigError`."""

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.detail, file=first.file, line=first.line, rule=first.rule, field=first.field)
        self.errors = errors
        if len(errors) > 1:
            self.args = ("\n".join(str(e) for e in errors),)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


@dataclass(frozen=True)
class CompiledRoute:
    """A validated route with its predicate and transform compiled."""

    spec: Route
    predicate: Node
    transform: Transform
    file: str
    line: int
    # Line of every key and list item of the route, by its place inside the route.
    lines: Mapping[Loc, int] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def line_of(self, *loc: str | int) -> int:
        """Line of a place inside the route (`"match", "type"`), or of the nearest enclosing one."""
        found = line_in(self.lines, loc)
        return found if found is not None else self.line


@dataclass(frozen=True)
class RuleSet:
    """One version of the rules: compiled routes in file order plus the default route."""

    routes: tuple[CompiledRoute, ...]
    default: CompiledRoute | None
    files: tuple[str, ...]
    digest: str
    keys: Mapping[str, bytes] = field(default_factory=dict)
    disabled: tuple[str, ...] = ()

    def all_routes(self) -> list[CompiledRoute]:
        """Routes in service, the default last."""
        return [*self.routes, *((self.default,) if self.default else ())]

    def get(self, name: str) -> CompiledRoute:
        for route in self.all_routes():
            if route.name == name:
                return route
        raise KeyError(name)

    def key_envs(self) -> set[str]:
        """Environment variables holding HMAC keys the transforms need."""
        return {env for r in self.all_routes() for env in r.transform.key_envs()}

    def topics(self) -> list[str]:
        """Every topic the routes deliver or dead-letter to."""
        names = {t.topic for r in self.all_routes() for t in [*r.spec.to, r.spec.dead_letter]
                 if isinstance(t, TopicTarget)}
        return sorted(names)

    def topics_added(self, new: RuleSet) -> list[str]:
        """Topics `new` delivers or dead-letters to that these rules did not (to create on reload)."""
        return sorted(set(new.topics()) - set(self.topics()))


def _field_label(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# --------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------
def rule_files(path: Path) -> list[Path]:
    """The rules files of a directory (`*.yaml`, `*.yml`, not hidden), or the file itself."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir()
                  if p.suffix in (".yaml", ".yml") and not p.name.startswith((".", "_")) and p.is_file())


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class _Checker:
    def __init__(self, topic_prefix: str, dlq_topic: str) -> None:
        self.errors: list[ConfigError] = []
        self.topic_prefix = topic_prefix
        self.dlq_topic = dlq_topic
        self.routes: list[CompiledRoute] = []
        self.disabled: list[str] = []
        self.seen: dict[str, str] = {}

    def error(self, doc: YamlDoc, loc: Loc, message: str, rule: str | None, field_name: str | None) -> None:
        self.errors.append(doc.error(message, *loc, rule=rule, field=field_name))

    def file(self, doc: YamlDoc) -> None:
        self.errors.extend(doc.problems)
        if doc.problems:
            return
        data = doc.data
        if not isinstance(data, Mapping) or "routes" not in data:
            self.error(doc, (), "a rules file is a mapping with a `routes:` list", None, None)
            return
        unknown = [k for k in data if k != "routes"]
        for key in unknown:
            self.error(doc, (key,), f"unknown top-level key {key!r} (a rules file has only `routes:`)", None, str(key))
        routes = data["routes"]
        if not isinstance(routes, list) or not routes:
            self.error(doc, ("routes",), "`routes` must be a non-empty list of routes", None, "routes")
            return
        for i, raw in enumerate(routes):
            self.route(doc, i, raw)

    def route(self, doc: YamlDoc, i: int, raw: Any) -> None:
        base: Loc = ("routes", i)
        name = raw.get("name") if isinstance(raw, Mapping) else None
        label = name if isinstance(name, str) else f"#{i + 1}"
        if not isinstance(raw, Mapping):
            self.error(doc, base, "a route is a mapping (name, match, transform, to, ...)", label, None)
            return
        before = len(self.errors)
        spec: Route | None = None
        try:
            spec = Route.model_validate(dict(raw))
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(err["loc"])
                message = err["msg"].removeprefix("Value error, ")
                if err["type"] == "extra_forbidden":
                    message = f"unknown field (known: {', '.join(Route.model_fields)})" if len(loc) == 1 else "unknown field"
                elif err["type"] == "missing":
                    message = "required field is missing"
                elif err["type"] == "too_short" and "input" in err and err["input"] == []:
                    message = "empty list (give at least one item, or leave the field out)"
                elif err["type"] == "string_pattern_mismatch":
                    message = _pattern_message(err.get("input"), str((err.get("ctx") or {}).get("pattern", "")))
                self.error(doc, (*base, *loc), message, label, _field_label(_dedupe_tags(loc)) or None)
        predicate: Node = MATCH_ALL
        if isinstance(raw.get("match"), Mapping):
            try:
                predicate = compile_pattern(raw["match"])
            except PatternGroupError as exc:
                for perr in exc.errors:
                    self.error(doc, (*base, "match", *perr.loc), perr.message, label,
                               f"match.{perr.path}" if perr.path else "match")
        transform = Transform()
        raw_steps = raw.get("transform")
        if isinstance(raw_steps, list) and raw_steps:
            try:
                transform = compile_transform(raw_steps)
            except TransformGroupError as exc:
                for terr in exc.errors:
                    where = _field_label(("transform", *terr.loc[:1]))
                    self.error(doc, (*base, "transform", *terr.loc), terr.message, label,
                               f"{where}.{terr.path}" if terr.path else where)
        if spec is None:
            return
        self.targets(doc, base, spec, label)
        if len(self.errors) > before:
            return
        if spec.policy is not None:
            for violation in check_policy(spec.policy, transform):
                self.error(doc, (*base, *violation.loc), violation.message, label, violation.path)
        if spec.name in self.seen:
            self.error(doc, (*base, "name"), f"route name already used at {self.seen[spec.name]}", label, "name")
            return
        self.seen[spec.name] = f"{doc.file}:{doc.line(*base, 'name')}"
        if len(self.errors) > before:
            return
        compiled = CompiledRoute(spec, predicate, transform, doc.file, doc.line(*base) or 0, doc.within(*base))
        if spec.enabled:
            self.routes.append(compiled)
        else:
            self.disabled.append(spec.name)

    def targets(self, doc: YamlDoc, base: Loc, spec: Route, label: str) -> None:
        for j, target in enumerate(spec.to):
            if isinstance(target, TopicTarget) and not target.topic.startswith(self.topic_prefix):
                self.error(doc, (*base, "to", j, "topic"),
                           f"unknown topic {target.topic!r}: routed events go to `{self.topic_prefix}*` topics", label, f"to[{j}].topic")
            if isinstance(target, TopicTarget) and self._is_dead_letter_topic(target.topic):
                self.error(doc, (*base, "to", j, "topic"),
                           f"{target.topic!r} is a dead-letter topic; use `dead_letter:` for it", label, f"to[{j}].topic")
        described = [t.describe() for t in spec.to]
        if len(set(described)) != len(described):
            self.error(doc, (*base, "to"), "the same target is listed twice (every event would be delivered twice)", label, "to")
        dead = spec.dead_letter
        if isinstance(dead, TopicTarget) and not (self._is_dead_letter_topic(dead.topic) or dead.topic.startswith(self.topic_prefix)):
            self.error(doc, (*base, "dead_letter", "topic"),
                       f"unknown dead-letter topic {dead.topic!r}: use {self.dlq_topic!r}, a `*.dlq` topic or a `{self.topic_prefix}*` topic",
                       label, "dead_letter.topic")
        if isinstance(dead, WebhookTarget):
            self.error(doc, (*base, "dead_letter"), "a dead-letter target must be durable: a topic or an object prefix, not a webhook",
                       label, "dead_letter")
        if dead.describe() in described:
            self.error(doc, (*base, "dead_letter"), "the dead-letter target is also a delivery target", label, "dead_letter")

    def _is_dead_letter_topic(self, topic: str) -> bool:
        return topic == self.dlq_topic or topic.endswith(".dlq")


def _pattern_message(value: Any, pattern: str) -> str:
    words = PATTERN_WORDS.get(pattern, "it does not have the expected form")
    if value == "":
        return f"is empty: {words}"
    return f"{value!r} is not valid: {words}"


def _dedupe_tags(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    out: list[str | int] = []
    for i, part in enumerate(loc):
        # pydantic puts the union tag before the field: ('to', 0, 'topic', 'topic') -> to[0].topic
        if i + 1 < len(loc) and part in ("topic", "webhook", "object") and loc[i + 1] == part:
            continue
        if part in ("topic", "webhook", "object") and i + 1 < len(loc) and isinstance(loc[i + 1], str):
            continue
        out.append(part)
    return tuple(out)


def check_rules(path: Path | None = None, *, env: Mapping[str, str] | None = None,
                topic_prefix: str = DEFAULT_TOPIC_PREFIX, dlq_topic: str = DEFAULT_DLQ_TOPIC,
                ) -> tuple[RuleSet | None, list[ConfigError]]:
    """Validate and compile the rules; every error found, and the RuleSet if there are none."""
    root = Path(path) if path is not None else DEFAULT_RULES_DIR
    if not root.exists():
        return None, [ConfigError("no such rules file or directory", file=str(root))]
    files = rule_files(root)
    if not files:
        return None, [ConfigError("no rules files (*.yaml) here", file=str(root))]
    checker = _Checker(topic_prefix, dlq_topic)
    digest = hashlib.sha256()
    names: list[str] = []
    for file in files:
        raw = file.read_bytes()
        digest.update(file.name.encode() + b"\0" + raw + b"\0")
        shown = _display(file)
        names.append(shown)
        try:
            doc = parse_yaml(raw, shown, strict=False)
        except ConfigError as exc:
            checker.errors.append(exc)
            continue
        checker.file(doc)
    defaults = [r for r in checker.routes if r.spec.default]
    if len(defaults) > 1:
        for extra in defaults[1:]:
            checker.errors.append(ConfigError(f"only one default route is allowed; {defaults[0].name!r} is already the default",
                                              file=extra.file, line=extra.line, rule=extra.name, field="default"))
    if checker.errors:
        return None, checker.errors
    environ = os.environ if env is None else env
    routes = tuple(r for r in checker.routes if not r.spec.default)
    default = defaults[0] if defaults else None
    wanted = {env_name for r in checker.routes for env_name in r.transform.key_envs()}
    wanted |= {t.secret_env for r in checker.routes for t in r.spec.to if isinstance(t, WebhookTarget) and t.secret_env}
    keys = {name: environ[name].encode() for name in sorted(wanted) if environ.get(name)}
    return RuleSet(routes, default, tuple(names), digest.hexdigest(), keys, tuple(checker.disabled)), []


def load_rules(path: Path | None = None, *, env: Mapping[str, str] | None = None,
               topic_prefix: str = DEFAULT_TOPIC_PREFIX, dlq_topic: str = DEFAULT_DLQ_TOPIC) -> RuleSet:
    """Load and compile the rules under `path` (default `<repo>/rules/routes`); raise `RulesError`."""
    ruleset, errors = check_rules(path, env=env, topic_prefix=topic_prefix, dlq_topic=dlq_topic)
    if errors or ruleset is None:
        raise RulesError(errors)
    return ruleset


__all__ = ["DEFAULT_HMAC_KEY_ENV", "DEFAULT_RULES_DIR", "CompiledRoute", "RuleSet", "RulesError",
           "check_rules", "load_rules", "rule_files"]
