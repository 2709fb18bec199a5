"""The events a handler consumes: the rows of its types from the batch's earlier outputs."""

from __future__ import annotations

import numpy as np

from pipeline.core.batch import EventBatch
from pipeline.core.handlers.registry import HandlerSpec
from pipeline.core.handlers.runner import _events_for

TYPES = ("fleet.a.one", "fleet.a.two", "fleet.b.three")


def consumer(*events: str) -> HandlerSpec:
    return HandlerSpec(name="consumer", fn=lambda b, c: None, signals=(), events=events, optional=(),
                       emits=("fleet.z.out",), state=False, timeout_ms=1000, retries=0)


def random_batch(rng: np.random.Generator) -> EventBatch:
    n = int(rng.integers(0, 5))
    data: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for name, make in (("f", lambda: rng.normal(size=n)), ("i", lambda: rng.integers(0, 9, n)),
                       ("s", lambda: np.array([f"x{k}" for k in range(n)], dtype=object)),
                       ("b", lambda: rng.random(n) < 0.5), ("i32", lambda: rng.integers(0, 9, n).astype(np.int32))):
        if rng.random() < 0.5:
            data[name] = make()
            if rng.random() < 0.3:
                present[name] = rng.random(n) < 0.5
    kinds = rng.choice(len(TYPES), size=n)
    return EventBatch.build(type=np.array([TYPES[k] for k in kinds], dtype=object), source="/t",
                            vin=[f"V{k}" for k in range(n)], time=rng.integers(0, 100, n),
                            origin=rng.integers(0, 3, n), ids=[""] * n, data=data, present=present)


def reference(spec: HandlerSpec, outputs: list[EventBatch]) -> EventBatch | None:
    so_far = EventBatch.concat(outputs)
    if not len(so_far):
        return None
    mask = np.isin(so_far.attrs["type"], np.asarray(spec.events, dtype=object))
    return so_far.take(mask) if mask.any() else None


def same(a: EventBatch | None, b: EventBatch | None) -> bool:
    if a is None or b is None:
        return a is b
    for x, y in ((a.attrs, b.attrs), (a.data, b.data), (a.present, b.present)):
        if list(x) != list(y):
            return False
        for k in x:
            if x[k].dtype != y[k].dtype or x[k].tolist() != y[k].tolist():
                return False
    return a.origin.dtype == b.origin.dtype and a.origin.tolist() == b.origin.tolist()


def test_consumed_events_match_concatenating_everything_then_selecting() -> None:
    rng = np.random.default_rng(5)
    specs = [consumer("fleet.a.one"), consumer("fleet.a.one", "fleet.b.three"), consumer(*TYPES),
             consumer("fleet.c.none")]
    for _ in range(300):
        outputs = [random_batch(rng) for _ in range(int(rng.integers(0, 5)))]
        for spec in specs:
            assert same(_events_for(spec, outputs), reference(spec, outputs))


def test_a_handler_without_consumed_types_gets_none() -> None:
    rng = np.random.default_rng(1)
    outputs = [random_batch(rng) for _ in range(3)]
    assert _events_for(consumer(), outputs) is None
    assert _events_for(consumer("fleet.a.one"), []) is None
