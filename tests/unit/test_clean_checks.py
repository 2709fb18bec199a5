"""Cleaning as a list of checks: one module each, with its reasons, run in the config's order."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.clean import Cleaner, load_cleaning_config, parse_cleaning_config
from pipeline.core.clean.config import GROUP_CHECKS, ROW_CHECKS, StuckRule
from pipeline.core.clean.outcomes import REASONS
from pipeline.core.errors import ConfigError
from tests.unit.test_clean_support import ACCEL, frame, readings_of, seconds

CHECK_MODULES = ("signals", "clock", "timestamps", "duplicates", "ranges", "spikes", "gps", "rates", "stuck")
SHIPPED = Path(__file__).resolve().parents[2] / "rules" / "cleaning.yaml"
VIN = "VF1AAAAA000000001"


@pytest.fixture(scope="module")
def catalog():  # type: ignore[no-untyped-def]
    return load_catalog()


def test_every_dropped_reason_belongs_to_one_check_module() -> None:
    declared: list[str] = []
    for name in CHECK_MODULES:
        module = importlib.import_module(f"pipeline.core.clean.{name}")
        declared += list(module.REASONS)
        assert ast.get_docstring(ast.parse(Path(module.__file__ or "").read_text())), name
    assert sorted(declared) == sorted(r for r in REASONS if r.startswith("dropped."))
    assert len(declared) == len(set(declared))


def test_the_shipped_config_lists_every_check_in_order() -> None:
    assert load_cleaning_config(SHIPPED).checks == ROW_CHECKS + GROUP_CHECKS


@pytest.mark.parametrize(("checks", "message"), [
    ("[signals, clock_skew, sparkle]", "unknown check 'sparkle'"),
    ("[clock_skew, timestamps]", "signals check cannot be left out"),
    ("[signals, duplicates, timestamps]", "come first and in this order"),
    ("[signals, timestamps, clock_skew]", "come first and in this order"),
    ("[signals, stuck, stuck]", "listed twice"),
])
def test_a_bad_check_list_is_rejected_with_its_line(checks: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_cleaning_config(f"version: 1\n\nchecks: {checks}\n", file="cleaning.yaml")
    assert message in str(err.value) and "cleaning.yaml" in str(err.value) and ":3" in str(err.value)


def test_a_check_left_out_is_off(catalog) -> None:  # type: ignore[no-untyped-def]
    rule = StuckRule(min_duration_ms=5_000, min_count=4)
    t = seconds(0, 10)
    batch = [frame(VIN, 1, t[-1] + 100, {ACCEL: (t, [0.1, 0.2] + [1.5] * 8)})]
    config = load_cleaning_config().model_copy(update={"stuck": {ACCEL: rule}})
    on = Cleaner(catalog, config).clean(readings_of(batch))
    assert on.counts.get("dropped.stuck", 0) == 7  # every repeat after the run's first reading
    off = config.model_copy(update={"checks": tuple(c for c in config.checks if c != "stuck")})
    assert "dropped.stuck" not in Cleaner(catalog, off).clean(readings_of(batch)).counts


def test_group_checks_run_in_the_config_order(catalog) -> None:  # type: ignore[no-untyped-def]
    # a reading both out of range and repeated at the same time: the first check listed
    # gives its reason
    t = seconds(0, 3)
    batch = [frame(VIN, 1, t[-1] + 100, {ACCEL: ([t[0], t[1], t[1]], [0.1, 0.2, 500.0])})]
    config = load_cleaning_config()
    first = Cleaner(catalog, config).clean(readings_of(batch))
    assert first.counts.get("dropped.duplicate") == 1
    swapped = ROW_CHECKS + ("range", "duplicates") + tuple(c for c in GROUP_CHECKS if c not in ("duplicates", "range"))
    late = Cleaner(catalog, config.model_copy(update={"checks": swapped})).clean(readings_of(batch))
    assert late.counts.get("dropped.out_of_range") == 1 and "dropped.duplicate" not in late.counts
