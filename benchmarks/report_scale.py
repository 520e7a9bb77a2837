"""Does the report stay within bounded memory on a large release? (A scale check, not a race.)

Builds a corpus of ``--docs`` real-text documents (the shared corpora's paragraphs, cycled, with
a share of exact copies so dedup has clusters), runs a cheap pipeline over it with `curate run`
(length filter, exact dedup, difficulty; a folding curriculum), then times `curate report` in a
fresh process and prints its peak resident memory (and the peak after its imports alone, so the
difference is what building the report added) next to the size of the release's input.
The report must scale with one raw shard and DuckDB's memory limit, not with the corpus:

    python -m benchmarks.report_scale --docs 200000

There is no peer to run: nothing else writes this report. The figure to compare is the peak
RSS against the input text bytes (and against a run with --docs 20000: it should barely move).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
CORPORA = Path(os.environ.get("CURATE_CORPORA", REPO.parent / "shared" / "corpora"))


def make_corpus(path: Path, docs: int, copies: float = 0.03, *, start: int = 0, paras_per_doc: int = 1,
                corpora: Path = CORPORA) -> int:
    """Paragraph-sized documents from the corpora (``paras_per_doc`` paragraphs each, cycled, each
    numbered so it is unique); ``copies`` of them repeat the one before. Documents ``start`` to
    ``start + docs``: files made with disjoint ranges hold different documents. Returns the text bytes."""
    paras: list[str] = []
    for name in ("wiki_en", "wiki_fr", "wiki_es", "python_docs", "gutenberg"):
        f = corpora / f"{name}.parquet"
        if f.exists():
            for t in pq.read_table(f, columns=["text"]).column("text").to_pylist():
                paras += [p for p in t.split("\n\n") if len(p) > 80]
    if not paras:
        sys.exit(f"no corpora at {corpora}; set CURATE_CORPORA")
    writer = None
    n_bytes = 0
    for first in range(start, start + docs, 50_000):
        n = min(50_000, start + docs - first)
        texts = []
        for i in range(first, first + n):
            j = i - 1 if copies and i % int(1 / copies) == 0 and i else i  # a copy of the previous one
            body = "\n\n".join(paras[(j * paras_per_doc + k) % len(paras)] for k in range(paras_per_doc))
            texts.append(f"{body}\n\n(part {j // len(paras)})" if paras_per_doc == 1 else f"{body}\n\n(document {j})")
        n_bytes += sum(len(t.encode()) for t in texts)
        table = pa.table({"id": [f"d{i}" for i in range(first, first + n)], "text": texts})
        writer = writer or pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table)
    assert writer is not None
    writer.close()
    return n_bytes


# `curate report` in a process of its own, printing its peak RSS after its imports and at its end.
# VmHWM is this process's own peak; Linux carries ru_maxrss across exec, so that one would start
# at the (corpus-holding) parent's size.
_PEAK = ("import resource, sys\n"
         "def peak():\n    try:\n        return next(int(ln.split()[1]) for ln in open('/proc/self/status') "
         "if ln.startswith('VmHWM:'))\n    except OSError:\n"
         "        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
         "from flows.cli import app\nimport warehouse.report, flows.commands.report\n"
         "base = peak()\ntry:\n    app(sys.argv[1:])\n"
         "except SystemExit as e:\n    assert not e.code, e.code\n"
         "print(base, peak())")


def report_peak_kb(lake: Path, ref: str, out: Path, env: dict[str, str] | None = None) -> tuple[int, int]:
    """Run ``curate report REF --out OUT`` in a fresh process; its peak RSS in KB after its imports
    and at its end (their difference is what building the report added)."""
    env = dict(os.environ if env is None else env, CURATE_PROGRESS="0", PREFECT_LOGGING_LEVEL="WARNING")
    got = subprocess.run([sys.executable, "-c", _PEAK, "report", ref, "--lake", str(lake), "--out", str(out)],
                         cwd=REPO, env=env, check=True, capture_output=True, text=True)
    base_kb, peak_kb = map(int, got.stdout.strip().splitlines()[-1].split())
    return base_kb, peak_kb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="curate-report-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    text_bytes = make_corpus(work / "corpus.parquet", args.docs)
    cfg = {"name": "scale", "lake": str(work / "lake"),
           "executor": {"kind": "local", "workers": 2, "shard_bytes": 16_000_000},
           "sources": [{"name": "web", "format": "parquet", "paths": [str(work / "corpus.parquet")],
                        "columns": {"text": "text", "id": "id"}}],
           "stages": [{"name": "length", "kind": "length_filter", "params": {"min_words": 20}},
                      {"name": "dedup", "kind": "exact_dedup"},
                      {"name": "difficulty", "kind": "difficulty"}],
           "release": {"name": "scale", "select": "length.keep and dedup.keep and difficulty.compression_ratio > 1.2",
                       "shard_rows": 50_000, "curriculum": {"kind": "folding", "column": "difficulty.compression_ratio",
                                                            "folds": 3}}}
    (work / "p.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, CURATE_PROGRESS="0", PREFECT_LOGGING_LEVEL="WARNING")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.cli", "run", str(work / "p.yaml")], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    run_s = time.perf_counter() - t0
    out = work / "again.html"
    # The fates file the run wrote is removed, so the report replays the release's decision too.
    for f in (work / "lake" / "reports").glob("scale/*/fates.parquet"):
        f.unlink()
    t0 = time.perf_counter()
    base_kb, peak_kb = report_peak_kb(work / "lake", "scale", out, env)
    report_s = time.perf_counter() - t0
    page = out.read_text()
    data = json.loads(page.split('id="curate-report-data">', 1)[1].split("</script>", 1)[0])
    print(json.dumps({
        "docs": args.docs, "input_text_mb": round(text_bytes / 1e6, 1), "released_rows": data["release"]["rows"],
        "run_s": round(run_s, 1), "report_s": round(report_s, 1),
        "report_peak_rss_mb": round(peak_kb / 1024, 1), "imports_peak_rss_mb": round(base_kb / 1024, 1),
        "report_added_rss_mb": round((peak_kb - base_kb) / 1024, 1),
        "report_kb": round(len(page.encode()) / 1024), "dup_clusters": data["duplicates"][0]["clusters"],
        "load_average": os.getloadavg()[0], "cpu": _cpu(),
    }, indent=1))
    if not args.dir:
        import shutil
        shutil.rmtree(work, ignore_errors=True)


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "unknown")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    return f"{name} ({os.cpu_count()} CPUs; {'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'})"


if __name__ == "__main__":
    main()
