"""Regions as configuration: each with its own Kafka, bucket and consumer group; every vehicle
with a home region; and a consumer that sees one stream per route across regions.

A deployment names its regions in a YAML file (`REGIONS_FILE`; without one there is a single
region made of the worker's own settings, as before)::

    regions:
      a: {kafka_bootstrap: "127.0.0.1:9092", s3_bucket: telemetry-a, app_id: telemetry-a}
      b: {kafka_bootstrap: "127.0.0.1:9192", s3_bucket: telemetry-b, app_id: telemetry-b}
    home:
      vins: {VF1TWIZY000000001: b}     # a list: exact VINs first
      prefixes: {VF1: a, WVW: b}       # then the longest matching VIN prefix
      default: hash                    # then a region name, or `hash` (stable, by VIN)

A region's workers are ordinary `pipeline worker` processes with that region's
KAFKA_BOOTSTRAP, APP_ID and S3_BUCKET (`Region.worker_env`). MirrorMaker 2 copies each
region's route topics and dead letters to the others under the default replication policy,
`<region>.<topic>` (`route.dept.finance` from A is `a.route.dept.finance` in B), so a
consumer in any region reads a route as `route.x` plus `<other>.route.x` and drops repeats
by the CloudEvents id, which is deterministic (`route_topics`, `Deduplicator`).
"""

from __future__ import annotations

import collections
import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.core.errors import ConfigError
from pipeline.core.yamlfile import load_yaml
from pipeline.runtime.settings import Settings

HASH = "hash"


class Region(BaseModel):
    """One region: its Kafka cluster, its bucket (or prefix) and its workers' consumer group."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kafka_bootstrap: str
    s3_bucket: str
    app_id: str
    s3_endpoint: str | None = None

    def worker_env(self) -> dict[str, str]:
        """Environment for this region's `pipeline worker` replicas."""
        env = {"KAFKA_BOOTSTRAP": self.kafka_bootstrap, "S3_BUCKET": self.s3_bucket,
               "APP_ID": self.app_id}
        if self.s3_endpoint:
            env["S3_ENDPOINT"] = self.s3_endpoint
        return env

    def settings(self, base: Settings | None = None) -> Settings:
        """Worker settings for this region: `base` with this region's endpoints and group."""
        base = base or Settings()
        return base.model_copy(update={k.lower(): v for k, v in self.worker_env().items()})


class HomeRule(BaseModel):
    """Which region a vehicle calls home: exact VIN, else longest prefix, else default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vins: dict[str, str] = Field(default_factory=dict)
    prefixes: dict[str, str] = Field(default_factory=dict)
    default: str = HASH


class Regions(BaseModel):
    """The deployment's regions and its home rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    regions: dict[str, Region]
    home: HomeRule = Field(default_factory=HomeRule)

    @field_validator("regions", mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {name: {"name": name, **(spec or {})} for name, spec in value.items()}
        return value

    def model_post_init(self, __context: Any) -> None:
        if not self.regions:
            raise ConfigError("name at least one region", field="regions")
        known = set(self.regions)
        named = [*self.home.vins.values(), *self.home.prefixes.values()]
        if self.home.default != HASH:
            named.append(self.home.default)
        unknown = sorted(set(named) - known)
        if unknown:
            raise ConfigError(f"home rule names unknown regions {unknown}; known: {sorted(known)}", field="home")
        for name in self.regions:
            if "." in name:
                raise ConfigError(f"region name {name!r}: no dots (it becomes a topic prefix)",
                                  field=f"regions.{name}")

    @property
    def names(self) -> list[str]:
        return list(self.regions)

    def home_of(self, vin: str) -> str:
        """The home region of a vehicle (stable: the same VIN always maps the same way)."""
        if vin in self.home.vins:
            return self.home.vins[vin]
        best = max((p for p in self.home.prefixes if vin.startswith(p)), key=len, default=None)
        if best is not None:
            return self.home.prefixes[best]
        if self.home.default != HASH:
            return self.home.default
        names = sorted(self.regions)
        digest = hashlib.blake2b(vin.encode(), digest_size=8).digest()
        return names[int.from_bytes(digest, "big") % len(names)]

    def rehome(self, vin: str, region: str) -> Regions:
        """These regions with `vin` moved to `region` (its state follows through the changelog)."""
        if region not in self.regions:
            raise ConfigError(f"unknown region {region!r}; known: {self.names}")
        home = self.home.model_copy(update={"vins": {**self.home.vins, vin: region}})
        return self.model_copy(update={"home": home})

    def split(self, vins: Iterable[str]) -> dict[str, list[str]]:
        """VINs grouped by home region (every region present, maybe empty)."""
        out: dict[str, list[str]] = {name: [] for name in self.regions}
        for vin in vins:
            out[self.home_of(vin)].append(vin)
        return out


def single(settings: Settings | None = None, name: str = "local") -> Regions:
    """Today's deployment as a region model: one region made of the worker's settings."""
    s = settings or Settings()
    return Regions(regions={name: {"kafka_bootstrap": s.kafka_bootstrap, "s3_bucket": s.s3_bucket,
                                   "app_id": s.app_id}}, home=HomeRule(default=name))


def load(path: Path | str | None = None, settings: Settings | None = None) -> Regions:
    """The regions file at `path` (else `$REGIONS_FILE`); one region when neither is set."""
    path = path or os.environ.get("REGIONS_FILE")
    if not path:
        return single(settings)
    doc = load_yaml(path)
    try:
        return Regions.model_validate(doc.data or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
        raise doc.error(message + more, *loc, field=".".join(str(p) for p in loc) or None) from exc
    except ConfigError as exc:  # the checks across regions and the home rule
        if exc.file is not None:
            raise
        raise doc.error(exc.detail, *(exc.field or "").split(".", 1), field=exc.field) from exc


# --- one stream per route across regions ------------------------------------------------------


def route_topics(route: str, regions: Iterable[str], local: str | None = None) -> list[str]:
    """The topics that together carry `route` as seen from region `local`: the local topic and
    the copy MirrorMaker makes of each other region's (`<region>.<route>`)."""
    return [route, *(f"{r}.{route}" for r in regions if r != local)]


def origin_of(topic: str, regions: Iterable[str]) -> str | None:
    """The region a replicated topic came from (`a.route.x` -> `a`), None for a local topic."""
    head, dot, _ = topic.partition(".")
    return head if dot and head in set(regions) else None


def event_id(headers: Iterable[tuple[str, bytes | None]] | None) -> str | None:
    """The CloudEvents id of a Kafka record in binary mode (its `ce_id` header)."""
    for key, value in headers or ():
        if key == "ce_id" and value is not None:
            return value.decode()
    return None


class Deduplicator:
    """Drops events already seen, by their deterministic id, remembering the last `capacity`.

    The same routed event can arrive twice: from its own region and, after a consumer moved,
    again through a replicated topic (a translated offset may be a few records early), or
    because the worker re-emitted it after a crash (same id by construction).
    """

    def __init__(self, capacity: int = 1_000_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.duplicates = 0

    def first(self, event_id: str | None) -> bool:
        """True the first time an id is offered (and for events without an id)."""
        if event_id is None:
            return True
        if event_id in self._seen:
            self.duplicates += 1
            self._seen.move_to_end(event_id)
            return False
        self._seen[event_id] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True


async def consume_route(route: str, regions: Regions, local: str, group: str | None = None,
                        **consumer_kwargs: Any) -> Any:
    """An aiokafka consumer (started) on `route` in region `local`, subscribed to the local
    topic and every other region's replica of it. Pair it with a `Deduplicator`::

        consumer = await consume_route("route.dept.finance", regions, "b", group="finance")
        seen = Deduplicator()
        async for record in consumer:
            if seen.first(event_id(record.headers)):
                handle(record)
    """
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *route_topics(route, regions.names, local),
        bootstrap_servers=regions.regions[local].kafka_bootstrap,
        group_id=group,
        **consumer_kwargs,
    )
    await consumer.start()
    return consumer
