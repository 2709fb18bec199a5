"""`pipeline replay --region R` sends only the vehicles homed in R (to R's brokers)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.tools.recording import RecordingReader
from pipeline.tools.regions import load
from pipeline.tools.replay import default_twizy_dir


def test_replay_region_keeps_the_vehicles_homed_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    regions_file = tmp_path / "regions.yaml"
    regions_file.write_text(
        "regions:\n"
        "  a: {kafka_bootstrap: 'h-a:9092', s3_bucket: ba, app_id: ga}\n"
        "  b: {kafka_bootstrap: 'h-b:9092', s3_bucket: bb, app_id: gb}\n"
        "home: {prefixes: {}, default: hash}\n")
    monkeypatch.setenv("REGIONS_FILE", str(regions_file))
    regions = load(regions_file)
    runner = CliRunner()
    seen: dict[str, Counter[str]] = {}
    for region in ("a", "b"):
        out = tmp_path / f"{region}.rec"
        result = runner.invoke(app, ["replay", "--twizy", "--twizy-dir", str(default_twizy_dir()),
                                     "--vehicles", "6", "--speed", "max", "--out", str(out),
                                     "--region", region, "--json"])
        assert result.exit_code == 0, result.output
        seen[region] = Counter((r.key or b"").decode() for r in RecordingReader(out))
    assert seen["a"] and seen["b"]  # six vehicles spread over both regions
    assert all(regions.home_of(vin) == "a" for vin in seen["a"])
    assert all(regions.home_of(vin) == "b" for vin in seen["b"])
    assert not set(seen["a"]) & set(seen["b"])
    assert len(set(seen["a"]) | set(seen["b"])) == 6


def test_replay_unknown_region_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    regions_file = tmp_path / "regions.yaml"
    regions_file.write_text("regions:\n  a: {kafka_bootstrap: 'h:1', s3_bucket: b, app_id: g}\n")
    monkeypatch.setenv("REGIONS_FILE", str(regions_file))
    result = CliRunner().invoke(app, ["replay", "--twizy", "--out", str(tmp_path / "x.rec"), "--region", "zz"])
    assert result.exit_code != 0
    assert "unknown region 'zz'" in result.output


def test_simulate_region_needs_kafka_and_a_known_region(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    regions_file = tmp_path / "regions.yaml"
    regions_file.write_text("regions:\n  a: {kafka_bootstrap: 'h:1', s3_bucket: b, app_id: g}\n")
    monkeypatch.setenv("REGIONS_FILE", str(regions_file))
    runner = CliRunner()
    to_file = runner.invoke(app, ["simulate", "--vehicles", "2", "--duration", "10",
                                  "--out", str(tmp_path / "x.rec"), "--region", "a"])
    assert to_file.exit_code != 0 and "--region goes with --to kafka" in to_file.output
    unknown = runner.invoke(app, ["simulate", "--vehicles", "2", "--duration", "10", "--to", "kafka",
                                  "--region", "zz"])
    assert unknown.exit_code != 0 and "unknown region 'zz'" in unknown.output
