"""Data policies: a rules edit that would leak personal data is rejected when the rules load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.core.rules.loader import check_rules


def route(transform: str, policy: str, match: str = "    match: {type: [fleet.trip.ended]}\n") -> str:
    text = "routes:\n  - name: dept.x\n" + match + "    to: [{topic: route.dept.x}]\n"
    if transform:
        text += "    transform:\n" + "".join(f"      - {step}\n" for step in transform.strip().splitlines())
    return text + f"    policy: {policy}\n"


def violations(write_rules: Callable[..., Path], text: str) -> list[str]:
    _, errors = check_rules(write_rules(text), env={})
    return [f"{e.field}: {e.detail}" for e in errors]


PSEUDONYM_OK = """
pick: [data.vin, data.energy_kwh]
hmac: {field: data.vin, to: data.vehicle_ref}
hmac: [subject, partitionkey]
set: {source: /pipeline/routes/dept.x}
"""


@pytest.mark.parametrize(("transform", "policy", "leaks"), [
    # raw VIN left in data, or in attributes
    ("pick: [data.energy_kwh]", "{vin: pseudonym}", ["subject", "partitionkey", "source"]),
    ("hmac: [subject, partitionkey]\nset: {source: /x}", "{vin: pseudonym, location: forbidden}",
     ["data.vin", "data.location", "data.start", "data.end", "data.cell_lat", "data.cell_lon"]),
    # renaming does not launder: the VIN under another name is still the VIN
    (PSEUDONYM_OK + "rename: {data.energy_kwh: data.kwh}\ntemplate: {data.note: 'vehicle {subject}'}", "{vin: forbidden}",
     ["data.note", "data.vehicle_ref", "partitionkey", "subject"]),
    # a template that pastes the raw VIN into text
    (PSEUDONYM_OK + "template: {data.note: 'car {data.vehicle_ref} / {data.energy_kwh}'}", "{vin: pseudonym}", []),
    ("pick: [data.vin]\ntemplate: {data.note: 'car {data.vin}'}\ndrop: [data.vin]\nhmac: [subject, partitionkey]\nset: {source: /x}",
     "{vin: pseudonym}", ["data.note"]),
    # masks: at most `mask_max_visible` characters visible
    ("pick: [data.vin]\nmask: {field: data.vin, keep_last: 4}\ndrop: [subject, partitionkey]\nset: {source: /x}", "{vin: pseudonym}", []),
    ("pick: [data.vin]\nmask: {field: data.vin, keep_last: 8}\ndrop: [subject, partitionkey]\nset: {source: /x}", "{vin: pseudonym}", ["data.vin"]),
    # locations: precision
    ("pick: [data.location]", "{location_precision_m: 1000}", ["data.location"]),
    ("pick: [data.location]\ncoarsen: {field: data.location, precision_m: 500}", "{location_precision_m: 1000}", ["data.location"]),
    ("pick: [data.location]\ncoarsen: {field: data.location, precision_m: 1000}", "{location_precision_m: 1000}", []),
    ("pick: [data.location]\ncoarsen: {field: data.location, decimals: 2}", "{location_precision_m: 1000}", []),
    ("pick: [data.location]\ncoarsen: {field: data.location, decimals: 3}", "{location_precision_m: 1000}", ["data.location"]),
    # a split moves exact coordinates under a new name
    ("pick: [data.start, data.end]\nsplit: {by: [data.start, data.end], to: data.place}", "{location_precision_m: 1000}", ["data.place"]),
    ("pick: [data.start, data.end]\nsplit: {by: [data.start, data.end], to: data.place}\ncoarsen: {field: data.place, precision_m: 2000}",
     "{location_precision_m: 1000}", []),
    # forbidden fields, also when renamed or hashed
    ("pick: [data.trip_id, data.vin]\nrename: {data.trip_id: data.ref}", "{forbidden_fields: [data.trip_id]}", ["data.ref"]),
    ("pick: [data.vin]", "{forbidden_fields: [data.trip_id]}", []),
])
def test_policy_violations_are_caught_at_load(write_rules: Callable[..., Path], transform: str, policy: str, leaks: list[str]) -> None:
    found = violations(write_rules, route(transform, policy))
    assert sorted(f.split(":")[0] for f in found) == sorted(leaks), found


def test_a_violation_names_the_route_line_and_a_fix(write_rules: Callable[..., Path]) -> None:
    path = write_rules(route("pick: [data.vin, data.location]\nhmac: [subject, partitionkey]\nset: {source: /x}",
                             "{vin: pseudonym, location_precision_m: 1000}"))
    _, errors = check_rules(path, env={})
    texts = sorted(str(e) for e in errors)
    assert len(texts) == 2
    assert texts[0].endswith("route 'dept.x': field 'data.location': policy needs locations no finer than 1000 m, "
                             "but 'data.location' is exact (from 'data.location'): `coarsen` it to precision_m >= 1000 or drop it")
    assert "routes.yaml:9: route 'dept.x': field 'data.vin': policy `vin: pseudonym`, but 'data.vin' can carry the raw VIN" in texts[1]
    assert all(e.line == 9 for e in errors)  # the `policy:` line


def test_vin_fields_can_be_narrowed_for_events_without_a_vehicle(write_rules: Callable[..., Path]) -> None:
    text = route("pick: [data.cell, data.expected_kw]", "{vin: forbidden, vin_fields: [data.vin], location: forbidden}",
                 match="    match: {type: [fleet.grid.charging_demand]}\n")
    assert violations(write_rules, text) == []
