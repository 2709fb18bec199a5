"""Running workers on the real broker: rules and functions hot reload, handler state across restarts."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from pipeline.core.events import EncodedRecord, encode_frame
from pipeline.runtime.settings import REPO_ROOT, Settings
from tests.integration.conftest import Stack, produce, wait_drained

T0 = 1_772_437_200_000  # 2026-03-02T07:40:00Z
SPEED = "Vehicle.Speed"
ACCEL = "Vehicle.Acceleration.Longitudinal"


def frame(vin: str, seq: int, t0: int, speed: float, brake: bool = False) -> EncodedRecord:
    """5 s of a car at `speed`, as sensors report it: accelerometer noise around 0 (a real one
    never repeats a value, and cleaning drops one that does as stuck), and a speed that
    follows the acceleration (cleaning cross-checks the two)."""
    t1 = t0 + np.arange(5) * 1000
    t10 = t0 + np.arange(50) * 100
    rng = np.random.default_rng(seq * 1009 + sum(vin.encode()))
    accel = rng.normal(0.0, 0.05, 50)
    if brake:
        accel[10:16] += -6.0  # 600 ms at about -6 m/s^2: harsh braking (threshold 4.4, at least 100 ms)
    kmh = np.clip(speed + np.cumsum(accel) * 0.1 * 3.6, 0, None) if speed else np.zeros(50)
    return encode_frame("sensor", {"vin": vin, "seq": seq, "sent_at": int(t0 + 5000),
                                   "samples": {SPEED: {"t": t1, "v": kmh[::10].copy()},
                                               ACCEL: {"t": t10, "v": accel}}})


def drive(s: Settings, vins: list[str], first_seq: int, seconds: int, speed: float, t0: int,
          brake_every: int = 0) -> list[tuple[str, EncodedRecord]]:
    out = []
    for k in range(seconds // 5):
        seq = first_seq + k
        brake = bool(brake_every) and k % brake_every == brake_every - 1
        out.extend((s.topic_sensor, frame(v, seq, t0 + k * 5000, speed, brake)) for v in vins)
    return out


def route_file(name: str, topic: str, types: list[str]) -> str:
    return f"""routes:
  - name: {name}
    description: integration test route
    match:
      type: {orjson.dumps(types).decode()}
    transform:
      - pick: [data.vin, data.duration_s, data.accel_ms2, data.trip_id]
    to:
      - topic: {topic}
    policy:
      vin: allowed
"""


def private_rules(stack: Stack, routes: dict[str, str]) -> Path:
    """A copy of rules/ (catalog, cleaning) with only the given route files."""
    rules = stack.tmp / "rules"
    shutil.copytree(REPO_ROOT / "rules", rules, ignore=shutil.ignore_patterns("routes", "tests"))
    (rules / "routes").mkdir()
    for name, text in routes.items():
        (rules / "routes" / name).write_text(text)
    return rules


def read_topic(s: Settings, topic: str, timeout_s: float = 3.0) -> list[tuple[dict[str, bytes], Any]]:
    async def run() -> list[tuple[dict[str, bytes], Any]]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(topic, **s.kafka_client_kwargs(), auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        await consumer.start()
        out: list[tuple[dict[str, bytes], Any]] = []
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=300)
                for msgs in batch.values():
                    out.extend((dict(m.headers), orjson.loads(m.value)) for m in msgs)
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


def wait_for_events(s: Settings, topic: str, n: int, timeout_s: float = 30) -> list[tuple[dict[str, bytes], Any]]:
    deadline = time.monotonic() + timeout_s
    got: list[tuple[dict[str, bytes], Any]] = []
    while time.monotonic() < deadline:
        got = read_topic(s, topic, 1.5)
        if len(got) >= n:
            return got
    raise AssertionError(f"{topic}: {len(got)} events, expected at least {n}")


def test_rules_hot_reload_valid_and_invalid(stack: Stack) -> None:
    s = stack.settings
    uid = s.app_id
    braking = f"route.{uid}.braking"
    trips = f"route.{uid}.trips"
    rules = private_rules(stack, {"braking.yaml": route_file("it.braking", braking, ["fleet.driving.harsh_braking"])})
    worker = stack.worker(RULES_DIR=str(rules)).start()
    vins = ["VF1RELOAD00000001", "VF1RELOAD00000002"]
    first = drive(s, vins, 0, 60, 40.0, T0, brake_every=4)
    produce(s, first)
    wait_drained(s, len(first))
    before = wait_for_events(s, braking, 3 * len(vins))
    assert all(h["ce_type"] == b"fleet.driving.harsh_braking" for h, _ in before)

    # A broken edit is rejected and counted; the last good rules stay in force.
    (rules / "routes" / "broken.yaml").write_text("routes:\n  - name: bad\n    match: {type: [{prefix: 7}]}\n")
    deadline = time.monotonic() + 10
    while worker.metric("pipeline_reloads_total", what="rules", result="rejected") < 1:
        produce(s, drive(s, vins[:1], 1000 + int(time.monotonic() * 10) % 1000, 5, 40.0, T0 + 600_000))
        assert time.monotonic() < deadline, worker.tail()
        time.sleep(0.5)
    (rules / "routes" / "broken.yaml").unlink()

    # A valid change (a second route) takes effect within 5 seconds, without a restart.
    (rules / "routes" / "trips.yaml").write_text(route_file("it.trips", trips, ["fleet.trip.started"]))
    changed_at = time.monotonic()
    deadline = changed_at + 5
    while worker.metric("pipeline_reloads_total", what="rules", result="ok") < 1:
        produce(s, drive(s, ["VF1RELOAD00000099"], 0, 5, 0.0, T0))  # batches drive the reload check
        assert time.monotonic() < deadline, f"rules not reloaded within 5 s\n{worker.tail()}"
        time.sleep(0.2)
    produce(s, drive(s, ["VF1RELOAD00000003"], 0, 30, 40.0, T0 + 3_600_000))
    started = wait_for_events(s, trips, 1)
    assert {d["vin"] for _, d in started} == {"VF1RELOAD00000003"}
    assert worker.alive()


HANDLER = '''
from pipeline.core.handlers import HandlerContext, HandlerInput, handler

SPEED = "Vehicle.Speed"

@handler(name="fast_probe", consumes=[SPEED], emits=["fleet.test.fast"])
def fast_probe(batch: HandlerInput, ctx: HandlerContext) -> None:
    s = batch.signal(SPEED)
    hit = s.v > 100
    ctx.emit("fleet.test.fast", time=s.t[hit], origin=s.record[hit], vehicle=s.vehicle[hit],
             data={"duration_s": s.v[hit]})
'''


def test_new_function_file_is_picked_up_by_a_running_worker(stack: Stack) -> None:
    s = stack.settings
    topic = f"route.{s.app_id}.fast"
    rules = private_rules(stack, {"fast.yaml": route_file("it.fast", topic, ["fleet.test.fast"])})
    functions = stack.tmp / "functions"
    shutil.copytree(REPO_ROOT / "functions", functions, ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    worker = stack.worker(RULES_DIR=str(rules), FUNCTIONS_DIR=str(functions)).start()
    vin = "VF1FUNCS000000001"
    produce(s, drive(s, [vin], 0, 20, 120.0, T0))
    wait_drained(s, 4)
    assert read_topic(s, topic, 1.0) == []

    (functions / "fast_probe.py").write_text(HANDLER)
    deadline = time.monotonic() + 20
    seq = 100
    while time.monotonic() < deadline:
        produce(s, drive(s, [vin], seq, 5, 120.0, T0 + seq * 5000))
        seq += 1
        if read_topic(s, topic, 1.0):
            break
    events = wait_for_events(s, topic, 1)
    assert events[0][0]["ce_type"] == b"fleet.test.fast"
    assert events[0][1]["vin"] == vin
    assert worker.alive()


def test_handler_state_survives_a_worker_restart(stack: Stack) -> None:
    s = stack.settings
    topic = f"route.{s.app_id}.trips"
    rules = private_rules(stack, {"trips.yaml": route_file("it.trips", topic, ["fleet.trip.started", "fleet.trip.ended"])})
    vin = "VF1STATE000000001"
    first = stack.worker(RULES_DIR=str(rules)).start()
    part1 = drive(s, [vin], 0, 60, 40.0, T0)  # the trip starts in the first worker's life
    produce(s, part1)
    wait_drained(s, len(part1))
    assert first.stop(signal.SIGTERM) == 0

    stack.worker(RULES_DIR=str(rules)).start()
    part2 = drive(s, [vin], 12, 60, 40.0, T0 + 60_000) + drive(s, [vin], 24, 330, 0.0, T0 + 120_000)
    produce(s, part2)
    wait_drained(s, len(part1) + len(part2))
    events = wait_for_events(s, topic, 2)
    types = [h["ce_type"] for h, _ in events]
    assert types.count(b"fleet.trip.started") == 1, types  # no second start: the open trip was restored
    ended = [d for h, d in events if h["ce_type"] == b"fleet.trip.ended"]
    assert len(ended) == 1
    assert ended[0]["duration_s"] >= 110  # spans both workers' lives (0..~119 s of driving)
