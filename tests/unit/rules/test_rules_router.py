"""The router: every matching route, unmatched events, dead letters, and agreement with the reference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.batch import EventBatch
from pipeline.core.errors import ConfigError
from pipeline.core.rules.columns import batch_from_events, events_from_batch
from pipeline.core.rules.loader import RuleSet, load_rules
from pipeline.core.rules.router import Router
from pipeline.core.rules.sample import synthetic_events
from pipeline.core.rules.schema import TopicTarget
from tests.oracles.rules import route_events

from .conftest import event

TWO_ROUTES = """
routes:
  - name: low
    match: {data: {soc_pct: [{numeric: ["<", 20]}]}}
    to: [{topic: route.low}]
  - name: soc
    match: {data: {soc_pct: [{exists: true}]}}
    to: [{topic: route.soc}, {object: routes/soc/}]
"""


def test_every_matching_route_gets_the_event(rules_from: Callable[[str], RuleSet]) -> None:
    router = Router(rules_from(TWO_ROUTES), b"k")
    result = router.route(batch_from_events([event(soc_pct=10.0), event(soc_pct=50.0), event("fleet.dtc.appeared")]))
    assert result.counts == {"low": 1, "soc": 2}
    assert result.per_route["soc"].data["soc_pct"].tolist() == [10.0, 50.0]
    assert result.targets["soc"] == [TopicTarget(topic="route.soc"), result.targets["soc"][1]]
    assert result.unmatched == 1 and "unmatched" not in result.per_route  # counted, no default route here


def test_unmatched_events_go_to_the_default_route(rules_from: Callable[[str], RuleSet]) -> None:
    ruleset = rules_from(TWO_ROUTES + "  - name: rest\n    default: true\n    to: [{topic: route.unmatched}]\n")
    result = Router(ruleset, b"k").route(batch_from_events([event(soc_pct=10.0), event("fleet.dtc.appeared", dtc_count=1)]))
    assert result.unmatched == 1
    assert result.per_route["rest"].attrs["type"].tolist() == ["fleet.dtc.appeared"]
    assert result.per_route["rest"].data["dtc_count"].tolist() == [1]
    assert "soc_pct" not in result.per_route["rest"].data  # fields no routed row has are not carried


def test_empty_batch(rules_from: Callable[[str], RuleSet]) -> None:
    result = Router(rules_from(TWO_ROUTES), b"k").route(EventBatch.empty())
    assert result.per_route == {} and result.unmatched == 0 and result.counts == {"low": 0, "soc": 0}


def test_a_failing_transform_dead_letters_its_route_only(rules_from: Callable[[str], RuleSet]) -> None:
    ruleset = rules_from(TWO_ROUTES)

    def broken(frame: Any, ctx: Any) -> Any:
        raise RuntimeError("boom")

    ruleset.routes[0].transform.apply = broken  # type: ignore[method-assign]
    batch = batch_from_events([{**event(soc_pct=10.0), "origin": 4}])
    result = Router(ruleset, b"k").route(batch)
    assert result.dead_letters == [("low", 4, "transform_error", "RuntimeError('boom')")]
    assert result.counts == {"low": 0, "soc": 1}


def test_missing_hmac_key_is_a_config_error(rules_from: Callable[[str], RuleSet]) -> None:
    ruleset = rules_from("routes:\n  - name: r\n    transform:\n      - hmac: {field: data.vin, key_env: OTHER_KEY}\n"
                         "    to: [{topic: route.r}]\n")
    with pytest.raises(ConfigError, match="OTHER_KEY"):
        Router(ruleset, b"k")
    with pytest.raises(ConfigError):
        Router(ruleset, b"")


def test_shipped_rules_agree_with_the_per_event_reference_on_a_mixed_batch() -> None:
    ruleset = load_rules(env={})
    batch = synthetic_events(3000, seed=11)
    result = Router(ruleset, b"secret").route(batch)
    reference = route_events(ruleset, events_from_batch(batch), b"secret")
    assert set(result.per_route) == set(reference.per_route)
    for name, routed in result.per_route.items():
        assert events_from_batch(routed) == reference.per_route[name], name
    assert result.unmatched == reference.unmatched > 0
    assert sum(result.counts.values()) >= len(batch)  # every event somewhere (some in several routes)


FIELD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-5, 5, allow_nan=False),
                         st.sampled_from(["a", "A", "ab", "b", "zz", ""]),
                         st.lists(st.sampled_from(["a", 1, "b"]), max_size=3))
EVENTS = st.lists(st.fixed_dictionaries(
    {"type": st.sampled_from(["t.a", "t.b", "t.c"]), "subject": st.sampled_from(["V1", "V2", "V3"])},
    optional={"x": FIELD_VALUES, "y": FIELD_VALUES,
              "loc": st.fixed_dictionaries({"lat": st.floats(-1, 1), "lon": st.floats(-1, 1)})}), min_size=1, max_size=25)

RANDOM_RULES = """
routes:
  - name: exact
    match: {data: {x: [1, "a", true]}}
    transform:
      - template: {data.t: "{type}:{data.x}"}
        if_missing: skip
    to: [{topic: route.a}]
  - name: numbers
    match: {data: {x: [{numeric: [">", 0, "<=", 3]}], y: [{exists: false}]}}
    transform:
      - bucket: {field: data.x, width: 2}
    to: [{topic: route.b}]
  - name: strings
    match:
      any:
        - data: {x: [{prefix: "a"}, {anything-but: {suffix: "z"}}]}
        - type: [{wildcard: "t.*"}]
          not: {data: {y: [{equals-ignore-case: "a"}, {anything-but: ["a", 1]}]}}
    transform:
      - hmac: [subject]
      - mask: {field: data.y, keep_last: 1}
        if_missing: skip
    to: [{topic: route.c}]
  - name: places
    match: {data: {loc: [{inside-circle: {lat: 0, lon: 0, radius_m: 80000}}]}}
    transform:
      - coarsen: {field: data.loc, precision_m: 5000}
      - rename: {data.loc: data.area}
    to: [{topic: route.d}]
  - name: split
    match: {type: [t.c]}
    transform:
      - split: {field: data.x, to: data.item, index_to: data.n}
        if_missing: skip
    to: [{topic: route.e}]
  - name: rest
    default: true
    to: [{topic: route.f}]
"""


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=EVENTS)
def test_vectorised_router_equals_the_per_event_reference(rows: list[dict[str, Any]], write_rules: Callable[..., Any]) -> None:
    ruleset = load_rules(write_rules(RANDOM_RULES), env={})
    events = []
    for i, row in enumerate(rows):
        data = {k: v for k, v in row.items() if k not in ("type", "subject")}
        events.append({"id": f"e{i}", "type": row["type"], "source": "/s", "subject": row["subject"], "time": i, "data": data})
    batch = batch_from_events(events)
    # The reference reads events as the batch holds them (a column has one type: 1 becomes 1.0 among floats).
    as_stored = events_from_batch(batch)
    result = Router(ruleset, b"k").route(batch)
    reference = route_events(ruleset, as_stored, b"k")
    for name in set(result.per_route) | set(reference.per_route):
        got = events_from_batch(result.per_route[name]) if name in result.per_route else []
        assert got == reference.per_route.get(name, []), name
    assert result.unmatched == reference.unmatched
    assert sorted((r, i, reason) for r, i, reason, _ in result.dead_letters) == sorted(reference.dead_letters)


def test_columns_are_copied_only_for_matched_rows(rules_from: Callable[[str], RuleSet]) -> None:
    ruleset = rules_from("routes:\n  - name: r\n    match: {type: [fleet.dtc.appeared]}\n    transform:\n"
                         "      - pick: [data.dtc_count]\n    to: [{topic: route.r}]\n")
    batch = synthetic_events(2000, seed=5)
    result = Router(ruleset, b"k").route(batch)
    out = result.per_route["r"]
    assert set(out.data) == {"dtc_count"}
    expected = np.flatnonzero(batch.attrs["type"] == "fleet.dtc.appeared")
    assert out.origin.tolist() == batch.origin[expected].tolist()
    assert out.data["dtc_count"].tolist() == batch.data["dtc_count"][expected].tolist()
