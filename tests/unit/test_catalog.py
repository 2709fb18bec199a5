"""Signal catalog: the shipped file is valid VSS, conversions are right, bad files fail clearly."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.catalog import DATATYPES, INTEGER_RANGES, Catalog, load_catalog, parse_catalog
from pipeline.core.errors import ConfigError

SPEED = """\
  - name: Vehicle.Speed
    datatype: float
    unit: km/h
    min: 0
    max: 250
    max_rate: 40
    interval_ms: 500
    kind: sensor
    description: Vehicle speed.
    units: {mph: 1.609344}
"""

TEMPERATURE = """\
  - name: Vehicle.Exterior.AirTemperature
    datatype: float
    unit: celsius
    min: -50
    max: 60
    interval_ms: 10000
    kind: sensor
    description: Outside air.
    units:
      degF: {scale: 0.5555555555555556, offset: -17.77777777777778}
"""


def doc(*signals: str, header: str = "version: 1\n") -> str:
    return header + "signals:\n" + "".join(signals)


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_catalog(text, file="signals.yaml")
    return info.value


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing `needle`."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    return hits[nth - 1]


# --- the shipped catalog -------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def test_shipped_catalog_is_large_and_vss_named(catalog: Catalog) -> None:
    assert len(catalog) >= 30
    assert catalog.version == 1 and catalog.vss_version == "6.0"
    for sig in catalog.signals:
        assert re.fullmatch(r"Vehicle(\.[A-Z][A-Za-z0-9]*)+", sig.name), sig.name
        assert sig.datatype in DATATYPES
        assert sig.min < sig.max
        assert sig.interval_ms > 0
        if sig.datatype in INTEGER_RANGES:
            lo, hi = INTEGER_RANGES[sig.datatype]
            assert lo <= sig.min and sig.max <= hi, sig.name


@pytest.mark.parametrize(("name", "unit", "kind"), [
    ("Vehicle.Speed", "km/h", "sensor"),
    ("Vehicle.CurrentLocation.Latitude", "degrees", "gps"),
    ("Vehicle.CurrentLocation.Longitude", "degrees", "gps"),
    ("Vehicle.CurrentLocation.Altitude", "m", "gps"),
    ("Vehicle.CurrentLocation.Heading", "degrees", "gps"),
    ("Vehicle.CurrentLocation.HorizontalAccuracy", "m", "gps"),
    ("Vehicle.Acceleration.Longitudinal", "m/s^2", "sensor"),
    ("Vehicle.Acceleration.Lateral", "m/s^2", "sensor"),
    ("Vehicle.Acceleration.Vertical", "m/s^2", "sensor"),
    ("Vehicle.Powertrain.TractionBattery.StateOfCharge.Current", "percent", "sensor"),
    ("Vehicle.Powertrain.TractionBattery.Temperature.Average", "celsius", "sensor"),
    ("Vehicle.Powertrain.TractionBattery.CurrentPower", "W", "sensor"),
    ("Vehicle.Powertrain.TractionBattery.Charging.IsCharging", "", "sensor"),
    ("Vehicle.Chassis.Axle.Row2.Wheel.Right.Tire.Pressure", "kPa", "sensor"),
    ("Vehicle.TraveledDistance", "m", "sensor"),
    ("Vehicle.OBD.Status.DTCCount", "", "sensor"),
    ("Vehicle.Powertrain.Transmission.SelectedGear", "", "sensor"),
])
def test_key_signals_have_vss_units(catalog: Catalog, name: str, unit: str, kind: str) -> None:
    sig = catalog.signal(name)
    assert (sig.unit, sig.kind) == (unit, kind)


def test_acceleration_is_sampled_at_ten_hertz(catalog: Catalog) -> None:
    for axis in ("Longitudinal", "Lateral", "Vertical"):
        assert catalog.signal(f"Vehicle.Acceleration.{axis}").interval_ms == 100


def test_discrete_signals_have_no_rate_limit(catalog: Catalog) -> None:
    for sig in catalog.signals:
        if sig.datatype == "boolean" or sig.name.endswith(("Gear", "DTCCount")):
            assert sig.max_rate is None, sig.name


def test_arrays_follow_signal_order(catalog: Catalog) -> None:
    assert catalog.names == [s.name for s in catalog.signals]
    assert all(catalog.index[n] == i for i, n in enumerate(catalog.names))
    assert np.array_equal(catalog.min, [s.min for s in catalog.signals])
    assert np.array_equal(catalog.max, [s.max for s in catalog.signals])
    assert np.array_equal(catalog.interval_ms, [s.interval_ms for s in catalog.signals])
    rates = np.array([np.nan if s.max_rate is None else s.max_rate for s in catalog.signals])
    assert np.array_equal(catalog.max_rate, rates, equal_nan=True)
    assert np.array_equal(catalog.is_gps, [s.kind == "gps" for s in catalog.signals])


@pytest.mark.parametrize(("name", "unit", "value", "expected"), [
    ("Vehicle.Speed", "mph", 60.0, 96.56064),
    ("Vehicle.Speed", "m/s", 10.0, 36.0),
    ("Vehicle.Exterior.AirTemperature", "degF", 212.0, 100.0),
    ("Vehicle.Exterior.AirTemperature", "degF", -40.0, -40.0),
    ("Vehicle.Exterior.AirTemperature", "K", 273.15, 0.0),
    ("Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure", "psi", 32.0, 220.6322334),
    ("Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure", "bar", 2.4, 240.0),
    ("Vehicle.Powertrain.TractionBattery.StateOfCharge.Current", "ratio", 0.42, 42.0),
    ("Vehicle.Powertrain.TractionBattery.CurrentPower", "kW", -7.5, -7500.0),
    ("Vehicle.TraveledDistance", "mi", 1.0, 1609.344),
    ("Vehicle.TraveledDistance", "km", 12.5, 12500.0),
    ("Vehicle.Acceleration.Longitudinal", "g", 1.0, 9.80665),
])
def test_unit_conversions(catalog: Catalog, name: str, unit: str, value: float, expected: float) -> None:
    conv = catalog.signal(name).conversion(unit)
    assert conv is not None
    assert conv.apply(value) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    scale, offset, ok = catalog.conversion_table(["", unit])
    i = catalog.index[name]
    assert ok[i, 1]
    assert value * scale[i, 1] + offset[i, 1] == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_conversion_table_marks_units_a_signal_does_not_accept(catalog: Catalog) -> None:
    units = ["", "mph", "degF", "furlongs", "km/h"]
    scale, offset, ok = catalog.conversion_table(units)
    assert scale.shape == offset.shape == ok.shape == (len(catalog), len(units))
    assert ok[:, 0].all() and (scale[:, 0] == 1).all() and (offset[:, 0] == 0).all()
    assert not ok[:, 3].any() and np.isnan(scale[:, 3]).all()
    speed, temp = catalog.index["Vehicle.Speed"], catalog.index["Vehicle.Exterior.AirTemperature"]
    assert ok[speed, 1] and not ok[temp, 1]
    assert ok[temp, 2] and not ok[speed, 2]
    # the canonical unit written out explicitly is accepted as is
    assert ok[speed, 4] and scale[speed, 4] == 1 and offset[speed, 4] == 0
    assert not ok[temp, 4]
    # every accepted pair agrees with the per-signal conversion
    for s, sig in enumerate(catalog.signals):
        for u, unit in enumerate(units):
            conv = sig.conversion(unit)
            assert ok[s, u] == (conv is not None)
            if conv is not None:
                assert (scale[s, u], offset[s, u]) == (conv.scale, conv.offset)


def test_lookup_returns_minus_one_for_unknown(catalog: Catalog) -> None:
    out = catalog.lookup(["Vehicle.Speed", "Vehicle.Bogus", "Vehicle.CurrentLocation.Latitude"])
    assert out.dtype == np.int32
    assert out.tolist() == [catalog.index["Vehicle.Speed"], -1,
                            catalog.index["Vehicle.CurrentLocation.Latitude"]]
    assert catalog.lookup([]).shape == (0,)


# --- validation ----------------------------------------------------------------------------


def test_minimal_document_parses() -> None:
    cat = parse_catalog(doc(SPEED, TEMPERATURE))
    assert cat.names == ["Vehicle.Speed", "Vehicle.Exterior.AirTemperature"]
    assert cat.signal("Vehicle.Exterior.AirTemperature").max_rate is None


def test_unknown_key_is_named_with_its_line() -> None:
    text = doc(SPEED.replace("    kind: sensor\n", "    kind: sensor\n    colour: red\n"))
    err = error_of(text)
    assert (err.field, err.rule, err.line, err.file) == ("colour", "signal Vehicle.Speed",
                                                          line_of(text, "colour"), "signals.yaml")
    assert "signals.yaml:" in str(err) and "colour" in str(err)


def test_missing_key() -> None:
    err = error_of(doc(SPEED.replace("    description: Vehicle speed.\n", "")))
    assert (err.field, err.rule) == ("description", "signal Vehicle.Speed")


def test_min_not_below_max() -> None:
    text = doc(SPEED.replace("max: 250", "max: 0"))
    err = error_of(text)
    assert (err.field, err.line) == ("max", line_of(text, "max: 0"))


def test_negative_interval() -> None:
    err = error_of(doc(SPEED.replace("interval_ms: 500", "interval_ms: -5")))
    assert err.field == "interval_ms" and "positive" in str(err)


def test_unknown_datatype() -> None:
    err = error_of(doc(SPEED.replace("datatype: float", "datatype: float32")))
    assert err.field == "datatype" and "float32" in str(err)


def test_range_beyond_datatype() -> None:
    err = error_of(doc(SPEED.replace("datatype: float", "datatype: int8")))
    assert err.field == "max" and "int8" in str(err)


def test_unknown_kind() -> None:
    err = error_of(doc(SPEED.replace("kind: sensor", "kind: can")))
    assert err.field == "kind"


def test_zero_scale_unit() -> None:
    err = error_of(doc(SPEED.replace("{mph: 1.609344}", "{mph: 0}")))
    assert err.field == "units.mph"


def test_duplicate_signal_reports_second_line() -> None:
    text = doc(SPEED, TEMPERATURE, SPEED)
    err = error_of(text)
    assert err.rule == "signal Vehicle.Speed" and err.field == "name"
    assert err.line == line_of(text, "- name: Vehicle.Speed", nth=2)
    assert f"line {line_of(text, '- name: Vehicle.Speed')}" in str(err)


def test_duplicate_key_in_a_signal() -> None:
    text = doc(SPEED.replace("    min: 0\n", "    min: 0\n    min: 1\n"))
    err = error_of(text)
    assert err.field == "min" and err.line == line_of(text, "min: 1")


def test_version_is_required_and_checked() -> None:
    assert error_of(doc(SPEED, header="")).field == "version"
    assert error_of(doc(SPEED, header="version: 99\n")).field == "version"


def test_unknown_top_level_key() -> None:
    err = error_of(doc(SPEED, header="version: 1\nsignal: []\n"))
    assert err.field == "signal"


def test_bad_yaml_reports_line() -> None:
    err = error_of("version: 1\nsignals:\n  - name: [unclosed\n")
    assert err.line is not None and "invalid YAML" in str(err)


# --- loading and cache ---------------------------------------------------------------------


def test_load_is_cached_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "signals.yaml"
    path.write_text(doc(SPEED))
    first = load_catalog(path)
    assert load_catalog(path) is first
    path.write_text(doc(SPEED, TEMPERATURE))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    second = load_catalog(path)
    assert second is not first and len(second) == 2


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_catalog(tmp_path / "nope.yaml")


def test_error_message_names_file_signal_and_field() -> None:
    text = textwrap.dedent(doc(SPEED.replace("min: 0", "min: 300")))
    msg = str(error_of(text))
    assert msg.startswith("signals.yaml:") and "signal Vehicle.Speed" in msg and "'max'" in msg
