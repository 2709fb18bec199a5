"""Loading functions/: errors name file and line, bad edits keep the old version, new files load."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.handlers.loader import FunctionsWatcher, import_file, load_functions

GOOD = '''
from pipeline.core.handlers import handler

@handler(name="{name}", consumes=["Vehicle.Speed"], emits=["fleet.test.{name}"])
def fn(batch, ctx):
    s = batch.signal("Vehicle.Speed")
    ctx.emit("fleet.test.{name}", time=s.t[:1], origin=s.record[:1], vehicle=s.vehicle[:1],
             data={{"version": {version}}})
'''


def write(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))
    st = path.stat()  # make the change visible even on coarse mtime clocks
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    write(bad, "x = 1\ny = (\n")
    with pytest.raises(ConfigError) as err:
        import_file(bad)
    assert err.value.file == str(bad.resolve()) and err.value.line in (2, 3)
    assert "bad.py:" in str(err.value)


def test_runtime_error_at_import_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "boom.py"
    write(bad, "import math\n\nvalue = math.sqrt(-1)\n")
    with pytest.raises(ConfigError) as err:
        import_file(bad)
    assert err.value.line == 3 and "ValueError" in str(err.value)


def test_bad_decorator_arguments_name_the_handler_line(tmp_path: Path) -> None:
    bad = tmp_path / "decor.py"
    write(bad, '''
        from pipeline.core.handlers import handler

        @handler(name="x", consumes=["Vehicle.Speed"], emits=["NotAType"])
        def fn(batch, ctx):
            pass
    ''')
    with pytest.raises(ConfigError) as err:
        import_file(bad)
    assert err.value.file == str(bad.resolve()) and err.value.line == 4 and err.value.field == "emits"


def test_load_skips_broken_and_private_files_and_reports_errors(tmp_path: Path) -> None:
    write(tmp_path / "ok.py", GOOD.format(name="ok", version=1))
    write(tmp_path / "_helpers.py", "raise RuntimeError('never imported')\n")
    write(tmp_path / "broken.py", "def (:\n")
    write(tmp_path / "unknown_signal.py", GOOD.format(name="unk", version=1).replace(
        '"Vehicle.Speed"]', '"Vehicle.NotInCatalog"]'))
    reg = load_functions(tmp_path, catalog_names=["Vehicle.Speed"])
    assert reg.names() == ["ok"]
    files = sorted(Path(str(e.file)).name for e in reg.errors)
    assert files == ["broken.py", "unknown_signal.py"]
    with pytest.raises(ConfigError):
        load_functions(tmp_path, catalog_names=["Vehicle.Speed"], strict=True)


def test_duplicate_handler_names_across_files_keep_the_first(tmp_path: Path) -> None:
    write(tmp_path / "a.py", GOOD.format(name="dup", version=1))
    write(tmp_path / "b.py", GOOD.format(name="dup", version=2))
    reg = load_functions(tmp_path, use_catalog=False)
    assert reg.names() == ["dup"] and reg["dup"].source_file.endswith("a.py")
    assert len(reg.errors) == 1 and "duplicate" in str(reg.errors[0])


def test_watcher_reloads_keeps_old_version_on_error_and_picks_up_new_files(tmp_path: Path) -> None:
    first = tmp_path / "first.py"
    write(first, GOOD.format(name="first", version=1))
    watcher = FunctionsWatcher(tmp_path, use_catalog=False)
    assert watcher.registry.names() == ["first"]
    assert watcher.check() is False  # nothing changed

    write(first, GOOD.format(name="first", version=2))
    assert watcher.check() is True
    assert watcher.registry["first"].fn.__globals__["__file__"].endswith("first.py")
    v2 = watcher.registry["first"].fn

    write(first, GOOD.format(name="first", version=3) + "\nthis is not python\n")
    assert watcher.check() is False
    assert watcher.registry["first"].fn is v2  # the old version stays
    assert watcher.reload_errors == 1
    err = watcher.last_errors[str(first.resolve())]
    assert err.line is not None and err.line > 5

    write(tmp_path / "second.py", GOOD.format(name="second", version=1))
    assert watcher.check() is True
    assert watcher.registry.names() == ["first", "second"]

    (tmp_path / "second.py").unlink()
    assert watcher.check() is True
    assert watcher.registry.names() == ["first"]


def test_watcher_rejects_a_bad_config_edit_and_keeps_the_old_settings(tmp_path: Path) -> None:
    write(tmp_path / "first.py", GOOD.format(name="first", version=1))
    cfg = tmp_path / "handlers.yaml"
    write(cfg, "version: 1\nhandlers:\n  first: {enabled: true}\n")
    watcher = FunctionsWatcher(tmp_path, use_catalog=False)
    write(cfg, "version: 1\nhandlers:\n  first:\n    limit_kmh: 3\n")  # first has no such setting
    assert watcher.check() is False
    assert watcher.reload_errors == 1
    assert watcher.last_errors[str(cfg.resolve())].line == 4
    write(cfg, "version: 1\nhandlers:\n  first: {enabled: false}\n")
    assert watcher.check() is True and watcher.config.enabled("first") is False


def test_runner_picks_up_a_changed_file_between_batches(tmp_path: Path) -> None:
    from pipeline.core.handlers.runner import build_runner
    from pipeline.core.handlers.testing import make_readings

    write(tmp_path / "live.py", GOOD.format(name="live", version=1))
    runner = build_runner(tmp_path)
    runner.watcher.interval_s = 0  # type: ignore[union-attr]
    readings, records = make_readings({"V1": {"Vehicle.Speed": ([0], [1.0])}})
    try:
        assert runner.run(readings, records).events.data["version"].tolist() == [1]
        write(tmp_path / "live.py", GOOD.format(name="live", version=2))
        assert runner.run(readings, records).events.data["version"].tolist() == [2]
        write(tmp_path / "added.py", GOOD.format(name="added", version=7))
        out = runner.run(readings, records)
        assert sorted(out.events.attrs["type"].tolist()) == ["fleet.test.added", "fleet.test.live"]
    finally:
        runner.close()


def test_shipped_functions_load_cleanly_against_the_catalog() -> None:
    reg = load_functions(Path(__file__).resolve().parents[3] / "functions", strict=True)
    assert {"harsh_driving", "speeding", "idling", "trips", "geofence", "charging", "charging_demand",
            "battery_alerts", "dtc"} <= set(reg.names())
    assert reg.names().index("trips") > reg.names().index("harsh_driving")
