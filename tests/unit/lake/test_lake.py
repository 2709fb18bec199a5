"""The lake's views and the documented example questions, on a local folder laid out as the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
from pyarrow import fs

from pipeline.cli.query import Format, render
from pipeline.core.batch import EventBatch
from pipeline.core.handlers.ops import geohash
from pipeline.runtime.settings import Settings
from pipeline.runtime.sinks import events_table, hive_prefix, parquet_bytes
from pipeline.tools.lake import (
    EXAMPLES,
    LakeError,
    column_alias,
    example,
    manifest_tables,
    open_lake,
    view_name,
)

T0 = 1_715_706_000_000  # 2024-05-14T17:00:00Z
DAY = 86_400_000


def _events(etype: str, vins: list[str], times: list[int], data: dict[str, list[object]]) -> EventBatch:
    n = len(vins)
    return EventBatch.build(type=etype, source="/pipeline/functions/x", vin=vins, time=times,
                            origin=list(range(n)), ids=[f"{etype}-{i}" for i in range(n)],
                            data={"vin": np.array(vins, dtype=object),
                                  **{k: np.asarray(v) for k, v in data.items()}})


def _put(root: Path, key: str, body: bytes) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    """Two vehicles over two days: trips, harsh braking, charging, readings and two manifests."""
    root = tmp_path / "bucket"
    trips = _events("fleet.trip.ended", ["A", "A", "B", "A"], [T0, T0 + 3_600_000, T0, T0 + DAY],
                    {"distance_km": [10.0, 30.0, 50.0, 60.0], "energy_kwh": [1.0, 2.0, 4.0, 5.0],
                     "trip_id": np.array(["t1", "t2", "t3", "t4"], dtype=object)})
    braking = _events("fleet.driving.harsh_braking", ["A", "A", "B"], [T0, T0, T0],
                      {"accel_ms2": [-5.0, -6.0, -5.5]})
    charging = _events("fleet.charging.ended", ["A", "B"], [T0, T0 + 60_000],
                       {"energy_kwh": [3.0, 1.5], "location.lat": [34.02, 34.021],
                        "location.lon": [-6.84, -6.841]})
    for i, batch in enumerate((trips, braking, charging)):
        etype = str(batch.attrs["type"][0])
        _put(root, f"events/{etype}/{hive_prefix(T0)}/seg-{i}.parquet", parquet_bytes(events_table(batch)))
    power, plug = "Vehicle.Powertrain.TractionBattery.CurrentPower", "Vehicle.Powertrain.TractionBattery.Charging.IsCharging"
    rows = [  # A charges at 7 kW for two minutes at one place; B draws power but is not plugged in
        ("A", "Vehicle.Speed", T0, 0.0), ("A", plug, T0, 1.0), ("A", "Vehicle.CurrentLocation.Latitude", T0, 34.02),
        ("A", "Vehicle.CurrentLocation.Longitude", T0, -6.84),
        ("A", power, T0, 7000.0), ("A", power, T0 + 60_000, 7000.0), ("A", power, T0 + 120_000, 7000.0),
        ("B", plug, T0, 0.0), ("B", "Vehicle.CurrentLocation.Latitude", T0, 34.02),
        ("B", "Vehicle.CurrentLocation.Longitude", T0, -6.84), ("B", power, T0, 5000.0), ("B", power, T0 + 60_000, 5000.0),
    ]
    readings = pa.table({"vin": pa.array([r[0] for r in rows]).dictionary_encode(),
                         "signal": pa.array([r[1] for r in rows]).dictionary_encode(),
                         "t": pa.array(np.array([r[2] for r in rows], dtype="datetime64[ms]")),
                         "value": [r[3] for r in rows], "repaired": [False] * len(rows),
                         "offset": list(range(len(rows)))})
    _put(root, f"clean/{hive_prefix(T0)}/seg.parquet", parquet_bytes(readings))
    manifests = [
        {"topic": "vehicle.sensor.raw", "partition": 0, "first_offset": 0, "last_offset": 9,
         "frames_in": 10, "frames_ok": 9, "frames_dead_lettered": 1, "readings_in": 100,
         "readings_kept": 90, "readings_repaired": 2, "readings_dropped": 8,
         "counts": {"kept": 90, "repaired.unit": 2, "dropped.spike": 5, "dropped.duplicate": 3},
         "dead_letters": {"decode:bad_json": 1}, "routed": {"dept.finance": 2}},
        {"topic": "vehicle.gps.raw", "partition": 1, "first_offset": 0, "last_offset": 4,
         "frames_in": 5, "frames_ok": 3, "frames_dead_lettered": 2, "readings_in": 20,
         "readings_kept": 19, "readings_repaired": 0, "readings_dropped": 1,
         "counts": {"kept": 19, "dropped.spike": 1},
         "dead_letters": {"decode:bad_json": 1, "decode:missing_field": 1}, "routed": {}},
    ]
    for m in manifests:
        _put(root, f"manifests/{m['topic']}/{m['partition']:03d}/0-{m['last_offset']}.json", orjson.dumps(m))
    return root


def _open(root: Path):  # type: ignore[no-untyped-def]
    return open_lake(Settings(s3_bucket=str(root)), filesystem=fs.LocalFileSystem())


def test_views_have_hive_partitions_as_columns_and_flat_event_fields(lake_dir: Path) -> None:
    lake = _open(lake_dir)
    assert {"readings", "events", "manifests", "reading_outcomes", "dead_letters", "fleet_trip_ended",
            "fleet_driving_harsh_braking", "fleet_charging_ended"} <= set(lake.views)
    row = lake.query("SELECT year, month, date, hour, count(*) AS n FROM readings GROUP BY ALL").to_pylist()
    assert row == [{"year": 2024, "month": 5, "date": 14, "hour": 17, "n": 12}]
    cols = lake.query("SELECT * FROM fleet_charging_ended LIMIT 0").column_names
    assert {"vin", "energy_kwh", "location_lat", "location_lon", "time", "type"} <= set(cols)
    assert lake.query("SELECT count(*) AS n FROM events").to_pylist() == [{"n": 9}]


def test_the_five_examples_answer_from_the_lake(lake_dir: Path) -> None:
    lake = _open(lake_dir)
    answers = {ex.name: lake.query(ex.sql).to_pylist() for ex in EXAMPLES}
    assert len(answers) == 5
    trips = {(r["vin"], str(r["day"])): r["trips"] for r in answers["trips-per-vehicle-day"]}
    assert trips == {("A", "2024-05-14"): 2, ("A", "2024-05-15"): 1, ("B", "2024-05-14"): 1}
    braking = {r["vin"]: r["per_100km"] for r in answers["harsh-braking-per-100km"]}
    assert braking == {"A": 2.0, "B": 2.0}  # A: 2 in 100 km, B: 1 in 50 km
    cell = geohash([34.02], [-6.84], 5)[0]
    charging = answers["charging-energy-per-cell-hour"]
    assert [(r["cell"], str(r["hour"]), r["vehicles"], r["kwh"]) for r in charging] == [
        (cell, "2024-05-14 17:00:00", 1, round(7000 * 120 / 3.6e6, 3))]  # 7 kW for 2 min
    dropped = {r["reason"]: r["readings"] for r in answers["dropped-readings-by-reason"]}
    assert dropped == {"spike": 6, "duplicate": 3}
    dead = {(r["stage"], r["reason"]): r["frames"] for r in answers["dead-letters-by-reason"]}
    assert dead == {("decode", "bad_json"): 2, ("decode", "missing_field"): 1}


def test_bad_sql_and_missing_bucket_are_clear_errors(lake_dir: Path, tmp_path: Path) -> None:
    lake = _open(lake_dir)
    with pytest.raises(LakeError, match="nope"):
        lake.query("SELECT nope FROM readings")
    with pytest.raises(LakeError, match="not found"):
        _open(tmp_path / "no-such-bucket")
    with pytest.raises(LakeError, match="no example"):
        example("nope")


def test_names_and_manifest_long_forms() -> None:
    assert view_name("fleet.trip.ended") == "fleet_trip_ended"
    assert column_alias("data.location.lat") == "location_lat"
    assert column_alias("time") == "time"
    manifests, outcomes, dead = manifest_tables([{
        "topic": "t", "partition": 2, "first_offset": 5, "counts": {"kept": 3, "dropped.spike": 1},
        "dead_letters": {"route:missing_field": 4}}])
    assert manifests.num_rows == 1 and manifests.column("partition").to_pylist() == [2]
    assert outcomes.to_pylist() == [
        {"topic": "t", "partition": 2, "first_offset": 5, "outcome": "dropped", "reason": "spike", "readings": 1},
        {"topic": "t", "partition": 2, "first_offset": 5, "outcome": "kept", "reason": None, "readings": 3}]
    assert dead.to_pylist() == [{"topic": "t", "partition": 2, "first_offset": 5, "stage": "route",
                                 "reason": "missing_field", "frames": 4}]


def test_render_csv_and_json() -> None:
    import decimal

    table = pa.table({"reason": ["spike"], "n": pa.array([decimal.Decimal(6)], pa.decimal128(38, 0))})
    assert render(table, Format.csv).splitlines() == ['"reason","n"', '"spike",6']
    assert orjson.loads(render(table, Format.json)) == [{"reason": "spike", "n": 6}]


def test_declared_event_types_without_objects_are_empty_views(lake_dir: Path) -> None:
    from pipeline.runtime.settings import REPO_ROOT
    from pipeline.tools.lake import declared_event_fields

    declared = declared_event_fields(REPO_ROOT / "functions")
    assert declared["fleet.charging.ended"]["location.lat"] == "number"
    lake = open_lake(Settings(s3_bucket=str(lake_dir)), filesystem=fs.LocalFileSystem(), declared=declared)
    assert "fleet_driving_idling" in lake.views  # no objects, declared by the idling handler
    empty = lake.query("SELECT vin, duration_s, location_lat, year FROM fleet_driving_idling")
    assert empty.num_rows == 0 and empty.column_names == ["vin", "duration_s", "location_lat", "year"]
    assert lake.query("SELECT count(*) AS n FROM fleet_trip_ended").to_pylist() == [{"n": 4}]  # data wins


def test_the_readme_documents_exactly_the_examples() -> None:
    import re

    from pipeline.runtime.settings import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    documented = set(re.findall(r"pipeline query --example ([a-z0-9-]+)", readme))
    assert documented == {ex.name for ex in EXAMPLES}
