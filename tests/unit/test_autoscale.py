"""Autoscaler decisions under a fake clock: prompt up, damped down, cooldown, bounds."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from pipeline.runtime.lag import GroupLag, PartitionLag
from pipeline.tools.autoscale import (
    AutoscaleMetrics,
    Autoscaler,
    ComposeDriver,
    Decision,
    DryRunDriver,
    LoopOptions,
    ScaleDriverError,
    ScalePolicy,
    recommended_replicas,
    run,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


POLICY = ScalePolicy(min_replicas=1, max_replicas=3, lag_threshold=5000, window_s=30, cooldown_s=10)


def make(policy: ScalePolicy = POLICY) -> tuple[Autoscaler, FakeClock]:
    clock = FakeClock()
    return Autoscaler(policy, clock=clock), clock


def follow(scaler: Autoscaler, clock: FakeClock, lags: list[int], partitions: int, current: int,
           step: float = 2.0) -> tuple[list[Decision], int]:
    """Feed a lag series, applying each decision like a driver would."""
    decisions = []
    for lag in lags:
        decision = scaler.decide(lag, partitions, current)
        decisions.append(decision)
        current = decision.desired
        clock.advance(step)
    return decisions, current


def test_rule_is_ceil_of_lag_over_threshold_clamped() -> None:
    assert recommended_replicas(0, 6, POLICY) == 1
    assert recommended_replicas(1, 6, POLICY) == 1
    assert recommended_replicas(5000, 6, POLICY) == 1
    assert recommended_replicas(5001, 6, POLICY) == 2
    assert recommended_replicas(10_001, 6, POLICY) == 3
    assert recommended_replicas(10**9, 6, POLICY) == 3  # max
    assert recommended_replicas(10**9, 2, POLICY) == 2  # partitions
    scale_to_zero = ScalePolicy(min_replicas=0, max_replicas=4, lag_threshold=100)
    assert recommended_replicas(0, 6, scale_to_zero) == 0
    assert recommended_replicas(-5, 6, scale_to_zero) == 0


def test_partition_ceiling_wins_over_min() -> None:
    policy = ScalePolicy(min_replicas=4, max_replicas=8, lag_threshold=10)
    assert recommended_replicas(0, 2, policy) == 2


@given(lag=st.integers(min_value=0, max_value=10**12), partitions=st.integers(min_value=1, max_value=64),
       lo=st.integers(min_value=0, max_value=10), span=st.integers(min_value=0, max_value=20),
       threshold=st.integers(min_value=1, max_value=10**6))
def test_rule_bounds_hold_for_any_input(lag: int, partitions: int, lo: int, span: int, threshold: int) -> None:
    policy = ScalePolicy(min_replicas=lo, max_replicas=max(lo, 1) + span, lag_threshold=threshold)
    replicas = recommended_replicas(lag, partitions, policy)
    assert replicas <= min(policy.max_replicas, partitions)
    assert replicas >= min(policy.min_replicas, partitions)
    assert replicas * threshold >= min(lag, min(policy.max_replicas, partitions) * threshold)


def test_scales_up_on_the_first_observation_over_threshold() -> None:
    scaler, _ = make()
    decision = scaler.decide(12_000, 6, 1)
    assert decision.direction == "up"
    assert decision.desired == 3
    assert decision.recommended == 3
    assert "12000" in decision.reason


def test_never_above_the_partition_count() -> None:
    scaler, clock = make(ScalePolicy(min_replicas=1, max_replicas=10, lag_threshold=100, window_s=5, cooldown_s=0))
    decisions, current = follow(scaler, clock, [10**7] * 20, partitions=2, current=1)
    assert current == 2
    assert max(d.desired for d in decisions) == 2


def test_above_ceiling_goes_down_without_waiting_for_the_window() -> None:
    scaler, _ = make()
    decision = scaler.decide(10**6, 2, 3)  # partitions shrank under three replicas
    assert decision.direction == "down"
    assert decision.desired == 2


def test_down_only_after_the_window() -> None:
    scaler, clock = make()
    # Burst: up to 3, then the lag is gone.
    decisions, current = follow(scaler, clock, [20_000] * 10, partitions=6, current=1)
    assert current == 3
    last_high_at = decisions[-1].at
    decisions, current = follow(scaler, clock, [0] * 40, partitions=6, current=current, step=1.0)
    downs = [d for d in decisions if d.direction == "down"]
    assert downs, "never scaled down"
    first = downs[0]
    # Not before the last high recommendation has left the window, and not a tick later.
    assert first.at - last_high_at > POLICY.window_s
    assert first.at - last_high_at <= POLICY.window_s + 1.0
    assert first.desired == 1
    assert current == 1
    holds = [d for d in decisions if d.at < first.at]
    assert all(d.direction == "hold" and d.desired == 3 for d in holds)
    assert any("stabilising" in d.reason for d in holds)


def test_down_goes_to_the_highest_recommendation_in_the_window() -> None:
    scaler, clock = make(ScalePolicy(min_replicas=1, max_replicas=3, lag_threshold=1000, window_s=10, cooldown_s=0))
    follow(scaler, clock, [5000] * 6, partitions=6, current=1, step=2.0)  # at 3
    # Lag falls to need 2, briefly, then 1: the first step down is to 2, not 1.
    decisions, current = follow(scaler, clock, [1500] * 3 + [0] * 12, partitions=6, current=3, step=2.0)
    downs = [d.desired for d in decisions if d.direction == "down"]
    assert downs == [2, 1]
    assert current == 1


def test_no_scale_down_before_a_whole_window_was_observed() -> None:
    scaler, clock = make()
    decision = scaler.decide(0, 6, 3)  # started with three replicas and no lag
    assert decision.direction == "hold"
    assert "observing" in decision.reason
    clock.advance(POLICY.window_s)
    assert scaler.decide(0, 6, 3).direction == "down"


def test_brief_dip_does_not_scale_down() -> None:
    scaler, clock = make()
    _, current = follow(scaler, clock, [20_000] * 20, partitions=6, current=1)
    assert current == 3
    decisions, current = follow(scaler, clock, [0] * 5 + [20_000] * 10, partitions=6, current=current)
    assert current == 3
    assert all(d.direction == "hold" for d in decisions)


def test_cooldown_blocks_a_second_change() -> None:
    scaler, clock = make(ScalePolicy(min_replicas=1, max_replicas=3, lag_threshold=5000, window_s=0, cooldown_s=10))
    first = scaler.decide(6000, 6, 1)
    assert (first.direction, first.desired) == ("up", 2)
    clock.advance(4)
    blocked = scaler.decide(20_000, 6, 2)
    assert blocked.direction == "hold"
    assert blocked.desired == 2
    assert blocked.recommended == 3
    assert "cooldown" in blocked.reason
    clock.advance(6)
    released = scaler.decide(20_000, 6, 2)
    assert (released.direction, released.desired) == ("up", 3)
    clock.advance(9.9)
    assert scaler.decide(0, 6, 3).direction == "hold"
    clock.advance(0.1)
    assert scaler.decide(0, 6, 3).direction == "down"


def test_min_replicas_respected() -> None:
    policy = ScalePolicy(min_replicas=2, max_replicas=3, lag_threshold=5000, window_s=5, cooldown_s=0)
    scaler, clock = make(policy)
    first = scaler.decide(0, 6, 0)
    assert (first.direction, first.desired) == ("up", 2)
    assert "minimum" in first.reason
    decisions, current = follow(scaler, clock, [50_000] * 3 + [0] * 30, partitions=6, current=2)
    assert current == 2
    assert min(d.desired for d in decisions) == 2


def test_no_partitions_holds() -> None:
    scaler, _ = make()
    decision = scaler.decide(10**6, 0, 2)
    assert decision.direction == "hold"
    assert decision.desired == 2


def test_policy_rejects_contradictions() -> None:
    with pytest.raises(ValueError):
        ScalePolicy(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError):
        ScalePolicy(lag_threshold=0)


def test_metrics_follow_decisions() -> None:
    metrics = AutoscaleMetrics()
    scaler, clock = make()
    metrics.observe(scaler.decide(12_000, 6, 1))
    clock.advance(2)
    metrics.observe(scaler.decide(12_000, 6, 3))
    text = generate_latest(metrics.registry).decode()
    assert "autoscaler_desired_replicas 3.0" in text
    assert "autoscaler_current_replicas 3.0" in text
    assert "autoscaler_total_lag 12000.0" in text
    assert 'autoscaler_decisions_total{direction="up"} 1.0' in text
    assert 'autoscaler_decisions_total{direction="hold"} 1.0' in text
    assert 'autoscaler_decisions_total{direction="down"} 0.0' in text


# --- the loop with a scripted lag source and a recording driver ------------------------------


class ScriptedLag:
    def __init__(self, totals: list[int], partitions: int = 6) -> None:
        self.totals = list(totals)
        self.partitions = partitions

    async def read(self) -> GroupLag:
        total = self.totals.pop(0) if len(self.totals) > 1 else self.totals[0]
        row = PartitionLag("vehicle.sensor.raw", 0, 0, 0, total, total)
        return GroupLag("g", (row,), {"vehicle.sensor.raw": self.partitions})


class RecordingDriver:
    name = "recording"

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.calls: list[int] = []

    def current(self) -> int:
        return self.replicas

    def scale(self, replicas: int) -> None:
        self.calls.append(replicas)
        self.replicas = replicas


def test_loop_acts_on_decisions_and_echoes_them() -> None:
    driver = RecordingDriver(1)
    out = io.StringIO()
    policy = ScalePolicy(min_replicas=1, max_replicas=3, lag_threshold=100, window_s=0, cooldown_s=0)
    options = LoopOptions(interval_s=0.0, duration_s=0.2, echo=out)
    decisions = asyncio.run(run(Autoscaler(policy), driver, ScriptedLag([250, 250, 0]), options))
    assert driver.calls[:2] == [3, 1]
    assert decisions[0].direction == "up"
    assert "direction=up" in out.getvalue()
    assert "lag=250" in out.getvalue()


def test_dry_run_prints_decisions_without_acting() -> None:
    inner = RecordingDriver(1)
    driver = DryRunDriver(inner)
    out = io.StringIO()
    policy = ScalePolicy(min_replicas=1, max_replicas=3, lag_threshold=100, window_s=0, cooldown_s=0)
    options = LoopOptions(interval_s=0.0, duration_s=0.1, echo=out)
    decisions = asyncio.run(run(Autoscaler(policy), driver, ScriptedLag([250, 250, 0]), options))
    assert inner.calls == []
    assert inner.replicas == 1
    assert [d.direction for d in decisions[:3]] == ["up", "hold", "down"]
    assert decisions[1].current == 3  # the dry run follows its own pretend count
    assert "(dry run)" in out.getvalue()


def test_loop_holds_when_lag_cannot_be_read() -> None:
    class Broken:
        async def read(self) -> GroupLag:
            raise OSError("broker down")

    driver = RecordingDriver(2)
    metrics = AutoscaleMetrics()
    decisions = asyncio.run(run(Autoscaler(POLICY), driver, Broken(), LoopOptions(once=True), metrics))
    assert decisions == []
    assert driver.calls == []
    assert "autoscaler_lag_read_errors_total 1.0" in generate_latest(metrics.registry).decode()


# --- compose driver: the exact docker compose invocations ------------------------------------


def fake_docker(tmp_path: Path, ps_output: str, exit_code: int = 0) -> tuple[list[str], Path]:
    calls = tmp_path / "calls.txt"
    script = tmp_path / "docker.py"
    script.write_text(
        "import sys\n"
        f"open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"if 'ps' in sys.argv: sys.stdout.write({ps_output!r})\n"
        f"sys.stderr.write('boom')\nsys.exit({exit_code})\n"
    )
    return [sys.executable, str(script), "compose"], calls


def test_compose_driver_counts_running_containers_and_scales(tmp_path: Path) -> None:
    command, calls = fake_docker(tmp_path, "abc123\ndef456\n\n")
    driver = ComposeDriver(service="worker", command=command, project_dir=tmp_path)
    assert driver.current() == 2
    driver.scale(3)
    lines = calls.read_text().splitlines()
    assert lines[0] == "compose ps --status running -q worker"
    assert lines[1] == "compose up -d --no-recreate --scale worker=3 worker"


def test_compose_driver_failure_is_an_error_naming_the_command(tmp_path: Path) -> None:
    command, _ = fake_docker(tmp_path, "", exit_code=1)
    with pytest.raises(ScaleDriverError, match="exited 1: boom"):
        ComposeDriver(command=command).scale(2)


def test_loop_holds_when_the_driver_cannot_count(tmp_path: Path) -> None:
    command, _ = fake_docker(tmp_path, "", exit_code=1)
    decisions = asyncio.run(run(Autoscaler(POLICY), ComposeDriver(command=command), ScriptedLag([10**6]),
                                LoopOptions(once=True)))
    assert decisions == []
