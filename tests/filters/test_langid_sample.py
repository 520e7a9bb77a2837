"""Language ID reads a bounded sample of each text: the sample follows its documented rule, and the
labels it gives agree with fastText's labels on the whole texts of all six real corpora."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from filters.langid import LangId, lid_sample
from tests.heuristics.reference import handbook_texts

PARQUET = ("wiki_en", "wiki_fr", "wiki_es", "python_docs", "gutenberg")


def reference_sample(text: str, max_chars: int, pieces: int) -> str:
    """The rule in filters/langid.py's docstring, written with Python strings and ``re``."""
    n = len(text)
    if n <= max_chars:
        return text
    w = max(1, max_chars // pieces)
    out = []
    for i in range(pieces):
        start = 0 if pieces == 1 else (n - w) * i // (pieces - 1)
        part = text[start:start + w]
        if i > 0:
            part = re.sub(r"^\S{0,63}\s", "", part)
        if i < pieces - 1 or pieces == 1:
            part = re.sub(r"\s\S{0,63}\Z", "", part)  # \Z: Python's $ also matches before a final newline
        out.append(part)
    return " ".join(out)


def _all_texts(corpora: Path) -> tuple[list[str], list[str]]:
    texts, sources = [], []
    for name in PARQUET:
        col = pq.read_table(corpora / f"{name}.parquet", columns=["text"]).column("text").to_pylist()
        texts += col
        sources += [name] * len(col)
    hb = handbook_texts(corpora)
    texts += hb.get_column("text").to_list()
    sources += ["handbook/" + u.split("/browse/")[1].split("/")[0] for u in hb.get_column("url").to_list()]
    return texts, sources


@pytest.mark.parametrize("max_chars,pieces", [(4096, 4), (1000, 3), (300, 1), (5000, 7)])
def test_sample_follows_the_documented_rule(corpora, max_chars, pieces):
    texts = pq.read_table(corpora / "gutenberg.parquet", columns=["text"]).column("text").to_pylist()[:3]
    texts += pq.read_table(corpora / "python_docs.parquet", columns=["text"]).column("text").to_pylist()[:40]
    long = texts[0]
    texts += [long[:max_chars], long[:max_chars + 1], "", "   ", "东京是日本的首都" * 900,
              "a" * (max_chars * 2), ("word " * 3000).strip(), "é" * max_chars + " x"]
    got = pl.DataFrame({"t": texts}).select(lid_sample(pl.col("t"), max_chars, pieces)).to_series().to_list()
    want = [reference_sample(t, max_chars, pieces) for t in texts]
    assert got == want
    assert all(len(g) <= max_chars + pieces for g in got)  # the bound (+ the joining spaces)
    assert sum(len(t) > max_chars for t in texts) >= 10  # the rule was exercised, not only the short path


@pytest.mark.slow
def test_labels_agree_with_whole_text_labels_on_all_corpora(corpora):
    """All six files (the WARC's 26 languages included): the stage's label (bounded sample) against
    fastText's label of the whole text. Target: >= 99.5% of documents; documents within the bound are
    read whole, so those must agree exactly."""
    texts, sources = _all_texts(corpora)
    assert len({s for s in sources if s.startswith("handbook/")}) == 26
    stage = LangId()
    stage.setup(None)  # type: ignore[arg-type]
    out = stage.transform(pl.DataFrame({"text": texts}, schema={"text": pl.String}))
    live = [i for i, t in enumerate(texts) if t and t.strip()]
    labels, _ = stage._model.predict([texts[i].replace("\n", " ") for i in live], k=1)
    whole = dict(zip(live, (lab[0].removeprefix("__label__") for lab in labels)))
    got = out.get_column("lang").to_list()
    limit = stage.params.max_chars  # type: ignore[attr-defined]
    short = [i for i in live if len(texts[i]) <= limit]
    long = [i for i in live if len(texts[i]) > limit]
    assert all(got[i] == whole[i] for i in short)
    differ = [i for i in long if got[i] != whole[i]]
    agreement = 1 - len(differ) / len(live)
    per_source = Counter(sources[i].split("/")[0] for i in differ)
    print(f"{len(live)} documents ({len(long)} longer than {limit} chars): agreement {agreement:.4%}, "
          f"long documents {1 - len(differ) / max(1, len(long)):.3%}; disagreements per source {dict(per_source)}")
    assert len(long) >= 150  # the bound was exercised on real long documents (185 in the sample at 8,192 chars)
    assert agreement >= 0.995
    assert len(differ) / len(long) <= 0.03  # measured 1.3% on the shared corpora, all on handbook pages
    # no language of the handbook loses much: per language, the share of its pages labelled as the
    # whole text is (partly translated pages are where sample and whole text can differ)
    by_lang = {lang: [i for i in live if sources[i] == lang] for lang in sources if lang.startswith("handbook/")}
    worst = min((sum(got[i] == whole[i] for i in ids) / len(ids), lang) for lang, ids in by_lang.items())
    print(f"lowest agreement of a handbook language: {worst[1]} {worst[0]:.2%}")
    assert worst[0] >= 0.9, worst
