"""`curate validate` and the checks at the start of `curate run`: every problem of a pipeline file,
one line each with file line and key, before Prefect starts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from flows.validate import validate_pipeline
from tests.helpers import demo_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text('{"text": "hello"}\n')
    return tmp_path / "data"


def test_demo_pipeline_is_valid(demo_dir):
    report = validate_pipeline(demo_dir / "pipeline.yaml")
    assert report.errors == [] and report.warnings == []


def test_readme_bad_demo_prints_the_readme_lines():
    """``curate validate demo/bad.yaml`` prints the README's example block, line for line, exit 2."""
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "flows.cli", "validate", "demo/bad.yaml"], cwd=repo,
                         capture_output=True, text=True, timeout=120)
    readme = (repo / "README.md").read_text(encoding="utf-8")
    block = readme.split("The demo file with two typos (`demo/bad.yaml`):\n\n```\n", 1)[1].split("```", 1)[0]
    assert out.returncode == 2
    assert (out.stdout + out.stderr).strip().splitlines() == block.strip().splitlines()


def test_every_problem_at_once_with_lines(tmp_path, data):
    p = write(tmp_path, """\
        name: t
        sources:
          - {name: a, format: jsonl, paths: [data/a.jsonl]}
          - {name: b, format: jsonl, paths: [data/missing-*.jsonl]}
        stages:
          - name: length
            kind: length_filtr
          - name: lang
            kind: langid
            params: {languages: [en], min_scroe: 0.5}
          - name: dedup
            kind: exact_dedup
          - name: contam
            kind: decontaminate
            params:
              benchmarks: [{name: mmlu, path: bench/mmlu.jsonl, text_field: question}]
        release:
          name: r
          select: "lang.keep and dedup.keeep and"
        """)
    report = validate_pipeline(p)
    errors = "\n".join(report.errors)
    assert f"{p}:7: stages.0.kind: unknown stage kind 'length_filtr'; did you mean 'length_filter'?" in errors
    assert f"{p}:10: stages.1.params.min_scroe: Extra inputs are not permitted; valid keys: " in errors
    assert "min_score" in errors and "did you mean 'min_score'?" in errors
    assert f"{p}:16: stages.3.params.benchmarks.0.path: no such file or folder: bench/mmlu.jsonl" in errors
    assert f"{p}:19: release.select: cannot parse" in errors
    assert f"{p}:4: sources.1.paths.0: source b: nothing matches data/missing-*.jsonl" in errors
    assert "optional: true" in errors
    assert len(report.errors) == 5, errors
    assert all("\n" not in e and len(e) < 600 for e in report.errors)


def test_selection_names_unknown_column(tmp_path, data):
    p = write(tmp_path, """\
        name: t
        sources: [{name: a, format: jsonl, paths: [data/a.jsonl]}]
        stages: [{name: dedup, kind: exact_dedup}]
        release: {name: r, select: "dedup.keeep"}
        """)
    [err] = validate_pipeline(p).errors
    assert err.startswith(f"{p}:4: release.select: ") and "keeep" in err
    # A stage already reported (unknown kind) does not hide a mistake elsewhere in the expression.
    p = write(tmp_path, """\
        name: t
        sources: [{name: a, format: jsonl, paths: [data/a.jsonl]}]
        stages: [{name: length, kind: length_filtr}, {name: dedup, kind: exact_dedup}]
        release: {name: r, select: "length.keep and dedup.keeep"}
        """)
    errors = validate_pipeline(p).errors
    assert len(errors) == 2 and "did you mean 'length_filter'" in errors[0] and "keeep" in errors[1]


def test_inputs_references(tmp_path, data):
    p = write(tmp_path, """\
        name: t
        sources: [{name: a, format: jsonl, paths: [data/a.jsonl]}]
        stages:
          - {name: ens, kind: score_ensemble, params: {columns: [x, y]}, inputs: {x: q.bucket, y: later.bucket}}
          - {name: q, kind: length_filter}
          - {name: later, kind: length_filter}
          - {name: ens2, kind: score_ensemble, params: {columns: [x, y]}, inputs: {x: q.buckett, y: q}}
          - {name: ens3, kind: score_ensemble, params: {columns: [x, y]}, inputs: {x: q.n_words, y: q.n_chars, z: q.keep}}
          - {name: quality, kind: fasttext_quality, params: {positive: [wiki], negative: [a]}}
        release: {name: r}
        """)
    errors = validate_pipeline(p).errors
    text = "\n".join(errors)
    assert "stages.0.inputs.x: no earlier stage named 'q' (it comes later" in text
    assert "stages.3.inputs.x: stage 'q' writes no column 'buckett'" in text
    assert "stages.3.inputs.y: 'q' is not of the form stage.column" in text
    assert "stages.4.inputs.z: stage 'ens3' does not read a column 'z'" in text
    assert "stages.5.params.positive.0: no source named 'wiki' (sources: a)" in text
    assert len(errors) == 6, text  # stages.0.inputs.y names a later stage too


def test_stage_sources_and_mixture_references(tmp_path, data):
    p = write(tmp_path, """\
        name: t
        sources: [{name: wiki, format: jsonl, paths: [data/a.jsonl]}]
        stages: [{name: length, kind: length_filter, sources: [wkii]}]
        release:
          name: r
          mixture: {method: fixed, weights: {wikii: 1.0}}
          curriculum: {kind: ascending, column: length.n_word}
        """)
    text = "\n".join(validate_pipeline(p).errors)
    assert "stages.0.sources.0: no source named 'wkii'; did you mean 'wiki'?" in text
    assert "release.mixture.weights: no source named 'wikii'" in text
    assert "release.curriculum.column: no stage writes 'length.n_word'; did you mean 'length.n_words'?" in text


def test_missing_mixture_results_and_model_paths(tmp_path, data):
    p = write(tmp_path, """\
        name: t
        sources: [{name: wiki, format: jsonl, paths: [data/a.jsonl]}]
        stages:
          - name: grade
            kind: llm_grader
            params: {inference: {backend: transformers, model: ./models/nope}}
          - name: lang
            kind: langid
            params: {model_path: models/lid.bin}
        release:
          name: r
          mixture: {method: regmix, results: runs.csv}
        """)
    text = "\n".join(validate_pipeline(p).errors)
    assert "stages.0.params.inference.model: no such file or folder: ./models/nope" in text
    assert f"stages.1.params.model_path: no such file or folder: models/lid.bin ({tmp_path}/models/lid.bin)" in text
    assert f"release.mixture.results: no such file or folder: runs.csv ({tmp_path}/runs.csv)" in text


def test_optional_source_is_a_warning(tmp_path, data):
    p = write(tmp_path, """\
        name: t
        sources:
          - {name: a, format: jsonl, paths: [data/a.jsonl]}
          - {name: later, format: jsonl, paths: [incoming/*.jsonl], optional: true}
        release: {name: r}
        """)
    report = validate_pipeline(p)
    assert report.errors == []
    [w] = report.warnings
    assert "sources.1.paths.0: source later: nothing matches incoming/*.jsonl" in w and "optional" in w


def test_reingest_names_a_source(tmp_path, data):
    p = write(tmp_path, """\
        name: t
        sources: [{name: wiki, format: jsonl, paths: [data/a.jsonl]}]
        release: {name: r}
        """)
    assert validate_pipeline(p, ["wiki"]).errors == []
    [err] = validate_pipeline(p, ["wkii"]).errors
    assert "--reingest wkii: no source of that name; did you mean 'wiki'?" in err


def test_schema_errors_are_reported_alone(tmp_path):
    p = write(tmp_path, """\
        name: t
        sources: [{name: a, format: csv, paths: [x]}]
        release: {name: r, selcet: x}
        """)
    errors = validate_pipeline(p).errors
    assert any(e.startswith(f"{p}:2: sources.0.format:") for e in errors)
    assert any(e.startswith(f"{p}:3: release.selcet:") for e in errors)


# --- through the command line, before Prefect ----------------------------------------------------

def _fresh_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), CURATE_PROGRESS="0", PYTHONPATH=str(REPO))
    for key in ("PREFECT_API_URL", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"):
        env.pop(key, None)
    return env


BAD = """\
    name: t
    sources: [{name: a, format: jsonl, paths: [data/a.jsonl]}]
    stages:
      - {name: length, kind: lenght_filter}
      - {name: dedup, kind: exact_dedup, params: {normalize: yes}}
    release: {name: r, select: "dedup.keep and length.keep or"}
    """


def test_run_fails_fast_before_prefect(tmp_path, data):
    """`curate run` on a bad file: exit 2, a few lines on stderr, no traceback, Prefect never
    imported and no Prefect database created."""
    p = write(tmp_path, BAD)
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: sys.__stderr__.write('\\nPREFECT_IMPORTED=%s\\n' % ('prefect' in sys.modules)))\n"
             "from flows.cli import main\n"
             f"sys.argv = ['curate', 'run', {str(p)!r}]\n"
             "main()\n")
    env = _fresh_env(tmp_path)
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "PREFECT_IMPORTED=False" in out.stderr
    stderr = out.stderr.replace("PREFECT_IMPORTED=False", "").strip()
    assert "Traceback" not in stderr + out.stdout
    assert "3 problems" in stderr and "nothing was run" in stderr
    assert "did you mean 'length_filter'?" in stderr and "stages.1.params.normalize" in stderr and "did you mean 'normalise'?" in stderr
    assert "release.select" in stderr
    assert len(stderr.splitlines()) <= 8
    # The installed entry point, in a fresh Prefect home: still no server database afterwards.
    out = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(p)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    home = Path(env["PREFECT_HOME"])
    assert not home.exists() or not list(home.rglob("*.db"))


def test_validate_command_exit_codes(tmp_path, data):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"name": "t", "sources": [{"name": "a", "format": "jsonl", "paths": ["data/a.jsonl"]}],
                                    "release": {"name": "r"}}))
    out = subprocess.run([sys.executable, "-m", "flows.cli", "validate", str(good)], cwd=REPO,
                         env=_fresh_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok (1 sources, 0 stages" in out.stdout, out.stderr
    out = subprocess.run([sys.executable, "-m", "flows.cli", "validate", str(tmp_path / "nope.yaml")], cwd=REPO,
                         env=_fresh_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "no such pipeline file" in out.stderr and "Traceback" not in out.stderr


def test_demo_with_all_stages_validates_in_place(tmp_path, demo_dir):
    """The demo pipeline rewritten with absolute paths (as the e2e tests run it) is still valid."""
    p = tmp_path / "demo.yaml"
    p.write_text(json.dumps(demo_config(demo_dir, tmp_path / "lake", drop_kinds=())))
    assert validate_pipeline(p).errors == []


def test_prefect_startup_timeout_is_raised_unless_set(tmp_path):
    probe = ("import flows.cli\n"
             "from prefect.settings import get_current_settings\n"
             "print(get_current_settings().server.ephemeral.startup_timeout_seconds)\n")
    env = _fresh_env(tmp_path)
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    from flows.prefect_env import EPHEMERAL_STARTUP_TIMEOUT_S
    assert int(out.stdout.strip().splitlines()[-1]) == EPHEMERAL_STARTUP_TIMEOUT_S > 20
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "33"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert int(out.stdout.strip().splitlines()[-1]) == 33
    # The flow module applies it too (for library use without the CLI).
    probe = probe.replace("import flows.cli", "import flows.pipeline")
    env.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert int(out.stdout.strip().splitlines()[-1]) == EPHEMERAL_STARTUP_TIMEOUT_S


def test_release_text_chain_is_checked_before_the_run(tmp_path, data):
    p = write(tmp_path, """\
        name: t
        sources:
          - {name: a, format: jsonl, paths: [data/a.jsonl]}
        stages:
          - {name: c4, kind: c4}
          - {name: pii, kind: pii}
        release:
          name: r
          text: [c4.text_clean, pii.text_redacted]
        """)
    [err] = validate_pipeline(p).errors
    assert err.startswith(f"{p}:9: release.text: release.text applies pii.text_redacted after c4.text_clean")
    assert "add `inputs: {text: c4.text_clean}` to stages[pii]" in err
    fixed = p.read_text().replace("{name: pii, kind: pii}", "{name: pii, kind: pii, inputs: {text: c4.text_clean}}")
    p.write_text(fixed)
    assert validate_pipeline(p).errors == []
