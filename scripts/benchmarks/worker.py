"""Benchmark one `pipeline worker` end to end, against the consume-and-decode ceiling and a
per-event Faust baseline, in the same run and on the same records.

1. Backlog: the fleet simulator's default frames (one vehicle's upload of `--frame-seconds`
   of its ~30 signals) are produced as fast as the broker takes them to fresh ingest topics
   (`--partitions`, retention off so that simulated 2024 record times are not expired).
2. ceiling: a bare aiokafka consumer (no group) reads the backlog and decodes each fetch
   into columns with `events.decode_records`, nothing else.
3. profile: the worker's per-batch CPU path (core, metrics, output plan with routed-event
   encoding, Parquet and manifests), serially on the ceiling's fetched batches, in this
   process, without broker or store: the rate the worker's overlapped stages must beat.
4. faust-take: a Faust agent that only takes `noack_take` batches and acks them: Faust's
   own per-event cost (`baseline_agent.py`, BASELINE_AGENT=take).
5. worker: one `pipeline worker` subprocess (handlers and rules on, its own bucket, route
   topics renamed into this run) drains the backlog. Throughput runs from its first
   processed frame until the group's committed offsets reach the end of every partition
   (polled from the broker); readings are counted from what was produced at each offset.
   Time split from its Prometheus histograms (core stages, sinks) plus timers this script
   adds around the runtime's stages (`--no-timers` runs the bare command); its CPU time,
   run-queue wait and peak memory (VmHWM) from /proc.
6. baseline: a plain Faust agent (`baseline_agent.py`) that decodes and cleans one event at
   a time with `ReferenceCleaner`, no handlers or sinks, on the whole backlog (or for
   `--baseline-seconds`); rate = its committed progress between first and last commit.
7. latency: a fresh worker on fresh topics gets `--latency-fraction` of the worker's drain
   rate for `--latency-seconds`. Frames are simulated beforehand with their times moved to
   the present, then sent at an even readings rate (`--pacing arrival` keeps the
   simulator's bunched arrival times) with record timestamp = wall clock at send. Per frame:
   routed latency = when the worker logged its batch's routed events acknowledged, durable
   latency = when it logged everything of it durable (objects PUT too), commit latency =
   when the group's committed offset passed it (polled every 0.1 s), each minus send time. The first `--warmup` s are left out.
8. `--soak MINUTES` (optional): the same paced load for that long, simulated on the fly in a
   thread, with the worker's RSS sampled every 10 s.

Topics, consumer groups and the bucket are named after a random run id and deleted at
the end. Needs the local services (scripts/services start). Takes about 3 minutes.

    scripts/bench [--vehicles 2000 --duration 600 --partitions 6] [--json] [--soak 5]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from aiokafka.partitioner import DefaultPartitioner  # noqa: E402
from aiokafka.structs import TopicPartition  # noqa: E402

from pipeline.core.batch import RawRecord  # noqa: E402
from pipeline.core.events import decode_records  # noqa: E402
from pipeline.runtime.lag import GroupLag, LagReader  # noqa: E402
from pipeline.runtime.settings import Settings  # noqa: E402
from pipeline.tools.recording import Record  # noqa: E402
from pipeline.tools.replay import Pacer, as_async  # noqa: E402
from pipeline.tools.simulate import FleetSimulator, SimConfig, SimFrame, to_record  # noqa: E402

TARGET_VS_PROFILE = 1.0  # overlapped stages win back what Kafka and the store cost
TARGET_VS_BASELINE = 8.0  # over the per-event Faust agent
TARGET_CPU_SHARE = 0.9  # cores busy during the drain, over one
TARGET_P99_ROUTED_S = 1.0  # frame produced -> its batch's routed CloudEvents acknowledged, at half rate
TARGET_P99_DURABLE_S = 2.0  # frame produced -> its readings durable in the store, same run
STAGES = ("decode", "clean", "handlers", "rules", "total")
TOPIC_CONFIG = {"retention.ms": "-1", "retention.bytes": "-1"}
Item = tuple[Record, int]  # a record and the readings it carries


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- what was produced ------------------------------------------------------------------------


class Ledger:
    """Readings and send time of every produced record, by partition and offset, so committed
    offsets convert to readings and to per-frame latencies."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, int], list[tuple[int, int, float]]] = collections.defaultdict(list)
        self.offsets: dict[tuple[str, int], np.ndarray] = {}
        self.readings: dict[tuple[str, int], np.ndarray] = {}
        self.sent: dict[tuple[str, int], np.ndarray] = {}
        self._cum: dict[tuple[str, int], np.ndarray] = {}

    def add(self, topic: str, partition: int, offset: int, readings: int, sent_s: float) -> None:
        self._rows[(topic, partition)].append((offset, readings, sent_s))

    def freeze(self) -> Ledger:
        for tp, rows in self._rows.items():
            rows.sort()
            arr = np.array(rows, dtype=np.float64)
            self.offsets[tp] = arr[:, 0].astype(np.int64)
            self.readings[tp] = arr[:, 1].astype(np.int64)
            self.sent[tp] = arr[:, 2]
            self._cum[tp] = np.concatenate([[0], np.cumsum(self.readings[tp])])
        return self

    @property
    def total_records(self) -> int:
        return sum(len(v) for v in self.offsets.values())

    @property
    def total_readings(self) -> int:
        return int(sum(int(v.sum()) for v in self.readings.values()))

    def readings_below(self, topic: str, partition: int, committed: int | None) -> int:
        """Readings in the records of a partition with offset < committed."""
        tp = (topic, partition)
        if not committed or tp not in self.offsets:
            return 0
        return int(self._cum[tp][np.searchsorted(self.offsets[tp], committed)])

    def committed_readings(self, lag: GroupLag) -> int:
        return sum(self.readings_below(p.topic, p.partition, p.committed) for p in lag.by_partition)


@dataclass
class Produced:
    records: int = 0
    readings: int = 0
    bytes: int = 0
    rejected: int = 0  # records the producer or broker refused (e.g. above the broker's size limit)
    seconds: float = 0.0
    by_topic: dict[str, int] = field(default_factory=dict)


class KeyPartitioner:
    """Kafka's default partitioner for keyed records (murmur2 of the key), remembered per key:
    aiokafka computes murmur2 in Python for every record, a good part of the load generator's
    CPU on a machine it shares with the worker it measures."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[bytes, int], int] = {}
        self._default = DefaultPartitioner()

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return self._default(key, all_partitions, available)
        found = self._by_key.get((key, len(all_partitions)))
        if found is None:
            found = self._by_key[(key, len(all_partitions))] = self._default(key, all_partitions, available)
        return found


async def produce(items: Iterable[Item] | AsyncIterator[Item], settings: Settings, ledger: Ledger, *,
                  pacer: Pacer | None = None) -> Produced:
    """Send records and note each one's partition, offset, readings and send time.

    Without a pacer: as fast as the broker takes them, with the records' own timestamps.
    With one (`pipeline.tools.replay.Pacer`: by record time at a speed, or at a readings rate):
    each record when it is due, with the wall clock at send as its record timestamp.
    """
    producer = AIOKafkaProducer(**settings.kafka_client_kwargs(), linger_ms=10 if pacer else 20,
                                max_batch_size=1 << 20, acks=1, partitioner=KeyPartitioner())
    out = Produced()
    pending: collections.deque[tuple[Any, int, float]] = collections.deque()

    def settle(fut: Any, readings: int, sent: float) -> None:
        try:
            md = fut.result()
        except Exception:
            out.rejected += 1
            return
        ledger.add(md.topic, md.partition, md.offset, readings, sent)
        out.records += 1
        out.readings += readings
        out.by_topic[md.topic] = out.by_topic.get(md.topic, 0) + 1

    await producer.start()
    started = time.monotonic()
    try:
        async for record, readings in as_async(items):
            timestamp = record.timestamp_ms
            if pacer is not None:
                wait = pacer.delay(record.timestamp_ms, readings)
                if wait > 0.002:
                    await asyncio.sleep(wait)
                timestamp = int(time.time() * 1000)
            sent = time.time()
            try:
                fut = await producer.send(record.topic, record.value, key=record.key,
                                          headers=list(record.headers), timestamp_ms=timestamp)
            except Exception:
                out.rejected += 1
                continue
            out.bytes += len(record.value or b"")
            pending.append((fut, readings, sent))
            while pending and (pending[0][0].done() or len(pending) > 20_000):
                fut0, n0, s0 = pending.popleft()
                if not fut0.done():
                    await asyncio.wait([fut0])
                settle(fut0, n0, s0)
        await producer.flush()
        while pending:
            fut0, n0, s0 = pending.popleft()
            await asyncio.wait([fut0])
            settle(fut0, n0, s0)
    finally:
        await producer.stop()
    out.seconds = time.monotonic() - started
    return out


# --- simulated traffic --------------------------------------------------------------------------


def sim_config(args: argparse.Namespace, topics: dict[str, str], *, vehicles: int, duration_s: float,
               seed: int) -> SimConfig:
    return SimConfig(vehicles=vehicles, duration_s=duration_s, seed=seed, frame_seconds=args.frame_seconds,
                     sensor_topic=topics["sensor"], gps_topic=topics["gps"])


def backlog_items(config: SimConfig, topics: dict[str, str]) -> Iterator[Item]:
    for window, _ in FleetSimulator(config).record_windows(topics):
        yield from window


def shifted(f: SimFrame, delta_ms: int) -> SimFrame:
    """The frame with every time (arrival, sent_at, sample times) moved by `delta_ms`, without
    touching the original (a duplicate's resend shares its frame dict)."""
    frame = dict(f.frame)
    frame["sent_at"] = frame["sent_at"] + delta_ms
    frame["samples"] = {name: {**s, "t": np.asarray(s["t"], dtype=np.int64) + delta_ms}
                        for name, s in frame["samples"].items()}
    return SimFrame(f.arrival_ms + delta_ms, f.kind, frame, f.n_readings, f.vehicle, f.seq, f.fault,
                    f.detail, f.copy)


def present_windows(config: SimConfig, topics: dict[str, str], start_ms: int) -> Iterator[list[Item]]:
    """Simulated windows with payload times moved so that the run starts at `start_ms`.
    Frames arriving after the simulated end (the long tail of late frames) are left out."""
    sim = FleetSimulator(config)
    delta = start_ms - config.start_ms
    end = config.start_ms + int(config.duration_s * 1000)
    for frames, _ in sim.windows():
        items = [(to_record(shifted(f, delta), topics, config.max_frame_bytes), f.n_readings)
                 for f in frames if f.arrival_ms <= end]
        if items:
            yield items


async def threaded_items(windows: Iterator[list[Item]], ahead: int = 3) -> AsyncIterator[Item]:
    """Generate windows in a thread, a few ahead of the sender, for runs too long to hold."""
    buffer: queue.Queue[list[Item] | None] = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def generate() -> None:
        try:
            for window in windows:
                while not stop.is_set():
                    try:
                        buffer.put(window, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        finally:
            buffer.put(None)

    thread = threading.Thread(target=generate, name="simulate", daemon=True)
    thread.start()
    try:
        while True:
            window = await asyncio.to_thread(buffer.get)
            if window is None:
                return
            for n, item in enumerate(window):
                yield item
                if n % 256 == 255:
                    await asyncio.sleep(0)
    finally:
        stop.set()


# --- processes and services ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time so far of a process and its live children (the worker's
    output-plan encoder is a child process), from /proc/<pid>/stat."""
    def own(p: int) -> tuple[int, float]:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    try:
        total = own(pid)[1]
    except (OSError, ValueError, IndexError):
        return None
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != pid:
            try:
                parent, seconds = own(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
            if parent == pid:
                total += seconds
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, summed over its cores (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / hz, sum(fields) / hz


def runqueue_wait_seconds(pid: int) -> float | None:
    """Time the process's main thread spent runnable but waiting for a CPU (/proc schedstat):
    how much other load on the machine slowed it down."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int, key: str) -> int | None:
    """A `/proc/<pid>/status` memory field in bytes (VmRSS, VmHWM), None if unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class Child:
    """A worker or baseline subprocess with its own environment, log and metrics port."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path,
                 metrics_port: int = 0) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.metrics_port = metrics_port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90) -> Child:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=REPO, start_new_session=True)
        if not self.metrics_port:
            return self
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name}: metrics port silent after {timeout_s}s\n{self.tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}\n{self.tail()}")

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def stop(self, timeout_s: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            say(f"{self.name} ignored SIGTERM for {timeout_s}s; killing it")
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"


def metric_sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in samples.items()
               if n == name and all(dict(lab).get(k) == want for k, want in labels.items()))


def histogram_quantile(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
                       q: float) -> float | None:
    """Quantile from a Prometheus histogram's cumulative buckets (linear inside a bucket)."""
    buckets = sorted((float(dict(lab)["le"]), v) for (n, lab), v in samples.items() if n == f"{name}_bucket")
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= target:
            if math.isinf(le):
                return prev_le
            share = (target - prev_count) / (count - prev_count) if count > prev_count else 1.0
            return prev_le + (le - prev_le) * share
        prev_le, prev_count = le, count
    return prev_le


class Run:
    """One benchmark run: its id, names, rules copy, children, and cleanup."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.uid = uuid.uuid4().hex[:8]
        self.base = Settings()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.uid}-"))
        self.bucket = f"bench-{self.uid}"
        self.dlq = f"bench.{self.uid}.dlq"
        self.rules_dir = self._rules_copy()
        self.children: list[Child] = []

    def topics(self, phase: str) -> dict[str, str]:
        return {"sensor": f"bench.{self.uid}.{phase}.sensor.raw", "gps": f"bench.{self.uid}.{phase}.gps.raw"}

    def _rules_copy(self) -> Path:
        """The repository's rules with route and dead-letter topics renamed into this run
        (`route.X` -> `route.bench.<run>.X`, the loader wants the `route.` prefix)."""
        target = self.tmp / "rules"
        shutil.copytree(self.base.rules_dir, target)
        pattern = re.compile(r"(topic:\s*)(route\.([A-Za-z0-9._-]+)|pipeline\.dlq)")
        for path in (target / "routes").glob("*.yaml"):
            text = pattern.sub(lambda m: m.group(1) + (self.dlq if m.group(2) == "pipeline.dlq"
                                                       else f"route.bench.{self.uid}.{m.group(3)}"), path.read_text())
            path.write_text(text)
        return target

    def env(self, group: str, topics: dict[str, str], **extra: str) -> dict[str, str]:
        env = {**os.environ, "APP_ID": group, "TOPIC_SENSOR": topics["sensor"], "TOPIC_GPS": topics["gps"],
               "TOPIC_DLQ": self.dlq, "S3_BUCKET": self.bucket, "PARTITIONS": str(self.args.partitions),
               "RULES_DIR": str(self.rules_dir), "HANDLERS_ENABLED": "true", "RULES_ENABLED": "true",
               "DATA_DIR": str(self.tmp / f"data-{group}"), "LOG_LEVEL": "INFO"}
        if self.args.batch_size:
            env["BATCH_SIZE"] = str(self.args.batch_size)
        if self.args.batch_wait:
            env["BATCH_WAIT_S"] = str(self.args.batch_wait)
        if self.args.batch_trace:
            env["BENCH_BATCH_TRACE"] = str(Path(self.args.batch_trace).resolve())
        env.update(extra)
        return env

    def worker(self, phase: str, topics: dict[str, str]) -> Child:
        group = f"bench-{self.uid}-{phase}"
        port = free_port()
        argv = ([sys.executable, str(Path(__file__).resolve()), "_traced-worker"] if self.args.timers
                else [sys.executable, "-m", "pipeline.cli.main", "worker"])
        child = Child(f"worker[{phase}]", argv,
                      self.env(group, topics, METRICS_PORT=str(port)), self.tmp / f"{group}.log", port)
        self.children.append(child)
        return child

    def baseline(self, topics: dict[str, str], agent: str = "per-event") -> Child:
        group = f"bench-{self.uid}-{agent}"
        child = Child(agent, [sys.executable, str(REPO / "scripts" / "benchmarks" / "baseline_agent.py")],
                      self.env(group, topics, METRICS_PORT="0", LOG_LEVEL="WARNING", BASELINE_AGENT=agent),
                      self.tmp / f"{group}.log")
        self.children.append(child)
        return child

    async def create_topics(self, topics: dict[str, str]) -> None:
        admin = AIOKafkaAdminClient(**self.base.kafka_client_kwargs())
        await admin.start()
        try:
            await admin.create_topics([NewTopic(t, self.args.partitions, 1, topic_configs=TOPIC_CONFIG)
                                       for t in topics.values()])
        finally:
            await admin.close()

    async def cleanup(self) -> None:
        for child in self.children:
            child.stop()
        if self.args.keep:
            say(f"kept topics bench.{self.uid}.*, bucket {self.bucket}, logs in {self.tmp}")
            return
        admin = AIOKafkaAdminClient(**self.base.kafka_client_kwargs())
        try:
            await admin.start()
            mine = [t for t in await admin.list_topics() if self.uid in t]
            if mine:
                await admin.delete_topics(mine)
        except Exception as exc:
            say(f"could not delete topics bench.{self.uid}.*: {type(exc).__name__}: {exc}")
        finally:
            await admin.close()
        try:
            await asyncio.to_thread(self._delete_bucket)
        except Exception as exc:
            say(f"could not delete bucket {self.bucket}: {type(exc).__name__}: {exc}")
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _delete_bucket(self) -> None:
        from minio.deleteobjects import DeleteObject

        client = self.base.minio_client()
        if not client.bucket_exists(self.bucket):
            return
        # ListObjectsV2 paging fails on S3Proxy past the first 1000 keys; V1 pages fine.
        names = [o.object_name for o in client.list_objects(self.bucket, recursive=True, use_api_v1=True)]
        for start in range(0, len(names), 1000):
            errors = list(client.remove_objects(self.bucket, [DeleteObject(n) for n in names[start:start + 1000]]))
            for err in errors:
                client.remove_object(self.bucket, err.name)
        client.remove_bucket(self.bucket)


async def wait_group_stable(settings: Settings, group: str, child: Child, timeout_s: float = 90) -> None:
    """Until the consumer group is Stable with a member (partitions assigned)."""
    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            child.check()
            try:
                described = await admin.describe_consumer_groups([group])
                entry = described[0].groups[0]
                if entry[2] == "Stable" and entry[5]:
                    return
            except Exception:
                pass
            await asyncio.sleep(0.25)
        raise RuntimeError(f"group {group} not stable after {timeout_s}s\n{child.tail()}")
    finally:
        await admin.close()


# --- phases -------------------------------------------------------------------------------------


async def phase_ceiling(run: Run, topics: dict[str, str], ledger: Ledger,
                        keep: list[list[RawRecord]] | None = None) -> dict[str, Any]:
    """Bare aiokafka consumer + decode_records over the whole backlog (fetched batches are
    appended to `keep` if given, for the in-process profile)."""
    settings = run.base
    batch = run.args.batch_size or settings.batch_size
    consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics.values() for p in range(run.args.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        frames = readings = dead = 0
        decode_s = 0.0
        started: float | None = None
        while remaining:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=batch)
            if not fetched:
                continue
            if started is None:
                started = time.perf_counter()
            records = [RawRecord(m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers), m.timestamp)
                       for msgs in fetched.values() for m in msgs]
            t0 = time.perf_counter()
            decoded, dead_letters = decode_records(records, max_frame_bytes=settings.max_frame_bytes)
            decode_s += time.perf_counter() - t0
            if keep is not None:
                keep.append(records)
            frames += len(records)
            readings += len(decoded)
            dead += len(dead_letters)
            for tp, msgs in fetched.items():
                if msgs and msgs[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        seconds = time.perf_counter() - (started or time.perf_counter())
    finally:
        await consumer.stop()
    return {"frames": frames, "readings": readings, "dead_lettered": dead, "seconds": seconds,
            "readings_per_s": readings / seconds if seconds else None,
            "frames_per_s": frames / seconds if seconds else None, "decode_seconds": decode_s}


def phase_profile(run: Run, batches: list[list[RawRecord]]) -> dict[str, Any]:
    """The worker's per-batch CPU path in this process, one batch after another, without broker
    or store: the core, its metrics and the output plan (routed-event encoding, Parquet,
    manifests) on the ceiling's fetched batches, with the same runtime functions the worker
    calls. The serial rate the worker's overlapped stages must beat (`vs_profile`)."""
    import logging

    from pipeline.core.process import Core
    from pipeline.runtime.app import tune_gc
    from pipeline.runtime.ingest_batch import observe
    from pipeline.runtime.plan import plan_outputs

    logging.getLogger("pipeline").setLevel(logging.ERROR)  # dead letters would log per record
    settings = Settings(rules_dir=run.rules_dir, s3_bucket=run.bucket, handlers_enabled=True,
                        rules_enabled=True)  # type: ignore[call-arg]
    core = Core.from_settings(settings)
    tune_gc(settings)  # as the worker does
    spent: dict[str, float] = collections.defaultdict(float)
    readings = frames = objects = messages = 0
    began = time.perf_counter()
    for records in batches:
        t0 = time.perf_counter()
        result = core.process(records)
        t1 = time.perf_counter()
        for stage, sec in result.timings.items():
            spent[stage] += sec
        observe(result, t1 - t0)
        t2 = time.perf_counter()
        plan = plan_outputs(result, dlq_topic=run.dlq)
        t3 = time.perf_counter()
        objects += len(plan.objects)
        messages += len(plan.messages)
        spent["core"] += t1 - t0
        spent["metrics"] += t2 - t1
        spent["output plan (encoding, Parquet, manifests)"] += t3 - t2
        readings += len(result.decoded)
        frames += len(records)
    seconds = time.perf_counter() - began
    return {"batches": len(batches), "frames": frames, "readings": readings, "objects": objects,
            "messages": messages, "seconds": seconds, "readings_per_s": readings / seconds if seconds else None,
            "stage_seconds": dict(spent)}


def crossing(points: list[tuple[float, int]], level: float) -> float | None:
    """Time at which a non-decreasing progress series reached `level` (linear between polls)."""
    for (t0, v0), (t1, v1) in zip(points, points[1:], strict=False):
        if v0 < level <= v1:
            return t0 + (t1 - t0) * (level - v0) / (v1 - v0)
    return None


async def phase_worker(run: Run, topics: dict[str, str], ledger: Ledger) -> dict[str, Any]:
    """One worker drains the backlog; throughput from first processed frame to all committed."""
    args, settings = run.args, run.base
    child = run.worker("drain", topics)
    launched = time.monotonic()
    child.start()
    rss_ready = proc_status(child.pid, "VmRSS")
    group = child.env["APP_ID"]
    first: float | None = None
    drained: float | None = None
    cpu_first: float | None = None
    wait_first: float | None = None
    points: list[tuple[float, int]] = []
    async with LagReader(group, list(topics.values()), settings) as reader:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            child.check()
            now = time.monotonic()
            if first is None and metric_sum(child.scrape(), "pipeline_frames_in_total") > 0:
                first = now
                cpu_first = cpu_seconds(child.pid)
                wait_first = runqueue_wait_seconds(child.pid)
            lag = await reader.read()
            now = time.monotonic()
            points.append((now, ledger.committed_readings(lag)))
            if lag.total == 0 and lag.committed_total >= ledger.total_records:
                drained = now
                break
            await asyncio.sleep(0.1 if first is None else 0.2)
    if drained is None or first is None:
        raise RuntimeError(f"worker did not drain the backlog within {args.timeout}s\n{child.tail()}")
    cpu_drained = cpu_seconds(child.pid)
    wait_drained = runqueue_wait_seconds(child.pid)
    samples = child.scrape()
    peak = proc_status(child.pid, "VmHWM")
    child.stop()
    seconds = drained - first
    cpu = cpu_drained - cpu_first if cpu_drained is not None and cpu_first is not None else None
    runqueue = wait_drained - wait_first if wait_drained is not None and wait_first is not None else None
    total = ledger.total_readings
    t10, t90 = crossing(points, 0.1 * total), crossing(points, 0.9 * total)
    steady = 0.8 * total / (t90 - t10) if t10 is not None and t90 is not None and t90 > t10 else None
    batches = metric_sum(samples, "pipeline_batch_seconds_count", stage="total")
    stages = {s: metric_sum(samples, "pipeline_batch_seconds_sum", stage=s) for s in STAGES}
    sinks = {s: metric_sum(samples, "pipeline_sink_seconds_sum", sink=s) for s in ("s3", "kafka")}
    outcomes = {dict(lab)["outcome"]: v for (n, lab), v in samples.items() if n == "pipeline_readings_total"}
    timers = {dict(lab)["part"]: v for (n, lab), v in samples.items() if n == "bench_worker_seconds_total"}
    waits = {dict(lab)["waiting_for"]: v for (n, lab), v in samples.items()
             if n == "pipeline_ingest_wait_seconds_total"}
    return {
        "frames": ledger.total_records, "readings": total, "seconds": seconds,
        "startup_seconds": first - launched,
        "readings_per_s": total / seconds, "frames_per_s": ledger.total_records / seconds,
        "steady_readings_per_s": steady,
        "peak_rss_bytes": peak, "rss_ready_bytes": rss_ready,
        "cpu_seconds": cpu, "cpu_share_of_one_core": cpu / seconds if cpu is not None else None,
        "runqueue_wait_seconds": runqueue,
        "batches": int(batches),
        "stage_seconds": stages, "sink_seconds": sinks,
        "other_seconds": seconds - stages["total"] - sinks["s3"] - sinks["kafka"],
        "adapter_seconds": timers,
        "assembler_wait_seconds": waits,
        "worker_counted": {
            "frames_in": metric_sum(samples, "pipeline_frames_in_total"),
            "readings_in": metric_sum(samples, "pipeline_readings_in_total"),
            "dead_letters": metric_sum(samples, "pipeline_dead_letters_total"),
            "objects_written": metric_sum(samples, "pipeline_objects_written_total"),
            "events_derived": metric_sum(samples, "pipeline_events_derived_total"),
            "readings_by_outcome": outcomes,
        },
    }


async def phase_baseline(run: Run, topics: dict[str, str], ledger: Ledger, agent: str = "per-event") -> dict[str, Any]:
    """A reference Faust agent (`baseline_agent.py`) on the same backlog: all of it, or
    `--baseline-seconds` of progress (then the rate depends on the sensor/GPS mix it happened
    to read first). Rate = committed progress between its first and last commit."""
    args, settings = run.args, run.base
    child = run.baseline(topics, agent)
    child.start()
    group = child.env["APP_ID"]
    points: list[tuple[float, int, int]] = []  # (time, committed readings, committed records) at changes
    async with LagReader(group, list(topics.values()), settings) as reader:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            child.check()
            lag = await reader.read()
            now = time.monotonic()
            done = ledger.committed_readings(lag)
            if done and (not points or done != points[-1][1]):
                points.append((now, done, lag.committed_total))
            if lag.total == 0 and lag.committed_total >= ledger.total_records:
                break
            if args.baseline_seconds and points and now - points[0][0] >= args.baseline_seconds:
                break
            await asyncio.sleep(0.2)
    peak = proc_status(child.pid, "VmHWM")
    child.stop()
    if len(points) < 2:
        raise RuntimeError(f"{agent} agent made no measurable progress\n{child.tail()}")
    (t0, r0, f0), (t1, r1, f1) = points[0], points[-1]
    return {"frames": f1 - f0, "readings": r1 - r0, "seconds": t1 - t0,
            "readings_per_s": (r1 - r0) / (t1 - t0), "frames_per_s": (f1 - f0) / (t1 - t0),
            "share_of_backlog": r1 / ledger.total_readings, "peak_rss_bytes": peak}


LOG_LINE = r"^\[?(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}})\]?.*?(\S+)\[(\d+)\] offsets (\d+)\.\.(\d+) {what}"
FLUSH_LINE = re.compile(LOG_LINE.format(what="flushed"))
ROUTED_LINE = re.compile(LOG_LINE.format(what="routed"))


def flush_times(log_path: Path, pattern: re.Pattern[str] = FLUSH_LINE) -> list[tuple[float, str, int, int, int]]:
    """(time, topic, partition, first, last) of every segment the worker logged as flushed
    (everything durable) or, with ROUTED_LINE, whose routed events Kafka acknowledged."""
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        m = pattern.match(line)
        if m:
            ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((ts, m.group(2), int(m.group(3)), int(m.group(4)), int(m.group(5))))
    return out


def per_frame_latency(ledger: Ledger, done: dict[tuple[str, int], list[tuple[float, int]]],
                      since: float) -> np.ndarray:
    """Latency of each frame sent after `since`: the first time its offset was below a
    partition's progress mark (exclusive end offsets, increasing in time) minus its send time."""
    lat: list[np.ndarray] = []
    for tp, offsets in ledger.offsets.items():
        marks = sorted(done.get(tp, []))
        if not marks:
            continue
        times = np.array([t for t, _ in marks])
        ends = np.maximum.accumulate(np.array([e for _, e in marks]))
        idx = np.searchsorted(ends, offsets, side="right")  # first mark whose end > offset
        ok = (idx < len(ends)) & (ledger.sent[tp] >= since)
        lat.append(times[idx[ok]] - ledger.sent[tp][ok])
    return np.concatenate(lat) if lat else np.empty(0)


def quantiles(values: np.ndarray) -> dict[str, float | None]:
    if not len(values):
        return {"p50": None, "p99": None, "max": None, "n": 0}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "max": float(values.max()), "n": int(len(values))}


async def paced_run(run: Run, phase: str, rate: float, seconds: float, rpvs: float,
                    *, prebuilt: bool) -> tuple[Child, Ledger, Produced, dict[str, Any], dict[tuple[str, int], list[tuple[float, int]]], list[tuple[float, int | None, int]]]:
    """Start a fresh worker on fresh topics and send it simulated traffic at `rate` readings/s.

    Returns the worker (still running), what was sent, the pacing info, commit marks per
    partition and RSS samples (every 10 s while sending)."""
    args, settings = run.args, run.base
    topics = run.topics(phase)
    await run.create_topics(topics)
    vehicles = max(1, math.ceil(rate / rpvs))
    config = sim_config(args, topics, vehicles=vehicles, duration_s=seconds, seed=args.seed + 1)
    start_ms = int(time.time() * 1000)
    info: dict[str, Any] = {"target_readings_per_s": rate, "vehicles": vehicles}
    if prebuilt:
        say(f"  simulating {vehicles} vehicles for {seconds:.0f} s ...")
        windows = list(present_windows(config, topics, start_ms))
        items: list[Item] = [i for w in windows for i in w]
        del windows
        sim_readings = sum(n for _, n in items)
        span_s = max((items[-1][0].timestamp_ms - items[0][0].timestamp_ms) / 1000, 1e-3) if items else 1.0
        speed = min(max(rate / (sim_readings / span_s), 0.5), 2.0) if sim_readings else 1.0
        source: Iterable[Item] | AsyncIterator[Item] = items
    else:
        speed = 1.0
        source = threaded_items(present_windows(config, topics, start_ms))
    # even: a steady readings rate (the simulator bunches a fleet's uploads into the first
    # half of every frame period); arrival: the simulated arrival times, at `speed`.
    pacer = Pacer(readings_per_s=rate) if args.pacing == "even" else Pacer(speed=speed)
    info["pacing"] = args.pacing
    info["speed"] = speed if args.pacing == "arrival" else None
    child = run.worker(phase, topics)
    child.start()
    await wait_group_stable(settings, child.env["APP_ID"], child)
    ledger = Ledger()
    marks: dict[tuple[str, int], list[tuple[float, int]]] = collections.defaultdict(list)
    rss: list[tuple[float, int | None, int]] = []
    lag_series: list[tuple[float, int]] = []
    sending = asyncio.Event()
    sending.set()

    async def watch() -> None:
        async with LagReader(child.env["APP_ID"], list(topics.values()), settings) as reader:
            next_rss = time.monotonic()
            began = time.monotonic()
            while True:
                lag = await reader.read()
                now = time.time()
                if not lag_series or time.monotonic() - began >= lag_series[-1][0] + 1.0:
                    lag_series.append((round(time.monotonic() - began, 1), lag.total))
                for p in lag.by_partition:
                    if p.committed is not None:
                        marks[(p.topic, p.partition)].append((now, p.committed))
                if time.monotonic() >= next_rss:
                    rss.append((time.monotonic() - began, proc_status(child.pid, "VmRSS"), lag.total))
                    next_rss += 10.0
                    if args.soak:
                        say(f"  t={rss[-1][0]:6.0f}s rss={(rss[-1][1] or 0) / 2**20:7.1f} MiB lag={lag.total}")
                child.check()
                if not sending.is_set() and lag.total == 0:
                    return
                await asyncio.sleep(0.25)  # the load generator shares the host: poll gently

    watcher = asyncio.create_task(watch())
    say(f"  sending about {rate:,.0f} readings/s for {seconds:.0f} s ({args.pacing} pacing) ...")
    sent_from = time.time()
    cpu0 = (cpu_seconds(child.pid), time.process_time(), machine_cpu_seconds(), time.monotonic())
    produced = await produce(source, settings, ledger, pacer=pacer)
    cpu1 = (cpu_seconds(child.pid), time.process_time(), machine_cpu_seconds(), time.monotonic())
    info["sent_from"] = sent_from
    info["worker_cpu_at_send"] = cpu0[0]
    # Who used the machine while the load was sent (cores busy on average): the worker, this
    # load generator, and the rest (broker, store, anything else running on the host).
    wall = max(cpu1[3] - cpu0[3], 1e-9)
    worker_cores = (cpu1[0] - cpu0[0]) / wall if cpu0[0] is not None and cpu1[0] is not None else None
    busy = (cpu1[2][0] - cpu0[2][0]) / wall
    info["cpu_cores_while_sending"] = {
        "machine_busy": round(busy, 2), "machine_cores": os.cpu_count(),
        "worker": None if worker_cores is None else round(worker_cores, 2),
        "load_generator": round((cpu1[1] - cpu0[1]) / wall, 2),
        "rest": None if worker_cores is None else round(busy - worker_cores - (cpu1[1] - cpu0[1]) / wall, 2)}
    ledger.freeze()
    sending.clear()
    try:
        await asyncio.wait_for(watcher, timeout=args.timeout)
    except TimeoutError:
        say(f"  {child.name} did not catch up within {args.timeout}s after sending stopped")
    info["lag_series"] = lag_series
    info["max_lag_records"] = max((n for _, n in lag_series), default=None)
    info["achieved_readings_per_s"] = produced.readings / max(produced.seconds, 1e-9)
    info["achieved_frames_per_s"] = produced.records / max(produced.seconds, 1e-9)
    return child, ledger, produced, info, marks, rss


async def phase_latency(run: Run, rate: float, rpvs: float) -> dict[str, Any]:
    args = run.args
    child, ledger, produced, info, marks, _ = await paced_run(run, "lat", rate, args.latency_seconds, rpvs,
                                                              prebuilt=True)
    samples = child.scrape()
    peak = proc_status(child.pid, "VmHWM")
    cpu_end, cpu_start = cpu_seconds(child.pid), info.pop("worker_cpu_at_send")
    child.stop()
    since = info["sent_from"] + args.warmup
    flushed: dict[tuple[str, int], list[tuple[float, int]]] = collections.defaultdict(list)
    for ts, topic, partition, _first, last in flush_times(child.log_path):
        flushed[(topic, partition)].append((ts, last + 1))
    routed_marks: dict[tuple[str, int], list[tuple[float, int]]] = collections.defaultdict(list)
    for ts, topic, partition, _first, last in flush_times(child.log_path, ROUTED_LINE):
        routed_marks[(topic, partition)].append((ts, last + 1))
    durable = quantiles(per_frame_latency(ledger, flushed, since))
    routed = quantiles(per_frame_latency(ledger, routed_marks, since))
    committed = quantiles(per_frame_latency(ledger, marks, since))
    return {**{k: v for k, v in info.items() if k != "sent_from"},
            "frames": produced.records, "readings": produced.readings, "seconds": produced.seconds,
            "rejected": produced.rejected,
            "durable": durable, "routed": routed, "committed": committed,
            "worker_histogram": {"p50": histogram_quantile(samples, "pipeline_end_to_end_seconds", 0.5),
                                 "p99": histogram_quantile(samples, "pipeline_end_to_end_seconds", 0.99)},
            "batch_core_p99_s": histogram_quantile(
                {k: v for k, v in samples.items() if ("stage", "total") in k[1]}, "pipeline_batch_seconds", 0.99),
            "segment_put_p99_s": histogram_quantile(
                {k: v for k, v in samples.items() if ("sink", "s3") in k[1]}, "pipeline_sink_seconds", 0.99),
            # what the batch assembler waited for (free slots, the core, aligned records) and
            # how often the alignment released a partition because its other topic went quiet
            "assembler_wait_s": {what: round(metric_sum(samples, "pipeline_ingest_wait_seconds_total",
                                                        waiting_for=what), 2)
                                 for what in ("slots", "core", "records")},
            "align_idle_releases": metric_sum(samples, "pipeline_align_idle_releases_total"),
            # the core thread's time (benchmark timers, absent with --no-timers): busy in wall
            # time, on a CPU, and waiting for one; the rest of busy is the wait for the GIL
            "core_thread_s": {dict(lab)["part"].replace("core_thread_", "").replace("core_thread", "busy"): round(v, 2)
                              for (n, lab), v in samples.items()
                              if n == "bench_worker_seconds_total" and dict(lab)["part"].startswith("core_thread")},
            # the worker's CPU (its decoder and encoder processes included) from the first
            # record sent to the last one committed, per reading: contention on the host
            # stretches wall times, much less this
            "worker_cpu_us_per_reading": (None if cpu_end is None or cpu_start is None or not produced.readings
                                          else round((cpu_end - cpu_start) / produced.readings * 1e6, 3)),
            "peak_rss_bytes": peak}


async def phase_soak(run: Run, rate: float, rpvs: float) -> dict[str, Any]:
    args = run.args
    child, ledger, produced, info, _, rss = await paced_run(run, "soak", rate, args.soak * 60, rpvs,
                                                            prebuilt=False)
    peak = proc_status(child.pid, "VmHWM")
    child.stop()
    series = [{"t_s": round(t, 1), "rss_bytes": r, "lag": lag} for t, r, lag in rss]
    # After the first minute (caches and per-vehicle state fill up): trend and spread.
    settled = [(t, r) for t, r, _ in rss if r and t >= 60]
    slope = None
    if len(settled) >= 3:
        ts, rs = np.array([t for t, _ in settled]), np.array([r for _, r in settled], dtype=np.float64)
        slope = float(np.polyfit(ts / 60, rs, 1)[0])
    return {**{k: v for k, v in info.items() if k not in ("sent_from", "lag_series", "worker_cpu_at_send")},
            "minutes": args.soak, "frames": produced.records, "readings": produced.readings,
            "seconds": produced.seconds, "rss_series": series, "peak_rss_bytes": peak,
            "rss_after_1_min": {"min": min((r for _, r in settled), default=None),
                                "max": max((r for _, r in settled), default=None),
                                "slope_bytes_per_min": slope}}


# --- timers inside the worker process ---------------------------------------------------------


def traced_worker_main() -> None:
    """`worker.py _traced-worker`: `pipeline worker` unchanged, plus timers of the runtime's
    stages that the core's histograms do not have, served on its metrics port as
    `bench_worker_seconds{part}`: the core thread's busy time (`core_thread`: core + metrics),
    the time batches spent waiting for their output plans (`plan`: routed-event encoding,
    Parquet, manifests, in the encoder process or thread) and the summed
    time batches spent writing their plans (`write`: PUTs and produces, overlapping)."""
    from prometheus_client import Counter

    from pipeline.cli.main import main as cli_main
    from pipeline.runtime.ingest import BatchIngest

    spent = Counter("bench_worker_seconds", "Worker runtime time by part (benchmark timers)", ["part"])

    def timed_async(name: str, fn: Any) -> Any:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                spent.labels(name).inc(time.perf_counter() - start)
        return wrapper

    def core_timed(fn: Any) -> Any:
        # wall time, the thread's own CPU time, and its wait for a CPU (run queue, from the
        # thread's schedstat): wall - cpu - run queue is what it waited for the GIL
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            stat = Path(f"/proc/self/task/{threading.get_native_id()}/schedstat")
            start, cpu0, rq0 = time.perf_counter(), time.thread_time(), int(stat.read_text().split()[1])
            try:
                return fn(*args, **kwargs)
            finally:
                spent.labels("core_thread").inc(time.perf_counter() - start)
                spent.labels("core_thread_cpu").inc(time.thread_time() - cpu0)
                spent.labels("core_thread_runqueue").inc((int(stat.read_text().split()[1]) - rq0) / 1e9)
        return wrapper

    BatchIngest._core_job = core_timed(BatchIngest._core_job)  # type: ignore[method-assign]
    trace_path = os.environ.get("BENCH_BATCH_TRACE")
    if trace_path:  # one JSON line per batch: when each stage of it began and ended (wall clock)
        import contextvars
        current: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("bench_batch")
        trace = open(trace_path, "a", buffering=1)  # noqa: SIM115 - open for the process's life
        run0, core0, plan0, write0 = (BatchIngest._run, BatchIngest._core_job, BatchIngest._plan_stage,
                                      BatchIngest._write)

        async def run(self: Any, batch: Any) -> None:
            row = {"n": batch.number, "records": len(batch.records), "silent": batch.silent,
                   "formed": time.time(), "oldest_ts": min((r.timestamp_ms for r in batch.records), default=0) / 1000}
            current.set(row)
            if batch.decoded is not None:
                def decoded(fut: Any) -> None:
                    row["decoded"] = time.time()
                    if not fut.cancelled() and fut.exception() is None:
                        row["decode_s"] = fut.result()[2]  # inside the decoder process

                batch.decoded.add_done_callback(decoded)
            try:
                await run0(self, batch)
            finally:
                row["done"] = time.time()
                row["core"] = getattr(batch, "_bench_core", None)
                trace.write(json.dumps(row) + "\n")

        def core(self: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.time()
            try:
                return core0(self, batch, *args, **kwargs)
            finally:
                batch._bench_core = (t0, time.time())

        def staged(name: str, fn: Any) -> Any:
            async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                row = current.get(None)
                t0 = time.time()
                try:
                    return await fn(self, *args, **kwargs)
                finally:
                    if row is not None:
                        row[name] = (t0, time.time())
                        if name == "write":  # the plan, objects included once written
                            row["messages"], row["objects"] = len(args[0].messages), len(args[0].objects)
            return wrapper

        import gc

        gc_started: list[float] = []

        def gc_pause(phase: str, info: dict[str, Any]) -> None:  # collections of 5 ms or more
            if phase == "start":
                gc_started[:] = [time.perf_counter()]
            elif gc_started and (took := time.perf_counter() - gc_started[0]) >= 0.005:
                trace.write(json.dumps({"gc": info["generation"], "s": round(took, 4), "at": time.time(),
                                        "collected": info["collected"]}) + "\n")

        gc.callbacks.append(gc_pause)
        deliver0 = BatchIngest._deliver

        async def deliver(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return await deliver0(self, *args, **kwargs)
            finally:  # the last of the batch's routed deliveries acknowledged
                row = current.get(None)
                if row is not None:
                    row["routed"] = time.time()

        BatchIngest._run = run  # type: ignore[method-assign]
        BatchIngest._core_job = core  # type: ignore[method-assign]
        BatchIngest._deliver = deliver  # type: ignore[method-assign]
        BatchIngest._plan_stage = staged("plan", plan0)  # type: ignore[method-assign]
        BatchIngest._write = staged("write", write0)  # type: ignore[method-assign]
    BatchIngest._plan_stage = timed_async("plan", BatchIngest._plan_stage)  # type: ignore[method-assign]
    BatchIngest._write = timed_async("write", BatchIngest._write)  # type: ignore[method-assign]
    sys.argv = ["pipeline", "worker"]
    cli_main()


# --- orchestration and output -------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    run = Run(args)
    result: dict[str, Any] = {"run_id": run.uid, "config": {
        "vehicles": args.vehicles, "duration_s": args.duration, "seed": args.seed,
        "frame_seconds": args.frame_seconds, "partitions": args.partitions,
        "batch_size": args.batch_size or run.base.batch_size,
        "batch_wait_s": args.batch_wait or run.base.batch_wait_s}}
    phases = set(args.phases.split(","))
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    for sig in (signal.SIGINT, signal.SIGTERM):
        if task is not None:
            loop.add_signal_handler(sig, task.cancel)
    try:
        backlog_topics = run.topics("backlog")
        ledger = Ledger()
        rpvs: float | None = None
        if phases & {"ceiling", "worker", "baseline", "faust-take"}:
            await run.create_topics(backlog_topics)
            config = sim_config(args, backlog_topics, vehicles=args.vehicles, duration_s=args.duration,
                                seed=args.seed)
            say(f"[{run.uid}] producing the backlog: {args.vehicles} vehicles x {args.duration:.0f} s simulated ...")
            produced = await produce(backlog_items(config, backlog_topics), run.base, ledger)
            ledger.freeze()
            rpvs = produced.readings / (args.vehicles * args.duration)
            result["backlog"] = {**asdict(produced), "readings_per_frame": produced.readings / max(produced.records, 1)}
            say(f"  {produced.records:,} records, {produced.readings:,} readings "
                f"({produced.readings / max(produced.records, 1):.0f} per frame, {produced.bytes / 2**20:.0f} MiB) "
                f"in {produced.seconds:.1f} s; {produced.rejected} refused by the broker")
        fetched: list[list[RawRecord]] | None = [] if "profile" in phases else None
        if "ceiling" in phases:
            say("ceiling: aiokafka consumer + decode_records ...")
            result["ceiling"] = await phase_ceiling(run, backlog_topics, ledger, fetched)
            say(f"  {result['ceiling']['readings_per_s']:,.0f} readings/s")
        if fetched:
            say("profile: the worker's batch path in process, no I/O ...")
            result["profile"] = phase_profile(run, fetched)
            fetched.clear()
            say(f"  {result['profile']['readings_per_s']:,.0f} readings/s")
        if "worker" in phases:
            say("worker: one `pipeline worker` drains the backlog ...")
            result["worker"] = await phase_worker(run, backlog_topics, ledger)
            say(f"  {result['worker']['readings_per_s']:,.0f} readings/s")
        if "faust-take" in phases:
            say("faust-take: Faust noack_take batches, ack only, on the same backlog ...")
            result["faust_take"] = await phase_baseline(run, backlog_topics, ledger, "take")
            say(f"  {result['faust_take']['readings_per_s']:,.0f} readings/s")
        if "baseline" in phases:
            say("baseline: per-event Faust agent on the same backlog ...")
            result["baseline"] = await phase_baseline(run, backlog_topics, ledger)
            say(f"  {result['baseline']['readings_per_s']:,.0f} readings/s")
        if "latency" in phases or args.soak:
            if rpvs is None:
                probe = sim_config(args, backlog_topics, vehicles=2000, duration_s=60, seed=args.seed)
                rpvs = sum(n for _, n in backlog_items(probe, backlog_topics)) / (2000 * 60)
            rate = args.latency_rate or (args.latency_fraction * result["worker"]["readings_per_s"]
                                         if "worker" in result else None)
            if not rate:
                raise SystemExit("--latency-rate is needed when the worker phase is not run")
            if "latency" in phases:
                say("latency: paced run on a fresh worker ...")
                result["latency"] = await phase_latency(run, rate, rpvs)
                lat = result["latency"]["durable"]
                say(f"  durable p50 {lat['p50']} s, p99 {lat['p99']} s")
            if args.soak:
                say(f"soak: {args.soak} min paced run, RSS every 10 s ...")
                result["soak"] = await phase_soak(run, rate, rpvs)
    finally:
        await run.cleanup()
    result["summary"] = summarise(result)
    return result


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The figures the runtime is judged by, each beside its target and a `meets_*` flag."""
    w, c, b, pr, lat = (result.get(k) for k in ("worker", "ceiling", "baseline", "profile", "latency"))
    out: dict[str, Any] = {}
    if w:
        out["readings_per_s"] = w["readings_per_s"]
        out["cpu_share"] = w.get("cpu_share_of_one_core")
        out["cpu_share_target"] = TARGET_CPU_SHARE
        out["meets_cpu_share"] = out["cpu_share"] is not None and out["cpu_share"] >= TARGET_CPU_SHARE
    if w and c:
        out["vs_ceiling"] = w["readings_per_s"] / c["readings_per_s"]
    if w and pr and pr.get("readings_per_s"):
        out["vs_profile"] = w["readings_per_s"] / pr["readings_per_s"]
        out["vs_profile_target"] = TARGET_VS_PROFILE
        out["meets_vs_profile"] = out["vs_profile"] >= TARGET_VS_PROFILE
    if w and b:
        out["vs_baseline"] = w["readings_per_s"] / b["readings_per_s"]
        out["vs_baseline_target"] = TARGET_VS_BASELINE
        out["meets_vs_baseline"] = out["vs_baseline"] >= TARGET_VS_BASELINE
    if lat and lat["routed"]["p99"] is not None:
        out["p99_routed_s"] = lat["routed"]["p99"]
        out["p99_routed_s_target"] = TARGET_P99_ROUTED_S
        out["meets_p99_routed_s"] = out["p99_routed_s"] <= TARGET_P99_ROUTED_S
    if lat and lat["durable"]["p99"] is not None:
        out["p99_durable_s"] = lat["durable"]["p99"]
        out["p99_durable_s_target"] = TARGET_P99_DURABLE_S
        out["meets_p99_durable_s"] = out["p99_durable_s"] <= TARGET_P99_DURABLE_S
    return out


def fmt(value: float | None, spec: str = ",.0f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def mib(value: int | None) -> str:
    return "-" if not value else f"{value / 2**20:,.0f} MiB"


def print_report(result: dict[str, Any]) -> None:
    cfg, w, c, b, lat = (result.get(k) for k in ("config", "worker", "ceiling", "baseline", "latency"))
    assert cfg is not None
    print(f"run {result['run_id']}: {cfg['vehicles']} vehicles x {cfg['duration_s']:.0f} s simulated, "
          f"{cfg['frame_seconds']:.0f} s frames, {cfg['partitions']} partitions, "
          f"batch {cfg['batch_size']} / {cfg['batch_wait_s']} s")
    if "backlog" in result:
        bl = result["backlog"]
        print(f"backlog: {bl['records']:,} records, {bl['readings']:,} readings "
              f"({bl['readings_per_frame']:.0f} readings/frame, {bl['bytes'] / 2**20:,.0f} MiB)")
    print()
    header = f"{'':34} {'readings/s':>12} {'frames/s':>9} {'vs ceiling':>10} {'vs baseline':>11} {'peak RSS':>9}"
    print(header)
    print("-" * len(header))
    for name, row in (("ceiling: aiokafka + decode", c), ("Faust take() + ack, no work", result.get("faust_take")),
                      ("baseline: Faust, per event", b), ("worker: pipeline worker (drain)", w)):
        if not row:
            continue
        vc = row["readings_per_s"] / c["readings_per_s"] if c else None
        vb = row["readings_per_s"] / b["readings_per_s"] if b else None
        print(f"{name:34} {fmt(row['readings_per_s']):>12} {fmt(row['frames_per_s']):>9} "
              f"{fmt(vc, '.2f'):>10} {fmt(vb, '.1f', 'x'):>11} {mib(row.get('peak_rss_bytes')):>9}")
    if "profile" in result:
        pr = result["profile"]
        vc = pr["readings_per_s"] / c["readings_per_s"] if c else None
        vb = pr["readings_per_s"] / b["readings_per_s"] if b else None
        print(f"{'profile: same path, serial, no I/O':34} {fmt(pr['readings_per_s']):>12} "
              f"{fmt(pr['frames'] / pr['seconds']):>9} {fmt(vc, '.2f'):>10} {fmt(vb, '.1f', 'x'):>11}")
    if w and w.get("steady_readings_per_s"):
        print(f"{'worker, steady (10-90% committed)':34} {fmt(w['steady_readings_per_s']):>12}")
    if lat:
        d, k, h = lat["durable"], lat["committed"], lat["worker_histogram"]
        print(f"\nlatency at {lat['achieved_readings_per_s']:,.0f} readings/s ({lat['achieved_frames_per_s']:,.0f} "
              f"frames/s, {lat['vehicles']:,} vehicles, {lat['frames']:,} frames over {lat['seconds']:.0f} s):")
        r = lat["routed"]
        print(f"  routed events acked (logged) - send:     p50 {fmt(r['p50'], '.3f', ' s')}, "
              f"p99 {fmt(r['p99'], '.3f', ' s')}, max {fmt(r['max'], '.3f', ' s')}")
        print(f"  outputs durable (flush logged) - send:   p50 {fmt(d['p50'], '.3f', ' s')}, "
              f"p99 {fmt(d['p99'], '.3f', ' s')}, max {fmt(d['max'], '.3f', ' s')}  ({d['n']:,} frames)")
        print(f"  offset committed (polled 0.1 s) - send:  p50 {fmt(k['p50'], '.3f', ' s')}, "
              f"p99 {fmt(k['p99'], '.3f', ' s')}, max {fmt(k['max'], '.3f', ' s')}")
        print(f"  worker histogram (newest record/segment): p50 {fmt(h['p50'], '.3f', ' s')}, "
              f"p99 {fmt(h['p99'], '.3f', ' s')}   peak RSS {mib(lat['peak_rss_bytes'])}")
        print(f"  worker p99 per batch: core {fmt(lat['batch_core_p99_s'], '.3f', ' s')}, "
              f"S3 PUTs of one segment {fmt(lat['segment_put_p99_s'], '.3f', ' s')}; "
              f"largest lag seen {fmt(lat['max_lag_records'])} records")
        if waits := lat.get("assembler_wait_s"):
            print(f"  batch assembler waited for: free slots {waits['slots']} s, the core {waits['core']} s, "
                  f"aligned records {waits['records']} s; idle-topic releases {lat['align_idle_releases']:.0f}")
        if cpu := lat.get("cpu_cores_while_sending"):
            print(f"  cores busy while sending: {cpu['machine_busy']} of {cpu['machine_cores']} "
                  f"(worker {cpu['worker']}, load generator {cpu['load_generator']}, "
                  f"broker, store and the rest {cpu['rest']})")
    if w:
        wall = w["seconds"]
        batches = max(w["batches"], 1)
        cpu = w.get("cpu_seconds")
        print(f"\nworker time split over the {wall:.1f} s drain ({w['batches']} batches, "
              f"{w['frames'] / batches:.0f} frames/batch; worker CPU {fmt(cpu, '.1f', ' s')} = "
              f"{fmt(w.get('cpu_share_of_one_core'), '.0%')} of one core, main thread waited "
              f"{fmt(w.get('runqueue_wait_seconds'), '.1f', ' s')} for a CPU):")
        rows = [(s, w["stage_seconds"][s]) for s in STAGES]
        rows += [("sink: s3 PUTs (overlapping)", w["sink_seconds"]["s3"]),
                 ("sink: kafka (overlapping)", w["sink_seconds"]["kafka"])]
        timers = w.get("adapter_seconds") or {}
        if {"core_thread", "plan", "write"} <= timers.keys():
            rows += [("core thread busy", timers["core_thread"]),
                     ("core thread idle", wall - timers["core_thread"]),
                     ("output plans (encoder, overlapping)", timers["plan"]),
                     ("writing plans (overlapping)", timers["write"])]
        for what, sec in sorted((w.get("assembler_wait_seconds") or {}).items()):
            rows.append((f"assembler waited for {what}", sec))
        for name, sec in rows:
            label = "core total" if name == "total" else name
            print(f"  {label:30} {sec:8.2f} s {100 * sec / wall:5.1f}% {1000 * sec / batches:8.1f} ms/batch")
        counted = w["worker_counted"]
        print(f"  worker counted {counted['frames_in']:,.0f} frames, {counted['readings_in']:,.0f} readings in, "
              f"{counted['dead_letters']:,.0f} dead letters, {counted['objects_written']:,.0f} objects, "
              f"{counted['events_derived']:,.0f} derived events")
    if "profile" in result:
        pr = result["profile"]
        print(f"\nthe worker's batch path in one process, no broker or store ({pr['batches']} batches, "
              f"{fmt(pr['readings_per_s'])} readings/s):")
        for name in ("decode", "clean", "handlers", "rules", "core", "metrics",
                     "output plan (encoding, Parquet, manifests)"):
            sec = pr["stage_seconds"].get(name, 0.0)
            label = "core total" if name == "core" else name
            print(f"  {label:30} {sec:8.2f} s {100 * sec / pr['seconds']:5.1f}%")
    if "soak" in result:
        s = result["soak"]
        print(f"\nsoak: {s['minutes']} min at {s['achieved_readings_per_s']:,.0f} readings/s, worker RSS every 10 s:")
        print("  " + " ".join(f"{(p['rss_bytes'] or 0) / 2**20:.0f}" for p in s["rss_series"]) + " MiB")
        after = s["rss_after_1_min"]
        slope = after["slope_bytes_per_min"]
        print(f"  after the first minute: {mib(after['min'])} .. {mib(after['max'])}, trend "
              f"{fmt(slope / 2**20 if slope is not None else None, '+.1f', ' MiB/min')}; largest lag "
              f"{fmt(s['max_lag_records'])} records, final {s['rss_series'][-1]['lag'] if s['rss_series'] else '-'}")
    sm = result["summary"]
    print("\ntargets:")
    checks = [("vs profile >= 1.0", "vs_profile", ".2f"), ("vs baseline >= 8", "vs_baseline", ".1f"),
              ("cpu share >= 0.9", "cpu_share", ".2f"), ("p99 routed <= 1 s", "p99_routed_s", ".3f"),
              ("p99 durable <= 2 s", "p99_durable_s", ".3f")]
    for name, key, spec in checks:
        if sm.get(key) is not None:
            print(f"  {name:28} {fmt(sm[key], spec):>12}  {'met' if sm.get('meets_' + key) else 'NOT met'}")


def main() -> None:
    if sys.argv[1:2] == ["_traced-worker"]:
        traced_worker_main()
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " ") if __doc__ else None)
    p.add_argument("--vehicles", type=int, default=2000, help="Fleet size of the backlog simulation.")
    p.add_argument("--duration", type=float, default=600.0, help="Simulated seconds of the backlog.")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--frame-seconds", type=float, default=5.0, help="Seconds of samples per frame (default 5).")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=0, help="Worker BATCH_SIZE (default: the worker's).")
    p.add_argument("--batch-wait", type=float, default=0.0, help="Worker BATCH_WAIT_S (default: the worker's).")
    p.add_argument("--baseline-seconds", type=float, default=0.0,
                   help="Stop the baseline after this much progress (default 0: it drains the whole backlog).")
    p.add_argument("--latency-seconds", type=float, default=30.0, help="Length of the paced run.")
    p.add_argument("--latency-fraction", type=float, default=0.5, help="Paced rate as a share of the drain rate.")
    p.add_argument("--latency-rate", type=float, default=0.0, help="Paced rate in readings/s (overrides the fraction).")
    p.add_argument("--warmup", type=float, default=5.0, help="Seconds of the paced run left out of latency.")
    p.add_argument("--pacing", choices=("even", "arrival"), default="even",
                   help="Paced runs: a steady readings rate, or the simulated arrival times (bursty).")
    p.add_argument("--soak", type=float, default=0.0, help="Also run a paced soak for this many minutes.")
    p.add_argument("--phases", default="ceiling,profile,faust-take,worker,baseline,latency",
                   help="Comma list of ceiling, profile (needs ceiling), faust-take, worker, baseline, latency.")
    p.add_argument("--timeout", type=float, default=600.0, help="Longest wait for a drain.")
    p.add_argument("--no-timers", dest="timers", action="store_false",
                   help="Run `pipeline worker` itself, without the benchmark's adapter timers.")
    p.add_argument("--keep", action="store_true", help="Keep topics, bucket and logs (for inspection).")
    p.add_argument("--batch-trace", default="", metavar="FILE",
                   help="Append one JSON line per worker batch to FILE: its size, the age of its oldest record "
                        "and when it was decoded, cored, planned and written (with the benchmark's timers).")
    p.add_argument("--json", action="store_true", help="Print the result as JSON.")
    args = p.parse_args()
    result = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_report(result)


if __name__ == "__main__":
    main()
