"""The worker end to end on the real broker and store: outputs, dead letters, reconcile, faults."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import numpy as np
import orjson

from pipeline.core.events import EncodedRecord, encode_frame
from pipeline.runtime.settings import Settings
from pipeline.tools import services
from pipeline.tools.reconcile import reconcile
from tests.integration.conftest import Stack, produce, wait_drained

T0 = 1_772_437_200_000  # 2026-03-02T07:40:00Z, a weekday morning


def sensor_frame(vin: str, seq: int, t0: int) -> dict[str, Any]:
    t1 = t0 + np.arange(5) * 1000
    t10 = t0 + np.arange(50) * 100
    return {
        "vin": vin, "seq": seq, "sent_at": int(t0 + 5000),
        "samples": {
            "Vehicle.Speed": {"t": t1, "v": 40 + np.sin(t1 / 7000) * 5},
            "Vehicle.Acceleration.Longitudinal": {"t": t10, "v": np.cos(t10 / 3000) * 0.5},
            "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current": {"t": t1[:1], "v": [80.0 - seq * 0.01]},
        },
    }


def gps_frame(vin: str, seq: int, t0: int, i: int) -> dict[str, Any]:
    t1 = t0 + np.arange(5) * 1000
    lat = 34.02 + 0.00005 * (seq * 5 + np.arange(5)) + i * 0.001
    lon = -6.83 + 0.00005 * (seq * 5 + np.arange(5))
    return {"vin": vin, "seq": seq, "sent_at": int(t0 + 5000),
            "samples": {"Vehicle.CurrentLocation.Latitude": {"t": t1, "v": lat},
                        "Vehicle.CurrentLocation.Longitude": {"t": t1, "v": lon}}}


def fleet(settings: Settings, vehicles: int, frames: int, start_seq: int = 0) -> list[tuple[str, EncodedRecord]]:
    out: list[tuple[str, EncodedRecord]] = []
    for seq in range(start_seq, start_seq + frames):
        for i in range(vehicles):
            vin = f"VF1TEST{i:010d}"
            t0 = T0 + seq * 5000
            out.append((settings.topic_sensor, encode_frame("sensor", sensor_frame(vin, 2 * seq, t0))))
            out.append((settings.topic_gps, encode_frame("gps", gps_frame(vin, 2 * seq + 1, t0, i))))
    return out


def malformed(settings: Settings) -> list[tuple[str, EncodedRecord]]:
    good = encode_frame("sensor", sensor_frame("VF1BAD00000000001", 1, T0))
    headers = good.headers
    return [
        (settings.topic_sensor, EncodedRecord(good.key, b"{not json", headers, T0)),
        (settings.topic_sensor, EncodedRecord(good.key, b"x" * 1_020_000, headers, T0)),
        (settings.topic_sensor, EncodedRecord(good.key, orjson.dumps({"vin": "VF1BAD00000000001", "seq": 1}),
                                              headers, T0)),
        (settings.topic_sensor, encode_frame("sensor", {"vin": "VF1BAD00000000001", "seq": 2, "sent_at": T0,
                                                        "samples": {"Vehicle.Warp.Drive": {"t": [T0], "v": [9]}}})),
    ]


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def assert_reconciled(settings: Settings) -> list[Any]:
    reports = asyncio.run(reconcile(settings))
    problems = [f"{r.topic}[{r.partition}]: {p}" for r in reports for p in r.problems]
    assert not problems, problems
    return reports


def test_end_to_end_objects_dead_letters_and_reconcile(stack: Stack) -> None:
    s = stack.settings
    messages = fleet(s, vehicles=6, frames=30) + malformed(s)
    worker = stack.worker().start()
    produce(s, messages)
    wait_drained(s, len(messages))

    reports = assert_reconciled(s)
    assert sum(r.frames_in for r in reports) == len(messages)
    assert sum(r.frames_dead_lettered for r in reports) == 3  # bad json, oversized, missing field
    readings_in = sum(r.readings_in for r in reports)
    assert readings_in == sum(r.readings_kept + r.readings_repaired + r.readings_dropped for r in reports)
    assert readings_in >= 6 * 30 * (5 + 50 + 1 + 10)

    client = s.minio_client()
    keys = [o.object_name for o in client.list_objects(s.s3_bucket, recursive=True, use_api_v1=True)]
    clean = [k for k in keys if k.startswith("clean/")]
    assert clean and all(k.startswith("clean/year=2026/month=03/date=02/hour=07/") for k in clean), clean[:3]
    stat = client.stat_object(s.s3_bucket, clean[0])
    meta = {k.lower(): v for k, v in stat.metadata.items()}
    assert int(meta["x-amz-meta-readings-in"]) > 0
    assert "kept" in orjson.loads(meta["x-amz-meta-counts"])

    import io

    import pyarrow.parquet as pq

    body = client.get_object(s.s3_bucket, clean[0]).read()
    table = pq.read_table(io.BytesIO(body))
    assert {"vin", "signal", "t", "value", "offset"} <= set(table.column_names)
    assert table.num_rows == int(meta["x-amz-meta-rows"])

    # The unknown signal is dropped by cleaning with its reason, counted in the metrics.
    assert worker.metric("pipeline_readings_total", outcome="dropped.unknown_signal") >= 1
    reasons = dead_letter_reasons(s)
    assert {"bad_json", "oversized", "missing_field", "unknown_signal"} <= set(reasons), reasons
    assert worker.alive()


def dead_letter_reasons(settings: Settings) -> list[str]:
    async def run() -> list[str]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(settings.topic_dlq, **settings.kafka_client_kwargs(),
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        out: list[str] = []
        try:
            for _ in range(10):
                batch = await consumer.getmany(timeout_ms=500)
                for msgs in batch.values():
                    for m in msgs:
                        h = dict(m.headers)
                        assert h["dlq_topic"].decode() == settings.topic_sensor
                        out.append(h["dlq_reason"].decode())
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


def test_sigterm_finishes_commits_and_exits(stack: Stack) -> None:
    s = stack.settings
    messages = fleet(s, vehicles=4, frames=20)
    worker = stack.worker().start()
    produce(s, messages)
    wait_drained(s, len(messages))
    assert worker.stop(signal.SIGTERM) == 0
    assert_reconciled(s)


def test_sigkill_mid_stream_then_restart_loses_nothing(stack: Stack) -> None:
    s = stack.settings
    first = stack.worker(BATCH_SIZE="50").start()
    messages = fleet(s, vehicles=8, frames=60)
    produce(s, messages)
    deadline = time.monotonic() + 60
    while first.metric("pipeline_frames_in_total") < len(messages) // 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    first.stop(signal.SIGKILL)
    stack.worker(LOG_LEVEL=os.environ.get("WORKER_LOG_LEVEL", "INFO")).start()
    wait_drained(s, len(messages), timeout_s=180)
    reports = assert_reconciled(s)
    assert sum(r.frames_in for r in reports) >= len(messages)


def spawned_children(pid: int) -> list[int]:
    """The worker's multiprocessing children (encoder, then decoder), oldest first: by start
    time, not pid (pids wrap around on a long-running host, and the decoder's can be the
    smaller)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            parent, started = int(fields[1]), int(fields[19])  # ppid; starttime (stat fields 4 and 22)
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and b"spawn_main" in cmdline:
            found.append((started, int(entry)))
    return [child for _, child in sorted(found)]


def test_decoder_process_killed_mid_stream_the_core_decodes_and_nothing_is_lost(stack: Stack) -> None:
    """The frames' decoder runs in a process of its own; if it dies, the batches it held are
    decoded by the core, a new decoder starts, and the worker neither stops nor loses a frame."""
    s = stack.settings
    worker = stack.worker(BATCH_SIZE="50").start()
    assert worker.proc is not None
    children: list[int] = []
    deadline = time.monotonic() + 30
    while len(children) < 2 and time.monotonic() < deadline:  # encoder and decoder, started at ingest start
        children = spawned_children(worker.proc.pid)
        time.sleep(0.2)
    assert len(children) == 2, children
    messages = fleet(s, vehicles=8, frames=60)
    produce(s, messages)
    deadline = time.monotonic() + 60
    while worker.metric("pipeline_frames_in_total") < len(messages) // 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(children[-1], signal.SIGKILL)  # the decoder: started after the encoder
    wait_drained(s, len(messages), timeout_s=180)
    assert worker.alive(), worker.tail()
    log = worker.log_path.read_text()
    assert "decoder process failed" in log or "decoder process unavailable" in log, worker.tail()
    assert len(spawned_children(worker.proc.pid)) == 2  # a new decoder beside the encoder
    reports = assert_reconciled(s)
    assert sum(r.frames_in for r in reports) == len(messages)
    assert worker.stop(signal.SIGTERM) == 0


def test_store_outage_of_20s_backpressure_then_recovery(stack: Stack) -> None:
    s = stack.settings
    worker = stack.worker().start()
    produce(s, fleet(s, vehicles=4, frames=10))
    wait_drained(s, 80)
    pid = services.pids()["s3"]
    assert pid, "the local S3 server is not running under scripts/services"
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        more = fleet(s, vehicles=4, frames=10, start_seq=10)
        produce(s, more)
        time.sleep(20)
        assert worker.alive(), worker.tail()
        assert worker.metric("pipeline_sink_retries_total", sink="s3") > 0
    finally:
        services.start()
    wait_drained(s, 160, timeout_s=120)
    assert worker.alive()
    assert_reconciled(s)


def test_broker_restart_mid_stream(stack: Stack) -> None:
    s = stack.settings
    worker = stack.worker().start()
    produce(s, fleet(s, vehicles=4, frames=10))
    wait_drained(s, 80)
    pid = services.pids()["kafka"]
    assert pid
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    services.start()
    produce(s, fleet(s, vehicles=4, frames=10, start_seq=10))
    wait_drained(s, 160, timeout_s=180)
    assert worker.alive(), worker.tail()
    assert_reconciled(s)
