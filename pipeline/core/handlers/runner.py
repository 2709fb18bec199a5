"""Run every loaded handler on a clean batch, each isolated from the others.

A handler that raises is retried under its policy, then its input records are
dead-lettered (`handler:<name>`, reason `handler_error`). A handler that runs past its
time budget is abandoned (reason `handler_timeout`). Python cannot kill a thread, so a
batch's handlers run one after another in a daemon executor thread while the calling
thread watches each handler's deadline (one thread handoff per batch, not per handler).
On a timeout the stuck thread is abandoned (its late result and state writes are
discarded when it returns), the remaining handlers continue on a fresh thread, and the
handler is quarantined (its input dead-lettered with `handler_timeout`) until that call
returns, so stuck calls never pile up. Other handlers and the worker keep going.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.core.batch import (
    DeadLetter,
    EventBatch,
    Frames,
    RawRecord,
    Readings,
    deterministic_id,
)
from pipeline.core.errors import HandlerError
from pipeline.core.handlers.config import HandlerConfig, load_handler_config
from pipeline.core.handlers.context import BatchView, HandlerContext, HandlerInput, HandlerMetrics
from pipeline.core.handlers.registry import HandlerSpec, Registry
from pipeline.core.handlers.state import StateStore, StateView

log = logging.getLogger("pipeline.core.handlers")

REASON_ERROR = "handler_error"
REASON_TIMEOUT = "handler_timeout"
SILENT_STEP = ":silent"  # appended to the handler's name in the ids of events of a silent batch


@dataclass
class HandlerStats:
    """Counters of one handler (per batch in a result, cumulative in `HandlerRunner.totals`)."""

    calls: int = 0
    rows_in: int = 0
    events_out: int = 0
    errors: int = 0
    timeouts: int = 0
    retries: int = 0
    quarantined: int = 0
    dead_letters: int = 0
    latency_s: float = 0.0
    custom: dict[str, int] = field(default_factory=dict)

    def add(self, other: HandlerStats) -> None:
        self.calls += other.calls
        self.rows_in += other.rows_in
        self.events_out += other.events_out
        self.errors += other.errors
        self.timeouts += other.timeouts
        self.retries += other.retries
        self.quarantined += other.quarantined
        self.dead_letters += other.dead_letters
        self.latency_s += other.latency_s
        for k, v in other.custom.items():
            self.custom[k] = self.custom.get(k, 0) + v


@dataclass
class HandlerRunResult:
    """Events of all handlers (one batch of columns), dead letters and per-handler stats."""

    events: EventBatch
    dead_letters: list[DeadLetter]
    stats: dict[str, HandlerStats]


@dataclass
class _Outcome:
    """What one handler produced in one batch (filled in by the executor thread)."""

    events: EventBatch | None = None
    reason: str = ""  # "" = success, else REASON_ERROR / REASON_TIMEOUT
    error: str = ""
    traceback: str = ""
    attempts: int = 0
    stats: HandlerStats = field(default_factory=HandlerStats)
    inp: HandlerInput | None = None


class _Job:
    """One batch's handlers, run in order by an executor thread; shared with the watcher."""

    def __init__(self, runner: HandlerRunner, specs: list[HandlerSpec], view: BatchView,
                 base: list[EventBatch], quarantined: set[int]) -> None:
        self.runner = runner
        self.specs = specs
        self.view = view
        self.outputs: list[EventBatch] = list(base)
        self.quarantined = quarantined
        self.outcomes: dict[str, _Outcome] = {}
        self.cond = threading.Condition()
        self.index = 0  # handler being run (or next to run)
        self.started = time.perf_counter()
        self.finished = False
        self.abandoned_at: int | None = None  # index of the handler this thread is stuck in

    def run_from(self, start: int) -> None:
        """Executor thread body: handlers start.. in order, until done or abandoned."""
        for i in range(start, len(self.specs)):
            spec = self.specs[i]
            with self.cond:
                if self.abandoned_at is not None:
                    return
                self.index, self.started = i, time.perf_counter()
            outcome, state = self.runner._call(spec, self.view, self.outputs, i in self.quarantined)
            with self.cond:
                if self.abandoned_at is not None:  # timed out meanwhile: drop the late result
                    self.runner._returned(spec.name)
                    return
                if state is not None:
                    state.commit()
                if outcome.events is not None and len(outcome.events):
                    self.outputs.append(outcome.events)
                self.outcomes[spec.name] = outcome
        with self.cond:
            self.finished = True
            self.cond.notify_all()


def traceback_summary(exc: BaseException, limit: int = 4) -> str:
    """The last few frames as `file:line in function`, innermost last."""
    frames = traceback.extract_tb(exc.__traceback__)[-limit:]
    return " > ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in frames)


def assign_ids(events: EventBatch, records: Sequence[RawRecord], handler: str) -> None:
    """Fill empty ids with deterministic_id(topic, partition, offset, handler, i), where i
    counts this handler's events from the same record in emission order."""
    n = len(events)
    if not n:
        return
    ids = events.attrs["id"]
    new_ids = ids.copy()
    seen: dict[int, int] = {}  # record -> events of it so far (emission order)
    for i, (o, has_id) in enumerate(zip(events.origin.tolist(), ids.tolist(), strict=True)):
        k = seen.get(o, 0)
        seen[o] = k + 1
        if not has_id:
            r = records[o]
            new_ids[i] = deterministic_id(r.topic, r.partition, r.offset, handler, k)
    events.attrs["id"] = new_ids


class HandlerRunner:
    """Runs a registry's handlers on each clean batch with isolation, state and stats."""

    def __init__(self, registry: Registry, config: HandlerConfig | None = None,
                 state_store: StateStore | None = None, *, watcher: Any | None = None) -> None:
        self.registry = registry
        self.config = config or HandlerConfig()
        self.state_store = state_store if state_store is not None else StateStore()
        self.watcher = watcher
        self.totals: dict[str, HandlerStats] = {}
        self._executor: _Executor | None = None
        self._stuck: dict[str, threading.Event] = {}  # handler -> set when its late call returns
        self._lock = threading.Lock()
        self._wanted_for: tuple[tuple[HandlerSpec, ...], frozenset[str]] | None = None

    # --- lifecycle ---------------------------------------------------------------------
    def update(self, registry: Registry, config: HandlerConfig | None = None) -> None:
        """Swap in a reloaded registry (and config). A new version of a quarantined handler
        is not quarantined (the old version's stuck call is still discarded)."""
        with self._lock:
            for name in list(self._stuck):
                old = self.registry[name].fn if name in self.registry else None
                if name not in registry or registry[name].fn is not old:
                    del self._stuck[name]
        self.registry = registry
        if config is not None:
            self.config = config

    def close(self) -> None:
        if self._executor is not None:
            self._executor.stop()
            self._executor = None

    def quarantined(self) -> list[str]:
        """Handlers whose timed-out call has not returned yet."""
        with self._lock:
            return [n for n, ev in self._stuck.items() if not ev.is_set()]

    def _returned(self, name: str) -> None:
        with self._lock:
            ev = self._stuck.get(name)
        if ev is not None:
            ev.set()
            log.info("handler %s: the timed-out call returned; its result was discarded", name)

    # --- one batch ---------------------------------------------------------------------
    def run(self, clean: Readings, records: list[RawRecord], *,
            events_in: EventBatch | None = None, watermark: npt.ArrayLike | None = None,
            silent: npt.ArrayLike | None = None) -> HandlerRunResult:
        """Every enabled handler on one clean batch; see the module docstring for failures.

        `events_in` are extra events offered to handlers that consume event types (tests).
        `watermark` (None: unknown) is per vehicle index the event time (epoch ms) up to which
        both ingest topics of its partition have been delivered; handlers read it as
        `batch.watermark`. `silent` are the indexes of vehicles that sent nothing for the idle
        timeout (a batch of their own, made by `silent_batch`); handlers read them as
        `batch.silent`, and every stateful handler is called for them.
        """
        if self.watcher is not None and self.watcher.maybe_check():
            self.update(self.watcher.registry, self.watcher.config)
        specs = [s for s in self.registry.ordered() if self.config.enabled(s.name)]
        if not specs:
            return HandlerRunResult(EventBatch.empty(), [], {})
        view = BatchView(clean, records, wanted=self._wanted(specs),
                         watermark=_watermark(watermark, len(clean.vins)),
                         silent=_silent(silent, clean))
        base = [events_in] if events_in is not None and len(events_in) else []
        with self._lock:
            for name in [n for n, ev in self._stuck.items() if ev.is_set()]:
                del self._stuck[name]
            quarantined = {i for i, s in enumerate(specs) if s.name in self._stuck}
        job = _Job(self, specs, view, base, quarantined)
        self._start(job, 0)
        while True:
            with job.cond:
                if job.finished:
                    break
                i = job.index
                remaining = job.started + specs[i].timeout_ms / 1000.0 - time.perf_counter()
                if remaining > 0:
                    job.cond.wait(remaining)
                    continue
                job.abandoned_at = i  # handler i is past its budget: give up on this thread
            self._timed_out(specs[i], job, i)
            job = self._continue(job, i + 1)
            self._start(job, i + 1)
        return self._result(specs, job)

    def _wanted(self, specs: list[HandlerSpec]) -> frozenset[str]:
        """Every signal some handler of the batch reads (selected together once per batch)."""
        key = tuple(specs)
        if self._wanted_for is None or len(self._wanted_for[0]) != len(key) or any(
                a is not b for a, b in zip(self._wanted_for[0], key, strict=True)):
            self._wanted_for = (key, frozenset(n for s in specs for n in s.all_signals()))
        return self._wanted_for[1]

    def _start(self, job: _Job, start: int) -> None:
        if self._executor is None or not self._executor.alive:
            self._executor = _Executor()
        self._executor.submit(job, start)

    def _continue(self, job: _Job, start: int) -> _Job:
        nxt = _Job(self, job.specs, job.view, job.outputs, job.quarantined)
        nxt.outcomes = job.outcomes
        nxt.index = min(start, len(job.specs) - 1) if job.specs else 0
        if start >= len(job.specs):
            nxt.finished = True
        self._executor = None  # the old thread is stuck; the next start makes a new one
        return nxt

    def _timed_out(self, spec: HandlerSpec, job: _Job, i: int) -> None:
        with self._lock:
            self._stuck[spec.name] = threading.Event()
        outcome = _Outcome(reason=REASON_TIMEOUT, attempts=1,
                           error=f"HandlerTimeout: exceeded {spec.timeout_ms} ms; the call is abandoned "
                                 f"and the handler quarantined until it returns")
        outcome.stats.calls = 1
        outcome.stats.timeouts = outcome.stats.errors = 1
        outcome.stats.latency_s = time.perf_counter() - job.started
        outcome.inp = HandlerInput(job.view, spec, _events_for(spec, job.outputs))
        outcome.stats.rows_in = outcome.inp.rows_in()
        job.outcomes[spec.name] = outcome
        log.error("handler %s (%s) ran past its %d ms budget; its output is discarded and it is "
                  "quarantined until the call returns", spec.name, spec.where, spec.timeout_ms)

    def _call(self, spec: HandlerSpec, view: BatchView, outputs: list[EventBatch],
              quarantined: bool) -> tuple[_Outcome, StateView | None]:
        """Run one handler with retries (executor thread); returns its outcome and state to commit."""
        out = _Outcome()
        st = out.stats
        inp = out.inp = HandlerInput(view, spec, _events_for(spec, outputs))
        st.rows_in = inp.rows_in()
        if st.rows_in == 0 and not (spec.state and len(view.silent)):
            return out, None  # nothing to do; a stateful handler still hears of silent vehicles
        if quarantined:
            st.quarantined = 1
            out.reason = REASON_TIMEOUT
            out.error = (f"HandlerTimeout: quarantined, an earlier call is still running past its "
                         f"{spec.timeout_ms} ms budget")
            return out, None
        cfg = self.config.for_handler(spec.name, spec.defaults)
        while True:
            out.attempts += 1
            st.calls += 1
            state = StateView(self.state_store, spec.name) if spec.state else None
            ctx = HandlerContext(spec, view, config=cfg, zones=self.config.zones, state=state)
            t0 = time.perf_counter()
            try:
                events = _invoke(spec, inp, ctx)
                _check_output(events, spec, len(view.records))
            except Exception as exc:  # noqa: BLE001 - any handler failure is isolated
                st.latency_s += time.perf_counter() - t0
                st.errors += 1
                if out.attempts <= spec.retries and not isinstance(exc, HandlerError):
                    st.retries += 1
                    log.warning("handler %s failed (%s: %s); retry %d of %d", spec.name,
                                type(exc).__name__, exc, out.attempts, spec.retries)
                    continue
                out.reason, out.error = REASON_ERROR, f"{type(exc).__name__}: {exc}"
                out.traceback = traceback_summary(exc)
                log.error("handler %s failed after %d attempt(s): %s [%s]", spec.name, out.attempts,
                          out.error, out.traceback)
                return out, None
            st.latency_s += time.perf_counter() - t0
            _merge_metrics(st, ctx.metrics)
            # events about silence derive from a record that earlier events of this handler
            # came from too: a step name of their own keeps their ids apart
            assign_ids(events, view.records, f"{spec.name}{SILENT_STEP}" if len(view.silent) else spec.name)
            out.events = events
            st.events_out = len(events)
            return out, state

    def _result(self, specs: list[HandlerSpec], job: _Job) -> HandlerRunResult:
        outputs: list[EventBatch] = []
        dead: list[DeadLetter] = []
        stats: dict[str, HandlerStats] = {}
        for spec in specs:
            out = job.outcomes.get(spec.name)
            if out is None:
                continue
            stats[spec.name] = out.stats
            if out.reason:
                letters = self._dead_letters(spec, out)
                out.stats.dead_letters = len(letters)
                dead.extend(letters)
            elif out.events is not None and len(out.events):
                outputs.append(out.events)
            total = self.totals.get(spec.name)
            if total is None:
                total = self.totals[spec.name] = HandlerStats()
            total.add(out.stats)
        return HandlerRunResult(EventBatch.concat(outputs), dead, stats)

    def _dead_letters(self, spec: HandlerSpec, out: _Outcome) -> list[DeadLetter]:
        assert out.inp is not None
        detail = {"handler": spec.name, "source": spec.where, "attempts": out.attempts,
                  "traceback": out.traceback}
        return [DeadLetter(out.inp.records[i], f"handler:{spec.name}", out.reason, out.error, detail)
                for i in out.inp.input_records().tolist()]


class _Executor:
    """A daemon thread running batch jobs; abandoned (and replaced) when a handler hangs."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[_Job, int] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="handlers", daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def _loop(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, start = item
            try:
                job.run_from(start)
            except BaseException:  # noqa: BLE001 - never leave the watcher waiting
                log.exception("handler executor failed")
                with job.cond:
                    job.finished = True
                    job.cond.notify_all()
                    stuck = job.abandoned_at
                if stuck is not None:
                    job.runner._returned(job.specs[stuck].name)
            if job.abandoned_at is not None:
                return  # this thread was given up on; a fresh one serves the next batch

    def submit(self, job: _Job, start: int) -> None:
        self._jobs.put((job, start))

    def stop(self) -> None:
        self._jobs.put(None)


def _events_for(spec: HandlerSpec, outputs: list[EventBatch]) -> EventBatch | None:
    """The events of this batch so far that the handler consumes.

    The same as concatenating `outputs` (`EventBatch.concat`) and keeping the rows of the
    consumed types, columns, dtypes and presence masks included, but only the kept rows
    are copied.
    """
    if not spec.events or not outputs:
        return None
    wanted = set(spec.events)
    parts = [b for b in outputs if len(b)]
    masks: list[np.ndarray] = []
    kept: list[int] = []
    for b in parts:
        types = b.attrs["type"].tolist()
        m = np.fromiter((t in wanted for t in types), dtype=bool, count=len(types))
        masks.append(m)
        kept.append(int(m.sum()))
    if not any(kept):
        return None  # nothing it consumes so far
    if len(parts) == 1:
        return parts[0].take(masks[0])
    return _concat_rows(parts, masks, kept)


def _concat_rows(parts: list[EventBatch], masks: list[np.ndarray], kept: list[int]) -> EventBatch:
    """`EventBatch.concat(parts).take(np.concatenate(masks))` without copying the dropped rows:
    column order, dtypes (from every part) and presence masks come out the same."""
    attr_names = list(dict.fromkeys(k for b in parts for k in b.attrs))
    data_names = list(dict.fromkeys(k for b in parts for k in b.data))
    live = [(b, m, n) for b, m, n in zip(parts, masks, kept, strict=True) if n]

    def column(getter: str, name: str) -> np.ndarray:
        kinds = [getattr(b, getter)[name] for b in parts if name in getattr(b, getter)]
        dtype = np.result_type(*kinds) if all(k.dtype != object for k in kinds) else np.dtype(object)
        chunks = []
        for b, m, n in live:
            src = getattr(b, getter)
            if name in src:
                chunks.append(src[name][m].astype(dtype, copy=False))
            else:
                chunks.append(np.full(n, None, dtype=object) if dtype == np.dtype(object) else np.zeros(n, dtype=dtype))
        return np.concatenate(chunks)

    attrs = {k: column("attrs", k) for k in attr_names}
    data = {k: column("data", k) for k in data_names}
    present: dict[str, np.ndarray] = {}
    for name in data_names:
        if all(name in b.data and name not in b.present for b in parts):
            continue
        present[name] = np.concatenate([b.is_present(name)[m] for b, m, _ in live])
    return EventBatch(attrs=attrs, data=data, present=present,
                      origin=np.concatenate([b.origin[m] for b, m, _ in live]))


def silent_batch(vins: Sequence[str], records: Sequence[RawRecord], *,
                 signal_names: Sequence[str] = ()) -> Readings:
    """The clean batch that tells handlers vehicles fell silent: no readings, `vins` as given,
    and one frame per vehicle pointing at `records[i]`, the last frame seen of `vins[i]`.

    Events about the silence take that record as their origin (deterministic ids, and
    `batch.first_record(v)` finds it). Pass it to `HandlerRunner.run(..., silent=
    np.arange(len(vins)))`. `signal_names` is the catalog's list, if the caller has it.
    """
    n = len(vins)
    if len(records) != n:
        raise ValueError(f"silent_batch: {n} vehicles but {len(records)} records (one last frame each)")
    if len(set(vins)) != n:
        raise ValueError("silent_batch: a vehicle is listed twice")
    received = np.array([r.timestamp_ms for r in records], dtype=np.int64)
    frames = Frames(record=np.arange(n, dtype=np.int64), vehicle=np.arange(n, dtype=np.int32),
                    seq=np.zeros(n, np.int64), sent_at=received.copy(), received_at=received,
                    n_readings=np.zeros(n, np.int64))
    out = Readings.empty(signal_names)
    out.vins = list(vins)
    out.frames = frames
    return out


def _watermark(watermark: npt.ArrayLike | None, n_vins: int) -> npt.NDArray[np.int64] | None:
    if watermark is None:
        return None
    wm = np.asarray(watermark)
    if wm.ndim != 1 or wm.shape[0] != n_vins or (wm.shape[0] and wm.dtype.kind not in "iu"):
        raise ValueError(f"watermark: expected {n_vins} integer event times (one per vehicle), "
                         f"got shape {wm.shape} of {wm.dtype}")
    return wm.astype(np.int64, copy=False)


def _silent(silent: npt.ArrayLike | None, clean: Readings) -> npt.NDArray[np.int64]:
    if silent is None:
        return _NO_VEHICLES
    sv = np.asarray(silent)
    if not sv.shape[0]:
        return _NO_VEHICLES
    if sv.ndim != 1 or sv.dtype.kind not in "iu":
        raise ValueError(f"silent: expected vehicle indexes, got shape {sv.shape} of {sv.dtype}")
    sv = np.unique(sv.astype(np.int64))
    if sv[0] < 0 or sv[-1] >= len(clean.vins):
        raise ValueError(f"silent: vehicle index outside 0..{len(clean.vins) - 1}")
    if len(clean) and np.isin(clean.vehicle, sv).any():
        raise ValueError("silent: a silent vehicle has readings in the batch")
    return sv


_NO_VEHICLES: npt.NDArray[np.int64] = np.empty(0, np.int64)
_NO_VEHICLES.flags.writeable = False


def _invoke(spec: HandlerSpec, inp: HandlerInput, ctx: HandlerContext) -> EventBatch:
    ret = spec.fn(inp, ctx)
    out = ctx.collected()
    if ret is None:
        return out
    if not isinstance(ret, EventBatch):
        raise HandlerError(f"handler {spec.name} returned {type(ret).__name__}, expected EventBatch or None")
    if len(ret):
        if "source" not in ret.attrs or not len(ret.attrs["source"]):
            ret.attrs["source"] = np.full(len(ret), ctx.source, dtype=object)
        out = EventBatch.concat([out, ret])
    return out


def _check_output(out: EventBatch, spec: HandlerSpec, n_records: int) -> None:
    if not len(out):
        return
    types = {str(t) for t in set(out.attrs["type"].tolist())}
    undeclared = types - set(spec.emits)
    if undeclared:
        raise HandlerError(f"emitted undeclared event type(s): {', '.join(sorted(undeclared))}")
    if out.origin.min() < 0 or out.origin.max() >= n_records:
        raise HandlerError("event origin outside the batch's records")


def _merge_metrics(st: HandlerStats, metrics: HandlerMetrics) -> None:
    for k, v in metrics.items():
        st.custom[k] = st.custom.get(k, 0) + v


def build_runner(functions_dir: Path, *, catalog: Any | None = None, state_store: StateStore | None = None,
                 watch: bool = True) -> HandlerRunner:
    """A runner over every handler in `functions_dir` (and its handlers.yaml), reloading changed
    files between batches when `watch` is set."""
    from pipeline.core.handlers.loader import FunctionsWatcher, load_functions

    names = list(catalog.names) if catalog is not None else None
    if watch:
        watcher = FunctionsWatcher(functions_dir, catalog_names=names)
        return HandlerRunner(watcher.registry, watcher.config, state_store, watcher=watcher)
    registry = load_functions(functions_dir, catalog_names=names)
    return HandlerRunner(registry, load_handler_config(functions_dir / "handlers.yaml"), state_store)
