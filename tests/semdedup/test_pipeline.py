"""embed -> semantic_dedup -> release through the real Prefect flow on real text: planted rewrites
found across sources, the catalog's group tables, clusters as the groups of a mixture plan and
of perplexity-correlation selection."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import duckdb
import pytest
import yaml

from flows.pipeline import run_pipeline
from tests.helpers import real_texts

pytestmark = pytest.mark.slow


def _rewrite(text: str, rng: random.Random) -> str:
    sents = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
    rng.shuffle(sents)
    return " ".join(sents).lower()


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpora):
    root = tmp_path_factory.mktemp("sem")
    rng = random.Random(0)
    news = [t for t in real_texts(corpora, "wiki_en", 120) if t.count(". ") >= 2][:60]
    mirror = [_rewrite(t, rng) for t in news[:20]] + real_texts(corpora, "wiki_fr", 15)
    for name, texts in (("news", news), ("mirror", mirror)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    # SYNTHETIC perplexity-correlation inputs over the cluster ids 0..2 (the plumbing is tested, not the estimate)
    (root / "bpb.csv").write_text("model,domain,bpb\n" + "".join(
        f"m{m},{d},{1.0 + 0.1 * m * (d + 1) + 0.01 * d}\n" for m in range(4) for d in range(3)))
    (root / "scores.csv").write_text("model,err\n" + "".join(f"m{m},{0.5 - 0.1 * m}\n" for m in range(4)))
    cfg = {
        "name": "semtest", "lake": str(root / "lake"), "executor": {"workers": 1, "batch_rows": 32},
        "sources": [{"name": n, "format": "jsonl", "paths": [f"{n}.jsonl"]} for n in ("news", "mirror")],
        "stages": [
            {"name": "embed", "kind": "embed",
             "params": {"inference": {"backend": "sentence_transformers", "model": "all-minilm-l6-v2", "threads": 1}}},
            {"name": "sem", "kind": "semantic_dedup", "params": {"eps": 0.1, "n_clusters": 3, "d4_fraction": 0.5,
                                                                  "survivor": "source_priority",
                                                                  "source_priority": ["news"]}},
            {"name": "topics", "kind": "perplexity_correlation", "inputs": {"group": "sem.cluster"},
             "params": {"bpb": "bpb.csv", "scores": "scores.csv", "targets": ["err"], "kind": "error",
                        "group_by": "column", "ratio": 0.5}},
        ],
        "release": {"name": "semtest", "select": "sem.keep", "shard_rows": 1000,
                    "mixture": {"method": "proportional", "group_by": "sem.cluster"}},
    }
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    out = run_pipeline(str(root / "pipeline.yaml"))
    return root, out


def test_planted_rewrites_are_found_across_sources(run):
    root, out = run
    con = duckdb.connect(str(root / "lake" / "catalog.duckdb"), read_only=True)
    per_source = dict(con.execute("SELECT source, duplicates FROM semantic_sources").fetchall())
    # source_priority: the news copy survives, so the duplicates are the mirror's rewrites
    assert per_source["news"] == 0 and per_source["mirror"] >= 15
    groups = con.execute("SELECT sem_group_size, survivor_source, sources FROM semantic_groups "
                         "ORDER BY sem_group_size DESC").fetchall()
    assert len(groups) >= 15 and all(s == "news" for _, s, _ in groups)
    assert all(src == ["mirror", "news"] for _, _, src in groups if len(src) == 2)
    # every dropped document is a near duplicate by its own annotation
    bad = con.execute("SELECT count(*) FROM ann_sem WHERE NOT keep AND nearest_sim < 0.899").fetchone()[0]
    assert bad == 0
    kept = con.execute("SELECT sum(rows_kept) FROM release_sources").fetchone()[0]
    assert kept == 95 - per_source["mirror"]
    d4 = con.execute("SELECT count(*) FILTER (WHERE keep AND NOT d4_keep), count(*) FILTER (WHERE keep) "
                     "FROM ann_sem").fetchone()
    assert 0.4 <= d4[0] / d4[1] <= 0.6


def test_clusters_as_mixture_and_ppl_corr_groups(run):
    root, out = run
    manifest = json.loads((Path(out["release"]["path"]) / "manifest.json").read_text())
    assert manifest["group_by"] == "sem.cluster"
    assert set(manifest["mixture"]["weights"]) == {"sem.cluster=0", "sem.cluster=1", "sem.cluster=2"}
    assert set(manifest["released"]) == {"news", "mirror"}  # accounting stays per source
    con = duckdb.connect(str(root / "lake" / "catalog.duckdb"), read_only=True)
    sizes = dict(con.execute("SELECT cluster, count(*) FROM ann_sem WHERE keep GROUP BY cluster").fetchall())
    tokens = manifest["mixture"]["tokens"]
    assert len(tokens) == len(sizes) == 3
    # perplexity-correlation weights follow the cluster of each document
    weights = con.execute("SELECT DISTINCT s.cluster, t.ppl_weight FROM ann_sem s "
                          "JOIN ann_topics t USING (id) ORDER BY 1").fetchall()
    assert len(weights) == 3 and len({w for _, w in weights}) >= 2
