"""Boilerplate line removal on the real handbook crawl (text extracted with fastwarc + resiliparse,
navigation included), against a plain-Python reference; grouping by domain or source; bad input."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.extract.html2text import extract_plain_text

from engines.executor import LocalExecutor, ShardTask
from engines.stage import StageContext
from filters.line_dedup import LineDedup
from readers.ingest import document_ids
from schemas.config import ExecutorConfig
from schemas.documents import DOCUMENT
from tests.helpers import real_texts

LANGS = ("en-US", "fr-FR", "ja-JP", "ru-RU")
DOMAIN = "debian-handbook.info"


def _shard(path: Path, source: str, texts: list[str | None], urls: list[str | None], domain: str | None) -> None:
    n = len(texts)
    table = pa.Table.from_pydict({
        "id": document_ids(source, [u or f"{path.name}:{i}" for i, u in enumerate(urls)]),
        "text": [t if t is not None else "" for t in texts], "source": [source] * n, "url": urls,
        "domain": [domain] * n, "lang": [None] * n, "crawl_date": [None] * n, "license": [None] * n,
        "meta": [None] * n, "ingest_run": ["ing-test"] * n, "src_file": [f"/input/{source}"] * n,
        "src_offset": list(range(n)),
    }, schema=DOCUMENT)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


@pytest.fixture(scope="module")
def handbook(full_corpora: Path) -> dict[str, list[tuple[str, str]]]:
    """Every page of four languages (the checks below count the full handbook's 127 pages)."""
    corpora = full_corpora
    pages: dict[str, list[tuple[str, str]]] = {lang: [] for lang in LANGS}
    with open(corpora / "handbook.warc.gz", "rb") as f:
        for rec in ArchiveIterator(f, record_types=WarcRecordType.response):
            url = rec.headers.get("WARC-Target-URI")
            lang = url.split("/browse/")[1].split("/")[0]
            if lang in pages:
                html = rec.reader.read().decode("utf-8", "replace")
                pages[lang].append((url, extract_plain_text(html, main_content=False)))
    assert all(len(v) == 127 for v in pages.values())
    return pages


def reference(docs: list[dict], min_docs: int = 3, keep_first: bool = True, lowercase: bool = True) -> list[tuple]:
    """docs in lake order (dicts with id, text, source, domain) -> (text_clean, lines_removed,
    chars_removed, keep, reason) per document, with plain dicts and sets."""

    def _norm(line: str) -> str:
        collapsed = " ".join(line.split())
        return collapsed.lower() if lowercase else collapsed

    seen: dict[tuple[str, str], set[int]] = defaultdict(set)
    first: dict[tuple[str, str], str] = {}
    for i, d in enumerate(docs):
        group = f"d:{d['domain']}" if d["domain"] is not None else f"s:{d['source']}"
        for line in d["text"].split("\n"):
            key = (group, _norm(line))
            if key[1]:
                seen[key].add(i)
                first.setdefault(key, d["id"])
    out = []
    for d in docs:
        group = f"d:{d['domain']}" if d["domain"] is not None else f"s:{d['source']}"
        kept, removed = [], 0
        for line in d["text"].split("\n"):
            key = (group, _norm(line))
            drop = bool(key[1]) and len(seen[key]) >= min_docs and not (keep_first and first[key] == d["id"])
            removed += drop
            if not drop:
                kept.append(line)
        clean = "\n".join(kept)
        emptied = not clean.strip() and bool(d["text"].strip())
        out.append((clean, removed, len(d["text"]) - len(clean), not emptied,
                    "all_lines_boilerplate" if emptied else None))
    return out


@pytest.fixture(scope="module")
def lake(tmp_path_factory, handbook, corpora):
    """Shards in lake order: the four handbook languages (one domain), Python docs and a source of
    bad input (no domain: grouped by source)."""
    root = tmp_path_factory.mktemp("lake")
    ja_nav = [line for line in handbook["ja-JP"][0][1].split("\n")[:12] if "•" in line]
    shards = []
    for lang in LANGS:
        urls = [u for u, _ in handbook[lang]]
        texts = [t for _, t in handbook[lang]]
        if lang == "ja-JP":  # a page that is nothing but the menu
            urls.append(f"https://{DOMAIN}/browse/ja-JP/stable/menu-only.html")
            texts.append("\n".join(ja_nav) + "\n\n")
        for k, part in enumerate((slice(0, 64), slice(64, None))):
            p = root / "raw" / f"hb_{lang}" / "ing-test" / f"part-{k}.parquet"
            _shard(p, f"hb_{lang}", texts[part], urls[part], DOMAIN)
            shards.append((f"hb_{lang}", p))
    docs = real_texts(corpora, "python_docs", 120)
    p = root / "raw" / "python_docs" / "ing-test" / "part-0.parquet"
    _shard(p, "python_docs", docs, [None] * len(docs), None)
    shards.append(("python_docs", p))
    en = real_texts(corpora, "wiki_en", 300)
    one_line = " ".join(t.replace("\n", " ") for t in en)
    big = ((one_line + " ") * (50_000_000 // (len(one_line) + 1) + 1))[:50_000_000]
    bad = ["", "   \n\t\n  ", big, big[:1000], "\ufffd\ufffd menu \ufffd\nreal text one\nHome",
           "\ufffd\ufffd  MENU \ufffd\r\nreal text two\r\nHome\r\n", "\ufffd\ufffd menu \ufffd\nHome\nПривет, 東京 mixed",
           "Home\n\ufffd\ufffd menu \ufffd\nHome", "unique line only"]
    p = root / "raw" / "bad" / "ing-test" / "part-0.parquet"
    _shard(p, "bad", bad, [None] * len(bad), None)
    shards.append(("bad", p))
    return root, shards


def _docs(shards: list[tuple[str, Path]]) -> list[dict]:
    return [r for _, p in shards for r in pq.read_table(p, columns=["id", "text", "source", "domain"]).to_pylist()]


def _resolved(rows: list[tuple], docs: list[dict]) -> list[tuple]:
    """Rows with ``text_clean`` resolved as readers do (null: the text is unchanged), after checking
    that it is null exactly where nothing was removed (stored once)."""
    for (clean, *_), d in zip(rows, docs):
        assert clean != d["text"], d["id"]
    return [(d["text"] if clean is None else clean, *rest) for (clean, *rest), d in zip(rows, docs)]


def test_handbook_navigation_is_removed_like_the_reference(lake, handbook):
    root, shards = lake
    stage = LineDedup()
    art = root / "art"
    art.mkdir()
    tasks = [ShardTask(s, str(p), str(root / "ann" / s / p.name)) for s, p in shards]
    with LocalExecutor(ExecutorConfig(workers=1, batch_rows=100), show_progress=False) as ex:
        metrics = ex.fit(stage, tasks, str(art))
        results = ex.run_stage("line_dedup", stage, tasks, StageContext(artifact_dir=str(art)))
    assert {r.status for r in results} == {"computed"} and sum(r.row_errors for r in results) == 0
    docs = _docs(shards)
    got = [tuple(r.values()) for t in tasks
           for r in pq.read_table(t.out_path, columns=["text_clean", "lines_removed", "chars_removed", "keep",
                                                      "reason"]).to_pylist()]
    want = reference(docs)
    assert len(got) == len(want) == len(docs)
    got = _resolved(got, docs)
    for g, w, d in zip(got, want, docs):
        assert g == w, d["id"]
    assert metrics["documents"] == len(docs) and metrics["groups"] == 3

    # what the reference found is what a reader expects: the menu of each language ...
    boiler = pl.read_parquet(art / "boilerplate_lines.parquet")
    counts = {(g, n): c for g, n, c in boiler.select("group", "norm", "n").iter_rows()}
    for line in ("• 戻る", "• 次へ", "• debian 管理者ハンドブック", "• пред.", "• след.", "• précédent", "• suivant"):
        assert counts[(f"d:{DOMAIN}", line)] >= 126, line  # every page of the language (but the first or last)
    assert counts[(f"d:{DOMAIN}", "download the ebook")] == 4 * 127
    ja = [(d, g) for d, g in zip(docs, got) if d["source"] == "hb_ja-JP"]
    for i, (_, (clean, removed, *_)) in enumerate(ja):
        lines = {line.strip() for line in clean.split("\n")}
        if i > 0:  # the first Japanese page keeps its menu (keep_first), every later one loses it
            assert not lines & {"• 戻る", "• 次へ", "• Debian 管理者ハンドブック"}
        assert removed >= 3 or i == 0
    # ... goes, while lines found on one page only all stay
    per_line: dict[tuple[str, str], int] = defaultdict(int)
    hb = [(d, g) for d, g in zip(docs, got) if d["domain"] == DOMAIN]
    for d, _ in hb:
        for n in {" ".join(x.split()).lower() for x in d["text"].split("\n")} - {""}:
            per_line[(d["domain"] or d["source"], n)] += 1
    for d, (clean, *_) in hb:
        kept = {" ".join(x.split()).lower() for x in clean.split("\n")}
        own = {" ".join(x.split()).lower() for x in d["text"].split("\n")
               if per_line[(d["domain"] or d["source"], " ".join(x.split()).lower())] < 3}
        assert own <= kept
    apt_ja = next(clean for (u, _), (_, (clean, *_)) in zip(handbook["ja-JP"], ja) if u.endswith("sect.apt-get.html"))
    assert "複数のコンピュータに同じパッケージ群を体系的にインストールすると役に立つ場合があります。" in apt_ja
    # the page that is only a menu has nothing left
    menu_only = [g for d, g in zip(docs, got) if d["source"] == "hb_ja-JP"][-1]
    assert menu_only[3:] == (False, "all_lines_boilerplate") and not menu_only[0].strip()
    # bad input: defined verdicts; the 50 MB line is one unique line, kept whole
    bad = [g for d, g in zip(docs, got) if d["source"] == "bad"]
    assert bad[0] == ("", 0, 0, True, None) and bad[1] == ("   \n\t\n  ", 0, 0, True, None)
    assert bad[2][1:] == (0, 0, True, None) and len(bad[2][0]) == 50_000_000
    # the U+FFFD menu line and "Home" recur in four documents (across case, spacing and CRLF): the
    # first keeps them, the others lose them
    assert bad[4] == (docs[-5]["text"], 0, 0, True, None)
    assert bad[5][:2] == ("real text two\r\n", 2) and bad[6][:2] == ("Привет, 東京 mixed", 2)
    assert bad[7] == ("", 3, len(docs[-2]["text"]), False, "all_lines_boilerplate")
    assert bad[8] == ("unique line only", 0, 0, True, None)


def test_remove_all_copies_and_min_docs(lake):
    root, shards = lake
    shards = [(s, p) for s, p in shards if s != "bad"]  # the 50 MB line is covered above
    docs = _docs(shards)
    for params in ({"keep_first": False}, {"min_docs": 5, "lowercase": False}):
        stage = LineDedup(params)
        art = root / f"art-{len(params)}-{params.get('min_docs', 3)}"
        art.mkdir()
        frames = [pl.from_arrow(pq.read_table(p, columns=["id", "text", "domain", "source"])) for _, p in shards]
        stage.fit(iter(frames), str(art))
        stage.setup(StageContext(artifact_dir=str(art)))
        got = _resolved([row for f in frames for row in stage.transform(f).rows()], docs)
        want = reference(docs, min_docs=params.get("min_docs", 3), keep_first=params.get("keep_first", True),
                         lowercase=params.get("lowercase", True))
        assert got == want
        if params.get("keep_first") is False:
            # nobody keeps the menu now, the first page included
            assert all("Download the ebook" not in row[0] for row in got[:4 * 127])
