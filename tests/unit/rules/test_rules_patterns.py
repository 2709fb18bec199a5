"""Event patterns: EventBridge semantics, checked on the vectorised path and the per-event one."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipeline.core.rules.columns import Columns, batch_from_events
from pipeline.core.rules.patterns import PatternGroupError, compile_pattern


def _event(**data: Any) -> dict[str, Any]:
    return {"type": "fleet.battery.low_soc", "source": "/vehicles/VF1", "subject": "VF1",
            "partitionkey": "VF1", "time": 1_700_000_000_000, "data": data}


# (pattern, event, expected) -- each operator with positive and negative cases.
CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    # exact values and type strictness
    ("exact string", {"type": ["fleet.battery.low_soc"]}, _event(), True),
    ("exact string other", {"type": ["fleet.battery.low_12v"]}, _event(), False),
    ("exact scalar shorthand", {"type": "fleet.battery.low_soc"}, _event(), True),
    ("exact number", {"data": {"soc_pct": [12]}}, _event(soc_pct=12), True),
    ("exact number matches float of same value", {"data": {"soc_pct": [12]}}, _event(soc_pct=12.0), True),
    ("number never matches string", {"data": {"soc_pct": [123]}}, _event(soc_pct="123"), False),
    ("string never matches number", {"data": {"soc_pct": ["123"]}}, _event(soc_pct=123), False),
    ("true is not 1", {"data": {"ok": [1]}}, _event(ok=True), False),
    ("1 is not true", {"data": {"ok": [True]}}, _event(ok=1), False),
    ("boolean", {"data": {"ok": [True]}}, _event(ok=True), True),
    ("null matches null", {"data": {"zone": [None]}}, _event(zone=None), True),
    ("null does not match missing", {"data": {"zone": [None]}}, _event(), False),
    ("OR within a list", {"type": ["a", "fleet.battery.low_soc"]}, _event(), True),
    ("AND across fields", {"type": ["fleet.battery.low_soc"], "data": {"soc_pct": [{"numeric": ["<", 10]}]}}, _event(soc_pct=12), False),
    ("missing field never matches a value", {"data": {"soc_pct": [12]}}, _event(), False),
    # prefix / suffix / equals-ignore-case / wildcard
    ("prefix", {"source": [{"prefix": "/vehicles/"}]}, _event(), True),
    ("prefix negative", {"source": [{"prefix": "/grid/"}]}, _event(), False),
    ("prefix ignore case", {"source": [{"prefix": {"equals-ignore-case": "/VEHICLES/"}}]}, _event(), True),
    ("prefix on a number", {"data": {"soc_pct": [{"prefix": "1"}]}}, _event(soc_pct=12), False),
    ("suffix", {"data": {"zone": [{"suffix": "-north"}]}}, _event(zone="depot-north"), True),
    ("suffix negative", {"data": {"zone": [{"suffix": "-south"}]}}, _event(zone="depot-north"), False),
    ("suffix ignore case", {"data": {"zone": [{"suffix": {"equals-ignore-case": "-NORTH"}}]}}, _event(zone="depot-north"), True),
    ("equals-ignore-case", {"data": {"kind": [{"equals-ignore-case": "DC"}]}}, _event(kind="dc"), True),
    ("equals-ignore-case negative", {"data": {"kind": [{"equals-ignore-case": "AC"}]}}, _event(kind="dc"), False),
    ("wildcard", {"type": [{"wildcard": "fleet.*.low_*"}]}, _event(), True),
    ("wildcard negative", {"type": [{"wildcard": "fleet.*.high_*"}]}, _event(), False),
    ("wildcard escaped star", {"data": {"zone": [{"wildcard": "a\\*b"}]}}, _event(zone="a*b"), True),
    ("wildcard escaped star is literal", {"data": {"zone": [{"wildcard": "a\\*b"}]}}, _event(zone="axxb"), False),
    # anything-but
    ("anything-but value", {"data": {"zone": [{"anything-but": "test-track"}]}}, _event(zone="depot"), True),
    ("anything-but value negative", {"data": {"zone": [{"anything-but": "test-track"}]}}, _event(zone="test-track"), False),
    ("anything-but list", {"data": {"zone": [{"anything-but": ["a", "b"]}]}}, _event(zone="b"), False),
    ("anything-but numbers", {"data": {"n": [{"anything-but": [1, 2]}]}}, _event(n=3), True),
    ("anything-but prefix", {"data": {"zone": [{"anything-but": {"prefix": "depot"}}]}}, _event(zone="depot-1"), False),
    ("anything-but prefix other", {"data": {"zone": [{"anything-but": {"prefix": "depot"}}]}}, _event(zone="site-1"), True),
    ("anything-but suffix", {"data": {"zone": [{"anything-but": {"suffix": "-1"}}]}}, _event(zone="site-1"), False),
    ("anything-but equals-ignore-case list", {"data": {"zone": [{"anything-but": {"equals-ignore-case": ["A", "B"]}}]}}, _event(zone="a"), False),
    ("anything-but needs the field", {"data": {"zone": [{"anything-but": "x"}]}}, _event(), False),
    # numeric
    ("numeric range in", {"data": {"soc_pct": [{"numeric": [">", 0, "<=", 10]}]}}, _event(soc_pct=10), True),
    ("numeric range out", {"data": {"soc_pct": [{"numeric": [">", 0, "<=", 10]}]}}, _event(soc_pct=10.5), False),
    ("numeric lower exclusive", {"data": {"soc_pct": [{"numeric": [">", 0]}]}}, _event(soc_pct=0), False),
    ("numeric lower inclusive", {"data": {"soc_pct": [{"numeric": [">=", 0]}]}}, _event(soc_pct=0), True),
    ("numeric equals", {"data": {"n": [{"numeric": ["=", 3]}]}}, _event(n=3.0), True),
    ("numeric on a string", {"data": {"soc_pct": [{"numeric": ["<", 10]}]}}, _event(soc_pct="5"), False),
    ("numeric on a boolean", {"data": {"ok": [{"numeric": ["<", 10]}]}}, _event(ok=True), False),
    ("numeric on missing", {"data": {"soc_pct": [{"numeric": ["<", 10]}]}}, _event(), False),
    # exists
    ("exists true", {"data": {"soc_pct": [{"exists": True}]}}, _event(soc_pct=1), True),
    ("exists true missing", {"data": {"soc_pct": [{"exists": True}]}}, _event(), False),
    ("exists false missing", {"data": {"soc_pct": [{"exists": False}]}}, _event(), True),
    ("exists false present", {"data": {"soc_pct": [{"exists": False}]}}, _event(soc_pct=1), False),
    ("exists on an object", {"data": {"location": [{"exists": True}]}}, _event(location={"lat": 1.0, "lon": 2.0}), True),
    ("empty array does not exist", {"data": {"codes": [{"exists": True}]}}, _event(codes=[]), False),
    ("exists on an extension", {"partitionkey": [{"exists": True}]}, _event(), True),
    # arrays
    ("array: any element", {"data": {"codes": ["P0420"]}}, _event(codes=["U0100", "P0420"]), True),
    ("array: no element", {"data": {"codes": ["P0300"]}}, _event(codes=["U0100", "P0420"]), False),
    ("array: prefix", {"data": {"codes": [{"prefix": "U"}]}}, _event(codes=["P0420", "U0100"]), True),
    ("array: numbers", {"data": {"levels": [{"numeric": [">", 5]}]}}, _event(levels=[1, 2, 9]), True),
    # composition
    ("$or", {"$or": [{"type": ["x"]}, {"data": {"soc_pct": [{"numeric": ["<", 20]}]}}]}, _event(soc_pct=12), True),
    ("$or none", {"$or": [{"type": ["x"]}, {"data": {"soc_pct": [{"numeric": ["<", 5]}]}}]}, _event(soc_pct=12), False),
    ("any nested in data", {"data": {"any": [{"soc_pct": [1]}, {"zone": ["z"]}]}}, _event(zone="z"), True),
    ("all", {"all": [{"type": ["fleet.battery.low_soc"]}, {"data": {"soc_pct": [12]}}]}, _event(soc_pct=12), True),
    ("all fails", {"all": [{"type": ["fleet.battery.low_soc"]}, {"data": {"soc_pct": [13]}}]}, _event(soc_pct=12), False),
    ("not", {"not": {"data": {"zone": ["test-track"]}}}, _event(zone="depot"), True),
    ("not negative", {"not": {"data": {"zone": ["test-track"]}}}, _event(zone="test-track"), False),
    ("dotted keys", {"data.location.lat": [{"numeric": [">", 48]}]}, _event(location={"lat": 48.8, "lon": 2.3}), True),
    # geo
    ("inside-circle", {"data": {"location": [{"inside-circle": {"lat": 48.8566, "lon": 2.3522, "radius_m": 1000}}]}},
     _event(location={"lat": 48.860, "lon": 2.355}), True),
    ("inside-circle out", {"data": {"location": [{"inside-circle": {"lat": 48.8566, "lon": 2.3522, "radius_m": 1000}}]}},
     _event(location={"lat": 48.90, "lon": 2.355}), False),
    ("inside-box", {"data": {"location": [{"inside-box": {"south": 48.8, "west": 2.2, "north": 48.9, "east": 2.4}}]}},
     _event(location={"lat": 48.85, "lon": 2.3}), True),
    ("inside-box out", {"data": {"location": [{"inside-box": {"south": 48.8, "west": 2.2, "north": 48.9, "east": 2.4}}]}},
     _event(location={"lat": 48.85, "lon": 2.5}), False),
    ("inside-box across the antimeridian", {"data": {"location": [{"inside-box": {"south": -20, "west": 170, "north": -10, "east": -170}}]}},
     _event(location={"lat": -15.0, "lon": 179.5}), True),
    ("inside-polygon", {"data": {"location": [{"inside-polygon": [[48.8, 2.2], [48.9, 2.2], [48.9, 2.4], [48.8, 2.4]]}]}},
     _event(location={"lat": 48.85, "lon": 2.3}), True),
    ("inside-polygon out (concave notch)", {"data": {"location": [{"inside-polygon": [[0, 0], [0, 10], [10, 10], [5, 5], [10, 0]]}]}},
     _event(location={"lat": 7.0, "lon": 5.0}), False),
    ("geo on a missing location", {"data": {"location": [{"inside-box": {"south": -90, "west": -180, "north": 90, "east": 180}}]}},
     _event(), False),
    ("cidr", {"data": {"ip": [{"cidr": "10.0.0.0/8"}]}}, _event(ip="10.1.2.3"), True),
    ("cidr out", {"data": {"ip": [{"cidr": "10.0.0.0/8"}]}}, _event(ip="192.168.1.1"), False),
]


@pytest.mark.parametrize(("name", "pattern", "event", "expected"), CASES, ids=[c[0] for c in CASES])
def test_eventbridge_semantics(name: str, pattern: dict[str, Any], event: dict[str, Any], expected: bool) -> None:
    node = compile_pattern(pattern)
    assert node.test(event) is expected, "per-event"
    # Vectorised, with the event placed among others that carry different fields and types.
    others = [_event(soc_pct="text", zone=7, codes="P0420"), {**_event(), "type": "other.type", "source": "/grid/x"}]
    batch = batch_from_events([others[0], event, others[1]])
    got = node.evaluate(Columns(batch))
    assert bool(got[1]) is expected, "vectorised"
    assert got.tolist() == [node.test(e) for e in (others[0], event, others[1])]


def test_vectorised_matches_per_event_on_many_rows() -> None:
    rng = np.random.default_rng(3)
    values: list[Any] = [1, 1.0, 2, "1", "a", "A", True, False, None, [1, "a"], [], {"lat": 1.0, "lon": 2.0}]
    events = []
    for i in range(400):
        data = {}
        for key in ("x", "y"):
            if rng.random() < 0.8:
                data[key] = values[int(rng.integers(len(values)))]
        events.append({"id": f"e{i}", "type": f"t{i % 3}", "source": "/s", "subject": "s", "time": i, "data": data})
    batch = batch_from_events(events)
    patterns = [{"data": {"x": [1]}}, {"data": {"x": ["a"]}}, {"data": {"x": [True]}},
                {"data": {"x": [{"numeric": [">=", 1]}]}}, {"data": {"x": [{"anything-but": ["a", 1]}]}},
                {"data": {"x": [{"exists": False}], "y": [{"equals-ignore-case": "a"}]}},
                {"any": [{"data": {"x": [None]}}, {"type": ["t1"]}]}, {"not": {"data": {"y": [{"prefix": "a"}]}}}]
    for pattern in patterns:
        node = compile_pattern(pattern)
        assert node.evaluate(Columns(batch)).tolist() == [node.test(e) for e in events], pattern


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"type": []}, "type", "empty list"),
    ({"data": {"x": [{"numerc": [">", 1]}]}}, "data.x", "unknown operator 'numerc'"),
    ({"data": {"x": [{"numeric": [">", 10, "<", 5]}]}}, "data.x", "empty range"),
    ({"data": {"x": [{"numeric": [">", "5"]}]}}, "data.x", "needs a number"),
    ({"data": {"x": [{"numeric": [">", 1, ">", 2]}]}}, "data.x", "more than one lower bound"),
    ({"data": {"x": [{"prefix": 5}]}}, "data.x", "takes a string"),
    ({"data": {"x": [{"exists": "yes"}]}}, "data.x", "true or false"),
    ({"data": {"x": [{"wildcard": "a**b"}]}}, "data.x", "consecutive"),
    ({"data": {"x": [{"anything-but": []}]}}, "data.x", "empty list"),
    ({"Type": ["x"]}, "Type", "unknown field"),
    ({"type": {"prefix": "x"}}, "type", "single value"),
    ({"all": []}, "", "non-empty list"),
    ({"data": {"loc": [{"inside-circle": {"lat": 95, "lon": 0, "radius_m": 10}}]}}, "data.loc", "within ±90"),
    ({"data": {"loc": [{"inside-circle": {"lat": 45, "lon": 0, "radius_m": -1}}]}}, "data.loc", "positive"),
    ({"data": {"loc": [{"inside-box": {"south": 50, "west": 0, "north": 40, "east": 1}}]}}, "data.loc", "north of north"),
    ({"data": {"loc": [{"inside-polygon": [[0, 0], [1, 1]]}]}}, "data.loc", "at least 3"),
    ({"all": [{"data": {"x": [{"exists": True}]}}, {"data": {"x": [{"exists": False}]}}]}, "data.x", "can never both hold"),
    ({"data": {"x": [{"exists": False}]}, "all": [{"data": {"x": [{"numeric": [">", 1]}]}}]}, "data.x", "contradicts"),
    ({"all": [{"data": {"x": [{"numeric": [">", 10]}]}}, {"data": {"x": [{"numeric": ["<", 5]}]}}]}, "data.x", "empty range"),
    ({"all": [{"type": ["a"]}, {"type": ["b"]}]}, "type", "can never all hold"),
]


@pytest.mark.parametrize(("pattern", "path", "message"), BAD, ids=[b[2] for b in BAD])
def test_bad_patterns_are_rejected_with_the_field(pattern: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(PatternGroupError) as info:
        compile_pattern(pattern)
    errors = info.value.errors
    assert any(message in e.message and (e.path or "") == path for e in errors), [(e.path, e.message) for e in errors]


def test_every_error_of_a_pattern_is_reported() -> None:
    with pytest.raises(PatternGroupError) as info:
        compile_pattern({"type": [], "data": {"x": [{"bogus": 1}], "y": [{"numeric": [">", "1"]}]}})
    assert {e.path for e in info.value.errors} == {"type", "data.x", "data.y"}


def test_string_columns_are_evaluated_once_per_unique_value() -> None:
    calls: list[Any] = []
    node = compile_pattern({"type": [{"prefix": "fleet.driving."}]})
    leaf = node.leaves[0]  # type: ignore[attr-defined]
    original = type(leaf).test

    def counting(self: Any, value: Any) -> bool:
        calls.append(value)
        return original(self, value)

    events = [{"type": t, "source": "/s", "subject": "s", "time": 0}
              for t in ["fleet.driving.speeding", "fleet.trip.ended"] * 500]
    batch = batch_from_events(events)
    pytest.MonkeyPatch().setattr(type(leaf), "test", counting)
    try:
        mask = node.evaluate(Columns(batch))
    finally:
        pytest.MonkeyPatch().undo()
        type(leaf).test = original  # type: ignore[method-assign]
    assert mask.sum() == 500
    assert len(calls) == 2
