"""Two regions on one machine: a second KRaft broker and Kafka's MirrorMaker 2 between them.

`scripts/services start --regions 2` runs, beside what `start` runs (region A's broker on
KAFKA_PORT and the store), region B's broker and MirrorMaker 2 in dedicated mode
(`org.apache.kafka.connect.mirror.MirrorMaker` from org.apache.kafka:connect-mirror, the
broker's Kafka version, fetched with Maven like the broker jars)::

    <services dir>/                      region A (as today): kafka/, s3/, logs/, run/
    <services dir>/regions/b/            region B's broker: kafka/, logs/kafka.log, run/kafka.pid
    <services dir>/mirrormaker/          mm2.properties, log4j.properties
    <services dir>/logs/mirrormaker.log, run/mirrormaker.pid
    <cache>/mirrormaker-libs             connect-mirror and its runtime jars

Both regions share the one object store; each region has its own bucket (see
`pipeline.tools.regions`). A broker or MirrorMaker that already answers is left as it is, so a
running region A is never restarted; `stop --regions 2` ends only the processes started
from this folder. Readiness is asked, never slept: a metadata request per broker, and for
MirrorMaker the replicated heartbeat topic in each direction (`a.heartbeats` on B and
`b.heartbeats` on A), which exists only once both flows replicate.

Environment (beside pipeline.tools.services'), read as `Settings.services`
(`pipeline.runtime.settings.LocalServicesSettings`): REGION_NAMES ("a,b"), KAFKA_PORT_B
(KAFKA_PORT+100), KAFKA_CONTROLLER_PORT_B (KAFKA_CONTROLLER_PORT+100), MIRROR_TOPICS (the regex
of topics to replicate, `route\\..*|pipeline\\.dlq|.*-handler-state`), MIRROR_GROUPS (consumer
groups whose offsets are translated, `.*`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from pipeline.runtime.settings import DEFAULT_MIRROR_TOPICS, Settings, get_settings
from pipeline.tools.services import (
    KAFKA_VERSION,
    LOCALHOST,
    MAVEN_DIR,
    POLL_INTERVAL_S,
    LocalService,
    ServiceError,
    ServiceSettings,
    _alive,
    _failure,
    _java,
    _kafka,
    _launch,
    _port_in_use,
    _prepare_kafka,
    _quiet_aiokafka,
    _run_coroutine,
    _terminate,
    _wait_all_ready,
    _write,
    ensure_jars,
    probe,
    say,
)

DEFAULT_TOPICS = DEFAULT_MIRROR_TOPICS
DEFAULT_GROUPS = ".*"


@dataclass(frozen=True)
class MirrorService(LocalService):
    """MirrorMaker 2 (dedicated mode) run from cached Maven jars, like the broker."""

    @property
    def home(self) -> Path:
        return self.settings.base_dir / "mirrormaker"

    @property
    def config(self) -> Path:
        return self.home / "mm2.properties"

    @property
    def libs(self) -> Path:
        return self.settings.cache_dir / "mirrormaker-libs"

    @property
    def pom(self) -> Path:
        return MAVEN_DIR / "mirrormaker" / "pom.xml"

    @property
    def ports(self) -> list[tuple[int, str]]:
        return []


@dataclass(frozen=True)
class RegionServices:
    """The local layout of N regions: one broker each, MirrorMaker between every pair."""

    names: tuple[str, ...]
    brokers: tuple[ServiceSettings, ...]  # per region, in `names` order
    topics: str = DEFAULT_TOPICS
    groups: str = DEFAULT_GROUPS

    @classmethod
    def from_settings(cls, count: int = 2, base: ServiceSettings | None = None,
                      settings: Settings | None = None) -> RegionServices:
        """The regions of `settings.services` (default: the process's settings), region A on
        `base` (default: the settings' services)."""
        settings = settings or get_settings()
        local = settings.services
        base = base or ServiceSettings.from_settings(settings)
        names = tuple(n.strip() for n in local.region_names.split(",") if n.strip())[:count]
        if count != 2 or len(names) != 2:
            raise ServiceError("the local services run one region or two (--regions 2)")
        return cls.pair(base, names, local.kafka_port_b or base.kafka_port + 100,
                        local.kafka_controller_port_b or base.controller_port + 100,
                        topics=local.mirror_topics, groups=local.mirror_groups)

    @classmethod
    def pair(cls, base: ServiceSettings, names: tuple[str, ...], port_b: int, controller_b: int,
             *, topics: str = DEFAULT_TOPICS, groups: str = DEFAULT_GROUPS) -> RegionServices:
        """Region A on `base`'s broker, region B's broker under `<base dir>/regions/<b>`."""
        region_b = replace(base, base_dir=base.base_dir / "regions" / names[1],
                           kafka_port=port_b, controller_port=controller_b)
        return cls(names=names, brokers=(base, region_b), topics=topics, groups=groups)

    @property
    def bootstraps(self) -> dict[str, str]:
        return {name: s.kafka_bootstrap for name, s in zip(self.names, self.brokers, strict=True)}

    @property
    def mirror(self) -> MirrorService:
        return MirrorService("mirrormaker", "mirrormaker", self.brokers[0])

    def broker(self, region: str) -> LocalService:
        return _kafka(self.brokers[self.names.index(region)])


MM2_LOG4J = """\
# reload4j config for MirrorMaker 2: INFO to stdout (scripts/services redirects it to
# logs/mirrormaker.log); the Connect worker's per-record chatter stays at WARN.
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.apache.kafka.clients=WARN
log4j.logger.org.apache.kafka.common=WARN
log4j.logger.org.apache.kafka.connect.runtime.WorkerSourceTask=WARN
log4j.logger.org.apache.kafka.connect.runtime.distributed=WARN
"""


def mm2_properties(layout: RegionServices) -> str:
    """MirrorMaker 2 dedicated-mode config: every pair both ways, default replication policy
    (`<source>.<topic>`), checkpoints and consumer-group offset sync on, short intervals so
    a local failover sees translated offsets within seconds."""
    a, b = layout.names
    lines = [
        "# MirrorMaker 2, dedicated mode, between the local regions (written by scripts/services).",
        f"clusters = {a}, {b}",
        *(f"{name}.bootstrap.servers = {boot}" for name, boot in layout.bootstraps.items()),
        f"{a}->{b}.enabled = true",
        f"{b}->{a}.enabled = true",
        # a properties file: a regex's backslashes are written twice
        "topics = " + layout.topics.replace("\\", "\\\\"),
        "groups = " + layout.groups.replace("\\", "\\\\"),
        "replication.policy.class = org.apache.kafka.connect.mirror.DefaultReplicationPolicy",
        "# one broker per region",
        "replication.factor = 1",
        "checkpoints.topic.replication.factor = 1",
        "heartbeats.topic.replication.factor = 1",
        "offset-syncs.topic.replication.factor = 1",
        "offset.storage.replication.factor = 1",
        "status.storage.replication.factor = 1",
        "config.storage.replication.factor = 1",
        "# consumers that move region resume at the translated offset",
        "emit.checkpoints.enabled = true",
        "emit.checkpoints.interval.seconds = 1",
        "sync.group.offsets.enabled = true",
        "sync.group.offsets.interval.seconds = 1",
        "emit.heartbeats.interval.seconds = 1",
        "# an offset sync every 10 records: a translated offset is at most 10 records early",
        "offset.lag.max = 10",
        "# new route topics and groups are picked up within seconds",
        "refresh.topics.interval.seconds = 2",
        "refresh.groups.interval.seconds = 2",
        "sync.topic.configs.enabled = true",
        "sync.topic.acls.enabled = false",
        "# MirrorMaker's progress (its source offsets) is flushed every second",
        "offset.flush.interval.ms = 1000",
        "tasks.max = 2",
        "# low latency over batching: records leave as soon as they are read",
        "producer.override.linger.ms = 0",
        "consumer.poll.timeout.ms = 100",
    ]
    return "\n".join(lines) + "\n"


def _prepare_mirror(layout: RegionServices, java: str) -> list[str]:
    service = layout.mirror
    _write(service.config, mm2_properties(layout))
    log4j = service.home / "log4j.properties"
    _write(log4j, MM2_LOG4J)
    return [
        java,
        "-Xmx512m",
        "-Xms128m",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{log4j}",
        "-cp",
        f"{service.libs}/*",
        "org.apache.kafka.connect.mirror.MirrorMaker",
        str(service.config),
    ]


async def _topics(bootstrap: str, timeout_s: float) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        return set(await asyncio.wait_for(admin.list_topics(), timeout_s))
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def mirror_missing(layout: RegionServices) -> list[str]:
    """The replicated heartbeat topics not there yet (`<source>.heartbeats` on each target):
    empty once MirrorMaker replicates in both directions."""
    missing: list[str] = []
    for target, boot in layout.bootstraps.items():
        try:
            with _quiet_aiokafka():
                topics = _run_coroutine(lambda boot=boot: _topics(boot, 3.0))  # type: ignore[misc]
        except Exception as exc:  # an unreachable broker: everything is missing
            topics = set()
            missing.append(f"{target}: {type(exc).__name__}")
        for source in layout.names:
            if source != target and f"{source}.heartbeats" not in topics:
                missing.append(f"{source}.heartbeats on {target}")
    return missing


def start_regions(layout: RegionServices) -> None:
    """Start each region's broker that does not answer yet, then MirrorMaker 2; return when
    every broker answers and MirrorMaker replicates both ways."""
    to_start: list[LocalService] = []
    waiting: list[tuple[LocalService, int, float]] = []
    for region, settings in zip(layout.names, layout.brokers, strict=True):
        service = _kafka(settings)
        pid = service.recorded_pid()
        if probe("kafka", settings) is None:
            owner = f" (pid {pid})" if pid else " (not started by this folder)"
            say(f"kafka[{region}]: already answering at {settings.kafka_bootstrap}{owner}, left as it is")
        elif pid is not None:
            waiting.append((service, pid, time.monotonic()))
        elif taken := [port for port, _ in service.ports if _port_in_use(port)]:
            raise ServiceError(
                f"kafka[{region}]: port {taken[0]} is taken by a program that is not this broker; "
                "free it or set KAFKA_PORT_B / KAFKA_CONTROLLER_PORT_B"
            )
        else:
            to_start.append(service)
    java = _java()
    for service in to_start:
        ensure_jars(service)
        pid = _launch(service, _prepare_kafka(service, java))
        say(f"kafka: starting pid {pid} at {service.settings.kafka_bootstrap} (log {service.log})")
        waiting.append((service, pid, time.monotonic()))
    _wait_all_ready(waiting)
    mirror = layout.mirror
    pid = mirror.recorded_pid()
    if pid is None:
        ensure_jars(mirror)
        pid = _launch(mirror, _prepare_mirror(layout, java))
        say(f"mirrormaker: starting pid {pid} between {layout.bootstraps} (log {mirror.log})")
    started = time.monotonic()
    deadline = started + layout.brokers[0].timeout_s
    while missing := mirror_missing(layout):
        if not _alive(pid):
            raise _failure(mirror, f"process {pid} exited before replicating")
        if time.monotonic() >= deadline:
            _terminate(mirror, [pid])
            raise _failure(mirror, f"not replicating both ways after "
                           f"{layout.brokers[0].timeout_s:.0f}s (missing {missing}); stopped pid {pid}")
        time.sleep(POLL_INTERVAL_S * 4)
    say(f"mirrormaker: pid {pid} replicating {layout.names[0]}<->{layout.names[1]} "
        f"({time.monotonic() - started:.1f}s)")


def stop_regions(layout: RegionServices, *, include_first: bool = False) -> None:
    """Stop MirrorMaker and the brokers of regions after the first (the first region's
    broker too with include_first) that run from this folder; nothing else."""
    problems: list[str] = []
    services: list[LocalService] = [layout.mirror]
    services += [_kafka(s) for s in (layout.brokers if include_first else layout.brokers[1:])]
    for service in services:
        pids = service.processes()
        if not pids:
            continue
        survivors = _terminate(service, pids)
        if survivors:
            problems.append(f"{service.name}: pids {survivors} survived SIGKILL")
        else:
            say(f"{service.name}: stopped pid {', '.join(map(str, pids))} ({service.config})")
            service.pid_file.unlink(missing_ok=True)
    if problems:
        raise ServiceError("; ".join(problems))


def stop_broker(layout: RegionServices, region: str) -> None:
    """Stop one region's broker (started from this folder): the outage of a drill."""
    service = layout.broker(region)
    pids = service.processes()
    if not pids:
        raise ServiceError(f"kafka[{region}]: no broker of this folder runs")
    if _terminate(service, pids):
        raise ServiceError(f"kafka[{region}]: pids {pids} survived SIGKILL")
    service.pid_file.unlink(missing_ok=True)
    say(f"kafka[{region}]: stopped pid {', '.join(map(str, pids))}")


def free_ports(count: int) -> list[int]:
    """Free ports below Linux's ephemeral range (32768+), where a client's own outgoing
    connection cannot take the port before the server binds it."""
    ports: list[int] = []
    for port in random.sample(range(20000, 32000), 400):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOCALHOST, port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise ServiceError("no free ports between 20000 and 32000")


@contextlib.contextmanager
def private_regions(base_dir: Path, *, names: tuple[str, str] = ("a", "b"),
                    topics: str = DEFAULT_TOPICS, timeout_s: float = 120.0) -> Iterator[RegionServices]:
    """Two brokers and MirrorMaker 2 of one's own, on free ports under `base_dir` (jar cache
    shared with scripts/services): for tests, the benchmark and the drill, which must never
    stop the shared broker. All three are stopped on exit."""
    shared = ServiceSettings.from_settings()
    ports = free_ports(4)
    base = replace(shared, base_dir=base_dir, kafka_port=ports[0], controller_port=ports[1],
                   timeout_s=timeout_s, mode="local")
    layout = RegionServices.pair(base, names, ports[2], ports[3], topics=topics)
    try:
        start_regions(layout)
        yield layout
    finally:
        stop_regions(layout, include_first=True)


def region_status(layout: RegionServices) -> dict[str, bool]:
    """Whether each region's broker answers and whether MirrorMaker replicates both ways."""
    out = {f"kafka[{r}]": probe("kafka", s) is None for r, s in zip(layout.names, layout.brokers, strict=True)}
    out["mirrormaker"] = layout.mirror.recorded_pid() is not None and not mirror_missing(layout)
    return out


__all__ = [
    "KAFKA_VERSION",
    "LOCALHOST",
    "MirrorService",
    "RegionServices",
    "mirror_missing",
    "free_ports",
    "mm2_properties",
    "private_regions",
    "region_status",
    "start_regions",
    "stop_broker",
    "stop_regions",
]
