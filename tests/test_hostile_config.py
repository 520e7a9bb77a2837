"""Hostile pipeline files: alias bombs, oversized or over-deep files, duplicate keys, and names
that would escape or break the lake layout. Each is refused with one clear line."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from schemas.config import ConfigError, load_config
from schemas.names import MAX_NAME_LEN, check_name, name_problem
from schemas.yaml_safe import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES

REPO = Path(__file__).resolve().parents[1]

# The classic "billion laughs": nine levels of ten aliases each, 10^9 leaves once expanded.
BOMB = "\n".join(
    ["name: bomb", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    + ["sources: [{name: s, format: jsonl, paths: *a8}]", "release: {name: r}"]) + "\n"


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_bomb_is_small():
    assert len(BOMB.encode()) < 1000  # the bomb was 847 bytes


def test_alias_bomb_refused_fast_and_small(tmp_path):
    """Refused within 1 s and 100 MB: measured in a fresh process (peak RSS before and after)."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    probe = textwrap.dedent(f"""
        import json, resource, time
        from schemas.config import ConfigError, load_config
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        try:
            load_config({str(bomb)!r})
            outcome = "loaded"
        except ConfigError as e:
            outcome = str(e)
        seconds = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"outcome": outcome, "seconds": seconds, "grew_kb": after - before}}))
        """)
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert "alias bomb" in res["outcome"] and str(bomb) in res["outcome"]
    assert res["seconds"] < 1.0
    assert res["grew_kb"] < 100 * 1024  # ru_maxrss is in KiB on Linux


def test_alias_bomb_through_the_cli(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    for args, stream in ((["validate", str(bomb)], "stderr"), (["stats", "--lake", str(bomb)], "stdout")):
        out = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, args
        assert "alias bomb" in getattr(out, stream) and "Traceback" not in out.stderr + out.stdout


def test_ordinary_aliases_still_work(tmp_path):
    p = write(tmp_path, """\
        name: t
        x-paths: &paths [a.jsonl]
        sources:
          - {name: a, format: jsonl, paths: *paths}
          - {name: b, format: jsonl, paths: *paths}
        release: {name: r}
        """)
    with pytest.raises(ConfigError, match="x-paths"):  # unknown top-level key, but aliases resolved fine
        load_config(p)
    p = write(tmp_path, """\
        name: t
        sources:
          - &src {name: a, format: jsonl, paths: [a.jsonl]}
          - {<<: *src, name: b}
        release: {name: r}
        """)
    cfg = load_config(p)
    assert [s.name for s in cfg.sources] == ["a", "b"] and cfg.sources[1].paths == ["a.jsonl"]


def test_wide_alias_fan_out_is_bounded(tmp_path):
    """Not exponential, just wide: 3 levels of 60 aliases = 216,000 leaves > MAX_NODES."""
    lines = ["name: t", "l0: &l0 [" + ", ".join(["x"] * 60) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 60) + "]" for i in (1, 2)]
    p = write(tmp_path, "\n".join(lines + ["sources: []", "release: {name: r}"]) + "\n")
    assert 60 ** 3 > MAX_NODES
    with pytest.raises(ConfigError, match="alias bomb"):
        load_config(p)


def test_recursive_alias_refused(tmp_path):
    p = write(tmp_path, "name: t\nloop: &loop [1, *loop]\nsources: []\nrelease: {name: r}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "recursive alias" in str(e.value) or "alias" in str(e.value)


def test_deep_nesting_refused(tmp_path):
    deep = "[" * 5000 + "]" * 5000
    p = write(tmp_path, f"name: t\nx: {deep}\nsources: []\nrelease: {{name: r}}\n")
    with pytest.raises(ConfigError, match="nested"):
        load_config(p)
    ok = "[" * (MAX_DEPTH - 3) + "]" * (MAX_DEPTH - 3)
    p = write(tmp_path, f"name: t\nx: {ok}\nsources: []\nrelease: {{name: r}}\n")
    with pytest.raises(ConfigError, match="Extra inputs"):  # parsed fine; only the unknown key is wrong
        load_config(p)


def test_file_size_limit(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("name: t\n# " + "x" * MAX_FILE_BYTES + "\nsources: []\nrelease: {name: r}\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(p)


def test_duplicate_key_refused(tmp_path):
    p = write(tmp_path, """\
        name: t
        sources: []
        release: {name: r}
        name: u
        """)
    with pytest.raises(ConfigError, match="'name' appears twice.*line 1 and line 4"):
        load_config(p)


def test_not_utf8_refused(tmp_path):
    p = tmp_path / "latin.yaml"
    p.write_bytes("name: café\nsources: []\nrelease: {name: r}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(p)


def test_python_tags_never_construct_objects(tmp_path):
    p = write(tmp_path, "name: !!python/object/apply:os.system ['true']\nsources: []\nrelease: {name: r}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


# --- names ---------------------------------------------------------------------------------------

BAD_NAMES = {
    "..": "'..'", ".": "starts with a dot", ".hidden": "starts with a dot", "a/b": "path separator",
    "a\\b": "path separator", "../etc": "path separator", "a..b": "'..'", "": "empty", "tab\there": "control",
    "nul\x00": "control", "new\nline": "control", "x" * (MAX_NAME_LEN + 1): "characters long",
    "-flag": "must not start with '-'", "sp ace": "only letters", "semi;colon": "only letters",
}


@pytest.mark.parametrize("bad", list(BAD_NAMES))
def test_name_rule(bad):
    problem = name_problem(bad, "source name")
    assert problem is not None and BAD_NAMES[bad] in problem and problem.startswith("source name")
    with pytest.raises(ValueError):
        check_name(bad)


@pytest.mark.parametrize("good", ["wiki_en", "web-2026.10", "a", "A1", "x" * MAX_NAME_LEN, "v1.2"])
def test_good_names_pass(good):
    assert name_problem(good) is None


def _pipeline(pipeline: str = "t", source: str = "s", stage: str = "st", release: str = "r") -> str:
    return json.dumps({"name": pipeline, "sources": [{"name": source, "format": "jsonl", "paths": ["x.jsonl"]}],
                       "stages": [{"name": stage, "kind": "length_filter"}], "release": {"name": release}})


@pytest.mark.parametrize("field,key", [("pipeline", "name"), ("source", "sources.0.name"),
                                       ("stage", "stages.0.name"), ("release", "release.name")])
@pytest.mark.parametrize("bad", ["..", "a/b", ".x", "", "a\tb", "x" * 65])
def test_names_checked_in_the_pipeline_file(tmp_path, field, key, bad):
    p = tmp_path / "p.yaml"
    p.write_text(_pipeline(**{field: bad}))  # JSON is YAML: control characters are escaped in it
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f": {key}: " in str(e.value)


def test_stage_names_are_identifiers(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(_pipeline(stage="my-stage"))
    with pytest.raises(ConfigError, match="identifier"):
        load_config(p)


def test_export_refuses_a_path_as_release_name(tmp_path):
    (tmp_path / "lake" / "releases").mkdir(parents=True)
    for ref in ("../../etc", "demo/../../x", ".tmp-1/x"):
        out = subprocess.run([sys.executable, "-m", "flows.cli", "export", ref, "--lake", str(tmp_path / "lake")],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, (ref, out.stdout, out.stderr)
        assert "release" in out.stdout and "Traceback" not in out.stdout + out.stderr
