"""`pipeline functions list|test`."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from pipeline.commands.functions import register

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
