"""Two regions on real brokers with Kafka's MirrorMaker 2 between them.

The pair (two KRaft brokers and MirrorMaker 2 in dedicated mode) is this module's own, on
free ports in a temporary folder: the shared broker is never stopped or mirrored.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.tools import regions as reg
from pipeline.tools.region_services import RegionServices, private_regions
from pipeline.tools.replay import default_twizy_dir as reg_default_twizy_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegionServices]:
    base: Path = tmp_path_factory.mktemp("regions")
    with private_regions(base) as layout:
        yield layout


def model(layout: RegionServices) -> reg.Regions:
    boot = layout.bootstraps
    return reg.Regions.model_validate({"regions": {
        name: {"kafka_bootstrap": boot[name], "s3_bucket": f"telemetry-{name}", "app_id": f"app-{name}"}
        for name in layout.names}})


async def _produce(bootstrap: str, topic: str, ids: list[str], pace_s: float = 0.0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for event_id in ids:
            await producer.send(topic, event_id.encode(), key=b"VIN", partition=0,
                                headers=[("ce_id", event_id.encode())])
            if pace_s:
                await asyncio.sleep(pace_s)
        await producer.flush()
    finally:
        await producer.stop()


async def _read_route(regions: reg.Regions, local: str, route: str, expected: int,
                      timeout_s: float = 60) -> tuple[list[str], dict[str, str], int]:
    """Unique ids in arrival order, the topic each came from, and how many repeats were dropped."""
    consumer = await reg.consume_route(route, regions, local, group=None, auto_offset_reset="earliest",
                                       metadata_max_age_ms=1000)
    seen = reg.Deduplicator()
    ids: list[str] = []
    source: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(ids) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    event_id = reg.event_id(record.headers)
                    if seen.first(event_id):
                        assert event_id is not None
                        ids.append(event_id)
                        source[event_id] = tp.topic
    finally:
        await consumer.stop()
    return ids, source, seen.duplicates


def test_route_and_dead_letter_topics_replicate_both_ways(pair: RegionServices) -> None:
    regions = model(pair)
    a, b = pair.names
    uid = uuid.uuid4().hex[:6]
    route = f"route.it{uid}.dept.finance"
    from_a = [f"a-{uid}-{i}" for i in range(120)]
    from_b = [f"b-{uid}-{i}" for i in range(40)]
    asyncio.run(_produce(pair.bootstraps[a], route, from_a))
    asyncio.run(_produce(pair.bootstraps[b], route, from_b))
    asyncio.run(_produce(pair.bootstraps[a], "pipeline.dlq", [f"dlq-{uid}"]))

    # B's consumer sees one stream: its own events on route.x, A's on a.route.x, in order.
    ids, source, _ = asyncio.run(_read_route(regions, b, route, len(from_a) + len(from_b)))
    assert sorted(ids) == sorted(from_a + from_b)
    assert [i for i in ids if i.startswith("a-")] == from_a
    assert {source[i] for i in from_a} == {f"{a}.{route}"}
    assert {source[i] for i in from_b} == {route}
    # and the reverse direction: A sees B's events under b.route.x
    ids_a, source_a, _ = asyncio.run(_read_route(regions, a, route, len(from_a) + len(from_b)))
    assert sorted(ids_a) == sorted(from_a + from_b)
    assert {source_a[i] for i in from_b} == {f"{b}.{route}"}
    # dead letters are mirrored too
    dlq, _, _ = asyncio.run(_read_route(regions, b, "pipeline.dlq", 1))
    assert f"dlq-{uid}" in dlq


async def _group_offset(bootstrap: str, group: str, tp: TopicPartition, at_least: int,
                        timeout_s: float = 60) -> int:
    """The group's committed offset of `tp` once it is `at_least` (else the last seen, -1 for none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    seen = -1
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            meta = (await admin.list_consumer_group_offsets(group)).get(tp)
            seen = meta.offset if meta is not None else -1
            if seen >= at_least:
                break
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    return seen


async def _commit(bootstrap: str, topic: str, group: str, upto: int) -> None:
    """Read `topic` (partition 0) as `group` up to offset `upto` and commit there."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    got = 0
    try:
        while got < upto:
            batch = await consumer.getmany(timeout_ms=1000, max_records=upto - got)
            got += sum(len(r) for r in batch.values())
        await consumer.commit({TopicPartition(topic, 0): upto})
    finally:
        await consumer.stop()


async def _switch_regions(pair: RegionServices, topic: str, group: str, total: int, first_part: int
                          ) -> tuple[int, int]:
    """The group, already known to MirrorMaker, consumes `first_part` records of `topic` in A
    and commits; then, as the same group in B, it reads the replica. Returns (the offset
    MirrorMaker synced to the group in B, the index of the first event read there)."""
    a, b = pair.names
    ids = [f"e-{i}" for i in range(total)]
    replica = TopicPartition(f"{a}.{topic}", 0)
    # A long-lived group: MirrorMaker restarts its checkpoint task when it discovers a new
    # group, and a restarted task translates only by offset syncs it reads from then on.
    await _produce(pair.bootstraps[a], topic, ids[:1])
    await _commit(pair.bootstraps[a], topic, group, 1)
    assert await _group_offset(pair.bootstraps[b], group, replica, 1) == 1
    # then a steady flow, as routed events are, and the consumer's progress in A
    await _produce(pair.bootstraps[a], topic, ids[1:], pace_s=0.005)
    await _commit(pair.bootstraps[a], topic, group, first_part)
    translated = await _group_offset(pair.bootstraps[b], group, replica, first_part - 11)
    assert translated <= first_part, "translated past the committed position: records skipped"
    consumer = AIOKafkaConsumer(replica.topic, bootstrap_servers=pair.bootstraps[b], group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        batch: dict[TopicPartition, list] = {}  # type: ignore[type-arg]
        while not batch:
            batch = await consumer.getmany(timeout_ms=2000, max_records=1)
        first = int(next(iter(batch.values()))[0].value.decode().rsplit("-", 1)[1])
    finally:
        await consumer.stop()
    return translated, first


def test_consumer_moving_region_resumes_at_translated_offset(pair: RegionServices) -> None:
    uid = uuid.uuid4().hex[:6]
    topic = f"route.it{uid}.recommendation"
    group = f"it-{uid}-recommendation"
    translated, first = asyncio.run(_switch_regions(pair, topic, group, total=200, first_part=100))
    # MirrorMaker translates conservatively: never past the committed position, at most
    # offset.lag.max (10) records (+1) before it; the repeats are recognised by their ids.
    assert 100 - 11 <= translated <= 100
    assert first == translated  # resumed there, not from the beginning


def test_cross_region_latency_benchmark_delivers_every_event(pair: RegionServices) -> None:
    """The benchmark script (the source of the README's p99 figure) on this pair, small load:
    every event reaches B through MirrorMaker, and it reports both latencies."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "benchmarks" / "regions.py"
    a, b = (pair.bootstraps[n] for n in pair.names)
    proc = subprocess.run([sys.executable, str(script), "--a", a, "--b", b, "--events", "600",
                           "--rate", "200", "--json"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    for side in ("same_region", "cross_region"):
        assert out[side]["received"] == 600 and out[side]["lost"] == 0
        assert 0 <= out[side]["p50_s"] <= out[side]["p99_s"] <= out[side]["max_s"]


def test_outage_drill_loses_nothing(tmp_path: Path) -> None:
    """Region A's broker stops while both regions' gateways send and workers run: every frame
    arrives, both reconciles balance, every routed event of A reaches B, and replication
    lag is back under 10 s within a minute. (15 s outage here for CI time; the script's
    default is 60 s.)"""
    from pipeline.tools.region_drill import main as drill

    result = drill(outage_s=15, vehicles=60, before_s=5, after_s=10, folder=tmp_path)
    assert result.frames["a"] > 0 and result.frames["b"] > 0
    assert result.gateway_retries["a"] > 0  # A's gateway did see the outage and held on
    assert result.frames_lost == {"a": 0, "b": 0}
    assert result.reconcile_ok == {"a": True, "b": True}, result.reconcile_problems
    assert result.routed_in_a > 0 and result.routed_a_missing_in_b == 0
    assert result.lag_under_10s_after_return_s is not None and result.lag_under_10s_after_return_s <= 60
    assert result.ok


def test_rehomed_vehicle_trip_started_in_a_ends_in_b_with_the_whole_distance(
        pair: RegionServices, tmp_path: Path) -> None:
    """A real Twizy drive cut in the middle of a trip: the first part in region a, then the
    vehicle re-homed to b (its handler state carried through MirrorMaker's replica of a's
    changelog) and the rest sent to b. The trips equal those of the whole drive in one region."""
    import math

    from pipeline.tools.region_drill import Worker
    from pipeline.tools.region_ops import rehome_state, replication_lag
    from pipeline.tools.replay import Pacer, load_mapping, load_trips, produce, twizy_items
    from tests.integration.test_alignment import ended_trips, trip_rows

    a, b = pair.names
    uid = uuid.uuid4().hex[:6]
    mapping = load_mapping()
    trips = load_trips(reg_default_twizy_dir(), mapping)[:1]
    items = list(twizy_items(trips, mapping, vehicles=1))
    vin = (items[0][0].key or b"").decode()

    def region(name: str, app: str) -> reg.Region:
        return reg.Region(name=name, kafka_bootstrap=pair.bootstraps[name], s3_bucket=app, app_id=app)

    def run(where: reg.Region, part: list, idle_s: float) -> None:
        # each run its own ingest topics (a new group would read an earlier run's frames)
        topics = {"vehicle.sensor.raw": f"{where.app_id}.sensor.raw", "vehicle.gps.raw": f"{where.app_id}.gps.raw"}
        part = [(rec._replace(topic=topics[rec.topic]), n) for rec, n in part]
        env = {**where.worker_env(), "TOPIC_SENSOR": topics["vehicle.sensor.raw"],
               "TOPIC_GPS": topics["vehicle.gps.raw"], "TOPIC_DLQ": f"it.{uid}.dlq", "PARTITIONS": "3",
               "VEHICLE_IDLE_TIMEOUT_S": str(idle_s)}
        worker = Worker(where.app_id, env, tmp_path)
        worker.start()
        try:
            worker.wait_ready()
            settings = where.settings().model_copy(update={
                "topic_sensor": env["TOPIC_SENSOR"], "topic_gps": env["TOPIC_GPS"], "partitions": 3})
            asyncio.run(produce(part, settings, pacer=Pacer()))
            from pipeline.tools.region_drill import _drained

            assert asyncio.run(_drained(settings, 120)), worker.log.read_text()[-3000:]
            if idle_s < 60:  # let the idle signal end the last trip
                deadline = time.monotonic() + idle_s + 20
                while time.monotonic() < deadline:
                    if any(t[4] == "silent" for t in trip_rows(ended_trips(settings))):
                        break
                    time.sleep(0.5)
        finally:
            worker.stop()

    # the whole drive in one region
    single = region(a, f"it-{uid}-single")
    run(single, items, idle_s=5)
    whole = trip_rows(ended_trips(single.settings()))
    assert whole, "no trip ended"
    # a cut inside a trip
    start, end = whole[0][1], whole[0][2]
    middle = (start + end) // 2
    cut = next(i for i, (rec, _) in enumerate(items) if rec.timestamp_ms >= middle)
    first, second = region(a, f"it-{uid}-a"), region(b, f"it-{uid}-b")
    run(first, items[:cut], idle_s=600)  # the vehicle leaves a with its trip open
    in_a = trip_rows(ended_trips(first.settings()))
    assert all(t[2] < start for t in in_a), (in_a, whole, cut, len(items))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # MirrorMaker has copied a's changelog to b
        rows = asyncio.run(replication_lag(a, pair.bootstraps[a], b, pair.bootstraps[b], pair.topics))
        mine = [r for r in rows if r.topic == f"{first.app_id}-handler-state"]
        if mine and mine[0].source_end > 0 and mine[0].lag_records == 0:
            break
        time.sleep(1)
    carried = asyncio.run(rehome_state(vin, first, second, partitions=3))
    assert carried > 0
    run(second, items[cut:], idle_s=5)
    split = sorted(trip_rows(ended_trips(first.settings())) + trip_rows(ended_trips(second.settings())))
    assert len(split) == len(whole), (split, whole)
    for one, two in zip(whole, split, strict=True):
        assert one[1:3] == two[1:3], (one, two)
        assert math.isclose(one[3], two[3], rel_tol=0.01, abs_tol=0.01), (one, two)
