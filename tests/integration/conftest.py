"""Fixtures for integration tests: the real local Kafka broker and S3 server, isolated names.

The services are started by `scripts/test` (or `scripts/services start`). A test that
cannot reach them fails; it never skips.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.runtime.settings import REPO_ROOT, Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def services() -> Settings:
    """Base settings, after checking that the broker and the store answer."""
    settings = Settings()

    async def kafka_ok() -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs(), request_timeout_ms=5000)
        await admin.start()
        await admin.close()

    try:
        asyncio.run(asyncio.wait_for(kafka_ok(), 15))
        settings.minio_client().list_buckets()
    except Exception as exc:  # fail loudly: integration tests never skip
        pytest.fail(f"Kafka {settings.kafka_bootstrap} or S3 {settings.s3_endpoint} not reachable "
                    f"({type(exc).__name__}: {exc}); start them with scripts/services start")
    return settings


@dataclass
class Stack:
    """One isolated deployment: its own group, topics, bucket and data dir on the shared services."""

    settings: Settings
    env: dict[str, str]
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def worker(self, **extra_env: str) -> WorkerProcess:
        w = WorkerProcess(self, len(self.workers), extra_env)
        self.workers.append(w)
        return w


class WorkerProcess:
    """`pipeline worker` as a real subprocess with its own metrics port and log."""

    def __init__(self, stack: Stack, index: int, extra_env: dict[str, str]) -> None:
        self.stack = stack
        self.metrics_port = free_port()
        self.log_path = stack.tmp / f"worker-{index}.log"
        self.env = {**os.environ, **stack.env, "METRICS_PORT": str(self.metrics_port),
                    "DATA_DIR": str(stack.tmp / f"data-{index}"), **extra_env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.main", "worker"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"worker metrics port silent after {timeout_s}s:\n{self.tail()}")

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                raise AssertionError(f"worker ignored signal {sig} for {timeout_s}s:\n{self.tail()}") from None
        return int(self.proc.returncode)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"


@pytest.fixture
def stack(services: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    uid = uuid.uuid4().hex[:8]
    env = {
        "APP_ID": f"it-{uid}",
        "TOPIC_SENSOR": f"it.{uid}.sensor.raw",
        "TOPIC_GPS": f"it.{uid}.gps.raw",
        "TOPIC_DLQ": f"it.{uid}.dlq",
        "S3_BUCKET": f"it-{uid}",
        "PARTITIONS": "3",
        "BATCH_WAIT_S": "0.2",
        "BATCH_SIZE": "200",
        "LOG_LEVEL": "INFO",
    }
    settings = Settings(**{k.lower(): v for k, v in env.items()})  # type: ignore[arg-type]
    st = Stack(settings, env, tmp_path)
    yield st
    keep = REPO_ROOT / ".services" / "test-logs" / request.node.name
    keep.mkdir(parents=True, exist_ok=True)
    for w in st.workers:
        if w.alive():
            w.stop(signal.SIGKILL)
        if w.log_path.exists():  # kept for post-mortems: pytest prunes its tmp dirs
            (keep / w.log_path.name).write_bytes(w.log_path.read_bytes())


def produce(settings: Settings, messages: Sequence[tuple[str, Any]]) -> None:
    """Produce (topic, EncodedRecord) pairs and wait for every ack."""

    async def run() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(**settings.kafka_client_kwargs(), acks="all", linger_ms=5,
                                    max_request_size=2 << 20)
        await producer.start()
        try:
            futures = [await producer.send(topic, rec.value, key=rec.key, headers=rec.headers,
                                           timestamp_ms=rec.timestamp_ms) for topic, rec in messages]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def wait_drained(settings: Settings, expected: int, timeout_s: float = 120) -> None:
    """Wait until the group has committed `expected` records across the ingest topics."""
    from pipeline.runtime.lag import read_group_lag

    deadline = time.monotonic() + timeout_s
    committed = 0
    while time.monotonic() < deadline:
        lag = asyncio.run(read_group_lag(settings.app_id, list(settings.ingest_topics), settings))
        committed = lag.committed_total
        if committed >= expected and lag.total == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"group {settings.app_id} committed {committed} of {expected} within {timeout_s}s")
