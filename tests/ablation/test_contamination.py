"""Decontamination of releases against the ablation's eval sets: provenance and measured overlap."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from ablations.contamination import EvalFile, check_releases, selection_columns
from ablations.data import AblationError, resolve_release
from filters.decontam import BenchmarkSpec, Decontaminate
from tests.ablation.conftest import make_release
from tests.export.release_builder import release_rows


@pytest.fixture()
def leaky(tmp_path: Path, corpora: Path) -> tuple[Path, Path, int]:
    """A release of 80 English summaries and an eval file holding 10 of them (planted leak)."""
    make_release(tmp_path, corpora, "r", sources={"wiki_en": 80})
    texts = pl.read_parquet(corpora / "wiki_en.parquet", columns=["text"]).head(80).get_column("text").to_list()
    leaked = texts[30:40]
    evalf = tmp_path / "heldout.jsonl"
    evalf.write_text("".join(json.dumps({"text": t}) + "\n" for t in leaked + ["An unrelated sentence. " * 20]))
    rows = release_rows(tmp_path / "releases" / "r" / "v1").get_column("text").to_list()
    return tmp_path, evalf, sum(t in set(leaked) and len(t.split()) >= 13 for t in rows)


def test_require_refuses_a_release_that_holds_eval_text(leaky) -> None:
    lake, evalf, _ = leaky
    rel = resolve_release("r", str(lake))
    with pytest.raises(AblationError, match="did not decontaminate against this file.*share a 13-word n-gram"):
        check_releases([rel], [EvalFile("held", str(evalf), ("text",))], str(lake), "require", log=lambda m: None)


def test_warn_measures_the_planted_overlap(leaky) -> None:
    lake, evalf, planted = leaky
    warned: list[str] = []
    [f] = check_releases([resolve_release("r", str(lake))], [EvalFile("held", str(evalf), ("text",))], str(lake),
                         "warn", log=warned.append)
    assert planted > 0 and f.contaminated_docs == planted and not f.provenance and not f.clean
    assert len(warned) == 1 and "held" in warned[0]
    assert check_releases([resolve_release("r", str(lake))], [EvalFile("held", str(evalf), ("text",))], str(lake),
                          "off") == []


def _with_decontam_stage(lake: Path, evalf: Path, select: str) -> None:
    """Fit the pipeline's decontaminate stage on the eval file into the lake's artifacts and name
    it in the release manifest, as a pipeline run does."""
    key = "decontam@1-abc-fit0"
    art = lake / "artifacts" / key
    art.mkdir(parents=True)
    Decontaminate(Decontaminate.Params(benchmarks=[BenchmarkSpec(name="held", path=str(evalf), text_field="text")])
                  ).fit(iter(()), str(art))
    mpath = lake / "releases" / "r" / "v1" / "manifest.json"
    m = json.loads(mpath.read_text())
    m.update(selection=select, inputs={"stages": {"length": "length@1-x", "decontam": key}})
    mpath.write_text(json.dumps(m))


def test_provenance_needs_the_stage_in_the_selection(leaky) -> None:
    lake, evalf, _ = leaky
    _with_decontam_stage(lake, evalf, "length.keep")  # ran, but its verdict is not applied
    [f] = check_releases([resolve_release("r", str(lake))], [EvalFile("held", str(evalf), ("text",))], str(lake), "warn",
                         log=lambda m: None)
    assert not f.provenance
    m = json.loads((lake / "releases" / "r" / "v1" / "manifest.json").read_text())
    m["selection"] = "length.keep and decontam.keep"
    (lake / "releases" / "r" / "v1" / "manifest.json").write_text(json.dumps(m))
    [f] = check_releases([resolve_release("r", str(lake))], [EvalFile("held", str(evalf), ("text",))], str(lake), "warn",
                         log=lambda m: None)
    assert f.provenance and f.stage == "decontam"
    assert f.contaminated_docs and not f.clean  # this test release was not actually filtered: still measured


def test_a_changed_eval_file_is_not_covered(leaky) -> None:
    lake, evalf, _ = leaky
    _with_decontam_stage(lake, evalf, "decontam.keep")
    evalf.write_text(evalf.read_text() + json.dumps({"text": "one more example"}) + "\n")
    [f] = check_releases([resolve_release("r", str(lake))], [EvalFile("held", str(evalf), ("text",))], str(lake), "warn",
                         log=lambda m: None)
    assert not f.provenance


def test_selection_columns() -> None:
    assert selection_columns("a.keep and (b.score > 0.5 or source == 'x')") == {"a.keep", "b.score"}
    assert selection_columns("not (") == set()
