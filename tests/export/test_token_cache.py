"""A release is tokenised once per tokenizer: later formats read the cached ids, and every format's
output is byte for byte what tokenising directly gives."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from warehouse.export import export_release
from warehouse.export.tokenize import TextTokenizer

ORDER = ("hf", "megatron", "mds", "jsonl")


def _files(d: Path) -> dict[str, str]:
    """sha256 of every file under d (export.json without its out_dir, which names the folder)."""
    out = {}
    for p in sorted(d.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        if p.name == "export.json":
            info = json.loads(data)
            info.pop("out_dir")
            data = json.dumps(info, sort_keys=True).encode()
        out[str(p.relative_to(d))] = hashlib.sha256(data).hexdigest()
    return out


@pytest.fixture()
def lake_release(tmp_path: Path, release_dir: Path) -> Path:
    """The test release copied into a lake's layout: <lake>/releases/NAME/VERSION."""
    dest = tmp_path / "lake" / "releases" / "test-release" / release_dir.name
    shutil.copytree(release_dir, dest)
    return dest


@pytest.fixture()
def encode_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Documents passed to the tokenizer, one entry per batch."""
    calls: list[int] = []
    original = TextTokenizer._encode_batch

    def counting(self: TextTokenizer, texts: list[str]):
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(TextTokenizer, "_encode_batch", counting)
    return calls


def test_second_format_reads_the_cache_and_outputs_match_direct_tokenisation(
        tmp_path: Path, lake_release: Path, smollm2_tokenizer: Path, encode_calls: list[int]) -> None:
    lake = lake_release.parents[2]
    shards = len(json.loads((lake_release / "manifest.json").read_text())["shards"])
    rows = json.loads((lake_release / "manifest.json").read_text())["totals"]["rows"]
    assert shards >= 3
    cached: dict[str, Path] = {}
    for i, fmt in enumerate(ORDER):
        before = sum(encode_calls)
        info = export_release(lake_release, tmp_path / "cached" / fmt, fmt, smollm2_tokenizer)  # type: ignore[arg-type]
        cache_dir = Path(info["token_cache"]["dir"])
        assert cache_dir.parent == lake / "exports" / "test-release" / lake_release.name / "_tokens"
        if i == 0:  # the first format tokenises every document once and stores the ids
            assert info["token_cache"] == {"dir": str(cache_dir), "hits": 0, "misses": shards}
            assert sum(encode_calls) - before == rows
        else:  # every later format tokenises nothing
            assert info["token_cache"] == {"dir": str(cache_dir), "hits": shards, "misses": 0}
            assert sum(encode_calls) == before
        cached[fmt] = tmp_path / "cached" / fmt
    assert len(list(cache_dir.glob("shard-*.arrow"))) == shards
    assert not [p for p in cache_dir.parent.rglob("*") if ".tmp-" in p.name]  # atomic writes left nothing

    # Tokenising directly (no cache) gives the same bytes in every format.
    for fmt in ORDER:
        direct = export_release(lake_release, tmp_path / "direct" / fmt, fmt, smollm2_tokenizer,  # type: ignore[arg-type]
                                token_cache=None)
        assert direct["token_cache"] == {"dir": None, "hits": 0, "misses": shards}
        assert _files(tmp_path / "direct" / fmt) == _files(cached[fmt]), fmt


def test_other_tokenizer_settings_and_damaged_files_are_tokenised_again(
        tmp_path: Path, lake_release: Path, smollm2_tokenizer: Path, encode_calls: list[int]) -> None:
    shards = len(json.loads((lake_release / "manifest.json").read_text())["shards"])
    a = export_release(lake_release, tmp_path / "a", "megatron", smollm2_tokenizer)
    # no end-of-text token: other ids, so another cache entry
    b = export_release(lake_release, tmp_path / "b", "hf", smollm2_tokenizer, append_eos=False)
    assert b["token_cache"]["misses"] == shards and b["token_cache"]["dir"] != a["token_cache"]["dir"]
    # a cache file damaged by hand is ignored and rewritten; the output is unchanged
    victim = sorted(Path(a["token_cache"]["dir"]).glob("shard-*.arrow"))[1]
    victim.write_bytes(victim.read_bytes()[:100])
    c = export_release(lake_release, tmp_path / "c", "megatron", smollm2_tokenizer)
    assert (c["token_cache"]["hits"], c["token_cache"]["misses"]) == (shards - 1, 1)
    assert _files(tmp_path / "c") == _files(tmp_path / "a")
    d = export_release(lake_release, tmp_path / "d", "megatron", smollm2_tokenizer)
    assert (d["token_cache"]["hits"], d["token_cache"]["misses"]) == (shards, 0)


def test_release_outside_a_lake_is_tokenised_without_a_cache(tmp_path: Path, release_dir: Path,
                                                             smollm2_tokenizer: Path) -> None:
    info = export_release(release_dir, tmp_path / "out", "jsonl", smollm2_tokenizer)
    assert info["token_cache"]["dir"] is None and info["token_cache"]["hits"] == 0
    assert not list(tmp_path.rglob("_tokens"))
