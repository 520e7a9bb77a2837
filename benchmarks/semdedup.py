"""Semantic dedup: exactness against brute force, speed and memory against semhash, embedding
throughput against sentence-transformers, and a 1,000,000-vector memory run.

    python benchmarks/semdedup.py                 # everything except the 1M run (20,000 documents)
    python benchmarks/semdedup.py --quick         # 3,000 documents, a smoke run
    python benchmarks/semdedup.py --memory 1000000 250000   # the memory run(s) only

Corpus (real text, ``--docs`` 20,000 by default): the shared corpora in this order: English
Wikipedia summaries (10,033), planted rewrites of 1,000 of them (sentences reordered, one
dropped, case and punctuation changed), the Debian handbook WARC (3,302 pages: 127 pages in 26
languages, so translations of one page are in the corpus), then French and Spanish Wikipedia
(Python docs and Gutenberg after them, up to 31,122). Embedded once with the ``embed`` stage
(all-MiniLM-L6-v2, ``pooling: first``) and cached in ``$CURATE_CACHE/bench`` (resumable).

1. Embedding throughput: the ``embed`` stage (``pooling: first``, empty cache) against
   ``SentenceTransformer.encode`` on the same 1,000 texts in the same process (ratio <= 1.1).
2. Exactness: every pair with cosine >= 1 - eps by brute force (blocked matrix products) against
   the pairs ``semantic_dedup`` accepted, for n_probe 1, 2, 3, 5: precision and recall. Which
   handbook pairs cross languages is reported.
3. semhash (PyPI) on the same embeddings: docs/s, peak RSS (each in its own subprocess), and
   document-level recall/precision against the brute force (a document counts as found when
   the method puts it in a duplicate relation).
4. ``--memory N``: N random unit vectors (384-d, float16) with 1% planted near-duplicates
   through the fit, in a subprocess: peak RSS, anonymous and file-backed RSS sampled, recall of
   the planted pairs.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CORPORA = Path(os.environ.get("CURATE_CORPORA", REPO.parent / "shared" / "corpora"))
EPS = 0.05


# ----------------------------------------------------------------------------------------------
# corpus
# ----------------------------------------------------------------------------------------------
def _handbook() -> list[tuple[str, str]]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text

    out = []
    with open(CORPORA / "handbook.warc.gz", "rb") as f:
        for rec in ArchiveIterator(f, record_types=WarcRecordType.response):
            url = rec.headers.get("WARC-Target-URI", "")
            body = rec.reader.read()
            html = body.split(b"\r\n\r\n", 1)[-1].decode("utf-8", "replace")
            text = extract_plain_text(html, main_content=True)
            if text.strip():
                out.append((url, text))
    return out


def _rewrite(text: str, rng: random.Random) -> str:
    """A planted near-duplicate: sentences reordered, one dropped (of 3+), case and punctuation
    changed. Not a human paraphrase: same words, different order and surface."""
    sents = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
    if len(sents) >= 3:
        sents.pop(rng.randrange(len(sents)))
    rng.shuffle(sents)
    out = " ".join(sents)
    if rng.random() < 0.5:
        out = out.lower()
    return out.replace(",", "").replace(";", ".")


def _parquet_rows(name: str) -> list[dict]:
    t = pq.read_table(CORPORA / f"{name}.parquet").to_pylist()
    return [{"source": name, "key": r.get("url") or r.get("path") or str(i), "text": r["text"]} for i, r in enumerate(t)]


def build_corpus(docs: int, planted: int = 1000) -> pl.DataFrame:
    """The first ``docs`` documents of: English Wikipedia (half of a small run), the planted rewrites
    of some of them, the handbook pages (26 languages), then French and Spanish Wikipedia, Python
    docs, Gutenberg."""
    en = _parquet_rows("wiki_en")
    if docs < len(en) + planted:
        # A small run (--quick) would otherwise be English Wikipedia only, with no planted
        # rewrites and no translations: zero true pairs, so recall and the ratio mean nothing.
        en = en[: max(1, docs // 2)]
    rng = random.Random(0)
    base = [r for r in en if len(r["text"]) > 300]
    rows = en + [{"source": "planted", "key": "rewrite:" + r["key"], "text": _rewrite(r["text"], rng)}
                 for r in rng.sample(base, planted)]
    rows += [{"source": "handbook", "key": u, "text": t} for u, t in _handbook()]
    for name in ("wiki_fr", "wiki_es", "python_docs", "gutenberg"):
        rows += _parquet_rows(name)
    return pl.DataFrame(rows[:docs])


def embed_corpus(corpus: pl.DataFrame, cache: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """(float16 vectors, valid, seconds) through the embed stage; cached by corpus content."""
    import hashlib

    from engines.stage import StageContext
    from scorers.embed import Embed

    digest = hashlib.sha256("\x1e".join(corpus.get_column("text").to_list()).encode()).hexdigest()[:12]
    path = cache / f"semdedup-{digest}.npz"
    if path.exists():
        z = np.load(path)
        return z["vectors"], z["valid"], float(z["seconds"])
    # The first 254 word pieces of each document (pooling: first): the long handbook and Python
    # pages would otherwise cost up to 8 forward passes each, hours on 2 shared cores. The cache
    # keeps every vector, so an interrupted run resumes where it stopped.
    stage = Embed({"pooling": "first",
                   "inference": {"backend": "sentence_transformers", "model": "all-minilm-l6-v2", "batch_size": 64,
                                 "threads": 1}})
    stage.setup(StageContext(cache_dir=str(cache)))
    vecs, valid = [], []
    t0 = time.perf_counter()
    texts = corpus.get_column("text")
    for s in range(0, len(texts), 512):
        out = stage.transform(pl.DataFrame({"id": [str(i) for i in range(s, min(len(texts), s + 512))],
                                            "text": texts.slice(s, 512)}))
        arr = out.get_column("embedding").to_arrow()
        valid.append(~np.asarray(arr.is_null().to_numpy(zero_copy_only=False)))
        vecs.append(np.nan_to_num(out.get_column("embedding").to_numpy().astype(np.float16)))
        print(f"  embedded {min(len(texts), s + 512):,}/{len(texts):,} ({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = time.perf_counter() - t0
    v, ok = np.concatenate(vecs), np.concatenate(valid)
    np.savez(path, vectors=v, valid=ok, seconds=seconds)
    return v, ok, seconds


# ----------------------------------------------------------------------------------------------
# 1. embedding throughput
# ----------------------------------------------------------------------------------------------
def embedding_speed(texts: list[str], cache: Path) -> dict:
    from sentence_transformers import SentenceTransformer

    from engines.inference.models import resolve_model
    from engines.stage import StageContext
    from scorers.embed import Embed

    model = SentenceTransformer(resolve_model("all-minilm-l6-v2"), device="cpu")
    tokens = sum(min(254, n) for n in (len(x) for x in model.tokenizer(texts, add_special_tokens=False)["input_ids"]))
    res: dict[str, list[float]] = {"sentence_transformers": [], "embed_stage": []}
    for _rep in range(2):
        t = time.perf_counter()
        model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        res["sentence_transformers"].append(time.perf_counter() - t)
        stage = Embed({"pooling": "first", "inference": {"backend": "sentence_transformers",
                                                         "model": "all-minilm-l6-v2", "batch_size": 64}})
        stage.setup(StageContext(cache_dir=tempfile.mkdtemp(dir=cache)))
        frame = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts})
        t = time.perf_counter()
        for s in range(0, len(texts), 512):
            stage.transform(frame.slice(s, 512))
        res["embed_stage"].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in res.items()}
    return {"docs": len(texts), "tokens": tokens,
            **{f"{k}_docs_per_s": round(len(texts) / v, 1) for k, v in best.items()},
            **{f"{k}_tokens_per_s": round(tokens / v) for k, v in best.items()},
            "overhead": round(best["embed_stage"] / best["sentence_transformers"], 3)}


# ----------------------------------------------------------------------------------------------
# 2/3. dedup runs (each in a subprocess: peak RSS is per process)
# ----------------------------------------------------------------------------------------------
def _batches(vectors: np.ndarray, valid: np.ndarray, sources: list[str], rows: int = 4096):
    n, d = vectors.shape
    for s in range(0, n, rows):
        e = min(n, s + rows)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(vectors[s:e]).ravel()), d,
                                                mask=pa.array(~np.asarray(valid[s:e])))
        yield pl.DataFrame({"id": [f"doc{i}" for i in range(s, e)], "source": sources[s:e],
                            "ingest_run": ["bench"] * (e - s), "src_file": ["bench"] * (e - s),
                            "src_offset": np.arange(s, e), "embedding": pl.Series(emb)})


def run_ours(vectors: np.ndarray, valid: np.ndarray, sources: list[str], n_probe: int, record: bool) -> dict:
    from filters.semdedup.stage import SemanticDedup

    stage = SemanticDedup({"eps": EPS, "n_probe": n_probe, "record_pairs": record})
    art = tempfile.mkdtemp(prefix="semdedup-bench-")
    batches = list(_batches(vectors, valid, sources))  # what the executor would read from the lake; not timed
    t = time.perf_counter()
    metrics = stage.fit(iter(batches), art)
    seconds = time.perf_counter() - t
    out = {"seconds": seconds, "metrics": {k: v for k, v in metrics.items() if k != "largest_groups"}}
    docs = pa.ipc.open_file(pa.memory_map(f"{art}/documents.arrow")).read_all()
    out["in_group"] = np.flatnonzero(docs.column("sem_group_size").to_numpy() > 1).tolist()
    if record:
        pairs = pq.read_table(f"{art}/pairs.parquet", columns=["pos_a", "pos_b"])
        out["pairs"] = [pairs.column("pos_a").to_pylist(), pairs.column("pos_b").to_pylist()]
    return out


def run_semhash(vectors: np.ndarray, valid: np.ndarray, texts: list[str]) -> dict:
    from semhash import SemHash

    class Precomputed:  # semhash's Encoder protocol; never called with from_embeddings
        def encode(self, inputs, **kw):  # noqa: ANN001, ANN003
            raise RuntimeError("embeddings are precomputed")

    pos = np.flatnonzero(valid)
    records = [{"text": texts[i], "pos": str(i)} for i in pos]
    x = np.asarray(vectors[pos], dtype=np.float32)
    t = time.perf_counter()
    sh = SemHash.from_embeddings(x, records, model=Precomputed(), columns=["text"])
    result = sh.self_deduplicate(threshold=1 - EPS)
    seconds = time.perf_counter() - t
    found = set()
    for item in result.filtered:  # a removed record and the kept record it duplicates
        found.add(int(item.record["pos"]))
        if item.duplicate_of is not None:
            found.add(int(item.duplicate_of["pos"]))
    return {"seconds": seconds, "in_group": sorted(found), "removed": len(result.filtered)}


def _child(kind: str, data: str, n_probe: int, record: bool, out_path: str) -> None:
    z = np.load(data, allow_pickle=False)
    vectors, valid = z["vectors"], z["valid"]
    meta = json.loads(Path(data + ".json").read_text())
    if kind == "ours":
        res = run_ours(vectors, valid, meta["sources"], n_probe, record)
    else:
        res = run_semhash(vectors, valid, meta["texts"])
    res["peak_rss_mb"] = peak_rss_mb()
    Path(out_path).write_text(json.dumps(res))


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: on Linux that keeps the
    forking parent's peak across exec, so every child would report the benchmark's own size."""
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM"))
    return round(int(line.split()[1]) / 1024, 1)


def _run_child(args: list[str]) -> dict:
    """Run this script with ``args`` plus a result path in a fresh process; its JSON result."""
    out = tempfile.mktemp(suffix=".json")
    subprocess.run([sys.executable, __file__, *args, out], check=True)
    return json.loads(Path(out).read_text())


def in_subprocess(kind: str, data: str, n_probe: int = 3, record: bool = False) -> dict:
    return _run_child(["--child", kind, data, str(n_probe), str(int(record))])


# ----------------------------------------------------------------------------------------------
# 4. the memory run
# ----------------------------------------------------------------------------------------------
def _rss_sampler(peaks: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("RssAnon", "RssFile")):
                k, v = line.split(":")
                peaks[k] = max(peaks.get(k, 0), int(v.split()[0]) // 1024)
        stop.wait(0.2)


def memory_child(n: int, out_path: str) -> None:
    from filters.semdedup.stage import SemanticDedup

    d = 384
    pairs_a: list[np.ndarray] = []
    pairs_b: list[np.ndarray] = []

    def batches(rows: int = 8192):
        # 1% of each batch are near copies (cosine about 0.98) of other vectors of the batch.
        for s in range(0, n, rows):
            e = min(n, s + rows)
            rng = np.random.default_rng(s)
            x = rng.standard_normal((e - s, d)).astype(np.float32)
            k = (e - s) // 100
            idx = rng.choice(e - s, 2 * k, replace=False)
            x[idx[k:]] = x[idx[:k]] + 0.2 * rng.standard_normal((k, d)).astype(np.float32)
            pairs_a.append(idx[:k] + s)
            pairs_b.append(idx[k:] + s)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()).cast(pa.float16()), d)
            yield pl.DataFrame({"id": [f"v{i}" for i in range(s, e)], "source": ["random"] * (e - s),
                                "ingest_run": ["m"] * (e - s), "src_file": ["m"] * (e - s),
                                "src_offset": np.arange(s, e), "embedding": pl.Series(emb)})

    peaks: dict = {}
    stop = threading.Event()
    th = threading.Thread(target=_rss_sampler, args=(peaks, stop), daemon=True)
    th.start()
    art = tempfile.mkdtemp(prefix="semdedup-mem-")
    t = time.perf_counter()
    metrics = SemanticDedup({"eps": EPS, "n_probe": 3}).fit(batches(), art)
    seconds = time.perf_counter() - t
    stop.set()
    th.join()
    docs = pa.ipc.open_file(pa.memory_map(f"{art}/documents.arrow")).read_all()
    group = docs.column("sem_group").to_numpy()
    src, dst = np.concatenate(pairs_a), np.concatenate(pairs_b)
    found = int((group[dst] == group[src]).sum())
    planted = len(src)
    Path(out_path).write_text(json.dumps({
        "n": n, "seconds": round(seconds, 1), "planted_pairs": planted, "planted_found": found,
        "peak_rss_anon_mb": peaks.get("RssAnon"), "peak_rss_file_mb": peaks.get("RssFile"),
        "vectors_mb": round(n * d * 2 / 2**20, 1), "clusters": metrics["clusters"],
        "seconds_by_step": metrics["seconds"], "peak_rss_mb": peak_rss_mb()}))


def memory_run(n: int) -> dict:
    return _run_child(["--memory-child", str(n)])


# ----------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    flags = Path("/proc/cpuinfo").read_text()
    return {"cpu": cpu, "avx2": " avx2" in flags, "avx512f": " avx512f" in flags, "cores": os.cpu_count(),
            "load": os.getloadavg()}


def _pairs_set(a, b) -> set[tuple[int, int]]:  # noqa: ANN001
    return set(zip(list(a), list(b)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--memory", type=int, nargs="*")
    ap.add_argument("--child", nargs=5)
    ap.add_argument("--memory-child", nargs=2)
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--embed-only", action="store_true", help="embed (and cache) the corpus, then stop")
    ap.add_argument("--docs", type=int, default=20_000, help="documents of the real-text corpus (max 31,122)")
    ap.add_argument("--skip-speed", action="store_true", help="leave out the embedding throughput comparison")
    ap.add_argument("--speed-docs", type=int, default=1000, help="documents of the embedding throughput comparison")
    args = ap.parse_args()
    if args.child:
        kind, data, n_probe, record, out = args.child
        _child(kind, data, int(n_probe), bool(int(record)), out)
        return
    if args.memory_child:
        memory_child(int(args.memory_child[0]), args.memory_child[1])
        return
    report: dict = {"machine": machine()}
    print(json.dumps(report["machine"]))
    if args.memory:
        for n in args.memory:
            r = memory_run(n)
            report[f"memory_{n}"] = r
            print(json.dumps(r), flush=True)
        _save(report, args.json)
        return
    from engines.assets import cache_dir
    cache = cache_dir() / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(3000 if args.quick else args.docs, planted=200 if args.quick else 1000)
    print(f"corpus: {corpus.height:,} documents", dict(corpus.group_by("source").len().iter_rows()), flush=True)
    texts = corpus.get_column("text").to_list()

    vectors, valid, emb_s = embed_corpus(corpus, cache)
    if args.embed_only:
        return
    if not args.skip_speed:
        report["embedding_speed"] = embedding_speed(
            corpus.filter(pl.col("source") == "wiki_en").get_column("text").head(args.speed_docs).to_list(),
            cache)
        print("embedding throughput", json.dumps(report["embedding_speed"]), flush=True)
    report["corpus"] = {"documents": corpus.height, "embedded": int(valid.sum()), "embed_seconds": round(emb_s, 1)}
    data = str(cache / "semdedup-run.npz")
    np.savez(data, vectors=vectors, valid=valid)
    sources = corpus.get_column("source").to_list()
    Path(data + ".json").write_text(json.dumps({"sources": sources, "texts": texts}))

    t = time.perf_counter()
    truth = __import__("filters.semdedup.core", fromlist=["x"]).brute_force_pairs(vectors, valid, 1 - EPS, block=1024)
    report["brute_force"] = {"pairs": len(truth), "seconds": round(time.perf_counter() - t, 1)}
    true_pairs = _pairs_set(truth["a"].tolist(), truth["b"].tolist())
    print("brute force", report["brute_force"], flush=True)

    for n_probe in (1, 2, 3, 5):
        r = in_subprocess("ours", data, n_probe, record=True)
        got = _pairs_set(*r["pairs"])
        hit = len(got & true_pairs)
        report[f"ours_n{n_probe}"] = {
            "pairs": len(got), "precision": round(hit / max(1, len(got)), 4),
            "recall": round(hit / max(1, len(true_pairs)), 4), "seconds": round(r["seconds"], 2),
            "peak_rss_mb": r["peak_rss_mb"], "clusters": r["metrics"]["clusters"]}
        print(f"ours n_probe={n_probe}", report[f"ours_n{n_probe}"], flush=True)

    urls = corpus.get_column("key").to_list()
    lang = [m.group(1) if (m := re.search(r"/browse/([^/]+)/stable/(.*)$", u or "")) else None for u in urls]
    page = [m.group(2) if (m := re.search(r"/browse/([^/]+)/stable/(.*)$", u or "")) else None for u in urls]
    cross = [(a, b) for a, b in true_pairs if lang[a] and lang[b] and lang[a] != lang[b]]
    same_page = [(a, b) for a, b in cross if page[a] == page[b]]
    langs: dict[str, int] = {}
    for a, b in same_page:
        key = "-".join(sorted((lang[a], lang[b])))
        langs[key] = langs.get(key, 0) + 1
    report["cross_language"] = {"handbook_pairs_across_languages": len(cross), "same_page_translations": len(same_page),
                                "top_language_pairs": dict(sorted(langs.items(), key=lambda kv: -kv[1])[:10]),
                                "planted_rewrites_found": _planted_found(corpus, true_pairs)}
    print("cross-language", report["cross_language"], flush=True)

    doc_truth = {a for a, _ in true_pairs} | {b for _, b in true_pairs}
    ours = in_subprocess("ours", data, 3, record=False)
    peer = in_subprocess("semhash", data)
    n = int(valid.sum())
    for name, r in (("ours", ours), ("semhash", peer)):
        found = set(r["in_group"])
        hit = len(found & doc_truth)
        report[f"dedup_{name}"] = {"docs_per_s": round(n / r["seconds"], 1), "seconds": round(r["seconds"], 2),
                                   "peak_rss_mb": r["peak_rss_mb"], "doc_recall": round(hit / max(1, len(doc_truth)), 4),
                                   "doc_precision": round(hit / max(1, len(found)), 4)}
        print(name, report[f"dedup_{name}"], flush=True)
    report["speedup_vs_semhash"] = round(report["dedup_ours"]["docs_per_s"] / report["dedup_semhash"]["docs_per_s"], 2)
    print("speed-up vs semhash:", report["speedup_vs_semhash"])
    _save(report, args.json)


def _planted_found(corpus: pl.DataFrame, true_pairs: set[tuple[int, int]]) -> dict:
    keys = corpus.get_column("key").to_list()
    index = {k: i for i, k in enumerate(keys)}
    planted = [(index.get(k[len("rewrite:"):]), i) for i, k in enumerate(keys) if k.startswith("rewrite:")]
    planted = [(a, b) for a, b in planted if a is not None]
    hit = sum((min(a, b), max(a, b)) in true_pairs for a, b in planted)
    return {"planted": len(planted), "above_threshold": hit}


def _save(report: dict, path: str | None) -> None:
    if path:
        with (gzip.open if path.endswith(".gz") else open)(path, "wt") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
