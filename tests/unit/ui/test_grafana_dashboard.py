"""The Grafana dashboard and its provisioning: the JSON loads against a schema of Grafana's dashboard
model, every metric it queries exists, and the compose profile's files agree with each other."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

from pipeline.runtime.settings import REPO_ROOT

MONITORING = REPO_ROOT / "pipeline" / "tools" / "ui" / "monitoring"

# Grafana's dashboard model (schemaVersion 39), the parts provisioning and these panels rely on.
DATASOURCE = {"type": "object", "required": ["type", "uid"],
              "properties": {"type": {"const": "prometheus"}, "uid": {"type": "string", "minLength": 1}}}
DASHBOARD_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "time", "refresh"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "version": {"type": "integer"},
        "refresh": {"type": "string", "pattern": "^[0-9]+[smh]$"},
        "time": {"type": "object", "required": ["from", "to"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "templating": {"type": "object", "required": ["list"]},
        "panels": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["id", "type", "title", "gridPos", "targets", "datasource"],
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "type": {"enum": ["timeseries", "stat", "table", "gauge", "bargauge"]},
                "title": {"type": "string", "minLength": 1},
                "datasource": DATASOURCE,
                "gridPos": {"type": "object", "required": ["h", "w", "x", "y"], "properties": {
                    "h": {"type": "integer", "minimum": 1}, "w": {"type": "integer", "minimum": 1, "maximum": 24},
                    "x": {"type": "integer", "minimum": 0, "maximum": 23}, "y": {"type": "integer", "minimum": 0}}},
                "targets": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["refId", "expr"],
                    "properties": {"refId": {"type": "string", "pattern": "^[A-Z]$"},
                                   "expr": {"type": "string", "minLength": 1}, "datasource": DATASOURCE}}},
            }}},
    },
}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((MONITORING / "pipeline-dashboard.json").read_text())


def metric_names() -> set[str]:
    import pipeline.runtime.metrics  # noqa: F401 - registers the workers' metrics in the default registry
    from pipeline.tools.autoscale import AutoscaleMetrics

    names: set[str] = set()
    for registry in (REGISTRY, AutoscaleMetrics(CollectorRegistry()).registry):
        # every series name a collector exposes (`_total`, `_bucket`, ...), labelled or not yet
        names |= set(registry._names_to_collectors)
    return names


def test_the_dashboard_matches_the_schema(dashboard: dict) -> None:
    jsonschema.Draft7Validator(DASHBOARD_SCHEMA).validate(dashboard)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in dashboard["panels"]:  # panels tile the 24-column grid without overlapping
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & area, f"{p['title']} overlaps another panel"
        cells |= area


def test_a_broken_dashboard_fails_the_schema(dashboard: dict) -> None:
    broken = json.loads(json.dumps(dashboard))
    broken["panels"][0]["gridPos"]["w"] = 30
    del broken["panels"][1]["targets"]
    errors = list(jsonschema.Draft7Validator(DASHBOARD_SCHEMA).iter_errors(broken))
    assert len(errors) == 2


def test_every_queried_metric_exists(dashboard: dict) -> None:
    known = metric_names()
    used = {m for p in dashboard["panels"] for t in p["targets"]
            for m in re.findall(r"\b((?:pipeline|autoscaler)_[a-z_]+)\b", t["expr"])}
    assert len(used) >= 12
    assert used <= known, sorted(used - known)


def test_provisioning_and_compose_agree(dashboard: dict) -> None:
    datasource = yaml.safe_load((MONITORING / "grafana-datasource.yml").read_text())["datasources"][0]
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {datasource["uid"]}
    prometheus = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {j["job_name"] for j in prometheus["scrape_configs"]}
    assert {re.search(r'job="([^"]+)"', t["expr"]).group(1)  # type: ignore[union-attr]
            for p in dashboard["panels"] for t in p["targets"] if "job=" in t["expr"]} <= jobs
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    provider = yaml.safe_load((MONITORING / "grafana-dashboards.yml").read_text())["providers"][0]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./pipeline/tools/ui/monitoring/pipeline-dashboard.json"].startswith(provider["options"]["path"])
    for source in mounts:
        assert (REPO_ROOT / source).exists(), source
    assert compose["services"]["prometheus"]["profiles"] == grafana["profiles"] == ["monitoring"]
