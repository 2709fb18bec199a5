"""Cleaning quality against ground truth: a small simulated fleet meets the recall targets."""

from __future__ import annotations

import pytest

from pipeline.quality import MAX_WRONGLY_DROPPED, RECALL_TARGETS, simulated_quality, twizy_quality
from pipeline.sim.faults import parse_fault_rates

# Fault rates raised well above the defaults so that a small, fast run still holds
# enough of every targeted fault for a recall of 0.99 to mean something.
RATES = ("spike=0.004,gps_jump=0.02,teleport=0.004,null_island=0.004,duplicate=0.01,"
         "nan=0.002,out_of_range=0.002,wrong_unit=0.004,late=0.005,out_of_order=0.005")
ENOUGH = {"spike": 300, "gps_jump": 60, "teleport": 5, "null_island": 5, "duplicate": 300,
          "out_of_range": 100, "nan": 100, "wrong_unit": 100}


@pytest.fixture(scope="module")
def report():  # type: ignore[no-untyped-def]
    return simulated_quality(vehicles=120, duration_s=420, seed=11, fault_rates=parse_fault_rates(RATES))


def test_recall_targets_met(report) -> None:  # type: ignore[no-untyped-def]
    for fault, target in RECALL_TARGETS.items():
        score = report.faults[fault]
        assert score.readings >= ENOUGH[fault], f"{fault}: only {score.readings} faulty readings"
        assert score.recall >= target, f"{fault}: recall {score.recall:.4f} (outcomes {score.outcomes})"
    assert not report.failures()


def test_clean_readings_rarely_dropped(report) -> None:  # type: ignore[no-untyped-def]
    assert report.clean_readings > 200_000
    assert report.wrongly_dropped_rate <= MAX_WRONGLY_DROPPED, report.wrongly_dropped_by


def test_precision_of_the_reasons(report) -> None:  # type: ignore[no-untyped-def]
    # a reading dropped for a reason mostly had the fault that reason answers
    for fault in ("spike", "nan", "gps_jump", "null_island", "duplicate", "wrong_unit"):
        assert report.faults[fault].precision >= 0.95, (fault, report.faults[fault].precision)


def test_late_frames_are_kept_and_marked(report) -> None:  # type: ignore[no-untyped-def]
    for fault in ("late", "out_of_order"):
        kept, marked = report.late_frames[fault]
        assert kept > 100 and marked >= 0.95 * kept, (fault, kept, marked)


def test_real_trip_keeps_its_readings() -> None:
    trip = next(t for t in twizy_quality() if t.file == "T1_03_29_2021")
    assert trip.readings > 50_000
    # speed and SoC are held and step on this logger; nothing of them may be lost
    assert not {"Vehicle.Speed", "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
                "Vehicle.Exterior.Humidity", "Vehicle.Exterior.AirTemperature"} & set(trip.by_signal)
    assert trip.counts.get("dropped", 0) <= 0.001 * trip.readings
