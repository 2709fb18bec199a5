"""What reaches the route topics obeys each route's data policy, checked from outside.

A worker runs the shipped routes (on this stack's own topics) plus one route edited to leak
(a template that pastes the trip id, which the trips handler builds from the VIN). Real
Twizy trips and a simulated evening fleet are replayed. Then an independent consumer reads
every route topic with the official `cloudevents` SDK's Kafka binding, and none of the
project's code, and checks: no raw VIN on routes whose policy forbids or pseudonymises it,
no coordinate on routes that forbid locations, every coordinate on the grid of routes with
a precision. The leaking route's events are in its dead-letter topic instead, as failure events.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.runtime.settings import REPO_ROOT
from pipeline.tools.recording import iter_records
from pipeline.tools.replay import default_twizy_dir, load_mapping, load_trips, twizy_items
from tests.integration.conftest import Stack, produce, wait_drained

VIN_RUN = re.compile(r"[A-HJ-NPR-Z0-9]{17,}")


def vin_shaped(text: str) -> bool:
    """17 characters of the VIN alphabet with letters and digits among them (a run of 17
    digits in an event id's hash is not a VIN)."""
    for m in VIN_RUN.finditer(text):
        run = m.group()
        for i in range(len(run) - 16):
            window = run[i:i + 17]
            if re.search(r"[A-Z]", window) and re.search(r"[0-9]", window):
                return True
    return False
METRES_PER_DEGREE = 111_320.0


@dataclass(frozen=True, slots=True)
class Message:
    """A record to produce (the producer wants its headers as a list)."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int


def leak_route(uid: str, dlq: str) -> dict[str, Any]:
    return {
        "name": "dept.leak",
        "description": "A route edited to leak: the note pastes the trip id, built from the VIN.",
        "match": {"type": ["fleet.trip.ended"]},
        "transform": [{"pick": ["data.trip_id", "data.distance_km"]},
                      {"hmac": ["subject", "partitionkey"]},
                      {"set": {"source": "/pipeline/routes/dept.leak"}},
                      {"template": {"data.note": "trip {data.trip_id}"}},
                      {"drop": ["data.trip_id"]}],
        "to": [{"topic": f"route.{uid}.dept.leak"}],
        "dead_letter": {"topic": dlq},
        "policy": {"vin": "pseudonym", "location": "forbidden"},
    }


def isolated_rules(stack: Stack) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The shipped rules on this stack's topics, plus the leaking route; route -> its spec."""
    uid, dlq = stack.settings.app_id, stack.settings.topic_dlq
    rules = stack.tmp / "rules"
    shutil.copytree(REPO_ROOT / "rules", rules, ignore=shutil.ignore_patterns("routes", "tests"))
    (rules / "routes").mkdir()
    specs: dict[str, dict[str, Any]] = {}
    for path in sorted((REPO_ROOT / "rules" / "routes").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for route in doc["routes"]:
            for target in route["to"]:
                if "topic" in target:
                    target["topic"] = target["topic"].replace("route.", f"route.{uid}.", 1)
            route["dead_letter"] = {"topic": dlq}
            specs[route["name"]] = route
        (rules / "routes" / path.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    leak = leak_route(uid, dlq)
    specs[leak["name"]] = leak
    (rules / "routes" / "zz-leak.yaml").write_text(yaml.safe_dump({"routes": [leak]}, sort_keys=False))
    return rules, specs


def traffic(stack: Stack) -> list[tuple[str, Any]]:
    """One Twizy replaying its 7 real trips, and 40 simulated vehicles at the evening peak."""
    s = stack.settings
    recording = stack.tmp / "evening.rec"
    subprocess.run([sys.executable, "-m", "pipeline.cli.main", "simulate", "--vehicles", "40", "--duration", "600",
                    "--start", "2024-05-14T18:00:00+01:00", "--seed", "7", "--fault-rate", "none",
                    "--out", str(recording)], cwd=REPO_ROOT, check=True, capture_output=True)
    mapping = load_mapping()
    records = [item[0] for item in twizy_items(load_trips(default_twizy_dir(), mapping), mapping, vehicles=1)]
    records += list(iter_records(recording))
    topic = {"vehicle.sensor.raw": s.topic_sensor, "vehicle.gps.raw": s.topic_gps}
    return [(topic[r.topic], Message(r.key, r.value, list(r.headers), r.timestamp_ms)) for r in records]


def consume(stack: Stack, topics: list[str], settle_s: float = 3.0) -> dict[str, list[Any]]:
    """Every message of the topics, as (headers, key, value), until nothing new for `settle_s`."""

    async def run() -> dict[str, list[Any]]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(*topics, **stack.settings.kafka_client_kwargs(),
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        out: dict[str, list[Any]] = {t: [] for t in topics}
        try:
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < settle_s:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, msgs in batch.items():
                    out[tp.topic].extend((dict(m.headers), m.key, m.value) for m in msgs)
                    quiet_since = time.monotonic()
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def coordinates(data: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(field, lat, lon) of every coordinate pair: `x.lat`/`x.lon` objects and `x_lat`/`x_lon` fields."""
    found: list[tuple[str, Any, Any]] = []
    if isinstance(data, dict):
        if "lat" in data or "lon" in data:
            found.append((path, data.get("lat"), data.get("lon")))
        for key, value in data.items():
            if key.endswith("_lat"):
                found.append((f"{path}.{key}", value, data.get(key[:-4] + "_lon")))
            if isinstance(value, dict | list):
                found.extend(coordinates(value, f"{path}.{key}"))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found.extend(coordinates(value, f"{path}[{i}]"))
    return found


def coordinate_keys(data: Any) -> list[str]:
    keys: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key in ("lat", "lon", "latitude", "longitude") or key.endswith(("_lat", "_lon")):
                keys.append(key)
            keys.extend(coordinate_keys(value))
    elif isinstance(data, list):
        for value in data:
            keys.extend(coordinate_keys(value))
    return keys


def on_grid(lat: float, lon: float, precision_m: float) -> bool:
    """On the grid a `coarsen` at this precision snaps to: latitude steps of the precision,
    longitude steps widened by 1/cos(latitude)."""
    step = precision_m / METRES_PER_DEGREE
    lat_steps = lat / step
    if abs(lat_steps - round(lat_steps)) * step > 1e-6:
        return False
    lon_step = step / max(math.cos(math.radians(round(lat_steps) * step)), 0.01)
    lon_steps = lon / lon_step
    return abs(lon_steps - round(lon_steps)) * lon_step <= 1e-6


def test_route_topics_obey_the_routes_data_policies(stack: Stack) -> None:
    from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka_event

    s = stack.settings
    rules, specs = isolated_rules(stack)
    worker = stack.worker(RULES_DIR=str(rules)).start()
    records = traffic(stack)
    vins = {r.key.decode() for _, r in records if r.key}
    assert any(v.startswith("VF1TWZ") for v in vins)
    produce(s, records)
    wait_drained(s, len(records), timeout_s=150)

    route_topics = {t["topic"]: name for name, spec in specs.items() for t in spec["to"] if "topic" in t}
    messages = consume(stack, [*route_topics, s.topic_dlq])
    seen: dict[str, int] = {}
    for topic, name in route_topics.items():
        policy = specs[name].get("policy") or {}
        events = [from_kafka_event(KafkaMessage(headers=h, key=k, value=v)) for h, k, v in messages[topic]]
        seen[name] = len(events)
        for ev in events:
            attributes = ev.get_attributes()
            data = ev.get_data()
            where = f"{name}: event {attributes.get('id')}"
            texts = [str(v) for v in attributes.values()] + strings(data)
            if policy.get("vin") in ("pseudonym", "forbidden"):
                leaked = [t for t in texts if any(v in t for v in vins) or vin_shaped(t)]
                assert leaked == [], f"{where}: raw VIN in {leaked}"
            if policy.get("location") == "forbidden":
                assert coordinate_keys(data) == [], f"{where}: coordinates {coordinate_keys(data)}"
            precision = float(policy.get("location_precision_m") or 0)
            if precision:
                for field, lat, lon in coordinates(data):
                    assert isinstance(lat, float) and isinstance(lon, float), f"{where}: {field} is not a number pair"
                    assert on_grid(lat, lon, precision), f"{where}: {field} not on the {precision:g} m grid"
    # The checks above were not vacuous: each kind of restriction had events to check.
    def carried(kind: str, value: Any) -> int:
        return sum(n for name, n in seen.items() if (specs[name].get("policy") or {}).get(kind) in value)

    assert carried("vin", ("pseudonym", "forbidden")) > 0, seen
    assert carried("location", ("forbidden",)) > 0, seen
    assert sum(n for name, n in seen.items() if (specs[name].get("policy") or {}).get("location_precision_m")) > 0, seen

    # The leaking route emitted nothing; each of its events went once, as the routed CloudEvent
    # marked with why (the field named, its value redacted), to the route's dead-letter target.
    assert seen["dept.leak"] == 0
    leaks = [h for h, _, _ in messages[s.topic_dlq] if h.get("ce_dlqroute") == b"dept.leak"]
    trips_ended = [h for h, _, _ in messages[f"route.{s.app_id}.dept.maintenance"] if h.get("ce_type") == b"fleet.trip.ended"]
    assert len(leaks) == len(trips_ended) > 0, (len(leaks), len(trips_ended))
    for h in leaks:
        error = h["ce_dlqerror"].decode()
        assert h["ce_dlqreason"] == b"policy_violation" and "'data.note'" in error and "redacted" in error
        assert not any(v in error for v in vins) and not vin_shaped(error)
    assert worker.metric("pipeline_dead_letters_total", stage="route:dept.leak", reason="policy_violation") == len(leaks)
    # ... and in the segment manifests' dead-letter counts.
    from pipeline.tools.reconcile import load_manifests

    client = s.minio_client()
    counted = sum(m["dead_letters"].get("route:dept.leak:policy_violation", 0)
                  for topic in s.ingest_topics for ms in load_manifests(client, s.s3_bucket, topic).values() for m in ms)
    assert counted == len(leaks)
    # The shipped routes pass their own policies: no violation but the edited route's.
    violations = {h["ce_dlqroute"] for h, _, _ in messages[s.topic_dlq] if h.get("ce_dlqreason") == b"policy_violation"}
    assert violations == {b"dept.leak"}
    # and no source frame was dead-lettered for them
    assert not [h for h, _, _ in messages[s.topic_dlq] if h.get("dlq_reason") == b"policy_violation"]
