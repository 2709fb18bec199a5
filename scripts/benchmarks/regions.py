"""Cross-region delivery latency: routed events produced in region A, consumed in region B
through MirrorMaker 2 (`a.route.x`), beside the baseline of the same events consumed in A.

Latency of an event = the wall clock when a consumer receives it minus its record timestamp
(the producer's create time, which MirrorMaker keeps). Both consumers run in this process,
so both sides read one clock. Events are CloudEvents-like records with a `ce_id` header,
keyed by VIN over the topic's partitions, paced at `--rate` per second.

Without --a/--b it starts a private pair (two KRaft brokers and MirrorMaker 2 on free ports
in a temporary folder, stopped at the end); it never touches the shared broker.

    .venv/bin/python scripts/benchmarks/regions.py --events 4000 --rate 200
    .venv/bin/python scripts/benchmarks/regions.py --a 127.0.0.1:9092 --b 127.0.0.1:9192 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402


async def _consume(bootstrap: str, topic: str, expected: int, deadline: float,
                   latencies: list[float]) -> None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                metadata_max_age_ms=1000, fetch_max_wait_ms=50)
    await consumer.start()
    seen: set[bytes] = set()
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            now_ms = time.time() * 1000
            for records in batch.values():
                for record in records:
                    event_id = dict(record.headers).get("ce_id", b"")
                    if event_id not in seen:
                        seen.add(event_id)
                        latencies.append((now_ms - record.timestamp) / 1000)
    finally:
        await consumer.stop()


def _summary(latencies: list[float], sent: int) -> dict[str, Any]:
    arr = np.asarray(latencies) if latencies else np.zeros(1)
    return {"received": len(latencies), "lost": sent - len(latencies),
            "p50_s": round(float(np.percentile(arr, 50)), 3),
            "p99_s": round(float(np.percentile(arr, 99)), 3),
            "max_s": round(float(arr.max()), 3)}


async def measure(a: str, b: str, *, source: str = "a", events: int, rate: float, partitions: int = 6,
                  timeout_s: float = 120) -> dict[str, Any]:
    topic = f"route.bench{uuid.uuid4().hex[:6]}.peak-shaving"
    admin = AIOKafkaAdminClient(bootstrap_servers=a)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    deadline = time.monotonic() + events / rate + timeout_s
    local: list[float] = []
    remote: list[float] = []
    consumers = [asyncio.create_task(_consume(a, topic, events, deadline, local)),
                 asyncio.create_task(_consume(b, f"{source}.{topic}", events, deadline, remote))]
    await asyncio.sleep(3)  # both consumers have joined (the replica appears once mirrored)
    producer = AIOKafkaProducer(bootstrap_servers=a, acks="all", linger_ms=0)
    await producer.start()
    started = time.monotonic()
    try:
        for i in range(events):
            wait = started + i / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await producer.send(topic, b'{"kind":"bench"}', key=f"VIN{i % 500:05d}".encode(),
                                headers=[("ce_id", f"bench-{i}".encode())])
        await producer.flush()
    finally:
        await producer.stop()
    await asyncio.gather(*consumers)
    return {"events": events, "rate_per_s": rate, "topic": topic,
            "same_region": _summary(local, events), "cross_region": _summary(remote, events)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", help="region A's bootstrap (default: start a private pair)")
    parser.add_argument("--b", help="region B's bootstrap")
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # "topic not found" until mirrored
    if bool(args.a) != bool(args.b):
        parser.error("give both --a and --b, or neither")

    from pipeline.tools.region_services import private_regions

    with contextlib.ExitStack() as stack:
        if args.a:
            a, b = args.a, args.b
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="regions-bench-")))
            layout = stack.enter_context(private_regions(folder))
            a, b = layout.bootstraps["a"], layout.bootstraps["b"]
        result = asyncio.run(measure(a, b, events=args.events, rate=args.rate))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['events']} events at {result['rate_per_s']:.0f}/s into {result['topic']} in A")
        for name in ("same_region", "cross_region"):
            r = result[name]
            label = "A -> A (baseline)" if name == "same_region" else "A -> B via MirrorMaker 2"
            print(f"  {label:<26} received {r['received']:>6}  lost {r['lost']:>4}  "
                  f"p50 {r['p50_s']:.3f}s  p99 {r['p99_s']:.3f}s  max {r['max_s']:.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
