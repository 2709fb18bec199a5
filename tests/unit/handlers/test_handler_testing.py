"""The in-memory test helpers users rely on."""

from __future__ import annotations

import numpy as np

from pipeline.core.handlers.testing import make_events, make_readings, synthetic_fleet


def test_make_readings_is_sorted_like_clean_output_with_one_record_per_vehicle() -> None:
    readings, records = make_readings({
        "B": {"Vehicle.Speed": ([30, 10], [3.0, 1.0])},
        "A": {"Vehicle.TraveledDistance": ([5], [9.0]), "Vehicle.Speed": ([20], [2.0])},
    }, offset=7)
    key = np.lexsort((readings.t, readings.signal, readings.vehicle))
    assert key.tolist() == list(range(len(readings)))
    assert readings.vins == ["B", "A"] and [r.offset for r in records] == [7, 8]
    b_speed = readings.take(readings.vehicle == 0)
    assert b_speed.t.tolist() == [10, 30] and b_speed.value.tolist() == [1.0, 3.0]
    assert readings.frames.record[readings.frame].tolist() == readings.vehicle.tolist()


def test_make_events_marks_missing_fields_absent() -> None:
    ev = make_events([{"type": "fleet.a.b", "vin": "V", "time": 1, "x": 1.0}, {"type": "fleet.a.b", "vin": "W", "time": 2}])
    assert ev.is_present("x").tolist() == [True, False]
    assert ev.attrs["subject"].tolist() == ["V", "W"]


def test_synthetic_fleet_is_sorted_and_has_frames_for_every_reading() -> None:
    readings, records = synthetic_fleet(10, 5, records_per_vehicle=2)
    assert len(records) == 20
    key = np.lexsort((readings.t, readings.signal, readings.vehicle))
    assert (key == np.arange(len(readings))).all()
    assert readings.frames.n_readings.sum() == len(readings)
    assert (readings.frames.sent_at[readings.frame] >= readings.t).all()
