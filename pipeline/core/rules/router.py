"""Route a batch of derived events: every route that matches gets its transformed copy.

`Router.route(events)` evaluates each route's compiled predicate over the whole batch,
runs the transform on the matched rows (as columns) and gives the result deterministic
ids, `<event id>/<route name>/<split index>`. Events no route matches are
counted and go to the default route if there is one. Rules are swapped with
`Router.update` between batches: a batch is routed entirely by the rules it started with.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.batch import BoolArray, EventBatch, IntArray
from pipeline.core.errors import ConfigError
from pipeline.core.rules.columns import Columns
from pipeline.core.rules.enforce import (
    POLICY_VIOLATION,
    PolicyGuard,
    VinFinder,
    Violation,
    restricts,
    violating_rows,
)
from pipeline.core.rules.failures import NO_TARGET, failure_events, redact
from pipeline.core.rules.loader import CompiledRoute, RuleSet
from pipeline.core.rules.schema import DEFAULT_HMAC_KEY_ENV, Target
from pipeline.core.rules.transform import Context, Frame, deterministic_ids

log = logging.getLogger(__name__)

TRANSFORM_ERROR = "transform_error"
MATCH_ERROR = "match_error"


@dataclass
class RouteResult:
    """What routing one batch produced.

    - `per_route`: transformed events per route (routes with no output are absent);
    - `targets`: where each route in `per_route` delivers;
    - `unmatched`: events no route matched (routed to the default route if configured);
    - `dead_letters`: (route, origin index, reason, error) per event a route could not handle;
    - `dead_letter_events`: those events as they entered the route, by route;
    - `counts`: output events per route (every route in the rules, zero included);
    - `parts`: split index of every row of `per_route`;
    - `version`: digest of the rules used;
    - `policy_violations`: events taken out of a route's output because a value broke the
      route's data policy (they are in `dead_letters` with reason `policy_violation`);
    - `failed`: those events as routed CloudEvents for the route's dead-letter target, the
      offending fields redacted, marked with the `dlq*` attributes of `failures.py`;
    - `policy_seconds`: time the value checks of the data policies took in this batch.
    """

    per_route: dict[str, EventBatch] = field(default_factory=dict)
    targets: dict[str, list[Target]] = field(default_factory=dict)
    unmatched: int = 0
    dead_letters: list[tuple[str, int, str, str]] = field(default_factory=list)
    dead_letter_events: dict[str, EventBatch] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    parts: dict[str, IntArray] = field(default_factory=dict)
    version: str = ""
    policy_violations: dict[str, int] = field(default_factory=dict)
    failed: dict[str, EventBatch] = field(default_factory=dict)
    policy_seconds: float = 0.0  # time spent checking values against the data policies


class Router:
    """Compiled rules applied to event batches; `update` swaps the rules atomically."""

    def __init__(self, ruleset: RuleSet, hmac_secret: bytes, *, assign_ids: bool = True,
                 enforce_policies: bool = True) -> None:
        if not hmac_secret:
            raise ConfigError("the HMAC key for pseudonyms is empty", field=DEFAULT_HMAC_KEY_ENV)
        self._hmac_secret = bytes(hmac_secret)
        self.assign_ids = assign_ids
        # Value-level policy checks (`enforce.py`); off only to measure what they cost.
        self.enforce_policies = enforce_policies
        self._vin_finder = VinFinder()  # the fleet's VINs, learnt from the routed events
        self._pseudonyms: dict[tuple[str, int, str], dict[object, str]] = {}
        self._state = self._prepare(ruleset)

    def _prepare(self, ruleset: RuleSet) -> tuple[RuleSet, dict[str, bytes]]:
        keys = dict(ruleset.keys)
        keys[DEFAULT_HMAC_KEY_ENV] = self._hmac_secret
        missing = sorted(env for env in ruleset.key_envs() if not keys.get(env))
        if missing:
            raise ConfigError(f"HMAC key environment variable(s) not set: {', '.join(missing)}", field="key_env")
        # A webhook that cannot sign would dead-letter every event at delivery: refuse the
        # rules version instead (a reload keeps the last good one).
        for route in ruleset.all_routes():
            for j, target in enumerate(route.spec.to):
                secret_env = getattr(target, "secret_env", None)
                if secret_env and not keys.get(secret_env):
                    raise ConfigError(f"webhook secret environment variable {secret_env} is not set",
                                      file=route.file, line=route.line_of("to", j, "secret_env"),
                                      rule=route.name, field=f"to[{j}].secret_env")
        return ruleset, keys

    @property
    def ruleset(self) -> RuleSet:
        return self._state[0]

    def update(self, ruleset: RuleSet) -> None:
        """Use new rules from the next batch on (one reference assignment: atomic)."""
        state = self._prepare(ruleset)
        if state[1] != self._state[1]:
            self._pseudonyms = {}
        self._state = state

    def route(self, events: EventBatch) -> RouteResult:
        """Match, transform and label one batch of events."""
        ruleset, keys = self._state  # one snapshot for the whole batch
        result = RouteResult(version=ruleset.digest)
        n = len(events)
        for route in ruleset.all_routes():
            result.counts[route.name] = 0
        if n == 0:
            return result
        cols = Columns(events)
        ctx = Context(keys, self._pseudonyms)
        guard = PolicyGuard(events, self._vin_finder) if self.enforce_policies else None
        matched = np.zeros(n, dtype=bool)
        for route in ruleset.routes:
            try:
                mask = route.predicate.evaluate(cols)
            except Exception as exc:  # a predicate bug must not stop the other routes
                log.exception("route %s: match failed", route.name)
                self._fail(result, route, events, np.arange(n), MATCH_ERROR, repr(exc))
                continue
            matched |= mask
            rows = np.flatnonzero(mask)
            if rows.shape[0]:
                self._emit(route, events, rows, cols, ctx, result, guard)
        unmatched = np.flatnonzero(~matched)
        result.unmatched = int(unmatched.shape[0])
        if ruleset.default is not None and result.unmatched:
            self._emit(ruleset.default, events, unmatched, cols, ctx, result, guard)
        return result

    def _emit(self, route: CompiledRoute, events: EventBatch, rows: IntArray, cols: Columns,
              ctx: Context, result: RouteResult, guard: PolicyGuard | None = None) -> None:
        try:
            frame = route.transform.apply(Frame(events, rows, cols), ctx)
            out = frame.build()
            index, part = frame.index, frame.part
            policy = route.spec.policy
            if self.assign_ids and len(out):
                out.attrs["id"] = deterministic_ids(events.attrs["id"][index], route.name, part)
            if guard is not None and policy is not None and restricts(policy) and len(out):
                started = time.perf_counter()
                violations = guard.check(out, policy, index)
                result.policy_seconds += time.perf_counter() - started
                if violations:
                    keep = self._set_aside(route, out, violations, result)
                    frame.dead.append((index[~keep], POLICY_VIOLATION, ""))  # events, not extra dead letters
                    out, index, part = out.take(keep), index[keep], part[keep]
        except Exception as exc:  # errors are data: the route's events are dead-lettered
            log.exception("route %s: transform failed", route.name)
            self._fail(result, route, events, rows, TRANSFORM_ERROR, repr(exc))
            return
        dead_rows: list[IntArray] = []
        for source_rows, reason, error in frame.dead:
            dead_rows.append(source_rows)
            if reason == POLICY_VIOLATION:
                continue  # listed above, with the field of each event
            origin = events.origin[source_rows].tolist()
            result.dead_letters.extend((route.name, int(o), reason, error) for o in origin)
        if dead_rows:
            result.dead_letter_events[route.name] = events.take(np.concatenate(dead_rows))
        if len(out):
            result.per_route[route.name] = out
            result.targets[route.name] = list(route.spec.to)
            result.parts[route.name] = part
        result.counts[route.name] = len(out)

    @staticmethod
    def _set_aside(route: CompiledRoute, out: EventBatch, violations: list[Violation], result: RouteResult) -> BoolArray:
        """Dead-letter the events that break the route's policy; the mask of those to keep."""
        bad, first = violating_rows(violations, len(out))
        errors = np.empty(len(out), dtype=object)
        for bad_rows, message in first:
            log.warning("route %s: %d event(s) dropped from the output: %s", route.name, int(bad_rows.sum()), message)
            result.dead_letters.extend((route.name, int(o), POLICY_VIOLATION, message)
                                       for o in out.origin[bad_rows].tolist())
            errors[bad_rows] = message
        result.policy_violations[route.name] = int(bad.sum())
        failed = out.take(bad)
        for violation in violations:  # every offending field, not only the first
            redact(failed, violation.rows[bad], violation.field)
        result.failed[route.name] = failure_events(failed, np.arange(len(failed)), route=route.name, target=NO_TARGET,
                                                   reason=POLICY_VIOLATION, error=errors[bad].tolist())
        keep: BoolArray = ~bad
        return keep

    @staticmethod
    def _fail(result: RouteResult, route: CompiledRoute, events: EventBatch, rows: IntArray,
              reason: str, error: str) -> None:
        result.dead_letters.extend((route.name, int(o), reason, error) for o in events.origin[rows].tolist())
        result.dead_letter_events[route.name] = events.take(rows)
