"""Slim core, extras for the rest: what ``pip install curate`` pulls, and what a core-only machine can run.

- The core's dependency closure (pyproject's ``dependencies``, followed through the installed
  packages' own metadata, extras' markers evaluated as pip would for a plain install) holds none
  of the heavy packages.
- In child processes where the optional packages are hidden (tests/hide/sitecustomize.py: they
  look uninstalled to the child, its spawned workers and Prefect's server), a filters-only
  pipeline runs end to end through ``curate run``, and a pipeline that needs an extra fails at
  configuration with the pip command that installs it.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from engines import extras

REPO = Path(__file__).resolve().parents[1]
# Distribution names the core must not pull (normalised), and import names hidden in the children.
HEAVY = {"torch", "transformers", "accelerate", "lightgbm", "scipy", "gguf", "safetensors", "tokenizers",
         "pillow", "zstd", "python-snappy", "vllm", "scikit-learn", "nvidia-cublas-cu12"}
HIDDEN = sorted({m for mods in extras.EXTRAS.values() for m in mods} | {"accelerate", "sklearn"})


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _closure(requirements: list[str]) -> dict[str, str]:
    """Every distribution a plain install of ``requirements`` pulls (name -> who asked first), read
    from the installed packages' metadata; requirements behind extras nobody asked for are skipped."""
    seen: dict[str, str] = {}
    todo = [(Requirement(r), "curate", "") for r in requirements]
    while todo:
        req, parent, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = _norm(req.name)
        if name in seen and not req.extras:
            continue
        seen.setdefault(name, parent)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # not installed here, so nothing below it to follow (and nothing heavy: see asserts)
        for sub in dist.requires or []:
            for ex in [""] + sorted(req.extras):
                todo.append((Requirement(sub), name, ex))
    return seen


def test_core_install_pulls_no_heavy_package():
    core = _pyproject()["dependencies"]
    names = {_norm(Requirement(r).name) for r in core}
    assert not names & HEAVY, f"heavy packages in the core dependencies: {names & HEAVY}"
    closure = _closure(core)
    assert "prefect" in closure and "pyarrow" in closure and "datasets" in closure  # the walk followed real metadata
    assert len(closure) > 60
    heavy = {n: closure[n] for n in closure if n in HEAVY or n.startswith("nvidia-")}
    assert not heavy, f"a plain install pulls {heavy} (package -> the dependency that asks for it)"


def test_extras_hold_the_optional_packages():
    opt = _pyproject()["optional-dependencies"]
    models = {Requirement(r).name: str(Requirement(r).specifier) for r in opt["models"]}
    assert models["torch"] == "==2.13.0"  # any other spec resolves to the CUDA build
    assert {"transformers", "accelerate", "gguf", "safetensors"} <= set(models)
    assert {_norm(Requirement(r).name) for r in opt["mixture"]} == {"lightgbm", "scipy"}
    assert {"tokenizers", "pillow", "zstd", "python-snappy"} <= {_norm(Requirement(r).name) for r in opt["export"]}
    test_self = [Requirement(r) for r in opt["test"] if Requirement(r).name == "curate"]
    assert test_self and {"models", "mixture", "export"} <= set(test_self[0].extras)
    demo_self = [Requirement(r) for r in opt["demo"] if Requirement(r).name == "curate"]
    assert demo_self and {"models", "export"} <= set(demo_self[0].extras)


def test_check_names_the_missing_packages_and_the_command():
    extras.check("nothing", {})
    extras.check("numpy stage", {"core": ("numpy",)})
    with pytest.raises(extras.MissingExtra) as e:
        extras.check("stages[x] (fancy)", {"models": ("numpy", "surely_not_installed_pkg")})
    msg = str(e.value)
    assert msg.startswith("stages[x] (fancy) needs surely_not_installed_pkg, which is not installed: run pip install")
    assert "[models]" in msg and "\n" not in msg


def _child(code: str, tmp_path: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, CURATE_HIDE_PACKAGES=",".join(HIDDEN),
               PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "hide"), str(REPO)]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_hidden_packages_really_look_absent(tmp_path):
    res = _child("""
        import importlib.util, json, sys
        found = {m: importlib.util.find_spec(m) is not None for m in ["torch", "transformers", "scipy", "numpy"]}
        try:
            import torch
            found["import torch"] = True
        except ModuleNotFoundError:
            found["import torch"] = False
        print(json.dumps(found))
    """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"torch": False, "transformers": False, "scipy": False, "numpy": True,
                                      "import torch": False}


def _pipeline(tmp_path: Path, demo_dir: Path, stages: str, mixture: str = "") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / "pipeline.yaml"
    p.write_text(textwrap.dedent(f"""\
        name: core
        lake: {tmp_path / 'lake'}
        executor: {{kind: local, workers: 2}}
        sources:
          - name: wiki_en
            format: parquet
            paths: [{demo_dir / 'data' / 'wiki_en.parquet'}]
            columns: {{text: text, id: url, url: url}}
          - name: handbook
            format: warc
            paths: [{demo_dir / 'data' / 'handbook.warc.gz'}]
        stages:
        """) + textwrap.indent(textwrap.dedent(stages), "  ") + textwrap.dedent(f"""\
        release:
          name: core
          select: length.keep
        {mixture}"""))
    return p


def test_model_stage_and_fitted_mixture_fail_at_configuration(tmp_path, demo_dir):
    grader = _pipeline(tmp_path, demo_dir, """\
        - {name: length, kind: length_filter}
        - {name: grade, kind: llm_grader, params: {grader: ask_llm}}
        """)
    # The same stage through an OpenAI-compatible server needs nothing beyond the core.
    served = _pipeline(tmp_path / "s", demo_dir, """\
        - {name: length, kind: length_filter}
        - {name: grade, kind: llm_grader, params: {inference: {backend: openai, model: m}}}
        """)
    regmix = _pipeline(tmp_path / "r", demo_dir, """\
        - {name: length, kind: length_filter}
        """, mixture="  mixture: {method: regmix, results: runs.csv, target: loss}\n")
    (tmp_path / "r" / "runs.csv").write_text("wiki_en,handbook,loss\n0.5,0.5,3.1\n0.9,0.1,3.0\n")
    res = _child(f"""
        import json, sys
        from engines.extras import MissingExtra
        from flows.pipeline import configure_stages, release_planner
        from schemas.config import load_config
        out = {{}}
        try:
            configure_stages(load_config({str(grader)!r}))
            out["grader"] = None
        except MissingExtra as e:
            out["grader"] = str(e)
        out["served"] = [cs.name for cs in configure_stages(load_config({str(served)!r}))]
        cfg = load_config({str(regmix)!r})
        stages = configure_stages(cfg)
        try:
            release_planner(cfg, {{cs.name: set(cs.stage.writes()) for cs in stages}})
            out["regmix"] = None
        except ValueError as e:
            out["regmix"] = str(e)
        from typer.testing import CliRunner
        from flows.cli import app
        r = CliRunner().invoke(app, ["validate", {str(grader)!r}])
        out["validate"] = [r.exit_code, r.output]
        r = CliRunner().invoke(app, ["validate", {str(regmix)!r}])
        out["validate_regmix"] = [r.exit_code, r.output]
        out["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in {HIDDEN!r})
        print(json.dumps(out))
    """, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["grader"].startswith("stages[grade] (llm_grader) needs torch, transformers, gguf, safetensors")
    assert f'pip install -e "{REPO}[models]"' in out["grader"]
    assert out["served"] == ["length", "grade"]
    assert "release.mixture.method 'regmix' needs lightgbm" in out["regmix"] and "[mixture]" in out["regmix"]
    # `curate validate` (and so `curate run`, which validates first) says the same in one line, no traceback
    code, output = out["validate"]
    assert code != 0 and "stages.1.kind: llm_grader needs torch, transformers" in output and "[models]" in output
    assert "Traceback" not in output
    code, output = out["validate_regmix"]
    assert code != 0 and "release.mixture.method: method 'regmix' needs lightgbm" in output and "[mixture]" in output
    assert out["loaded"] == []


@pytest.mark.slow
def test_filters_pipeline_runs_without_the_extras(tmp_path, demo_dir):
    """`curate run` of a filters + dedup pipeline in a process (and its workers, and Prefect's
    server) that cannot import any optional package; the release it writes is complete."""
    pipeline = _pipeline(tmp_path, demo_dir, """\
        - {name: langid, kind: langid}
        - {name: length, kind: length_filter, params: {min_words: 20}}
        - {name: gopher, kind: gopher_quality}
        - {name: dedup, kind: exact_dedup}
        - {name: sig, kind: minhash_signatures}
        - {name: fuzzy, kind: minhash_dedup}
        - {name: pii, kind: pii}
        """)
    res = _child(f"""
        import sys
        from typer.testing import CliRunner
        from flows.cli import app
        r = CliRunner().invoke(app, ["run", {str(pipeline)!r}])
        print(r.output)
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise r.exception
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {HIDDEN!r})
        print("LOADED", loaded)
        sys.exit(r.exit_code)
    """, tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "LOADED []" in res.stdout
    manifest_paths = sorted((tmp_path / "lake" / "releases" / "core").glob("*/manifest.json"))
    assert len(manifest_paths) == 1
    manifest = json.loads(manifest_paths[0].read_text())
    assert manifest["totals"]["rows"] > 100
    for shard in manifest["shards"]:
        assert (manifest_paths[0].parent / shard["file"]).is_file()
