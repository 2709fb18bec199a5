"""Every error a user can cause is a PipelineError; the command prints it as one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.core.errors import ConfigError, InputError, PipelineError
from pipeline.runtime.settings import Settings
from pipeline.tools.autoscale import ScalePolicy
from pipeline.tools.contract import ContractError
from pipeline.tools.lake import LakeError
from pipeline.tools.reconcile import ReconcileError
from pipeline.tools.sim.faults import parse_fault_rates
from pipeline.tools.simulate import SimConfig


def test_the_tools_errors_are_pipeline_errors() -> None:
    assert issubclass(ContractError, ConfigError)  # about a route of a rules file
    for error in (LakeError, ReconcileError, InputError):
        assert issubclass(error, PipelineError)


@pytest.mark.parametrize("make", [
    lambda: SimConfig(vehicles=0),
    lambda: SimConfig(start="tuesday"),
    lambda: SimConfig(city="atlantis"),
    lambda: parse_fault_rates("duplicate=lots"),
    lambda: ScalePolicy(min_replicas=3, max_replicas=2),
])
def test_bad_options_are_input_errors(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError):
        make()


def test_a_bad_setting_names_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTITIONS", "0")
    with pytest.raises(ConfigError) as err:
        Settings()
    assert err.value.field == "PARTITIONS" and "(got '0')" in str(err.value)
    monkeypatch.delenv("PARTITIONS")
    monkeypatch.setenv("TOPIC_GPS", "vehicle.sensor.raw")
    with pytest.raises(ConfigError, match="TOPIC_SENSOR and TOPIC_GPS must be different"):
        Settings()


def test_a_secret_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        Settings(PIPELINE_HMAC_SECRET=12345)
    assert "12345" not in str(err.value) and err.value.field == "PIPELINE_HMAC_SECRET"


def test_the_command_prints_a_pipeline_error_as_one_line() -> None:
    out = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "config"], capture_output=True,
                         text=True, env={**os.environ, "PARTITIONS": "0"}, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: field 'PARTITIONS': Input should be greater than or equal to 1 (got '0')"]
