"""Incremental global stages night after night, on real text, against full fits and brute force.

Three nights of shards (real Wikipedia text, with planted exact copies, near duplicates and
site boilerplate across nights) go through ``flows.fitting.fit_stage`` as the flow drives it:
night 1 fits, nights 2 and 3 extend the index (``fit_incremental``) and annotate only the new
shards. Each night's annotations must equal what a full fit over every shard up to that night,
in lake order, gives those shards (all columns), and the verdicts must match a brute-force
reference written here (plain dictionaries, exact Jaccard).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engines.executor import LocalExecutor, ShardTask
from engines.stage import GlobalStage, Stage, StageContext
from filters.exact_dedup import ExactDedup
from filters.line_dedup import LineDedup
from filters.minhash.dedup import MinHashDedup
from filters.minhash.signatures import BANDS_COLUMN, COUNT_COLUMN, MinHashSignatures
from flows.fitting import FitRun, fit_stage
from readers.ingest import document_ids
from schemas.config import ExecutorConfig
from schemas.documents import DOCUMENT
from tests.helpers import real_texts
from warehouse.catalog import Catalog
from warehouse.lake import Lake
from warehouse.pins import read_pin


def write_night(root: Path, night: int, sources: dict[str, list[list[str]]]) -> None:
    """One ingest run per source for this night: shards of real text, ids unique per night."""
    for source, shards in sources.items():
        run_dir = root / "raw" / source / f"ing-night{night}"
        parts = []
        for j, texts in enumerate(shards):
            n = len(texts)
            path = run_dir / f"part-{night:05d}-{j:03d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pydict({
                "id": document_ids(source, [f"n{night}-{j}:{i}" for i in range(n)]), "text": texts,
                "source": [source] * n, "url": [None] * n, "domain": [None] * n, "lang": [None] * n,
                "crawl_date": [None] * n, "license": [None] * n, "meta": [None] * n,
                "ingest_run": [f"ing-night{night}"] * n, "src_file": [f"/input/{source}-{night}-{j}.jsonl"] * n,
                "src_offset": list(range(n))}, schema=DOCUMENT), path)
            parts.append({"path": str(path), "rows": n, "text_bytes": 0})
        (run_dir / "_done").mkdir(parents=True, exist_ok=True)
        (run_dir / "_done" / "00000.json").write_text(json.dumps({
            "source": source, "file": f"/input/{source}-{night}", "file_index": 0, "fingerprint": f"fp-{night}",
            "ingest_run": f"ing-night{night}", "parts": parts, "rows_in": 0, "rows_written": 0,
            "rows_quarantined": 0, "ingested_at": f"2026-01-0{night}T00:00:00"}))


class Nights:
    """Drives one global stage (and the signature stage it may read) as the flow does."""

    def __init__(self, root: Path, stage: GlobalStage, feeder: Stage | None = None):
        self.lake = Lake(str(root))
        self.stage, self.feeder = stage, feeder
        self.ex = LocalExecutor(ExecutorConfig(workers=1, batch_rows=128), show_progress=False)
        self.run = FitRun(self.lake, Catalog(self.lake.catalog_path), self.ex, "run-test", logging.getLogger("test"))

    def shards(self) -> list[tuple[str, str]]:
        return self.lake.shards_by_age(["wiki", "site"])

    def _tasks(self, key: str, shards: list[tuple[str, str]], out_root: str | None = None,
               fed: bool = True) -> list[ShardTask]:
        feeds: tuple = ()
        out = []
        for src, raw in shards:
            if self.feeder is not None and fed:
                fkey = self.feeder.key("sig")
                feeds = tuple((c, self.lake.annotation_path(fkey, raw), c) for c in (BANDS_COLUMN, COUNT_COLUMN))
            path = self.lake.annotation_path(key, raw)
            out.append(ShardTask(src, raw, path.replace(self.lake.root, out_root) if out_root else path, feeds))
        return out

    def night(self, refit: bool = False) -> tuple[str, str]:
        """fit_stage (fit or extend) + apply over every shard; earlier shards are skipped."""
        shards = self.shards()
        if self.feeder is not None:
            self.ex.run_stage("sig", self.feeder, self._tasks(self.feeder.key("sig"), shards, fed=False))
            self.stage.upstream = {c: f"{self.feeder.key('sig')}:{c}" for c in (BANDS_COLUMN, COUNT_COLUMN)}
        key = self.stage.key("st")
        tasks = self._tasks(key, shards)
        fkey, art = fit_stage(self.run, "st", self.stage, key, tasks, refit=refit)
        res = self.ex.run_stage("st", self.stage, self._tasks(fkey, shards), StageContext(artifact_dir=art))
        assert all(r.status != "failed" for r in res), [r.error for r in res]
        self.results = res
        return fkey, art

    def full_fit(self, shards: list[tuple[str, str]], out: Path) -> dict[str, pl.DataFrame]:
        """A full fit over ``shards`` (a stage of the same params, fresh) applied to them."""
        fresh = type(self.stage)(self.stage.params)
        fresh.upstream = dict(self.stage.upstream)
        key = fresh.key("full")
        tasks = self._tasks(key, shards, out_root=str(out))
        art = out / "art"
        art.mkdir(parents=True)
        self.ex.fit(fresh, tasks, str(art))
        self.ex.run_stage("full", fresh, tasks, StageContext(artifact_dir=str(art)))
        return {raw: pl.read_parquet(t.out_path) for (_, raw), t in zip(shards, tasks)}

    def annotations(self, fkey: str) -> dict[str, pl.DataFrame]:
        return {raw: pl.read_parquet(self.lake.annotation_path(fkey, raw)) for _, raw in self.shards()}

    def close(self) -> None:
        self.ex.close()


def _norm(t: str) -> str:
    return re.sub(r"\s+", " ", t.lower()).strip()


def _shout(t: str) -> str:
    """The same text after normalisation: upper-cased, doubled spaces."""
    return t.upper().replace(" ", "  ")


def _edit(t: str, every: int = 100) -> str:
    """A near copy: one word in ``every`` changed (each change alters 5 word 5-grams)."""
    words = t.split()
    return " ".join(w + "x" if i % every == 7 % every else w for i, w in enumerate(words))


@pytest.fixture(scope="module")
def texts(corpora) -> list[str]:
    return [t for t in real_texts(corpora, "wiki_en", 1400) if len(t.split()) >= 60][:900]


def _exact_nights(root: Path, texts: list[str]) -> None:
    write_night(root, 1, {"wiki": [texts[0:150], texts[150:300] + [texts[5]]]})  # a copy inside night 1
    write_night(root, 2, {"wiki": [texts[300:450] + [_shout(texts[10]), texts[20], texts[300]]]})
    write_night(root, 3, {"wiki": [texts[450:600] + [texts[10], texts[301], _shout(texts[450])]]})


def _brute_exact(nights: Nights) -> dict[str, tuple[bool, str]]:
    """(keep, survivor id) per document id: the first document in lake order with the same
    normalised text survives."""
    first: dict[str, str] = {}
    out = {}
    for _, raw in nights.shards():
        t = pl.read_parquet(raw, columns=["id", "text"])
        for i, text in zip(t.get_column("id").to_list(), t.get_column("text").to_list()):
            s = first.setdefault(_norm(text), i)
            out[i] = (s == i, s)
    return out


def _night_equals_full(nights: Nights, fkey: str, tmp: Path, tag: str) -> None:
    """This night's new shards carry what a full fit over every shard so far gives them."""
    shards = nights.shards()
    full = nights.full_fit(shards, tmp / f"full-{tag}")
    mine = nights.annotations(fkey)
    new = {r.task.raw_path for r in nights.results if r.status == "computed"}
    assert new, "the night annotated nothing"
    for raw in new:
        assert mine[raw].drop("_error").equals(full[raw].drop("_error")), raw


def test_exact_dedup_incremental_equals_full_fit_and_brute_force(tmp_path, texts):
    _exact_nights(tmp_path, texts)
    _hidden_nights(tmp_path, 3)  # nights 2 and 3 arrive later
    nights = Nights(tmp_path, ExactDedup())
    try:
        keys, states = [], []
        for n in (1, 2, 3):
            _reveal(tmp_path, n)
            before = {p: p.stat().st_mtime_ns for p in (tmp_path / "annotations").rglob("*.parquet")}
            fkey, art = nights.night()
            keys.append(fkey)
            states.append(art)
            _night_equals_full(nights, fkey, tmp_path, f"n{n}")
            # Earlier annotation files are never rewritten.
            assert all(p.stat().st_mtime_ns == m for p, m in before.items())
            assert sum(r.status == "skipped" for r in nights.results) == len(before)
        assert len(set(keys)) == 1, "one key for the whole lineage: earlier annotations stay valid"
        assert len(set(states)) == 3 and not Path(states[0]).exists(), "superseded states are removed"
        pin = read_pin(nights.lake, ExactDedup().key("st"))
        assert pin["artifact"].endswith(Path(states[-1]).name) and pin["trained_on"]["rows"] == 301 + 153 + 153
        # Verdicts against brute force, for every document of the three nights.
        truth = _brute_exact(nights)
        ann = pl.concat([pl.read_parquet(raw, columns=["id"]).hstack(df.select("keep", "survivor_id"))
                         for raw, df in nights.annotations(keys[-1]).items()])
        got = {i: (k, s) for i, k, s in ann.iter_rows()}
        assert got == truth
        dropped = [i for i, (k, _) in truth.items() if not k]
        assert len(dropped) == 7  # the planted copies: 1 in night 1, 3 in night 2, 3 in night 3
        # The whole lake refitted at once gives the same keep/survivor for everyone.
        full = nights.full_fit(nights.shards(), tmp_path / "full-all")
        for raw, df in nights.annotations(keys[-1]).items():
            assert df.select("keep", "reason", "survivor_id").equals(full[raw].select("keep", "reason", "survivor_id"))
    finally:
        nights.close()


def _hidden_nights(root: Path, n: int) -> None:
    for k in range(2, n + 1):
        for src_dir in (root / "raw").iterdir():
            if (src_dir / f"ing-night{k}").exists():
                (src_dir / f"ing-night{k}").rename(root / f"later-{src_dir.name}-{k}")


def _reveal(root: Path, k: int) -> None:
    for p in root.glob(f"later-*-{k}"):
        src = p.name[len("later-"):-len(f"-{k}")]
        p.rename(root / "raw" / src / f"ing-night{k}")


def _bridge(texts: list[str]) -> tuple[str, str, str]:
    """A and B share 86 of 100 words (5-gram Jaccard ~0.75: not duplicates); C, between them,
    shares 93 with each (Jaccard ~0.86 to both): C joins A's and B's clusters."""
    words = " ".join(texts[600:640]).split()[:120]
    return " ".join(words[0:100]), " ".join(words[14:114]), " ".join(words[7:107])


def test_minhash_incremental_equals_full_fit_and_reports_bridges(tmp_path, texts):
    a, b, c = _bridge(texts)
    write_night(tmp_path, 1, {"wiki": [texts[0:150] + [a], texts[150:300] + [b, _edit(texts[3])]]})
    write_night(tmp_path, 2, {"wiki": [texts[300:450] + [_edit(texts[10]), _edit(texts[20], 70), _edit(texts[30], 4)]]})
    write_night(tmp_path, 3, {"wiki": [texts[450:600] + [c, _edit(texts[305]), _edit(texts[11], 80)]]})
    _hidden_nights(tmp_path, 3)
    sig = MinHashSignatures({"bands": 20, "rows": 5})  # a pair at 0.8 is a candidate with p = 0.9996
    nights = Nights(tmp_path, MinHashDedup({"threshold": 0.8}), feeder=sig)
    try:
        keys = []
        for n in (1, 2, 3):
            _reveal(tmp_path, n)
            fkey, _ = nights.night()
            keys.append(fkey)
            _night_equals_full(nights, fkey, tmp_path, f"n{n}")
        assert len(set(keys)) == 1
        metrics = json.loads((Path(nights.run.lake.root) / read_pin(nights.lake, nights.stage.key("st"))["artifact"]
                              / "_fit.json").read_text())["metrics"]
        ann = pl.concat([pl.read_parquet(raw, columns=["id", "text"]).hstack(df.drop("id", "_error"))
                         for raw, df in nights.annotations(keys[-1]).items()])
        ids = dict(zip(ann.get_column("text").to_list(), ann.get_column("id").to_list()))
        row = {t: r for t, r in zip(ann.get_column("text").to_list(), ann.iter_rows(named=True))}
        # Planted truth: each near copy is dropped and names the earlier original.
        for orig, copy in ((texts[3], _edit(texts[3])), (texts[10], _edit(texts[10])), (texts[20], _edit(texts[20], 70)),
                           (texts[305], _edit(texts[305])), (texts[11], _edit(texts[11], 80))):
            assert row[orig]["keep"] and not row[copy]["keep"] and row[copy]["survivor_id"] == ids[orig]
        assert row[_edit(texts[30], 4)]["keep"]  # a quarter of its words changed: not a near duplicate
        # The bridge: C is dropped under A; B keeps the verdict it was given on night 1.
        assert not row[c]["keep"] and row[c]["survivor_id"] == ids[a]
        assert row[a]["keep"] and row[b]["keep"]
        assert metrics["earlier_survivors_bridged"] == 1
        assert metrics["earlier_survivors_bridged_examples"][0]["id"] == ids[b]
        # A full fit of the whole lake differs from the nightly annotations in exactly that document.
        full = nights.full_fit(nights.shards(), tmp_path / "full-all")
        full_ann = pl.concat([pl.read_parquet(raw, columns=["id"]).hstack(df.select("keep"))
                              for raw, df in full.items()])
        differ = set(ann.select("id", "keep").join(full_ann, on="id").filter(
            pl.col("keep") != pl.col("keep_right")).get_column("id").to_list())
        assert differ == {ids[b]}
        # Exact Jaccard of the planted pairs, computed here from word 5-gram sets.
        def shingles(t: str) -> set:
            w = re.findall(r"\w+", t.lower())
            return {tuple(w[i:i + 5]) for i in range(len(w) - 4)}
        jac = lambda x, y: len(shingles(x) & shingles(y)) / len(shingles(x) | shingles(y))  # noqa: E731
        assert jac(a, b) < 0.8 <= min(jac(a, c), jac(b, c))
    finally:
        nights.close()


def _site_page(body: str, lines: list[str]) -> str:
    return "\n".join([*lines, body])


def test_line_dedup_incremental_matches_brute_force(tmp_path, texts):
    # Template lines (real sentences): "nav" is on pages of every night; "late" reaches three
    # pages only on night 2, so it becomes boilerplate then.
    nav, foot, late = texts[700].split(".")[0], texts[701].split(".")[0], texts[702].split(".")[0]
    night1 = [_site_page(texts[i], [nav, foot] if i % 2 else [nav]) for i in range(0, 40)]
    night1[3] = _site_page(texts[3], [late])
    night1[8] = _site_page(texts[8], [late.upper()])  # the same line after normalisation
    night2 = [_site_page(texts[i], [nav]) for i in range(40, 70)] + [_site_page(texts[70], [late])]
    night3 = [_site_page(texts[i], [foot, late]) for i in range(71, 90)]
    write_night(tmp_path, 1, {"site": [night1[:20], night1[20:]]})
    write_night(tmp_path, 2, {"site": [night2]})
    write_night(tmp_path, 3, {"site": [night3]})
    _hidden_nights(tmp_path, 3)
    nights = Nights(tmp_path, LineDedup({"min_docs": 3}))
    try:
        for n in (1, 2, 3):
            _reveal(tmp_path, n)
            fkey, _ = nights.night()
            _night_equals_full(nights, fkey, tmp_path, f"n{n}")
            # Brute force for this night's pages: lines in >= 3 pages so far are boilerplate;
            # the first page with a line keeps it.
            counts: dict[str, set] = {}
            first: dict[str, str] = {}
            rows = []
            for _, raw in nights.shards():
                t = pl.read_parquet(raw, columns=["id", "text"])
                for i, text in t.iter_rows():
                    for line in {_norm(x) for x in text.split("\n") if x.strip()}:
                        counts.setdefault(line, set()).add(i)
                        first.setdefault(line, i)
                    rows.append((raw, i, text))
            computed = {r.task.raw_path for r in nights.results if r.status == "computed"}
            mine = nights.annotations(fkey)
            for raw in computed:
                got = dict(zip(pl.read_parquet(raw, columns=["id"]).get_column("id").to_list(),
                               mine[raw].get_column("text_clean").to_list()))
                for r, i, text in rows:
                    if r != raw:
                        continue
                    keep = [x for x in text.split("\n")
                            if not (x.strip() and len(counts[_norm(x)]) >= 3 and first[_norm(x)] != i)]
                    # (null text_clean, where a stage stores unchanged text once, means the text)
                    assert (text if got[i] is None else got[i]) == "\n".join(keep)
        late_pages = {text: i for _, raw in nights.shards() for i, text in pl.read_parquet(raw, columns=["id", "text"]).iter_rows()
                      if late.lower() in text.lower()}
        assert len(late_pages) == 22
    finally:
        nights.close()


def test_prefix_change_refits_a_new_lineage(tmp_path, texts):
    """Shards removed from under an index (here a whole ingest run) cannot be extended: the
    stage fits anew under a new key, so every shard is annotated again."""
    write_night(tmp_path, 1, {"wiki": [texts[0:100]]})
    write_night(tmp_path, 2, {"wiki": [texts[100:200]]})
    nights = Nights(tmp_path, ExactDedup())
    try:
        k1, _ = nights.night()
        (tmp_path / "raw" / "wiki" / "ing-night1").rename(tmp_path / "gone")
        write_night(tmp_path, 3, {"wiki": [texts[200:300]]})
        k2, _ = nights.night()
        assert k2 != k1 and all(r.status == "computed" for r in nights.results)
        k3, _ = nights.night(refit=True)  # same shards, refit asked: the same fit, reused
        assert k3 == k2 and all(r.status == "skipped" for r in nights.results)
    finally:
        nights.close()


def test_earlier_rows_reads_back_positions(tmp_path, texts):
    from engines.earlier_rows import ShardRows
    write_night(tmp_path, 1, {"wiki": [texts[0:50], texts[50:120]]})
    shards = [raw for _, raw in Lake(str(tmp_path)).shards_by_age(["wiki"])]
    pos = np.array([0, 49, 50, 119, 7])
    got = ShardRows(shards).rows(pos, ["text"]).get_column("text").to_list()
    assert got == [texts[i] for i in sorted(pos)]
    with pytest.raises(IndexError):
        ShardRows(shards).rows([120], ["text"])


def test_minhash_incremental_without_verification_equals_full_fit(tmp_path, texts):
    write_night(tmp_path, 1, {"wiki": [texts[0:120]]})
    write_night(tmp_path, 2, {"wiki": [texts[120:240] + [_edit(texts[5]), texts[6]]]})
    write_night(tmp_path, 3, {"wiki": [[_edit(texts[125]), ""] + texts[240:300]]})  # an empty text: no signature
    _hidden_nights(tmp_path, 3)
    nights = Nights(tmp_path, MinHashDedup({"verify": False}), feeder=MinHashSignatures({}))
    try:
        for n in (1, 2, 3):
            _reveal(tmp_path, n)
            fkey, _ = nights.night()
            _night_equals_full(nights, fkey, tmp_path, f"n{n}")
        ann = pl.concat(list(nights.annotations(fkey).values()))
        assert ann.get_column("keep").sum() <= ann.height - 3
    finally:
        nights.close()


def test_stop_between_fit_and_pin_resumes_without_refitting(tmp_path, texts, monkeypatch):
    """A run that stops after the new index state is in place but before the pin moved (what
    SIGKILL at fault point fit:before-pin leaves): the next run adopts that state, does not fit
    again, and removes the superseded one."""
    import flows.fitting as fitting
    write_night(tmp_path, 1, {"wiki": [texts[0:100]]})
    write_night(tmp_path, 2, {"wiki": [texts[100:200] + [texts[1]]]})
    _hidden_nights(tmp_path, 2)
    nights = Nights(tmp_path, ExactDedup())
    try:
        _, first = nights.night()
        _reveal(tmp_path, 2)
        real_pin = fitting._pin
        monkeypatch.setattr(fitting, "_pin", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt("stop")))
        with pytest.raises(KeyboardInterrupt):
            nights.night()
        states = sorted(p.name for p in Path(first).parent.iterdir())
        assert len(states) == 2 and Path(first).exists(), states  # the new state, and the pinned old one
        monkeypatch.setattr(fitting, "_pin", real_pin)
        fits = []
        monkeypatch.setattr(nights.ex, "fit_incremental", lambda *a, **k: fits.append(a) or {})
        fkey, art = nights.night()
        assert fits == [] and not Path(first).exists() and Path(art).exists()
        assert [p.name for p in Path(art).parent.iterdir()] == [Path(art).name]
        ann = nights.annotations(fkey)
        assert sum((~df.get_column("keep")).sum() for df in ann.values()) == 1
    finally:
        nights.close()
