"""Clock skew: frames from a vehicle clock that is off are repaired by the estimate, or dropped."""

from __future__ import annotations

import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.clean import Cleaner, CleanResult, load_cleaning_config
from tests.oracles.clean import ReferenceCleaner
from tests.unit.test_clean_support import SPEED, frame, readings_of, seconds

VIN = "VF1AAAAA000000001"
HOUR = 3_600_000


@pytest.fixture(scope="module")
def catalog():  # type: ignore[no-untyped-def]
    return load_catalog()


def outcomes(result: CleanResult) -> list[str]:
    return [result.reasons[c] for c in result.outcome]


def skewed(seq: int, start_s: float, skew_ms: int, *, delay_ms: int = 300) -> dict:
    """A frame of 5 speed readings whose vehicle clock is `skew_ms` off; arrives `delay_ms` after."""
    t = seconds(start_s, 5)
    true_sent = t[-1] + 100
    return frame(VIN, seq, true_sent + skew_ms, {SPEED: ([x + skew_ms for x in t], [10.0, 11, 12, 13, 14])},
                 received_at=true_sent + delay_ms)


def test_a_clock_ahead_is_repaired_by_the_estimate(catalog) -> None:  # type: ignore[no-untyped-def]
    batch = [skewed(1, 0, 0), skewed(2, 5, 2 * HOUR), skewed(3, 10, 2 * HOUR, delay_ms=500)]
    result = Cleaner(catalog).clean(readings_of(batch))
    assert outcomes(result) == ["kept"] * 5 + ["repaired.clock_skew"] * 10
    # times shifted back by the median offset of the two frames: true times plus the
    # median network delay (300 and 500 ms)
    expected = [t + 400 for t in seconds(5, 10)]
    assert result.readings.t.tolist() == [t for t in seconds(0, 5)] + expected
    assert result.repaired.sum() == 10
    assert result.counts["repaired.clock_skew"] == 10


def test_a_lone_skewed_frame_is_dropped(catalog) -> None:  # type: ignore[no-untyped-def]
    batch = [skewed(1, 0, 0), skewed(2, 5, -20 * 60_000), skewed(3, 10, 0)]
    result = Cleaner(catalog).clean(readings_of(batch))
    assert outcomes(result) == ["kept"] * 5 + ["dropped.clock_skew"] * 5 + ["kept"] * 5


def test_a_late_frame_keeps_its_times(catalog) -> None:  # type: ignore[no-untyped-def]
    cleaner = Cleaner(catalog)
    cleaner.clean(readings_of([skewed(1, 0, 0), skewed(3, 10, 0)]))
    # seq 2 arrives ten minutes late: its send time fits between seq 1 and 3, its clock is right
    late = skewed(2, 5, 0, delay_ms=10 * 60_000)
    result = cleaner.clean(readings_of([late, skewed(4, 15, 0)]))
    assert outcomes(result) == ["kept"] * 10
    assert sorted(result.readings.t.tolist()) == seconds(5, 5) + seconds(15, 5)
    assert result.late.sum() == 5


def test_a_clock_behind_is_repaired_across_batches(catalog) -> None:  # type: ignore[no-untyped-def]
    cleaner = Cleaner(catalog)
    cleaner.clean(readings_of([skewed(1, 0, 0)]))
    # the clock goes back 90 s: the send time goes back against seq order
    first = cleaner.clean(readings_of([skewed(2, 5, -90_000), skewed(3, 10, -90_000)]))
    assert outcomes(first) == ["repaired.clock_skew"] * 10
    assert first.readings.t.tolist() == [t + 300 for t in seconds(5, 10)]  # true times + delay
    # the next batch holds one frame of the episode: history corroborates the estimate,
    # on this worker and on one that took the vehicle's partition
    moved = Cleaner(catalog)
    moved.import_state(cleaner.export_state([VIN]))
    for c in (cleaner, moved):
        later = c.clean(readings_of([skewed(4, 15, -90_000)]))
        assert outcomes(later) == ["repaired.clock_skew"] * 5
    # the clock is right again: the episode ends
    assert outcomes(cleaner.clean(readings_of([skewed(5, 20, 0)]))) == ["kept"] * 5


def test_a_clock_behind_from_the_first_frame_is_repaired(catalog) -> None:  # type: ignore[no-untyped-def]
    # no history to go back against: the offset stays the same across frames sent 5 s
    # apart, which no delivery delay does
    batch = [skewed(1, 0, -13_000), skewed(2, 5, -13_000)]
    result = Cleaner(catalog).clean(readings_of(batch))
    assert outcomes(result) == ["repaired.clock_skew"] * 10
    # frames delivered late in one backlog keep their times: their offsets differ
    backlog = [skewed(1, 0, 0, delay_ms=9 * 60_000), skewed(2, 5, 0, delay_ms=9 * 60_000 - 4_990)]
    assert outcomes(Cleaner(catalog).clean(readings_of(backlog))) == ["kept"] * 10


def test_small_offsets_are_left_alone_and_the_check_can_be_off(catalog) -> None:  # type: ignore[no-untyped-def]
    batch = [skewed(1, 0, 0), skewed(2, 5, 3_000), skewed(3, 10, 3_000)]
    assert outcomes(Cleaner(catalog).clean(readings_of(batch))) == ["kept"] * 15
    config = load_cleaning_config()
    off = config.model_copy(update={"time": config.time.model_copy(update={"max_clock_skew_s": None})})
    ahead = [skewed(1, 0, 0), skewed(2, 5, 2 * HOUR), skewed(3, 10, 2 * HOUR)]
    assert outcomes(Cleaner(catalog, off).clean(readings_of(ahead))) == \
        ["kept"] * 5 + ["dropped.future_timestamp"] * 10


def test_reference_agrees_on_skewed_frames(catalog) -> None:  # type: ignore[no-untyped-def]
    batches = [
        [skewed(1, 0, 0), skewed(2, 5, 2 * HOUR), skewed(3, 10, 2 * HOUR)],
        [skewed(4, 15, 2 * HOUR), skewed(5, 20, -20 * 60_000), skewed(6, 25, 0)],
        [skewed(7, 30, -90_000), skewed(8, 35, -90_000), skewed(9, 40, 0, delay_ms=8 * 60_000)],
    ]
    fast, slow = Cleaner(catalog), ReferenceCleaner(catalog)
    for batch in batches:
        readings = readings_of(batch)
        result, expected = fast.clean(readings), slow.clean(readings)
        assert result.outcome.tolist() == expected.outcome
        assert sorted(result.readings.t.tolist()) == sorted(r[2] for r in expected.rows)
