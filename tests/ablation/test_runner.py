"""`curate ablate` end to end on real-text releases: lake, catalog, summary, plot, re-run, errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ablations.results import load_all_ablations
from flows.cli import app
from tests.ablation.conftest import HELDOUT, REPO
from warehouse.catalog import Catalog

CLOZE = REPO / "demo" / "ablation" / "cloze_mc.yaml"


def _config(path: Path, **over) -> Path:
    cfg = {"model": {"preset": "test"}, "budget_tokens": 4 * 4 * 64, "seq_len": 64, "batch_size": 4, "seeds": [0, 1],
           "eval": {"points": 2, "batch_size": 16,
                    "heldout": [{"name": "wiki", "path": str(HELDOUT), "max_docs": 12}],
                    "benchmarks": [{"name": "cloze", "task": str(CLOZE), "limit": 12}]},
           "decontamination": "warn"}
    cfg.update(over)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture()
def lake(tmp_path: Path, two_release_lake: Path) -> Path:
    shutil.copytree(two_release_lake / "releases", tmp_path / "lake" / "releases")
    return tmp_path / "lake"


def test_ablate_two_releases_end_to_end(lake: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path / "ablation.yaml")
    runner = CliRunner()
    res = runner.invoke(app, ["ablate", "en", "fr/v1", "--config", str(cfg), "--lake", str(lake),
                              "--plot", str(tmp_path / "loss.png")])
    assert res.exit_code == 0, res.output
    assert "Δ mean" in res.output and "bpb/wiki" in res.output
    cat = Catalog(str(lake / "catalog.duckdb"))
    _, runs = cat.query("SELECT ablation_id, release, seed, tokens_seen, params, decontaminated FROM ablations "
                        "ORDER BY release, seed")
    assert [(r[1], r[2], r[3]) for r in runs] == [("en/v1", 0, 1024), ("en/v1", 1, 1024), ("fr/v1", 0, 1024),
                                                  ("fr/v1", 1, 1024)]
    assert all(r[5] is False for r in runs)  # these test releases were not decontaminated (warn policy)
    aid = runs[0][0]
    _, metrics = cat.query("SELECT metric, count(*) FROM ablation_evals WHERE ablation_id = ? GROUP BY 1 ORDER BY 1",
                           [aid])
    # bpb at steps 0, 2, 4 per run; accuracy at the last step only; loss and lr every step
    assert metrics == [("acc/cloze", 4), ("acc_norm/cloze", 4), ("bpb/wiki", 12), ("train/loss", 16),
                       ("train/lr", 16)]
    adir = lake / "ablations" / aid
    info = json.loads((adir / "ablation.json").read_text())
    assert info["baseline"] == "en/v1" and (adir / "loss.png").stat().st_size > 10_000
    assert (tmp_path / "loss.png").read_bytes() == (adir / "loss.png").read_bytes()
    # the summary's paired difference equals what the catalog query gives
    _, rows = cat.query(
        "SELECT seed, max(value) FILTER (release = 'fr/v1') - max(value) FILTER (release = 'en/v1') FROM ablation_evals "
        "WHERE ablation_id = ? AND metric = 'bpb/wiki' AND step = 4 GROUP BY seed ORDER BY seed", [aid])
    row = next(r for r in info["summary"] if r["metric"] == "bpb/wiki" and r["release"] == "fr/v1")
    assert row["diffs"] == pytest.approx([d for _, d in rows])
    assert row["diff_mean"] == pytest.approx(sum(d for _, d in rows) / 2)
    for run in info["runs"]:
        ckpt = lake / "ablations" / "runs" / run["run_key"] / "checkpoint"
        assert (ckpt / "model.safetensors").is_file() and (ckpt / "tokenizer.json").is_file()

    # a re-run trains nothing and gives the same ablation; the catalog is rebuilt from the lake alone
    again = runner.invoke(app, ["ablate", "en", "fr", "--config", str(cfg), "--lake", str(lake)])
    assert again.exit_code == 0 and again.output.count("reusing") == 4 and aid in again.output
    with cat.connect() as con:
        con.execute("DELETE FROM ablations")
        con.execute("DELETE FROM ablation_evals")
    assert load_all_ablations(cat, str(lake)) == [aid]
    assert cat.query("SELECT count(*) FROM ablation_evals")[1][0][0] == 52


def test_a_saved_checkpoint_loads_with_transformers(lake: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    cfg = _config(tmp_path / "a.yaml", seeds=[3], eval={"points": 1})
    res = CliRunner().invoke(app, ["ablate", "en", "--config", str(cfg), "--lake", str(lake)])
    assert res.exit_code == 0, res.output
    [ckpt] = list((lake / "ablations" / "runs").glob("*/checkpoint"))
    model = AutoModelForCausalLM.from_pretrained(str(ckpt))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(ckpt / "tokenizer.json"))
    out = model(**tok("The city of", return_tensors="pt"))
    assert out.logits.shape[-1] == 4096


@pytest.mark.parametrize("args, code, message", [
    (["nope"], 1, "no release named 'nope'"),
    (["en/v9"], 1, "no release en/v9"),
    (["en", "en/v1"], 1, "named twice"),
])
def test_user_mistakes_get_one_line(lake: Path, tmp_path: Path, args: list[str], code: int, message: str) -> None:
    cfg = _config(tmp_path / "a.yaml")
    res = CliRunner().invoke(app, ["ablate", *args, "--config", str(cfg), "--lake", str(lake)])
    assert res.exit_code == code and message in res.output and "Traceback" not in res.output


def test_bad_configs_name_the_line(lake: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {preset: 1m}\nbudget_tokens: 100\nseq_len: 64\nbatch_size: 4\nlr: 3\n")
    res = CliRunner().invoke(app, ["ablate", "en", "--config", str(bad), "--lake", str(lake)])
    assert res.exit_code == 2 and "bad.yaml:5: lr: Extra inputs are not permitted" in res.output
    bad.write_text("model: {preset: 1m}\nbudget_tokens: 100\nseq_len: 64\nbatch_size: 4\n")
    res = CliRunner().invoke(app, ["ablate", "en", "--config", str(bad), "--lake", str(lake)])
    assert res.exit_code == 2 and "budget_tokens=100 is less than one step" in res.output
    big = _config(tmp_path / "big.yaml", budget_tokens=4 * 64 * 4000)
    res = CliRunner().invoke(app, ["ablate", "en", "--config", str(big), "--lake", str(lake)])
    assert res.exit_code == 1 and "max_epochs" in res.output and "lower budget_tokens" in res.output
    preset = _config(tmp_path / "p.yaml", model={"preset": "7b"})
    res = CliRunner().invoke(app, ["ablate", "en", "--config", str(preset), "--lake", str(lake)])
    assert res.exit_code == 2 and "model.preset: Value error, unknown model preset '7b'" in res.output
    heads = _config(tmp_path / "h.yaml", model={"preset": "test", "num_attention_heads": 3})
    res = CliRunner().invoke(app, ["ablate", "en", "--config", str(heads), "--lake", str(lake)])
    assert res.exit_code == 1 and "hidden_size 32 is not a multiple of num_attention_heads 3" in res.output


def test_hostile_ablation_configs_are_refused(lake: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb.write_text("\n".join(levels) + "\nmodel: {preset: test}\nbudget_tokens: *a8\n")
    res = CliRunner().invoke(app, ["ablate", "en", "--config", str(bomb), "--lake", str(lake)])
    assert res.exit_code == 2 and "alias" in res.output and "Traceback" not in res.output
    task = tmp_path / "task.yaml"
    task.write_text("\n".join(levels) + "\ntask: t\n")
    cfg = _config(tmp_path / "t.yaml", eval={"benchmarks": [{"name": "t", "task": str(task)}]})
    res = CliRunner().invoke(app, ["ablate", "en", "--config", str(cfg), "--lake", str(lake)])
    assert res.exit_code == 1 and "alias" in res.output


def test_curate_validate_checks_the_ablation_block(tmp_path: Path, demo_dir: Path) -> None:
    from flows.validate import validate_pipeline

    p = tmp_path / "pipeline.yaml"
    p.write_text(yaml.safe_dump({
        "name": "x", "sources": [{"name": "w", "format": "parquet", "paths": [str(demo_dir / "data" / "wiki_en.parquet")]}],
        "release": {"name": "x"}, "ablation": {"settings": {"budget_tokens": 1000, "seq_len": 64, "batch_size": 4,
                                                            "model": {"preset": "nope"}}}}, sort_keys=False))
    report = validate_pipeline(p)
    assert not report.ok and any("ablation" in e and "unknown model preset 'nope'" in e for e in report.errors)


def test_releases_a_pipeline_compares() -> None:
    from ablations.config import PipelineAblation
    from flows.ablation_step import releases_to_compare

    block = PipelineAblation(config="a.yaml", compare=["parent", "other/v1", "n/v2"])
    assert releases_to_compare(block, "n", "v2", "v1") == ["n/v1", "other/v1", "n/v2"]
    assert releases_to_compare(block, "n", "v2", None) == ["other/v1", "n/v2"]
    with pytest.raises(ValueError, match="exactly one of"):
        PipelineAblation(compare=["parent"])
