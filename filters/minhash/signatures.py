"""``minhash_signatures``: MinHash LSH band keys of every document (per shard, cached).

A per-shard stage. For each document it normalises the text (lower-case, punctuation and
symbols become word breaks, whitespace collapses, optional digit folding), shingles it into
word n-grams (default 5), computes a MinHash signature of ``num_perm`` 64-bit values over the
distinct shingle hashes, and writes:

- ``minhash_bands`` (list<uint64>, length ``bands``): one LSH key per band, the hash of the band's
  ``rows`` signature values and the band index. Two documents share a key in some band iff they
  are LSH candidates. Null for a document without any word after normalisation.
- ``n_shingles`` (int64): how many distinct shingles the document has (0 when empty).

Only the band keys are stored (8 bytes x bands = 112 bytes per document by default), not the
signature: the dedup stage needs nothing else from this stage. Its exact-Jaccard verification
re-derives shingle sets from the text during its fit (same definitions, see docs/dedup.md).

Defaults: ``ngram=5``, ``num_perm=112``, ``bands=14 x rows=8`` (as datatrove). Set ``threshold``
(and leave ``bands``/``rows`` unset) to get datasketch's optimal (bands, rows) for it instead.
All hashes are defined in ``filters.minhash.kernels`` (FNV-1a, MurmurHash3 fmix64, SplitMix64
seeded affine permutations mod 2^64), so persisted keys stay valid across library versions.

Bad input: a document shorter than ``ngram`` words gets one shingle of all its words (identical
short documents still match); a document with no word after normalisation gets null bands and
``n_shingles=0`` (the dedup stage keeps it as a singleton); an enormous document is processed
whole (time linear in its length, memory a few times its size).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engines.stage import Stage, StageContext, register_stage
from engines.strings import string_buffers
from schemas.config import stable_hash

BANDS_COLUMN = "minhash_bands"
COUNT_COLUMN = "n_shingles"
DEFAULT_BANDS, DEFAULT_ROWS = 14, 8


class MinHashParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    ngram: int = Field(5, ge=1, le=64)
    """Word n-gram length of the shingles."""
    num_perm: int = Field(112, ge=2, le=4096)
    """Hash permutations per signature (= bands x rows)."""
    bands: int | None = Field(None, ge=1)
    """LSH bands; null with ``rows`` null: 14 x 8 (as datatrove), or chosen for ``threshold``."""
    rows: int | None = Field(None, ge=1)
    """Rows per band (see ``bands``)."""
    threshold: float | None = Field(None, gt=0.0, lt=1.0)
    """Only used to choose bands/rows (datasketch's optimal routine) when neither is given."""
    seed: int = Field(1, ge=0)
    """Seed of the permutations."""
    fold_digits: bool = False
    """Read every digit as 0 (numbers differing only in digits match)."""
    # Threads per process for the kernel (it releases the GIL). 0: all cores when the stage runs
    # in the main process (executor.workers: 1, the memory-lean setting), 1 inside pool workers.
    # Does not change the output, so it is not part of the stage key.
    threads: int = Field(0, ge=0, le=256)
    """Kernel threads (0: all cores in the main process, 1 in pool workers); does not change the output."""

    @model_validator(mode="after")
    def _geometry(self) -> MinHashParams:
        b, r = self.resolved()
        if b * r > self.num_perm:
            raise ValueError(f"bands x rows = {b} x {r} = {b * r} exceeds num_perm = {self.num_perm}")
        return self

    def resolved(self) -> tuple[int, int]:
        """(bands, rows) after defaults: given values, else the optimum for ``threshold``,
        else 14 x 8 (scaled down when ``num_perm`` is smaller than 112)."""
        if self.bands and self.rows:
            return self.bands, self.rows
        if self.bands:
            return self.bands, max(1, self.num_perm // self.bands)
        if self.rows:
            return max(1, self.num_perm // self.rows), self.rows
        if self.threshold is not None:
            from filters.minhash.kernels import optimal_bands_rows
            return optimal_bands_rows(self.threshold, self.num_perm)
        if self.num_perm >= DEFAULT_BANDS * DEFAULT_ROWS:
            return DEFAULT_BANDS, DEFAULT_ROWS
        return max(1, self.num_perm // DEFAULT_ROWS), min(DEFAULT_ROWS, self.num_perm)


def normalised_text(text: pl.Expr) -> pl.Expr:
    """Unicode lower-casing, the first step of normalisation (word breaks, whitespace and digit
    folding are applied by the kernel on the bytes). The compiled kernel does the same lower-casing
    itself (``lower=True``; filters/minhash/lower_table.py); this expression is its definition and
    the NumPy fallback's path."""
    return text.str.to_lowercase()


class SignatureComputer:
    """MinHash band keys (and optional stored shingles) for an Arrow/Polars string column.
    Used by the stage, the tests and the benchmark alike."""

    def __init__(self, params: MinHashParams, threads: int | None = None):
        from filters.minhash import kernels as k
        self.k = k
        self.params = params
        # The executor's thread budget for this worker (StageContext.threads); params.threads wins.
        self.default_threads = threads
        self.bands, self.rows = params.resolved()
        self.a, self.b = k.permutations(params.num_perm, params.seed)
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None}

    def lowered(self, texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """The texts lower-cased by Polars (``normalised_text``), as kernel buffers: the reference
        for what the kernels do with ``lower=True``."""
        return string_buffers(texts.to_frame("t").select(normalised_text(pl.col("t"))).to_series())

    def buffers(self, texts: pl.Series) -> tuple[np.ndarray, np.ndarray, bool]:
        """(data, offsets, lower) for the kernels: the raw text when the compiled kernel lower-cases
        it as it hashes (no Polars pass, no copy of the lower-cased text), else Polars' lower case."""
        if self.k.lowers_in_kernel():
            return (*string_buffers(texts), True)
        return (*self.lowered(texts), False)

    def threads(self) -> int:
        return self.params.threads or self.default_threads or max(1, os.cpu_count() or 1)

    def compute(self, texts: pl.Series, keep_k: int = 0, band_keys: bool = True
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(band_keys[n, bands], n_shingles[n], stored values, stored offsets[n+1]): the LSH keys,
        the distinct shingle counts, and each document's ``keep_k`` smallest distinct 32-bit
        shingle values (ascending). ``band_keys=False`` skips the MinHash (shingle sets only)."""
        data, offsets, lower = self.buffers(texts)
        p = self.params
        a, b = (self.a, self.b) if band_keys else (self.a[:0], self.b[:0])
        bands, rows = (self.bands, self.rows) if band_keys else (0, 0)

        def run(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            return self.k.signatures_kernel(data, offsets[lo:hi + 1], p.ngram, p.fold_digits, a, b,
                                            bands, rows, keep_k, self.k.SEP_LO, self.k.SEP_HI, lower)

        n = len(offsets) - 1
        threads = min(self.threads(), max(1, n // 256))
        if threads <= 1:
            return run(0, n)
        # Split by bytes, not rows, so the threads get similar work.
        cuts = np.searchsorted(offsets, np.linspace(offsets[0], offsets[-1], threads + 1)[1:-1])
        bounds = [0, *sorted(set(int(c) for c in cuts if 0 < c < n)), n]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=threads)
        parts = list(self._pool.map(lambda lh: run(*lh), zip(bounds[:-1], bounds[1:])))
        keys = np.concatenate([q[0] for q in parts])
        counts = np.concatenate([q[1] for q in parts])
        stored = np.concatenate([q[2] for q in parts])
        shift = np.cumsum([0] + [q[3][-1] for q in parts[:-1]])
        stored_off = np.concatenate([[0]] + [q[3][1:] + s for q, s in zip(parts, shift)])
        return keys, counts, stored, stored_off

    def signatures(self, texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """Full signatures (n x num_perm) and distinct shingle counts (for tests/benchmarks)."""
        data, offsets, lower = self.buffers(texts)
        return self.k.signature_matrix_kernel(data, offsets, self.params.ngram, self.params.fold_digits,
                                              self.a, self.b, self.k.SEP_LO, self.k.SEP_HI, lower)

    def shingle_hashes(self, texts: pl.Series) -> list[np.ndarray]:
        """Each document's 64-bit shingle hashes in text order (for tests/benchmarks)."""
        data, offsets, lower = self.buffers(texts)
        flat, off = self.k.shingle_hashes_kernel(data, offsets, self.params.ngram, self.params.fold_digits,
                                                 self.k.SEP_LO, self.k.SEP_HI, lower)
        return [flat[off[i]:off[i + 1]] for i in range(len(off) - 1)]


@register_stage
class MinHashSignatures(Stage):
    kind = "minhash_signatures"
    version = "1"
    needs = ("text",)
    Params = MinHashParams
    runtime_params = ("threads",)

    def writes(self) -> dict[str, pa.DataType]:
        return {BANDS_COLUMN: pa.list_(pa.uint64()), COUNT_COLUMN: pa.int64()}

    def config_hash(self) -> str:
        # Keyed by the resolved geometry, so a threshold that gives the same bands/rows reuses
        # the cached signatures.
        p: MinHashParams = self.params  # type: ignore[assignment]
        b, r = p.resolved()
        resolved = p.model_dump(mode="json", exclude={"bands", "rows", "threshold", "threads"}) | {"bands": b, "rows": r}
        return stable_hash({"params": resolved, "upstream": self.upstream})[:10]

    def setup(self, ctx: StageContext) -> None:
        self._computer = SignatureComputer(self.params, ctx.threads)  # type: ignore[arg-type]

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        if not hasattr(self, "_computer"):
            self.setup(self.context)
        keys, counts, _, _ = self._computer.compute(batch.get_column("text"))
        n, bands = keys.shape
        offsets = np.arange(0, n * bands + 1, bands, dtype=np.int32) if n else np.zeros(1, np.int32)
        band_arr = pa.ListArray.from_arrays(pa.array(offsets), pa.array(keys.reshape(-1), type=pa.uint64()),
                                            mask=pa.array(counts == 0))
        out = pl.from_arrow(pa.table({BANDS_COLUMN: band_arr, COUNT_COLUMN: pa.array(counts, type=pa.int64())}))
        assert isinstance(out, pl.DataFrame)
        return out
