"""The ablation tokenizer: one fixed tokenizer for every release, recorded by its SHA-256.

Why not SmolLM2's tokenizer (49,152 ids)? A "1M-parameter" model with it would be 6.3M
parameters of embeddings (49,152 x 128) and almost nothing else: the ablation would measure
an embedding table. The built-in tokenizer is a byte-level BPE with 4,096 ids, so the 1m preset
spends about half its parameters on the transformer; byte-level means no text is out of
vocabulary (any language, code, broken markup). Bits per byte do not depend on the tokenizer's
units, so numbers stay comparable with other tokenizers' runs, and a larger model can use
``tokenizer: smollm2`` or any ``tokenizer.json``.

The built-in file (``ablations/assets/curate-bpe-4k.json``) was trained once with
``train_bpe`` on a fixed reference, the bundled demo corpus (``demo/data``: English, French and
Spanish Wikipedia summaries and Python documentation, ~0.9 MB), and is shipped so that no run
depends on retraining it: ``python -m ablations.tokenizer`` rebuilds it byte for byte (the test
suite checks that). Which tokenizer a run used is stored with its SHA-256 in the results.
"""
from __future__ import annotations

import argparse
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import polars as pl

ASSET = Path(__file__).with_name("assets") / "curate-bpe-4k.json"
EOS = "<|endoftext|>"
BUILTIN_VOCAB = 4096
REPO = Path(__file__).resolve().parents[1]
# The fixed reference of the built-in tokenizer: files of the bundled demo corpus, in this order.
BUILTIN_REFERENCE = ("demo/data/wiki_en.parquet", "demo/data/wiki_fr.jsonl.gz", "demo/data/wiki_es.jsonl.zst",
                     "demo/data/python_docs.jsonl")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """The ``text_field`` column of a Parquet or JSON-lines file (``.gz``/``.zst`` too), in file order."""
    p = str(path)
    if p.endswith(".parquet"):
        frame = pl.read_parquet(p, columns=[text_field])
    else:
        frame = pl.read_ndjson(_decompressed(p), infer_schema_length=None)
    if text_field not in frame.columns:
        raise KeyError(f"{path}: no field {text_field!r} (fields: {frame.columns})")
    return [t for t in frame.get_column(text_field).cast(pl.String).to_list() if t]


def _decompressed(path: str) -> str | bytes:
    if path.endswith(".gz"):
        import gzip
        with gzip.open(path, "rb") as f:
            return f.read()
    if path.endswith(".zst"):
        import zstandard
        with open(path, "rb") as f:
            return zstandard.ZstdDecompressor().stream_reader(f).read()
    return path


def train_bpe(texts: Iterator[str] | Sequence[str], out: str | Path, vocab_size: int = BUILTIN_VOCAB) -> Path:
    """Train a byte-level BPE tokenizer (HF ``tokenizers``) and write its ``tokenizer.json``.

    Deterministic: the same texts in the same order give the same file. ``<|endoftext|>`` is id 0.
    Cost: a few seconds per MB of text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(iter(texts), trainer=trainer)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    tok.save(str(part), pretty=False)
    part.replace(out)
    return out


def builtin_reference_texts() -> Iterator[str]:
    for rel in BUILTIN_REFERENCE:
        yield from read_texts(REPO / rel)


def resolve_tokenizer(spec: str, base_dir: str = ".") -> Path:
    """The ``tokenizer.json`` a config names: ``builtin``, ``smollm2`` or a path."""
    if spec == "builtin":
        return ASSET
    if spec == "smollm2":
        from engines.inference.models import smollm2_tokenizer
        return smollm2_tokenizer()
    p = Path(spec)
    p = p if p.is_absolute() else Path(base_dir) / p
    if not p.is_file():
        raise FileNotFoundError(f"tokenizer {spec!r} not found at {p}: use builtin, smollm2 or a tokenizer.json path")
    return p.resolve()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Rebuild the built-in ablation tokenizer from its fixed reference.")
    ap.add_argument("--out", default=str(ASSET))
    args = ap.parse_args(argv)
    path = train_bpe(builtin_reference_texts(), args.out)
    print(f"{path}  sha256 {sha256_file(path)}")


if __name__ == "__main__":
    main()
