"""Decontamination: benchmark examples made of real sentences, planted (with case and punctuation
changes) inside other real documents, near misses of 12 words that must not count, against a
plain-Python 13-gram reference; JSONL, Parquet and ``save_to_disk`` benchmark files; bad input."""
from __future__ import annotations

import json
import random
import re
import unicodedata
from pathlib import Path

import datasets
import polars as pl
import pyarrow.parquet as pq
import pytest

from engines.executor import LocalExecutor, ShardTask
from engines.stage import StageContext
from filters.decontam import Decontaminate, word_hashes
from schemas.config import ExecutorConfig
from tests.helpers import make_lake, real_texts
from warehouse.lake import Lake

N = 13


def ref_words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if not unicodedata.category(c).startswith("P")).split()


def ref_index(benchmarks: list[tuple[str, list[tuple[str, str]]]], n: int = N) -> dict[tuple, tuple[str, str]]:
    """n-gram (as a tuple of words) -> (benchmark, example id) of its first example."""
    index: dict[tuple, tuple[str, str]] = {}
    for name, examples in benchmarks:
        for ex_id, text in examples:
            w = ref_words(text)
            for i in range(len(w) - n + 1):
                index.setdefault(tuple(w[i:i + n]), (name, ex_id))
    return index


def ref_verdict(text: str, index: dict, n: int = N) -> tuple[int, str | None, str | None]:
    w = ref_words(text)
    hits = [index[tuple(w[i:i + n])] for i in range(len(w) - n + 1) if tuple(w[i:i + n]) in index]
    return len(hits), (hits[0][0] if hits else None), (hits[0][1] if hits else None)


def _sentences(texts: list[str]) -> list[str]:
    return [s for t in texts for s in re.split(r"(?<=[.!?])\s+", t) if len(s.split()) >= 16]


@pytest.fixture(scope="module")
def bench(tmp_path_factory, corpora):
    """Three benchmarks from real sentences: JSONL (with ids), Parquet (two fields) and an HF
    DatasetDict saved to disk (two splits, no ids)."""
    d = tmp_path_factory.mktemp("bench")
    en = _sentences(real_texts(corpora, "wiki_en", 300, offset=3000))
    fr = _sentences(real_texts(corpora, "wiki_fr", 300, offset=3000))
    es = _sentences(real_texts(corpora, "wiki_es", 300, offset=3000))
    qa = [{"qid": f"q-{i}", "question": " ".join(en[2 * i: 2 * i + 2])} for i in range(40)]
    with open(d / "qa.jsonl", "w", encoding="utf-8") as f:
        for row in qa:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    pl.DataFrame({"question": fr[:30], "answer": fr[30:60]}).write_parquet(d / "fr.parquet")
    datasets.DatasetDict({
        "test": datasets.Dataset.from_dict({"text": es[:25], "choices": [[w] for w in es[25:50]]}),
        "validation": datasets.Dataset.from_dict({"text": es[50:60], "choices": [[] for _ in range(10)]}),
    }).save_to_disk(str(d / "es_hf"))
    specs = [
        {"name": "qa", "path": str(d / "qa.jsonl"), "text_field": "question", "id_field": "qid"},
        {"name": "fr", "path": str(d / "fr.parquet"), "text_field": ["question", "answer"]},
        {"name": "es", "path": str(d / "es_hf"), "format": "hf", "text_field": ["text", "choices"]},
    ]
    ref = [("qa", [(r["qid"], r["question"]) for r in qa]),
           ("fr", [(str(i), q + "\n" + a) for i, (q, a) in enumerate(zip(fr[:30], fr[30:60]))]),
           ("es", [(f"test/{i}", s + "\n" + c) for i, (s, c) in enumerate(zip(es[:25], es[25:50]))]
            + [(f"validation/{i}", s) for i, s in enumerate(es[50:60])])]
    return specs, ref


def _plant(docs: list[str], ref: list[tuple[str, list[tuple[str, str]]]], seed: int = 11):
    """Returns the documents and what was planted in each: 'hit' (13+ words of an example, with
    case and punctuation changed), 'near' (12 words, or 13 with one word replaced) or None."""
    rng = random.Random(seed)
    examples = [text for _, exs in ref for _, text in exs]
    out, planted = [], []
    for doc in docs:
        kind = rng.choice(["hit", "near", "near_swap", None, None])
        if kind is None:
            out.append(doc)
            planted.append(None)
            continue
        words = rng.choice(examples).split()
        size = {"hit": rng.randint(13, 16), "near": 12, "near_swap": 13}[kind]
        start = rng.randrange(0, len(words) - size + 1)
        piece = words[start:start + size]
        if kind == "near_swap":
            piece[6] = "zyzzyva"
        if kind == "hit" and rng.random() < 0.5:
            piece = [w.upper() if i % 2 else w.rstrip(",.;:") for i, w in enumerate(piece)]
        cut = doc.find(". ") + 2 if ". " in doc else len(doc)
        # "zzqx" cuts the n-grams that would join document words to the piece
        out.append(doc[:cut] + "zzqx « " + " ".join(piece) + " » zzqx " + doc[cut:])
        planted.append(kind)
    return out, planted


def test_planted_contamination_through_the_executor(tmp_path, corpora, bench):
    specs, ref = bench
    docs, planted = _plant(real_texts(corpora, "wiki_en", 300) + real_texts(corpora, "wiki_es", 100)
                           + real_texts(corpora, "gutenberg", 10), ref)
    make_lake(tmp_path / "lake", {"web": [docs[:250], docs[250:]]})
    lake = Lake(str(tmp_path / "lake"))
    stage = Decontaminate({"benchmarks": specs})
    art = tmp_path / "art"
    art.mkdir()
    shards = lake.raw_shards("web")
    tasks = [ShardTask("web", p, lake.annotation_path(stage.key("decontam"), p)) for p in shards]
    with LocalExecutor(ExecutorConfig(workers=1, batch_rows=100), show_progress=False) as ex:
        metrics = ex.fit(stage, tasks, str(art))
        results = ex.run_stage("decontam", stage, tasks, StageContext(artifact_dir=str(art)))
    assert {r.status for r in results} == {"computed"} and sum(r.row_errors for r in results) == 0
    index = ref_index(ref)
    assert metrics == {"benchmarks": 3, "examples": 105, "examples_too_short": 0, "ngrams": len(index)}
    got = [r for t in tasks for r in pq.read_table(t.out_path).to_pylist()]
    want = [ref_verdict(d, index) for d in docs]
    assert [(r["contam_ngrams"], r["contam_benchmark"], r["contam_example"]) for r in got] == want
    assert [r["keep"] for r in got] == [w[0] == 0 for w in want]
    assert {r["reason"] for r in got if not r["keep"]} == {"contaminated"}
    # ground truth: every 'hit' is flagged, no near miss is
    for kind, r in zip(planted, got):
        if kind == "hit":
            assert not r["keep"] and r["contam_ngrams"] >= 1
        elif kind in ("near", "near_swap"):
            assert r["keep"] and r["contam_ngrams"] == 0
    assert planted.count("hit") >= 50 and planted.count("near") + planted.count("near_swap") >= 100
    assert {r["contam_benchmark"] for r in got} >= {"qa", "fr", "es"}


def test_word_hash_is_fnv1a_then_splitmix():
    """The vectorised hash against the definition, one word at a time in plain Python."""
    mask = (1 << 64) - 1

    def ref(word: str) -> int:
        data = word.encode()
        h = 0xCBF29CE484222325
        for b in data[:64]:
            h = ((h ^ b) * 0x100000001B3) & mask
        x = h ^ (len(data) << 40)
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & mask
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    words = ["the", "", "Ünïcödé", "東京", "\ufffd", "x" * 64, "x" * 65, "x" * 200, "naïve"]
    assert [int(h) for h in word_hashes(pl.Series(words))] == [ref(w) for w in words]


def test_min_matches_ngram_size_and_changed_benchmark(tmp_path, corpora, bench):
    specs, ref = bench
    docs, _ = _plant(real_texts(corpora, "wiki_en", 120, offset=500), ref, seed=5)
    for params in ({"ngram": 8}, {"min_matches": 3}):
        st = Decontaminate({"benchmarks": specs, **params})
        d = tmp_path / str(sorted(params.items()))
        d.mkdir()
        st.fit(iter(()), str(d))
        st.setup(StageContext(artifact_dir=str(d)))
        out = st.transform(pl.DataFrame({"text": docs}))
        n = params.get("ngram", N)
        want = [ref_verdict(t, ref_index(ref, n), n)[0] for t in docs]
        assert out.get_column("contam_ngrams").to_list() == want
        assert out.get_column("keep").to_list() == [w < params.get("min_matches", 1) for w in want]
    # a benchmark file that changed after the fit is refused
    d = tmp_path / "changed"
    d.mkdir()
    copy = tmp_path / "qa_copy.jsonl"
    copy.write_bytes(Path(specs[0]["path"]).read_bytes())
    st = Decontaminate({"benchmarks": [{**specs[0], "path": str(copy)}]})
    st.fit(iter(()), str(d))
    with open(copy, "a", encoding="utf-8") as f:
        f.write(json.dumps({"qid": "new", "question": "one more question"}) + "\n")
    with pytest.raises(ValueError, match="changed since the fit"):
        st.setup(StageContext(artifact_dir=str(d)))


def test_bad_input_and_short_examples(tmp_path, corpora, bench):
    specs, ref = bench
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(json.dumps({"t": t}) for t in ["too short to match", "", "Привет мир " * 10]) + "\n")
    st = Decontaminate({"benchmarks": specs + [{"name": "short", "path": str(short), "text_field": "t"}]})
    art = tmp_path / "art"
    art.mkdir()
    metrics = st.fit(iter(()), str(art))
    assert metrics["examples"] == 108 and metrics["examples_too_short"] == 1
    st.setup(StageContext(artifact_dir=str(art)))
    en = real_texts(corpora, "wiki_en", 300, offset=6000)
    one_line = " ".join(t.replace("\n", " ") for t in en)
    assert ref_verdict(one_line, ref_index(ref))[0] == 0
    big = ((one_line + " ") * (50_000_000 // (len(one_line) + 1) + 1))[:50_000_000]
    example = ref[0][1][3][1].split()
    big = big[:20_000_000] + " " + " ".join(example[:15]) + " " + big[20_000_000:] + " " + " ".join(example[:12])
    texts = ["", "   \n\t ", None, "\ufffd" * 40, " ".join(["\ufffd"] * 30),
             "Привет мир " * 10 + " ".join(example[:13]), " \ufffd ".join(example[:20]), big]
    out = st.transform(pl.DataFrame({"text": texts}, schema={"text": pl.String}))
    rows = out.rows(named=True)
    clean = {"keep": True, "reason": None, "contam_benchmark": None, "contam_example": None, "contam_ngrams": 0}
    assert rows[0] == rows[1] == rows[2] == rows[3] == rows[4] == clean
    # the Cyrillic example (20 words) is found in a document that repeats it, next to a real one
    assert rows[5]["contam_ngrams"] == 8 + 1 and rows[5]["contam_benchmark"] == "short" and not rows[5]["keep"]
    assert rows[6] == clean  # U+FFFD between the words is a word of its own: no 13 words in a row
    assert rows[7]["contam_ngrams"] == 3 and rows[7]["contam_benchmark"] == "qa" and rows[7]["contam_example"] == "q-3"
    assert rows[7]["reason"] == "contaminated"
