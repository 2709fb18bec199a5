"""Rules checked against the system: handlers' event types and declared identity fields."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli.rules import register
from pipeline.core.errors import ConfigError
from pipeline.core.handlers.loader import load_functions
from pipeline.core.handlers.registry import handler
from pipeline.core.rules.loader import REPO_ROOT, RuleSet, load_rules
from pipeline.core.rules.system import handler_emitters, system_warnings

FUNCTIONS = REPO_ROOT / "functions"


@pytest.fixture(scope="module")
def shipped_emitters() -> list:
    return handler_emitters(load_functions(FUNCTIONS))


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps `rules` a subcommand
    return app


def test_shipped_handlers_declare_the_ids_they_build_from_the_vin(shipped_emitters: list) -> None:
    identity = {e.name: e.identity for e in shipped_emitters if e.identity}
    assert identity == {"trips": ("trip_id",), "charging": ("session_id",)}


def test_shipped_rules_pass_against_the_shipped_handlers(shipped_emitters: list) -> None:
    assert system_warnings(load_rules(env={}), shipped_emitters) == []


def test_a_type_no_handler_emits_is_a_warning_with_its_line(rules_from: Callable[[str], RuleSet],
                                                            shipped_emitters: list) -> None:
    rules = rules_from("""
        routes:
          - name: dept.x
            match:
              type:
                - fleet.trip.ended
                - fleet.trip.endd
                - {prefix: fleet.charging.}
                - {prefix: fleet.chraging.}
            to: [{topic: route.dept.x}]
          - name: ops.y
            match:
              not: {type: [fleet.nothing.like.this]}
            to: [{topic: route.ops.y}]
    """)
    warnings = system_warnings(rules, shipped_emitters)
    assert len(warnings) == 2, warnings
    assert warnings[0].split(": ", 1)[0].endswith("routes.yaml:5")  # the `type:` line
    assert ("route 'dept.x': type pattern 'fleet.trip.endd' matches no event type a loaded handler or the "
            "vehicles emit, so it matches nothing (a typo?); known types: ") in warnings[0]
    assert "fleet.trip.ended" in warnings[0] and "fleet.vehicle.sensor.frame" in warnings[0]
    assert "prefix" in warnings[1] and "fleet.chraging." in warnings[1]


def test_an_identity_field_let_out_unhashed_is_a_warning(rules_from: Callable[[str], RuleSet],
                                                         shipped_emitters: list) -> None:
    # dept.finance as it was: the trip id, built from the VIN, left raw.
    rules = rules_from("""
        routes:
          - name: dept.finance
            match: {type: [fleet.charging.ended, fleet.trip.ended]}
            transform:
              - pick: [data.vin, data.trip_id, data.session_id, data.energy_kwh]
              - hmac: {field: data.vin, to: data.vehicle_ref}
              - hmac: [subject, partitionkey]
              - hmac: {field: data.session_id, to: data.session_ref}
              - set: {source: /pipeline/routes/dept.finance}
            to: [{topic: route.dept.finance}]
            policy: {vin: pseudonym}
          - name: dept.ops
            match: {type: [fleet.trip.ended]}
            transform:
              - pick: [data.trip_id]
            to: [{topic: route.dept.ops}]
    """)
    [warning] = system_warnings(rules, shipped_emitters)
    assert "routes.yaml:5: route 'dept.finance': 'data.trip_id' can carry data.trip_id" in warning
    assert "handler trips (" in warning and "trips.py:" in warning and "hmac it or drop it" in warning


def test_a_route_that_cannot_see_the_handler_is_not_warned(rules_from: Callable[[str], RuleSet],
                                                           shipped_emitters: list) -> None:
    rules = rules_from("""
        routes:
          - name: dept.x
            match: {type: [fleet.dtc.appeared]}
            transform:
              - pick: [data.trip_id, data.dtc_count]
            to: [{topic: route.dept.x}]
            policy: {vin: forbidden, vin_fields: [data.vin]}
    """)
    assert system_warnings(rules, shipped_emitters) == []


def test_cli_check_prints_the_warnings(cli: typer.Typer, tmp_path: Path) -> None:
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "x.yaml").write_text("routes:\n  - name: dept.x\n    match: {type: [fleet.trip.endd]}\n"
                                   "    to: [{topic: route.dept.x}]\n")
    result = CliRunner().invoke(cli, ["rules", "check", str(routes), "--functions", str(FUNCTIONS)])
    assert result.exit_code == 0, result.output
    assert "warning: " in result.output and "x.yaml:3: route 'dept.x': type pattern" in result.output
    clean = CliRunner().invoke(cli, ["rules", "check", "--functions", str(FUNCTIONS)])
    assert clean.exit_code == 0 and "warning" not in clean.output


def test_identity_names_are_checked() -> None:
    with pytest.raises(ConfigError, match="identity"):
        handler(name="x", consumes=["Vehicle.Speed"], emits=["fleet.x.y"], identity=["trip id"])(lambda b, c: None)
