"""`pipeline functions list|test`."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from pipeline.cli.functions import register

FUNCTIONS = Path(__file__).resolve().parents[3] / "functions"


def app() -> typer.Typer:
    a = typer.Typer()
    register(a)

    @a.command("noop")
    def noop() -> None:  # a second command keeps `functions` a sub-group
        pass

    return a


def test_list_shows_every_shipped_handler_with_source() -> None:
    result = CliRunner().invoke(app(), ["functions", "list", "--dir", str(FUNCTIONS)])
    assert result.exit_code == 0, result.output
    for name in ("harsh_driving", "trips", "geofence", "charging_demand", "battery_alerts", "dtc"):
        assert name in result.output
    assert "fleet.trip.ended" in result.output and "trips.py" in result.output


def test_list_fails_and_names_a_broken_file(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def (\n")
    result = CliRunner().invoke(app(), ["functions", "list", "--dir", str(tmp_path)])
    assert result.exit_code == 1 and "broken.py:1" in result.output


def test_test_runs_one_file_on_a_synthetic_batch() -> None:
    result = CliRunner().invoke(app(), ["functions", "test", str(FUNCTIONS / "harsh_driving.py"),
                                        "--vehicles", "10", "--seconds", "10"])
    assert result.exit_code == 0, result.output
    assert "harsh_driving: rows_in=" in result.output


def test_test_fails_when_the_handler_saw_no_rows(tmp_path: Path) -> None:
    # The test fleet has no battery temperature: passing here would test nothing.
    (tmp_path / "cold_battery.py").write_text(
        "from pipeline.core.handlers import HandlerContext, HandlerInput, handler\n"
        "TEMP = 'Vehicle.Powertrain.TractionBattery.Temperature.Average'\n"
        "@handler(name='cold_battery', consumes=[TEMP], emits=['fleet.battery.cold'])\n"
        "def cold_battery(batch: HandlerInput, ctx: HandlerContext) -> None:\n"
        "    batch.signal(TEMP)\n")
    result = CliRunner().invoke(app(), ["functions", "test", str(tmp_path / "cold_battery.py"),
                                        "--vehicles", "5", "--seconds", "5"])
    assert result.exit_code == 1, result.output
    assert "cold_battery saw no rows" in result.output
    assert "Vehicle.Powertrain.TractionBattery.Temperature.Average" in result.output
    assert "Vehicle.Speed" in result.output  # what the test fleet does have
