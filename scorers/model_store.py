"""How a fitted fastText model is stored in an artifact folder: quantised, zstd or raw.

A supervised fastText model with word bigrams keeps a 2,000,000-row hashed n-gram matrix
(``dim`` floats each, most rows never trained): 531 MB at ``dim=64`` whatever the corpus size.
Measured on a real classifier (docs/nightly.md, "Model storage"):

- ``quantized`` (default): fastText's own ``quantize`` keeping the ``quantize_cutoff`` rows of
  largest norm (100,000) with product quantisation: 4.4 MB on disk and in each worker's memory;
  scores move a little (held-out AUC 0.9327 against 0.9316, rank correlation with the full
  model 0.9945; about 22 s of one core to quantise), so calibration and held-out metrics are computed with the stored model, and the
  agreement with the full model on the calibration sample is recorded in the fit metrics;
- ``zstd``: the full model compressed (lossless, ~5x: 110 MB), decompressed to a temporary
  file when loaded (then the full 531 MB in memory per worker);
- ``raw``: ``model.bin`` as fastText writes it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

Store = Literal["quantized", "zstd", "raw"]
FILES: dict[str, str] = {"quantized": "model.ftz", "zstd": "model.bin.zst", "raw": "model.bin"}


def save_fasttext(model: Any, artifact_dir: str, store: Store, cutoff: int) -> Any:
    """Write ``model`` to ``artifact_dir`` as ``store`` says; returns the model as stored, which
    is what the apply will load. ``quantized`` quantises ``model`` itself, in place: score with
    the full model before this call if you need its scores. (The full model used to be written
    out and loaded back as a copy to quantise: 531 MB written and read, two full models in memory
    at once; the quantised file is byte-identical either way.)"""
    if store == "quantized":
        # No retraining: the kept rows are the trained ones (largest norms); the rest were never
        # updated from their random start, so pruning them drops noise, not what was learnt.
        model.quantize(cutoff=cutoff, retrain=False)
        model.save_model(f"{artifact_dir}/{FILES['quantized']}")
        return model
    raw = f"{artifact_dir}/{FILES['raw']}"
    model.save_model(raw)
    if store == "zstd":
        import zstandard
        with open(raw, "rb") as src, open(f"{artifact_dir}/{FILES['zstd']}", "wb") as dst:
            zstandard.ZstdCompressor(level=3, threads=-1).copy_stream(src, dst)
        os.unlink(raw)
    return model


def load_fasttext(artifact_dir: str) -> Any:
    """The model stored in ``artifact_dir`` (whichever form it was stored in)."""
    import fasttext
    folder = Path(artifact_dir)
    for store in ("quantized", "raw"):
        if (folder / FILES[store]).exists():
            return fasttext.load_model(str(folder / FILES[store]))
    packed = folder / FILES["zstd"]
    if not packed.exists():
        raise FileNotFoundError(f"no fastText model in {artifact_dir} (looked for {', '.join(FILES.values())})")
    import zstandard
    fd, tmp = tempfile.mkstemp(suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as dst, open(packed, "rb") as src:
            zstandard.ZstdDecompressor().copy_stream(src, dst)
        return fasttext.load_model(tmp)
    finally:
        os.unlink(tmp)


def has_model(artifact_dir: str) -> bool:
    return any((Path(artifact_dir) / f).exists() for f in FILES.values())


def model_bytes(artifact_dir: str) -> int:
    """Size of the stored model file(s)."""
    return sum((Path(artifact_dir) / f).stat().st_size for f in FILES.values() if (Path(artifact_dir) / f).exists())


def agreement(full: np.ndarray, stored: np.ndarray, full_buckets: np.ndarray,
              stored_buckets: np.ndarray) -> dict[str, float]:
    """How the stored model's scores compare with the full model's on the same documents:
    Spearman rank correlation, mean and max absolute difference, and the share of documents in
    the same bucket (each model's buckets calibrated on these documents as the fit does)."""
    if len(full) < 2:
        return {}
    return {"spearman": round(float(np.corrcoef(_ranks(full), _ranks(stored))[0, 1]), 4),
            "mean_abs_diff": round(float(np.abs(full - stored).mean()), 5),
            "max_abs_diff": round(float(np.abs(full - stored).max()), 4),
            "same_bucket": round(float((full_buckets == stored_buckets).mean()), 4),
            "bucket_within_one": round(float((np.abs(full_buckets - stored_buckets) <= 1).mean()), 4)}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (what Spearman's correlation correlates)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (starts + (counts - 1) / 2)[inverse]
