"""State store: bounded, orjson-plain values, dirty tracking, and writes only on commit."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from pipeline.core.errors import HandlerError
from pipeline.core.handlers.state import StateStore, StateTooLarge, StateView


def test_put_converts_numpy_and_tracks_dirty_keys() -> None:
    store = StateStore()
    store.put("trips", "V1", {"start_t": np.int64(5), "peak": np.float64(1.5), "ok": np.bool_(True),
                              "gone": float("nan")})
    assert store.get("trips", "V1") == {"start_t": 5, "peak": 1.5, "ok": True, "gone": None}
    assert type(store.get("trips", "V1")["start_t"]) is int  # type: ignore[index]
    store.delete("trips", "V1")
    assert store.dirty() == {"trips/V1": None}
    assert store.dirty() == {}


def test_state_larger_than_the_bound_is_rejected() -> None:
    store = StateStore(max_bytes=64)
    with pytest.raises(StateTooLarge):
        store.put("h", "V1", {"xs": list(range(100))})
    assert store.get("h", "V1") is None


def test_non_serialisable_state_is_a_handler_error() -> None:
    with pytest.raises(HandlerError):
        StateStore().put("h", "V1", {"obj": object()})


def test_load_fills_without_marking_dirty() -> None:
    store = StateStore()
    assert store.load([("h/V1", {"a": 1}), ("h/V2", {"a": 2}), ("h/V1", None)]) == 3
    assert store.get("h", "V1") is None and store.get("h", "V2") == {"a": 2}
    assert store.dirty() == {}
    assert store.keys("h") == ["h/V2"]


def test_view_writes_apply_on_commit_only() -> None:
    store = StateStore()
    store.put("h", "V1", {"n": 1})
    store.dirty()
    view = StateView(store, "h")
    view.put("V1", {"n": 2})
    view.put("V2", {"n": 3})
    assert view.get("V1") == {"n": 2}  # the handler sees its own writes
    assert store.get("h", "V1") == {"n": 1}
    view.discard()
    assert store.get("h", "V1") == {"n": 1} and store.dirty() == {}
    view.put("V1", None)
    view.commit()
    assert store.get("h", "V1") is None and store.dirty() == {"h/V1": None}


def test_view_get_many_returns_copies() -> None:
    store = StateStore()
    store.put("h", "V1", {"n": 1})
    got = StateView(store, "h").get_many(["V1", "V9"])
    assert got == [{"n": 1}, None]
    got[0]["n"] = 99  # type: ignore[index]
    assert store.get("h", "V1") == {"n": 1}


def test_commit_of_many_writes_matches_one_by_one_puts() -> None:
    batched, single = StateStore(), StateStore()
    for store in (batched, single):
        store.load([("h/A", {"n": 1}), ("h/B", {"n": 2})])
    view = StateView(batched, "h")
    view.put_many({"A": {"n": 10}, "C": {"n": 3}})
    view.delete("B")
    view.delete("Z")  # never stored: not reported as deleted
    assert view.count_hint() == 2 + 4
    assert sorted(set(view.known_vins())) == ["A", "B", "C", "Z"]
    view.commit()
    single.put("h", "A", {"n": 10})
    single.put("h", "C", {"n": 3})
    single.delete("h", "B")
    single.delete("h", "Z")
    assert batched.dirty() == single.dirty() == {"h/A": {"n": 10}, "h/C": {"n": 3}, "h/B": None}
    assert sorted(batched.keys()) == sorted(single.keys()) == ["h/A", "h/C"]
    assert batched.count("h") == 2


def test_plain_writes_keep_the_values_and_still_check_the_size() -> None:
    values = {"A": {"n": 1, "x": 2.5, "s": "a", "none": None, "xs": [1, 2]}, "B": {"n": 2}}
    plain, normalised = StateStore(), StateStore()
    for store, flag in ((plain, True), (normalised, False)):
        view = StateView(store, "h")
        view.put_many({**values, "C": None}, plain=flag)
        assert view.bytes_written == sum(len(orjson.dumps(v)) for v in values.values())
        view.commit()
    assert plain.dirty() == normalised.dirty() == {"h/A": values["A"], "h/B": values["B"]}
    small = StateView(StateStore(max_bytes=16), "h")
    with pytest.raises(StateTooLarge):
        small.put_many({"A": {"n": 1}, "B": {"xs": list(range(50))}}, plain=True)
    with pytest.raises(HandlerError):
        StateView(StateStore(), "h").put_many({"A": {"obj": object()}}, plain=True)
