"""minhash_dedup on small lakes of real text: planted families, determinism, verification,
survivor policies, bad input, incremental runs, and how the flow wires the two stages."""
from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engines.executor import LocalExecutor, ShardTask
from engines.stage import StageContext
from filters.minhash.dedup import MinHashDedup
from filters.minhash.signatures import BANDS_COLUMN, COUNT_COLUMN, MinHashSignatures
from readers.ingest import document_ids
from schemas.config import ExecutorConfig
from schemas.documents import DOCUMENT
from tests.helpers import real_texts
from tests.minhash import reference as ref
from tests.minhash.test_signatures import edited


def write_shard(path: Path, source: str, texts: list[str], dates: list[datetime | None] | None = None) -> str:
    n = len(texts)
    table = pa.Table.from_pydict({
        "id": document_ids(source, [f"{path.name}:{i}" for i in range(n)]), "text": texts, "source": [source] * n,
        "url": [None] * n, "domain": [None] * n, "lang": [None] * n, "crawl_date": dates or [None] * n,
        "license": [None] * n, "meta": [None] * n, "ingest_run": ["ing-test"] * n,
        "src_file": [f"/input/{path.name}"] * n, "src_offset": list(range(n)),
    }, schema=DOCUMENT)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return str(path)


class Runner:
    """Runs minhash_signatures, then the minhash_dedup fit and apply, over raw shards, as the flow
    does (the band columns fed from the signature annotations)."""

    def __init__(self, root: Path, sig: dict | None = None, dedup: dict | None = None, workers: int = 1):
        self.root, self.workers = root, workers
        self.sig = MinHashSignatures(sig or {})
        self.dedup = MinHashDedup(dedup or {})
        self.fits = 0

    def run(self, shards: list[tuple[str, str]], extra_inputs: dict[str, tuple] | None = None):
        k1 = self.sig.key("sig")
        with LocalExecutor(ExecutorConfig(workers=self.workers, batch_rows=300), show_progress=False) as ex:
            t1 = [ShardTask(s, p, f"{self.root}/ann/{k1}/{Path(p).name}") for s, p in shards]
            self.sig_results = ex.run_stage("sig", self.sig, t1)
            assert all(r.status != "failed" for r in self.sig_results), self.sig_results
            cols = [BANDS_COLUMN, COUNT_COLUMN]
            self.dedup.upstream = {c: k1 for c in cols}
            # A fresh name per fit: workers cache set-up stages by stage.key(name), which does not
            # include the artifact, so an in-process executor would reuse an earlier fit's setup.
            name = f"dedup{uuid.uuid4().hex[:8]}"
            k2 = self.dedup.key(name)
            t2 = [ShardTask(s, p, f"{self.root}/ann/{k2}/{Path(p).name}",
                            tuple((c, f"{self.root}/ann/{k1}/{Path(p).name}", c) for c in cols)
                            + (extra_inputs or {}).get(p, ())) for s, p in shards]
            art = self.root / f"art-{self.fits}"
            art.mkdir(parents=True)
            self.fits += 1
            self.metrics = ex.fit(self.dedup, t2, str(art))
            res = ex.run_stage(name, self.dedup, t2, StageContext(artifact_dir=str(art)))
            assert all(r.status == "computed" for r in res), [r.error for r in res]
        raw = pl.concat([pl.read_parquet(p, columns=["id", "text", "source"]) for _, p in shards])
        ann = pl.concat([pl.read_parquet(t.out_path) for t in t2])
        assert ann.get_column("_error").null_count() == ann.height
        return raw.hstack(ann.drop("id")), art


def family_corpus(corpora, rng: np.random.Generator):
    """Real Wikipedia text plus 40 planted families of four: the base, an exact copy, a copy with
    one word replaced in the middle, and a copy with a boilerplate line appended (each at
    Jaccard >= 0.87 to the base for texts of 80+ words); returns texts and families (-1: none)."""
    texts = real_texts(corpora, "wiki_en", 600) + real_texts(corpora, "wiki_fr", 300)
    texts = [t for t in texts if len(t.split()) >= 80][:400]
    docs, family = list(texts), [-1] * len(texts)
    for f, base in enumerate(texts[:40]):
        family[f] = f
        docs += [base, one_word_changed(base), base + " Retrieved from the online encyclopedia."]
        family += [f, f, f]
    order = rng.permutation(len(docs))
    return [docs[i] for i in order], [family[i] for i in order]


def one_word_changed(text: str) -> str:
    words = text.split()
    mid = len(words) // 2
    return " ".join(words[:mid] + ["zyzzyva"] + words[mid + 1:])


def true_pairs(docs: list[str], threshold: float) -> set[tuple[int, int]]:
    sets = [set(ref.shingles(d)) for d in docs]
    return {(i, j) for i in range(len(docs)) for j in range(i + 1, len(docs))
            if ref.jaccard(sets[i], sets[j]) >= threshold}


def test_planted_families_recovered_and_deterministic(tmp_path, corpora):
    docs, family = family_corpus(corpora, np.random.default_rng(1))
    half = len(docs) // 2
    shards = [("wiki", write_shard(tmp_path / "raw" / "a.parquet", "wiki", docs[:half])),
              ("wiki", write_shard(tmp_path / "raw" / "b.parquet", "wiki", docs[half:]))]
    runner = Runner(tmp_path)
    out, art = runner.run(shards)
    # Every planted family is one cluster (its members are far above the threshold) ...
    fams = pl.DataFrame({"family": family, "cluster_id": out.get_column("cluster_id"), "keep": out.get_column("keep")})
    planted = fams.filter(pl.col("family") >= 0).group_by("family").agg(pl.col("cluster_id").n_unique().alias("n"),
                                                                        pl.col("keep").sum().alias("kept"))
    assert planted.get_column("n").to_list() == [1] * 40 and planted.get_column("kept").to_list() == [1] * 40
    # ... and the clusters are exactly the components of the exact-Jaccard graph.
    pairs = true_pairs(docs, 0.8)
    parent = list(range(len(docs)))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for i, j in pairs:
        parent[max(find(i), find(j))] = min(find(i), find(j))
    roots = [find(i) for i in range(len(docs))]
    expected_dups = sum(1 for i, r in enumerate(roots) if r != i)
    assert (~out.get_column("keep")).sum() == expected_dups == runner.metrics["duplicates"]
    assert set(out.filter(~pl.col("keep")).get_column("reason")) == {"near_duplicate"}
    # survivor "first": the earliest document of each cluster in lake order.
    first = out.with_row_index("pos").filter(pl.col("cluster_size") > 1).group_by("cluster_id").agg(
        pl.col("id").first().alias("first"), pl.col("survivor_id").first().alias("survivor"))
    assert first.get_column("first").to_list() == first.get_column("survivor").to_list()
    singles = out.filter(pl.col("cluster_size") == 1)
    assert singles.get_column("keep").all() and (singles.get_column("survivor_id") == singles.get_column("id")).all()
    # The apply handles a whole batch at once (the executor's row-by-row fallback, which would
    # hide a batch-level error, gives the same rows).
    direct = MinHashDedup()
    direct.setup(StageContext(artifact_dir=str(art)))
    batch = pl.read_parquet(shards[0][1], columns=["id", "source", "ingest_run", "src_file", "src_offset"])
    assert direct.transform(batch).equals(out.slice(0, batch.height).select(list(direct.writes())))
    # Same input twice: identical clusters and artifact.
    out2, art2 = runner.run(shards)
    assert out.equals(out2)
    assert pl.read_parquet(art / "assignment.parquet").equals(pl.read_parquet(art2 / "assignment.parquet"))
    assert runner.metrics["duplicates_by_source"] == {"wiki": expected_dups}
    assert runner.metrics["largest_clusters"][0]["cluster_size"] >= 3


@pytest.mark.parametrize("survivor", ["first", "min_id"])
def test_small_partitions_give_the_same_clusters(tmp_path, corpora, monkeypatch, survivor):
    """The spills are partitioned so memory stays bounded; forcing tiny partitions and flushes
    (many files per partition, clusters ranked in many separate parts) must not change a row."""
    import filters.minhash.dedup as dd
    docs, _ = family_corpus(corpora, np.random.default_rng(3))
    shards = [("wiki", write_shard(tmp_path / "raw" / "a.parquet", "wiki", docs))]
    out, art = Runner(tmp_path / "big", dedup={"survivor": survivor}).run(shards)
    monkeypatch.setattr(dd, "MEMBERS_PER_PART", 7)
    monkeypatch.setattr(dd, "FLUSH_ROWS", 97)
    runner = Runner(tmp_path / "small", dedup={"survivor": survivor, "partitions": 5})
    out_small, art_small = runner.run(shards)
    assert (~out.get_column("keep")).sum() > 40
    assert out.equals(out_small)
    a, b = pl.read_parquet(art / "assignment.parquet"), pl.read_parquet(art_small / "assignment.parquet")
    assert a.equals(b) and a.get_column("key").is_sorted()
    # The band index: one file per key-range partition, each sorted by (key, pos); no spill left.
    parts = sorted((art_small / "buckets").glob("part-*.parquet"))
    assert 1 < len(parts) <= 5
    index = pl.concat([pl.read_parquet(q) for q in parts])
    assert index.equals(index.sort("key", "pos"))
    assert index.height == out.height * 14  # every document here has a signature of 14 bands
    assert not (art_small / "_spill").exists()


def test_verification_rejects_candidates_below_threshold(tmp_path, corpora):
    rng = np.random.default_rng(2)
    texts = [t for t in real_texts(corpora, "wiki_en", 400) if len(t.split()) >= 100][:60]
    vocab = sorted({w for t in texts for w in t.split()})
    # Pairs at Jaccard ~0.45-0.75: with 28 bands of 4 rows most become candidates.
    docs = texts + [edited(t, 0.05, rng, vocab) for t in texts]
    shards = [("wiki", write_shard(tmp_path / "raw" / "a.parquet", "wiki", docs))]
    sig = {"bands": 28, "rows": 4}
    on, _ = Runner(tmp_path / "on", sig, {"threshold": 0.8}).run(shards)
    m_on = Runner(tmp_path / "on2", sig, {"threshold": 0.8})
    m_on.run(shards)
    off_runner = Runner(tmp_path / "off", sig, {"threshold": 0.8, "verify": False})
    off, _ = off_runner.run(shards)
    sims = [ref.jaccard(set(ref.shingles(a)), set(ref.shingles(b))) for a, b in zip(texts, docs[60:])]
    below = [i for i, s in enumerate(sims) if s < 0.8]
    assert len(below) > 40
    assert m_on.metrics["rejected_pairs"] > 30
    # With verification, a pair below the threshold is never merged; without it, candidates are.
    for i in below:
        assert on.get_column("keep")[60 + i]
    assert (~off.get_column("keep")).sum() > 30
    assert off_runner.metrics["rejected_pairs"] == 0


def test_survivor_policies(tmp_path, corpora):
    base = [t for t in real_texts(corpora, "wiki_es", 200) if len(t.split()) >= 80][:30]
    dates = [datetime(2024, 1, d + 1, tzinfo=UTC) for d in range(3)]
    # One family of three copies spread over three sources, among unrelated documents.
    a = write_shard(tmp_path / "raw" / "news.parquet", "news", [base[0]] + base[1:10], [dates[0]] + [None] * 9)
    b = write_shard(tmp_path / "raw" / "blogs.parquet", "blogs", base[10:20] + [base[0] + " ¡Fin!"],
                    [None] * 10 + [dates[2]])
    c = write_shard(tmp_path / "raw" / "wiki.parquet", "wiki", base[20:30] + [base[0]], [None] * 10 + [dates[1]])
    shards = [("news", a), ("blogs", b), ("wiki", c)]
    # A score column from an "earlier stage", fed like the flow feeds annotation columns.
    scores = {a: [0.5] + [0.0] * 9, b: [0.0] * 10 + [0.2], c: [0.0] * 10 + [0.9]}
    inputs = {}
    for p, s in scores.items():
        q = str(tmp_path / f"score-{Path(p).name}")
        pq.write_table(pa.table({"id": pq.read_table(p).column("id"), "score": s}), q)
        inputs[p] = (("score", q, "score"),)
    ids = {name: pq.read_table(p).column("id").to_pylist()[-1 if name != "news" else 0] for name, p in
           (("news", a), ("blogs", b), ("wiki", c))}
    expected = {
        ("first", None): ids["news"],
        ("min_id", None): min(ids.values()),
        ("quality", None): ids["wiki"],
        ("newest", None): ids["blogs"],
        ("source_priority", ("wiki", "news")): ids["wiki"],
        ("source_priority", ("blogs",)): ids["blogs"],
    }
    for (policy, prio), want in expected.items():
        params = {"survivor": policy, **({"source_priority": list(prio)} if prio else {})}
        runner = Runner(tmp_path / f"{policy}-{prio}", dedup=params)
        out, _ = runner.run(shards, inputs)
        fam = out.filter(pl.col("cluster_size") == 3)
        assert fam.height == 3, policy
        assert set(fam.get_column("survivor_id")) == {want}, policy
        assert fam.filter(pl.col("keep")).get_column("id").to_list() == [want], policy
        assert out.filter(pl.col("cluster_size") == 1).get_column("keep").all()


def test_bad_input_documents(tmp_path, corpora):
    text = real_texts(corpora, "wiki_en", 1)[0]
    huge = " ".join(real_texts(corpora, "gutenberg", 10))
    huge_copy = huge + " The end."
    docs = ["", "  ...  ", "", "short text", "short text", "other words", text, huge, huge_copy]
    shards = [("x", write_shard(tmp_path / "raw" / "a.parquet", "x", docs))]
    runner = Runner(tmp_path, dedup={"max_shingles": 512})
    out, _ = runner.run(shards)
    keep = out.get_column("keep").to_list()
    size = out.get_column("cluster_size").to_list()
    # Empty after normalisation: kept, alone (never clustered with each other).
    assert keep[:3] == [True] * 3 and size[:3] == [1, 1, 1]
    # Shorter than the n-gram: identical ones are duplicates, different ones are not.
    assert keep[3:6] == [True, False, True] and size[3:6] == [2, 2, 1]
    # Enormous documents: verified on their bottom-k samples, clustered.
    assert keep[7:] == [True, False] and size[7:] == [2, 2]
    assert runner.metrics["without_signature"] == 3


def test_incremental_run_reuses_old_signatures(tmp_path, corpora):
    texts = [t for t in real_texts(corpora, "wiki_en", 1500) if len(t.split()) >= 80][:300]
    night1 = [("wiki", write_shard(tmp_path / "raw" / "n1-a.parquet", "wiki", texts[:150])),
              ("wiki", write_shard(tmp_path / "raw" / "n1-b.parquet", "wiki", texts[150:250]))]
    runner = Runner(tmp_path, workers=2)
    out1, _ = runner.run(night1)
    assert [r.status for r in runner.sig_results] == ["computed", "computed"]
    before = {r.task.out_path: os.stat(r.task.out_path).st_mtime_ns for r in runner.sig_results}
    # Night 2: new documents, five of them near-duplicates of night-1 documents, two of each other.
    new = texts[250:300] + [one_word_changed(texts[i]) for i in (3, 70, 160, 200, 249)] + [texts[260]]
    night2 = night1 + [("wiki", write_shard(tmp_path / "raw" / "n2-a.parquet", "wiki", new))]
    out2, _ = runner.run(night2)
    status = {Path(r.task.raw_path).name: r.status for r in runner.sig_results}
    assert status == {"n1-a.parquet": "skipped", "n1-b.parquet": "skipped", "n2-a.parquet": "computed"}
    assert {r.task.out_path: os.stat(r.task.out_path).st_mtime_ns for r in runner.sig_results
            if r.task.out_path in before} == before
    new_rows = out2.slice(250)
    dups = new_rows.filter(~pl.col("keep"))
    assert dups.height == 6  # five of old documents, one of a new document
    old_ids = set(out1.get_column("id"))
    assert sum(s in old_ids for s in dups.get_column("survivor_id")) == 5
    assert out2.slice(0, 250).get_column("keep").all()


def test_flow_feeds_band_columns(tmp_path, monkeypatch):
    from flows.pipeline import configure_stages
    from schemas.config import PipelineConfig

    monkeypatch.setenv("CURATE_PLUGINS", "filters.minhash")
    cfg = PipelineConfig.model_validate({
        "name": "t", "sources": [{"name": "s", "format": "jsonl", "paths": ["x.jsonl"]}],
        "stages": [{"name": "sig", "kind": "minhash_signatures"},
                   {"name": "near_dup", "kind": "minhash_dedup", "params": {"survivor": "first"}}],
        "release": {"name": "t", "select": "near_dup.keep"}})
    stages = configure_stages(cfg)
    assert {f[0]: f[1] for f in stages[1].feeds} == {BANDS_COLUMN: "sig", COUNT_COLUMN: "sig"}
    json.dumps(stages[1].stage.params.model_dump())  # params are plain data


def test_missing_signature_columns_is_a_clear_error(tmp_path):
    stage = MinHashDedup()
    batch = pl.DataFrame({"id": ["a"], "source": ["s"], "ingest_run": ["i"], "src_file": ["f"], "src_offset": [0],
                          "crawl_date": [None]})
    with pytest.raises(ValueError, match="minhash_signatures"):
        stage.fit(iter([batch]), str(tmp_path))
