"""Hugging Face datasets export: Parquet shards plus a dataset card, loadable with
``datasets.load_dataset(out_dir, split="train")``.

Layout::

    out/README.md                                  dataset card (YAML: configs -> data files)
    out/data/train-00000-of-00003.parquet ...      one per release shard, in training order

Every release column is kept. With a tokenizer, ``input_ids`` (a list of token ids per document,
end-of-text appended) is added and ``n_tokens`` becomes its length. The card names the release,
its mixture weights, order, seed and phases, and the per-source counts. ``load_dataset`` reads
the files in name order, which is the training order (no shuffling is applied).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.export.release_reader import Release, SourceCounter, iter_shards
from warehouse.export.token_cache import ShardTokenizer


def write(release: Release, out: Path, tokenizer: ShardTokenizer | None = None, compression: str = "zstd") -> dict[str, Any]:
    counter = SourceCounter()
    (out / "data").mkdir()
    n = len(release.shards)
    files = []
    for i, (entry, table) in enumerate(iter_shards(release)):
        if tokenizer is not None:
            flat, lens = tokenizer.encode_shard(entry, table.num_rows, table.column("text").to_pylist)
            offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
            ids = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat))
            table = table.set_column(table.schema.get_field_index("n_tokens"), "n_tokens", pa.array(lens, pa.int64()))
            table = table.append_column("input_ids", ids)
        name = f"data/train-{i:05d}-of-{n:05d}.parquet"
        pq.write_table(table, out / name, compression=compression, row_group_size=10_000)
        counter.add_table(table.column("source"), table.column("n_tokens").to_numpy())
        files.append({"file": name, "rows": table.num_rows})
    info = {"rows": counter.rows, "tokens": counter.tokens, "sources": counter.per, "files": files}
    (out / "README.md").write_text(dataset_card(release, info, tokenizer))
    return info


def dataset_card(release: Release, info: dict[str, Any], tokenizer: ShardTokenizer | None) -> str:
    m = release.manifest
    name = m.get("name", "release")
    mix = release.mixture()
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: data/train-*.parquet",
        "pretty_name: " + json.dumps(f"{name} {m.get('version', '')}".strip()),
        "tags:",
        "- curate",
        "- pretraining",
        "---",
        "",
        f"# {name} — release {m.get('version', '?')}",
        "",
        "Exported by `curate export` from the release folder, rows in training order "
        "(load without shuffling to keep it).",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("path/to/this/folder", split="train")',
        "```",
        "",
        f"- rows: {info['rows']:,}",
        f"- tokens: {info['tokens']:,} ({'tokenizer ' + tokenizer.path.name if tokenizer else 'release count: ' + str(m.get('tokenizer', 'whitespace'))})",
        f"- content hash: `{m.get('content_hash', '')}`, seed: {m.get('seed', '')}, order: {m.get('order', '')}",
        "",
        "## Sources",
        "",
        "| source | rows | tokens | share of tokens |",
        "|---|---:|---:|---:|",
    ]
    tot = max(1, info["tokens"])
    for s, v in info["sources"].items():
        lines.append(f"| {s} | {v['rows']:,} | {v['tokens']:,} | {v['tokens'] / tot:.4f} |")
    if mix:
        lines += ["", "## Mixture and order (from the release manifest)", "", "```json",
                  json.dumps(mix, indent=2, sort_keys=True, default=str), "```"]
    if tokenizer is not None:
        lines += ["", "## Tokenizer", "", "```json", json.dumps(tokenizer.describe(), indent=2, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"
