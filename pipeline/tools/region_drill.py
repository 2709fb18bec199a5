"""The outage drill: region A's broker stops while traffic flows, and nothing is lost.

On a private pair of regions (two KRaft brokers and MirrorMaker 2 on free ports, never the
shared broker) with one `pipeline worker` per region:

1. a simulated fleet is split by home region; each region's vehicle gateway sends its
   vehicles' frames to its home brokers as a gateway does: a bounded buffer (when it is
   full the vehicles hold their frames), retries with backoff, and a resend is the same
   bytes, so the same `(vin, seq)`;
2. after `--before` seconds region A's broker is stopped for `--outage` seconds; region B
   keeps working; then A's broker starts again on its data;
3. when the traffic has been sent, each region's workers drain, and the drill checks:
   every frame a gateway had is in its home region's ingest topics (0 lost), each
   region's `pipeline reconcile` balances, every routed event produced in A is in B
   (`a.route.*`), and how long after A's return MirrorMaker's replication lag was under 10 s.

    pipeline regions drill [--outage 60] [--vehicles 40] [--json]
    scripts/region-drill   (the same)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.runtime.settings import REPO_ROOT, Settings
from pipeline.tools.recording import Record
from pipeline.tools.region_ops import _read_all, replication_lag
from pipeline.tools.region_services import (
    RegionServices,
    free_ports,
    private_regions,
    start_regions,
    stop_broker,
)
from pipeline.tools.regions import Regions
from pipeline.tools.supervisor import SupervisorError


def frame_key(record: Any) -> tuple[bytes, str]:
    """A frame's identity on the wire: its key (VIN) and a digest of its bytes (which carry seq)."""
    value = record.value if record.value is not None else b""
    return (record.key or b"", hashlib.sha1(value, usedforsecurity=False).hexdigest())


@dataclass
class Gateway:
    """One region's vehicle gateway: bounded buffer, in-order windows, retries until acked."""

    region: str
    bootstrap: str
    buffer_frames: int = 2000
    window: int = 200
    backoff_s: float = 1.0
    queue: asyncio.Queue[Record | None] = field(init=False)
    acked: set[tuple[bytes, str]] = field(default_factory=set)
    sent: int = 0
    retries: int = 0
    resent_frames: int = 0
    buffer_peak: int = 0

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.buffer_frames)

    async def put(self, record: Record) -> None:
        await self.queue.put(record)  # blocks when the buffer is full: the vehicle holds on
        self.buffer_peak = max(self.buffer_peak, self.queue.qsize())

    async def _producer(self) -> Any:
        from aiokafka import AIOKafkaProducer

        while True:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
                                        request_timeout_ms=5000, max_request_size=2 << 20)
            try:
                await producer.start()
                return producer
            except Exception:  # noqa: BLE001 - the broker is down: wait and ask again
                await producer.stop()
                self.retries += 1
                await asyncio.sleep(self.backoff_s)

    async def run(self) -> None:
        producer = await self._producer()
        done = False
        try:
            while not done:
                batch: list[Record] = []
                item = await self.queue.get()
                while item is not None:
                    batch.append(item)
                    if len(batch) >= self.window or self.queue.empty():
                        break
                    item = await self.queue.get()
                done = item is None
                attempt = 0
                while batch:
                    try:
                        futures = [await producer.send(r.topic, r.value, key=r.key, headers=list(r.headers),
                                                       timestamp_ms=r.timestamp_ms) for r in batch]
                        await asyncio.gather(*futures)
                    except Exception:  # noqa: BLE001 - resend the whole window, in order
                        attempt += 1
                        self.retries += 1
                        self.resent_frames += len(batch)
                        with contextlib.suppress(Exception):
                            await producer.stop()
                        await asyncio.sleep(self.backoff_s)
                        producer = await self._producer()
                        continue
                    self.sent += len(batch)
                    self.acked.update(frame_key(r) for r in batch)
                    batch = []
        finally:
            with contextlib.suppress(Exception):
                await producer.stop()


class Worker:
    """`pipeline worker` for one region, as a subprocess with its own log."""

    def __init__(self, region: str, env: dict[str, str], folder: Path) -> None:
        self.region = region
        metrics, web = free_ports(2)
        self.env = {**os.environ, **env, "METRICS_PORT": str(metrics), "WEB_PORT": str(web),
                    "DATA_DIR": str(folder / f"worker-{region}"), "PYTHONUNBUFFERED": "1"}
        self.log = folder / f"worker-{region}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.main", "worker"], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                         start_new_session=True)

    def wait_ready(self, timeout_s: float = 90) -> None:
        """Until the worker's metrics endpoint answers (it has joined its group)."""
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise SupervisorError(f"worker {self.region} exited with {self.proc.returncode} (log {self.log})")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.env['METRICS_PORT']}/metrics", timeout=1).read()
                return
            except OSError:
                time.sleep(0.5)
        raise SupervisorError(f"worker {self.region} not ready after {timeout_s:.0f}s (log {self.log})")

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.restarts += 1
            self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


IDLE_TIMEOUT_S = 5.0  # the drill workers' VEHICLE_IDLE_TIMEOUT_S


@dataclass
class DrillResult:
    outage_s: float
    frames: dict[str, int] = field(default_factory=dict)  # generated per home region
    frames_lost: dict[str, int] = field(default_factory=dict)
    gateway_retries: dict[str, int] = field(default_factory=dict)
    gateway_resent: dict[str, int] = field(default_factory=dict)
    buffer_peak: dict[str, int] = field(default_factory=dict)
    reconcile_ok: dict[str, bool] = field(default_factory=dict)
    reconcile_problems: dict[str, list[str]] = field(default_factory=dict)
    routed_in_a: int = 0
    routed_a_missing_in_b: int = 0
    lag_under_10s_after_return_s: float | None = None
    lag_last_seen: str = ""  # the worst topic's replication lag at the last look
    worker_restarts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (not any(self.frames_lost.values()) and all(self.reconcile_ok.values())
                and self.routed_a_missing_in_b == 0 and self.lag_under_10s_after_return_s is not None
                and self.lag_under_10s_after_return_s <= 60)


def _frames(vehicles: int, sim_seconds: float, topics: dict[str, str]) -> list[Record]:
    from pipeline.tools.simulate import FleetSimulator, SimConfig

    config = SimConfig(vehicles=vehicles, duration_s=sim_seconds, seed=19,
                       sensor_topic=topics["sensor"], gps_topic=topics["gps"])
    out: list[Record] = []
    for items, _ in FleetSimulator(config).record_windows(topics):
        out.extend(record for record, _ in items)
    return out


async def _drained(settings: Settings, timeout_s: float) -> bool:
    from pipeline.runtime.lag import read_group_lag

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            lag = await read_group_lag(settings.app_id, list(settings.ingest_topics), settings)
            if lag.total == 0 and lag.committed_total > 0:
                return True
        await asyncio.sleep(1)
    return False


async def _ids(bootstrap: str, topics: list[str]) -> set[str]:
    out: set[str] = set()
    for topic in topics:
        for record in await _read_all(bootstrap, topic, timeout_s=20):
            for key, value in record.headers or ():
                if key == "ce_id" and value is not None:
                    out.add(value.decode())
    return out


async def _route_topics(bootstrap: str, prefix: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if t.startswith(prefix))
    finally:
        await admin.close()


async def run_drill(layout: RegionServices, folder: Path, *, outage_s: float = 60.0, before_s: float = 10.0,
                    after_s: float = 20.0, vehicles: int = 40,
                    say: Callable[[str], None] = print) -> DrillResult:
    a, b = layout.names
    uid = uuid.uuid4().hex[:6]
    regions = Regions.model_validate({"regions": {
        name: {"kafka_bootstrap": layout.bootstraps[name], "s3_bucket": f"drill-{uid}-{name}",
               "app_id": f"drill-{uid}-{name}"} for name in layout.names}})
    base = Settings()
    topics = {"sensor": base.topic_sensor, "gps": base.topic_gps}
    # a short idle timeout: after the traffic, every vehicle's open trip ends by the idle
    # signal, so each region routes trip events (the drill checks they cross to the other)
    common = {"PARTITIONS": "6", "BATCH_WAIT_S": "0.2", "BATCH_SIZE": "200", "LOG_LEVEL": "INFO",
              "VEHICLE_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S)}
    workers = {name: Worker(name, {**common, **regions.regions[name].worker_env()}, folder)
               for name in layout.names}
    result = DrillResult(outage_s=outage_s)
    records = _frames(vehicles, (before_s + outage_s + after_s) * 4, topics)
    by_home: dict[str, list[Record]] = {name: [] for name in layout.names}
    for record in records:
        by_home[regions.home_of((record.key or b"").decode())].append(record)
    result.frames = {name: len(rs) for name, rs in by_home.items()}
    say(f"drill {uid}: {len(records)} frames of {vehicles} vehicles, by home region {result.frames}")
    for worker in workers.values():
        worker.start()
    for worker in workers.values():
        await asyncio.to_thread(worker.wait_ready)
    gateways = {name: Gateway(name, layout.bootstraps[name]) for name in layout.names}
    senders = [asyncio.create_task(g.run()) for g in gateways.values()]
    total_s = before_s + outage_s + after_s
    started = time.monotonic()

    async def feed(name: str) -> None:
        items = by_home[name]
        for i, record in enumerate(items):
            due = started + total_s * i / max(len(items), 1)
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            await gateways[name].put(record)
        await gateways[name].queue.put(None)

    feeders = [asyncio.create_task(feed(name)) for name in layout.names]
    await asyncio.sleep(before_s)
    say(f"drill: stopping region {a}'s broker for {outage_s:.0f}s")
    await asyncio.to_thread(stop_broker, layout, a)
    await asyncio.sleep(outage_s)
    say(f"drill: starting region {a}'s broker again")
    await asyncio.to_thread(start_regions, layout)
    returned = time.monotonic()
    workers[a].ensure_running()
    # replication lag back under 10 s: polled each second for up to a minute after the return
    while time.monotonic() - returned < 60:
        try:
            rows = await replication_lag(a, layout.bootstraps[a], b, layout.bootstraps[b], layout.topics)
        except Exception as exc:  # noqa: BLE001 - a broker still settling: ask again
            result.lag_last_seen = f"{type(exc).__name__}: {exc}"
        else:
            worst = max(rows, key=lambda r: r.lag_s, default=None)
            result.lag_last_seen = f"{worst.topic}: {worst.lag_s:.1f}s, {worst.lag_records} records" if worst else ""
            if rows and worst is not None and worst.lag_s < 10:
                result.lag_under_10s_after_return_s = round(time.monotonic() - returned, 1)
                break
        await asyncio.sleep(1)
    await asyncio.gather(*feeders)
    await asyncio.gather(*senders)
    say(f"drill: traffic sent ({time.monotonic() - started:.0f}s); waiting for the workers to drain")
    for name, worker in workers.items():
        worker.ensure_running()
        settings = regions.regions[name].settings(base)
        if by_home[name] and not await _drained(settings, 90):
            say(f"drill: region {name}'s workers did not drain within 120 s (log {worker.log})")
    say(f"drill: {IDLE_TIMEOUT_S + 5:.0f}s for the idle signal to end the vehicles' trips")
    await asyncio.sleep(IDLE_TIMEOUT_S + 5)
    for worker in workers.values():
        worker.stop()
    from pipeline.tools.reconcile import reconcile

    for name in layout.names:
        gateway = gateways[name]
        settings = regions.regions[name].settings(base)
        on_wire: set[tuple[bytes, str]] = set()
        for topic in settings.ingest_topics:
            on_wire.update(frame_key(r) for r in await _read_all(settings.kafka_bootstrap, topic, timeout_s=30))
        expected = {frame_key(r) for r in by_home[name]}
        result.frames_lost[name] = len(expected - on_wire)
        result.gateway_retries[name] = gateway.retries
        result.gateway_resent[name] = gateway.resent_frames
        result.buffer_peak[name] = gateway.buffer_peak
        result.worker_restarts[name] = workers[name].restarts
        reports = await reconcile(settings)
        result.reconcile_ok[name] = bool(reports) and all(r.ok for r in reports)
        result.reconcile_problems[name] = [f"{r.topic}[{r.partition}]: {p}" for r in reports for p in r.problems]
    # every routed event produced in A reaches B (once MirrorMaker has caught up)
    routes_a = await _route_topics(layout.bootstraps[a], base.topic_prefix_route)
    ids_a = await _ids(layout.bootstraps[a], routes_a)
    deadline = time.monotonic() + 60
    while True:
        ids_b = await _ids(layout.bootstraps[b], [f"{a}.{t}" for t in routes_a])
        if ids_a <= ids_b or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    result.routed_in_a = len(ids_a)
    result.routed_a_missing_in_b = len(ids_a - ids_b)
    return result


def main(outage_s: float = 60.0, vehicles: int = 40, before_s: float = 10.0, after_s: float = 20.0,
         folder: Path | None = None) -> DrillResult:
    """Start a private pair, run the drill, stop the pair."""
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="region-drill-")))
        layout = stack.enter_context(private_regions(folder / "services"))
        return asyncio.run(run_drill(layout, folder, outage_s=outage_s, before_s=before_s,
                                     after_s=after_s, vehicles=vehicles))
