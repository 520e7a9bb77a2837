"""Raw shards of a fixed set of real inputs, reduced to content digests, to show that a change to the
ingest hot path leaves every persisted value (ids included) as it was.

``python -m tests.ingest_golden`` prints the digests of the current code as JSON; the file
``tests/data/ingest_golden.json`` holds the ones the ingest code produced before its speed-up
(commit c9f691c), and tests/test_ingest_identity.py compares. The inputs are built from files in
the repository (demo/data, tests/data/corpora), so a clone computes them alone:

- the demo's five inputs as the demo pipeline maps them (Parquet, JSONL .gz/.zst/plain, WARC);
- a JSONL file built from Spanish Wikipedia rows with fields of every JSON kind (nested objects,
  lists, numbers, booleans, nulls: they go to ``meta``), a mapped date, license and language
  field, rows without an id (the key falls back to the URL) or a URL (to the text), invalid UTF-8,
  a line that is not JSON and one that is not an object;
- a Parquet file of Gutenberg texts with no id or URL mapped (the text is the key) and a nested column.

A digest is the sha256 of the shard's rows as canonical JSON (column order, ``default=str``), with
the input folder replaced by ``<in>`` in ``src_file``: it does not depend on Parquet writer bytes.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from readers.ingest import IngestFileTask, ingest_file
from schemas.config import SourceConfig

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "ingest_golden.json"


def _mixed_jsonl(path: Path) -> None:
    rows = pq.read_table(REPO / "tests" / "data" / "corpora" / "wiki_es.parquet").slice(0, 1200).to_pylist()
    lines: list[bytes] = []
    for i, r in enumerate(rows):
        rec: dict[str, Any] = {"body": r["text"], "title": r["title"], "topic": r["topic"]}
        if i % 7:
            rec["doc_id"] = f"es-{i}"
        if i % 5:
            rec["link"] = r["url"]
        rec["when"] = f"2024-0{1 + i % 9}-1{i % 10}T0{i % 10}:30:00Z" if i % 4 else None
        rec["lic"] = "CC-BY-SA-3.0" if i % 3 == 0 else None
        rec["language"] = "es"
        rec["stats"] = {"words": len(r["text"].split()), "ratio": round(len(r["text"]) / 1000, 3), "ok": i % 2 == 0,
                        "tags": [r["topic"], "wiki"] if i % 6 else []}
        rec["rank"] = i if i % 11 else None
        lines.append(json.dumps(rec, ensure_ascii=i % 2 == 0).encode())
    lines[17] = lines[17].replace(b"a", b"\xff\xfe", 1)  # invalid UTF-8 inside a string: repaired
    lines.insert(40, b"{not json")
    lines.insert(80, b"[1, 2, 3]")
    lines.insert(120, b"")
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")


def _gutenberg_parquet(path: Path) -> None:
    t = pq.read_table(REPO / "tests" / "data" / "corpora" / "gutenberg.parquet")
    n = t.num_rows
    t = t.append_column("info", pa.array([{"n": i, "parts": [i, i + 1]} for i in range(n)]))
    pq.write_table(t, path, row_group_size=5)


def inputs(folder: Path) -> list[tuple[SourceConfig, Path]]:
    demo = REPO / "demo" / "data"
    for name in ("wiki_en.parquet", "wiki_fr.jsonl.gz", "wiki_es.jsonl.zst", "python_docs.jsonl", "handbook.warc.gz"):
        shutil.copy(demo / name, folder / name)
    _mixed_jsonl(folder / "mixed.jsonl.gz")
    _gutenberg_parquet(folder / "gutenberg.parquet")
    wiki = {"text": "text", "id": "url", "url": "url"}
    return [
        (SourceConfig(name="wiki_en", format="parquet", paths=["x"], columns=wiki, license="CC-BY-SA-4.0"),
         folder / "wiki_en.parquet"),
        (SourceConfig(name="wiki_fr", format="jsonl", paths=["x"], columns=wiki), folder / "wiki_fr.jsonl.gz"),
        (SourceConfig(name="wiki_es", format="jsonl", paths=["x"], columns=wiki), folder / "wiki_es.jsonl.zst"),
        (SourceConfig(name="python_docs", format="jsonl", paths=["x"], columns={"text": "text", "id": "path", "url": "url"},
                      license="PSF-2.0"), folder / "python_docs.jsonl"),
        (SourceConfig(name="handbook", format="warc", paths=["x"]), folder / "handbook.warc.gz"),
        (SourceConfig(name="mixed", format="jsonl", paths=["x"], license="CC-BY-SA-4.0",
                      columns={"text": "body", "id": "doc_id", "url": "link", "crawl_date": "when", "license": "lic",
                               "lang": "language"}), folder / "mixed.jsonl.gz"),
        (SourceConfig(name="gutenberg", format="parquet", paths=["x"], columns={"text": "text"}),
         folder / "gutenberg.parquet"),
    ]


def table_digest(table: pa.Table, folder: Path) -> str:
    h = hashlib.sha256(json.dumps(table.schema.names).encode())
    for row in table.to_pylist():
        if isinstance(row.get("src_file"), str):
            row["src_file"] = row["src_file"].replace(str(folder), "<in>")
        if isinstance(row.get("file"), str):
            row["file"] = row["file"].replace(str(folder), "<in>")
        h.update(json.dumps(list(row.items()), default=str, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def digests(work: Path, shard_bytes: int = 300_000) -> dict[str, Any]:
    """Ingest every input (small shards, so each file rolls over) and digest what was written."""
    folder = work / "in"
    folder.mkdir(parents=True)
    out: dict[str, Any] = {}
    for source, path in inputs(folder):
        task = IngestFileTask(source, str(path), 0, str(work / "raw" / source.name), str(work / "q" / source.name),
                              "ing-golden", "run-golden", shard_bytes)
        res = ingest_file(task)
        out[source.name] = {
            "rows_in": res.rows_in, "rows_written": res.rows_written, "rows_quarantined": res.rows_quarantined,
            "parts": [{"rows": p["rows"], "text_bytes": p["text_bytes"],
                       "digest": table_digest(pq.read_table(p["path"]), folder)} for p in res.parts],
            "quarantine": table_digest(pq.read_table(res.quarantine_file), folder) if res.quarantine_file else None,
        }
    return out


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        json.dump(digests(Path(tmp)), sys.stdout, indent=1, sort_keys=True)
        print()
