"""After a replay through a real worker: `pipeline query` against the manifests, and every event
on every route topic against the `pipeline contract` schemas."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import orjson

from pipeline.runtime.settings import REPO_ROOT, Settings
from pipeline.tools.contract import message_schemas
from pipeline.tools.lake import EXAMPLES
from tests.integration.conftest import Stack


def cli(stack: Stack, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    result = subprocess.run([sys.executable, "-m", "pipeline.cli.main", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=timeout, env={**os.environ, **stack.env, **(env or {})})
    assert result.returncode == 0, f"pipeline {' '.join(args)}: {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def isolated_rules(tmp: Path, uid: str) -> Path:
    """The shipped rules with route topics renamed `route.<uid>.*`, so this test reads only its own."""
    import shutil

    rules = tmp / "rules"
    shutil.copytree(REPO_ROOT / "rules", rules)
    for path in (rules / "routes").glob("*.yaml"):
        path.write_text(path.read_text().replace("topic: route.", f"topic: route.{uid}."))
    return rules


def wait_all_committed(settings: Settings, timeout_s: float = 120) -> int:
    from pipeline.runtime.lag import read_group_lag

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lag = asyncio.run(read_group_lag(settings.app_id, list(settings.ingest_topics), settings))
        if lag.end_total and lag.total == 0:
            return int(lag.end_total)
        time.sleep(0.5)
    raise AssertionError(f"group {settings.app_id} not drained within {timeout_s}s")


def manifests(settings: Settings) -> list[dict[str, Any]]:
    client = settings.minio_client()
    out = []
    for obj in client.list_objects(settings.s3_bucket, prefix="manifests/", recursive=True):
        resp = client.get_object(settings.s3_bucket, obj.object_name)
        try:
            out.append(orjson.loads(resp.read()))
        finally:
            resp.close()
            resp.release_conn()
    return out


def read_topics(settings: Settings, topics: list[str]) -> list[tuple[str, dict[str, str], bytes]]:
    """Every record of the topics, from the beginning to their current end."""

    async def run() -> list[tuple[str, dict[str, str], bytes]]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            parts = []
            for t in topics:
                parts += [TopicPartition(t, p) for p in sorted(await _partitions(consumer, t))]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            records: list[tuple[str, dict[str, str], bytes]] = []
            deadline = time.monotonic() + 60
            async def behind() -> bool:
                return any([await consumer.position(tp) < ends[tp] for tp in parts])

            while await behind():
                assert time.monotonic() < deadline, "route topics not read within 60 s"
                batch = await consumer.getmany(timeout_ms=1000)
                for tp_records in batch.values():
                    for r in tp_records:
                        records.append((r.topic, {k: v.decode() for k, v in r.headers}, r.value or b""))
            return records
        finally:
            await consumer.stop()

    async def _partitions(consumer: Any, topic: str) -> set[int]:
        parts = consumer.partitions_for_topic(topic)
        if not parts:  # a topic no route wrote to exists (the worker creates them) but may be unknown yet
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        return set(parts or ())

    return asyncio.run(run())


def test_query_answers_match_the_manifests_and_route_events_match_the_contract(stack: Stack) -> None:
    settings = stack.settings
    uid = settings.app_id.removeprefix("it-")
    rules = isolated_rules(stack.tmp, uid)
    stack.worker(RULES_DIR=str(rules)).start()
    # 40 vehicles, 10 simulated minutes of the evening peak, with malformed frames and bad readings
    cli(stack, "simulate", "--vehicles", "40", "--duration", "600", "--start", "2024-05-14T18:00:00+01:00",
        "--seed", "11", "--fault-rate", "bad_json=0.01,missing_field=0.01,spike=0.001,unknown_signal=0.005",
        "--to", "kafka")
    frames = wait_all_committed(settings)
    assert frames > 500

    # --- pipeline query: two answers against counts computed from the manifests ------------------
    found = manifests(settings)
    assert sum(m["frames_in"] for m in found) == frames
    dropped: dict[str, int] = {}
    dead: dict[tuple[str, str], int] = {}
    for m in found:
        for code, n in m["counts"].items():
            if code.startswith("dropped."):
                dropped[code.removeprefix("dropped.")] = dropped.get(code.removeprefix("dropped."), 0) + n
        for code, n in m["dead_letters"].items():
            stage, reason = code.split(":", 1)
            dead[(stage, reason)] = dead.get((stage, reason), 0) + n
    assert dropped and dead  # the injected faults are there to be counted
    answer = orjson.loads(cli(stack, "query", "--example", "dropped-readings-by-reason", "--format", "json"))
    assert {r["reason"]: r["readings"] for r in answer} == dropped
    answer = orjson.loads(cli(stack, "query", "--example", "dead-letters-by-reason", "--format", "json"))
    assert {(r["stage"], r["reason"]): r["frames"] for r in answer} == dead
    answers = {ex.name: orjson.loads(cli(stack, "query", "--example", ex.name, "--format", "json"))
               for ex in EXAMPLES}  # every documented question runs on this lake
    csv = cli(stack, "query", "-f", "csv", f"SELECT count(*) AS n FROM ({EXAMPLES[0].sql})")
    assert csv.splitlines() == ['"n"', str(len(answers[EXAMPLES[0].name]))]

    # --- pipeline contract: every event on every route topic validates --------------------------
    document = orjson.loads(cli(stack, "contract", "--format", "json", env={"RULES_DIR": str(rules)}))
    schemas = message_schemas(document)
    topics = sorted({c["address"] for c in document["channels"].values()
                     if c["address"].startswith(f"route.{uid}.")})
    assert len(topics) == 6
    checked: dict[str, int] = {}
    for topic, headers, value in read_topics(settings, topics):
        schema = schemas.get((topic, headers.get("ce_type", "")))
        assert schema is not None, f"{topic}: {headers.get('ce_type')} is not in the contract"
        jsonschema.Draft7Validator(schema["headers"]).validate(headers)
        jsonschema.Draft7Validator(schema["data"]).validate(orjson.loads(value))
        checked[topic] = checked.get(topic, 0) + 1
    routed = sum(n for m in found for n in m["routed"].values())
    assert sum(checked.values()) == routed, (checked, routed)
    assert len(checked) >= 3 and sum(checked.values()) >= 8, checked  # 5-6 topics, 17-18 events seen
