"""The output plan of one core result: what to write where, and which offsets that frees.

`plan_outputs` is a pure function of a batch's `BatchResult`: routed CloudEvents and dead
letters and handler-state changes as Kafka messages, clean readings, derived events and
manifests (and routed events for object-store targets) as objects, and the offset to
commit per input partition once all of them are durable. The runtime only executes plans,
so everything about naming, accounting and encoding is tested here without services.

Each routed event is encoded once: the same record goes to every topic target, and its
headers and data bytes make the JSON line of object-store targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from pipeline.core.batch import DeadLetter, EventBatch, RawRecord
from pipeline.core.events import EncodedRecord, encode_event
from pipeline.core.process import BatchResult
from pipeline.runtime.segments import (
    Segment,
    add_to_segment,
    event_objects,
    segment_objects,
    split_batch,
)
from pipeline.runtime.sinks import (
    OutMessage,
    PutObject,
    dead_letter_record,
    segment_name,
)


@dataclass(slots=True)
class SegmentDone:
    """One input partition's share of a batch, for the log line and metrics once durable."""

    topic: str
    partition: int
    first: int
    last: int
    frames: int
    readings: int
    objects: int
    oldest_ms: int  # earliest record timestamp: the worst latency the segment holds


@dataclass(slots=True)
class RouteDelivery:
    """One route's encoded events for one topic target, under the route's retry policy; what
    the target refuses after the last attempt goes to `dead_letter_topic` as failure events."""

    route: str
    topic: str
    messages: list[OutMessage]
    events: EventBatch  # the same events as columns, for failure events
    retry: Any  # rules.schema.RetryPolicy
    dead_letter: Any  # the route's dead-letter target (rules.schema.Target)
    dead_letter_topic: str


@dataclass(slots=True)
class OutputPlan:
    """Everything one batch writes, and the offsets it frees for commit."""

    messages: list[OutMessage] = field(default_factory=list)  # retried until acknowledged
    deliveries: list[RouteDelivery] = field(default_factory=list)  # routed events, per route's retry
    objects: list[PutObject] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset to commit
    segments: list[SegmentDone] = field(default_factory=list)
    routed: dict[str, int] = field(default_factory=dict)  # events per route
    route_failures: dict[tuple[str, str], int] = field(default_factory=dict)  # (route, reason) -> events
    dead_letters: list[DeadLetter] = field(default_factory=list)  # late: encode errors
    webhooks: bool = False  # the result has webhook targets to deliver to
    spans: list[tuple[str, int, int, int]] = field(default_factory=list)  # (topic, partition, first, last) in
    failed_by_part: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)  # for the manifests


def offset_spans(records: list[RawRecord]) -> dict[tuple[str, int], tuple[int, int]]:
    """First and last offset per input partition of a batch (partitions in first-seen order)."""
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    for r in records:
        key = (r.topic, r.partition)
        first, last = spans.get(key, (r.offset, r.offset))
        spans[key] = (min(first, r.offset), max(last, r.offset))
    return spans


def next_offsets(spans: dict[tuple[str, int], tuple[int, int]]) -> dict[tuple[str, int], int]:
    """Next offset to commit per input partition of `offset_spans`: one past the last."""
    return {key: last + 1 for key, (_, last) in spans.items()}


def commit_offsets(records: list[RawRecord]) -> dict[tuple[str, int], int]:
    """Next offset to commit per input partition: one past the highest offset in the batch."""
    return next_offsets(offset_spans(records))


def _object_line(rec: EncodedRecord) -> bytes:
    """A routed event as one JSON line: its CloudEvents attributes (from the headers it was
    produced with) and its data, reusing the encoded data bytes."""
    attrs = {k[3:]: v.decode() for k, v in rec.headers if k.startswith("ce_")}
    return orjson.dumps(attrs)[:-1] + b',"data":' + rec.value + b"}"


def plan_outputs(result: BatchResult, *, dlq_topic: str, state_messages: list[OutMessage] | None = None,
                 silent: bool = False) -> OutputPlan:
    """The plan of one core result: `plan_messages` and then `plan_objects`.

    `silent` marks the result of an idle signal: its records are the silent vehicles' last
    frames, already accounted for by the batch that held them, so it writes derived events
    only (objects named `...-silent`), no manifest and no offsets.
    """
    plan = plan_messages(result, dlq_topic=dlq_topic, state_messages=state_messages, silent=silent)
    objects, segments = plan_objects(result, silent=silent, failed_by_part=plan.failed_by_part)
    plan.objects.extend(objects)
    plan.segments = segments
    return plan


def plan_messages(result: BatchResult, *, dlq_topic: str, state_messages: list[OutMessage] | None = None,
                  silent: bool = False) -> OutputPlan:
    """The plan's first part: all that goes to Kafka (routed events, failure events, state
    changes, dead letters), the routes' object targets and the offsets the batch frees.
    Cheap (a few ms a batch): the worker makes it right after the core, so routed events
    leave while the Parquet objects of `plan_objects` are still being encoded."""
    plan = OutputPlan(webhooks=_has_webhooks(result))
    records = result.records
    _plan_routes(result, plan, silent, dlq_topic)
    plan.failed_by_part = _plan_route_failures(result, plan, dlq_topic)
    plan.messages.extend(state_messages or ())
    for dl in result.dead_letters + plan.dead_letters:
        plan.messages.append(dead_letter_message(dl, dlq_topic))
    plan.dead_letters = []
    if not silent:
        spans = offset_spans(records)
        plan.offsets = next_offsets(spans)
        plan.spans = [(t, p, first, last) for (t, p), (first, last) in sorted(spans.items())]
    return plan


def plan_objects(result: BatchResult, *, silent: bool = False,
                 failed_by_part: dict[tuple[str, int], dict[str, int]] | None = None,
                 ) -> tuple[list[PutObject], list[SegmentDone]]:
    """The plan's second part: the batch's objects per input partition (clean readings and
    derived events as Parquet, and the manifest), with what each partition's share holds.
    `failed_by_part` (from `plan_messages`) counts the events routes refused, for the manifests."""
    if silent:
        return _silent_event_objects(result), []
    records = result.records
    objects: list[PutObject] = []
    segments: list[SegmentDone] = []
    for (topic, partition), part in split_batch(result).items():
        seg = Segment(topic, partition)
        add_to_segment(seg, part, records)
        for code, n in (failed_by_part or {}).get((topic, partition), {}).items():
            seg.dead_letters[code] = seg.dead_letters.get(code, 0) + n
        seg_objects = segment_objects(seg)
        objects.extend(seg_objects)
        segments.append(SegmentDone(topic, partition, seg.first, seg.last, seg.frames_in, seg.readings_in,
                                    len(seg_objects), min(r.timestamp_ms for r in seg.records)))
    return objects, segments


def dead_letter_message(dl: DeadLetter, default_topic: str) -> OutMessage:
    key, value, headers = dead_letter_record(dl)
    topic = (dl.detail or {}).get("dead_letter_topic") or default_topic
    return OutMessage(topic, key, value, headers)


def _has_webhooks(result: BatchResult) -> bool:
    return result.route_result is not None and any(
        getattr(t, "kind", None) == "webhook" for ts in result.targets.values() for t in ts)


def _plan_routes(result: BatchResult, plan: OutputPlan, silent: bool, dlq_topic: str) -> None:
    """Routed events to topic targets (messages) and object-store targets (JSON lines per
    route, target and input partition, named from the partition's offsets in the batch)."""
    records = result.records
    offsets_by_part: dict[tuple[str, int], list[int]] = {}
    for r in records:
        offsets_by_part.setdefault((r.topic, r.partition), []).append(r.offset)
    for route, batch in result.routed.items():
        targets = result.targets.get(route, [])
        topics = [t.topic for t in targets if getattr(t, "kind", None) == "topic"]
        prefixes = [t.object for t in targets if getattr(t, "kind", None) == "object"]
        if not len(batch) or not (topics or prefixes):
            continue
        lines: dict[tuple[str, int], list[bytes]] = {}
        by_topic: dict[str, tuple[list[OutMessage], list[int]]] = {}
        origins = batch.origin.tolist()
        for row, (attrs, data) in enumerate(batch.rows()):
            origin = records[int(origins[row])]
            try:
                rec = encode_event(attrs, data)
            except Exception as exc:  # one bad event must not fail the batch
                plan.dead_letters.append(DeadLetter(origin, f"route:{route}", "encode_error",
                                                    f"{type(exc).__name__}: {exc}"))
                continue
            for topic in topics:
                by_topic.setdefault(topic, ([], []))
                by_topic[topic][0].append(OutMessage(topic, rec.key, rec.value, rec.headers))
                by_topic[topic][1].append(row)
            if prefixes:
                lines.setdefault((origin.topic, origin.partition), []).append(_object_line(rec))
        spec = result.route_specs.get(route)
        for topic, (messages, rows) in by_topic.items():
            if spec is None:  # no route spec known (a result built by hand): plain messages
                plan.messages.extend(messages)
                continue
            plan.deliveries.append(RouteDelivery(route, topic, messages, batch.take(np.asarray(rows, dtype=np.int64)),
                                                 spec.retry, spec.dead_letter, dead_letter_topic(spec, dlq_topic)))
        if topics:
            plan.routed[route] = plan.routed.get(route, 0) + len(batch)
        for (topic, partition), body_lines in lines.items():
            offsets = offsets_by_part[(topic, partition)]
            name = segment_name(topic, partition, min(offsets), max(offsets)) + ("-silent" if silent else "")
            body = b"\n".join(body_lines) + b"\n"
            for prefix in prefixes:
                plan.objects.append(PutObject(f"{prefix}{route}/{name}.jsonl", body, "application/x-ndjson",
                                              {"route": route, "events": str(len(body_lines))}))


def dead_letter_topic(spec: Any, default: str) -> str:
    """The topic of a route's dead-letter target, or `default` (the pipeline's dead-letter topic)."""
    target = getattr(spec, "dead_letter", None)
    return str(target.topic) if target is not None and getattr(target, "kind", None) == "topic" else default


def failure_messages(events: EventBatch, topic: str) -> list[OutMessage]:
    """Failure events (routed CloudEvents with the `dlq*` attributes) as messages to a route's
    dead-letter topic; one that cannot be encoded is left out (it is counted, not lost)."""
    out = []
    for attrs, data in events.rows():
        try:
            rec = encode_event(attrs, data)
        except Exception:  # noqa: BLE001 - the failure event itself is malformed: nothing better to send
            continue
        out.append(OutMessage(topic, rec.key, rec.value, rec.headers))
    return out


def _plan_route_failures(result: BatchResult, plan: OutputPlan, dlq_topic: str) -> dict[tuple[str, int], dict[str, int]]:
    """Events a route must not let out (its data policy) go, once each and as routed
    CloudEvents, to the route's dead-letter target; counted per input partition for the
    manifests as `route:<name>:<reason>`."""
    by_part: dict[tuple[str, int], dict[str, int]] = {}
    failed = getattr(result.route_result, "failed", None) or {}
    for route, events in failed.items():
        if not len(events):
            continue
        spec = result.route_specs.get(route)
        topic = dead_letter_topic(spec, dlq_topic) if spec is not None else dlq_topic
        plan.messages.extend(failure_messages(events, topic))
        reasons = events.attrs.get("dlqreason")
        for i, origin in enumerate(events.origin.tolist()):
            rec = result.records[int(origin)]
            reason = str(reasons[i]) if reasons is not None else "failed"
            code = f"route:{route}:{reason}"
            counts = by_part.setdefault((rec.topic, rec.partition), {})
            counts[code] = counts.get(code, 0) + 1
            plan.route_failures[(route, reason)] = plan.route_failures.get((route, reason), 0) + 1
    return by_part


def _silent_event_objects(result: BatchResult) -> list[PutObject]:
    """Derived events of an idle signal, per input partition and type (no manifest: no input),
    named from the offsets of the frames they came from, with `-silent`."""
    events = result.events
    objects: list[PutObject] = []
    if not len(events):
        return objects
    records = result.records
    rows_of: dict[tuple[str, int], list[int]] = {}
    for i, o in enumerate(events.origin.tolist()):
        rows_of.setdefault((records[o].topic, records[o].partition), []).append(i)
    for (topic, partition), rows in sorted(rows_of.items()):
        sel = events.take(np.asarray(rows, dtype=np.int64))
        offsets = [records[o].offset for o in sel.origin.tolist()]
        name = segment_name(topic, partition, min(offsets), max(offsets)) + "-silent"
        objects.extend(event_objects(sel, name, {"source-topic": topic, "source-partition": str(partition),
                                                 "silent": "true"}))
    return objects
