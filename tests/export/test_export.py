"""Each export format read back with the trainer's own reader, in the release's order."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.export.release_builder import build_release, expected_ids, release_rows
from warehouse.export import ReleaseError, export_release
from warehouse.export.tokenize import TextTokenizer


def _sha(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def test_release_is_byte_identical_under_the_same_seed(tmp_path: Path, corpora: Path, release_dir: Path) -> None:
    again = build_release(tmp_path / "again", corpora)
    assert _sha(again) == _sha(release_dir)
    other = build_release(tmp_path / "other", corpora, seed=1)
    assert _sha(other)["shard-000000.parquet"] != _sha(release_dir)["shard-000000.parquet"]


def test_release_fixture_has_repeats_phases_and_curriculum(release_dir: Path) -> None:
    m = json.loads((release_dir / "manifest.json").read_text())
    df = release_rows(release_dir)
    assert df.height == m["totals"]["rows"] and df.get_column("id").n_unique() < df.height  # repeats
    ph = m["phases"]
    assert [p["phase"] for p in ph] == ["main", "anneal"] and ph[1]["end_row"] == df.height
    # the planned epochs of the small source hit the cap of 3
    assert max(m["mixture"]["epochs"].values()) <= 3 + 1e-9


def test_tokenizer_batches_match_one_by_one_encoding(smollm2_tokenizer: Path, release_dir: Path) -> None:
    texts = release_rows(release_dir).get_column("text").head(50).to_list()
    tok = TextTokenizer(smollm2_tokenizer, batch_size=7)
    assert tok.eos_token == "<|endoftext|>" and tok.dtype == np.uint16 and tok.vocab_size == 49152
    assert tok.encode_list(texts) == expected_ids(smollm2_tokenizer, texts)


def test_jsonl(tmp_path: Path, release_dir: Path, smollm2_tokenizer: Path) -> None:
    info = export_release(release_dir, tmp_path / "jsonl", "jsonl", smollm2_tokenizer)
    ref = release_rows(release_dir)
    files = sorted((tmp_path / "jsonl").glob("shard-*.jsonl"))
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert [r["id"] for r in rows] == ref.get_column("id").to_list()
    assert [r["text"] for r in rows] == ref.get_column("text").to_list()
    want = [len(x) for x in expected_ids(smollm2_tokenizer, ref.get_column("text").to_list())]
    assert [r["n_tokens"] for r in rows] == want
    assert info["rows"] == ref.height and info["tokens"] == sum(want)
    assert json.loads((tmp_path / "jsonl" / "export.json").read_text())["tokens"] == sum(want)


def test_hf_load_dataset(tmp_path: Path, release_dir: Path, smollm2_tokenizer: Path) -> None:
    from datasets import load_dataset

    out = tmp_path / "hf"
    info = export_release(release_dir, out, "hf", smollm2_tokenizer)
    ds = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf-cache"))
    ref = release_rows(release_dir)
    assert ds["id"] == ref.get_column("id").to_list()
    assert ds["source"] == ref.get_column("source").to_list()
    want = expected_ids(smollm2_tokenizer, ref.get_column("text").to_list())
    assert ds["input_ids"] == want and ds["n_tokens"] == [len(x) for x in want]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "wiki_en" in card and '"anneal"' in card
    assert info["sources"]["wiki_en"]["rows"] == int((ref.get_column("source") == "wiki_en").sum())


def test_hf_without_tokenizer_keeps_release_counts(tmp_path: Path, release_dir: Path) -> None:
    from datasets import load_dataset

    info = export_release(release_dir, tmp_path / "hf", "hf")
    ds = load_dataset(str(tmp_path / "hf"), split="train", cache_dir=str(tmp_path / "c"))
    ref = release_rows(release_dir)
    assert ds["text"] == ref.get_column("text").to_list() and "input_ids" not in ds.column_names
    assert info["tokens"] == int(ref.get_column("n_tokens").sum()) and info["tokenizer"] is None


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_mds_streaming_dataset(tmp_path: Path, release_dir: Path, smollm2_tokenizer: Path) -> None:
    from warehouse.export.mds import load

    lib = load()
    out = tmp_path / "mds"
    info = export_release(release_dir, out, "mds", smollm2_tokenizer, compression="zstd")
    ref = release_rows(release_dir)
    streams = json.loads((out / "streams.json").read_text())["streams"]
    assert abs(sum(s["proportion"] for s in streams) - 1) < 1e-12
    for s in streams:  # each stream alone, unshuffled: the release's order within the source
        sub = ref.filter(pl.col("source") == s["name"])
        ds = lib.StreamingDataset(local=str(out / s["local"]), shuffle=False, batch_size=1)
        got = [ds[i] for i in range(ds.num_samples)]
        assert [g["id"] for g in got] == sub.get_column("id").to_list()
        want = expected_ids(smollm2_tokenizer, sub.get_column("text").to_list())
        assert [g["tokens"].tolist() for g in got] == want
        assert s["rows"] == sub.height and s["tokens"] == sum(len(x) for x in want)
    # all streams with their proportions: one epoch holds each source as often as the release
    ds = lib.StreamingDataset(streams=[lib.Stream(local=str(out / s["local"]), proportion=s["proportion"])
                                       for s in streams], shuffle=False, batch_size=1)
    seen = dict(pl.Series([sample["source"] for sample in ds]).value_counts().sort("").iter_rows())
    # Streaming truncates epoch_size x proportion per stream (70/275 x 275 = 69.999...) and hands the
    # shortfall to random streams: each source is within one sample of the release, the total exact.
    assert set(seen) == {s["name"] for s in streams} and sum(seen.values()) == sum(s["rows"] for s in streams)
    assert all(abs(seen[s["name"]] - s["rows"]) <= 1 for s in streams), (seen, streams)
    assert info["rows"] == ref.height


def _read_mmidx(prefix: Path) -> tuple[np.ndarray, np.ndarray]:
    """An independent reader of Megatron's MMIDIDX format: (sizes, tokens of each document)."""
    raw = Path(f"{prefix}.idx").read_bytes()  # not with_suffix: a derived source name has a "."
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, n, ndoc = struct.unpack("<QBQQ", raw[9:34])
    assert version == 1 and code == 8 and ndoc == n + 1
    sizes = np.frombuffer(raw, np.int32, n, 34)
    ptrs = np.frombuffer(raw, np.int64, n, 34 + 4 * n)
    docs = np.frombuffer(raw, np.int64, n + 1, 34 + 12 * n)
    assert (docs == np.arange(n + 1)).all() and (ptrs == np.concatenate([[0], np.cumsum(sizes[:-1]) * 2])).all()
    return sizes, np.fromfile(f"{prefix}.bin", dtype=np.uint16)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_megatron_indexed_dataset(tmp_path: Path, release_dir: Path, smollm2_tokenizer: Path) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    out = tmp_path / "megatron"
    info = export_release(release_dir, out, "megatron", smollm2_tokenizer)
    ref = release_rows(release_dir)
    blend = json.loads((out / "blend.json").read_text())["blend"]
    args = (out / "data_args.txt").read_text().split()
    assert args[1::2] == [b["prefix"] for b in blend]
    assert abs(sum(float(w) for w in args[0::2]) - 1) < 1e-6
    for b in blend:
        want = expected_ids(smollm2_tokenizer, ref.filter(pl.col("source") == b["source"]).get_column("text").to_list())
        ds = IndexedDataset(str(out / b["prefix"]))
        assert len(ds) == len(want) == b["rows"]
        assert [ds[i].tolist() for i in range(len(ds))] == want
        sizes, flat = _read_mmidx(out / b["prefix"])
        assert sizes.tolist() == [len(x) for x in want] and flat.tolist() == [t for x in want for t in x]
        assert b["weight"] == pytest.approx(b["tokens"] / info["tokens"])
        assert b["planned_weight"] == pytest.approx(json.loads((release_dir / "manifest.json").read_text())
                                                    ["mixture"]["weights"][b["source"]])


def test_export_errors(tmp_path: Path, release_dir: Path, smollm2_tokenizer: Path) -> None:
    with pytest.raises(ValueError, match="unknown export format"):
        export_release(release_dir, tmp_path / "x", "parquet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tokenised"):
        export_release(release_dir, tmp_path / "x", "megatron")
    with pytest.raises(ReleaseError, match="no manifest"):
        export_release(tmp_path, tmp_path / "x", "jsonl")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_text("x")
    with pytest.raises(FileExistsError):
        export_release(release_dir, tmp_path / "taken", "jsonl")
    # a modified shard is refused, and no partial output is left behind
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in release_dir.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    last = sorted(bad.glob("shard-*.parquet"))[-1]
    last.write_bytes(last.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ReleaseError, match="sha256"):
        export_release(bad, tmp_path / "out-bad", "jsonl")
    assert not (tmp_path / "out-bad").exists() and not list(tmp_path.glob(".out-bad.tmp-*"))
