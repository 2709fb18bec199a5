"""Transforms: reshape, constants, templates, split, pseudonyms, masks, coarsening, buckets.

Each case runs through the vectorised router and the per-event reference, which must agree.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.core.rules.columns import batch_from_events, events_from_batch
from pipeline.core.rules.loader import RuleSet
from pipeline.core.rules.router import Router
from pipeline.core.rules.transform import coarsen_coordinates
from tests.oracles.rules import route_events

from .conftest import VIN, event

KEY = b"unit-test-key"


def route_one(ruleset: RuleSet, events: list[dict[str, Any]], name: str = "r", key: bytes = KEY) -> list[dict[str, Any]]:
    """Outputs of route `name`, after checking the vectorised and per-event results agree."""
    events = [{"id": f"ev-{i}", **e} for i, e in enumerate(events)]
    result = Router(ruleset, key).route(batch_from_events(events))
    vectorised = events_from_batch(result.per_route[name]) if name in result.per_route else []
    reference = route_events(ruleset, events, key)
    assert vectorised == reference.per_route.get(name, [])
    assert sorted((r, i, reason) for r, i, reason, _ in result.dead_letters) == sorted(reference.dead_letters)
    return vectorised


def rules(body: str) -> str:
    return "routes:\n  - name: r\n    to: [{topic: route.r}]\n" + body


def test_pick_keeps_only_listed_fields_and_whole_objects(rules_from: Callable[[str], RuleSet]) -> None:
    rs = rules_from(rules("""
    transform:
      - pick: [data.soc_pct, data.location]
    """))
    (out,) = route_one(rs, [event(soc_pct=12.0, location={"lat": 1.5, "lon": 2.5}, zone="z")])
    assert out["data"] == {"soc_pct": 12.0, "location": {"lat": 1.5, "lon": 2.5}}
    assert out["subject"] == VIN  # attributes stay


def test_drop_removes_fields_and_optional_attributes(rules_from: Callable[[str], RuleSet]) -> None:
    rs = rules_from(rules("""
    transform:
      - drop: [data.vin, data.location, partitionkey]
    """))
    (out,) = route_one(rs, [event(soc_pct=12.0, location={"lat": 1.5, "lon": 2.5})])
    assert out["data"] == {"soc_pct": 12.0}
    assert "partitionkey" not in out


def test_rename_moves_values_and_objects(rules_from: Callable[[str], RuleSet]) -> None:
    rs = rules_from(rules("""
    transform:
      - rename: {data.soc_pct: data.battery.soc, data.location: data.position}
    """))
    (out,) = route_one(rs, [event(soc_pct=12.0, location={"lat": 1.5, "lon": 2.5})])
    assert out["data"] == {"vin": VIN, "battery": {"soc": 12.0}, "position": {"lat": 1.5, "lon": 2.5}}


def test_set_constants_in_data_and_attributes(rules_from: Callable[[str], RuleSet]) -> None:
    rs = rules_from(rules("""
    transform:
      - set: {data.schema: billing.v1, data.version: 2, data.final: true, source: /pipeline/routes/r, type: fleet.alert}
    """))
    (out,) = route_one(rs, [event(soc_pct=1.0)])
    assert out["data"]["schema"] == "billing.v1"
    assert out["data"]["version"] == 2 and out["data"]["final"] is True
    assert (out["source"], out["type"]) == ("/pipeline/routes/r", "fleet.alert")


def test_template_reads_attributes_and_data(rules_from: Callable[[str], RuleSet]) -> None:
    rs = rules_from(rules("""
    transform:
      - template: {data.summary: "{type}: {data.soc_pct}% at {{depot}} for {subject} ({data.ok})"}
    """))
    (out,) = route_one(rs, [event(soc_pct=12.5, ok=True)])
    assert out["data"]["summary"] == f"fleet.battery.low_soc: 12.5% at {{depot}} for {VIN} (true)"


def test_missing_field_dead_letters_the_event_with_the_reason(rules_from: Callable[[str], RuleSet]) -> None:
    rs = rules_from(rules("""
    transform:
      - template: {data.summary: "{data.soc_pct}%"}
    """))
    events = [{"id": "a", **event(soc_pct=12.0)}, {"id": "b", **event(), "origin": 7}]
    result = Router(rs, KEY).route(batch_from_events(events))
    assert result.counts["r"] == 1
    assert result.dead_letters == [("r", 7, "missing_field", "step 1 (template): field 'data.soc_pct' is missing")]
    assert result.dead_letter_events["r"].attrs["id"].tolist() == ["b"]


def test_if_missing_skip_leaves_events_without_the_field_alone(rules_from: Callable[[str], RuleSet]) -> None:
    rs = rules_from(rules("""
    transform:
      - bucket: {field: data.soc_pct, width: 10}
        if_missing: skip
    """))
    out = route_one(rs, [event(soc_pct=17.5), event()])
    assert [o["data"].get("soc_pct") for o in out] == [10.0, None]


def test_hmac_pseudonyms_are_stable_keyed_and_not_the_input(rules_from: Callable[[str], RuleSet]) -> None:
    rs = rules_from(rules("""
    transform:
      - hmac: {field: data.vin, to: data.vehicle_ref}
      - hmac: [subject, partitionkey]
    """))
    other = "VF1AG000799999999"
    out = route_one(rs, [event(), event(vin=other), event()])
    refs = [o["data"]["vehicle_ref"] for o in out]
    assert refs[0] == refs[2] != refs[1]  # same input -> same pseudonym
    assert refs[0] == hmac.new(KEY, VIN.encode(), hashlib.sha256).hexdigest()[:32]
    assert VIN not in refs[0] and "vin" not in out[0]["data"]
    assert out[0]["subject"] == out[0]["partitionkey"] == refs[0]
    with_other_key = route_one(rs, [event()], key=b"another-key")
    assert with_other_key[0]["data"]["vehicle_ref"] != refs[0]  # different key -> different pseudonym


def test_hmac_of_numbers_uses_their_text(rules_from: Callable[[str], RuleSet]) -> None:
    rs = rules_from(rules("""
    transform:
      - hmac: {field: data.n, length: 12, prefix: "n-"}
    """))
    ints = route_one(rs, [event(n=5), event(n=7)])
    assert ints[0]["data"]["n"] == "n-" + hmac.new(KEY, b"5", hashlib.sha256).hexdigest()[:12]
    floats = route_one(rs, [event(n=5.5)])
    assert floats[0]["data"]["n"] == "n-" + hmac.new(KEY, b"5.5", hashlib.sha256).hexdigest()[:12]


def test_mask_keeps_the_ends(rules_from: Callable[[str], RuleSet]) -> None:
    rs = rules_from(rules("""
    transform:
      - mask: {field: data.vin, keep_first: 3, keep_last: 4, char: "#"}
    """))
    (out,) = route_one(rs, [event()])
    assert out["data"]["vin"] == VIN[:3] + "#" * (len(VIN) - 7) + VIN[-4:]


def test_coarsen_snaps_to_a_grid_of_the_given_size(rules_from: Callable[[str], RuleSet]) -> None:
    rs = rules_from(rules("""
    transform:
      - coarsen: {field: data.location, precision_m: 1000}
    """))
    points = [(48.8566, 2.3522), (48.8570, 2.3530), (-33.8688, 151.2093)]
    out = route_one(rs, [event(location={"lat": a, "lon": b}) for a, b in points])
    got = [(o["data"]["location"]["lat"], o["data"]["location"]["lon"]) for o in out]
    step = 1000 / 111_320
    for (lat, lon), (glat, glon) in zip(points, got, strict=True):
        assert abs(glat - lat) <= step / 2 + 1e-6
        assert abs(glon - lon) <= step / 2 / math.cos(math.radians(glat)) + 1e-6
        assert abs(glat / step - round(glat / step)) < 1e-3  # on the grid
    assert got[0] == got[1]  # two nearby points fall in one cell


def test_coarsen_by_decimals_and_explicit_fields() -> None:
    from pipeline.core.rules.schema import CoarsenSpec

    lat, lon = coarsen_coordinates(np.array([48.85661]), np.array([2.35222]), CoarsenSpec(lat="data.a", lon="data.b", decimals=2))
    assert (lat[0], lon[0]) == (48.86, 2.35)


def test_bucket_by_width_and_by_labelled_edges(rules_from: Callable[[str], RuleSet]) -> None:
    rs = rules_from(rules("""
    transform:
      - bucket: {field: data.energy_kwh, to: data.band, edges: [10, 50], labels: [small, medium, large]}
      - bucket: {field: data.speed_kmh, width: 20, offset: 5}
    """))
    out = route_one(rs, [event(energy_kwh=e, speed_kmh=s) for e, s in [(3.0, 4.0), (10.0, 25.0), (49.9, 44.9), (80.0, 45.0)]])
    assert [o["data"]["band"] for o in out] == ["small", "medium", "medium", "large"]
    assert [o["data"]["speed_kmh"] for o in out] == [-15.0, 25.0, 25.0, 45.0]
    assert all("energy_kwh" not in o["data"] for o in out)


def test_bucket_of_text_is_a_wrong_type_dead_letter(rules_from: Callable[[str], RuleSet]) -> None:
    rs = rules_from(rules("""
    transform:
      - bucket: {field: data.energy_kwh, width: 5}
    """))
    events = [event(energy_kwh=7.0), event(energy_kwh="7")]
    result = Router(rs, KEY).route(batch_from_events([{"id": f"e{i}", **e} for i, e in enumerate(events)]))
    assert result.counts["r"] == 1
    assert [d[2] for d in result.dead_letters] == ["wrong_type"]
    route_one(rs, events)


def test_split_by_fields_makes_one_event_per_part_with_deterministic_ids(rules_from: Callable[[str], RuleSet]) -> None:
    rs = rules_from(rules("""
    transform:
      - pick: [data.vin, data.trip_id, data.start, data.end]
      - split: {by: [data.start, data.end], to: data.location, index_to: data.point}
    """))
    trip = event("fleet.trip.ended", trip_id="t1", start={"lat": 1.0, "lon": 2.0}, end={"lat": 3.0, "lon": 4.0})
    only_start = event("fleet.trip.ended", trip_id="t2", start={"lat": 5.0, "lon": 6.0})
    out = route_one(rs, [trip, only_start])
    # Each event's parts stay together, in event order (per-vehicle order is kept).
    assert [(o["data"]["trip_id"], o["data"]["point"], o["data"]["location"]) for o in out] == [
        ("t1", "start", {"lat": 1.0, "lon": 2.0}), ("t1", "end", {"lat": 3.0, "lon": 4.0}),
        ("t2", "start", {"lat": 5.0, "lon": 6.0})]
    assert [o["id"] for o in out] == ["ev-0/r/0", "ev-0/r/1",
                                      "ev-1/r/0"]
    assert all("start" not in o["data"] and "end" not in o["data"] for o in out)


def test_split_of_an_array_makes_one_event_per_element(rules_from: Callable[[str], RuleSet]) -> None:
    rs = rules_from(rules("""
    transform:
      - split: {field: data.codes, to: data.code, index_to: data.position}
    """))
    out = route_one(rs, [event("fleet.dtc.appeared", codes=["P0420", "U0100"]), event("fleet.dtc.appeared", codes=[])])
    assert [(o["data"]["code"], o["data"]["position"]) for o in out] == [("P0420", 0), ("U0100", 1)]
    assert [o["id"] for o in out] == ["ev-0/r/0", "ev-0/r/1"]


def test_routed_ids_are_deterministic_per_route(rules_from: Callable[[str], RuleSet]) -> None:
    rs = rules_from("""
    routes:
      - name: a
        to: [{topic: route.a}]
      - name: b
        to: [{topic: route.b}]
    """)
    batch = batch_from_events([{"id": "x1", **event()}, {"id": "x2", **event()}])
    first = Router(rs, KEY).route(batch)
    again = Router(rs, KEY).route(batch)
    assert first.per_route["a"].attrs["id"].tolist() == ["x1/a/0", "x2/a/0"]
    assert first.per_route["b"].attrs["id"].tolist() == ["x1/b/0", "x2/b/0"]
    assert again.per_route["a"].attrs["id"].tolist() == first.per_route["a"].attrs["id"].tolist()
