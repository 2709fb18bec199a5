"""The local services' settings are part of the one settings tree, under their old variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.paths import REPO_ROOT
from pipeline.runtime.settings import Settings
from pipeline.tools.region_services import DEFAULT_TOPICS, RegionServices
from pipeline.tools.services import ServiceSettings

VARIABLES = ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "S3_PORT", "S3_ACCESS_KEY", "S3_SECRET_KEY",
             "SERVICES_TIMEOUT", "PIPELINE_SERVICES_MODE", "PIPELINE_SERVICES_DIR", "PIPELINE_SERVICES_CACHE",
             "REGION_NAMES", "KAFKA_PORT_B", "KAFKA_CONTROLLER_PORT_B", "MIRROR_TOPICS", "MIRROR_GROUPS")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_the_services_defaults() -> None:
    view = ServiceSettings.from_settings(Settings())
    assert view == ServiceSettings(base_dir=REPO_ROOT / ".services", cache_dir=REPO_ROOT / ".services" / "cache",
                                   kafka_port=9092, controller_port=9093, s3_port=9000, access_key="pipeline",
                                   secret_key="pipeline-secret", timeout_s=90.0, mode="auto")
    assert view == ServiceSettings(base_dir=view.base_dir, cache_dir=view.cache_dir)  # the view's own defaults
    layout = RegionServices.from_settings(2, settings=Settings())
    assert layout.names == ("a", "b") and [b.kafka_port for b in layout.brokers] == [9092, 9192]
    assert layout.brokers[1].controller_port == 9193
    assert (layout.topics, layout.groups) == (DEFAULT_TOPICS, ".*")


def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values = {"KAFKA_PORT": "19092", "KAFKA_CONTROLLER_PORT": "19093", "S3_PORT": "19000",
              "S3_ACCESS_KEY": "who", "S3_SECRET_KEY": "hush", "SERVICES_TIMEOUT": "12.5",
              "PIPELINE_SERVICES_MODE": " Local ", "PIPELINE_SERVICES_DIR": str(tmp_path / "s"),
              "PIPELINE_SERVICES_CACHE": str(tmp_path / "jars"), "REGION_NAMES": "eu, us, ap",
              "KAFKA_PORT_B": "29092", "KAFKA_CONTROLLER_PORT_B": "29093", "MIRROR_TOPICS": "route\\..*",
              "MIRROR_GROUPS": "g-.*"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    view = ServiceSettings.from_settings(settings)
    assert view == ServiceSettings(base_dir=tmp_path / "s", cache_dir=tmp_path / "jars", kafka_port=19092,
                                   controller_port=19093, s3_port=19000, access_key="who", secret_key="hush",
                                   timeout_s=12.5, mode="local")
    assert (settings.s3_access_key, settings.s3_secret_key.get_secret_value()) == ("who", "hush")  # the worker's too
    layout = RegionServices.from_settings(2, settings=settings)
    assert layout.names == ("eu", "us") and [b.kafka_port for b in layout.brokers] == [19092, 29092]
    assert layout.brokers[1].controller_port == 29093 and layout.brokers[1].base_dir == tmp_path / "s" / "regions" / "us"
    assert (layout.topics, layout.groups) == ("route\\..*", "g-.*")


def test_an_empty_variable_means_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.setenv(name, "")
    view = ServiceSettings.from_settings(Settings())
    assert (view.kafka_port, view.s3_port, view.timeout_s, view.mode) == (9092, 9000, 90.0, "auto")
    assert (view.access_key, view.secret_key) == ("pipeline", "pipeline-secret")


def test_a_bad_services_variable_stops_the_services_not_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PORT", "tcp://10.0.0.7:9092")  # what Kubernetes sets beside a service `kafka`
    settings = Settings()
    assert settings.kafka_bootstrap  # the worker starts
    with pytest.raises(ConfigError) as err:
        ServiceSettings.from_settings(settings)
    assert err.value.field == "KAFKA_PORT" and "tcp://10.0.0.7:9092" in str(err.value)
    assert settings.redacted()["services"].startswith("invalid: field 'KAFKA_PORT'")


def test_pipeline_config_shows_the_services_without_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_SECRET_KEY", "hush")
    shown = Settings().redacted()
    assert shown["services.kafka_port"] == 9092 and shown["s3_secret_key"] == "**********"
    assert "hush" not in repr(shown)
