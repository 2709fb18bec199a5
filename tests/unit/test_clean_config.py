"""The cleaning config is validated at load: file, line, key and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.clean import Cleaner, load_cleaning_config, parse_cleaning_config
from pipeline.core.clean.config import DEFAULT_PATH
from pipeline.core.errors import ConfigError


def test_shipped_config_loads_and_matches_the_catalog() -> None:
    config = load_cleaning_config()
    assert config.source == str(DEFAULT_PATH)
    assert config.spikes and config.gps.max_speed_kmh
    Cleaner(load_catalog(), config)  # every signal it names is in the catalog


def test_empty_file_means_defaults() -> None:
    config = parse_cleaning_config("", file="c.yaml")
    assert config.time.max_age_ms > 0 and config.spikes == {}


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        ("time:\n  max_age_ms: -5\n", 2, "time.max_age_ms", "greater than 0"),
        ("time:\n  max_age: 5\n", 2, "time.max_age", "unknown key"),
        ("spikes:\n  Vehicle.Speed:\n    window: 6\n", 3, "spikes.Vehicle.Speed.window", "odd"),
        ("spikes:\n  Vehicle.Speed: {window: 7, action: smooth}\n", 2, "spikes.Vehicle.Speed.action",
         "drop"),
        ("gps:\n  bounds: {lat_min: 10, lat_max: 5}\n", 2, "gps.bounds", "lat_min"),
        ("rate_of_change:\n  tolerance: 0.5\n", 2, "rate_of_change.tolerance", "greater than or equal"),
        ("version: 2\n", None, "", "unsupported version"),
        ("stuck:\n  Vehicle.Speed:\n    min_count: many\n", 3, "stuck.Vehicle.Speed.min_count", "integer"),
    ],
)
def test_invalid_values_name_file_line_and_key(text: str, line: int | None, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_cleaning_config(text, file="rules/cleaning.yaml")
    exc = err.value
    assert exc.file == "rules/cleaning.yaml"
    if line is not None:
        assert exc.line == line
    if key:
        assert exc.rule == f"key {key}"
    assert words in str(exc)


def test_bad_yaml_has_a_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_cleaning_config("time:\n  max_age_ms: [1\n", file="x.yaml")
    assert err.value.line is not None and "invalid YAML" in str(err.value)


def test_signal_names_checked_against_the_catalog(tmp_path: Path) -> None:
    path = tmp_path / "cleaning.yaml"
    path.write_text("version: 1\nspikes:\n  Vehicle.Sped: {window: 5}\n")
    config = load_cleaning_config(path)
    with pytest.raises(ConfigError) as err:
        Cleaner(load_catalog(), config)
    assert err.value.file == str(path) and err.value.line == 3
    assert err.value.rule == "key spikes.Vehicle.Sped" and "not in the catalog" in str(err.value)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_cleaning_config(tmp_path / "nope.yaml")
