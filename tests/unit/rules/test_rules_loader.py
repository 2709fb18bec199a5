"""The checker: every mistake reported as `file:line: route 'x': field 'y': what is wrong`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.rules.loader import RulesError, check_rules, load_rules


def messages(path: Path) -> list[str]:
    ruleset, errors = check_rules(path, env={})
    assert ruleset is None and errors
    return [str(e) for e in errors]


def only(path: Path) -> ConfigError:
    _, errors = check_rules(path, env={})
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def test_message_names_file_line_route_and_field(write_rules: Callable[..., Path]) -> None:
    path = write_rules("""\
        routes:
          - name: dept.finance
            match:
              type: [fleet.charging.ended]
              data:
                energy_kwh: [{numerc: [">", 0]}]
            to: [{topic: route.dept.finance}]
        """, name="finance.yaml")
    error = only(path)
    assert (error.line, error.rule, error.field) == (6, "dept.finance", "match.data.energy_kwh")
    assert error.file is not None and error.file.endswith("finance.yaml")
    assert str(error).endswith(":6: route 'dept.finance': field 'match.data.energy_kwh': unknown operator 'numerc' "
                               "(known: prefix, suffix, equals-ignore-case, wildcard, anything-but, numeric, exists, cidr, "
                               "inside-circle, inside-box, inside-polygon)")


def test_all_errors_of_all_files_are_reported(write_rules: Callable[..., Path]) -> None:
    write_rules("""\
        routes:
          - name: a
            match: {type: []}
            to: [{topic: route.a}]
          - name: b
            to: []
        """, name="one.yaml")
    path = write_rules("""\
        routes:
          - name: c
            to: [{topic: route.c}]
            retry: {attempts: 0}
        """, name="two.yaml")
    found = messages(path)
    assert len(found) == 3
    assert any("one.yaml:3: route 'a': field 'match.type': empty list" in m for m in found)
    assert any("one.yaml:6: route 'b': field 'to': empty list" in m for m in found)
    assert any("two.yaml:4: route 'c': field 'retry.attempts'" in m for m in found)
    with pytest.raises(RulesError) as info:
        load_rules(path, env={})
    assert len(info.value.errors) == 3 and str(info.value).count("\n") == 2


@pytest.mark.parametrize(("body", "line", "field", "text"), [
    ("    to: [{topic: vehicle.sensor.raw}]\n", 3, "to[0].topic", "unknown topic 'vehicle.sensor.raw'"),
    ("    to: [{kafka: route.x}]\n", 3, "to[0]", "exactly one of `topic`, `webhook` or `object`"),
    ("    to: [{topic: route.x, object: a/}]\n", 3, "to[0]", "exactly one of"),
    ("    to: [{webhook: ftp://x}]\n", 3, "to[0].webhook", "not an http(s) URL"),
    ("    to: [{object: /abs}]\n", 3, "to[0].object", "'/abs' is not valid: an object prefix is letters, digits"),
    ("    to: [{topic: route.x}, {topic: route.x}]\n", 3, "to", "listed twice"),
    ("    to: [{topic: route.x}]\n    dead_letter: {topic: route.x}\n", 4, "dead_letter", "also a delivery target"),
    ("    to: [{topic: route.x}]\n    dead_letter: {webhook: 'http://h/'}\n", 4, "dead_letter", "durable"),
    ("    to: [{topic: route.x}]\n    retry: {backoff_ms: 500, max_backoff_ms: 100}\n", 4, "retry", "below backoff_ms"),
    ("    to: [{topic: route.x}]\n    colour: red\n", 4, "colour", "unknown field"),
    ("    to: [{topic: route.x}]\n    transform: []\n", 4, "transform", "empty list"),
    ("    to: [{topic: route.x}]\n    transform:\n      - explode: data.x\n", 5, "transform[0]", "unknown transform operation 'explode'"),
    ("    to: [{topic: route.x}]\n    transform:\n      - pick: [data.a]\n        drop: [data.b]\n", 5, "transform[0]", "exactly one operation"),
    ("    to: [{topic: route.x}]\n    transform:\n      - set: {id: x}\n", 5, "transform[0].id", "cannot be written"),
    ("    to: [{topic: route.x}]\n    transform:\n      - drop: [type]\n", 5, "transform[0].type", "required by CloudEvents"),
    ("    to: [{topic: route.x}]\n    transform:\n      - bucket: {field: data.x, edges: [5, 1], labels: [a, b, c]}\n",
     5, "transform[0]", "strictly increasing"),
    ("    to: [{topic: route.x}]\n    transform:\n      - coarsen: {field: data.location}\n", 5, "transform[0]", "exactly one of `precision_m` or `decimals`"),
    ("    to: [{topic: route.x}]\n    transform:\n      - template: {data.s: '{data.x!r}'}\n", 5, "transform[0].data.s", "not supported"),
    ("    to: [{topic: route.x}]\n    transform:\n      - rename: {data.a: data.a.b}\n", 5, "transform[0].data.a", "one is inside the other"),
    ("    to: [{topic: route.x}]\n    default: true\n    match: {type: [x]}\n", 2, None, "remove `match`"),
])
def test_each_kind_of_mistake_is_caught(write_rules: Callable[..., Path], body: str, line: int, field: str | None, text: str) -> None:
    path = write_rules("routes:\n  - name: r\n" + body)
    error = only(path)
    assert text in error.detail, str(error)
    assert error.rule == "r"
    assert error.line == line, str(error)
    if field is not None:
        assert error.field == field, str(error)


def test_dead_letter_topics_are_not_delivery_targets(write_rules: Callable[..., Path]) -> None:
    found = messages(write_rules("routes:\n  - name: r\n    to: [{topic: pipeline.dlq}]\n"))
    assert any("unknown topic 'pipeline.dlq'" in m for m in found)
    assert any("is a dead-letter topic; use `dead_letter:`" in m for m in found)


def test_duplicate_route_names_point_at_the_first(write_rules: Callable[..., Path]) -> None:
    write_rules("routes:\n  - name: r\n    to: [{topic: route.a}]\n", name="a.yaml")
    path = write_rules("routes:\n  - name: x\n    to: [{topic: route.x}]\n  - name: r\n    to: [{topic: route.b}]\n", name="b.yaml")
    error = only(path)
    assert error.line == 4 and error.field == "name"
    assert "already used at" in error.detail and "a.yaml:2" in error.detail


def test_only_one_default_route(write_rules: Callable[..., Path]) -> None:
    path = write_rules("""\
        routes:
          - name: one
            default: true
            to: [{topic: route.one}]
          - name: two
            default: true
            to: [{topic: route.two}]
        """)
    error = only(path)
    assert error.rule == "two" and "only one default route" in error.detail


def test_yaml_errors_and_duplicate_keys_have_lines(write_rules: Callable[..., Path]) -> None:
    path = write_rules("routes:\n  - name: r\n    to: [{topic: route.x}\n")
    error = only(path)
    assert "invalid YAML" in error.detail and error.line is not None
    path = write_rules("routes:\n  - name: r\n    to: [{topic: route.x}]\n    to: [{topic: route.y}]\n")
    error = only(path)
    assert error.line == 4 and "duplicate key 'to'" in error.detail


def test_only_the_routes_directory_is_read(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    (rules / "routes").mkdir(parents=True)
    (rules / "signals.yaml").write_text("not: [a, rules, file")
    (rules / "routes" / "r.yaml").write_text("routes:\n  - name: r\n    to: [{topic: route.r}]\n")
    (rules / "routes" / ".r.yaml.swp").write_text("garbage: [")
    ruleset = load_rules(rules / "routes", env={})
    assert [r.name for r in ruleset.all_routes()] == ["r"]
    assert not check_rules(tmp_path / "nothing", env={})[0]


def test_disabled_routes_are_validated_but_not_routed(write_rules: Callable[..., Path]) -> None:
    ruleset = load_rules(write_rules("routes:\n  - name: r\n    enabled: false\n    to: [{topic: route.r}]\n"
                                     "  - name: s\n    to: [{topic: route.s}]\n"), env={})
    assert [r.name for r in ruleset.routes] == ["s"] and ruleset.disabled == ("r",)
    broken = write_rules("routes:\n  - name: r\n    enabled: false\n    to: [{topic: nowhere}]\n")
    assert "unknown topic" in only(broken).detail


def test_secrets_named_in_rules_are_read_from_the_given_environment(write_rules: Callable[..., Path]) -> None:
    path = write_rules("""\
        routes:
          - name: r
            transform:
              - hmac: {field: data.vin, key_env: FINANCE_KEY}
            to: [{webhook: "http://127.0.0.1:9/hook", secret_env: HOOK_SECRET}]
        """)
    ruleset = load_rules(path, env={"FINANCE_KEY": "k1", "HOOK_SECRET": "s1", "OTHER": "x"})
    assert dict(ruleset.keys) == {"FINANCE_KEY": b"k1", "HOOK_SECRET": b"s1"}
    assert ruleset.key_envs() == {"FINANCE_KEY"}


def test_name_errors_say_what_a_valid_name_is(write_rules: Callable[..., Path]) -> None:
    # Before: "String should match pattern '^[A-Za-z0-9._-]{1,249}$'".
    path = write_rules("routes:\n  - name: dept.x\n    to: [{topic: ''}]\n  - name: Dept Y\n    to: [{topic: route.y}]\n")
    _, errors = check_rules(path, env={})
    messages = sorted(f"{e.field}: {e.detail}" for e in errors)
    assert messages == [
        "name: 'Dept Y' is not valid: a route name is lower-case words of letters, digits and '-' joined by '.' (e.g. dept.finance)",
        "to[0].topic: is empty: a topic name is 1 to 249 letters, digits, '.', '_' or '-'",
    ]
