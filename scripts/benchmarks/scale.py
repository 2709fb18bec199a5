"""Drain throughput with 1, 2 and 3 worker replicas on the same partitions, and the pause in
consumption while the group rebalances as a replica joins.

A fixed backlog is produced once by the fleet simulator (its Python API, `--produce-cmd` to
use another command) to fresh ingest topics. Each replica count
then drains all of it as a fresh consumer group (so every run reads the same records), with
the replicas run by the local supervisor. Progress is the group's committed offsets, read
from the broker every `--sample` seconds. The rebalance run starts one replica, lets it make
steady progress, starts a second, and reports the longest stretch without any committed
progress after the join next to the longest before it (the commit cadence).

    .venv/bin/python scripts/benchmarks/scale.py [--replicas 1 2 3] [--partitions 6] [--json]

Needs the local services (scripts/services start) and a working `pipeline worker`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from pipeline.runtime.lag import GroupLag, LagReader  # noqa: E402
from pipeline.runtime.settings import get_settings  # noqa: E402
from pipeline.tools.supervisor import Supervisor  # noqa: E402


@dataclass
class DrainRun:
    replicas: int
    records: int
    readings: int | None
    start_to_first_commit_s: float
    start_to_drained_s: float
    steady_records_per_s: float  # committed progress between 10% and 90% of the backlog
    records_per_s: float  # backlog / (drained - first commit)
    readings_per_s: float | None
    speedup: float = 1.0


@dataclass
class RebalanceRun:
    join_at_fraction: float
    gap_before_join_max_s: float  # the commit cadence while one replica runs alone
    pause_after_join_s: float  # longest stretch without committed progress after the join
    join_to_ready_s: float  # spawning the replica until its metrics port answered
    partition_gap_before_join_max_s: float  # the same, per partition (worst partition)
    partition_gap_after_join_max_s: float
    progress_trace: list[tuple[float, int]] = field(default_factory=list)


def max_gap(points: list[tuple[float, int]], since: float, until: float) -> float:
    """Longest time between two successive advances of a counter, for advances in
    [since, until]; the advance at or before `since` opens the first interval."""
    gap, last_change, last_value = 0.0, None, None
    for t, value in points:
        if last_value is None or value > last_value:
            if last_change is not None and t >= since and t <= until:
                gap = max(gap, t - last_change)
            last_change, last_value = t, value
    return gap


def analyse_rebalance(trace: list[tuple[float, int, tuple[int, ...]]], join_at: float,
                      ready_at: float | None, fraction: float) -> RebalanceRun:
    """Stalls in committed progress before and after the join, for the group and per partition."""
    first = next(t for t, total, _ in trace if total > 0)
    end = trace[-1][0]
    totals = [(t, total) for t, total, _ in trace]
    per_partition = [[(t, parts[i]) for t, _, parts in trace] for i in range(len(trace[0][2]))]

    def worst_partition(since: float, until: float) -> float:
        return max((max_gap(points, since, until) for points in per_partition), default=0.0)

    # Before: from the first commit to the join. After: from the join to the end of the drain.
    return RebalanceRun(
        join_at_fraction=fraction,
        gap_before_join_max_s=round(max_gap(totals, first, join_at), 2),
        pause_after_join_s=round(max_gap(totals, join_at, end), 2),
        join_to_ready_s=round((ready_at or join_at) - join_at, 2),
        partition_gap_before_join_max_s=round(worst_partition(first, join_at), 2),
        partition_gap_after_join_max_s=round(worst_partition(join_at, end), 2),
        progress_trace=[(round(t, 2), total) for t, total, _ in trace],
    )


def free_port_base(span: int) -> int:
    """A base port with `span` free ports above it."""
    for _ in range(500):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + span >= 65535:
            continue
        try:
            for port in range(base, base + span):
                with socket.socket() as sock:
                    sock.bind(("0.0.0.0", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


def scrape_readings(ports: list[int]) -> int | None:
    """Sum of pipeline_readings_in_total over the replicas' metrics (None if not exported)."""
    from prometheus_client.parser import text_string_to_metric_families

    total, seen = 0.0, False
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "pipeline_readings_in_total":
                    total += sample.value
                    seen = True
    return int(total) if seen else None


async def create_topics(topics: list[str], partitions: int) -> None:
    settings = get_settings()
    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        # Simulated records carry simulated (past) timestamps: without retention.ms=-1 the
        # broker's time-based retention would delete the backlog before it is drained.
        await admin.create_topics([NewTopic(t, partitions, settings.replication_factor,
                                            topic_configs={"retention.ms": "-1"}) for t in topics])
    finally:
        await admin.close()


async def delete_topics(topics: list[str], prefix: str) -> None:
    """The bench topics, and the app's internal topics (names starting with `prefix`)."""
    admin = AIOKafkaAdminClient(**get_settings().kafka_client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [t for t in existing if t in topics or t.startswith(prefix)]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


def remove_bucket(name: str) -> None:
    """Delete a bench bucket and its objects (best effort)."""
    from minio.deleteobjects import DeleteObject

    client = get_settings().minio_client()
    if not client.bucket_exists(name):
        return
    doomed = [DeleteObject(o.object_name) for o in client.list_objects(name, recursive=True, use_api_v1=True)]
    for error in client.remove_objects(name, doomed):
        print(f"could not delete {name}/{error.name}: {error.message}", file=sys.stderr)
    client.remove_bucket(name)


async def read_lag(group: str, topics: list[str]) -> GroupLag:
    async with LagReader(group, topics) as reader:
        return await reader.read()


async def produce_simulated(vehicles: int, duration_s: float, seed: int, sensor_topic: str,
                            gps_topic: str) -> tuple[int, int]:
    """The simulator's frames for a fleet, produced as fast as the broker takes them:
    (records acknowledged, readings in them)."""
    from aiokafka import AIOKafkaProducer

    from pipeline.tools.simulate import FleetSimulator, SimConfig

    config = SimConfig(vehicles=vehicles, duration_s=duration_s, seed=seed,
                       sensor_topic=sensor_topic, gps_topic=gps_topic)
    topics = {"sensor": sensor_topic, "gps": gps_topic}
    producer = AIOKafkaProducer(acks="all", linger_ms=20, max_request_size=4 << 20,
                                **get_settings().kafka_client_kwargs())
    await producer.start()
    records = readings = failed = 0
    try:
        for window, _truth in FleetSimulator(config).record_windows(topics):
            pending = []
            for record, n_readings in window:
                fut = await producer.send(record.topic, record.value, key=record.key,
                                          headers=list(record.headers),
                                          timestamp_ms=record.timestamp_ms or None)
                pending.append((fut, n_readings))
            for fut, n_readings in pending:
                try:
                    await fut
                except Exception:  # a record the broker refused is not part of the backlog
                    failed += 1
                    continue
                records += 1
                readings += n_readings
    finally:
        await producer.stop()
    if failed:
        print(f"{failed} simulated records were refused by the broker", file=sys.stderr)
    return records, readings


async def produce_backlog(args: argparse.Namespace, env: dict[str, str]) -> int | None:
    """Fill the bench topics; returns the readings produced when known."""
    if not args.produce_cmd:
        print(f"producing the backlog: simulator, {args.vehicles} vehicles x {args.duration}s, "
              f"seed {args.seed}", file=sys.stderr)
        _, readings = await produce_simulated(args.vehicles, args.duration, args.seed,
                                              env["TOPIC_SENSOR"], env["TOPIC_GPS"])
        return readings
    command = args.produce_cmd.format(pipeline=shlex.quote(str(REPO / ".venv" / "bin" / "pipeline")),
                                      vehicles=args.vehicles, duration=args.duration, seed=args.seed)
    print(f"producing the backlog: {command}", file=sys.stderr)
    done = await asyncio.to_thread(subprocess.run, command, shell=True, env=env, cwd=REPO, check=False)
    if done.returncode != 0:
        raise SystemExit(f"backlog command failed with exit {done.returncode}: {command}")
    return None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.topics = [f"bench.scale.{self.run_id}.sensor", f"bench.scale.{self.run_id}.gps"]
        self.dlq = f"bench.scale.{self.run_id}.dlq"
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
        self.buckets: list[str] = []
        self.base_env = {
            "TOPIC_SENSOR": self.topics[0],
            "TOPIC_GPS": self.topics[1],
            "TOPIC_DLQ": self.dlq,
            "PARTITIONS": str(args.partitions),
            "LOG_LEVEL": args.log_level,
        }

    def env_for(self, name: str) -> tuple[str, dict[str, str]]:
        """A fresh consumer group (and bucket) for one run: every run reads the whole backlog."""
        group = f"bench-scale-{self.run_id}-{name}"
        self.buckets.append(group)
        return group, {**self.base_env, "APP_ID": group, "S3_BUCKET": group}

    def supervisor(self, name: str, env: dict[str, str], replicas: int) -> Supervisor:
        # The bucket exists before replicas start together (so none races to create it).
        client = get_settings().minio_client()
        if not client.bucket_exists(env["S3_BUCKET"]):
            client.make_bucket(env["S3_BUCKET"])
        return Supervisor(self.workdir / name, env=env, metrics_base=free_port_base(replicas + 1),
                          web_base=free_port_base(replicas + 1), stop_timeout_s=30, ready_timeout_s=120)

    async def sample_until_drained(self, group: str, started: float,
                                   until: float) -> list[tuple[float, int, int]]:
        """(seconds since start, committed total, lag) every sample, until lag is 0."""
        trace: list[tuple[float, int, int]] = []
        async with LagReader(group, self.topics) as reader:
            while time.monotonic() < until:
                lag = await reader.read()
                trace.append((time.monotonic() - started, lag.committed_total, lag.total))
                if lag.total == 0 and lag.end_total > 0:
                    return trace
                await asyncio.sleep(self.args.sample)
        raise SystemExit(f"group {group} did not drain within {self.args.timeout}s (last lag {trace[-1][2]})")

    async def drain(self, replicas: int, backlog: int, produced_readings: int | None) -> DrainRun:
        group, env = self.env_for(f"n{replicas}")
        sup = self.supervisor(f"n{replicas}", env, replicas)
        started = time.monotonic()
        try:
            await asyncio.to_thread(sup.scale, replicas)
            trace = await self.sample_until_drained(group, started, started + self.args.timeout)
            readings = produced_readings or scrape_readings(
                [s.replica.metrics_port for s in sup.status() if s.alive])
        finally:
            await asyncio.to_thread(sup.stop)
        first = next(t for t, committed, _ in trace if committed > 0)
        drained = trace[-1][0]
        lo = next(t for t, c, _ in trace if c >= 0.1 * backlog)
        hi = next(t for t, c, _ in trace if c >= 0.9 * backlog)
        steady = 0.8 * backlog / (hi - lo) if hi > lo else float("nan")
        span = max(drained - first, 1e-9)
        return DrainRun(replicas, backlog, readings, round(first, 2), round(drained, 2), round(steady, 1),
                        round(backlog / span, 1), round(readings / span, 1) if readings else None)

    async def rebalance(self, backlog: int) -> RebalanceRun:
        group, env = self.env_for("rebalance")
        sup = self.supervisor("rebalance", env, 2)
        fraction = self.args.join_at
        trace: list[tuple[float, int, tuple[int, ...]]] = []  # (t, committed total, per partition)
        started = time.monotonic()
        join_at: float | None = None
        ready_at: float | None = None
        try:
            await asyncio.to_thread(sup.scale, 1)
            join_task: asyncio.Task[object] | None = None
            async with LagReader(group, self.topics) as reader:
                while time.monotonic() - started < self.args.timeout:
                    lag = await reader.read()
                    now = time.monotonic() - started
                    trace.append((now, lag.committed_total,
                                  tuple(p.committed or 0 for p in lag.by_partition)))
                    if join_task is None and lag.committed_total >= fraction * backlog:
                        join_at = now
                        join_task = asyncio.create_task(asyncio.to_thread(sup.scale, 2))
                    if join_task is not None and join_task.done() and ready_at is None:
                        join_task.result()
                        ready_at = time.monotonic() - started
                    if lag.total == 0 and lag.end_total > 0:
                        break
                    await asyncio.sleep(self.args.sample)
            if join_task is not None:
                await join_task
        finally:
            await asyncio.to_thread(sup.stop)
        if join_at is None:
            raise SystemExit("the backlog drained before the second replica could join; use a bigger backlog")
        return analyse_rebalance(trace, join_at, ready_at, fraction)

    async def run(self) -> dict[str, Any]:
        topics = [*self.topics, self.dlq]
        await create_topics(topics, self.args.partitions)
        try:
            produced_readings = await produce_backlog(self.args, {**os.environ, **self.base_env})
            backlog = (await read_lag(f"bench-scale-{self.run_id}-probe", self.topics)).total
            if backlog == 0:
                raise SystemExit("the backlog command produced nothing to the bench topics")
            print(f"backlog: {backlog} records on {self.args.partitions} partitions x 2 topics; "
                  f"worker logs under {self.workdir}", file=sys.stderr)
            runs = []
            for replicas in self.args.replicas:
                print(f"draining with {replicas} replica(s)...", file=sys.stderr)
                runs.append(await self.drain(replicas, backlog, produced_readings))
            base = next((r.records_per_s for r in runs if r.replicas == 1), runs[0].records_per_s)
            for r in runs:
                r.speedup = round(r.records_per_s / base, 2) if base else float("nan")
            rebalance = None
            if self.args.rebalance:
                print("rebalance: one replica, then a second joins...", file=sys.stderr)
                rebalance = await self.rebalance(backlog)
        finally:
            if not self.args.keep:
                await delete_topics(topics, prefix=f"bench-scale-{self.run_id}-")
                for bucket in self.buckets:
                    await asyncio.to_thread(remove_bucket, bucket)
        return {
            "partitions": self.args.partitions,
            "backlog_records": backlog,
            "cpus": os.cpu_count(),
            "drain": [asdict(r) for r in runs],
            "rebalance": asdict(rebalance) if rebalance else None,
        }


def print_table(result: dict[str, Any]) -> None:
    print(f"backlog {result['backlog_records']} records, {result['partitions']} partitions per "
          f"ingest topic, {result['cpus']} CPUs")
    header = (f"{'replicas':>8} {'records/s':>11} {'steady/s':>10} {'readings/s':>12} {'speedup':>8} "
              f"{'first commit s':>15} {'drained s':>10}")
    print(header)
    print("-" * len(header))
    for r in result["drain"]:
        readings = f"{r['readings_per_s']:,.0f}" if r["readings_per_s"] else "-"
        print(f"{r['replicas']:>8} {r['records_per_s']:>11,.0f} {r['steady_records_per_s']:>10,.0f} "
              f"{readings:>12} {r['speedup']:>8.2f} {r['start_to_first_commit_s']:>15.1f} "
              f"{r['start_to_drained_s']:>10.1f}")
    reb = result.get("rebalance")
    if reb:
        print(f"rebalance (1 -> 2 replicas at {reb['join_at_fraction']:.0%} of the backlog): "
              f"longest gap in committed progress {reb['pause_after_join_s']:.1f}s after the join "
              f"vs {reb['gap_before_join_max_s']:.1f}s before it (commit cadence); worst partition "
              f"{reb['partition_gap_after_join_max_s']:.1f}s after vs "
              f"{reb['partition_gap_before_join_max_s']:.1f}s before; "
              f"new replica's metrics up {reb['join_to_ready_s']:.1f}s after spawn")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--partitions", type=int, default=6, help="Partitions per ingest topic.")
    parser.add_argument("--vehicles", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=900, help="Simulated seconds of traffic.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--produce-cmd", default=None,
                        help="Shell command filling the backlog instead of the simulator's Python API; "
                             "{pipeline} {vehicles} {duration} {seed} are substituted; TOPIC_SENSOR and "
                             "TOPIC_GPS in its environment name the bench topics.")
    parser.add_argument("--sample", type=float, default=0.2, help="Seconds between offset readings.")
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds allowed per drain.")
    parser.add_argument("--join-at", type=float, default=0.25, help="Backlog fraction at which replica 2 joins.")
    parser.add_argument("--no-rebalance", dest="rebalance", action="store_false")
    parser.add_argument("--log-level", default="WARNING", help="LOG_LEVEL of the workers (logs in a temp dir).")
    parser.add_argument("--keep", action="store_true", help="Keep the bench topics and buckets.")
    parser.add_argument("--json", action="store_true", help="Print JSON.")
    parser.add_argument("--trace", action="store_true", help="Include the rebalance progress trace in the JSON.")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # run the clean-up (replicas, topics) on SIGTERM too
    result = asyncio.run(Bench(args).run())
    if args.json:
        if result.get("rebalance") and not args.trace:
            result["rebalance"].pop("progress_trace", None)
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
