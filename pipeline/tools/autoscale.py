"""Lag-driven replica count for the worker group: the KEDA Kafka scaler's rule with
HPA-style scale-down stabilisation, a cooldown, Prometheus metrics and two drivers.

The decision logic (`recommended_replicas`, `Autoscaler`) is pure and takes its clock as an
argument, so it is tested without a broker. `run` is the loop: read lag, decide, act.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from pipeline.core.errors import InputError, PipelineError
from pipeline.runtime.lag import GroupLag, LagReader
from pipeline.tools.supervisor import Supervisor

log = logging.getLogger("pipeline.tools.autoscale")

Direction = Literal["up", "down", "hold"]


class ScaleDriverError(PipelineError):
    """A driver could not read or set the replica count."""


# --- the rule --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScalePolicy:
    """Bounds and damping of the autoscaler; `window_s` and `cooldown_s` are seconds."""

    min_replicas: int = 1
    max_replicas: int = 3
    lag_threshold: int = 5000
    window_s: float = 30.0
    cooldown_s: float = 10.0

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise InputError(f"min replicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < max(self.min_replicas, 1):
            raise InputError(
                f"max replicas must be >= max(min, 1), got min={self.min_replicas} max={self.max_replicas}"
            )
        if self.lag_threshold <= 0:
            raise InputError(f"lag threshold must be > 0, got {self.lag_threshold}")
        if self.window_s < 0 or self.cooldown_s < 0:
            raise InputError("window and cooldown must be >= 0 seconds")

    def ceiling(self, partitions: int) -> int:
        """Most replicas that can own a partition: more would sit idle and still rebalance."""
        return max(0, min(self.max_replicas, partitions))

    def floor(self, partitions: int) -> int:
        """Fewest replicas; the partition ceiling wins over `min_replicas` when they conflict."""
        return min(self.min_replicas, self.ceiling(partitions))


def recommended_replicas(total_lag: int, partitions: int, policy: ScalePolicy) -> int:
    """clamp(ceil(total_lag / lag_threshold), min, min(max, partitions)): the KEDA Kafka rule."""
    wanted = -(-max(total_lag, 0) // policy.lag_threshold)
    return max(policy.floor(partitions), min(wanted, policy.ceiling(partitions)))


@dataclass(frozen=True)
class Decision:
    """One tick of the autoscaler: its inputs, what the rule says and what it sets."""

    at: float
    total_lag: int
    partitions: int
    current: int
    recommended: int  # the rule applied to this observation alone
    desired: int  # the replica count the autoscaler sets now (== current when holding)
    direction: Direction
    reason: str

    def line(self) -> str:
        """The decision as one log line with every input."""
        return (
            f"lag={self.total_lag} partitions={self.partitions} current={self.current} "
            f"recommended={self.recommended} desired={self.desired} "
            f"direction={self.direction} reason={self.reason!r}"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "at": self.at, "total_lag": self.total_lag, "partitions": self.partitions,
            "current": self.current, "recommended": self.recommended, "desired": self.desired,
            "direction": self.direction, "reason": self.reason,
        }


class Autoscaler:
    """Turns lag observations into replica counts.

    Up is prompt: as soon as the rule asks for more replicas than run now (outside a
    cooldown). Down is damped: the target is the highest recommendation over the last
    `window_s` seconds (the Kubernetes HPA scale-down stabilisation), and nothing goes down
    before a whole window has been observed. After any change nothing changes for
    `cooldown_s`, because every change is a consumer-group rebalance.
    """

    def __init__(self, policy: ScalePolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._history: deque[tuple[float, int]] = deque()
        self._started_at: float | None = None
        self._last_change_at: float | None = None

    def decide(self, total_lag: int, partitions: int, current: int) -> Decision:
        """The decision for one observation; a change starts the cooldown (assumed applied)."""
        now = self._clock()
        if self._started_at is None:
            self._started_at = now
        policy = self.policy

        def hold(recommended: int, reason: str) -> Decision:
            return Decision(now, total_lag, partitions, current, recommended, current, "hold", reason)

        if partitions <= 0:
            return hold(current, "no partitions found for the ingest topics; holding")

        recommended = recommended_replicas(total_lag, partitions, policy)
        self._history.append((now, recommended))
        while self._history and self._history[0][0] < now - policy.window_s:
            self._history.popleft()

        cooldown_left = 0.0
        if self._last_change_at is not None:
            cooldown_left = self._last_change_at + policy.cooldown_s - now

        if recommended > current:
            if cooldown_left > 0:
                return hold(recommended, f"cooldown: wants {recommended}, {cooldown_left:.1f}s left")
            if current < policy.floor(partitions) and recommended == policy.floor(partitions):
                why = f"below the minimum of {policy.floor(partitions)}"
            else:
                why = f"lag {total_lag} over threshold {policy.lag_threshold} per replica"
            return self._change(now, total_lag, partitions, current, recommended, recommended, "up", why)

        if recommended < current:
            ceiling = policy.ceiling(partitions)
            stabilised = min(max(r for _, r in self._history), ceiling)
            if current > ceiling:
                # Replicas beyond the partition count own nothing: no window, only the cooldown.
                if cooldown_left > 0:
                    return hold(recommended, f"cooldown: above ceiling {ceiling}, {cooldown_left:.1f}s left")
                return self._change(now, total_lag, partitions, current, recommended, stabilised,
                                    "down", f"above the ceiling min(max, partitions) = {ceiling}")
            observed = now - self._started_at
            if observed < policy.window_s:
                return hold(recommended, f"observing: {observed:.0f}s of the {policy.window_s:.0f}s window seen")
            if stabilised >= current:
                return hold(recommended, f"stabilising: max recommendation over {policy.window_s:.0f}s is {stabilised}")
            if cooldown_left > 0:
                return hold(recommended, f"cooldown: wants {stabilised}, {cooldown_left:.1f}s left")
            return self._change(now, total_lag, partitions, current, recommended, stabilised, "down",
                                f"max recommendation over {policy.window_s:.0f}s is {stabilised}")

        return hold(recommended, "at the recommendation")

    def _change(self, now: float, total_lag: int, partitions: int, current: int, recommended: int,
                desired: int, direction: Direction, reason: str) -> Decision:
        self._last_change_at = now
        return Decision(now, total_lag, partitions, current, recommended, desired, direction, reason)


# --- metrics ---------------------------------------------------------------------------------


class AutoscaleMetrics:
    """The autoscaler's Prometheus series, in their own registry (served on their own port)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.desired = Gauge("autoscaler_desired_replicas", "Replica count the autoscaler sets now.",
                             registry=self.registry)
        self.current = Gauge("autoscaler_current_replicas", "Replicas running when last observed.",
                             registry=self.registry)
        self.recommended = Gauge("autoscaler_recommended_replicas",
                                 "The lag rule's count before stabilisation and cooldown.",
                                 registry=self.registry)
        self.total_lag = Gauge("autoscaler_total_lag", "Total consumer-group lag on the ingest topics (records).",
                               registry=self.registry)
        self.partitions = Gauge("autoscaler_partitions", "Partition count bounding the replica count.",
                                registry=self.registry)
        self.decisions = Counter("autoscaler_decisions", "Decisions taken, by direction.", ["direction"],
                                 registry=self.registry)
        self.lag_errors = Counter("autoscaler_lag_read_errors", "Lag reads that failed (decision skipped).",
                                  registry=self.registry)
        for direction in ("up", "down", "hold"):
            self.decisions.labels(direction=direction)

    def observe(self, decision: Decision) -> None:
        self.desired.set(decision.desired)
        self.current.set(decision.current)
        self.recommended.set(decision.recommended)
        self.total_lag.set(decision.total_lag)
        self.partitions.set(decision.partitions)
        self.decisions.labels(direction=decision.direction).inc()

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)


# --- drivers ---------------------------------------------------------------------------------


class ScaleDriver(Protocol):
    """What the loop needs from a deployment: how many replicas run, and set that number."""

    name: str

    def current(self) -> int: ...

    def scale(self, replicas: int) -> None: ...


class LocalDriver:
    """Local worker processes through the supervisor (`pipeline workers`)."""

    name = "local"

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def current(self) -> int:
        return self.supervisor.alive_count()

    def scale(self, replicas: int) -> None:
        result = self.supervisor.scale(replicas)
        log.info("local replicas: %s", result.summary())


class ComposeDriver:
    """The compose `worker` service, through the docker CLI (the Docker socket is mounted)."""

    name = "compose"

    def __init__(self, service: str = "worker", command: Sequence[str] = ("docker", "compose"),
                 project_dir: Path | None = None, timeout_s: float = 300.0) -> None:
        self.service = service
        self.command = list(command)
        self.project_dir = project_dir
        self.timeout_s = timeout_s

    def _run(self, args: list[str]) -> str:
        argv = [*self.command, *args]
        try:
            done = subprocess.run(argv, cwd=self.project_dir, capture_output=True, text=True,
                                  timeout=self.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ScaleDriverError(f"{shlex.join(argv)}: {exc}") from exc
        if done.returncode != 0:
            raise ScaleDriverError(
                f"{shlex.join(argv)} exited {done.returncode}: {done.stderr.strip()[-2000:]}"
            )
        return done.stdout

    def current(self) -> int:
        out = self._run(["ps", "--status", "running", "-q", self.service])
        return sum(1 for line in out.splitlines() if line.strip())

    def scale(self, replicas: int) -> None:
        self._run(["up", "-d", "--no-recreate", "--scale", f"{self.service}={replicas}", self.service])


class DryRunDriver:
    """Reads the real count once, then only pretends: decisions are printed, nothing is set."""

    def __init__(self, inner: ScaleDriver) -> None:
        self.inner = inner
        self.name = f"{inner.name} (dry run)"
        self._replicas: int | None = None

    def current(self) -> int:
        if self._replicas is None:
            self._replicas = self.inner.current()
        return self._replicas

    def scale(self, replicas: int) -> None:
        self._replicas = replicas


# --- the loop --------------------------------------------------------------------------------


class LagSource(Protocol):
    async def read(self) -> GroupLag: ...


@dataclass
class LoopOptions:
    """How often and how long the loop runs, and where decisions are printed."""

    interval_s: float = 2.0
    once: bool = False
    duration_s: float | None = None
    lag_timeout_s: float = 10.0
    echo: TextIO | None = None  # print each decision here too (dry run, demo)
    on_decision: Callable[[Decision], None] | None = None
    stop: asyncio.Event | None = None  # set it to end the loop after the current tick
    decisions: list[Decision] = field(default_factory=list)


async def run(autoscaler: Autoscaler, driver: ScaleDriver, lag_source: LagSource,
              options: LoopOptions, metrics: AutoscaleMetrics | None = None) -> list[Decision]:
    """Read lag, decide, act, every `interval_s`; returns the decisions taken.

    A failed lag read or replica count skips the tick (no scaling on missing data); a failed
    scale call is logged and retried after the cooldown the decision started.
    """
    deadline = None if options.duration_s is None else time.monotonic() + options.duration_s
    while True:
        tick = time.monotonic()
        try:
            lag = await asyncio.wait_for(lag_source.read(), options.lag_timeout_s)
        except Exception as exc:  # any broker trouble: skip this tick, keep the loop alive
            if metrics:
                metrics.lag_errors.inc()
            log.warning("autoscale: lag read failed, holding: %s", exc)
            lag = None
        current: int | None = None
        if lag is not None:
            try:
                current = await asyncio.to_thread(driver.current)
            except PipelineError as exc:
                log.warning("autoscale: driver %s cannot count replicas, holding: %s", driver.name, exc)
        if lag is not None and current is not None:
            decision = autoscaler.decide(lag.total, lag.partitions, current)
            options.decisions.append(decision)
            log.info("autoscale %s driver=%s group=%s", decision.line(), driver.name, lag.group)
            if options.echo is not None:
                stamp = time.strftime("%H:%M:%S")
                print(f"{stamp} [{driver.name}] {decision.line()}", file=options.echo, flush=True)
            if metrics:
                metrics.observe(decision)
            if options.on_decision:
                options.on_decision(decision)
            if decision.direction != "hold":
                try:
                    await asyncio.to_thread(driver.scale, decision.desired)
                except PipelineError as exc:
                    log.error("autoscale: driver %s failed to scale to %d: %s",
                              driver.name, decision.desired, exc)
        if (options.once or (deadline is not None and time.monotonic() >= deadline)
                or (options.stop is not None and options.stop.is_set())):
            return options.decisions
        pause = max(0.0, options.interval_s - (time.monotonic() - tick))
        if options.stop is None:
            await asyncio.sleep(pause)
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(options.stop.wait(), pause)


async def run_with_reader(autoscaler: Autoscaler, driver: ScaleDriver, reader: LagReader,
                          options: LoopOptions, metrics: AutoscaleMetrics | None = None) -> list[Decision]:
    """`run` with a broker-backed lag reader opened for the whole loop."""
    async with reader:
        return await run(autoscaler, driver, reader, options, metrics)
