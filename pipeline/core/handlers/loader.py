"""Load the handlers in `functions/`, and reload them while a worker runs.

Every `*.py` not starting with `_` is imported as its own module; each function carrying
a `@handler` spec is registered. A file that fails to import or to validate is reported
with its file and line and, on reload, the previous version of that file stays active.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Collection
from pathlib import Path
from types import ModuleType

from pipeline.core.errors import ConfigError
from pipeline.core.handlers.config import HandlerConfig, load_handler_config
from pipeline.core.handlers.registry import HandlerSpec, Registry, spec_of

log = logging.getLogger("pipeline.core.handlers.loader")

MODULE_PREFIX = "pipeline_functions."
CONFIG_FILE = "handlers.yaml"


def handler_files(directory: Path) -> list[Path]:
    """The files the loader imports, sorted by name."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.py") if not p.name.startswith("_"))


def _error_line(exc: BaseException, path: Path) -> int | None:
    if isinstance(exc, SyntaxError) and exc.lineno:
        return int(exc.lineno)
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno
    return line


def import_file(path: Path) -> list[HandlerSpec]:
    """Import one file in isolation and return its handler specs; ConfigError names file:line."""
    path = Path(path).resolve()
    module_name = MODULE_PREFIX + path.stem
    try:
        source = path.read_text()
        code = compile(source, str(path), "exec")  # fresh source each time, no stale bytecode
        module = ModuleType(module_name)
        module.__file__ = str(path)
        previous = sys.modules.get(module_name)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up here
        try:
            exec(code, module.__dict__)
        except BaseException:
            if previous is not None:
                sys.modules[module_name] = previous
            else:
                sys.modules.pop(module_name, None)
            raise
    except ConfigError as exc:
        if exc.file:
            raise
        raise ConfigError(exc.detail, file=str(path), line=_error_line(exc, path)) from exc
    except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised raw
        raise ConfigError(f"import failed: {type(exc).__name__}: {exc}", file=str(path),
                          line=_error_line(exc, path)) from exc
    specs: list[HandlerSpec] = []
    seen: set[int] = set()
    for value in vars(module).values():
        s = spec_of(value)
        if s is not None and id(s) not in seen and Path(s.source_file or path).resolve() == path:
            seen.add(id(s))
            specs.append(s)
    if not specs:
        log.warning("%s defines no @handler functions", path)
    return sorted(specs, key=lambda s: s.line)


def _validate(registry: Registry, config: HandlerConfig, catalog_names: Collection[str] | None) -> list[str]:
    warnings = registry.validate(catalog_names)
    for spec in registry.ordered():
        config.check_keys(spec.name, spec.defaults)
    for name in config.handlers:
        if name not in registry:
            warnings.append(f"{config.path}: settings for unknown handler {name!r}")
    return warnings


def _catalog_names() -> list[str] | None:
    try:
        from pipeline.core.catalog import DEFAULT_PATH, load_catalog
    except ImportError:
        return None
    if not Path(DEFAULT_PATH).exists():
        return None
    return list(load_catalog(DEFAULT_PATH).names)


def load_functions(directory: Path, *, catalog_names: Collection[str] | None = None,
                   use_catalog: bool = True, strict: bool = False) -> Registry:
    """Import every handler file; broken files are left out and listed in `registry.errors`
    (or raised with `strict`). Signals are checked against the catalog when there is one."""
    directory = Path(directory)
    if catalog_names is None and use_catalog:
        catalog_names = _catalog_names()
    registry = Registry()
    for path in handler_files(directory):
        try:
            specs = import_file(path)
            candidate = registry.with_file(str(path.resolve()), specs)
            candidate.validate(catalog_names)
            registry = candidate
        except ConfigError as exc:
            if strict:
                raise
            log.error("handler file not loaded: %s", exc)
            registry.errors.append(exc)
    return registry


class FunctionsWatcher:
    """Polls `functions/` (mtimes, at most once per `interval_s`) and reloads what changed.

    A changed or new file is imported and validated against the current set first; on
    any error the previous version stays, the error is logged with file and line and
    `reload_errors` counts it. A deleted file's handlers are removed.
    """

    def __init__(self, directory: Path, *, catalog_names: Collection[str] | None = None,
                 use_catalog: bool = True, interval_s: float = 1.0) -> None:
        self.directory = Path(directory)
        self.catalog_names = catalog_names if catalog_names is not None or not use_catalog else _catalog_names()
        self.interval_s = interval_s
        self.reload_errors = 0
        self.reloads = 0
        self.last_errors: dict[str, ConfigError] = {}
        self._last_check = 0.0
        self.config = self._load_config(initial=True) or HandlerConfig()
        self.registry = load_functions(self.directory, catalog_names=self.catalog_names, use_catalog=False)
        for err in self.registry.errors:
            self.last_errors[str(err.file)] = err
        self._mtimes: dict[str, int] = self._scan()

    def _scan(self) -> dict[str, int]:
        out = {str(p.resolve()): p.stat().st_mtime_ns for p in handler_files(self.directory)}
        cfg = self.directory / CONFIG_FILE
        if cfg.exists():
            out[str(cfg.resolve())] = cfg.stat().st_mtime_ns
        return out

    def _load_config(self, *, initial: bool = False) -> HandlerConfig | None:
        try:
            return load_handler_config(self.directory / CONFIG_FILE)
        except ConfigError as exc:
            self.reload_errors += 0 if initial else 1
            self.last_errors[str(exc.file)] = exc
            log.error("handler config not (re)loaded, previous kept: %s", exc)
            if initial:
                raise
            return None

    def maybe_check(self) -> bool:
        """`check()` if `interval_s` has passed since the last one."""
        now = time.monotonic()
        if now - self._last_check < self.interval_s:
            return False
        return self.check()

    def check(self) -> bool:
        """Reload changed, new and deleted files now; True when the active set changed."""
        self._last_check = time.monotonic()
        current = self._scan()
        if current == self._mtimes:
            return False
        changed = [p for p, m in current.items() if self._mtimes.get(p) != m]
        deleted = [p for p in self._mtimes if p not in current]
        self._mtimes = current
        registry, config, applied = self.registry, self.config, False
        cfg_path = str((self.directory / CONFIG_FILE).resolve())
        if cfg_path in changed or cfg_path in deleted:
            new_cfg = self._load_config() if cfg_path in changed else HandlerConfig()
            if new_cfg is not None:
                try:
                    _validate(registry, new_cfg, None)
                    config, applied = new_cfg, True
                    self.last_errors.pop(cfg_path, None)
                except ConfigError as exc:
                    self._fail(cfg_path, exc)
        for path in deleted:
            if path != cfg_path and path in registry.files:
                registry, applied = registry.without_file(path), True
                log.info("handlers of deleted %s removed", path)
        for path in changed:
            if path == cfg_path:
                continue
            try:
                specs = import_file(Path(path))
                candidate = registry.with_file(path, specs)
                _validate(candidate, config, self.catalog_names)
            except ConfigError as exc:
                self._fail(path, exc)
                continue
            registry, applied = candidate, True
            self.last_errors.pop(path, None)
            log.info("reloaded %s: %s", path, ", ".join(s.name for s in specs) or "no handlers")
        if applied:
            self.registry, self.config = registry, config
            self.reloads += 1
        return applied

    def _fail(self, path: str, exc: ConfigError) -> None:
        self.reload_errors += 1
        self.last_errors[path] = exc
        log.error("reload of %s failed, previous version kept: %s", path, exc)
