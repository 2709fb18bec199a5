"""The published contract: an AsyncAPI 3.0 document generated from the rules and the handlers.

One channel per Kafka topic the deployment reads or writes: the ingest topics (frames),
every route topic (CloudEvents in binary content mode: attributes in `ce_*` headers,
`data` as the JSON value, key = `partitionkey`) and the dead-letter topics. Each route
channel has one message per event type that can reach it, and its payload schema is the
event's data *after the route's transform*.

The schemas are not written by hand. A handler declares its events' fields once
(`@handler(emits={type: {field: type}})`, checked on every emit); for each route the
route's own compiled transform is run on events built from that declaration, once with
every field present and once without each optional field, and the schema is read off
what comes out: the properties and their JSON types, and as required the fields every
output has. A change to a handler's declaration or to a route's transform changes the
document the next time it is generated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.errors import ConfigError
from pipeline.core.handlers.registry import FieldSpec, Registry, handler_source
from pipeline.core.rules.columns import batch_from_events, events_from_batch
from pipeline.core.rules.loader import CompiledRoute, RuleSet
from pipeline.core.rules.patterns import AllOf, AnyOf, FieldCondition, Node, NoneOf
from pipeline.core.rules.schema import DEFAULT_HMAC_KEY_ENV, TopicTarget
from pipeline.core.rules.transform import Context, Frame
from pipeline.runtime.settings import Settings

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
SAMPLE_VALUES: Mapping[str, Any] = {"string": "sample", "number": 12.5, "integer": 3, "boolean": True}
JSON_TYPE = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
SCHEMA_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_"


class ContractError(ConfigError):
    """The contract cannot be generated: a route's transform fails on the events its handlers
    declare (the error names the route's file and the line of its transform)."""


# --------------------------------------------------------------------------------------------
# Which event types a route can receive
# --------------------------------------------------------------------------------------------
def _type_only(node: Node) -> bool:
    return all(f.path == "type" for f in node.fields())


def type_can_match(node: Node, event_type: str) -> bool:
    """Whether some event of `event_type` can match the pattern (data conditions assumed satisfiable)."""
    if isinstance(node, FieldCondition):
        return node.test({"type": event_type}) if node.path == "type" else True
    if isinstance(node, AllOf):
        return all(type_can_match(c, event_type) for c in node.children)
    if isinstance(node, AnyOf):
        return any(type_can_match(c, event_type) for c in node.children)
    if isinstance(node, NoneOf):
        return not (_type_only(node.child) and node.child.test({"type": event_type}))
    return True


def type_always_matches(node: Node, event_type: str) -> bool:
    """Whether every event of `event_type` matches (a pattern on the type alone that accepts it)."""
    return _type_only(node) and node.test({"type": event_type})


# --------------------------------------------------------------------------------------------
# JSON Schema from declarations and from transformed samples
# --------------------------------------------------------------------------------------------
def declared_schema(fields: Sequence[FieldSpec]) -> dict[str, Any]:
    """The JSON Schema of a handler's declared data (dotted names become nested objects)."""
    root: dict[str, Any] = {"type": "object", "properties": {}, "required": [], "additionalProperties": False}
    for f in fields:
        node = root
        parts = f.name.split(".")
        for part in parts[:-1]:  # an object is required when one of its fields is
            child = node["properties"].setdefault(
                part, {"type": "object", "properties": {}, "required": [], "additionalProperties": False})
            if f.required:
                node["required"].append(part)
            node = child
        node["properties"][parts[-1]] = {"type": f.type}
        if f.required:
            node["required"].append(parts[-1])
    return _tidy(root)


def _tidy(schema: dict[str, Any]) -> dict[str, Any]:
    if schema.get("type") == "object":
        for child in schema.get("properties", {}).values():
            _tidy(child)
        if "required" in schema:
            schema["required"] = sorted(set(schema["required"]))
            if not schema["required"]:
                del schema["required"]
    return schema


def _json_type(value: Any) -> str:
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    for py, name in JSON_TYPE.items():
        if type(value) is py:
            return name
    if isinstance(value, bool | np.bool_):
        return "boolean"
    if isinstance(value, int | np.integer):
        return "integer"
    if isinstance(value, float | np.floating):
        return "number"
    return "string"


def schema_of_values(values: Sequence[Any]) -> dict[str, Any]:
    """A JSON Schema that every one of `values` (JSON-like) satisfies, as tight as they allow."""
    types = sorted({_json_type(v) for v in values})
    if "integer" in types and "number" in types:
        types.remove("integer")
    schema: dict[str, Any] = {"type": types[0] if len(types) == 1 else types}
    objects = [v for v in values if isinstance(v, Mapping)]
    if objects:
        keys = list(dict.fromkeys(k for o in objects for k in o))
        schema["properties"] = {k: schema_of_values([o[k] for o in objects if k in o]) for k in keys}
        required = [k for k in keys if all(k in o for o in objects)]
        if required:
            schema["required"] = required
        schema["additionalProperties"] = False
    arrays = [v for v in values if isinstance(v, list | tuple)]
    if arrays and any(arrays):
        schema["items"] = schema_of_values([item for a in arrays for item in a])
    return schema


@dataclass
class RoutedSchema:
    """What a route makes of one event type: output types, data schema, attribute facts, an example."""

    route: str
    event_type: str
    output_types: list[str]
    data: dict[str, Any]
    sources: list[str]
    subject: str  # "always", "sometimes" or "never"
    example: dict[str, Any]


def _sample_event(event_type: str, fields: Sequence[FieldSpec], absent: Iterable[str], source: str,
                  has_vin: bool) -> dict[str, Any]:
    data: dict[str, Any] = {}
    skip = set(absent)
    for f in fields:
        if f.name in skip:
            continue
        node = data
        parts = f.name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = SAMPLE_VALUES[f.type]
    subject = "VF1SAMPLE00000001" if has_vin else "sample-subject"
    if has_vin and "vin" in data:
        data["vin"] = subject
    return {"id": "sample-id", "type": event_type, "source": source, "subject": subject,
            "partitionkey": subject, "time": 1_715_706_000_000, "data": data}


def route_schema(route: CompiledRoute, event_type: str, fields: Sequence[FieldSpec], source: str,
                 keys: Mapping[str, bytes]) -> RoutedSchema | None:
    """Run the route's transform on sample events of the declaration; None if none gets through."""
    has_vin = any(f.name == "vin" for f in fields)
    # optional fields of one object (`location.lat`, `location.lon`) are absent together
    groups: dict[str, list[str]] = {}
    for f in fields:
        if not f.required:
            groups.setdefault(f.name.rsplit(".", 1)[0] if "." in f.name else f.name, []).append(f.name)
    everything = tuple(name for names in groups.values() for name in names)
    variants = [(), *(tuple(names) for names in groups.values()), everything]
    outputs: list[dict[str, Any]] = []
    for absent in dict.fromkeys(variants):
        batch = batch_from_events([_sample_event(event_type, fields, absent, source, has_vin)])
        try:
            frame = route.transform.apply(Frame(batch, np.arange(1)), Context(keys))
            outputs.extend(events_from_batch(frame.build()))
        except Exception as exc:
            raise ContractError(f"transform failed on a sample {event_type} event "
                                f"(without {list(absent) or 'nothing'}): {exc!r}",
                                file=route.file, line=route.line_of("transform"), rule=route.name) from exc
    if not outputs:
        return None
    subjects = [o.get("subject") is not None for o in outputs]
    return RoutedSchema(
        route=route.name, event_type=event_type,
        output_types=sorted({str(o["type"]) for o in outputs}),
        data=schema_of_values([o["data"] for o in outputs]) if fields else {"type": "object"},
        sources=sorted({str(o["source"]) for o in outputs}),
        subject="always" if all(subjects) else "sometimes" if any(subjects) else "never",
        example=outputs[0])


# --------------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------------
def _ref(*parts: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)}


def _safe_id(text: str) -> str:
    return "".join(c if c in SCHEMA_ID_CHARS else "_" for c in text)


def cloudevent_headers(types: Sequence[str], sources: Sequence[str], subject: str) -> dict[str, Any]:
    """The CloudEvents Kafka binding (binary content mode) headers of a message, as a schema."""
    props: dict[str, Any] = {
        "ce_specversion": {"type": "string", "const": "1.0", "description": "CloudEvents version."},
        "ce_id": {"type": "string", "description": "Deterministic id: the same input gives the same id "
                  "on a replay, so consumers drop duplicates by id."},
        "ce_source": {"type": "string", "description": "Who produced the event."},
        "ce_type": {"type": "string", "description": "Event type."},
        "ce_time": {"type": "string", "format": "date-time", "description": "Event time (RFC 3339, UTC)."},
        "ce_subject": {"type": "string", "description": "What the event is about (a vehicle or a grid cell)."},
        "ce_partitionkey": {"type": "string", "description": "Partition key extension; also the Kafka key."},
        "ce_dataschema": {"type": "string", "description": "URI of the data's schema, when a route sets it."},
        "content-type": {"type": "string", "const": "application/json", "description": "Content type of the value."},
    }
    props["ce_type"].update({"const": types[0]} if len(types) == 1 else {"enum": list(types)})
    if len(sources) == 1:
        props["ce_source"]["const"] = sources[0]
    required = ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_partitionkey", "content-type"]
    if subject == "always":
        required.append("ce_subject")
    if subject == "never":
        del props["ce_subject"]
    return {"type": "object", "properties": props, "required": required}


def _frame_schema() -> dict[str, Any]:
    series = {"type": "object", "required": ["t", "v"], "properties": {
        "t": {"type": "array", "items": {"type": "integer"}, "description": "Sample times, epoch ms."},
        "v": {"type": "array", "items": {"type": ["number", "null"]}, "description": "Values, VSS units."}}}
    return {"type": "object", "required": ["vin", "seq", "sent_at", "samples"], "properties": {
        "vin": {"type": "string", "description": "Vehicle identification number (also the Kafka key)."},
        "seq": {"type": "integer", "description": "Upload sequence number of the vehicle."},
        "sent_at": {"type": "integer", "description": "Upload time, epoch ms."},
        "samples": {"type": "object", "description": "Columnar samples per COVESA VSS signal name.",
                    "propertyNames": {"pattern": "^Vehicle\\."}, "additionalProperties": series}}}


def _describe_route(route: CompiledRoute) -> str:
    text = route.spec.description or f"Route {route.name}."
    policy = route.spec.policy
    if policy is not None:
        facts = ", ".join(f"{k}: {v}" for k, v in policy.model_dump(exclude_none=True).items()
                          if v not in (None, [], {}))
        text += f" Data policy: {facts}."
    return text


def build_contract(ruleset: RuleSet, registry: Registry, settings: Settings, *,
                   version: str = "1.0.0") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the deployment's topics, as plain data."""
    keys = {env: b"contract-sample-key" for env in ruleset.key_envs()}
    keys[DEFAULT_HMAC_KEY_ENV] = b"contract-sample-key"
    keys.update({k: v for k, v in ruleset.keys.items() if v})
    declared: dict[str, tuple[Sequence[FieldSpec], str]] = {}
    for spec in registry.ordered():
        for event_type in spec.emits:
            declared[event_type] = (spec.fields.get(event_type, ()), handler_source(spec.name))

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    kafka_server = {"host": settings.kafka_bootstrap.split(",")[0], "protocol": "kafka",
                    "description": "The deployment's Kafka cluster (KAFKA_BOOTSTRAP)."}

    for event_type, (fields, _source) in sorted(declared.items()):
        schemas[_safe_id(event_type)] = (declared_schema(fields) if fields else
                                         {"type": "object", "description": "Fields not declared by the handler."})

    def channel(topic: str, description: str, channel_messages: dict[str, Any], action: str) -> None:
        cid = _safe_id(topic)
        channels[cid] = {
            "address": topic, "description": description,
            "messages": {mid: _ref("components", "messages", mid) for mid in channel_messages},
            "bindings": {"kafka": {"topic": topic, "bindingVersion": KAFKA_BINDING_VERSION}},
        }
        messages.update(channel_messages)
        operations[f"{action}.{cid}"] = {
            "action": action, "channel": _ref("channels", cid),
            "messages": [_ref("channels", cid, "messages", mid) for mid in channel_messages],
        }

    # Ingest: the vehicles' frames
    for kind, topic in (("sensor", settings.topic_sensor), ("gps", settings.topic_gps)):
        mid = f"fleet.vehicle.{kind}.frame"
        schemas[mid] = _frame_schema()
        channel(topic, f"Vehicle {kind} frames in (co-partitioned with the other ingest topic by VIN).", {mid: {
            "name": mid, "title": f"{kind} frame", "contentType": "application/json",
            "summary": "One vehicle's upload: many samples of many signals, columnar.",
            # binary mode (ce_* headers) or structured mode (application/cloudevents+json)
            "headers": {k: v for k, v in cloudevent_headers([mid], [], "sometimes").items() if k != "required"},
            "payload": _ref("components", "schemas", mid),
            "bindings": {"kafka": {"key": {"type": "string", "description": "VIN"},
                                   "bindingVersion": KAFKA_BINDING_VERSION}},
        }}, "receive")

    # Routes: one channel per topic, one message per event type that can arrive on it
    by_topic: dict[str, list[CompiledRoute]] = {}
    for route in ruleset.all_routes():
        for target in route.spec.to:
            if isinstance(target, TopicTarget):
                by_topic.setdefault(target.topic, []).append(route)
    for topic, routes in sorted(by_topic.items()):
        channel_messages: dict[str, Any] = {}
        for route in routes:
            for event_type, (fields, source) in sorted(declared.items()):
                if route.spec.default:
                    if any(type_always_matches(r.predicate, event_type) for r in ruleset.routes):
                        continue
                elif not type_can_match(route.predicate, event_type):
                    continue
                routed = route_schema(route, event_type, fields, source, keys)
                if routed is None:
                    continue
                mid = _safe_id(f"{route.name}__{event_type}")
                schemas[mid] = routed.data
                channel_messages[mid] = {
                    "name": event_type, "title": f"{event_type} via {route.name}",
                    "summary": f"{event_type} as route {route.name} delivers it.",
                    "contentType": "application/json",
                    "headers": cloudevent_headers(routed.output_types, routed.sources, routed.subject),
                    "payload": _ref("components", "schemas", mid),
                    "bindings": {"kafka": {"key": {"type": "string", "description": "The event's partitionkey."},
                                           "bindingVersion": KAFKA_BINDING_VERSION}},
                    "examples": [{"name": "sample", "summary": "From sample values (pseudonyms with a sample key).",
                                  "payload": routed.example["data"]}],
                }
        description = " ".join(_describe_route(r) for r in routes)
        channel(topic, description, channel_messages, "send")

    # Dead letters: the original record plus why, in dlq_* headers
    dlq_topics = {settings.topic_dlq} | {r.spec.dead_letter.topic for r in ruleset.all_routes()
                                         if isinstance(r.spec.dead_letter, TopicTarget)}
    for topic in sorted(dlq_topics):
        dlq_headers = {
            "dlq_stage": {"type": "string", "description": "Stage that gave up: decode, clean, handler, route, ..."},
            "dlq_reason": {"type": "string", "description": "Stable reason code (e.g. bad_json, missing_field)."},
            "dlq_error": {"type": "string", "description": "Error text (at most 4000 bytes)."},
            "dlq_topic": {"type": "string", "description": "Topic of the original record."},
            "dlq_partition": {"type": "string", "description": "Partition of the original record."},
            "dlq_offset": {"type": "string", "description": "Offset of the original record."},
            "dlq_detail": {"type": "string", "description": "JSON with details (route, handler, ...), when there are any."},
        }
        channel(topic, "Dead letters: the original record's key, bytes and headers, unchanged, plus why.",
                {"dead-letter": {
                    "name": "dead-letter", "title": "dead letter",
                    "summary": "An input record that could not be processed, with the reason.",
                    "headers": {"type": "object", "properties": dlq_headers,
                                "required": ["dlq_stage", "dlq_reason", "dlq_error", "dlq_topic",
                                             "dlq_partition", "dlq_offset"]},
                    "payload": {"description": "The original record's value, unchanged (any bytes)."},
                }}, "send")

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Connected-vehicle telemetry pipeline",
            "version": version,
            "description": "Frames in, routed CloudEvents and dead letters out. Route topics carry "
                           "CloudEvents 1.0 in Kafka binary content mode: attributes in `ce_*` headers, "
                           "`data` as the JSON value, key = partitionkey. Generated by `pipeline contract` "
                           f"from the rules ({ruleset.digest[:12]}) and the handlers' declarations.",
        },
        "defaultContentType": "application/json",
        "servers": {"kafka": kafka_server},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def load_contract_inputs(settings: Settings) -> tuple[RuleSet, Registry]:
    """The rules and handlers of the settings' folders, as a worker would load them."""
    from pipeline.core.handlers.loader import load_functions
    from pipeline.core.rules.loader import load_rules

    ruleset = load_rules(settings.rules_dir / "routes")
    registry = load_functions(settings.functions_dir, strict=True)
    return ruleset, registry


def message_schemas(document: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(topic, ce_type) -> {"headers": schema, "data": schema} from a generated document.

    What a consumer checks a record against: its `ce_*` headers (as text) and its JSON value.
    """
    out: dict[tuple[str, str], dict[str, Any]] = {}
    schemas = document["components"]["schemas"]
    for chan in document["channels"].values():
        for ref in chan["messages"].values():
            message = document["components"]["messages"][ref["$ref"].rsplit("/", 1)[1]]
            payload = message["payload"]
            if "$ref" not in payload:
                continue
            ce_type = message["headers"]["properties"].get("ce_type", {})
            for t in ce_type.get("enum", [ce_type.get("const")]):
                if t is not None:
                    out[(chan["address"], t)] = {"headers": message["headers"],
                                                 "data": schemas[payload["$ref"].rsplit("/", 1)[1]]}
    return out
