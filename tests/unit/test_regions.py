"""The region model: home rules, worker settings per region, one stream per route."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.runtime.settings import Settings
from pipeline.tools import regions as reg
from pipeline.tools.region_services import RegionServices, mm2_properties
from pipeline.tools.services import ServiceSettings

TWO = {
    "regions": {
        "a": {"kafka_bootstrap": "127.0.0.1:9092", "s3_bucket": "telemetry-a", "app_id": "app-a"},
        "b": {"kafka_bootstrap": "127.0.0.1:9192", "s3_bucket": "telemetry-b", "app_id": "app-b"},
    },
    "home": {"vins": {"VF1EXACT": "b"}, "prefixes": {"VF1": "a", "VF1X": "b", "WVW": "b"}},
}


def test_home_region_by_list_then_longest_prefix_then_hash() -> None:
    regions = reg.Regions.model_validate(TWO)
    assert regions.home_of("VF1EXACT") == "b"  # the list wins over the prefix VF1
    assert regions.home_of("VF1ABC") == "a"
    assert regions.home_of("VF1XYZ") == "b"  # longest prefix
    assert regions.home_of("WVW123") == "b"
    hashed = [regions.home_of(f"ZZZ{i:05d}") for i in range(400)]
    assert set(hashed) == {"a", "b"}  # the hash spreads vehicles over both
    assert hashed == [regions.home_of(f"ZZZ{i:05d}") for i in range(400)]  # and is stable
    assert 120 < hashed.count("a") < 280


def test_default_region_and_split() -> None:
    regions = reg.Regions.model_validate({**TWO, "home": {"default": "b", "prefixes": {"VF1": "a"}}})
    assert regions.split(["VF1A", "XYZ", "VF1B"]) == {"a": ["VF1A", "VF1B"], "b": ["XYZ"]}


def test_rehome_moves_one_vehicle_only() -> None:
    regions = reg.Regions.model_validate(TWO)
    moved = regions.rehome("VF1ABC", "b")
    assert moved.home_of("VF1ABC") == "b"
    assert moved.home_of("VF1DEF") == "a"
    assert regions.home_of("VF1ABC") == "a"  # the original is unchanged
    with pytest.raises(ConfigError, match="unknown region"):
        regions.rehome("VF1ABC", "c")


def test_unknown_region_in_home_rule_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown regions \['c'\]"):
        reg.Regions.model_validate({**TWO, "home": {"prefixes": {"VF1": "c"}}})


def test_worker_env_and_settings_per_region() -> None:
    regions = reg.Regions.model_validate(TWO)
    b = regions.regions["b"]
    assert b.worker_env() == {"KAFKA_BOOTSTRAP": "127.0.0.1:9192", "S3_BUCKET": "telemetry-b",
                              "APP_ID": "app-b"}
    settings = b.settings(Settings())
    assert (settings.kafka_bootstrap, settings.s3_bucket, settings.app_id) == (
        "127.0.0.1:9192", "telemetry-b", "app-b")


def test_without_a_file_there_is_one_region_made_of_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGIONS_FILE", raising=False)
    settings = Settings(kafka_bootstrap="h:1", s3_bucket="bk", app_id="g")
    regions = reg.load(None, settings)
    assert regions.names == ["local"]
    assert regions.home_of("ANY") == "local"
    assert regions.regions["local"].worker_env() == {"KAFKA_BOOTSTRAP": "h:1", "S3_BUCKET": "bk",
                                                     "APP_ID": "g"}


def test_load_file_and_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "regions.yaml"
    path.write_text("regions:\n  a: {kafka_bootstrap: 'x:1', s3_bucket: s, app_id: g}\n")
    assert reg.load(path).names == ["a"]
    path.write_text("regions:\n  a: {kafka_bootstrap: 'x:1'}\n")
    with pytest.raises(ConfigError, match="s3_bucket"):
        reg.load(path)
    with pytest.raises(ConfigError, match="cannot read"):
        reg.load(tmp_path / "missing.yaml")


def test_shipped_local_regions_file_matches_the_local_services() -> None:
    shipped = reg.load(Path(__file__).resolve().parents[2] / "rules" / "regions" / "local.yaml")
    layout = RegionServices.from_settings(2, ServiceSettings(base_dir=Path("/x"), cache_dir=Path("/y")))
    assert shipped.names == list(layout.names)
    assert {n: r.kafka_bootstrap for n, r in shipped.regions.items()} == layout.bootstraps


def test_route_topics_and_origin() -> None:
    assert reg.route_topics("route.x", ["a", "b", "c"], "b") == ["route.x", "a.route.x", "c.route.x"]
    assert reg.origin_of("a.route.x", ["a", "b"]) == "a"
    assert reg.origin_of("route.x", ["a", "b"]) is None


def test_deduplicator_drops_repeats_by_id_within_capacity() -> None:
    seen = reg.Deduplicator(capacity=2)
    assert [seen.first(i) for i in ["x", "y", "x", None, None]] == [True, True, False, True, True]
    assert seen.duplicates == 1
    seen.first("z")  # capacity 2: the oldest ("y") is forgotten ("x" was refreshed)
    assert seen.first("y") is True
    assert reg.event_id([("ce_type", b"t"), ("ce_id", b"abc")]) == "abc"
    assert reg.event_id(None) is None


def test_mm2_config_replicates_both_ways_with_offset_sync() -> None:
    layout = RegionServices.pair(ServiceSettings(base_dir=Path("/x"), cache_dir=Path("/y")),
                                 ("eu", "us"), 9192, 9193)
    text = mm2_properties(layout)
    for line in ("clusters = eu, us", "eu->us.enabled = true", "us->eu.enabled = true",
                 "eu.bootstrap.servers = 127.0.0.1:9092", "us.bootstrap.servers = 127.0.0.1:9192",
                 "sync.group.offsets.enabled = true", "emit.checkpoints.enabled = true",
                 r"topics = route\\..*|pipeline\\.dlq"):
        assert line in text
