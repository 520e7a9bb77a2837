"""Builders for small lakes made of real text, without going through the readers."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from readers.ingest import document_ids
from schemas.documents import DOCUMENT


def cli_env(root: Path) -> dict[str, str]:
    """Environment for a `curate` subprocess in a test: the test plugins, no progress bars, a
    private Prefect home under ``root`` and no Prefect server from the caller's shell."""
    import os

    from tests.conftest import REPO
    env = dict(os.environ, CURATE_PLUGINS="tests.plugins", PYTHONPATH=str(REPO), CURATE_PROGRESS="0",
               PREFECT_HOME=str(root / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    return env


def real_texts(corpora: Path, name: str, n: int, offset: int = 0) -> list[str]:
    t = pq.read_table(corpora / f"{name}.parquet", columns=["text"])
    return t.column("text").to_pylist()[offset:offset + n]


def make_raw_shard(path: Path, source: str, texts: list[str], ingest_run: str = "ing-test") -> pa.Table:
    n = len(texts)
    table = pa.Table.from_pydict({
        "id": document_ids(source, [f"{path.name}:{i}" for i in range(n)]),
        "text": texts, "source": [source] * n, "url": [None] * n, "domain": [None] * n, "lang": [None] * n,
        "crawl_date": [None] * n, "license": ["CC-BY-SA-4.0"] * n, "meta": [None] * n,
        "ingest_run": [ingest_run] * n, "src_file": [f"/input/{source}.jsonl"] * n, "src_offset": list(range(n)),
    }, schema=DOCUMENT)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return table


def make_lake(root: Path, sources: dict[str, list[list[str]]], ingest_run: str = "ing-test",
              ingested_at: str = "2026-01-01T00:00:00") -> list[str]:
    """Write raw shards (one list of texts per shard) plus the ingest markers that list them."""
    paths = []
    for source, shards in sources.items():
        run_dir = root / "raw" / source / ingest_run
        parts = []
        for k, texts in enumerate(shards):
            p = run_dir / f"part-00000-{k:03d}.parquet"
            make_raw_shard(p, source, texts, ingest_run)
            parts.append({"path": str(p), "rows": len(texts), "text_bytes": sum(len(t.encode()) for t in texts)})
            paths.append(str(p))
        (run_dir / "_done").mkdir(parents=True, exist_ok=True)
        (run_dir / "_done" / "00000.json").write_text(json.dumps({
            "source": source, "file": f"/input/{source}.jsonl", "file_index": 0, "fingerprint": f"fp-{source}",
            "ingest_run": ingest_run, "parts": parts, "rows_in": sum(len(s) for s in shards),
            "rows_written": sum(len(s) for s in shards), "rows_quarantined": 0, "bytes_read": 0, "seconds": 0.0,
            "skipped": False, "quarantine_file": None, "ingested_at": ingested_at}))
    return sorted(paths)


#: Stages a test leaves out when it is about the flow, not the models: besides the LLM stages,
#: the sentence embeddings (the demo's costliest CPU stage) and the semantic dedup that reads them.
LIGHT_KINDS = ("llm_grader", "perplexity", "rewrite", "embed", "semantic_dedup")


def demo_config(demo_dir: Path, lake: Path,
                drop_kinds: tuple[str, ...] = ("llm_grader", "perplexity", "rewrite")) -> dict:
    """The demo pipeline as a dict, reading the bundled data in place and writing to ``lake``.

    Slow model-backed stages are left out unless a test is about them (test_flow_e2e keeps all)."""
    import yaml
    cfg = yaml.safe_load((demo_dir / "pipeline.yaml").read_text())
    cfg["lake"] = str(lake)
    for s in cfg["sources"]:
        s["paths"] = [str(demo_dir / p) for p in s["paths"]]
    for st in cfg["stages"]:
        for b in st.get("params", {}).get("benchmarks", []):
            b["path"] = str(demo_dir / b["path"])
        for k in ("bpb", "scores"):
            if k in st.get("params", {}):
                st["params"][k] = str(demo_dir / st["params"][k])
    dropped = {st["name"] for st in cfg["stages"] if st["kind"] in drop_kinds}
    # Stages that read a dropped stage's columns go too (in pipeline order, so chains follow).
    for st in cfg["stages"]:
        if any(v.split(".")[0] in dropped for v in st.get("inputs", {}).values()):
            dropped.add(st["name"])
    cfg["stages"] = [st for st in cfg["stages"] if st["name"] not in dropped]
    # The selection's "and <stage>.keep" terms of dropped stages go with them.
    for name in dropped:
        cfg["release"]["select"] = cfg["release"]["select"].replace(f" and {name}.keep", "")
    # Without the rewrite stage its derived sources (<source>.<route>) do not exist.
    if not any(st["kind"] == "rewrite" for st in cfg["stages"]):
        real = {s["name"] for s in cfg["sources"]}
        for st in cfg["stages"]:
            if st.get("sources"):
                st["sources"] = [n for n in st["sources"] if n in real]
        (cfg["release"].get("mixture") or {}).pop("synthetic_share", None)
    return cfg


#: The model caches a run keeps in ``<lake>/cache/``, by file: the rewrite stage's replies
#: (rewriting/generate.py) and the embed stage's vectors (scorers/embed.py).
REWRITES, EMBEDDINGS = "rewrite_results.sqlite", "embeddings.sqlite"


def share_cache(local_lake: Path, lake: str | Path, file: str = REWRITES, required: bool = True) -> int:
    """Put the model results a local lake's runs cached (``file``: REWRITES or EMBEDDINGS) into
    another lake's cache, as a worker of that lake would have left them: its run then reads them
    from the cache instead of spending minutes of CPU computing the same seeded replies or
    vectors again. On a remote lake (``s3://``) they go in as one write-once cache segment, so
    its run takes the segment-import path of engines/storage_cache.py; on a local lake into its
    SQLite file. ``required``: the source must hold some (else an empty source shares nothing).
    Returns how many entries were shared."""
    import sqlite3

    from engines import storage
    from engines.inference.cache import ResultCache, VectorCache
    from engines.storage_cache import LakeSegments

    cls = {REWRITES: ResultCache, EMBEDDINGS: VectorCache}[file]
    src = Path(local_lake) / "cache" / file
    rows: list = []
    if src.exists():
        con = sqlite3.connect(src, timeout=60)
        rows = con.execute(f"SELECT key, value FROM {cls.table} ORDER BY key").fetchall()
        con.close()
    assert rows or not required, f"the local run cached nothing in {src}"
    if not rows:
        return 0
    url = f"{str(lake).rstrip('/')}/cache/{file}"
    if storage.is_local_url(url):
        cache = cls(url)  # written through the store, as the stage writes it
        cache.put_many({k: cache._decode(v) for k, v in rows})
        cache.close()
    else:
        LakeSegments(url, cls.arrow_type).write(rows)
    return len(rows)


def session_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like a lake (its ``cache/`` only) where this test session's modules leave
    the model results their demo runs computed, and where modules whose subject is not the models
    (the Ray and S3 runs, the report) look first: the same seeded replies and vectors, computed by
    a real model once per session instead of once per module. One folder per session, the same
    for every pytest-xdist worker; a module that runs before any producer computes its own."""
    import os
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "model-results"
