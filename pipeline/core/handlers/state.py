"""Per-vehicle state of stateful handlers: a small store interface and its in-memory form.

Values are plain dicts that orjson can serialise (numpy scalars are converted on `put`),
bounded in size per key, keyed `handler/vin` so the worker can back the store with a
Faust table whose changelog topic makes state survive restarts and follow partitions.
Handlers see a `StateView` whose writes are applied only when the handler succeeds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from pipeline.core.errors import HandlerError

DEFAULT_MAX_BYTES = 16_384
_DUMP_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class StateTooLarge(HandlerError):
    """A handler tried to store more state for one vehicle than the bound allows."""


def state_key(handler: str, vin: str) -> str:
    """The table key of one handler's state for one vehicle (or grid cell)."""
    return f"{handler}/{vin}"


def split_key(key: str) -> tuple[str, str]:
    handler, _, vin = key.partition("/")
    return handler, vin


def normalise(value: Mapping[str, Any], *, max_bytes: int, where: str = "") -> tuple[dict[str, Any], int]:
    """(plain dict, serialised size): numpy values become Python ones; too large raises."""
    if type(value) is not dict and not isinstance(value, Mapping):
        raise HandlerError(f"state for {where or 'a vehicle'} must be a dict, got {type(value).__name__}")
    try:
        raw = orjson.dumps(value if type(value) is dict else dict(value), option=_DUMP_OPTS)
    except TypeError as exc:
        raise HandlerError(f"state for {where or 'a vehicle'} is not serialisable: {exc}") from exc
    if len(raw) > max_bytes:
        raise StateTooLarge(f"state for {where or 'a vehicle'} is {len(raw)} bytes, limit {max_bytes}")
    return orjson.loads(raw), len(raw)


class StateStore:
    """In-memory state store; the worker subclasses or wraps it with a Faust table.

    `dirty()` hands back what changed since the last call (None = deleted), for the
    adapter to persist; `load(items)` fills the store from persisted `(key, value)` pairs.
    """

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._data: dict[str, dict[str, dict[str, Any]]] = {}  # handler -> vin -> value
        self._dirty: dict[str, dict[str, Any] | None] = {}

    def get(self, handler: str, vin: str) -> dict[str, Any] | None:
        return self._data.get(handler, {}).get(vin)

    def get_many(self, handler: str, vins: Iterable[str]) -> list[dict[str, Any] | None]:
        get = self._data.get(handler, {}).get
        return [get(v) for v in vins]

    def vins(self, handler: str) -> Iterable[str]:
        """Vehicles (or cells) with stored state of one handler (a live view; do not modify)."""
        return self._data.get(handler, {}).keys()

    def count(self, handler: str) -> int:
        return len(self._data.get(handler, ()))

    def put_plain_many(self, handler: str, values: Mapping[str, dict[str, Any] | None]) -> None:
        """`put_plain` for many vehicles of one handler (values already normalised)."""
        data = self._data.setdefault(handler, {})
        dirty = self._dirty
        prefix = handler + "/"
        for vin, value in values.items():
            if value is None:
                if data.pop(vin, None) is not None:
                    dirty[prefix + vin] = None
            else:
                data[vin] = value
                dirty[prefix + vin] = value

    def put(self, handler: str, vin: str, value: Mapping[str, Any] | None) -> None:
        """Store (or with None delete) one vehicle's state; bounded by `max_bytes`."""
        if value is None:
            self.delete(handler, vin)
            return
        plain, _ = normalise(value, max_bytes=self.max_bytes, where=state_key(handler, vin))
        self.put_plain(state_key(handler, vin), plain)

    def put_plain(self, key: str, value: dict[str, Any] | None) -> None:
        """Store a value already normalised by a StateView (no second serialisation)."""
        handler, vin = split_key(key)
        if value is None:
            if self._data.get(handler, {}).pop(vin, None) is not None:
                self._dirty[key] = None
            return
        self._data.setdefault(handler, {})[vin] = value
        self._dirty[key] = value

    def delete(self, handler: str, vin: str) -> None:
        self.put_plain(state_key(handler, vin), None)

    def dirty(self) -> dict[str, dict[str, Any] | None]:
        """Keys changed since the last call and their new values (None = deleted); clears the set."""
        out, self._dirty = self._dirty, {}
        return out

    def load(self, items: Iterable[tuple[str, Mapping[str, Any] | None]]) -> int:
        """Fill from persisted pairs (e.g. a changelog); not marked dirty. Returns the count."""
        n = 0
        for key, value in items:
            handler, vin = split_key(key)
            if value is None:
                self._data.get(handler, {}).pop(vin, None)
            else:
                self._data.setdefault(handler, {})[vin] = dict(value)
            n += 1
        return n

    def keys(self, handler: str | None = None) -> list[str]:
        """Stored keys (`handler/vin`), of one handler or all."""
        handlers = [handler] if handler is not None else list(self._data)
        return [state_key(h, v) for h in handlers for v in self._data.get(h, {})]

    def drop_handler(self, handler: str) -> int:
        """Forget every key of a handler (e.g. removed from functions/); returns the count."""
        keys = self.keys(handler)
        for key in keys:
            self.put_plain(key, None)
        return len(keys)


_DELETED: dict[str, Any] = {}


class StateView:
    """One handler's view of the store during one call; writes apply only on `commit()`."""

    def __init__(self, store: StateStore, handler: str) -> None:
        self._store = store
        self.handler = handler
        self._writes: dict[str, dict[str, Any]] = {}
        self.bytes_written = 0

    def get(self, vin: str) -> dict[str, Any] | None:
        """The vehicle's state (a copy-safe plain dict) or None."""
        w = self._writes.get(vin)
        if w is not None:
            return None if w is _DELETED else w
        got = self._store.get(self.handler, vin)
        return None if got is None else dict(got)

    def get_many(self, vins: Iterable[str]) -> list[dict[str, Any] | None]:
        vins = list(vins)
        out = [None if s is None else dict(s) for s in self._store.get_many(self.handler, vins)]
        if self._writes:
            for i, v in enumerate(vins):
                w = self._writes.get(v)
                if w is not None:
                    out[i] = None if w is _DELETED else w
        return out

    def put(self, vin: str, value: Mapping[str, Any] | None) -> None:
        """Set (None: delete) the vehicle's state; checked for size and serialisability now."""
        if value is None:
            self._writes[vin] = _DELETED
            return
        plain, size = normalise(value, max_bytes=self._store.max_bytes,
                                where=state_key(self.handler, vin))
        self._writes[vin] = plain
        self.bytes_written += size

    def put_many(self, values: Mapping[str, Mapping[str, Any] | None], *, plain: bool = False) -> None:
        """`put` for many vehicles at once (one serialisation pass).

        `plain=True` promises that every value is already what the store would keep: a dict
        of str keys to str, int, float, bool, None and lists or dicts of those, with no NaN,
        infinity or numpy types. Such values are still checked for size and serialisability,
        but are kept as given instead of being rebuilt from their serialised form.
        """
        live = {vin: v for vin, v in values.items() if v is not None}
        for vin, v in values.items():
            if v is None:
                self._writes[vin] = _DELETED
        if not live:
            return
        try:
            parts = [orjson.dumps(v if type(v) is dict else dict(v), option=_DUMP_OPTS) for v in live.values()]
        except TypeError as exc:
            raise HandlerError(f"state of handler {self.handler} is not serialisable: {exc}") from exc
        limit = self._store.max_bytes
        sizes = [len(raw) for raw in parts]
        if max(sizes) > limit:
            vin, size = next((vin, n) for vin, n in zip(live, sizes, strict=True) if n > limit)
            raise StateTooLarge(f"state for {state_key(self.handler, vin)} is {size} bytes, limit {limit}")
        if plain and all(type(v) is dict for v in live.values()):
            self._writes.update(live)  # type: ignore[arg-type]
            self.bytes_written += sum(sizes)
            return
        plain_values = orjson.loads(b"[" + b",".join(parts) + b"]")
        for vin, value, raw in zip(live, plain_values, parts, strict=True):
            if not isinstance(value, dict):
                raise HandlerError(f"state for {state_key(self.handler, vin)} must be a dict")
            self._writes[vin] = value
            self.bytes_written += len(raw)

    def delete(self, vin: str) -> None:
        self._writes[vin] = _DELETED

    @property
    def pending(self) -> int:
        return len(self._writes)

    def known_vins(self) -> list[str]:
        """Vehicles with stored or pending state (may repeat)."""
        return [*self._store.vins(self.handler), *self._writes]

    def count_hint(self) -> int:
        """At most how many vehicles have state (stored plus pending writes)."""
        return self._store.count(self.handler) + len(self._writes)

    def commit(self) -> None:
        if not self._writes:
            return
        if type(self._store).put_plain is StateStore.put_plain:
            self._store.put_plain_many(self.handler, {vin: None if value is _DELETED else value
                                                      for vin, value in self._writes.items()})
        else:  # a store that persists through put_plain sees every key
            for vin, value in self._writes.items():
                self._store.put_plain(state_key(self.handler, vin), None if value is _DELETED else value)
        self._writes = {}

    def discard(self) -> None:
        self._writes = {}
