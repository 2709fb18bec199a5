"""Data policies enforced on values: a route's output is checked before it leaves.

The load-time check (`test_rules_policy.py`) follows field names; these tests feed values
that carry a VIN or a coordinate under names it cannot know about.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from pipeline.core.rules.columns import batch_from_events, events_from_batch
from pipeline.core.rules.enforce import (
    POLICY_VIOLATION,
    PolicyGuard,
    VinFinder,
    column_vin_rows,
    on_coarsen_grid,
    vin_shaped,
)
from pipeline.core.rules.loader import RuleSet
from pipeline.core.rules.router import Router, RouteResult
from pipeline.core.rules.schema import CoarsenSpec, DataPolicy
from pipeline.core.rules.transform import coarsen_coordinates

from .conftest import VIN, event

OTHER_VIN = "WVWZZZ1JZ3W386752"  # a VIN no event of the batch carries


def route_batch(ruleset: RuleSet, events: list[dict[str, Any]], **kw: Any) -> RouteResult:
    return Router(ruleset, b"test-key", **kw).route(batch_from_events(events))


FINANCE = """
routes:
  - name: dept.finance
    match: {type: [fleet.trip.ended]}
    transform:
      - pick: [data.vin, data.trip_id, data.energy_kwh]
      - hmac: {field: data.vin, to: data.vehicle_ref}
      - hmac: [subject, partitionkey]
      - set: {source: /pipeline/routes/dept.finance}
    to: [{topic: route.dept.finance}]
    policy: {vin: pseudonym, location: forbidden}
"""


def test_a_trip_id_built_from_the_vin_is_dead_lettered(rules_from: Callable[[str], RuleSet]) -> None:
    events = [event("fleet.trip.ended", trip_id=f"{VIN}-1617012938000", energy_kwh=1.5),
              event("fleet.trip.ended", trip_id="trip-0001", energy_kwh=2.0)]
    result = route_batch(rules_from(FINANCE), events)
    out = events_from_batch(result.per_route["dept.finance"])
    assert [e["data"]["trip_id"] for e in out] == ["trip-0001"]
    assert result.counts["dept.finance"] == 1
    assert result.policy_violations == {"dept.finance": 1}
    [(route, origin, reason, error)] = result.dead_letters
    assert (route, origin, reason) == ("dept.finance", 0, POLICY_VIOLATION)
    assert "data.trip_id" in error and VIN not in error and "redacted" in error
    assert len(result.dead_letter_events["dept.finance"]) == 1


def test_ids_of_the_kept_events_do_not_move(rules_from: Callable[[str], RuleSet]) -> None:
    clean = event("fleet.trip.ended", trip_id="trip-0001", energy_kwh=2.0)
    leaky = event("fleet.trip.ended", trip_id=f"x/{VIN}", energy_kwh=1.0)
    rules = rules_from(FINANCE)
    alone = route_batch(rules, [{**clean, "id": "b"}]).per_route["dept.finance"]
    mixed = route_batch(rules, [{**leaky, "id": "a"}, {**clean, "id": "b"}]).per_route["dept.finance"]
    assert mixed.attrs["id"].tolist() == alone.attrs["id"].tolist()


@pytest.mark.parametrize("value", [
    VIN,                                # exact
    f"{VIN}-1617012938000",             # embedded, as the trips handler builds trip ids
    f"fleet.trip.ended/{VIN}/x",        # templated
    f"ref:{VIN}",
    OTHER_VIN,                          # a VIN the batch did not see, by its shape
    f"car {OTHER_VIN.lower().upper()}!",
])
def test_raw_vins_are_found_exact_embedded_or_by_shape(value: str) -> None:
    finder = VinFinder([VIN])
    assert finder.has_vin(value)
    rows = column_vin_rows(np.array(["trip-1", value, None], dtype=object), finder)
    assert rows is not None and rows.tolist() == [False, True, False]


@pytest.mark.parametrize("value", [
    "0123456789abcdef0123456789abcdef",  # an hmac pseudonym (lower-case hex)
    "*************5678",                 # a masked VIN, 4 characters visible
    "16170129380001234",                 # 17 digits (no letter): a number, not a VIN
    "FLEETTRIPENDEDXXXX",                # 18 capitals, no digit
    "VF1AG00071234567",                  # 16 characters
    "trip-0001",
])
def test_pseudonyms_and_look_alikes_pass(value: str) -> None:
    assert not VinFinder([VIN]).has_vin(value)
    assert column_vin_rows(np.array([value], dtype=object), VinFinder([VIN])) is None


def test_vins_outside_the_vin_alphabet_are_matched_too() -> None:
    finder = VinFinder(["test-car-7"])
    assert finder.has_vin("trip/test-car-7/3")
    assert not finder.has_vin("trip/test-car-8/3")


def test_vin_shape() -> None:
    assert vin_shaped(VIN) and vin_shaped(OTHER_VIN)
    assert not vin_shaped(VIN.lower()) and not vin_shaped(VIN[:-1]) and not vin_shaped("VF1AG000712345678X")
    assert not vin_shaped("VF1AG0007I2345678")  # I is not in the VIN alphabet


def test_vins_inside_lists_are_found(rules_from: Callable[[str], RuleSet]) -> None:
    rows = column_vin_rows(np.array([["a", f"x{VIN}"], ["b"]], dtype=object), VinFinder([]))
    assert rows is not None and rows.tolist() == [True, False]


def test_a_leaking_template_is_dead_lettered_with_the_field(rules_from: Callable[[str], RuleSet]) -> None:
    rules = rules_from("""
        routes:
          - name: dept.finance
            match: {type: [fleet.charging.ended]}
            transform:
              - pick: [data.vin, data.session_id, data.energy_kwh]
              - hmac: {field: data.vin, to: data.vehicle_ref}
              - hmac: [subject, partitionkey]
              - template: {data.billing_ref: "{type}/{data.session_id}"}
              - set: {source: /pipeline/routes/dept.finance}
            to: [{topic: route.dept.finance}]
            policy: {vin: pseudonym}
    """)
    result = route_batch(rules, [event("fleet.charging.ended", session_id=f"{VIN}-cs-1", energy_kwh=3.0)])
    assert "dept.finance" not in result.per_route
    reasons = {(r, reason) for r, _, reason, _ in result.dead_letters}
    assert reasons == {("dept.finance", POLICY_VIOLATION)}
    [(_, _, _, error)] = result.dead_letters
    assert "data.session_id" in error  # the first field found; the event is dead-lettered once


def test_vin_forbidden_uses_the_declared_vin_fields(rules_from: Callable[[str], RuleSet]) -> None:
    # Grid events: the subject is a grid cell, and only data.vin holds a VIN.
    rules = rules_from("""
        routes:
          - name: peak
            match: {type: [fleet.grid.charging_demand]}
            transform:
              - pick: [data.cell, data.note]
            to: [{topic: route.peak}]
            policy: {vin: forbidden, vin_fields: [data.vin]}
    """)
    grid = {"type": "fleet.grid.charging_demand", "source": "/grid", "subject": "ev2abcd", "partitionkey": "ev2abcd",
            "time": 1, "data": {"cell": "ev2abcd", "vin": VIN}}
    leaky = {**grid, "data": {"cell": "ev2abce", "vin": VIN, "note": f"last {VIN.replace('7', '7')}"}}
    result = route_batch(rules, [grid, leaky])
    assert [e["data"]["cell"] for e in events_from_batch(result.per_route["peak"])] == ["ev2abcd"]
    assert [(o, reason) for _, o, reason, _ in result.dead_letters] == [(1, POLICY_VIOLATION)]


def test_location_forbidden_by_name_and_by_declared_field(rules_from: Callable[[str], RuleSet]) -> None:
    rules = rules_from("""
        routes:
          - name: dept.cs
            match: {type: [fleet.battery.low_soc]}
            transform:
              - pick: [data.vin, data.soc_pct, data.stop_lat, data.stop_lon, data.place]
            to: [{topic: route.dept.cs}]
            policy: {location: forbidden}
    """)
    events = [event(soc_pct=5.0),
              event(soc_pct=6.0, stop_lat=34.02, stop_lon=-6.84),
              event(soc_pct=7.0, place={"latitude": 34.02, "longitude": -6.84})]
    result = route_batch(rules, events)
    assert [e["data"]["soc_pct"] for e in events_from_batch(result.per_route["dept.cs"])] == [5.0]
    errors = sorted(error for _, _, _, error in result.dead_letters)
    assert len(errors) == 2
    assert "data.place.latitude" in errors[0] and "data.stop_lat" in errors[1]
    assert all("34.02" not in e for e in errors)

    # A field the policy declares as a location is one, whatever its columns are called.
    out = batch_from_events([event(home={"x": 1.5, "y": 2.5}), event(soc_pct=1.0)])
    guard = PolicyGuard(out, VinFinder())
    found = guard.check(out, DataPolicy(location="forbidden", location_fields=["data.home"]), np.arange(2))
    assert [(v.field, v.rows.tolist()) for v in found] == [("data.home.x", [True, False]), ("data.home.y", [True, False])]


def test_location_precision_every_coordinate_on_the_grid(rules_from: Callable[[str], RuleSet]) -> None:
    rules = rules_from("""
        routes:
          - name: dept.maintenance
            match: {type: [fleet.trip.ended]}
            transform:
              - pick: [data.vin, data.location, data.end, data.note_lat, data.note_lon]
              - coarsen: {field: data.location, precision_m: 1000}
                if_missing: skip
              - coarsen: {field: data.end, precision_m: 5000}
                if_missing: skip
            to: [{topic: route.dept.m}]
            policy: {vin: allowed, location_precision_m: 1000}
    """)
    loc = {"lat": 34.020913, "lon": -6.841655}
    events = [event("fleet.trip.ended", location=loc, end=loc),
              # a coordinate the load-time check does not know by name: exact, so not on the grid
              event("fleet.trip.ended", location=loc, note_lat=34.020913, note_lon=-6.841655)]
    result = route_batch(rules, events)
    kept = events_from_batch(result.per_route["dept.maintenance"])
    assert len(kept) == 1 and kept[0]["data"]["location"] != loc
    [(_, origin, reason, error)] = result.dead_letters
    assert (origin, reason) == (1, POLICY_VIOLATION) and "data.note_lat" in error


def test_the_check_can_be_switched_off_for_the_benchmark(rules_from: Callable[[str], RuleSet]) -> None:
    events = [event("fleet.trip.ended", trip_id=f"{VIN}-1", energy_kwh=1.5)]
    result = route_batch(rules_from(FINANCE), events, enforce_policies=False)
    assert result.counts["dept.finance"] == 1 and not result.dead_letters


def test_routes_without_a_restricting_policy_are_not_checked(rules_from: Callable[[str], RuleSet]) -> None:
    rules = rules_from("""
        routes:
          - name: ops
            match: {type: [fleet.trip.ended]}
            to: [{topic: route.ops}]
            policy: {vin: allowed}
    """)
    result = route_batch(rules, [event("fleet.trip.ended", trip_id=f"{VIN}-1")])
    assert result.counts["ops"] == 1 and not result.dead_letters


@pytest.mark.parametrize("precision_m", [100.0, 1000.0, 2500.0, 5000.0])
def test_the_grid_test_agrees_with_coarsen(precision_m: float) -> None:
    rng = np.random.default_rng(7)
    lat, lon = rng.uniform(-80, 80, 5000), rng.uniform(-180, 180, 5000)
    spec = CoarsenSpec(lat="lat", lon="lon", precision_m=precision_m)
    lat2, lon2 = coarsen_coordinates(lat, lon, spec)
    assert on_coarsen_grid(lat2, lon2, precision_m).all()
    assert not on_coarsen_grid(lat, lon, precision_m).any()
    # a coarser grid of the same family is on the finer one; NaN is on none
    lat5, lon5 = coarsen_coordinates(lat, lon, CoarsenSpec(lat="lat", lon="lon", precision_m=precision_m * 5))
    assert on_coarsen_grid(lat5, lon5, precision_m).all()
    assert not on_coarsen_grid(np.array([np.nan]), np.array([1.0]), precision_m).any()


def test_a_violating_event_is_kept_as_a_redacted_routed_cloudevent(rules_from: Callable[[str], RuleSet]) -> None:
    from pipeline.core.batch import RawRecord
    from pipeline.core.events import encode_event, read_event
    from pipeline.core.rules.failures import REDACTED, as_routed, is_failure_of

    rules = rules_from(FINANCE)
    leaky = {**event("fleet.trip.ended", trip_id=f"{VIN}-1617012938000", energy_kwh=1.5), "id": "e1"}
    result = route_batch(rules, [leaky])
    failed = result.failed["dept.finance"]
    [(attrs, data)] = failed.rows()
    assert data["trip_id"] == REDACTED and data["energy_kwh"] == 1.5 and VIN not in str((attrs, data))
    assert (attrs["dlqroute"], attrs["dlqtarget"], attrs["dlqreason"], attrs["dlqattempts"]) == \
        ("dept.finance", "-", POLICY_VIOLATION, 0)
    assert "data.trip_id" in attrs["dlqerror"]
    # the id it would have had on the route, so a replay is recognised as the same event
    clean = route_batch(rules, [{**leaky, "data": {**leaky["data"], "trip_id": "trip-1"}}])
    assert attrs["id"] == clean.per_route["dept.finance"].attrs["id"][0]
    # a valid CloudEvent: the failure attributes are extensions any consumer can read
    rec = encode_event(attrs, data)
    got, _ = read_event(RawRecord("route.dept.finance.dlq", 0, 0, rec.key, rec.value, tuple(rec.headers)))
    assert is_failure_of(got, "dept.finance") and "dlqroute" not in as_routed(got)


def test_a_column_found_clean_is_checked_again_once_new_vins_are_known() -> None:
    # Two routes output the same text; only the second route's events carry the VIN in it.
    source = batch_from_events([event(vin="car-11"), event(vin="car-77")])
    note = {"type": "fleet.trip.ended", "source": "/pipeline/routes/x", "id": "a", "time": 1,
            "data": {"note": "trip car-77-1"}}
    out = batch_from_events([note, note])
    policy = DataPolicy(vin="pseudonym", vin_fields=["data.vin"])
    guard = PolicyGuard(source, VinFinder())
    assert [v.field for v in guard.check(out, policy, np.array([0, 0]))] == []
    assert [v.field for v in guard.check(out, policy, np.array([1, 1]))] == ["data.note"]


def test_known_values_cost_no_learning() -> None:
    finder = VinFinder([VIN, None, "car-77"])  # type: ignore[list-item]  # an absent attribute is None
    generation = finder.generation
    finder.learn([None, VIN, "car-77"])
    assert finder.generation == generation and finder.odd == ("car-77",)
    finder.learn([OTHER_VIN])
    assert finder.generation == generation + 1 and OTHER_VIN in finder.vins
