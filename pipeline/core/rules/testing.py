"""Run the test files beside the rules: input events -> expected routes and output payloads.

A test file (`rules/tests/*.yaml`) holds `tests:`, each with `events` (CloudEvent-shaped
mappings: attributes plus `data`) and `expect`:

- `routes`: a list of route names that must produce output (and no other route may), or a
  mapping of route name -> number of output events;
- `outputs`: per route, the expected events in order; listed attributes must be equal and
  `data` must be equal as a whole. `{$hmac: <value>}` stands for the pseudonym of a value
  (test key, default length, optional `length`/`prefix`), `{$any: true}` for any value;
- `unmatched`: the number of events no route matched;
- `dead_letters`: expected `{route, reason}` entries (all of them, in any order).

Tests run with a fixed HMAC key, so pseudonyms are reproducible but not production ones.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError
from pipeline.core.rules.columns import batch_from_events, events_from_batch
from pipeline.core.rules.loader import RuleSet, _display, load_rules, rule_files
from pipeline.core.rules.router import Router
from pipeline.core.rules.transform import text_of
from pipeline.core.yamlfile import load_yaml

TEST_KEY = b"pipeline-rules-test-key"


@dataclass
class CaseOutcome:
    """One test's result: `failures` empty means it passed."""

    file: str
    line: int | None
    name: str
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def _pseudonym(spec: Mapping[str, Any]) -> str:
    length = int(spec.get("length", 32))
    prefix = str(spec.get("prefix", ""))
    digest = hmac.new(TEST_KEY, text_of(spec["$hmac"]).encode(), hashlib.sha256).hexdigest()
    return prefix + digest[:length]


def _equal(expected: Any, actual: Any) -> bool:
    if isinstance(expected, Mapping) and "$any" in expected:
        return True
    if isinstance(expected, Mapping) and "$hmac" in expected:
        return actual == _pseudonym(expected)
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return math.isclose(expected, actual, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        return set(expected) == set(actual) and all(_equal(expected[k], actual[k]) for k in expected)
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(_equal(e, a) for e, a in zip(expected, actual, strict=True))
    return bool(expected == actual)


def _diff(prefix: str, expected: Any, actual: Any, out: list[str]) -> None:
    if isinstance(expected, Mapping) and "$any" not in expected and "$hmac" not in expected and isinstance(actual, Mapping):
        for key in expected:
            if key not in actual:
                out.append(f"{prefix}.{key}: expected {expected[key]!r}, missing")
            else:
                _diff(f"{prefix}.{key}", expected[key], actual[key], out)
        for key in actual:
            if key not in expected:
                out.append(f"{prefix}.{key}: unexpected field with {actual[key]!r}")
        return
    if not _equal(expected, actual):
        shown = _pseudonym(expected) if isinstance(expected, Mapping) and "$hmac" in expected else expected
        out.append(f"{prefix}: expected {shown!r}, got {actual!r}")


def run_test(router: Router, case: Mapping[str, Any]) -> list[str]:
    """Failures of one test case (empty if it passed)."""
    failures: list[str] = []
    events = case.get("events")
    if not isinstance(events, list) or not events or not all(isinstance(e, Mapping) for e in events):
        return ["`events` must be a non-empty list of events"]
    expect = case.get("expect")
    if not isinstance(expect, Mapping):
        return ["`expect` must be a mapping (routes, outputs, unmatched, dead_letters)"]
    unknown = set(expect) - {"routes", "outputs", "unmatched", "dead_letters"}
    if unknown:
        return [f"unknown `expect` keys: {', '.join(sorted(unknown))}"]
    result = router.route(batch_from_events([{"id": f"test-{i}", **e} for i, e in enumerate(events)]))
    produced = {name: len(batch) for name, batch in result.per_route.items()}
    want_routes = expect.get("routes")
    if isinstance(want_routes, list):
        if set(want_routes) != set(produced):
            failures.append(f"routes: expected {sorted(want_routes)}, got {sorted(produced)}")
    elif isinstance(want_routes, Mapping):
        got = {k: v for k, v in produced.items()}
        want = {k: int(v) for k, v in want_routes.items() if int(v)}
        if want != got:
            failures.append(f"routes: expected {dict(sorted(want.items()))}, got {dict(sorted(got.items()))}")
    elif want_routes is not None:
        failures.append("`expect.routes` is a list of route names or a mapping of name -> count")
    if "unmatched" in expect and int(expect["unmatched"]) != result.unmatched:
        failures.append(f"unmatched: expected {expect['unmatched']}, got {result.unmatched}")
    outputs = expect.get("outputs") or {}
    for route, wanted in outputs.items():
        actual = events_from_batch(result.per_route[route]) if route in result.per_route else []
        if not isinstance(wanted, list):
            failures.append(f"outputs.{route}: expected a list of events")
            continue
        if len(wanted) != len(actual):
            failures.append(f"outputs.{route}: expected {len(wanted)} events, got {len(actual)}")
        for i, (want, got_event) in enumerate(zip(wanted, actual, strict=False)):
            for key, value in want.items():
                where = f"outputs.{route}[{i}].{key}"
                if key == "data":
                    _diff(where, value, got_event.get("data", {}), failures)
                elif key not in got_event:
                    failures.append(f"{where}: expected {value!r}, missing")
                elif not _equal(value, got_event[key]):
                    _diff(where, value, got_event[key], failures)
    if "dead_letters" in expect:
        want_dead = Counter((d.get("route"), d.get("reason")) for d in expect["dead_letters"] or [])
        got_dead = Counter((route, reason) for route, _, reason, _ in result.dead_letters)
        if want_dead != got_dead:
            failures.append(f"dead_letters: expected {sorted(want_dead.items())}, got {sorted(got_dead.items())}")
    if failures and result.dead_letters:
        failures.append("dead letters were: " + "; ".join(f"{route}: {reason} ({error})" for route, _, reason, error in result.dead_letters))
    return failures


def list_test_files(tests_dir: Path) -> list[Path]:
    """Test files of a directory (or the file itself)."""
    if not tests_dir.exists():
        return []
    return rule_files(tests_dir)


def run_tests(rules_path: Path | None = None, tests_path: Path | None = None,
              ruleset: RuleSet | None = None) -> list[CaseOutcome]:
    """Load the rules and run every test file; rules errors raise `RulesError`."""
    ruleset = ruleset or load_rules(rules_path, env={})
    keys = {env: TEST_KEY for env in ruleset.key_envs()}
    ruleset = RuleSet(ruleset.routes, ruleset.default, ruleset.files, ruleset.digest, keys, ruleset.disabled)
    router = Router(ruleset, TEST_KEY)
    if tests_path is None:
        base = Path(rules_path) if rules_path is not None else None
        from pipeline.core.rules.loader import DEFAULT_RULES_DIR
        routes_dir = base if base is not None else DEFAULT_RULES_DIR
        if routes_dir.is_file():
            tests_path = routes_dir.parent.parent / "tests" / routes_dir.name
        else:
            tests_path = routes_dir.parent / "tests"
    outcomes: list[CaseOutcome] = []
    for file in list_test_files(tests_path):
        shown = _display(file)
        try:
            doc = load_yaml(file, file=shown, strict=False)
        except ConfigError as exc:
            outcomes.append(CaseOutcome(shown, exc.line, "(file)", [exc.detail]))
            continue
        if doc.problems:
            outcomes.extend(CaseOutcome(shown, e.line, "(file)", [e.detail]) for e in doc.problems)
            continue
        cases = doc.data.get("tests") if isinstance(doc.data, Mapping) else None
        if not isinstance(cases, list) or not cases:
            outcomes.append(CaseOutcome(shown, 1, "(file)", ["a test file holds a non-empty `tests:` list"]))
            continue
        for i, case in enumerate(cases):
            name = str(case.get("name", f"#{i + 1}")) if isinstance(case, Mapping) else f"#{i + 1}"
            outcome = CaseOutcome(shown, doc.line("tests", i), name)
            if not isinstance(case, Mapping):
                outcome.failures.append("a test is a mapping with name, events and expect")
            else:
                try:
                    outcome.failures.extend(run_test(router, case))
                except Exception as exc:  # a broken test must be reported, not crash the run
                    outcome.failures.append(f"error: {exc!r}")
            outcomes.append(outcome)
    return outcomes
