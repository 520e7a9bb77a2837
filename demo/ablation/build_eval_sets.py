"""Build the ablation experiment's evaluation files from the shared corpora (run once; the files
are committed, so the experiment needs nothing beside the repository).

- heldout_wiki_en.jsonl: the last 200 English Wikipedia summaries of shared/corpora/wiki_en.parquet
  (rows 9,833-10,032; the demo corpus holds rows 0-599 and the built-in tokenizer was trained on
  the demo corpus only).
- heldout_python_docs.jsonl: the last 12 Python documentation pages (the demo holds the first 40),
  each cut to its first 4,000 characters at a line end.
- cloze_mc.jsonl: a 4-way multiple-choice cloze task from rows 9,533-9,832 of wiki_en: the first
  30 words of a summary are the context; the choices are its next 12 words and the words 30-42 of
  three other summaries (drawn with a fixed seed); ``label`` is the index of the true one.
  cloze_mc.yaml is its lm-evaluation-harness task file.

Usage: python demo/ablation/build_eval_sets.py [--corpora ../shared/corpora]
"""
from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent


def _write(name: str, rows: list[dict]) -> None:
    with open(HERE / name, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{name}: {len(rows)} rows")


def main() -> None:
    ap = argparse.ArgumentParser()
    default = os.environ.get("CURATE_CORPORA") or str(HERE.parents[2] / "shared" / "corpora")
    ap.add_argument("--corpora", default=default)
    corpora = Path(ap.parse_args().corpora)
    wiki = pq.read_table(corpora / "wiki_en.parquet").to_pylist()
    held = wiki[-200:]
    _write("heldout_wiki_en.jsonl", [{"id": r["url"], "title": r["title"], "text": r["text"]} for r in held])
    docs = pq.read_table(corpora / "python_docs.parquet").to_pylist()[-12:]
    pages = []
    for r in docs:
        text = r["text"]
        if len(text) > 4000:
            text = text[:text.rfind("\n", 0, 4000)]
        pages.append({"id": r["path"], "text": text})
    _write("heldout_python_docs.jsonl", pages)
    pool = [r for r in wiki[-500:-200] if len(r["text"].split()) >= 42]
    rng = random.Random(18)
    items = []
    for i, r in enumerate(pool):
        words = r["text"].split()
        others = rng.sample([j for j in range(len(pool)) if j != i], 3)
        choices = [" ".join(words[30:42])] + [" ".join(pool[j]["text"].split()[30:42]) for j in others]
        order = list(range(4))
        rng.shuffle(order)
        items.append({"id": r["url"], "context": " ".join(words[:30]), "choices": [choices[k] for k in order],
                      "label": order.index(0)})
    _write("cloze_mc.jsonl", items)


if __name__ == "__main__":
    main()
