"""Outcome codes of the cleaning stage and its result.

Every reading ends with one outcome: `kept`, a repair, or the `dropped.<reason>` of the
first check it fails. The dropped reasons are listed in the order the checks run; each
check module declares the reasons it writes (`REASONS` there), and
`tests/unit/test_clean_checks.py` checks that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.core.batch import BoolArray, CodeArray, Readings

# Outcome codes: index into REASONS. The order of the dropped reasons is the order in
# which the checks run; the first check a reading fails is its reason.
REASONS: tuple[str, ...] = (
    "kept",
    "repaired",  # repaired in more than one way (unit converted and spike repaired)
    "repaired.unit",  # value converted to the catalog's canonical unit
    "repaired.spike",  # value replaced by its Hampel window median
    "repaired.clock_skew",  # times shifted by the vehicle's estimated clock offset
    "dropped.unknown_signal",
    "dropped.unit_unconvertible",
    "dropped.non_finite",
    "dropped.future_timestamp",
    "dropped.too_old",
    "dropped.duplicate",
    "dropped.clock_skew",
    "dropped.out_of_range",
    "dropped.spike",
    "dropped.gps_null_island",
    "dropped.gps_out_of_bounds",
    "dropped.gps_poor_accuracy",
    "dropped.gps_implied_speed",
    "dropped.rate_of_change",
    "dropped.stuck",
)
CODE = {name: i for i, name in enumerate(REASONS)}
KEPT, REPAIRED, REPAIRED_UNIT, REPAIRED_SPIKE, REPAIRED_CLOCK = 0, 1, 2, 3, 4
UNKNOWN_SIGNAL = CODE["dropped.unknown_signal"]
UNIT_UNCONVERTIBLE = CODE["dropped.unit_unconvertible"]
NON_FINITE = CODE["dropped.non_finite"]
FUTURE_TIMESTAMP = CODE["dropped.future_timestamp"]
TOO_OLD = CODE["dropped.too_old"]
DUPLICATE = CODE["dropped.duplicate"]
CLOCK_SKEW = CODE["dropped.clock_skew"]
OUT_OF_RANGE = CODE["dropped.out_of_range"]
GPS_NULL_ISLAND = CODE["dropped.gps_null_island"]
GPS_OUT_OF_BOUNDS = CODE["dropped.gps_out_of_bounds"]
GPS_POOR_ACCURACY = CODE["dropped.gps_poor_accuracy"]
GPS_IMPLIED_SPEED = CODE["dropped.gps_implied_speed"]
SPIKE = CODE["dropped.spike"]
RATE_OF_CHANGE = CODE["dropped.rate_of_change"]
STUCK = CODE["dropped.stuck"]
FIRST_DROPPED = UNKNOWN_SIGNAL



@dataclass(slots=True)
class CleanResult:
    """Clean readings and the account of every input reading.

    `readings`: kept and repaired rows, sorted by (vehicle, signal, t), signal indexes
    into the catalog, values in canonical units (unit index 0). `repaired` and `late`
    are aligned with `readings`; `late` marks rows that arrived after a later reading of
    the same series. `outcome` is per input row, an index into `reasons`. `counts` has
    `in`, `kept`, `repaired`, `dropped`, `late` and one entry per reason that occurred,
    so `in == kept + repaired + dropped`.
    """

    readings: Readings
    repaired: BoolArray
    outcome: CodeArray
    reasons: list[str]
    counts: dict[str, int]
    late: BoolArray
    timings: dict[str, float] = field(default_factory=dict)
