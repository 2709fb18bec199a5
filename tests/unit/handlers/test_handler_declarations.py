"""Declared event fields: checked when the decorator runs, enforced on every emit, true of the shipped handlers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.handlers import HandlerContext, HandlerInput, handler
from pipeline.core.handlers.loader import load_functions
from pipeline.core.handlers.registry import FieldSpec, spec_of
from pipeline.core.handlers.testing import HandlerHarness, synthetic_fleet
from pipeline.runtime.settings import REPO_ROOT

SPEED = "Vehicle.Speed"


def _emitter(data: dict[str, Any], declared: dict[str, str]) -> Any:
    @handler(name="probe", consumes=[SPEED], emits={"fleet.test.probe": declared})
    def probe(batch: HandlerInput, ctx: HandlerContext) -> None:
        s = batch.signal(SPEED)
        ctx.emit("fleet.test.probe", time=s.t[:1], origin=s.record_at(np.array([0])), vehicle=s.vehicle[:1],
                 data=data)

    return probe


def _run(fn: Any) -> Any:
    harness = HandlerHarness(fn)
    try:
        return harness.run({"VIN1": {SPEED: ([0, 1000], [10.0, 12.0])}})
    finally:
        harness.close()


def test_the_declaration_is_parsed_into_fields() -> None:
    spec = spec_of(_emitter({}, {"vin": "string", "kmh": "number?", "place.lat": "number"}))
    assert spec is not None and spec.emits == ("fleet.test.probe",)
    assert spec.fields["fleet.test.probe"] == (FieldSpec("vin", "string", True), FieldSpec("kmh", "number", False),
                                               FieldSpec("place.lat", "number", True))


@pytest.mark.parametrize("declared, message", [
    ({"vin": "text"}, "not one of string, number, integer, boolean"),
    ({"vin": "string", "bad name": "number"}, "not a field name"),
    ({"vin": "string", "place": "string", "place.lat": "number"}, "both as a field and as an object"),
])
def test_a_bad_declaration_is_a_config_error_naming_the_handler(declared: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _emitter({}, declared)
    assert "probe" in str(info.value)


def test_emits_that_break_the_declaration_fail_the_handler_with_the_reason() -> None:
    ok = _run(_emitter({"kmh": np.array([1.0])}, {"vin": "string", "kmh": "number"}))
    assert ok.events_of("fleet.test.probe")[0]["kmh"] == 1.0
    for data, declared, reason in [
        ({"kmh": np.array([1.0]), "extra": np.array([2])}, {"vin": "string", "kmh": "number"}, "'extra' is not declared"),
        ({"kmh": np.array([1.0])}, {"vin": "string", "kmh": "integer"}, "declared integer but has dtype float64"),
        ({"kmh": np.array([np.nan])}, {"vin": "string", "kmh": "number"}, "required but absent"),
        ({}, {"vin": "string", "kmh": "number"}, "required 'kmh' not emitted"),
    ]:
        result = _run(_emitter(data, declared))
        assert result.events_of("fleet.test.probe") == []
        assert result.stats["probe"].errors == 1
        assert any(reason in dl.error for dl in result.dead_letters), (reason, [d.error for d in result.dead_letters])
    absent_ok = _run(_emitter({"kmh": np.array([np.nan])}, {"vin": "string", "kmh": "number?"}))
    assert absent_ok.events_of("fleet.test.probe")[0].get("kmh") is None


def test_every_shipped_handler_declares_its_fields_and_keeps_to_them() -> None:
    registry = load_functions(REPO_ROOT / "functions", strict=True)
    assert len(registry) >= 9
    for spec in registry:
        assert set(spec.fields) == set(spec.emits), f"{spec.name} declares no fields for some of its events"
    harness = HandlerHarness(*registry.ordered())
    try:
        types: set[str] = set()
        for i in range(3):  # consecutive batches, so runs that span batches end and emit
            result = harness.run(synthetic_fleet(60, 120, start_ms=1_700_000_000_000 + i * 120_000, seed=3))
            assert all(s.errors == 0 for s in result.stats.values()), {k: s.errors for k, s in result.stats.items()}
            types |= set(result.types())
        assert len(types) >= 5, types
    finally:
        harness.close()
