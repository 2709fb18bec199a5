"""Route failures as events: what a route could not let out, as its routed CloudEvents.

A routed event that cannot be delivered (a target refused it after the route's `retry`)
or must not be (it breaks the route's data policy) goes to the route's `dead_letter`
target as the routed CloudEvent itself, once, with extension attributes saying why:

- `dlqroute`: the route; `dlqtarget`: the target that failed (`-` for a policy violation);
- `dlqreason`: `policy_violation`, `webhook_http_<status>`, `topic_error`, ...;
- `dlqattempts`: delivery attempts made; `dlqerror`: human detail (never a redacted value).

So one failing route no longer puts a copy of the source frame in the dead-letter topic
per event, and `pipeline dlq replay --route R` can send those events to that route's
targets alone (same ids: consumers drop duplicates). For a policy violation the offending
fields are replaced by `"<redacted>"` before the event is kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.core.batch import BoolArray, EventBatch, IntArray
from pipeline.core.rules.columns import DATA_PREFIX

ROUTE = "dlqroute"
TARGET = "dlqtarget"
REASON = "dlqreason"
ATTEMPTS = "dlqattempts"
ERROR = "dlqerror"
FAILURE_ATTRIBUTES = (ROUTE, TARGET, REASON, ATTEMPTS, ERROR)
REDACTED = "<redacted>"
NO_TARGET = "-"


def failure_events(events: EventBatch, rows: IntArray | BoolArray, *, route: str, target: str, reason: str,
                   attempts: int = 0, error: str | Sequence[str] = "") -> EventBatch:
    """The routed events at `rows`, marked as failures of `route` at `target` (a copy);
    `error` is one text for all of them or one per row."""
    out = events.take(rows)
    n = len(out)
    out.attrs[ROUTE] = np.full(n, route, dtype=object)
    out.attrs[TARGET] = np.full(n, target, dtype=object)
    out.attrs[REASON] = np.full(n, reason, dtype=object)
    out.attrs[ATTEMPTS] = np.full(n, int(attempts), dtype=np.int64)
    if isinstance(error, str):
        out.attrs[ERROR] = np.full(n, error[:1000], dtype=object)
    else:
        out.attrs[ERROR] = np.array([e[:1000] for e in error], dtype=object)
    return out


def redact(events: EventBatch, rows: BoolArray, path: str) -> None:
    """Replace a field's value by `"<redacted>"` in `rows` (in place; other rows keep theirs)."""
    if path.startswith(DATA_PREFIX):
        key = path[len(DATA_PREFIX):]
        for name in [k for k in events.data if k == key or k.startswith(key + ".")]:
            column = events.data[name].astype(object)
            column[rows] = REDACTED
            events.data[name] = column
    elif path in events.attrs:
        column = events.attrs[path].astype(object)
        column[rows] = REDACTED
        events.attrs[path] = column


def is_failure_of(attributes: Mapping[str, Any], route: str) -> bool:
    """True if a dead-letter event is one `route` could not let out."""
    return attributes.get(ROUTE) == route


def as_routed(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The routed event's own attributes, without the failure ones (for a replay)."""
    return {k: v for k, v in attributes.items() if k not in FAILURE_ATTRIBUTES}
