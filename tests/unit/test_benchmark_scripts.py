"""The benchmark scripts that need no services run end to end on a small load and print
their figures: they are how the performance claims in the README are produced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "benchmarks"

SMALL = {
    "decode": ["--batches", "2", "--batch-size", "50", "--repeat", "1"],
    "clean": ["--vehicles", "20", "--duration", "30", "--batch", "5000", "--reference-batches", "1"],
    "rules": ["--batch", "500", "--batches", "2", "--rounds", "1", "--reference-events", "200"],
    "handlers": ["--vehicles", "20", "--seconds", "30", "--readings", "5000", "--repeat", "2"],
}


def run_json(name: str) -> dict:
    """The script's --json output; it must exit 0 and report only non-negative numbers."""
    proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *SMALL[name], "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    numbers = [v for v in out.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert numbers and all(v >= 0 for v in numbers)
    return out


@pytest.mark.parametrize("name", sorted(set(SMALL) - {"handlers"}))
def test_benchmark_runs_and_reports_numbers(name: str) -> None:
    run_json(name)


def test_handler_benchmark_compares_with_cleaning_on_the_same_batches() -> None:
    out = run_json("handlers")
    assert out["source"] == "simulator" and out["cleaning_timed"]
    assert out["clean_ms_per_batch"] > 0 and out["handlers_ms_per_batch"] > 0
    assert out["ratio_handlers_to_clean"] == pytest.approx(
        out["handlers_ms_per_batch"] / out["clean_ms_per_batch"], rel=0.02)
    assert len(out["ratio_per_pass"]) == 2
    assert set(out["per_handler_ms_per_batch"]) >= {"trips", "harsh_driving", "geofence"}
