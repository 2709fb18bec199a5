"""The one YAML loader: data, the line of every key and list item, errors with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.clean import parse_cleaning_config
from pipeline.core.errors import ConfigError
from pipeline.core.handlers.config import load_handler_config
from pipeline.core.yamlfile import line_in, load_yaml, parse_yaml
from pipeline.tools import regions

TEXT = """\
version: 1
routes:
  - name: a
    to:
      - {topic: route.a}
  - name: b
    match: {type: [x]}
"""


def test_data_and_the_line_of_every_key_and_item() -> None:
    doc = parse_yaml(TEXT, "r.yaml")
    assert doc.data["routes"][1] == {"name": "b", "match": {"type": ["x"]}}
    assert doc.lines[()] == 1 and doc.lines[("version",)] == 1
    assert doc.lines[("routes", 0)] == 3 and doc.lines[("routes", 0, "to", 0, "topic")] == 5
    assert doc.lines[("routes", 1, "match", "type", 0)] == 7


def test_a_path_finds_its_deepest_written_place() -> None:
    doc = parse_yaml(TEXT, "r.yaml")
    assert doc.line("routes", 1, "match") == 7
    assert doc.line("routes", "1", "name") == 6  # list positions as digits too
    assert doc.line("routes", 0, "to", 0, "topic", "topic") == 5  # parts it lacks are skipped
    assert doc.line("routes", 1, "transform") == 6
    assert doc.line("nowhere") == 1  # the document start
    assert line_in(doc.lines, ("nowhere",)) is None
    assert doc.within("routes", 1) == {(): 6, ("name",): 6, ("match",): 7, ("match", "type"): 7,
                                       ("match", "type", 0): 7}


def test_syntax_error_has_file_and_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_yaml("a: 1\nb: {c: [1, 2}\n", "x.yaml")
    assert err.value.file == "x.yaml" and err.value.line == 2 and "invalid YAML" in str(err.value)
    assert str(err.value).startswith("x.yaml:2: invalid YAML: ")


def test_a_value_its_tag_cannot_make_is_a_syntax_error() -> None:
    with pytest.raises(ConfigError) as err:
        parse_yaml("a: 1\nb: !!int abc\n", "x.yaml")
    assert err.value.line == 2 and "invalid YAML" in str(err.value)


def test_duplicate_keys_are_errors_or_collected() -> None:
    text = "a: 1\nb:\n  c: 1\n  c: 2\n"
    with pytest.raises(ConfigError) as err:
        parse_yaml(text, "x.yaml")
    assert (err.value.line, err.value.field) == (4, "c") and "first at line 3" in str(err.value)
    doc = parse_yaml(text, "x.yaml", strict=False)
    assert doc.data == {"a": 1, "b": {"c": 1}} and [p.line for p in doc.problems] == [4]


def test_anchors_aliases_and_merge_keys() -> None:
    doc = parse_yaml("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\ncopy: *b\n", "x.yaml")
    assert doc.data["use"] == {"x": 1, "y": 3} and doc.data["copy"] == {"x": 1, "y": 2}
    with pytest.raises(ConfigError, match="alias"):
        parse_yaml("a: &a [1, *a]\n", "x.yaml")


def test_files_empty_unreadable_and_not_utf8(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty).data is None
    with pytest.raises(ConfigError, match="cannot read") as err:
        load_yaml(tmp_path / "missing.yaml")
    assert err.value.file == str(tmp_path / "missing.yaml")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_yaml(latin, file="shown.yaml")


def test_duplicate_keys_are_rejected_in_every_configuration_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_cleaning_config("time:\n  max_age_ms: 5\n  max_age_ms: 6\n", file="c.yaml")
    assert (err.value.file, err.value.line, err.value.field) == ("c.yaml", 3, "max_age_ms")
    handlers = tmp_path / "handlers.yaml"
    handlers.write_text("handlers:\n  idling: {enabled: false}\n  idling: {}\n")
    with pytest.raises(ConfigError) as err:
        load_handler_config(handlers)
    assert err.value.line == 3 and err.value.field == "idling"


def test_regions_file_errors_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "regions.yaml"
    path.write_text("regions:\n  a: {kafka_bootstrap: 'x:1', s3_bucket: s, app_id: g}\n"
                    "  b:\n    kafka_bootstrap: 'y:1'\n    app_id: h\n")
    with pytest.raises(ConfigError) as err:
        regions.load(path)
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 3, "regions.b.s3_bucket")
    path.write_text("regions:\n  a: {kafka_bootstrap: 'x:1', s3_bucket: s, app_id: g}\n"
                    "home:\n  default: c\n")
    with pytest.raises(ConfigError, match=r"unknown regions \['c'\]") as err:
        regions.load(path)
    assert err.value.line == 3 and err.value.field == "home"
    path.write_text("regions: {a: [1\n")
    with pytest.raises(ConfigError, match="invalid YAML") as err:
        regions.load(path)
    assert err.value.file == str(path) and err.value.line is not None
