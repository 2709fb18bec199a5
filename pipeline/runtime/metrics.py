"""Prometheus metrics of a worker (one registry per process, served on METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

FRAMES_IN = Counter("pipeline_frames_in_total", "Frames (Kafka records) consumed", ["topic"])
FRAMES_DEAD = Counter("pipeline_frames_dead_lettered_total", "Frames dead-lettered at decode", ["reason"])
READINGS_IN = Counter("pipeline_readings_in_total", "Readings decoded from frames", ["topic"])
READINGS_OUT = Counter(
    "pipeline_readings_total", "Readings by outcome (kept, repaired.*, dropped.*)", ["outcome"]
)
EVENTS_DERIVED = Counter("pipeline_events_derived_total", "Events emitted by handlers", ["type"])
EVENTS_ROUTED = Counter("pipeline_events_routed_total", "Events delivered per route", ["route"])
EVENTS_UNMATCHED = Counter("pipeline_events_unmatched_total", "Events no route matched")
DEAD_LETTERS = Counter("pipeline_dead_letters_total", "Dead letters by stage and reason", ["stage", "reason"])
HANDLER_CALLS = Counter("pipeline_handler_calls_total", "Handler invocations", ["handler"])
HANDLER_ERRORS = Counter("pipeline_handler_errors_total", "Handler failures (after retries)", ["handler"])
HANDLER_ROWS = Counter("pipeline_handler_rows_in_total", "Readings given to a handler", ["handler"])
HANDLER_EVENTS = Counter("pipeline_handler_events_out_total", "Events emitted by a handler", ["handler"])
HANDLER_SECONDS = Histogram("pipeline_handler_seconds", "Handler latency per batch", ["handler"])
BATCH_SECONDS = Histogram(
    "pipeline_batch_seconds", "Core processing time per batch", ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SINK_SECONDS = Histogram(
    "pipeline_sink_seconds", "Time to make outputs durable", ["sink"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SINK_RETRIES = Counter("pipeline_sink_retries_total", "Failed writes that were retried", ["sink"])
OBJECTS_WRITTEN = Counter("pipeline_objects_written_total", "Objects PUT to the store", ["prefix"])
SEGMENTS_FLUSHED = Counter("pipeline_segments_flushed_total", "Segments flushed and committed")
CONSUMER_LAG = Gauge("pipeline_consumer_lag", "Records behind the high watermark", ["topic", "partition"])
BACKPRESSURE = Gauge("pipeline_backpressure", "1 while a sink is failing and consumption waits")
RELOADS = Counter("pipeline_reloads_total", "Hot reloads of rules or functions", ["what", "result"])
INGEST_WAIT = Counter(
    "pipeline_ingest_wait_seconds_total",
    "Time the batch assembler waited, by what for: slots (in-flight bound, i.e. backpressure), "
    "records (nothing ready), core (the previous batch still in the core)", ["waiting_for"])
CLEAN_HISTORY_EVICTED = Counter(
    "pipeline_clean_history_evicted_total",
    "Vehicles whose cleaning history was forgotten because the worker held more than state.max_vehicles")
ALIGN_IDLE_RELEASES = Counter(
    "pipeline_align_idle_releases_total", "Partitions released without waiting for a quiet ingest topic")
E2E_LATENCY = Histogram(
    "pipeline_end_to_end_seconds", "From record timestamp to outputs durable (record time)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)


def serve(port: int) -> None:
    """Expose /metrics on `port` (0 disables)."""
    if port:
        start_http_server(port, addr="0.0.0.0")
