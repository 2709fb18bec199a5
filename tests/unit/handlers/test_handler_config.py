"""handlers.yaml: zones and settings are validated with file, zone or handler, field and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.handlers.config import load_handler_config


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    p = tmp_path / "handlers.yaml"
    p.write_text(text)
    return load_handler_config(p)


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    cfg = load_handler_config(tmp_path / "absent.yaml")
    assert cfg.for_handler("x", {"a": 1}) == {"a": 1} and cfg.enabled("x") and cfg.zones == ()


def test_settings_override_defaults_and_unknown_keys_are_rejected(tmp_path: Path) -> None:
    cfg = load(tmp_path, "version: 1\nhandlers:\n  speeding:\n    limit_kmh: 90\n    limt: 3\n")
    assert cfg.for_handler("speeding", {"limit_kmh": 130, "limt2": 0})["limit_kmh"] == 90
    with pytest.raises(ConfigError) as err:
        cfg.check_keys("speeding", {"limit_kmh": 130})
    assert err.value.line == 5 and err.value.field == "limt" and "handler speeding" in str(err.value)


@pytest.mark.parametrize(("zone", "fld", "line"), [
    ("  - {name: a, circle: {lat: 1, lon: 2}}\n", "circle", 3),
    ("  - {name: a, polygon: [[0, 0], [1, 1]]}\n", "polygon", 3),
    ("  - {name: a}\n", "circle", 3),
    ("  - {circle: {lat: 1, lon: 2, radius_m: 5}}\n", "name", 3),
    ("  - name: a\n    circle: {lat: 1, lon: 2, radius_m: 5}\n    speed_limit_kmh: -3\n", "speed_limit_kmh", 5),
    ("  - name: a\n    circle: {lat: 1, lon: 2, radius_m: 5}\n    colour: red\n", "colour", 5),
])
def test_bad_zones_name_the_field_and_line(tmp_path: Path, zone: str, fld: str, line: int) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "version: 1\nzones:\n" + zone)
    assert err.value.field == fld and err.value.line == line and "handlers.yaml" in str(err.value)


def test_zone_membership_circle_and_polygon(tmp_path: Path) -> None:
    cfg = load(tmp_path, "zones:\n  - {name: c, circle: {lat: 34.0, lon: -6.8, radius_m: 1000}}\n"
                         "  - {name: p, polygon: [[0, 0], [0, 1], [1, 1], [1, 0]], speed_limit_kmh: 30}\n")
    circle, poly = cfg.zones
    lat = np.array([34.0, 34.008, 34.0099, 0.5])
    lon = np.array([-6.8, -6.8, -6.8, 0.5])
    assert circle.contains(lat, lon).tolist() == [True, True, False, False]
    assert poly.contains(lat, lon).tolist() == [False, False, False, True] and poly.speed_limit_kmh == 30


def test_shipped_handlers_yaml_is_valid() -> None:
    cfg = load_handler_config(Path(__file__).resolve().parents[3] / "functions" / "handlers.yaml")
    assert {z.name for z in cfg.zones} >= {"depot-rabat"}
