"""The operator page's pure pieces: metrics parsing, redaction of dead letters, last positions."""

from __future__ import annotations

import orjson

from pipeline.core.events import encode_frame
from pipeline.tools.ui.collect import (
    OPERATOR_POLICY,
    by_label,
    dead_letter_example,
    last_positions,
    parse_metrics,
    redact_frame,
    resolve_targets,
    total,
)

VIN = "VF1AB000000000042"
FRAME = {"vin": VIN, "seq": 3, "sent_at": 1_000,
         "samples": {"Vehicle.Speed": {"t": [1, 2], "v": [10.0, 11.0]},
                     "Vehicle.CurrentLocation.Latitude": {"t": [1, 2], "v": [34.02091, 34.02102]},
                     "Vehicle.CurrentLocation.Longitude": {"t": [1, 2], "v": [-6.84161, -6.84170]}}}


def test_metrics_are_summed_by_name_and_label() -> None:
    text = """# TYPE pipeline_readings_total counter
pipeline_readings_total{outcome="kept"} 90.0
pipeline_readings_total{outcome="dropped.spike"} 4.0
# TYPE pipeline_dead_letters_total counter
pipeline_dead_letters_total{reason="bad_json",stage="decode"} 2.0
pipeline_dead_letters_total{reason="missing_field",stage="route:dept.finance"} 1.0
# TYPE other_total counter
other_total 7.0
"""
    samples = parse_metrics(text)
    assert total(samples, "pipeline_readings_total") == 94
    assert total(samples, "pipeline_readings_total", outcome="kept") == 90
    assert by_label(samples, "pipeline_dead_letters_total", "stage", "reason") == {
        "decode:bad_json": 2.0, "route:dept.finance:missing_field": 1.0}
    assert all(name.startswith("pipeline_") for name, _, _ in samples)


def test_frames_are_redacted_as_the_policy_says() -> None:
    hidden = redact_frame(FRAME, OPERATOR_POLICY)
    assert hidden["vin"] == "*************0042"
    assert set(hidden["samples"]) == {"Vehicle.Speed"}
    coarse = redact_frame(FRAME, {"vin": "allowed", "location": "allowed", "location_precision_m": 1000})
    assert coarse["vin"] == VIN
    lat = coarse["samples"]["Vehicle.CurrentLocation.Latitude"]["v"]
    assert lat[0] != 34.02091 and abs(lat[0] - 34.02091) < 0.01
    assert redact_frame(FRAME, {"vin": "allowed", "location": "allowed"}) == FRAME


def test_a_dead_letter_example_is_redacted_by_its_route_or_the_operator_default() -> None:
    headers = [("dlq_stage", b"route:dept.finance"), ("dlq_reason", b"missing_field"),
               ("dlq_error", f"no energy for {VIN}".encode()), ("dlq_topic", b"vehicle.gps.raw"),
               ("dlq_partition", b"1"), ("dlq_offset", b"7")]
    policies = {"dept.finance": {"vin": "forbidden", "location": "forbidden"}}
    ex = dead_letter_example(VIN.encode(), orjson.dumps(FRAME), headers, policies)
    assert ex["stage"] == "route:dept.finance" and ex["from"] == "vehicle.gps.raw[1]@7"
    assert VIN not in orjson.dumps(ex).decode()
    assert ex["value"]["vin"] == "*" * 17 and "Vehicle.CurrentLocation.Latitude" not in ex["value"]["samples"]
    broken = orjson.dumps(FRAME)[:-20]  # bad_json: shown as text, VIN and coordinates masked
    ex = dead_letter_example(None, broken, [("dlq_stage", b"decode"), ("dlq_reason", b"bad_json")], policies)
    assert isinstance(ex["value"], str) and VIN not in ex["value"] and "34.02091" not in ex["value"]
    assert "0042" in ex["value"] and ex["policy"].startswith("operator default")


def test_last_position_of_a_gps_frame() -> None:
    rec = encode_frame("gps", FRAME)
    assert last_positions(rec.value, rec.headers) == (VIN, 2, 34.02102, -6.8417)
    assert last_positions(b"{not json", []) is None
    no_fix = {**FRAME, "samples": {"Vehicle.Speed": FRAME["samples"]["Vehicle.Speed"]}}
    assert last_positions(orjson.dumps(no_fix), []) is None


def test_metrics_targets() -> None:
    assert resolve_targets(["http://w1:9100", "http://w2:9100/metrics"]) == [
        "http://w1:9100/metrics", "http://w2:9100/metrics"]
    assert resolve_targets(["dns:localhost:9100"])[0].endswith(":9100/metrics")
    assert resolve_targets(["dns:no-such-host.invalid:9100"]) == []


def test_a_running_autoscalers_decision_is_read_from_its_metrics() -> None:
    import asyncio
    import socket

    from prometheus_client import CollectorRegistry

    from pipeline.runtime.settings import Settings
    from pipeline.tools.autoscale import AutoscaleMetrics, Decision
    from pipeline.tools.ui.collect import Collector, UiOptions

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = AutoscaleMetrics(CollectorRegistry())
    metrics.observe(Decision(0.0, 12_000, 6, 1, 3, 3, "up", "lag over threshold"))
    metrics.serve(port, addr="127.0.0.1")
    collector = Collector(Settings(), UiOptions(autoscaler=f"http://127.0.0.1:{port}/metrics"))
    running = asyncio.run(collector._running_autoscaler())
    assert running is not None and running["up"]
    assert (running["desired_replicas"], running["current_replicas"], running["total_lag"]) == (3, 1, 12_000)
    assert running["decisions"] == {"up": 1.0, "down": 0.0, "hold": 0.0}
    gone = Collector(Settings(), UiOptions(autoscaler="http://127.0.0.1:1/metrics"))
    assert asyncio.run(gone._running_autoscaler())["up"] is False  # type: ignore[index]
