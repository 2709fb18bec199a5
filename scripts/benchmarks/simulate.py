"""Benchmark the fleet simulator: readings/s and frames/s generated, and produced to Kafka.

    .venv/bin/python scripts/benchmarks/simulate.py [--vehicles 1000] [--duration 300] [--repeat 2]
                                                     [--no-kafka] [--json]

Stages, each on one core (best of --repeat runs, CPU time of this process):
  generate   frames as dicts with numpy sample arrays (no JSON)
  encode     + Kafka records (`record_windows`: CloudEvents headers and JSON payloads)
  recording  + writing the recording and its truth file (`simulate_to_recording`)
  produce    records already in memory sent to the local broker as fast as aiokafka takes them
  simulate>kafka   generation and producing together (`pipeline simulate --to kafka`)
The machine is shared: numbers are noisy; compare runs made close together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.runtime.settings import Settings  # noqa: E402
from pipeline.tools.recording import Record  # noqa: E402
from pipeline.tools.replay import Pacer, ProducerOptions, produce  # noqa: E402
from pipeline.tools.simulate import FleetSimulator, SimConfig, simulate_to_recording  # noqa: E402

TOPICS = {"sensor": "bench.sensor", "gps": "bench.gps"}


def _timed(fn: Any) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def generate(config: SimConfig) -> tuple[int, int]:
    sim = FleetSimulator(config)
    frames = readings = 0
    for out, _ in sim.windows():
        frames += len(out)
        readings += sum(f.n_readings for f in out)
    return frames, readings


def encode(config: SimConfig) -> tuple[int, int]:
    sim = FleetSimulator(config)
    frames = readings = 0
    for records, _ in sim.record_windows(TOPICS):
        frames += len(records)
        readings += sum(n for _, n in records)
    return frames, readings


def recording(config: SimConfig, folder: Path) -> tuple[int, int]:
    summary = simulate_to_recording(config, folder / "bench.rec")
    return sum(summary["frames"].values()), summary["readings"]


def stage(name: str, fn: Any, repeat: int) -> dict[str, Any]:
    best: dict[str, Any] | None = None
    for _ in range(repeat):
        wall, cpu, (frames, readings) = _timed(fn)
        row = {"stage": name, "frames": frames, "readings": readings, "wall_s": round(wall, 3),
               "cpu_s": round(cpu, 3), "readings_per_s": round(readings / cpu), "frames_per_s": round(frames / cpu)}
        if best is None or row["cpu_s"] < best["cpu_s"]:
            best = row
    assert best is not None
    return best


async def _delete_topics(settings: Settings, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


def kafka_stages(config: SimConfig, repeat: int) -> list[dict[str, Any]]:
    base = Settings()
    items: list[tuple[Record, int]] = []
    for records, _ in FleetSimulator(config).record_windows(TOPICS):
        items.extend(records)
    rows = []
    created: list[str] = []
    for label in ("produce", "simulate>kafka"):
        best: dict[str, Any] | None = None
        for _ in range(repeat):
            tag = uuid.uuid4().hex[:8]
            settings = base.model_copy(update={"topic_sensor": f"bench.sensor.{tag}", "topic_gps": f"bench.gps.{tag}"})
            created += [settings.topic_sensor, settings.topic_gps]
            remap = {"bench.sensor": settings.topic_sensor, "bench.gps": settings.topic_gps}
            if label == "produce":
                source: Any = [(r._replace(topic=remap[r.topic]), n) for r, n in items]
            else:
                topics = {"sensor": settings.topic_sensor, "gps": settings.topic_gps}
                source = (i for recs, _ in FleetSimulator(config).record_windows(topics) for i in recs)
            wall, cpu, stats = _timed(lambda s=source, st=settings: asyncio.run(
                produce(s, st, pacer=Pacer(), options=ProducerOptions())))
            row = {"stage": label, "frames": stats.frames, "readings": stats.readings, "wall_s": round(wall, 3),
                   "cpu_s": round(cpu, 3), "readings_per_s": round(stats.readings / wall),
                   "frames_per_s": round(stats.frames / wall), "bytes": stats.bytes}
            if best is None or row["wall_s"] < best["wall_s"]:
                best = row
        assert best is not None
        rows.append(best)
    asyncio.run(_delete_topics(base, created))
    return rows


def main() -> None:
    logging.getLogger("aiokafka.cluster").setLevel(logging.CRITICAL)  # "topic not found" before auto-create
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vehicles", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-kafka", action="store_true", help="skip the broker stages")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = SimConfig(vehicles=args.vehicles, duration_s=args.duration, seed=args.seed)
    rows = [stage("generate", lambda: generate(config), args.repeat),
            stage("encode", lambda: encode(config), args.repeat)]
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(stage("recording", lambda: recording(config, Path(tmp)), args.repeat))
    if not args.no_kafka:
        from aiokafka.errors import KafkaConnectionError

        try:
            rows += kafka_stages(config, args.repeat)
        except KafkaConnectionError as exc:
            sys.exit(f"the broker stages need Kafka at {Settings().kafka_bootstrap}: {exc}\n"
                     f"start it with `scripts/services start`, or skip them with --no-kafka")
    result = {"vehicles": args.vehicles, "duration_s": args.duration, "stages": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"fleet {args.vehicles} vehicles, {args.duration:.0f} s simulated, best of {args.repeat}")
    print(f"{'stage':16s} {'frames':>9s} {'readings':>11s} {'seconds':>8s} {'readings/s':>12s} {'frames/s':>9s}")
    for r in rows:
        secs = r["cpu_s"] if r["stage"] in ("generate", "encode", "recording") else r["wall_s"]
        print(f"{r['stage']:16s} {r['frames']:9,d} {r['readings']:11,d} {secs:8.2f} "
              f"{r['readings_per_s']:12,d} {r['frames_per_s']:9,d}")
    print("(generate/encode/recording: CPU seconds of one core; produce stages: wall seconds)")


if __name__ == "__main__":
    main()
