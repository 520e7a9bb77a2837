"""``decontaminate``: flag documents that share a word n-gram (13 words) with a benchmark example.

A global stage. **Fit** reads the benchmark files named in ``benchmarks`` (not the corpus: the batches
it is handed are left unread), normalises every example, hashes each of its n-grams and writes the
index to the artifact. **Apply** hashes the n-grams of each document the same way, looks them up in
the sorted index (NumPy ``searchsorted``) and flags the document when at least ``min_matches=1`` of its
n-gram positions are benchmark n-grams.

Benchmarks, each ``{name, path, format, text_field, id_field, split}``: ``format`` is ``jsonl``,
``parquet`` or ``hf`` (a ``datasets`` ``save_to_disk`` folder, one ``Dataset`` or a ``DatasetDict``:
all splits in name order, or only ``split``); inferred from the path when left out. ``text_field`` is
a column or a list of columns (joined with a newline, so an n-gram may span question and answer); a
list-of-strings column (multiple-choice options) is joined with spaces. ``id_field`` names the
example in the output; without it the example is its row number (``split/row`` for a DatasetDict).

Normalisation (both sides): lower-case (Unicode), delete Unicode punctuation (``\\p{P}``: so
``don't`` is ``dont`` and ``state-of-the-art`` is ``stateoftheart``, on both sides alike), split on
whitespace. An n-gram is ``ngram=13`` consecutive words (the GPT-3 paper's 13-gram overlap test;
examples with fewer words cannot be detected and are counted as ``examples_too_short`` in the fit
metrics).

Hashing: each word is hashed with 64-bit FNV-1a over its first 64 UTF-8 bytes (longer words compare
on that prefix and their byte length), mixed with the SplitMix64 finaliser; an n-gram hash folds its
words' hashes the same way. Both are computed with NumPy over whole batches (a loop over byte
positions and over the n words of a window, never over documents) and are stable across versions
and machines, so the index in the artifact stays valid. Collision odds per document n-gram are
about (index size) / 2^64: below 1e-12 for a million benchmark n-grams.

Writes ``keep`` (false when contaminated), ``reason`` (``contaminated``), ``contam_ngrams`` (how many
of the document's n-gram positions are in the index), ``contam_benchmark`` and ``contam_example``
(the benchmark and example of the document's first matching n-gram; when several examples share
that n-gram, the first benchmark in the list and its first example).

Cost: the index holds 16 bytes per distinct benchmark n-gram (about 16 MB for the ~1 M n-grams of
a large benchmark suite), loaded once per worker. Apply runs three regex passes for normalisation and
a few dozen NumPy passes over the words of a batch. The artifact records each benchmark file's
SHA-256; a worker that can see the file refuses to apply an index built from another version of it.
"""
from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from engines.fingerprints import content_sha256
from engines.stage import GlobalStage, StageContext, register_stage
from filters.whitespace import collapse_whitespace

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MAX_WORD_BYTES = 64


class BenchmarkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")  # documented under DecontamParams.benchmarks
    name: str
    path: str
    format: Literal["jsonl", "parquet", "hf"] | None = None
    text_field: str | list[str]
    id_field: str | None = None
    split: str | None = None


class DecontamParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    benchmarks: list[BenchmarkSpec] = Field(default_factory=list)
    """Local benchmark files (name, path, text_field, ...) whose n-grams must not appear in training data."""
    ngram: int = Field(default=13, ge=1)
    """Word n-gram length compared (13, as GPT-3 and Llama did)."""
    min_matches: int = Field(default=1, ge=1)
    """Shared n-grams with one benchmark example needed to drop a document (``contaminated``)."""


# --- normalisation and hashing ------------------------------------------------------------------


def normalised_words(text: pl.Expr) -> pl.Expr:
    """The list of words of a text after lower-casing and deleting punctuation."""
    return (text.fill_null("").str.to_lowercase().str.replace_all(r"\p{P}+", "")
            .pipe(collapse_whitespace).str.strip_chars(" ").str.split(" "))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def word_hashes(words: pl.Series) -> np.ndarray:
    """64-bit hash of each (non-empty) word: FNV-1a over its first 64 bytes, then its length."""
    arr = words.to_arrow()
    if not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None \
        else np.zeros(0, dtype=np.uint8)
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    active = np.flatnonzero(lengths > 0)
    for pos in range(_MAX_WORD_BYTES):
        active = active[lengths[active] > pos]
        if active.size == 0:
            break
        h[active] = (h[active] ^ data[starts[active] + pos].astype(np.uint64)) * _FNV_PRIME
    return _splitmix64(h ^ (lengths.astype(np.uint64) << np.uint64(40)))


def ngram_hashes(words_per_row: pl.Series, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, hash) of every n-gram of consecutive words inside each row, in row then word order."""
    frame = pl.DataFrame({"w": words_per_row}).with_row_index("row").explode("w").filter(
        pl.col("w").is_not_null() & (pl.col("w") != ""))
    rows = frame.get_column("row").to_numpy().astype(np.int64)
    w = word_hashes(frame.get_column("w"))
    m = w.size - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
    h = np.full(m, _FNV_OFFSET, dtype=np.uint64)
    for j in range(n):
        h = (h ^ w[j:j + m]) * _FNV_PRIME
    h = _splitmix64(h)
    inside = rows[:m] == rows[n - 1:]  # rows are contiguous: same row at both ends = same row throughout
    return rows[:m][inside], h[inside]


# --- benchmark files ------------------------------------------------------------------------------


def _infer_format(path: Path) -> str:
    if path.is_dir():
        return "hf"
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".json", ".jsonl.gz", ".ndjson")):
        return "jsonl"
    raise ValueError(f"cannot tell the format of benchmark file {path}; set format: jsonl | parquet | hf")


def _text_expr(frame: pl.DataFrame, fields: list[str]) -> pl.Expr:
    parts = []
    for f in fields:
        if f not in frame.columns:
            raise KeyError(f"text_field {f!r} not in benchmark columns {frame.columns}")
        dtype = frame.schema[f]
        col = pl.col(f)
        if isinstance(dtype, pl.List):
            col = col.cast(pl.List(pl.String)).list.join(" ")
        elif dtype != pl.String:
            col = col.cast(pl.String)
        parts.append(col)
    return pl.concat_str(parts, separator="\n", ignore_nulls=True).fill_null("")


def load_benchmark(spec: BenchmarkSpec) -> pl.DataFrame:
    """``text`` and ``example_id`` of every example of one benchmark, in file order."""
    path = Path(spec.path)
    fmt = spec.format or _infer_format(path)
    fields = [spec.text_field] if isinstance(spec.text_field, str) else list(spec.text_field)
    tables: list[tuple[str | None, pl.DataFrame]] = []
    if fmt == "jsonl":
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                tables.append((None, pl.read_ndjson(io.BytesIO(fh.read()), infer_schema_length=None)))
        else:
            tables.append((None, pl.read_ndjson(path, infer_schema_length=None)))
    elif fmt == "parquet":
        tables.append((None, pl.read_parquet(path)))
    else:
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            splits = [spec.split] if spec.split else sorted(ds)
            tables.extend((s, pl.from_arrow(ds[s].with_format("arrow")[:])) for s in splits)  # type: ignore[misc]
        else:
            tables.append((None, pl.from_arrow(ds.with_format("arrow")[:])))  # type: ignore[arg-type]
    out = []
    for split, frame in tables:
        if isinstance(frame, pl.Series):
            frame = frame.to_frame()
        row = pl.int_range(pl.len()).cast(pl.String)
        if spec.id_field:
            ex_id = pl.col(spec.id_field).cast(pl.String)
        else:
            ex_id = (pl.lit(f"{split}/") + row) if split is not None else row
        out.append(frame.select(_text_expr(frame, fields).alias("text"), ex_id.alias("example_id")))
    if not out:
        return pl.DataFrame(schema={"text": pl.String, "example_id": pl.String})
    return pl.concat(out)


# --- the stage ------------------------------------------------------------------------------------


@register_stage
class Decontaminate(GlobalStage):
    kind = "decontaminate"
    path_params = ("benchmarks[].path",)
    version = "1"
    needs = ("text",)
    Params = DecontamParams
    # The index is built from the benchmark files alone: fitted once per benchmark content
    # (fit_inputs), never again because the corpus grew. Each document's verdict depends on
    # itself and the index only, so a new shard is checked against the same index.
    fit_policy = "pinned"
    fit_reads_corpus = False

    def fit_inputs(self) -> dict[str, Any]:
        p: DecontamParams = self.params  # type: ignore[assignment]
        return {"benchmarks": {b.name: content_sha256(self.resolve_path(b.path)) for b in p.benchmarks}}

    def writes(self) -> dict[str, pa.DataType]:
        return {"keep": pa.bool_(), "reason": pa.string(), "contam_benchmark": pa.string(),
                "contam_example": pa.string(), "contam_ngrams": pa.int64()}

    def fit(self, batches: Iterator[pl.DataFrame], artifact_dir: str) -> dict[str, Any]:
        p: DecontamParams = self.params  # type: ignore[assignment]
        hashes, examples, ex_tables, meta = [], [], [], []
        too_short = n_examples = 0
        for b, spec in enumerate(p.benchmarks):
            spec = spec.model_copy(update={"path": self.resolve_path(spec.path)})
            bench = load_benchmark(spec)
            words = bench.select(normalised_words(pl.col("text"))).to_series()
            lengths = words.list.len().to_numpy()
            nonempty = words.list.first().fill_null("") != ""
            short = int(((lengths < p.ngram) & nonempty.to_numpy()).sum())
            rows, h = ngram_hashes(words, p.ngram)
            hashes.append(h)
            examples.append(rows.astype(np.int64) + n_examples)
            ex_tables.append(bench.select(pl.lit(b, pl.Int32).alias("bench"),
                                          pl.int_range(pl.len(), dtype=pl.Int64).alias("example"), "example_id"))
            meta.append({"name": spec.name, "path": spec.path, "format": spec.format or _infer_format(Path(spec.path)),
                         "sha256": content_sha256(spec.path), "examples": bench.height, "too_short": short,
                         "offset": n_examples})
            n_examples += bench.height
            too_short += short
        h = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
        ex = np.concatenate(examples) if examples else np.zeros(0, dtype=np.int64)
        # One entry per distinct hash: the first example (benchmark order, then row order) that has it.
        order = np.lexsort((ex, h))
        h, ex = h[order], ex[order]
        first = np.ones(h.size, dtype=bool)
        first[1:] = h[1:] != h[:-1]
        h, ex = h[first], ex[first]
        pq.write_table(pa.table({"h": pa.array(h, pa.uint64()), "example": pa.array(ex, pa.int64())}),
                       f"{artifact_dir}/ngrams.parquet")
        examples_table = pl.concat(ex_tables) if ex_tables else pl.DataFrame(
            schema={"bench": pl.Int32, "example": pl.Int64, "example_id": pl.String})
        pq.write_table(examples_table.to_arrow(), f"{artifact_dir}/examples.parquet")
        Path(f"{artifact_dir}/benchmarks.json").write_text(json.dumps({"ngram": p.ngram, "benchmarks": meta}, indent=1))
        return {"benchmarks": len(p.benchmarks), "examples": n_examples, "examples_too_short": too_short,
                "ngrams": int(h.size)}

    def setup(self, ctx: StageContext) -> None:
        assert ctx.artifact_dir, "decontaminate needs its fitted artifact"
        info = json.loads(Path(f"{ctx.artifact_dir}/benchmarks.json").read_text())
        for m in info["benchmarks"]:
            path = Path(self.resolve_path(m["path"]))
            if path.exists() and content_sha256(path) != m["sha256"]:
                raise ValueError(f"benchmark {m['name']!r} ({path}) changed since the fit; re-run the fit")
        table = pq.read_table(f"{ctx.artifact_dir}/ngrams.parquet")
        self._h = table.column("h").to_numpy()
        self._ex = table.column("example").to_numpy()
        ex = pl.from_arrow(pq.read_table(f"{ctx.artifact_dir}/examples.parquet"))
        assert isinstance(ex, pl.DataFrame)
        offsets = {i: m["offset"] for i, m in enumerate(info["benchmarks"])}
        self._examples = ex.with_columns(
            (pl.col("example") + pl.col("bench").replace_strict(offsets, return_dtype=pl.Int64)).alias("gex"),
            pl.col("bench").replace_strict({i: m["name"] for i, m in enumerate(info["benchmarks"])},
                                           return_dtype=pl.String).alias("bench_name"),
        ).select("gex", "bench_name", "example_id")

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: DecontamParams = self.params  # type: ignore[assignment]
        n = batch.height
        words = batch.select(normalised_words(pl.col("text"))).to_series()
        rows, h = ngram_hashes(words, p.ngram)
        if self._h.size and h.size:
            pos = np.minimum(np.searchsorted(self._h, h), self._h.size - 1)
            hit = self._h[pos] == h
        else:
            pos = np.zeros(h.size, dtype=np.int64)
            hit = np.zeros(h.size, dtype=bool)
        counts = np.bincount(rows[hit], minlength=n).astype(np.int64)
        hit_rows, first_idx = np.unique(rows[hit], return_index=True)  # the first hit of each row (in order)
        first_ex = self._ex[pos[hit][first_idx]] if hit_rows.size else np.zeros(0, dtype=np.int64)
        firsts = pl.DataFrame({"row": hit_rows.astype(np.int64), "gex": first_ex.astype(np.int64)}).join(
            self._examples, on="gex", how="left")
        out = pl.DataFrame({"row": np.arange(n, dtype=np.int64), "contam_ngrams": counts}).join(
            firsts, on="row", how="left", maintain_order="left")
        flagged = pl.col("contam_ngrams") >= p.min_matches
        return out.select(
            (~flagged).alias("keep"),
            pl.when(flagged).then(pl.lit("contaminated")).otherwise(pl.lit(None, pl.String)).alias("reason"),
            pl.when(pl.col("contam_ngrams") > 0).then(pl.col("bench_name")).alias("contam_benchmark"),
            pl.when(pl.col("contam_ngrams") > 0).then(pl.col("example_id")).alias("contam_example"),
            "contam_ngrams",
        )
