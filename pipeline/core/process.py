"""The pure core: decode -> clean -> handlers -> rules, as a function of one batch.

It imports nothing from Faust or Kafka, so unit tests and benchmarks run it without a
broker. The worker is a thin adapter around `Core.process`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.batch import DeadLetter, EventBatch, RawRecord, Readings
from pipeline.core.events import decode_records
from pipeline.core.rules.enforce import POLICY_VIOLATION

log = logging.getLogger("pipeline.core.process")


@dataclass(slots=True)
class BatchResult:
    """Everything one batch produced, plus the account of every reading and frame."""

    records: list[RawRecord]
    decoded: Readings  # readings as they came in (decode output)
    clean: Readings  # kept + repaired, canonical units, catalog signal indexes
    repaired: np.ndarray  # bool per clean reading
    outcome: np.ndarray  # int per decoded reading: index into `reasons`
    reasons: list[str]  # "kept", "repaired...", "dropped.<reason>"
    events: EventBatch  # derived events from handlers
    routed: dict[str, EventBatch]  # route -> transformed events for it
    targets: dict[str, list[Any]]  # route -> its targets
    dead_letters: list[DeadLetter]
    unmatched: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    handler_stats: dict[str, Any] = field(default_factory=dict)
    route_result: Any = None  # the router's RouteResult, for webhook delivery at the edge
    route_specs: dict[str, Any] = field(default_factory=dict)  # route -> its spec (retry, dead letter)
    by_record: np.ndarray | None = None  # readings_by_record(), once computed (see slim())
    ok_frames: np.ndarray | None = None  # frames_ok(), once computed

    def readings_by_record(self) -> np.ndarray:
        """Matrix [record, reason] of reading counts, so any subset of records can be accounted."""
        if self.by_record is not None:
            return self.by_record
        n_rec, n_reason = len(self.records), max(len(self.reasons), 1)
        if not len(self.decoded):
            return np.zeros((n_rec, n_reason), dtype=np.int64)
        rec = self.decoded.frames.record[self.decoded.frame]
        flat = np.bincount(rec * n_reason + self.outcome.astype(np.int64), minlength=n_rec * n_reason)
        return flat.reshape(n_rec, n_reason)

    def frames_ok(self) -> np.ndarray:
        """Bool per record: decoded into a frame (the rest were dead-lettered at decode)."""
        if self.ok_frames is not None:
            return self.ok_frames
        ok = np.zeros(len(self.records), dtype=bool)
        ok[self.decoded.frames.record] = True
        return ok

    @classmethod
    def without_readings(cls, records: list[RawRecord], *, clean: Readings | None = None,
                         dead_letters: list[DeadLetter] | None = None) -> BatchResult:
        """A result that accounts no reading: an idle signal's (its records were counted by the
        batch that held them) or a batch the core failed on as a whole (all dead-lettered)."""
        empty = Readings.empty()
        return cls(records=records, decoded=empty, clean=empty if clean is None else clean,
                   repaired=np.zeros(0, dtype=bool), outcome=np.zeros(0, dtype=np.int8), reasons=["kept"],
                   events=EventBatch.empty(), routed={}, targets={}, dead_letters=dead_letters or [])

    def slim(self) -> BatchResult:
        """What the output plan needs of this result, small enough to send to another
        process: the decoded readings become their per-record account, records keep their
        place but lose value and headers (except those dead-lettered, sent whole), and the
        router's result keeps only its failed events."""
        keep = {id(dl.record) for dl in self.dead_letters}
        records = [r if id(r) in keep else r.without_payload() for r in self.records]
        failed = getattr(self.route_result, "failed", None)
        return BatchResult(
            records=records, decoded=Readings.empty(), clean=self.clean, repaired=self.repaired,
            outcome=np.zeros(0, dtype=np.int8), reasons=self.reasons, events=self.events, routed=self.routed,
            targets=self.targets, dead_letters=self.dead_letters, unmatched=self.unmatched,
            route_result=None if self.route_result is None else SlimRouteResult(failed or {}),
            route_specs=self.route_specs, by_record=self.readings_by_record(), ok_frames=self.frames_ok(),
        )


@dataclass(slots=True)
class SlimRouteResult:
    """The part of a RouteResult the output plan reads: events set aside for dead letters."""

    failed: dict[str, EventBatch]


MAX_EVENT_TIME_MS = 4_102_444_800_000  # 2100-01-01: later (or negative) times are handler bugs


def drop_bad_event_times(events: EventBatch, records: list[RawRecord],
                         dead_letters: list[DeadLetter]) -> EventBatch:
    """Events whose time cannot be a real time are a handler's bug: dead-letter their input
    rather than fail the batch when they are encoded at the edge."""
    if not len(events):
        return events
    t = events.attrs["time"]
    bad = (t < 0) | (t > MAX_EVENT_TIME_MS)
    if not bad.any():
        return events
    for i in np.flatnonzero(bad).tolist():
        dead_letters.append(DeadLetter(
            records[int(events.origin[i])], f"handler:{events.attrs['source'][i]}", "bad_event_time",
            f"{events.attrs['type'][i]} event with time {int(t[i])} (epoch ms) out of range"))
    return events.take(~bad)


def unknown_signal_frames(records: list[RawRecord], decoded: Readings, outcome: np.ndarray,
                          reasons: list[str]) -> list[DeadLetter]:
    """Frames whose every reading is an unknown signal carry nothing usable: dead-letter them
    (their readings stay counted as dropped.unknown_signal). A frame with some known signals
    is processed, and its unknown ones are dropped reading by reading."""
    if "dropped.unknown_signal" not in reasons or not len(decoded):
        return []
    code = reasons.index("dropped.unknown_signal")
    n_frames = len(decoded.frames)
    unknown = np.bincount(decoded.frame, weights=(outcome == code), minlength=n_frames)
    total = np.bincount(decoded.frame, minlength=n_frames)
    out = []
    for f in np.flatnonzero((total > 0) & (unknown == total)).tolist():
        names = sorted({decoded.signal_names[i] for i in decoded.signal[decoded.frame == f].tolist()})
        out.append(DeadLetter(records[int(decoded.frames.record[f])], "clean", "unknown_signal",
                              f"no known signal in the frame: {', '.join(names)[:300]}"))
    return out


NO_WATERMARK = np.iinfo(np.int64).min


def vehicle_watermarks(clean: Readings, records: list[RawRecord],
                       watermarks: Mapping[int, int] | None) -> np.ndarray | None:
    """Per vehicle of `clean.vins`: the watermark of the input partition its frames came from
    (a vehicle's key pins it to one partition); NO_WATERMARK where unknown."""
    if watermarks is None:
        return None
    out = np.full(len(clean.vins), NO_WATERMARK, dtype=np.int64)
    frames = clean.frames
    if not len(frames) or not watermarks:
        return out
    part = np.fromiter((r.partition for r in records), dtype=np.int64, count=len(records))
    by_part = np.full(int(part.max()) + 1, NO_WATERMARK, dtype=np.int64)
    for p, w in watermarks.items():
        if 0 <= p < len(by_part):
            by_part[p] = w
    out[frames.vehicle] = by_part[part[frames.record]]
    return out


class Core:
    """Holds the compiled stages; `process(records)` runs one batch through all of them."""

    def __init__(
        self,
        *,
        catalog: Any,
        cleaner: Any,
        handlers: Any | None,
        router: Any | None,
        max_frame_bytes: int = 1_000_000,
    ) -> None:
        self.catalog = catalog
        self.cleaner = cleaner
        self.handlers = handlers
        self.router = router
        self.max_frame_bytes = max_frame_bytes

    @classmethod
    def from_settings(cls, settings: Any) -> Core:
        """Build every stage from the files in `rules/` and `functions/`."""
        with_handlers, with_rules = settings.handlers_enabled, settings.rules_enabled
        from pipeline.core.catalog import load_catalog
        from pipeline.core.clean import Cleaner, load_cleaning_config

        rules_dir = Path(settings.rules_dir)
        catalog = load_catalog(rules_dir / "signals.yaml")
        cleaner = Cleaner(catalog, load_cleaning_config(rules_dir / "cleaning.yaml"))
        handlers = None
        if with_handlers:
            from pipeline.core.handlers.runner import build_runner

            handlers = build_runner(Path(settings.functions_dir), catalog=catalog)
        router = None
        if with_rules:
            from pipeline.core.rules import Router, load_rules

            router = Router(load_rules(rules_dir / "routes"),
                            hmac_secret=settings.hmac_secret.get_secret_value().encode())
        return cls(catalog=catalog, cleaner=cleaner, handlers=handlers, router=router,
                   max_frame_bytes=settings.max_frame_bytes)

    def process(self, records: list[RawRecord], *, now_ms: int | None = None,
                watermarks: Mapping[int, int] | None = None,
                predecoded: tuple[Readings, list[DeadLetter], float] | None = None) -> BatchResult:
        """Run one batch of raw records through decode, clean, handlers and rules.

        `watermarks` (input partition -> event time both ingest topics have delivered up to,
        from the runtime's alignment) reach handlers per vehicle as `batch.watermark`.
        `predecoded`: what `decode_records` gave for these records elsewhere (the runtime's
        decoder process) and the seconds it took; without it the core decodes them.
        """
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if predecoded is None:
            decoded, dead_letters = decode_records(records, max_frame_bytes=self.max_frame_bytes)
            timings["decode"] = time.perf_counter() - t0
        else:
            decoded, timings["decode"] = predecoded[0], predecoded[2]
            # the dead letters name copies of the records (they crossed a process boundary):
            # point them at this batch's own records, which the output plan matches by identity
            own = {(r.topic, r.partition, r.offset): r for r in records}
            dead_letters = [dataclasses.replace(dl, record=own.get((dl.record.topic, dl.record.partition,
                                                                    dl.record.offset), dl.record))
                            for dl in predecoded[1]]
        t1 = time.perf_counter()

        cleaned = self.cleaner.clean(decoded, now_ms=now_ms)
        dead_letters.extend(unknown_signal_frames(records, decoded, cleaned.outcome, list(cleaned.reasons)))
        t2 = time.perf_counter()
        timings["clean"] = t2 - t1

        events = EventBatch.empty()
        handler_stats: dict[str, Any] = {}
        if self.handlers is not None:
            run = self.handlers.run(cleaned.readings, records,
                                    watermark=vehicle_watermarks(cleaned.readings, records, watermarks))
            events = run.events
            dead_letters.extend(run.dead_letters)
            handler_stats = run.stats
            events = drop_bad_event_times(events, records, dead_letters)
        t3 = time.perf_counter()
        timings["handlers"] = t3 - t2

        result = BatchResult(
            records=records,
            decoded=decoded,
            clean=cleaned.readings,
            repaired=cleaned.repaired,
            outcome=cleaned.outcome,
            reasons=list(cleaned.reasons),
            events=events,
            routed={},
            targets={},
            dead_letters=dead_letters,
            timings=timings,
            handler_stats=handler_stats,
        )
        self._route(result)
        timings["rules"] = time.perf_counter() - t3
        return result

    def silent(self, records: list[RawRecord]) -> BatchResult:
        """An idle signal: the vehicles whose last frames are `records` sent nothing for the
        runtime's `vehicle_idle_timeout_s`. Stateful handlers close what those vehicles had open
        (trips end with reason `silent`); their events are routed like any others. The records
        were accounted for by the batch that held them: the result has no readings."""
        from pipeline.core.handlers.runner import silent_batch

        clean = silent_batch([(r.key or b"").decode("utf-8", "replace") for r in records], records)
        result = BatchResult.without_readings(records, clean=clean)
        if self.handlers is None or not records:
            return result
        t0 = time.perf_counter()
        run = self.handlers.run(clean, records, silent=np.arange(len(records), dtype=np.int64))
        result.dead_letters.extend(run.dead_letters)
        result.handler_stats = run.stats
        result.events = drop_bad_event_times(run.events, records, result.dead_letters)
        t1 = time.perf_counter()
        self._route(result)
        result.timings = {"handlers": t1 - t0, "rules": time.perf_counter() - t1}
        return result

    def _route(self, result: BatchResult) -> None:
        """Route a result's events by the rules. What a route fails to match or transform
        dead-letters its source frames; events that break the route's data policy stay
        routed CloudEvents (`route_result.failed`), bound for the route's dead-letter target."""
        if self.router is None or not len(result.events):
            return
        route_result = self.router.route(result.events)
        result.route_result = route_result
        result.routed, result.targets = route_result.per_route, route_result.targets
        result.unmatched = route_result.unmatched
        ruleset = self.router.ruleset
        result.route_specs = {name: ruleset.get(name).spec for name in {*route_result.per_route, *route_result.failed}}
        for route, origin, reason, error in route_result.dead_letters:
            if route in route_result.failed and reason == POLICY_VIOLATION:
                continue  # the routed events themselves go to the route's dead-letter target
            target = ruleset.get(route).spec.dead_letter
            result.dead_letters.append(DeadLetter(result.records[int(origin)], f"route:{route}", reason, error,
                                                  {"dead_letter_topic": getattr(target, "topic", None)}))
