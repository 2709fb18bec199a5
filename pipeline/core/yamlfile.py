"""YAML files with line numbers: the one loader of every configuration file.

`parse_yaml` (text) and `load_yaml` (a file) give a `YamlDoc`: the data as plain Python
(safe YAML: dicts, lists, scalars) plus the line of every mapping key and list item by its
path from the root (`("routes", 0, "to")`; keys are strings, list items ints). A syntax
error, a duplicate key or a key that is not a scalar is a `ConfigError` with file and line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.errors import ConfigError

Loc = tuple[str | int, ...]

# The C parser when PyYAML has it (rules reload on every change), the same results otherwise.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def line_in(lines: Mapping[Loc, int], path: Iterable[str | int]) -> int | None:
    """Line of the deepest place of `path` that `lines` knows, None if it knows none of it.

    Parts it does not know are skipped, so a validator's path with extra parts (pydantic's
    union tags) still finds its line; a list index may be given as int or as digits.
    """
    found: list[str | int] = []
    best: int | None = None
    for part in path:
        for candidate in _spellings(part):
            line = lines.get((*found, candidate))
            if line is not None:
                found.append(candidate)
                best = line
                break
    return best


def _spellings(part: str | int) -> tuple[str | int, ...]:
    if isinstance(part, int) and not isinstance(part, bool):
        return (part, str(part))
    text = str(part)
    return (text, int(text)) if text.isdigit() else (text,)


@dataclass(frozen=True)
class YamlDoc:
    """A parsed YAML file: `data`, and `lines` (path -> line) of every key and list item.

    `lines[()]` is the line where the document starts. `problems` holds duplicate or
    non-scalar keys when parsed with `strict=False` (otherwise they raise); the data then
    keeps the first of duplicate keys.
    """

    file: str
    data: Any
    lines: Mapping[Loc, int] = field(default_factory=dict, repr=False)
    problems: tuple[ConfigError, ...] = ()

    def line(self, *path: str | int) -> int | None:
        """Line of `path`, or of the deepest enclosing place written (the document start if none)."""
        found = line_in(self.lines, path)
        return found if found is not None else self.lines.get(())

    def within(self, *prefix: str | int) -> dict[Loc, int]:
        """The lines under `prefix`, by their path relative to it."""
        n = len(prefix)
        return {loc[n:]: line for loc, line in self.lines.items() if loc[:n] == prefix}

    def error(self, message: str, *path: str | int, rule: str | None = None,
              field: str | None = None) -> ConfigError:
        """A ConfigError at `path` of this file."""
        return ConfigError(message, file=self.file, line=self.line(*path), rule=rule, field=field)


def parse_yaml(text: str | bytes, file: str = "<yaml>", *, strict: bool = True) -> YamlDoc:
    """Parse YAML text read from `file` (the name errors give). ConfigError with the line on
    a syntax error, and, unless `strict` is False, on a duplicate or non-scalar key."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"not UTF-8 text: {exc}", file=file) from exc
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, file) from exc
    builder = _Builder(file)
    data = builder.build(node, ()) if node is not None else None
    if strict and builder.problems:
        raise builder.problems[0]
    return YamlDoc(file, data, builder.lines, tuple(builder.problems))


def load_yaml(path: Path | str, *, file: str | None = None, strict: bool = True) -> YamlDoc:
    """Read and parse a YAML file; `file` is the name errors give (default the path).

    ConfigError if the file cannot be read (`cannot read: No such file or directory`)."""
    name = file if file is not None else str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=name) from exc
    return parse_yaml(raw, name, strict=strict)


def _syntax_error(exc: yaml.YAMLError, file: str) -> ConfigError:
    """A PyYAML error as a ConfigError with the file and, when PyYAML marks one, the line."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark:
        # where the construct that went wrong began, often the line with the mistake
        problem += f" ({context} at line {context_mark.line + 1})"
    return ConfigError(f"invalid YAML: {problem}", file=file, line=mark.line + 1 if mark is not None else None)


class _Builder:
    """Turns composed nodes into Python data, noting the line of every key and list item."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Loc, int] = {}
        self.problems: list[ConfigError] = []
        self.constructor = yaml.constructor.SafeConstructor()
        self.open: set[int] = set()  # nodes being built: an alias to one of them is a cycle
        self.merged: dict[int, int] = {}  # mapping node -> how many of its entries `<<` brought

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            return self.scalar(node)
        if id(node) in self.open:
            raise ConfigError("an alias refers to a node that contains it", file=self.file,
                              line=node.start_mark.line + 1)
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                items = []
                for i, item in enumerate(node.value):
                    self.lines[(*loc, i)] = item.start_mark.line + 1
                    items.append(self.build(item, (*loc, i)))
                return items
            return self.mapping(node, loc)
        finally:
            self.open.discard(id(node))

    def scalar(self, node: yaml.Node) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:  # an unknown tag
            raise _syntax_error(exc, self.file) from exc
        except (ValueError, TypeError, OverflowError) as exc:  # `!!int abc`
            raise ConfigError(f"invalid YAML: {node.value!r} is not a valid {node.tag.rsplit(':', 1)[-1]}",
                              file=self.file, line=node.start_mark.line + 1) from exc

    def mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, Any]:
        if id(node) not in self.merged:  # `<<: *anchor` merge keys, resolved once per node
            own = sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge")
            try:
                self.constructor.flatten_mapping(node)  # merged entries first, then its own
            except yaml.YAMLError as exc:  # `<<:` given something other than mappings
                raise _syntax_error(exc, self.file) from exc
            self.merged[id(node)] = len(node.value) - own
        n_merged = self.merged[id(node)]
        out: dict[Any, Any] = {}
        first: dict[Any, int] = {}
        for n, (key_node, value_node) in enumerate(node.value):
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(ConfigError("mapping keys must be scalars", file=self.file, line=line))
                continue
            key = self.scalar(key_node)
            where: Loc = (*loc, key if isinstance(key, str) else str(key))
            if n >= n_merged:  # a merged key may be written again; the mapping's own keys once
                if key in first:
                    self.problems.append(ConfigError(f"duplicate key {key!r} (first at line {first[key]})",
                                                     file=self.file, line=line, field=str(key)))
                    continue
                first[key] = line
            self.lines[where] = line
            out[key] = self.build(value_node, where)
        return out
