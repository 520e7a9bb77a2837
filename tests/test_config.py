"""The pipeline file: validation errors name the file line and the key."""
from __future__ import annotations

import textwrap

import pytest

from schemas.config import ConfigError, load_config


def write(tmp_path, text):
    p = tmp_path / "p.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_demo_pipeline_validates(demo_dir):
    cfg = load_config(demo_dir / "pipeline.yaml")
    assert [s.name for s in cfg.sources] == ["wiki_en", "wiki_fr", "wiki_es", "python_docs", "handbook"]
    assert cfg.resolve("data/x") == str((demo_dir / "data" / "x").resolve())
    assert len(cfg.config_hash()) == 12


def test_error_names_line_and_key(tmp_path):
    p = write(tmp_path, """\
        name: t
        sources:
          - name: a
            format: jsonl
            paths: [x.jsonl]
          - name: b
            format: csv
            paths: [y.csv]
        release: {name: r}
        """)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "sources.1.format" in msg
    assert f"{p}:7:" in msg  # the line of `format: csv`


def test_unknown_key_and_duplicate_sources(tmp_path):
    p = write(tmp_path, """\
        name: t
        sources:
          - {name: a, format: jsonl, paths: [x]}
          - {name: a, format: jsonl, paths: [y]}
        release: {name: r, selcet: "true"}
        """)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "release.selcet" in str(e.value) and "Extra inputs" in str(e.value)
    assert "repeated: ['a']" in str(e.value)


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="no such pipeline file"):
        load_config(tmp_path / "nope.yaml")
