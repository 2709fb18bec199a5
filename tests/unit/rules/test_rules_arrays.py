"""Patterns on fields inside arrays of objects, with EventBridge's semantics.

The examples are those of the EventBridge documentation ("Arrays in Amazon EventBridge event
patterns") and of the Event Ruler library EventBridge matches with ("JSON Array Matching"):
the array is crushed (any element may hold the value), nested arrays too, and two fields of
one pattern must match within the same element. Every case is checked on both matching
paths: the columnar one (`evaluate`) and the per-event reference one (`test`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pipeline.core.rules.columns import Columns, batch_from_events
from pipeline.core.rules.loader import RuleSet
from pipeline.core.rules.patterns import compile_pattern
from pipeline.core.rules.router import Router

from .conftest import event

EMPLOYEES = [{"firstName": "John", "lastName": "Doe"}, {"firstName": "Anna", "lastName": "Smith"},
             {"firstName": "Peter", "lastName": "Jones"}]
NESTED_EMPLOYEES = [[{"firstName": "John", "lastName": "Doe"}, {"firstName": "Anna", "lastName": "Smith"}],
                    [{"firstName": "Peter", "lastName": "Jones"}]]


def matches(pattern: dict[str, Any], events: list[dict[str, Any]]) -> list[bool]:
    """Both matching paths, which must agree."""
    node = compile_pattern(pattern)
    columnar = node.evaluate(Columns(batch_from_events(events))).tolist()
    per_event = [node.test(e) for e in events]
    assert columnar == per_event, (columnar, per_event)
    return columnar


def with_data(**data: Any) -> dict[str, Any]:
    return event("fleet.trip.ended", **data)


@pytest.mark.parametrize("employees", [EMPLOYEES, NESTED_EMPLOYEES])
def test_event_ruler_employees(employees: list[Any]) -> None:
    events = [with_data(employees=employees)]
    # "the array structure is crushed out of the rule pattern" (single and multi-level arrays)
    assert matches({"data": {"employees": {"firstName": ["Anna"]}}}, events) == [True]
    assert matches({"data": {"employees": {"firstName": ["Maria"]}}}, events) == [False]
    # "will refuse to recognize any match in which any two fields are within JSON objects
    # that are in different elements of the same array"
    assert matches({"data": {"employees": {"firstName": ["Anna"], "lastName": ["Jones"]}}}, events) == [False]
    assert matches({"data": {"employees": {"firstName": ["Anna"], "lastName": ["Smith"]}}}, events) == [True]


def test_eventbridge_resources_intersection() -> None:
    # The documentation's example: the pattern matches if the two arrays intersect.
    pattern = {"data": {"resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f",
                                      "arn:aws:ec2:us-east-1:111122223333:instance/i-b188560f",
                                      "arn:aws:ec2:us-east-1:444455556666:instance/i-b188560f"]}}
    hit = ["arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:eb56d16b-bbf0-401d-b893-d5978ed4a025:"
           "autoScalingGroupName/ASGTerminate", "arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f"]
    miss = ["arn:aws:ec2:us-east-1:999999999999:instance/i-b188560f"]
    assert matches(pattern, [with_data(resources=hit), with_data(resources=miss)]) == [True, False]


def test_the_issue_example_legs_from() -> None:
    events = [with_data(legs=[{"from": "B", "to": "C"}, {"from": "A", "to": "B"}]),
              with_data(legs=[{"from": "B", "to": "A"}]),
              with_data(legs=[]),
              with_data(other=1)]
    assert matches({"data": {"legs": {"from": ["A"]}}}, events) == [True, False, False, False]
    # the same element must have both
    assert matches({"data": {"legs": {"from": ["A"], "to": ["B"]}}}, events) == [True, False, False, False]
    assert matches({"data": {"legs": {"from": ["A"], "to": ["C"]}}}, events) == [False, False, False, False]


def test_operators_inside_arrays_of_objects() -> None:
    events = [with_data(legs=[{"km": 3.5, "zone": "depot-rabat"}, {"km": 40.0}]),
              with_data(legs=[{"km": 2.0, "zone": "sale-station"}]),
              with_data(legs=[{"km": "12"}])]
    assert matches({"data": {"legs": {"km": [{"numeric": [">", 10]}]}}}, events) == [True, False, False]
    assert matches({"data": {"legs": {"zone": [{"prefix": "depot-"}]}}}, events) == [True, False, False]
    assert matches({"data": {"legs": {"zone": [{"exists": True}]}}}, events) == [True, True, False]
    assert matches({"data": {"legs": {"zone": [{"exists": False}]}}}, events) == [False, False, True]
    assert matches({"data": {"legs": {"zone": [{"anything-but": "sale-station"}]}}}, events) == [True, False, False]
    # consistency with operators: the long leg is not the depot leg
    assert matches({"data": {"legs": {"km": [{"numeric": [">", 10]}], "zone": [{"prefix": "depot-"}]}}},
                   events) == [False, False, False]


def test_a_route_matches_inside_arrays(rules_from: Callable[[str], RuleSet]) -> None:
    rules = rules_from("""
        routes:
          - name: ops.legs
            match: {data: {legs: {from: [A]}}}
            to: [{topic: route.ops.legs}]
    """)
    result = Router(rules, b"k").route(batch_from_events([with_data(legs=[{"from": "B"}, {"from": "A"}]),
                                                          with_data(legs=[{"from": "B"}])]))
    assert result.counts["ops.legs"] == 1 and result.unmatched == 1
