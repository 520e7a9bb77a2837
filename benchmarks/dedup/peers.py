"""The peers of the dedup benchmark, each run as its own process in the peers' virtualenv.

    /work/main/.venv-bench/bin/python benchmarks/dedup/peers.py datasketch --input DIR --out removed.npy
    /work/main/.venv-bench/bin/python benchmarks/dedup/peers.py datatrove --input DIR --out removed.npy --work TMP

``--input`` is a folder of Parquet files with ``doc_idx``, ``id`` and ``text``; each writes the
``doc_idx`` of the documents it removes to ``--out`` (NumPy). Parameters are the benchmark's:
word 5-grams, 112 permutations as 14 bands x 8 rows. text-dedup runs through its own CLI (see
run.py). This file imports nothing of the project, so it runs where the peers are installed.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil

import numpy as np
import pyarrow.parquet as pq

NON_WORD = re.compile(r"\W+", re.UNICODE)


def run_datasketch(files: list[str], out: str, ngram: int, bands: int, rows: int) -> None:
    """Plain single-process datasketch: MinHash per document, MinHashLSH query then insert;
    a document that matches any earlier one is removed (the first is kept)."""
    from datasketch import MinHash, MinHashLSH

    num_perm = bands * rows
    lsh = MinHashLSH(num_perm=num_perm, params=(bands, rows))
    removed = []
    for f in files:
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=10_000, columns=["doc_idx", "text"]):
            for idx, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                words = [w for w in NON_WORD.split(text.lower()) if w]
                shingles = {" ".join(words[i:i + ngram]).encode("utf-8")
                            for i in range(max(1, len(words) - ngram + 1))}
                m = MinHash(num_perm=num_perm, seed=1)
                m.update_batch(list(shingles))
                if lsh.query(m):
                    removed.append(idx)
                lsh.insert(idx, m, check_duplication=False)
    np.save(out, np.array(removed, dtype=np.int64))


def run_datatrove(files: list[str], out: str, work: str, ngram: int, bands: int, rows: int, workers: int) -> None:
    """datatrove's four MinHash steps with its local executor, as its documentation runs them."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    shutil.rmtree(work, ignore_errors=True)
    folder = os.path.dirname(files[0])
    cfg = MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=bands, hashes_per_bucket=rows, n_grams=ngram)
    tasks = len(files)

    def reader() -> ParquetReader:
        return ParquetReader(folder, text_key="text", id_key="id", glob_pattern="*.parquet")

    s1 = LocalPipelineExecutor(pipeline=[reader(), MinhashDedupSignature(output_folder=f"{work}/sigs", config=cfg)],
                               tasks=tasks, workers=workers, logging_dir=f"{work}/logs/s1")
    s2 = LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets",
                                                             config=cfg)],
                               tasks=bands, workers=workers, logging_dir=f"{work}/logs/s2", depends=s1)
    s3 = LocalPipelineExecutor(pipeline=[MinhashDedupCluster(input_folder=f"{work}/buckets",
                                                             output_folder=f"{work}/remove_ids", config=cfg)],
                               tasks=1, logging_dir=f"{work}/logs/s3", depends=s2)
    s4 = LocalPipelineExecutor(pipeline=[reader(), MinhashDedupFilter(
        input_folder=f"{work}/remove_ids", exclusion_writer=JsonlWriter(f"{work}/removed", compression=None))],
        tasks=tasks, workers=workers, logging_dir=f"{work}/logs/s4", depends=s3)
    s4.run()
    import json
    removed = []
    for f in sorted(glob.glob(f"{work}/removed/*.jsonl")):
        with open(f) as fh:
            removed.extend(int(json.loads(line)["id"]) for line in fh)
    np.save(out, np.array(sorted(removed), dtype=np.int64))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tool", choices=["datasketch", "datatrove"])
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/dedup-bench-work")
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--bands", type=int, default=14)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    files = sorted(glob.glob(os.path.join(a.input, "*.parquet")))
    if a.tool == "datasketch":
        run_datasketch(files, a.out, a.ngram, a.bands, a.rows)
    else:
        run_datatrove(files, a.out, a.work, a.ngram, a.bands, a.rows, a.workers)


if __name__ == "__main__":
    main()
