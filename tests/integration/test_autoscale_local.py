"""The autoscaler on the real broker with the local driver: a burst raises replicas (never
above the partition count), they fall back to the minimum after the window, and a dry run
prints decisions without starting anything.

Replicas here run a small rate-limited aiokafka consumer in the workers' consumer group, so
the scaling loop is tested on real lag without the cost of full workers; the end-to-end run
with `pipeline worker` and `pipeline reconcile` is `scripts/autoscale-demo`.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.runtime.lag import LagReader, read_group_lag
from pipeline.runtime.settings import get_settings
from pipeline.tools.autoscale import (
    Autoscaler,
    Decision,
    LocalDriver,
    LoopOptions,
    ScalePolicy,
    run_with_reader,
)
from pipeline.tools.supervisor import Supervisor

pytestmark = pytest.mark.integration

PARTITIONS = 2

# A replica: consumes both topics in the group at a bounded rate, commits after each batch,
# leaves the group cleanly on SIGTERM.
CONSUMER = r"""
import asyncio, os, signal
from aiokafka import AIOKafkaConsumer
async def main():
    c = AIOKafkaConsumer(os.environ["TOPIC_SENSOR"], os.environ["TOPIC_GPS"], group_id=os.environ["APP_ID"],
                         bootstrap_servers=os.environ["KAFKA_BOOTSTRAP"], enable_auto_commit=False,
                         auto_offset_reset="earliest", max_poll_records=50)
    await c.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        while not stop.is_set():
            batch = await c.getmany(timeout_ms=200)
            n = sum(len(v) for v in batch.values())
            if n:
                await asyncio.sleep(n / 500)
                await c.commit()
    finally:
        await c.stop()
asyncio.run(main())
"""


async def _broker_answers(deadline_s: float) -> None:
    kwargs = get_settings().kafka_client_kwargs()
    admin = AIOKafkaAdminClient(request_timeout_ms=3000, **kwargs)
    try:
        await asyncio.wait_for(admin.start(), deadline_s)
    except Exception as exc:
        pytest.fail(f"Kafka at {kwargs['bootstrap_servers']} did not answer within {deadline_s}s "
                    f"(start it with scripts/services start): {exc!r}")
    finally:
        await admin.close()


async def _create(topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(**get_settings().kafka_client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics])
    finally:
        await admin.close()


async def _produce(topics: list[str], count: int) -> None:
    producer = AIOKafkaProducer(linger_ms=10, **get_settings().kafka_client_kwargs())
    await producer.start()
    try:
        for i in range(count):
            await producer.send(topics[i % 2], b"{}", key=f"VIN{i % 50:05d}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _delete(topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(**get_settings().kafka_client_kwargs())
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()


@pytest.fixture
def topics() -> Iterator[list[str]]:
    asyncio.run(_broker_answers(20.0))
    run = uuid.uuid4().hex[:8]
    names = [f"test.autoscale.{run}.sensor", f"test.autoscale.{run}.gps"]
    asyncio.run(_create(names))
    yield names
    asyncio.run(_delete(names))


def test_burst_raises_replicas_within_partitions_then_back_to_min(topics: list[str], tmp_path: Path) -> None:
    group = f"test-autoscale-{uuid.uuid4().hex[:8]}"
    env = {"APP_ID": group, "TOPIC_SENSOR": topics[0], "TOPIC_GPS": topics[1],
           "KAFKA_BOOTSTRAP": get_settings().kafka_bootstrap}
    supervisor = Supervisor(tmp_path / "workers", command=[sys.executable, "-c", CONSUMER], env=env,
                            metrics_base=0, web_base=0, stop_timeout_s=10, ready_timeout_s=10)
    policy = ScalePolicy(min_replicas=1, max_replicas=4, lag_threshold=300, window_s=4, cooldown_s=1)
    driver = LocalDriver(supervisor)
    seen: list[int] = []
    burst_done = asyncio.Event()

    async def scenario() -> list[Decision]:
        supervisor.scale(1)
        options = LoopOptions(interval_s=0.5, duration_s=75, on_decision=lambda d: seen.append(d.desired),
                              stop=asyncio.Event())

        async def burst() -> None:
            await asyncio.sleep(1.0)
            await _produce(topics, 4000)
            burst_done.set()

        async def stop_when_settled() -> None:
            # End the loop early once it has gone up and come back down to the minimum.
            while not (burst_done.is_set() and seen and max(seen) > 1 and seen[-1] == 1
                       and (await read_group_lag(group, topics)).total == 0):
                await asyncio.sleep(0.5)
            assert options.stop is not None
            options.stop.set()

        reader = LagReader(group, topics)
        _, decisions, _ = await asyncio.gather(burst(), run_with_reader(Autoscaler(policy), driver, reader, options),
                                               stop_when_settled())
        return decisions

    try:
        decisions = asyncio.run(scenario())
    finally:
        supervisor.stop()
    ups = [d for d in decisions if d.direction == "up"]
    downs = [d for d in decisions if d.direction == "down"]
    assert ups, "replicas never rose"
    assert max(d.desired for d in decisions) == PARTITIONS  # max 4, but only 2 partitions
    assert all(d.partitions == PARTITIONS for d in decisions)
    assert downs and decisions[-1].desired == 1
    last_up = max(d.at for d in ups)
    last_high = max(d.at for d in decisions if d.recommended > 1)
    assert downs[-1].at - last_high >= policy.window_s  # not before the window
    assert downs[0].at > last_up
    assert supervisor.alive_count() == 0


def test_dry_run_prints_decisions_and_starts_nothing(topics: list[str], tmp_path: Path) -> None:
    asyncio.run(_produce(topics, 900))
    state_dir = tmp_path / "workers"
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "autoscale", "--dry-run", "--once", "--driver", "local",
         "--group", f"never-{uuid.uuid4().hex[:8]}", "--topic", topics[0], "--topic", topics[1],
         "--lag-threshold", "200", "--max", "5", "--metrics-port", "0", "--state-dir", str(state_dir)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PIPELINE_WORKER_CMD": "false"},
    )
    assert out.returncode == 0, out.stderr
    decision = next(line for line in io.StringIO(out.stdout) if "lag=" in line)
    assert "(dry run)" in decision
    assert "lag=900" in decision
    assert f"partitions={PARTITIONS}" in decision
    assert "current=0" in decision
    assert f"desired={PARTITIONS}" in decision  # ceil(900 / 200) = 5, capped by 2 partitions
    assert "direction=up" in decision
    assert Supervisor(state_dir).status() == []
