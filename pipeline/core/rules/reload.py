"""Hot reload: watch the rules directory and swap in a new RuleSet when a valid change lands.

Polls file names, sizes and mtimes every second (no extra dependency), confirms a change
by content digest, loads and checks the new rules, and hands them to `on_change` (for a
worker: `Router.update`, which takes effect between batches). An invalid change is
logged with the checker's message and counted, and the last good rules stay in force.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from pipeline.core.errors import ConfigError
from pipeline.core.rules.loader import RuleSet, load_rules, rule_files

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


def _fingerprint(path: Path) -> Fingerprint:
    try:
        files = rule_files(path)
    except OSError:
        return ()
    out = []
    for file in files:
        try:
            stat = file.stat()
        except OSError:
            continue
        out.append((file.name, stat.st_mtime_ns, stat.st_size))
    return tuple(out)


def _digest(path: Path) -> str:
    """Same digest as `RuleSet.digest` (names and contents), to tell real changes from touches."""
    digest = hashlib.sha256()
    for file in rule_files(path) if path.exists() else []:
        try:
            digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
        except OSError:
            continue
    return digest.hexdigest()


class RulesWatcher:
    """Polls a rules directory; calls `on_change(ruleset)` after each valid change.

    Counters (`reloads_total`, `rules_reload_errors_total`) are plain attributes for the
    metrics module to export; `on_error(message)` is called for each rejected change.
    """

    def __init__(self, path: Path, on_change: Callable[[RuleSet], None], *, interval_s: float = 1.0,
                 initial: RuleSet | None = None, env: Mapping[str, str] | None = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.on_change = on_change
        self.on_error = on_error
        self.interval_s = interval_s
        self.env = env
        self.current: RuleSet | None = initial
        self.reloads_total = 0
        self.rules_reload_errors_total = 0
        self.last_error: str | None = None
        self._fingerprint: Fingerprint | None = None  # first poll compares digests with `initial`
        self._rejected_digest: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def poll(self) -> bool:
        """Check once; True if new rules were loaded and handed over."""
        with self._lock:
            fingerprint = _fingerprint(self.path)
            if fingerprint == self._fingerprint:
                return False
            self._fingerprint = fingerprint
            digest = _digest(self.path)
            if self.current is not None and digest == self.current.digest:
                return False  # touched or rewritten with the same content
            if digest == self._rejected_digest:
                return False  # already reported
            try:
                ruleset = load_rules(self.path, env=self.env)
            except ConfigError as exc:
                self._rejected_digest = digest
                self.rules_reload_errors_total += 1
                self.last_error = str(exc)
                log.error("rules %s: change rejected, keeping version %s:\n%s", self.path,
                          self.current.digest[:12] if self.current else "none", exc)
                if self.on_error is not None:
                    self.on_error(str(exc))
                return False
            try:
                self.on_change(ruleset)
            except Exception as exc:  # e.g. a missing HMAC key for the new rules
                self._rejected_digest = digest
                self.rules_reload_errors_total += 1
                self.last_error = f"rules {self.path}: cannot apply: {exc}"
                log.error("%s", self.last_error)
                if self.on_error is not None:
                    self.on_error(self.last_error)
                return False
            self._rejected_digest = None
            self.current = ruleset
            self.reloads_total += 1
            self.last_error = None
            log.info("rules %s: now version %s (%d routes)", self.path, ruleset.digest[:12], len(ruleset.all_routes()))
            return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # the watcher must outlive any surprise
                log.exception("rules %s: watcher poll failed", self.path)

    def start(self) -> RulesWatcher:
        """Poll in a daemon thread every `interval_s` seconds."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="rules-watcher", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
