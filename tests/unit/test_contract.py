"""`pipeline contract`: the AsyncAPI document, its schemas from the declarations, and the official parser."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline.core.events import encode_events
from pipeline.core.handlers import HandlerContext, HandlerInput, handler
from pipeline.core.handlers.registry import FieldSpec, Registry, spec_of
from pipeline.core.handlers.testing import HandlerHarness, synthetic_fleet
from pipeline.core.rules.router import Router
from pipeline.runtime.settings import REPO_ROOT, Settings
from pipeline.tools.contract import (
    build_contract,
    declared_schema,
    load_contract_inputs,
    message_schemas,
    type_always_matches,
    type_can_match,
)
from tests.unit.functions.test_fn_routes import scenario

SETTINGS = Settings()


@pytest.fixture(scope="module")
def shipped() -> tuple[dict, object, Registry]:
    ruleset, registry = load_contract_inputs(SETTINGS)
    return build_contract(ruleset, registry, SETTINGS), ruleset, registry


def test_one_channel_per_topic_with_cloudevents_headers(shipped: tuple) -> None:
    document, ruleset, _ = shipped
    assert document["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in document["channels"].values()}
    route_topics = {t.topic for r in ruleset.all_routes() for t in r.spec.to if hasattr(t, "topic")}
    assert addresses == route_topics | {SETTINGS.topic_sensor, SETTINGS.topic_gps, SETTINGS.topic_dlq}
    actions = {op["action"] for op in document["operations"].values()}
    assert actions == {"send", "receive"}
    finance = document["components"]["messages"]["dept.finance__fleet.charging.ended"]
    headers = finance["headers"]
    assert {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_partitionkey",
            "content-type"} <= set(headers["required"])
    assert headers["properties"]["ce_type"]["const"] == "fleet.charging.ended"
    assert headers["properties"]["ce_source"]["const"] == "/pipeline/routes/dept.finance"
    assert finance["bindings"]["kafka"]["key"]["type"] == "string"


def test_route_schemas_are_the_declarations_after_the_transforms(shipped: tuple) -> None:
    document, _, _ = shipped
    schemas = document["components"]["schemas"]
    finance = schemas["dept.finance__fleet.charging.ended"]
    # pick + hmac(vin -> vehicle_ref) + set: no VIN, no location; a pseudonym and the constant
    assert "vin" not in finance["properties"] and "location" not in finance["properties"]
    assert finance["properties"]["vehicle_ref"] == {"type": "string"}
    assert {"vehicle_ref", "session_ref", "duration_s", "currency_basis", "billing_ref"} <= set(finance["required"])
    assert "session_id" not in finance["properties"]  # built from the VIN: hashed
    assert "energy_kwh" not in finance["required"]  # declared number? in the handler
    maintenance = schemas["dept.maintenance__fleet.trip.ended"]
    assert maintenance["properties"]["location"]["required"] == ["lat", "lon"]  # renamed from end
    assert "end" not in maintenance["properties"]
    # unmatched passes events unchanged: the handler's declaration itself
    assert sorted(schemas["unmatched__fleet.geofence.entered"]["required"]) == ["location", "vin", "zone"]


def test_a_changed_declaration_changes_the_contract(shipped: tuple) -> None:
    _, ruleset, registry = shipped

    @handler(name="charging", consumes=["Vehicle.Speed"],
             emits={"fleet.charging.ended": {"vin": "string", "session_id": "string", "energy_kwh": "number",
                                             "duration_s": "number", "tariff": "string"}})
    def charging(batch: HandlerInput, ctx: HandlerContext) -> None:
        return None

    spec = spec_of(charging)
    assert spec is not None
    others = [s for s in registry.ordered() if s.name != "charging"]
    document = build_contract(ruleset, Registry([*others, spec]), SETTINGS)
    schemas = document["components"]["schemas"]
    assert "tariff" not in schemas["dept.finance__fleet.charging.ended"]["properties"]  # not picked
    assert "energy_kwh" in schemas["dept.finance__fleet.charging.ended"]["required"]  # now required
    assert schemas["unmatched__fleet.charging.ended"]["properties"]["tariff"] == {"type": "string"}
    assert "fleet.charging.started" not in schemas


def test_which_types_reach_a_route(shipped: tuple) -> None:
    _, ruleset, _ = shipped
    maintenance = ruleset.get("dept.maintenance").predicate
    assert type_can_match(maintenance, "fleet.dtc.cleared")
    assert type_always_matches(maintenance, "fleet.dtc.cleared")
    assert not type_can_match(maintenance, "fleet.charging.ended")
    finance = ruleset.get("dept.finance").predicate
    assert type_can_match(finance, "fleet.trip.ended") and not type_always_matches(finance, "fleet.trip.ended")


def test_declared_schema_nests_dotted_names() -> None:
    schema = declared_schema([FieldSpec("vin", "string", True), FieldSpec("location.lat", "number", False),
                              FieldSpec("location.lon", "number", False), FieldSpec("n", "integer", True)])
    assert schema["required"] == ["n", "vin"]
    assert schema["properties"]["location"] == {
        "type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
        "additionalProperties": False}
    jsonschema.validate({"vin": "A", "n": 2}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"vin": "A", "n": 2.5}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"vin": "A", "n": 2, "extra": 1}, schema)


def test_every_routed_event_of_the_shipped_handlers_validates(shipped: tuple) -> None:
    """Events the handlers really emit, routed by the real rules, as consumers decode them."""
    import orjson

    document, ruleset, registry = shipped
    schemas = message_schemas(document)
    router = Router(ruleset, hmac_secret=b"test-key")
    harness = HandlerHarness(*registry.ordered())
    checked: dict[str, int] = {}
    try:
        batches = [scenario(), *(synthetic_fleet(60, 120, start_ms=1_700_000_000_000 + i * 120_000, seed=5)
                                 for i in range(3))]
        for data in batches:
            result = router.route(harness.run(data).events)
            for route, events in result.per_route.items():
                topic = result.targets[route][0].topic  # type: ignore[union-attr]
                for record in encode_events(events):
                    headers = {k: v.decode() for k, v in record.headers}
                    schema = schemas[(topic, headers["ce_type"])]
                    jsonschema.Draft7Validator(schema["headers"]).validate(headers)
                    jsonschema.Draft7Validator(schema["data"]).validate(orjson.loads(record.value))
                    checked[topic] = checked.get(topic, 0) + 1
    finally:
        harness.close()
    assert {"route.dept.maintenance", "route.dept.customer-service", "route.peak-shaving",
            "route.recommendation", "route.unmatched"} <= set(checked), checked
    assert sum(checked.values()) > 30, checked


def _check(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO_ROOT / "scripts" / "check-contract"), *map(str, files)],
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin:/usr/local/bin", "PIPELINE_PYTHON": sys.executable})


def test_the_official_asyncapi_parser_accepts_the_contract_and_rejects_a_broken_one(
        shipped: tuple, tmp_path: Path) -> None:
    document, _, _ = shipped
    good = tmp_path / "contract.yaml"
    good.write_text(yaml.safe_dump(document, sort_keys=False))
    result = _check(good)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid AsyncAPI 3.0.0" in result.stdout
    broken_doc = yaml.safe_load(good.read_text())
    first = next(iter(broken_doc["channels"].values()))
    first["messages"]["ghost"] = {"$ref": "#/components/messages/no-such-message"}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(broken_doc, sort_keys=False))
    result = _check(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "INVALID" in result.stdout
