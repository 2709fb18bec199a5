"""Replay: Twizy CSV mapping (checked against the raw files), pacing, recordings and the CLI."""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from pipeline.cli.main import app
from pipeline.core.errors import ConfigError
from pipeline.runtime.settings import Settings
from pipeline.tools.recording import (
    Record,
    RecordingReader,
    iter_records,
    read_metadata,
    write_records,
)
from pipeline.tools.replay import (
    DEFAULT_MAPPING,
    Pacer,
    count_readings,
    default_twizy_dir,
    load_mapping,
    load_trip,
    load_trips,
    recording_items,
    twizy_items,
    twizy_totals,
    twizy_vin,
)

TWIZY = default_twizy_dir()
GEAR = {"N": 0.0, "D": 1.0, "R": -1.0}
CSV_SIGNALS = {
    "Soc": "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
    "Speed": "Vehicle.Speed",
    "LAT": "Vehicle.CurrentLocation.Latitude",
    "LON": "Vehicle.CurrentLocation.Longitude",
    "ALT": "Vehicle.CurrentLocation.Altitude",
    "Temperature": "Vehicle.Exterior.AirTemperature",
    "Humidity": "Vehicle.Exterior.Humidity",
}
HEADER = "Date,Time,Soc,Speed,Mode,LAT,LON,ALT,GpsSpeed,Temperature,Humidity,Weather,WindSpeedAv,Traffic,SpeedLimit"


def _readings(items: list[tuple[Record, int]]) -> dict[tuple[str, str, int], list[float]]:
    out: dict[tuple[str, str, int], list[float]] = collections.defaultdict(list)
    for record, _ in items:
        frame = orjson.loads(record.value or b"")
        for name, entry in frame["samples"].items():
            for t, v in zip(entry["t"], entry["v"], strict=True):
                out[(frame["vin"], name, t)].append(v)
    return out


@pytest.fixture(scope="module")
def mapping() -> Any:
    return load_mapping()


@pytest.fixture(scope="module")
def trips(mapping: Any) -> Any:
    return load_trips(TWIZY, mapping)


@pytest.fixture(scope="module")
def replayed(trips: Any, mapping: Any) -> list[tuple[Record, int]]:
    return list(twizy_items(trips, mapping, vehicles=1, settings=Settings()))


def _raw_rows(path: Path) -> tuple[list[dict[str, str]], str]:
    """The CSV rows and the file's most common Date text, read independently of the replay code."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    dominant = collections.Counter(r["Date"] for r in rows).most_common(1)[0][0]
    return rows, dominant


def _epoch_ms(day_text: str, time_text: str) -> int:
    local = datetime.strptime(f"{day_text} {time_text}", "%m/%d/%Y %H:%M:%S")
    return int((local.replace(tzinfo=UTC) - timedelta(hours=1)).timestamp() * 1000)


def test_replayed_values_equal_the_csv(replayed: list[tuple[Record, int]]) -> None:
    readings = _readings(replayed)
    vin = twizy_vin("VF1TWZ", 0)
    checked = 0
    for path in sorted(TWIZY.glob("*.csv")):
        rows, dominant = _raw_rows(path)
        for row in rows[::113]:
            t = _epoch_ms(dominant, row["Time"])
            for column, signal in CSV_SIGNALS.items():
                assert readings[(vin, signal, t)] == [float(row[column])], (path.name, column, row)
                checked += 1
            assert readings[(vin, "Vehicle.Powertrain.Transmission.CurrentGear", t)] == [GEAR[row["Mode"]]]
    assert checked > 2500


def test_every_row_is_replayed_once(replayed: list[tuple[Record, int]], trips: Any) -> None:
    total_rows = 0
    for path in sorted(TWIZY.glob("*.csv")):
        total_rows += len(_raw_rows(path)[0])
    readings = _readings(replayed)
    speed_keys = [k for k in readings if k[1] == "Vehicle.Speed"]
    assert len(speed_keys) == total_rows
    assert all(len(v) == 1 for v in readings.values())
    assert sum(n for _, n in replayed) == total_rows * 9  # nine mapped columns, no cell skipped
    assert twizy_totals(trips)["kept"] == total_rows


def test_corrupted_dates_are_repaired_and_counted(trips: Any) -> None:
    expected = 0
    for path in sorted(TWIZY.glob("*.csv")):
        rows, dominant = _raw_rows(path)
        expected += sum(1 for r in rows if r["Date"] != dominant)
    totals = twizy_totals(trips)
    assert expected > 0
    assert totals["repaired.bad_date"] == expected
    assert not any(k.startswith("dropped.") for k in totals)


def test_frames_carry_the_rows_of_their_window(replayed: list[tuple[Record, int]]) -> None:
    settings = Settings()
    stamps = [r.timestamp_ms for r, _ in replayed]
    assert stamps == sorted(stamps)
    seqs = []
    for record, n in replayed:
        frame = orjson.loads(record.value or b"")
        assert record.timestamp_ms == frame["sent_at"]
        assert record.key == frame["vin"].encode()
        gps = {k for k in frame["samples"] if k.startswith("Vehicle.CurrentLocation.")}
        assert record.topic == (settings.topic_gps if gps else settings.topic_sensor)
        assert not gps or gps == set(frame["samples"])
        times = [t for e in frame["samples"].values() for t in e["t"]]
        assert all(frame["sent_at"] - 5000 <= t < frame["sent_at"] for t in times)
        assert n == len(times)
        seqs.append(frame["seq"])
    assert seqs == list(range(len(seqs)))


def test_derived_vehicles_are_shifted_rekeyed_copies(trips: Any, mapping: Any) -> None:
    first = trips[:1]
    items = list(twizy_items(first, mapping, vehicles=3, settings=Settings()))
    readings = _readings(items)
    vins = [twizy_vin("VF1TWZ", k) for k in range(3)]
    assert len(set(vins)) == 3 and all(len(v) == 17 for v in vins)
    base = {(name, t): v for (vin, name, t), v in readings.items() if vin == vins[0]}
    for k, vin in enumerate(vins[1:], start=1):
        shifted = {(name, t - int(k * mapping.shift_s * 1000)): v
                   for (v_, name, t), v in readings.items() if v_ == vin}
        assert shifted == base
    stamps = [r.timestamp_ms for r, _ in items]
    assert stamps == sorted(stamps)


def _write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    return path


def test_bad_rows_follow_the_policy(tmp_path: Path, mapping: Any) -> None:
    row = "{d},{t},80.0,{speed},{mode},34.0,-6.8,50.0,0,20.0,60.0,Clear,1.0,0,40.0"
    lines = [
        row.format(d="03/29/2021", t="23:59:58", speed="10.0", mode="D"),
        row.format(d="90/02/2032", t="23:59:59", speed="11.0", mode="D"),  # corrupted date
        row.format(d="03/30/2021", t="00:00:01", speed="12.0", mode="D"),  # after midnight
        row.format(d="03/29/2021", t="25:61:00", speed="12.0", mode="D"),  # bad time
        row.format(d="03/30/2021", t="00:00:01", speed="12.0", mode="D"),  # same second again
        row.format(d="03/30/2021", t="00:00:02", speed="fast", mode="X"),  # unreadable cells
        row.format(d="03/29/2021", t="00:00:03", speed="13.0", mode="N"),  # date of the wrong day
    ]
    trip = load_trip(_write_csv(tmp_path / "t.csv", lines), mapping)
    assert trip.counts["rows"] == 7
    assert trip.counts["kept"] == 5
    assert trip.counts["repaired.bad_date"] == 2
    assert trip.counts["dropped.bad_time"] == 1
    assert trip.counts["dropped.time_backwards"] == 1
    assert trip.counts["skipped.Speed"] == 1
    assert trip.counts["skipped.Mode"] == 2  # two mapped signals read the Mode column
    assert np.diff(trip.t_ms).tolist() == [1000, 2000, 1000, 1000]
    assert trip.t_ms[0] == _epoch_ms("03/29/2021", "23:59:58")
    speed = trip.values["Vehicle.Speed"]
    assert np.isnan(speed[3]) and speed[4] == 13.0

    strict = dataclasses.replace(mapping, bad_dates="drop")
    trip = load_trip(tmp_path / "t.csv", strict)
    assert trip.counts["dropped.bad_date"] == 2
    assert trip.counts["kept"] == 3


def test_mapping_errors_name_file_line_and_field(tmp_path: Path) -> None:
    good = DEFAULT_MAPPING.read_text()
    bad = tmp_path / "m.yaml"
    bad.write_text(good.replace("signal: Vehicle.Speed", "signal: Vehicle.Sped"))
    with pytest.raises(ConfigError) as info:
        load_mapping(bad)
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if "- column: Speed" in text)
    assert info.value.line == line and info.value.field == "signal" and "Vehicle.Sped" in str(info.value)
    bad.write_text(good.replace("unit: km/h", "unit: furlongs"))
    with pytest.raises(ConfigError, match="furlongs"):
        load_mapping(bad)
    bad.write_text(good.replace('utc_offset: "+01:00"', 'utc_offset: "one"'))
    with pytest.raises(ConfigError, match="utc_offset"):
        load_mapping(bad)


def test_unit_mapping_converts_to_the_canonical_unit(tmp_path: Path) -> None:
    text = DEFAULT_MAPPING.read_text().replace("unit: km/h", "unit: mph")
    (tmp_path / "m.yaml").write_text(text)
    mapping = load_mapping(tmp_path / "m.yaml")
    row = "03/29/2021,12:00:00,80.0,10.0,D,34.0,-6.8,50.0,0,20.0,60.0,Clear,1.0,0,40.0"
    trip = load_trip(_write_csv(tmp_path / "t.csv", [row]), mapping)
    assert trip.values["Vehicle.Speed"][0] == pytest.approx(16.09344)


# --- pacing ---------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _waits(pacer: Pacer, clock: FakeClock, stamps: list[int], readings: int = 1) -> list[float]:
    waits = []
    for ts in stamps:
        wait = pacer.delay(ts, readings)
        waits.append(round(wait, 6))
        clock.now += wait
    return waits


def test_pacer_keeps_relative_timing_at_speed() -> None:
    clock = FakeClock()
    stamps = [0, 1000, 1000, 3000, 603_000]
    assert _waits(Pacer(speed=1, max_gap_s=10, clock=clock), clock, stamps) == [0, 1, 0, 2, 10]
    clock = FakeClock()
    assert _waits(Pacer(speed=10, max_gap_s=10, clock=clock), clock, stamps) == [0, 0.1, 0, 0.2, 1]
    clock = FakeClock()
    assert _waits(Pacer(speed=None, clock=clock), clock, stamps) == [0] * 5


def test_pacer_caps_rates() -> None:
    clock = FakeClock()
    waits = _waits(Pacer(readings_per_s=100, clock=clock), clock, [0] * 4, readings=50)
    assert waits == [0, 0.5, 0.5, 0.5]
    clock = FakeClock()
    assert _waits(Pacer(frames_per_s=4, clock=clock), clock, [0] * 3) == [0, 0.25, 0.25]


# --- recordings -------------------------------------------------------------------------------------


def test_recording_topics_map_to_the_deployment(tmp_path: Path) -> None:
    frame = orjson.dumps({"vin": "V", "seq": 0, "sent_at": 5, "samples": {"Vehicle.Speed": {"t": [1, 2], "v": [3, 4]}}})
    path = tmp_path / "r.rec"
    write_records(path, [Record("old.sensor", b"V", frame, (), 5), Record("old.gps", b"V", b"{}", (), 6),
                         Record("other", b"V", b"x", (), 7)],
                  metadata={"topics": {"sensor": "old.sensor", "gps": "old.gps"}})
    settings = Settings(topic_sensor="new.sensor", topic_gps="new.gps")
    items = list(recording_items(RecordingReader(path), settings))
    assert [(r.topic, n) for r, n in items] == [("new.sensor", 2), ("new.gps", 0), ("other", 0)]
    assert [r.value for r, _ in items] == [r.value for r in iter_records(path)]
    assert count_readings(b"not json") == 0


# --- command line ---------------------------------------------------------------------------------


def test_cli_simulate_then_replay_to_a_recording(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "sim.rec"
    result = runner.invoke(app, ["simulate", "--vehicles", "20", "--duration", "60", "--seed", "2",
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["readings"] > 0 and out.exists() and Path(summary["truth"]).exists()
    copy = tmp_path / "copy.rec"
    result = runner.invoke(app, ["replay", str(out), "--speed", "max", "--out", str(copy), "--json",
                                 "--sensor-topic", "s2", "--gps-topic", "g2"])
    assert result.exit_code == 0, result.output
    replay = json.loads(result.stdout[result.stdout.index("{"):])
    assert replay["frames"] == sum(summary["frames"].values())
    assert replay["readings"] == summary["readings"]
    original, copied = list(iter_records(out)), list(iter_records(copy))
    assert [r.value for r in original] == [r.value for r in copied]
    assert {r.topic for r in copied} == {"s2", "g2"}


def test_cli_replays_twizy_to_a_recording(tmp_path: Path) -> None:
    out = tmp_path / "twizy.rec"
    result = CliRunner().invoke(app, ["replay", "--twizy", "--twizy-dir", str(TWIZY), "--speed", "max",
                                      "--vehicles", "2", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["rows"]["repaired.bad_date"] > 0
    assert summary["vehicles"] == 2 and summary["trips"] == 7
    assert "RSK Twizy EV Dataset" in summary["credit"] and "RSK Twizy EV Dataset" in read_metadata(out)["credit"]
    assert summary["frames"] == sum(1 for _ in iter_records(out))


def test_cli_needs_a_source() -> None:
    result = CliRunner().invoke(app, ["replay"])
    assert result.exit_code != 0
