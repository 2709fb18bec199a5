"""What the operator's page shows, gathered from the deployment's stable interfaces only.

- every replica's Prometheus endpoint (names in `pipeline/runtime/metrics.py`): counters per stage,
  rates from one poll to the next, readings by outcome, dead letters by stage and reason,
  routed events per route;
- the consumer group's lag per partition (`pipeline.runtime.lag.LagReader`) and what the
  autoscaler's rule (`pipeline.tools.autoscale.Autoscaler`) decides from it;
- the tails of Kafka topics: the GPS topic (each vehicle's last position), the dead-letter
  topic (the latest example per stage and reason, redacted) and the route topics (the
  latest CloudEvent per route);
- the lake (`pipeline.tools.lake`): charging demand per grid cell and each vehicle's recent
  trips and events;
- the geofences of `functions/handlers.yaml`.

Nothing here imports the worker's runtime.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from pipeline.runtime.settings import Settings
from pipeline.tools.autoscale import Autoscaler, ScalePolicy

log = logging.getLogger("pipeline.tools.ui")

LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
VIN_TOKEN = re.compile(r"\b[A-HJ-NPR-Z0-9]{17}\b")
#: Counters that make a stage's throughput, per replica (name -> what it counts).
STAGES: tuple[tuple[str, str, str], ...] = (
    ("ingest", "pipeline_frames_in_total", "frames/s"),
    ("decode", "pipeline_readings_in_total", "readings/s"),
    ("clean", "pipeline_readings_total", "readings/s"),
    ("handlers", "pipeline_events_derived_total", "events/s"),
    ("routes", "pipeline_events_routed_total", "events/s"),
    ("store", "pipeline_objects_written_total", "objects/s"),
)
#: Policy for dead letters that no route produced (decode, clean, handlers): no VIN, no places.
OPERATOR_POLICY: Mapping[str, Any] = {"vin": "pseudonym", "location": "forbidden", "location_precision_m": 0,
                                      "mask_max_visible": 4}


# --------------------------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------------------------
Sample = tuple[str, tuple[tuple[str, str], ...], float]


def parse_metrics(text: str, prefix: str = "pipeline_") -> list[Sample]:
    """The samples of an exposition whose names start with `prefix` (buckets and `_created` left out)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: list[Sample] = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(prefix) and not s.name.endswith(("_created", "_bucket")):
                out.append((s.name, tuple(sorted(s.labels.items())), float(s.value)))
    return out


def total(samples: Sequence[Sample], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(dict(lab).get(k) == x for k, x in labels.items()))


def by_label(samples: Sequence[Sample], name: str, *keys: str) -> dict[str, float]:
    """Sum of a metric per label value(s), joined with ':' when several keys."""
    out: dict[str, float] = {}
    for n, lab, v in samples:
        if n == name:
            d = dict(lab)
            key = ":".join(d.get(k, "") for k in keys)
            out[key] = out.get(key, 0.0) + v
    return out


def resolve_targets(targets: Sequence[str]) -> list[str]:
    """Metrics URLs; `dns:HOST:PORT` becomes one URL per address HOST resolves to (compose replicas)."""
    urls: list[str] = []
    for target in targets:
        if target.startswith("dns:"):
            host, _, port = target[4:].rpartition(":")
            try:
                addresses = sorted({info[4][0] for info in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)})
            except OSError:
                addresses = []
            urls += [f"http://{a}:{port}/metrics" for a in addresses]
        else:
            urls.append(target if urlsplit(target).path not in ("", "/") else target.rstrip("/") + "/metrics")
    return urls


# --------------------------------------------------------------------------------------------
# Redaction of dead-letter examples
# --------------------------------------------------------------------------------------------
def mask_vin(vin: str, visible: int) -> str:
    return "*" * max(len(vin) - visible, 0) + vin[len(vin) - visible:] if visible else "*" * len(vin)


COORDINATE = re.compile(r"-?\d{1,3}\.\d{3,}")


def redact_text(text: str, policy: Mapping[str, Any], *, unparsed: bool = False) -> str:
    """VIN-like tokens masked; in text that could not be parsed, precise decimals (coordinates)
    too unless the policy allows exact locations."""
    if unparsed and (policy.get("location") == "forbidden" or policy.get("location_precision_m")):
        text = COORDINATE.sub("<redacted>", text)
    if policy.get("vin") == "allowed":
        return text
    visible = int(policy.get("mask_max_visible", 4)) if policy.get("vin") == "pseudonym" else 0
    return VIN_TOKEN.sub(lambda m: mask_vin(m.group(0), visible), text)


def redact_frame(frame: Any, policy: Mapping[str, Any]) -> Any:
    """A frame as the policy lets it be shown: VIN masked, coordinates dropped or coarsened."""
    if not isinstance(frame, dict):
        return frame
    out = dict(frame)
    if isinstance(out.get("data"), dict):  # structured mode: the frame is the event's data
        out["data"] = redact_frame(out["data"], policy)
    samples = out.get("samples")
    if isinstance(samples, dict):
        kept = {}
        step = float(policy.get("location_precision_m") or 0) / 111_320.0
        for name, series in samples.items():
            if name.startswith("Vehicle.CurrentLocation."):
                if policy.get("location") == "forbidden":
                    continue
                if step and isinstance(series, dict) and isinstance(series.get("v"), list):
                    series = {**series, "v": [round(v / step) * step if isinstance(v, int | float) else v
                                              for v in series["v"]]}
            kept[name] = series
        out["samples"] = kept
    return orjson.loads(redact_text(orjson.dumps(out).decode(), policy))


def dead_letter_example(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]],
                        policies: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One dead-letter record for the page: why, where from, and the redacted original."""
    h = {k: v.decode("utf-8", "replace") for k, v in headers}
    stage = h.get("dlq_stage", "?")
    route = stage.split(":", 1)[1] if stage.startswith("route:") else None
    policy = policies.get(route or "", OPERATOR_POLICY)
    raw = value or b""
    try:
        shown: Any = redact_frame(orjson.loads(raw), policy)
    except orjson.JSONDecodeError:
        shown = redact_text(raw[:400].decode("utf-8", "replace"), policy, unparsed=True) + \
            (" ..." if len(raw) > 400 else "")
    return {
        "stage": stage, "reason": h.get("dlq_reason", "?"),
        "error": redact_text(h.get("dlq_error", "")[:300], policy),
        "from": f"{h.get('dlq_topic', '?')}[{h.get('dlq_partition', '?')}]@{h.get('dlq_offset', '?')}",
        "key": redact_text((key or b"").decode("utf-8", "replace"), policy),
        "policy": "route " + route if route else "operator default (VIN masked, no locations)",
        "value": shown,
    }


def last_positions(value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> tuple[str, int, float, float] | None:
    """(vin, t, lat, lon) of a GPS frame's latest fix, or None if it has none or is malformed."""
    try:
        frame = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if isinstance(frame, dict) and "samples" not in frame and isinstance(frame.get("data"), dict):
        frame = frame["data"]
    if not isinstance(frame, dict):
        return None
    samples = frame.get("samples") or {}
    try:
        lat, lon = samples[LAT], samples[LON]
        best = None
        for t, la, lo in zip(lat["t"], lat["v"], lon["v"], strict=False):
            if isinstance(la, int | float) and isinstance(lo, int | float) and abs(la) <= 90 and abs(lo) <= 180 \
                    and (la, lo) != (0, 0) and (best is None or t >= best[0]):
                best = (int(t), float(la), float(lo))
    except (KeyError, TypeError):
        return None
    if best is None or not isinstance(frame.get("vin"), str):
        return None
    return (frame["vin"], *best)


# --------------------------------------------------------------------------------------------
# The collector
# --------------------------------------------------------------------------------------------
@dataclass
class UiOptions:
    metrics: list[str] = field(default_factory=list)  # URLs or dns:HOST:PORT
    autoscaler: str | None = None  # metrics URL of a running `pipeline autoscale`
    local_workers: bool = True  # add the replicas `pipeline workers start` runs
    policy: ScalePolicy = field(default_factory=ScalePolicy)
    tail: int = 300  # records read back per partition at start
    lake_every_s: float = 15.0


class Collector:
    """Keeps the page's state fresh: call `poll()` every few seconds, read `state()`."""

    def __init__(self, settings: Settings, options: UiOptions) -> None:
        self.settings = settings
        self.options = options
        self.autoscaler = Autoscaler(options.policy)
        self._previous: dict[str, tuple[float, dict[str, float]]] = {}
        self._lag_reader: Any = None
        self._consumer: Any = None
        self._assigned: set[Any] = set()
        self.route_topics, self.policies, self.zones = self._load_config()
        self.positions: dict[str, tuple[int, float, float]] = {}
        self.latest_events: dict[str, dict[str, Any]] = {}  # topic -> latest CloudEvent
        self.dead_examples: dict[str, dict[str, Any]] = {}  # stage:reason -> latest example
        self.dead_tail_counts: dict[str, int] = {}
        self._state: dict[str, Any] = {}
        self._lake_state: dict[str, Any] = {"cells": [], "error": None, "at": None}
        self._lake_at = 0.0
        self._lake_task: asyncio.Task[None] | None = None
        self._lake: Any = None

    def _load_config(self) -> tuple[dict[str, str], dict[str, dict[str, Any]], list[dict[str, Any]]]:
        from pipeline.core.handlers.config import load_handler_config
        from pipeline.core.rules.loader import load_rules

        topics: dict[str, str] = {}
        policies: dict[str, dict[str, Any]] = {}
        try:
            ruleset = load_rules(self.settings.rules_dir / "routes")
            for route in ruleset.all_routes():
                for target in route.spec.to:
                    if getattr(target, "topic", None):
                        topics.setdefault(target.topic, route.name)  # type: ignore[union-attr]
                policies[route.name] = (route.spec.policy.model_dump() if route.spec.policy else
                                        {"vin": "allowed", "location": "allowed"})
        except Exception as exc:  # the page still shows metrics and lag with broken rules
            log.warning("rules not loaded: %s", exc)
        zones = []
        try:
            for z in load_handler_config(self.settings.functions_dir / "handlers.yaml").zones:
                zones.append({"name": z.name, "lat": z.lat, "lon": z.lon, "radius_m": z.radius_m,
                              "polygon": [list(p) for p in z.polygon]})
        except Exception as exc:
            log.warning("zones not loaded: %s", exc)
        return topics, policies, zones

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        from pipeline.runtime.lag import LagReader

        kwargs = self.settings.kafka_client_kwargs()
        self._lag_reader = LagReader(self.settings.app_id, list(self.settings.ingest_topics), self.settings)
        await self._lag_reader.start()
        self._consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **kwargs)
        await self._consumer.start()

    async def close(self) -> None:
        if self._lake_task is not None:
            self._lake_task.cancel()
        if self._lag_reader is not None:
            await self._lag_reader.close()
        if self._consumer is not None:
            await self._consumer.stop()

    # --- metrics ---------------------------------------------------------------------------
    def _targets(self) -> list[tuple[str, str]]:
        """(label, metrics URL) of every replica to scrape."""
        out = [(urlsplit(url).netloc, url) for url in resolve_targets(self.options.metrics)]
        if self.options.local_workers:
            from pipeline.tools.supervisor import Supervisor

            try:
                for st in Supervisor().status():
                    if st.alive and st.replica.metrics_port:
                        out.append((f"local-{st.replica.index}",
                                    f"http://127.0.0.1:{st.replica.metrics_port}/metrics"))
            except Exception as exc:
                log.debug("no local workers: %s", exc)
        return out

    async def _scrape(self) -> list[dict[str, Any]]:
        import httpx

        targets = self._targets()
        async with httpx.AsyncClient(timeout=2.0) as client:
            async def one(label: str, url: str) -> dict[str, Any]:
                try:
                    resp = await client.get(url)
                    resp.raise_for_status()
                    return {"replica": label, "url": url, "up": True, "samples": parse_metrics(resp.text)}
                except (httpx.HTTPError, ValueError) as exc:
                    return {"replica": label, "url": url, "up": False, "error": str(exc), "samples": []}

            return list(await asyncio.gather(*(one(label, url) for label, url in targets)))

    def _replica_rows(self, scraped: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        rows = []
        for r in scraped:
            samples = r["samples"]
            totals = {stage: total(samples, name) for stage, name, _ in STAGES}
            prev = self._previous.get(r["url"])
            rates = {}
            if prev is not None and now > prev[0]:
                dt = now - prev[0]
                rates = {k: max(v - prev[1].get(k, 0.0), 0.0) / dt for k, v in totals.items()}
            if r["up"]:
                self._previous[r["url"]] = (now, totals)
            rows.append({"replica": r["replica"], "url": r["url"], "up": r["up"], "error": r.get("error"),
                         "totals": totals, "rates": rates})
        return rows

    async def _running_autoscaler(self) -> dict[str, Any] | None:
        """What a running `pipeline autoscale` last decided, from its metrics (None if not asked)."""
        if not self.options.autoscaler:
            return None
        import httpx

        url = resolve_targets([self.options.autoscaler])[0]
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                resp = await client.get(url)
                resp.raise_for_status()
        except httpx.HTTPError as exc:
            return {"url": url, "up": False, "error": str(exc)}
        samples = parse_metrics(resp.text, prefix="autoscaler_")
        return {"url": url, "up": True,
                **{k: total(samples, f"autoscaler_{k}") for k in
                   ("desired_replicas", "current_replicas", "recommended_replicas", "total_lag", "partitions")},
                "decisions": by_label(samples, "autoscaler_decisions_total", "direction")}

    # --- Kafka tails ---------------------------------------------------------------------------
    async def _tail(self) -> None:
        from aiokafka import TopicPartition

        consumer = self._consumer
        topics = [self.settings.topic_gps, self.settings.topic_dlq, *self.route_topics]
        new = []
        for topic in topics:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                await consumer._client.force_metadata_update()  # a topic created since the last poll
                parts = consumer.partitions_for_topic(topic) or set()
            new += [TopicPartition(topic, p) for p in parts if TopicPartition(topic, p) not in self._assigned]
        if new:
            self._assigned |= set(new)
            consumer.assign(sorted(self._assigned))
            ends = await consumer.end_offsets(new)
            starts = await consumer.beginning_offsets(new)
            for tp in new:
                consumer.seek(tp, max(int(starts[tp]), int(ends[tp]) - self.options.tail))
        if not self._assigned:
            return
        for _ in range(50):  # bounded catch-up per poll
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            if not batch:
                break
            for tp, records in batch.items():
                for rec in records:
                    self._record(tp.topic, rec)

    def _record(self, topic: str, rec: Any) -> None:
        if topic == self.settings.topic_gps:
            pos = last_positions(rec.value, rec.headers)
            if pos is not None:
                vin, t, lat, lon = pos
                if vin not in self.positions or self.positions[vin][0] <= t:
                    self.positions[vin] = (t, lat, lon)
        elif topic == self.settings.topic_dlq:
            example = dead_letter_example(rec.key, rec.value, rec.headers, self.policies)
            code = f"{example['stage']}:{example['reason']}"
            example["timestamp"] = rec.timestamp
            self.dead_examples[code] = example
            self.dead_tail_counts[code] = self.dead_tail_counts.get(code, 0) + 1
        else:
            headers = {k: v.decode("utf-8", "replace") for k, v in rec.headers}
            try:
                data = orjson.loads(rec.value or b"null")
            except orjson.JSONDecodeError:
                data = (rec.value or b"")[:200].decode("utf-8", "replace")
            event = {k.removeprefix("ce_"): v for k, v in headers.items() if k.startswith("ce_")}
            event["data"] = data
            previous = self.latest_events.get(topic)
            if previous is None or previous["_ts"] <= rec.timestamp:
                self.latest_events[topic] = {"_ts": rec.timestamp, "event": event,
                                             "partition": rec.partition, "offset": rec.offset}

    # --- the lake ------------------------------------------------------------------------------
    def _read_lake(self) -> dict[str, Any]:
        from pipeline.tools.lake import declared_event_fields, open_lake

        lake = open_lake(self.settings, declared=declared_event_fields(self.settings.functions_dir))
        self._lake = lake
        cells = lake.query(
            "SELECT cell, avg(cell_lat) AS lat, avg(cell_lon) AS lon, round(sum(expected_kw), 2) AS kw, "
            "sum(sessions)::BIGINT AS sessions, max(time) AS at FROM ("
            "  SELECT *, row_number() OVER (PARTITION BY cell, \"partition\" ORDER BY time DESC) AS n "
            "  FROM fleet_grid_charging_demand) WHERE n = 1 GROUP BY cell ORDER BY kw DESC").to_pylist()
        return {"cells": [{**c, "at": str(c["at"])} for c in cells], "error": None,
                "at": time.time(), "views": len(lake.views)}

    async def _refresh_lake(self) -> None:
        try:
            self._lake_state = await asyncio.to_thread(self._read_lake)
        except Exception as exc:
            self._lake_state = {**self._lake_state, "error": f"{type(exc).__name__}: {exc}"}

    def vehicle(self, vin: str) -> dict[str, Any]:
        """A vehicle's recent trips and events, from the lake (blocking: call in a thread)."""
        from pipeline.tools.lake import LakeError, declared_event_fields, open_lake

        lake = self._lake or open_lake(self.settings, declared=declared_event_fields(self.settings.functions_dir))
        quoted = vin.replace("'", "''")
        try:
            trips = lake.query(
                "SELECT trip_id, time AS ended, round(duration_s / 60, 1) AS minutes, round(distance_km, 2) AS km, "
                f"round(energy_kwh, 3) AS kwh, harsh_events FROM fleet_trip_ended WHERE vin = '{quoted}' "
                "ORDER BY time DESC LIMIT 10").to_pylist()
            events = lake.query(f"SELECT time, type, id FROM events WHERE subject = '{quoted}' "
                                "ORDER BY time DESC LIMIT 20").to_pylist()
        except LakeError as exc:
            return {"vin": vin, "error": str(exc), "trips": [], "events": []}
        pos = self.positions.get(vin)
        return {"vin": vin, "position": {"t": pos[0], "lat": pos[1], "lon": pos[2]} if pos else None,
                "trips": [{k: str(v) if k == "ended" else v for k, v in t.items()} for t in trips],
                "events": [{**e, "time": str(e["time"])} for e in events]}

    # --- one poll ----------------------------------------------------------------------------
    async def poll(self) -> dict[str, Any]:
        now = time.monotonic()
        scraped, lag, _, running = await asyncio.gather(self._scrape(), self._lag_reader.read(), self._tail(),
                                                        self._running_autoscaler())
        if self._lake_task is None or (self._lake_task.done() and now - self._lake_at >= self.options.lake_every_s):
            self._lake_at = now
            self._lake_task = asyncio.create_task(self._refresh_lake())
        replicas = self._replica_rows(scraped, now)
        all_samples = [s for r in scraped for s in r["samples"]]
        alive = sum(1 for r in replicas if r["up"])
        decision = self.autoscaler.decide(lag.total, lag.partitions, alive)
        outcomes = by_label(all_samples, "pipeline_readings_total", "outcome")
        dead = by_label(all_samples, "pipeline_dead_letters_total", "stage", "reason")
        routed = by_label(all_samples, "pipeline_events_routed_total", "route")
        topic_of_route = {route: topic for topic, route in self.route_topics.items()}
        self._state = {
            "at": time.time(),
            "group": self.settings.app_id,
            "totals": {"frames_in": total(all_samples, "pipeline_frames_in_total"),
                       "readings_in": total(all_samples, "pipeline_readings_in_total"),
                       "frames_dead_lettered": total(all_samples, "pipeline_frames_dead_lettered_total"),
                       "events_derived": total(all_samples, "pipeline_events_derived_total"),
                       "events_unmatched": total(all_samples, "pipeline_events_unmatched_total")},
            "stages": [{"stage": s, "metric": m, "unit": u} for s, m, u in STAGES],
            "replicas": replicas,
            "lag": {"total": lag.total, "partitions": lag.partitions, "missing_topics": list(lag.missing_topics),
                    "by_partition": [{"topic": p.topic, "partition": p.partition, "committed": p.committed,
                                      "end": p.log_end, "lag": p.lag} for p in lag.by_partition]},
            "autoscaler": {**decision.as_dict(), "policy": {
                "min_replicas": self.options.policy.min_replicas, "max_replicas": self.options.policy.max_replicas,
                "lag_threshold": self.options.policy.lag_threshold, "window_s": self.options.policy.window_s,
                "cooldown_s": self.options.policy.cooldown_s}, "running": running},
            "readings": [{"outcome": k.split(".", 1)[0], "reason": k.split(".", 1)[1] if "." in k else "",
                          "readings": v} for k, v in sorted(outcomes.items())],
            "dead_letters": [{"stage": k.rsplit(":", 1)[0], "reason": k.rsplit(":", 1)[1], "count": v,
                              "example": self.dead_examples.get(k)} for k, v in sorted(dead.items())],
            "routes": [{"route": route, "topic": topic_of_route.get(route), "events": v,
                        "latest": (self.latest_events.get(topic_of_route.get(route, "")) or {}).get("event")}
                       for route, v in sorted(routed.items())],
            "vehicles": [{"vin": vin, "t": t, "lat": la, "lon": lo} for vin, (t, la, lo) in sorted(self.positions.items())],
            "zones": self.zones,
            "lake": self._lake_state,
        }
        return self._state

    def state(self) -> dict[str, Any]:
        return self._state
