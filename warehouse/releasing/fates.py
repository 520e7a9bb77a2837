"""The fate of every row of a raw shard: kept, dropped with a reason, or quarantined.

1. **quarantined** if a stage the release reads (the selection's stages and the ``release.text``
   stages) recorded an error for the row (``<stage>._error``) or has no usable annotation file
   for the shard (it failed there);
2. **dropped** with reason ``release:empty_text`` if the raw text is empty or whitespace;
3. **dropped** if the selection expression is false, attributed to the first filter the
   selection reads (pipeline order) whose ``keep`` is false (``<stage>:<its reason>``), else to
   ``select``;
4. **dropped** with reason ``release:empty_after_text_transforms`` if the text the release
   carries (after ``release.text``) is empty or whitespace;
5. otherwise **kept**. Stages the release does not read never drop anything.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from engines import storage
from warehouse.errors import DamagedFile

ERROR_COLUMN = "_error"
# Rows per chunk when the release streams a raw shard (shard_chunks): the release step holds one
# chunk of text (a few copies of it, in Arrow and Polars) whatever the shard size.
CHUNK_ROWS = 8192


@dataclass
class StageInfo:
    """What the release needs to know of a configured stage."""

    name: str
    key: str
    columns: list[str]  # columns it writes (without id/_error)
    sources: list[str] | None  # None: all sources

    @property
    def is_filter(self) -> bool:
        return "keep" in self.columns

    def applies_to(self, source: str) -> bool:
        return self.sources is None or source in self.sources


@dataclass
class Reads:
    """Which annotation columns the release reads, per stage, and which stages can quarantine."""

    columns: dict[str, list[str]]  # stage -> its columns to load
    selection: set[str]  # stages the selection reads: their filters attribute drops
    used: set[str]  # stages whose errors or missing files quarantine a row (selection + text)

    @classmethod
    def of(cls, stages: list[StageInfo], selection_columns: set[str], selection_stages: set[str],
           text_columns: list[str], plan_columns: tuple[str, ...] = ()) -> Reads:
        """The selection's columns plus ``keep``/``reason`` of its filters, the ``release.text``
        columns and the planner's columns (all ``stage.column``)."""
        wanted = {c for c in selection_columns | set(text_columns) | set(plan_columns) if "." in c}
        used = set(selection_stages) | {c.split(".", 1)[0] for c in text_columns}
        cols: dict[str, list[str]] = {}
        for s in stages:
            mine = {c.split(".", 1)[1] for c in wanted if c.split(".", 1)[0] == s.name}
            if s.name in selection_stages and s.is_filter:
                mine |= {"keep"} | ({"reason"} & set(s.columns))
            if s.name in used or mine:
                cols[s.name] = [c for c in s.columns if c in mine] + ([ERROR_COLUMN] if s.name in used else [])
        return cls(cols, set(selection_stages), used)


def _read(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, p = storage.fs_and_path(path)
    try:
        with fs.open(p, "rb") as f:
            return pq.read_table(f, columns=columns)
    except (pa.ArrowException, OSError) as e:  # name the file: a bare ArrowInvalid says nothing
        raise _damaged(path, e) from None


def _annotation_files(raw: str, source: str, stages: list[StageInfo], reads: Reads, annotation_path: Any,
                      missing: dict[str, str]) -> Iterator[tuple[StageInfo, list[str], str]]:
    """(stage, columns to read, annotation file) of each stage the release reads for this shard;
    a stage whose file does not exist goes to ``missing`` with why."""
    for st in stages:
        cols = reads.columns.get(st.name)
        if cols is None or not st.applies_to(source):
            continue
        ann_path = annotation_path(st.key, raw)
        if not storage.exists(ann_path):
            missing[st.name] = f"stage {st.name} has no annotations for this shard (it failed there; see stage_runs)"
            continue
        yield st, cols, ann_path


def shard_frame(raw: str, source: str, stages: list[StageInfo], reads: Reads,
                annotation_path: Any) -> tuple[pl.DataFrame, dict[str, str]]:
    """The raw shard with the columns the release reads of each applicable stage, as
    ``<stage>.<col>``; and, for stages whose annotation file is missing or misaligned, why.

    The whole shard at once: the release and the report stream ``shard_chunks`` instead; this
    is the plain form the tests hold the chunked join to."""
    df = pl.from_arrow(_read(raw))
    assert isinstance(df, pl.DataFrame)
    missing: dict[str, str] = {}
    for st, cols, ann_path in _annotation_files(raw, source, stages, reads, annotation_path, missing):
        ann = pl.from_arrow(_read(ann_path, ["id", *cols]))
        assert isinstance(ann, pl.DataFrame)
        if ann.height != df.height:
            missing[st.name] = f"stage {st.name} annotations have {ann.height} rows for a shard of {df.height}"
            continue
        why = _misaligned(st.name, ann.get_column("id"), df.get_column("id"), ann_path)
        if why:
            missing[st.name] = why
            continue
        df = df.with_columns([ann.get_column(c).alias(f"{st.name}.{c}") for c in cols])
    return df, missing


def _misaligned(stage: str, ann_ids: pl.Series, raw_ids: pl.Series, ann_path: str) -> str | None:
    """Why an annotation file of the right length does not belong to the shard, or None.

    Aligned by id, not only by position: a file written for another version of the shard (or
    rows reordered by a buggy stage) has the right length but the wrong documents."""
    off = ann_ids != raw_ids
    if not off.any():
        return None
    row = int(off.arg_max() or 0)
    return (f"stage {stage} annotations are not aligned with the shard by id (row {row}: {ann_ids[row]!r} for "
            f"document {raw_ids[row]!r}); delete {ann_path} and run again to recompute it")


class _Rows:
    """Exact row ranges of one Parquet file, read in order a batch at a time (the files of a shard
    and of its annotations are cut into row groups independently)."""

    def __init__(self, path: str, pf: pq.ParquetFile, columns: list[str] | None):
        self.path, self._batches = path, pf.iter_batches(batch_size=CHUNK_ROWS, columns=columns, use_threads=False)
        try:
            schema = pf.schema_arrow
            self._empty = schema.empty_table().select(columns) if columns is not None else schema.empty_table()
        except KeyError as e:  # a column the stage should have written is not in its file
            raise _damaged(path, e) from None
        self._buf: list[pa.RecordBatch] = []
        self._have = 0

    def take(self, n: int) -> pa.Table:
        while self._have < n:
            try:
                batch = next(self._batches)
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as e:
                raise _damaged(self.path, e) from None
            self._buf.append(batch)
            self._have += batch.num_rows
        table = pa.Table.from_batches(self._buf) if self._buf else self._empty
        out, rest = table.slice(0, n), table.slice(n)
        self._buf, self._have = rest.to_batches(), rest.num_rows
        return out


def _damaged(path: str, e: BaseException) -> DamagedFile:
    return DamagedFile(path, f"cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})")


def _open(stack: ExitStack, path: str) -> pq.ParquetFile:
    """The Parquet file, closed with ``stack``. A local path is read by Arrow's own file reads, which
    release the GIL (through fsspec's Python file object every read takes the GIL from the release's
    deciding thread); any other URL through its fsspec filesystem."""
    try:
        if "://" not in path:
            return stack.enter_context(pq.ParquetFile(path))
        fs, p = storage.fs_and_path(path)
        return pq.ParquetFile(stack.enter_context(fs.open(p, "rb")))
    except (pa.ArrowException, OSError) as e:
        raise _damaged(path, e) from None


def _ids(path: str, pf: pq.ParquetFile) -> pl.Series:
    try:
        return pl.Series("id", pf.read(columns=["id"], use_threads=False).column("id"))
    except (pa.ArrowException, OSError, KeyError) as e:
        raise _damaged(path, e) from None


def shard_parts(raw: str, source: str, stages: list[StageInfo], reads: Reads, annotation_path: Any
                ) -> Iterator[tuple[pa.Table, list[pl.Series], dict[str, str]]]:
    """The raw shard ``CHUNK_ROWS`` rows at a time, in shard order, as read (Arrow), with the
    columns the release reads of each applicable stage for the same rows (Polars series named
    ``<stage>.<col>``) and ``missing`` (the same for every chunk). The raw shard and each
    annotation file are read side by side, so memory is one chunk whatever the shard size. The
    release keeps the text in Arrow when it carries it unchanged; ``shard_chunks`` joins both."""
    with ExitStack() as stack:
        raw_pf = _open(stack, raw)
        n = raw_pf.metadata.num_rows
        missing: dict[str, str] = {}
        readers: list[tuple[str, _Rows]] = []
        raw_ids: pl.Series | None = None  # the shard's ids (~40 bytes a row), read once for the id check
        for st, cols, ann_path in _annotation_files(raw, source, stages, reads, annotation_path, missing):
            pf = _open(stack, ann_path)
            if pf.metadata.num_rows != n:
                missing[st.name] = f"stage {st.name} annotations have {pf.metadata.num_rows} rows for a shard of {n}"
                continue
            # The whole id columns first (as shard_frame): a file misaligned anywhere quarantines the
            # whole shard's rows before any chunk is decided.
            raw_ids = _ids(raw, raw_pf) if raw_ids is None else raw_ids
            why = _misaligned(st.name, _ids(ann_path, pf), raw_ids, ann_path)
            if why:
                missing[st.name] = why
                continue
            readers.append((st.name, _Rows(ann_path, pf, cols)))
        raw_rows = _Rows(raw, raw_pf, None)
        for start in range(0, n, CHUNK_ROWS) if n else [0]:  # an empty shard: one empty chunk
            chunk = raw_rows.take(min(CHUNK_ROWS, n - start))
            columns: list[pl.Series] = []
            for name, rows in readers:
                ann = rows.take(chunk.num_rows)
                columns += [pl.Series(f"{name}.{c}", ann.column(c)) for c in ann.column_names]
            yield chunk, columns, missing


def shard_chunks(raw: str, source: str, stages: list[StageInfo], reads: Reads,
                 annotation_path: Any) -> Iterator[tuple[pl.DataFrame, dict[str, str]]]:
    """``shard_frame`` a chunk of ``CHUNK_ROWS`` rows at a time (``shard_parts`` as one frame).
    The concatenated chunks equal ``shard_frame``'s frame; ``missing`` is the same for every chunk."""
    for chunk, columns, missing in shard_parts(raw, source, stages, reads, annotation_path):
        df = pl.from_arrow(chunk)
        assert isinstance(df, pl.DataFrame)
        yield (df.with_columns(columns) if columns else df), missing


def decide(df: pl.DataFrame, source: str, stages: list[StageInfo], missing: dict[str, str], select: pl.Expr,
           reads: Reads, text: pl.Expr, blank: pl.Expr | None = None) -> pl.DataFrame:
    """Add ``_fate`` (kept/dropped/quarantined), ``_stage`` and ``_reason`` (see the module doc);
    ``text`` is the text the release carries. ``blank``: when the release carries the raw text
    unchanged, a boolean column saying the raw text is null or only whitespace (``blank_texts``),
    so that ``df`` need not hold the text; both empty-text rules then read it."""
    miss = {k: v for k, v in missing.items() if k in reads.used}
    applicable = [s for s in stages if s.applies_to(source) and s.name in reads.used and s.name not in missing]
    # Polars when/then chains change type as they grow; Any keeps the chain readable.
    fate: Any = pl.when(pl.lit(bool(miss))).then(pl.lit("quarantined"))
    stage: Any = pl.when(pl.lit(bool(miss))).then(pl.lit(next(iter(miss), None)))
    reason: Any = pl.when(pl.lit(bool(miss))).then(pl.lit(next(iter(miss.values()), None)))
    for s in applicable:
        err = pl.col(f"{s.name}.{ERROR_COLUMN}").is_not_null()
        fate, stage = fate.when(err).then(pl.lit("quarantined")), stage.when(err).then(pl.lit(s.name))
        reason = reason.when(err).then(pl.col(f"{s.name}.{ERROR_COLUMN}"))
    empty = _is_blank(pl.col("text")) if blank is None else blank
    fate, stage, reason = (fate.when(empty).then(pl.lit("dropped")), stage.when(empty).then(pl.lit("release")),
                           reason.when(empty).then(pl.lit("empty_text")))
    for s in applicable:
        if s.is_filter and s.name in reads.selection:
            drop = ~select & ~pl.col(f"{s.name}.keep").fill_null(False)
            fate, stage = fate.when(drop).then(pl.lit("dropped")), stage.when(drop).then(pl.lit(s.name))
            r = pl.col(f"{s.name}.reason") if "reason" in s.columns else pl.lit("keep=false")
            reason = reason.when(drop).then(r.fill_null("keep=false"))
    # Columns of stages that do not apply to this source are null, so the selection sees nulls.
    fate, stage = fate.when(~select).then(pl.lit("dropped")), stage.when(~select).then(pl.lit("select"))
    reason = reason.when(~select).then(pl.lit("selection expression is false"))
    # Selected, but the text transforms left nothing to train on.
    emptied = _is_blank(text) if blank is None else blank
    fate = fate.when(emptied).then(pl.lit("dropped")).otherwise(pl.lit("kept"))
    stage = stage.when(emptied).then(pl.lit("release")).otherwise(pl.lit(None))
    reason = reason.when(emptied).then(pl.lit("empty_after_text_transforms")).otherwise(pl.lit(None))
    return df.with_columns(fate.alias("_fate"), stage.alias("_stage"), reason.alias("_reason"))


def _is_blank(text: pl.Expr) -> pl.Expr:
    # strip_chars() strips Unicode White_Space (Rust's char::is_whitespace)
    return text.fill_null("").str.strip_chars().str.len_bytes() == 0


def blank_texts(n_tokens: pa.Array) -> pl.Series:
    """``decide``'s ``blank`` column from the raw texts' token counts
    (``releasing.tokens.count_tokens_arrow``): a token is a run of characters outside Unicode
    White_Space, the set ``strip_chars`` strips, so a text has no token exactly when stripping
    leaves nothing; a null text (null count) is blank too."""
    return pl.Series("_blank", n_tokens).fill_null(0) == 0


@dataclass
class Accounting:
    """Rows in = kept + dropped + quarantined, per source; drops per (source, stage, reason)."""

    sources: list[str]
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)
    drops: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.per_source = {s: {"rows_in": 0, "rows_kept": 0, "rows_dropped": 0, "rows_quarantined": 0, "tokens_kept": 0}
                           for s in self.sources}

    def add(self, source: str, decided: pl.DataFrame) -> None:
        acc = self.per_source[source]
        acc["rows_in"] += decided.height
        for fate, stage, reason, n in decided.group_by("_fate", "_stage", "_reason").len().rows():
            if fate == "kept":
                acc["rows_kept"] += n
                continue
            acc["rows_dropped" if fate == "dropped" else "rows_quarantined"] += n
            self._drop(source, stage or "", ("quarantined: " + reason) if fate == "quarantined" else (reason or ""), n)

    def add_ingest_quarantine(self, counts: dict[str, int]) -> None:
        for s, n in counts.items():
            if s in self.per_source and n:
                self.per_source[s]["rows_in"] += n
                self.per_source[s]["rows_quarantined"] += n
                self._drop(s, "ingest", "quarantined: unreadable input", n)

    def _drop(self, source: str, stage: str, reason: str, n: int) -> None:
        self.drops[(source, stage, reason)] = self.drops.get((source, stage, reason), 0) + n

    def drop_reasons(self) -> list[dict[str, Any]]:
        return [{"source": k[0], "stage": k[1], "reason": k[2], "rows": n} for k, n in sorted(self.drops.items())]
