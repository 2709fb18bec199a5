"""Hot reload: valid changes are swapped in between batches, invalid ones rejected and counted."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline.core.rules.columns import batch_from_events
from pipeline.core.rules.loader import RuleSet, load_rules
from pipeline.core.rules.reload import RulesWatcher
from pipeline.core.rules.router import Router

from .conftest import event

V1 = "routes:\n  - name: alerts\n    match: {type: [fleet.battery.low_soc]}\n    to: [{topic: route.alerts}]\n"
V2 = "routes:\n  - name: alerts\n    match: {type: [fleet.dtc.appeared]}\n    to: [{topic: route.alerts}]\n"
BROKEN = "routes:\n  - name: alerts\n    match: {type: []}\n    to: [{topic: route.alerts}]\n"


def write(path: Path, text: str) -> None:
    """Write and move the mtime forward, as an editor save would."""
    path.write_text(text)
    stamp = time.time() + 1
    os.utime(path, (stamp, stamp))


def setup(tmp_path: Path) -> tuple[Path, RuleSet, Router, list[RuleSet], RulesWatcher]:
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "alerts.yaml").write_text(V1)
    initial = load_rules(routes, env={})
    router = Router(initial, b"key")
    seen: list[RuleSet] = []

    def on_change(ruleset: RuleSet) -> None:
        router.update(ruleset)
        seen.append(ruleset)

    return routes, initial, router, seen, RulesWatcher(routes, on_change, initial=initial, env={})


def routed(router: Router) -> int:
    batch = batch_from_events([{"id": "a", **event("fleet.battery.low_soc")}, {"id": "b", **event("fleet.dtc.appeared")}])
    result = router.route(batch)
    return int(result.per_route["alerts"].attrs["type"].tolist() == ["fleet.dtc.appeared"]) if "alerts" in result.per_route else -1


def test_valid_change_is_swapped_in(tmp_path: Path) -> None:
    routes, initial, router, seen, watcher = setup(tmp_path)
    assert watcher.poll() is False  # unchanged files: nothing to do
    assert routed(router) == 0
    write(routes / "alerts.yaml", V2)
    assert watcher.poll() is True
    assert routed(router) == 1
    assert len(seen) == 1 and seen[0].digest != initial.digest and watcher.reloads_total == 1


def test_invalid_change_keeps_the_last_good_rules_and_is_counted(tmp_path: Path) -> None:
    routes, initial, router, seen, watcher = setup(tmp_path)
    errors: list[str] = []
    watcher.on_error = errors.append
    write(routes / "alerts.yaml", BROKEN)
    assert watcher.poll() is False
    assert watcher.rules_reload_errors_total == 1
    assert errors and "alerts.yaml:3: route 'alerts': field 'match.type': empty list" in errors[0]
    assert watcher.last_error == errors[0]
    assert routed(router) == 0 and router.ruleset is initial and seen == []
    assert watcher.poll() is False and watcher.rules_reload_errors_total == 1  # reported once, not every second
    write(routes / "alerts.yaml", V2)  # fixed: taken up
    assert watcher.poll() is True and routed(router) == 1 and watcher.last_error is None


def test_touch_without_change_does_not_reload(tmp_path: Path) -> None:
    routes, _, _, seen, watcher = setup(tmp_path)
    write(routes / "alerts.yaml", V1)
    assert watcher.poll() is False and seen == []


def test_new_and_removed_files_count_as_changes(tmp_path: Path) -> None:
    routes, _, router, seen, watcher = setup(tmp_path)
    write(routes / "more.yaml", "routes:\n  - name: more\n    to: [{topic: route.more}]\n")
    assert watcher.poll() is True
    assert [r.name for r in router.ruleset.all_routes()] == ["alerts", "more"]
    (routes / "more.yaml").unlink()
    assert watcher.poll() is True
    assert [r.name for r in router.ruleset.all_routes()] == ["alerts"]


def test_watcher_thread_applies_a_change_within_seconds(tmp_path: Path) -> None:
    routes, _, router, _, watcher = setup(tmp_path)
    watcher.interval_s = 0.05
    watcher.start()
    try:
        write(routes / "alerts.yaml", V2)
        deadline = time.monotonic() + 5
        while routed(router) != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert routed(router) == 1
    finally:
        watcher.stop()


def test_a_reload_during_a_batch_applies_from_the_next_batch(tmp_path: Path) -> None:
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "r.yaml").write_text("routes:\n  - name: a\n    to: [{topic: route.a}]\n  - name: b\n    to: [{topic: route.b}]\n")
    old = load_rules(routes, env={})
    (routes / "r.yaml").write_text("routes:\n  - name: c\n    to: [{topic: route.c}]\n")
    new = load_rules(routes, env={})
    router = Router(old, b"key")
    transform = old.routes[0].transform
    apply = transform.apply

    def apply_and_reload(frame, ctx):  # type: ignore[no-untyped-def]
        router.update(new)  # the watcher thread swaps the rules while route `a` runs
        return apply(frame, ctx)

    transform.apply = apply_and_reload  # type: ignore[method-assign]
    batch = batch_from_events([{"id": "x", **event()}])
    during = router.route(batch)
    assert during.counts == {"a": 1, "b": 1} and during.version == old.digest  # neither lost nor double-routed
    after = router.route(batch)
    assert after.counts == {"c": 1} and after.version == new.digest


def test_a_webhook_secret_that_is_not_set_rejects_the_version(tmp_path: Path) -> None:
    # Before: the version loaded and every matching event was dead-lettered at delivery.
    routes, initial, router, seen, watcher = setup(tmp_path)
    write(routes / "alerts.yaml", V1.replace("to: [{topic: route.alerts}]",
                                             "to: [{topic: route.alerts}, {webhook: 'https://crm.example/h', "
                                             "secret_env: CRM_HOOK_SECRET}]"))
    assert not watcher.poll()
    assert seen == [] and router.ruleset is initial and watcher.rules_reload_errors_total == 1
    assert watcher.last_error is not None
    assert "alerts.yaml:4: route 'alerts': field 'to[1].secret_env': webhook secret environment variable " \
           "CRM_HOOK_SECRET is not set" in watcher.last_error
    # With the secret in the worker's environment the same rules load.
    with_secret = load_rules(routes, env={"CRM_HOOK_SECRET": "s3cret"})
    router.update(with_secret)
    assert router.ruleset is with_secret


def test_topics_added_by_a_new_version(tmp_path: Path) -> None:
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "alerts.yaml").write_text(V1)
    old = load_rules(routes, env={})
    (routes / "more.yaml").write_text("routes:\n  - name: more\n    to: [{topic: route.more}, {object: more/}]\n"
                                      "    dead_letter: {topic: route.more.dlq}\n")
    new = load_rules(routes, env={})
    assert old.topics() == ["pipeline.dlq", "route.alerts"]
    assert old.topics_added(new) == ["route.more", "route.more.dlq"]
    assert new.topics_added(old) == []
