"""The output plan of a core result: messages, objects, manifests and offsets (no services)."""

from __future__ import annotations

import functools
from typing import Any

import orjson
import pytest

from pipeline.core.batch import RawRecord
from pipeline.core.events import read_event
from pipeline.core.process import Core
from pipeline.runtime.plan import commit_offsets, plan_outputs
from pipeline.runtime.settings import Settings
from pipeline.tools.simulate import FleetSimulator, SimConfig, to_record

DLQ = "test.dlq"


@functools.cache
def core() -> Core:
    return Core.from_settings(Settings())


def fleet_records(vehicles: int = 40, seconds: int = 900) -> list[RawRecord]:
    """Simulated frames of an evening fleet on two partitions (by vehicle), offsets per topic-partition."""
    sim = FleetSimulator(SimConfig(vehicles=vehicles, duration_s=float(seconds), seed=5, start="2026-03-02T17:00:00Z"))
    topics = {"sensor": "vehicle.sensor.raw", "gps": "vehicle.gps.raw"}
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for frame in sim.frames():
        rec = to_record(frame, topics)
        p = sum(rec.key) % 2
        off = offsets.get((rec.topic, p), 0)
        offsets[(rec.topic, p)] = off + 1
        out.append(RawRecord(rec.topic, p, off, rec.key, rec.value, tuple(rec.headers), rec.timestamp_ms))
    return out


@pytest.fixture(scope="module")
def result() -> Any:
    records = fleet_records()
    res = core().process(records)
    assert len(res.events) and res.routed, "the fleet should derive and route events"
    return res


def test_offsets_to_commit_are_one_past_each_partitions_highest() -> None:
    recs = [RawRecord("a", 0, 5, None, b""), RawRecord("a", 0, 7, None, b""), RawRecord("b", 0, 2, None, b""),
            RawRecord("a", 1, 0, None, b"")]
    assert commit_offsets(recs) == {("a", 0): 8, ("b", 0): 3, ("a", 1): 1}


def routed_messages(plan: Any) -> list[Any]:
    return [m for d in plan.deliveries for m in d.messages]


def test_every_routed_event_is_one_message_per_topic_target(result: Any) -> None:
    plan = plan_outputs(result, dlq_topic=DLQ)
    for d in plan.deliveries:  # each under its route's retry, with the events for failure events
        assert len(d.messages) == len(d.events) and d.retry is result.route_specs[d.route].retry
        assert [dict(m.headers)["ce_id"].decode() for m in d.messages] == d.events.attrs["id"].tolist()
    for route, batch in result.routed.items():
        topics = [t.topic for t in result.targets[route] if getattr(t, "kind", None) == "topic"]
        for topic in topics:
            msgs = [m for m in routed_messages(plan) if m.topic == topic]
            ids = [dict(m.headers)["ce_id"] for m in msgs]
            assert len(msgs) >= len(batch)
            assert set(batch.attrs["id"].tolist()) <= set(i.decode() for i in ids)
    # each message is a valid CloudEvent whose data is what the route produced
    routed_ids = {i for b in result.routed.values() for i in b.attrs["id"].tolist()}
    for m in routed_messages(plan):
        if m.topic.startswith("route."):
            attrs, _ = read_event(RawRecord(m.topic, 0, 0, m.key, m.value, tuple(m.headers)))
            assert attrs["id"] in routed_ids


def test_manifests_account_for_every_record_and_reading(result: Any) -> None:
    plan = plan_outputs(result, dlq_topic=DLQ)
    manifests = [orjson.loads(o.body) for o in plan.objects if o.key.startswith("manifests/")]
    parts = {(r.topic, r.partition) for r in result.records}
    assert {(m["topic"], m["partition"]) for m in manifests} == parts
    assert sum(m["frames_in"] for m in manifests) == len(result.records)
    assert sum(m["readings_in"] for m in manifests) == len(result.decoded)
    for m in manifests:
        assert m["readings_in"] == m["readings_kept"] + m["readings_repaired"] + m["readings_dropped"]
        assert plan.offsets[(m["topic"], m["partition"])] == m["last_offset"] + 1
        keys = {o.key for o in plan.objects}
        assert set(m["clean_objects"]) <= keys and set(m["event_objects"]) <= keys
    assert {(s.topic, s.partition) for s in plan.segments} == parts


def test_the_same_result_plans_the_same_bytes(result: Any) -> None:
    a = plan_outputs(result, dlq_topic=DLQ)
    b = plan_outputs(result, dlq_topic=DLQ)
    assert [(o.key, o.body) for o in a.objects] == [(o.key, o.body) for o in b.objects]
    assert [(m.topic, m.key, m.value) for m in a.messages + routed_messages(a)] == \
        [(m.topic, m.key, m.value) for m in b.messages + routed_messages(b)]


def test_dead_letters_and_state_changes_are_part_of_the_plan(result: Any) -> None:
    bad = RawRecord("vehicle.sensor.raw", 0, 10_000, b"VIN", b"{not json", (("ce_specversion", b"1.0"),))
    res = core().process([bad])
    from pipeline.runtime.sinks import OutMessage

    state = [OutMessage("app-handler-state", b"trips/VIN", b"{}", [], partition=0)]
    plan = plan_outputs(res, dlq_topic=DLQ, state_messages=state)
    dlq = [m for m in plan.messages if m.topic == DLQ]
    assert len(dlq) == 1 and dict(dlq[0].headers)["dlq_offset"] == b"10000"
    assert state[0] in plan.messages
    assert plan.offsets == {("vehicle.sensor.raw", 0): 10_001}


def test_an_idle_signal_writes_events_only_and_frees_no_offsets() -> None:
    records = fleet_records(vehicles=6, seconds=600)
    c = core()
    c.process(records)
    last: dict[bytes, RawRecord] = {}
    for r in records:
        if r.key:
            last[r.key] = r
    res = c.silent(list(last.values()))
    plan = plan_outputs(res, dlq_topic=DLQ, silent=True)
    assert plan.offsets == {} and plan.segments == []
    assert not any(o.key.startswith(("manifests/", "clean/")) for o in plan.objects)
    ended = [e for e in res.events.attrs["type"].tolist() if e == "fleet.trip.ended"]
    assert ended, "the fleet's open trips end when its vehicles fall silent"
    assert all(o.key.endswith("-silent.parquet") for o in plan.objects if o.key.startswith("events/"))


def test_events_that_break_a_routes_policy_go_once_each_to_its_dead_letter_target() -> None:
    """A route edited to paste the trip id (built from the VIN) into a field: its trip events
    are not routed; each goes once, as the routed CloudEvent marked with why, to the route's
    dead-letter topic, and the manifests count them; no frame is dead-lettered for them."""
    import tempfile
    from pathlib import Path

    import yaml

    from pipeline.core.rules import Router, load_rules

    folder = Path(tempfile.mkdtemp()) / "routes"
    folder.mkdir()
    (folder / "leak.yaml").write_text(yaml.safe_dump({"routes": [{
        "name": "dept.leak", "match": {"type": ["fleet.trip.ended"]},
        "transform": [{"pick": ["data.trip_id", "data.distance_km"]}, {"hmac": ["subject", "partitionkey"]},
                      {"set": {"source": "/pipeline/routes/dept.leak"}},
                      {"template": {"data.note": "trip {data.trip_id}"}}, {"drop": ["data.trip_id"]}],
        "to": [{"topic": "route.dept.leak"}], "dead_letter": {"topic": "route.dept.leak.dlq"},
        "policy": {"vin": "pseudonym", "location": "forbidden"}}]}))
    leaky = Core.from_settings(Settings())
    leaky.router = Router(load_rules(folder), hmac_secret=b"k")
    records = fleet_records(vehicles=30, seconds=900)
    leaky.process(records)
    last = {r.key: r for r in records}
    res = leaky.silent(list(last.values()))  # the fleet falls silent: open trips end
    ended = int((res.events.attrs["type"] == "fleet.trip.ended").sum())
    assert ended, "the fleet should end trips"
    plan = plan_outputs(res, dlq_topic=DLQ, silent=True)
    assert not routed_messages(plan)
    failures = [m for m in plan.messages if m.topic == "route.dept.leak.dlq"]
    assert len(failures) == ended
    for m in failures:
        h = dict(m.headers)
        assert h["ce_dlqroute"] == b"dept.leak" and h["ce_dlqreason"] == b"policy_violation"
        assert b"redacted" in m.value or b"<redacted>" in m.value
    assert not [m for m in plan.messages if m.topic == DLQ and dict(m.headers).get("dlq_stage") == b"route:dept.leak"]
    assert plan.route_failures == {("dept.leak", "policy_violation"): ended}
    # in a batch of frames, the manifests of the frames' partitions count them
    bad = Router(load_rules(folder), hmac_secret=b"k").route(res.events)
    res.route_result, res.routed = bad, bad.per_route
    res.route_specs = {"dept.leak": bad.failed and leaky.router.ruleset.get("dept.leak").spec}
    framed = plan_outputs(res, dlq_topic=DLQ)
    counted = sum(orjson.loads(o.body)["dead_letters"].get("route:dept.leak:policy_violation", 0)
                  for o in framed.objects if o.key.startswith("manifests/"))
    assert counted == ended


def test_the_slim_result_sent_to_the_encoder_process_plans_the_same_bytes(result: Any) -> None:
    import pickle

    full = plan_outputs(result, dlq_topic=DLQ)
    slim = pickle.loads(pickle.dumps(result.slim()))  # as the encoder process receives it
    again = plan_outputs(slim, dlq_topic=DLQ)
    assert [(o.key, o.body, o.metadata) for o in again.objects] == [(o.key, o.body, o.metadata) for o in full.objects]
    assert [(m.topic, m.key, m.value, m.headers) for m in again.messages + routed_messages(again)] == \
        [(m.topic, m.key, m.value, m.headers) for m in full.messages + routed_messages(full)]
    assert again.offsets == full.offsets
    assert len(pickle.dumps(result.slim())) < len(pickle.dumps(result)) / 2


def test_the_plan_in_two_parts_is_the_whole_plan(result: Any) -> None:
    """The worker produces a batch's messages (plan_messages, right after the core) while its
    objects are encoded (plan_objects, in the encoder): together exactly what plan_outputs
    gives, and the first part holds no Parquet object."""
    from pipeline.runtime.plan import plan_messages, plan_objects

    whole = plan_outputs(result, dlq_topic=DLQ)
    first = plan_messages(result, dlq_topic=DLQ)
    objects, segments = plan_objects(result.slim(), failed_by_part=first.failed_by_part)
    assert not any(o.key.endswith(".parquet") for o in first.objects)
    assert [m.value for m in first.messages] == [m.value for m in whole.messages]
    assert first.offsets == whole.offsets
    assert [(o.key, o.body) for o in first.objects + objects] == [(o.key, o.body) for o in whole.objects]
    assert segments == whole.segments
    assert [(t, p, a, b) for t, p, a, b in first.spans] == sorted(
        (s.topic, s.partition, s.first, s.last) for s in whole.segments)
