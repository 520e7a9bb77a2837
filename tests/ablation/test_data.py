"""From a release to training windows: export reuse, release order, packing, epochs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ablations.data import batches, document_stream, ensure_export, resolve_release
from ablations.tokenizer import ASSET, sha256_file
from tests.ablation.conftest import make_release
from tests.export.release_builder import expected_ids, release_rows
from warehouse.export import export_release


def _split_docs(stream: np.ndarray, eos: int = 0) -> list[list[int]]:
    ends = np.flatnonzero(stream == eos)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [stream[s:e + 1].tolist() for s, e in zip(starts, ends)]


def test_windows_cover_the_stream_once_with_one_token_overlap_and_wrap_epochs() -> None:
    data = np.arange(1000)
    cuts = [0, 7, 300, 301, 650, 1000]

    def factory():
        return iter([data[a:b] for a, b in zip(cuts, cuts[1:])])

    stream = np.tile(data, 3)
    got = list(batches(factory, batch_size=3, seq_len=10, steps=50))
    assert len(got) == 50
    for k, (rows, epoch) in enumerate(got):
        assert rows.shape == (3, 11)
        for r in range(3):
            w = 3 * k + r
            assert np.array_equal(rows[r], stream[w * 10:w * 10 + 11])
        assert epoch == (3 * k + 3) * 10 // 1000  # the restarts needed to read this step's last token


def test_hf_export_is_made_once_and_streams_the_release_in_order(tmp_path: Path, corpora: Path) -> None:
    make_release(tmp_path, corpora, "r", sources={"wiki_en": 40, "wiki_fr": 30, "python_docs": 5})
    rel = resolve_release("r", str(tmp_path))
    sha = sha256_file(ASSET)
    out, info = ensure_export(rel, str(tmp_path), "hf", ASSET, sha, log=lambda m: None)
    assert out == tmp_path / "exports" / "r" / "v1" / f"hf-{sha[:12]}"
    again, _ = ensure_export(rel, str(tmp_path), "hf", ASSET, sha, log=lambda m: None)
    # One export folder (the token cache beside it, _tokens, is shared by every format).
    assert again == out and [p.name for p in out.parent.iterdir() if p.name != "_tokens"] == [out.name]
    texts = release_rows(rel.dir).get_column("text").to_list()
    want = [i for ids in expected_ids(ASSET, texts) for i in ids]
    assert np.concatenate(list(document_stream(out, info))).tolist() == want


def test_an_export_made_by_curate_export_is_reused(tmp_path: Path, corpora: Path) -> None:
    make_release(tmp_path, corpora, "r", sources={"wiki_en": 20, "wiki_es": 20})
    rel = resolve_release("r/v1", str(tmp_path))
    mine = tmp_path / "exports" / "r" / "v1" / "megatron"
    export_release(rel.dir, mine, "megatron", ASSET)  # what `curate export r --format megatron --tokenizer F` writes
    out, info = ensure_export(rel, str(tmp_path), "megatron", ASSET, sha256_file(ASSET), log=lambda m: None)
    assert out == mine and info["format"] == "megatron"


def test_megatron_stream_keeps_each_source_in_release_order_and_blends_by_share(tmp_path: Path, corpora: Path) -> None:
    make_release(tmp_path, corpora, "r", sources={"wiki_en": 60, "wiki_fr": 30, "python_docs": 6})
    rel = resolve_release("r", str(tmp_path))
    out, info = ensure_export(rel, str(tmp_path), "megatron", ASSET, sha256_file(ASSET), log=lambda m: None)
    docs = _split_docs(np.concatenate(list(document_stream(out, info))))
    rows = release_rows(rel.dir)
    per_source = {s: expected_ids(ASSET, rows.filter(rows["source"] == s).get_column("text").to_list())
                  for s in rows.get_column("source").unique().to_list()}
    assert sorted(map(tuple, docs)) == sorted(tuple(d) for ds in per_source.values() for d in ds)
    owner = {tuple(d): s for s, ds in per_source.items() for d in ds}
    for s, ds in per_source.items():  # each source's documents appear in release order
        assert [d for d in docs if owner[tuple(d)] == s] == ds
    # blended: halfway through the stream, every source is about halfway through its tokens
    blend = {b["source"]: b for b in json.loads((out / "blend.json").read_text())["blend"]}
    half = sum(len(d) for d in docs) / 2
    seen: dict[str, int] = dict.fromkeys(per_source, 0)
    acc = 0
    for d in docs:
        if acc >= half:
            break
        seen[owner[tuple(d)]] += len(d)
        acc += len(d)
    for s, n in seen.items():
        longest = max(len(d) for d in per_source[s])
        assert abs(n - blend[s]["tokens"] / 2) <= longest + max(len(d) for d in docs)
