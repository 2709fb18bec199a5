"""The @handler decorator's checks and the registry's validation and ordering."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.handlers.registry import Registry, handler, spec_of


def _fn(batch: Any, ctx: Any) -> None:
    return None


def make(name: str, consumes: list[str], emits: list[str]) -> Any:
    return spec_of(handler(name=name, consumes=consumes, emits=emits)(_fn.__class__(_fn.__code__, {})))


def test_decorator_records_spec_and_splits_signals_from_events() -> None:
    @handler(name="h1", consumes=["Vehicle.Speed", "fleet.trip.ended"], emits=["fleet.x.y"],
             optional=["Vehicle.TraveledDistance"], state=True, timeout_ms=50, retries=2)
    def h1(batch: Any, ctx: Any) -> None:
        """One line."""

    spec = spec_of(h1)
    assert spec is not None
    assert spec.signals == ("Vehicle.Speed",) and spec.events == ("fleet.trip.ended",)
    assert spec.state and spec.timeout_ms == 50 and spec.retries == 2
    assert spec.source_file.endswith("test_handler_registry.py") and spec.line > 0
    assert spec.description == "One line."


@pytest.mark.parametrize(("kwargs", "fld"), [
    ({"name": "Bad-Name", "consumes": ["Vehicle.Speed"], "emits": ["fleet.a.b"]}, "name"),
    ({"name": "h", "consumes": [], "emits": ["fleet.a.b"]}, "consumes"),
    ({"name": "h", "consumes": ["speed"], "emits": ["fleet.a.b"]}, "consumes"),
    ({"name": "h", "consumes": ["Vehicle.Speed"], "emits": []}, "emits"),
    ({"name": "h", "consumes": ["Vehicle.Speed"], "emits": ["Fleet A"]}, "emits"),
    ({"name": "h", "consumes": ["Vehicle.Speed"], "emits": ["fleet.vehicle.sensor.frame"]}, "emits"),
    ({"name": "h", "consumes": ["fleet.a.b"], "emits": ["fleet.a.b"]}, "consumes"),
    ({"name": "h", "consumes": ["Vehicle.Speed"], "emits": ["fleet.a.b"], "timeout_ms": 0}, "timeout_ms"),
])
def test_decorator_rejects_bad_specs_naming_the_field(kwargs: dict[str, Any], fld: str) -> None:
    with pytest.raises(ConfigError) as err:
        handler(**kwargs)(_fn)
    assert err.value.field == fld
    assert "test_handler_registry.py" in str(err.value)


def test_duplicate_names_are_rejected_with_the_other_location() -> None:
    a, b = make("same", ["Vehicle.Speed"], ["fleet.a.b"]), make("same", ["Vehicle.Speed"], ["fleet.c.d"])
    reg = Registry([a])
    with pytest.raises(ConfigError, match="duplicate handler name"):
        reg.add(b)


def test_validate_checks_signals_against_the_catalog_but_not_optional_ones() -> None:
    @handler(name="h", consumes=["Vehicle.Speed"], optional=["Vehicle.Made.Up"], emits=["fleet.a.b"])
    def ok(batch: Any, ctx: Any) -> None: ...

    @handler(name="g", consumes=["Vehicle.Nope"], emits=["fleet.c.d"])
    def bad(batch: Any, ctx: Any) -> None: ...

    warnings = Registry([spec_of(ok)]).validate(["Vehicle.Speed"])  # type: ignore[list-item]
    assert any("Vehicle.Made.Up" in w for w in warnings)
    with pytest.raises(ConfigError, match="Vehicle.Nope") as err:
        Registry([spec_of(bad)]).validate(["Vehicle.Speed"])  # type: ignore[list-item]
    assert err.value.field == "consumes" and err.value.line


def test_order_puts_event_producers_first_and_rejects_cycles() -> None:
    consumer = make("a_consumer", ["fleet.p.done"], ["fleet.c.done"])
    producer = make("z_producer", ["Vehicle.Speed"], ["fleet.p.done"])
    assert Registry([consumer, producer]).names() == ["z_producer", "a_consumer"]
    x = make("x", ["fleet.y.out"], ["fleet.x.out"])
    y = make("y", ["fleet.x.out"], ["fleet.y.out"])
    with pytest.raises(ConfigError, match="cycle"):
        Registry([x, y]).validate(None)
