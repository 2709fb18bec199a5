"""Real EV trips replayed as a backfill: sensor and GPS aligned in event time, silent vehicles.

The Twizy trips (RSK Twizy EV Dataset, CC BY 4.0) go to the broker as fast as it takes them
(`--speed max`), so one fetch of the small GPS frames covers far more event time than one of
the sensor frames: without alignment the topics drift apart by hours and trips lose their
GPS distance. Every trip the worker ends must carry the distance of the GPS track of the
CSV rows it spans, and each vehicle's last trip ends by inactivity.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.runtime.settings import Settings
from pipeline.tools.recording import Record
from pipeline.tools.replay import (
    Pacer,
    default_twizy_dir,
    load_mapping,
    load_trips,
    produce,
    twizy_items,
    twizy_vin,
)
from tests.integration.conftest import Stack, wait_drained

pytestmark = pytest.mark.integration

IDLE_TIMEOUT_S = 5.0
LAT, LON, SPEED = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude", "Vehicle.Speed"
MAX_PLAUSIBLE_KMH = 250.0  # rules/cleaning.yaml gps.max_speed_kmh
RELOCATE_AFTER_MS = 120_000  # rules/cleaning.yaml gps.relocate_after_ms


def new_stack(services: Settings, tmp: Path, **extra: str) -> Stack:
    uid = uuid.uuid4().hex[:8]
    env = {"APP_ID": f"it-{uid}", "TOPIC_SENSOR": f"it.{uid}.sensor.raw", "TOPIC_GPS": f"it.{uid}.gps.raw",
           "TOPIC_DLQ": f"it.{uid}.dlq", "S3_BUCKET": f"it-{uid}", "PARTITIONS": "3", "LOG_LEVEL": "INFO",
           "VEHICLE_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S), **extra}
    folder = tmp / uid
    folder.mkdir()
    return Stack(Settings(**{k.lower(): v for k, v in env.items()}), env, folder)  # type: ignore[arg-type]


def haversine_m(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Metres between consecutive fixes."""
    la, lo = np.radians(lat), np.radians(lon)
    a = np.sin(np.diff(la) / 2) ** 2 + np.cos(la[:-1]) * np.cos(la[1:]) * np.sin(np.diff(lo) / 2) ** 2
    return 2 * 6_371_000.0 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


class Truth:
    """The CSV rows of every derived vehicle, on the times the replay gives them."""

    def __init__(self, vehicles: int) -> None:
        self.mapping = load_mapping()
        self.trips = load_trips(default_twizy_dir(), self.mapping)
        self.rows: dict[str, dict[str, np.ndarray]] = {}
        for v in range(vehicles):
            shift = int(round(v * self.mapping.shift_s * 1000))
            t = np.concatenate([tr.t_ms + shift for tr in self.trips])
            cols = {k: np.concatenate([tr.values[k] for tr in self.trips]) for k in (LAT, LON, SPEED)}
            order = np.argsort(t, kind="stable")
            self.rows[twizy_vin(self.mapping.vin_prefix, v)] = {"t": t[order], **{k: c[order] for k, c in cols.items()}}

    def gps_km(self, vin: str, start_ms: int, end_ms: int) -> float:
        """GPS-track distance of the vehicle's CSV rows in [start, end], implausible jumps left
        out the way rules/cleaning.yaml defines them: a step faster than MAX_PLAUSIBLE_KMH from
        the last accepted fix is a jump if the track comes back within RELOCATE_AFTER_MS (the
        jump is skipped), else the vehicle was relocated (the step counts)."""
        r = self.rows[vin]
        sel = (r["t"] >= start_ms) & (r["t"] <= end_ms) & ~np.isnan(r[LAT]) & ~np.isnan(r[LON])
        t, lat, lon = r["t"][sel], r[LAT][sel], r[LON][sel]
        # the logger repeats a fix until the next one: keep each fix where it first appears
        new = np.concatenate([[True], (np.diff(lat) != 0) | (np.diff(lon) != 0)])
        t, lat, lon = t[new].tolist(), lat[new].tolist(), lon[new].tolist()

        def metres(i: int, j: int) -> float:
            return float(haversine_m(np.array([lat[i], lat[j]]), np.array([lon[i], lon[j]]))[0])

        def plausible(i: int, j: int) -> bool:
            return metres(i, j) / 1000 <= MAX_PLAUSIBLE_KMH * max(t[j] - t[i], 1) / 3_600_000

        total, anchor, i = 0.0, 0, 1
        while i < len(t):
            if not plausible(anchor, i):
                back = next((k for k in range(i + 1, len(t)) if t[k] - t[i] <= RELOCATE_AFTER_MS
                             and plausible(anchor, k)), None)
                if back is not None:  # a jump: the track returns
                    i = back
                    continue
            total += metres(anchor, i)
            anchor, i = i, i + 1
        return total / 1000

    def moving_times(self, vin: str) -> np.ndarray:
        r = self.rows[vin]
        return r["t"][r[SPEED] >= 5.0]


def replay(stack: Stack, items: list[tuple[Record, int]]) -> None:
    s = stack.settings
    topics = {"vehicle.sensor.raw": s.topic_sensor, "vehicle.gps.raw": s.topic_gps}
    renamed = [(rec._replace(topic=topics[rec.topic]), n) for rec, n in items]
    asyncio.run(produce(renamed, s, pacer=Pacer()))  # --speed max


def ended_trips(settings: Settings) -> list[dict[str, Any]]:
    """Every fleet.trip.ended event the worker wrote to the store."""
    client = settings.minio_client()
    out: list[dict[str, Any]] = []
    for obj in client.list_objects(settings.s3_bucket, prefix="events/fleet.trip.ended/", recursive=True,
                                   use_api_v1=True):
        body = client.get_object(settings.s3_bucket, obj.object_name).read()
        out.extend(pq.read_table(io.BytesIO(body)).to_pylist())
    return out


def trip_rows(trips: list[dict[str, Any]]) -> list[tuple[str, int, int, float, str]]:
    """(vin, start ms, end ms, distance km, end reason), sorted."""
    rows = []
    for e in trips:
        end = int(e["time"].timestamp() * 1000)
        start = end - int(round(e["data.duration_s"] * 1000))
        km = e["data.distance_km"]
        rows.append((e["subject"], start, end, float("nan") if km is None else float(km), e["data.end_reason"]))
    return sorted(rows)


def run_replay(services: Settings, tmp: Path, items: list[tuple[Record, int]],
               vehicles: int) -> tuple[Stack, list[tuple[str, int, int, float, str]]]:
    """One worker, the items as fast as the broker takes them; returns the trips once every
    vehicle's last trip has ended by the idle signal (or a generous wait has passed: the
    tests then say which vehicle's did not)."""
    stack = new_stack(services, tmp)
    worker = stack.worker().start()  # creates the topics (retention off: the trips are from 2021)
    try:
        replay(stack, items)
        wait_drained(stack.settings, len(items), timeout_s=240)
        deadline = time.monotonic() + IDLE_TIMEOUT_S + 60
        while True:
            trips = trip_rows(ended_trips(stack.settings))
            silent = {vin for vin, *_, reason in trips if reason == "silent"}
            if len(silent) >= vehicles or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return stack, trips
    finally:
        worker.stop()


def test_twizy_backfill_every_trip_ends_with_its_gps_distance(services: Settings, tmp_path: Path) -> None:
    truth = Truth(vehicles=3)
    items = list(twizy_items(truth.trips, truth.mapping, vehicles=3))
    stack, trips = run_replay(services, tmp_path, items, vehicles=3)
    assert trips, "no trip ended"
    log = stack.workers[0].tail(400)
    for vin in truth.rows:
        mine = [t for t in trips if t[0] == vin]
        assert mine, f"{vin}: no trip ended"
        # every moving row lies in a trip that ended
        moving = truth.moving_times(vin)
        inside = np.zeros(len(moving), dtype=bool)
        for _, start, end, _, _ in mine:
            inside |= (moving >= start) & (moving <= end)
        assert inside.all(), f"{vin}: {int((~inside).sum())} moving rows in no ended trip"
        # the last trip ends by the idle signal (the logger stops at the end of the drive)
        assert mine[-1][4] == "silent", (mine[-1], log)
        for _, start, end, km, _ in mine:
            expected = truth.gps_km(vin, start, end)
            assert math.isclose(km, expected, rel_tol=0.03, abs_tol=0.05), (vin, start, end, km, expected)


def drifted(items: list[tuple[Record, int]], behind: str, lag_ms: int) -> list[tuple[Record, int]]:
    """The same records, produced with topic `behind` `lag_ms` of event time behind the other."""
    return sorted(items, key=lambda it: it[0].timestamp_ms + (lag_ms if it[0].topic == behind else 0))


@pytest.mark.parametrize("behind", ["vehicle.sensor.raw", "vehicle.gps.raw"])
def test_a_topic_60s_behind_the_other_gives_the_same_trip_distances(services: Settings, tmp_path: Path,
                                                                     behind: str) -> None:
    truth = Truth(vehicles=1)
    items = list(twizy_items(truth.trips, truth.mapping, vehicles=1))
    _, aligned = run_replay(services, tmp_path, items, vehicles=1)
    _, shifted = run_replay(services, tmp_path, drifted(items, behind, 60_000), vehicles=1)
    assert len(aligned) == len(shifted) and aligned
    for a, b in zip(aligned, shifted, strict=True):
        assert a[:3] == b[:3], (a, b)
        assert math.isclose(a[3], b[3], rel_tol=0.01, abs_tol=0.01), (a, b)
