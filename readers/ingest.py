"""The ``ingest`` stage: read one input file with its format's reader and write raw shards.

Output: ``<out_dir>/part-<file:05d>-<k:03d>.parquet`` (zstd, DOCUMENT schema, row groups of
``ROW_GROUP_ROWS`` = 10,000 rows written as they fill), rolled over once a shard holds ``shard_bytes``
of text; ``<out_dir>/_done/<file:05d>.json`` records the result and is
written last, so a file with a marker is complete and a re-run skips it, while a file without one
is redone from scratch (its part names are deterministic, so a redo overwrites, never duplicates).
Rows that cannot be read go to ``<quarantine_dir>/<file:05d>.parquet`` with file, offset and error.

Column mapping (``sources[].columns``): ``text`` (required), ``id``, ``url``, ``crawl_date``,
``license``, ``lang``; all other fields go to ``meta`` as one JSON object. Document ids: see
schemas/documents.py (sha256 of source + native id, else URL, else text; 32 hex chars).

Cost: one pass over the input; ids are hashed over the key column's Arrow buffers in one C call
(SHA-NI; hashlib per row where the CPU lacks it: readers/kernels.py), URL hosts are found and
all-string ``meta`` is encoded by C kernels (Polars otherwise); writing zstd Parquet dominates
(docs/ingest.md has the profile).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engines import storage
from engines.faults import delay_point
from readers import kernels
from readers.base import OFFSET_COLUMN, Quarantined
from schemas.config import ColumnMap, SourceConfig
from schemas.documents import DOCUMENT, QUARANTINE

# Defaults for formats whose readers produce well-known columns (used where the YAML is silent).
FORMAT_COLUMNS = {
    "warc": {"id": "warc_record_id", "url": "url", "crawl_date": "crawl_date"},
}

# Rows per row group of a raw shard: later passes (stages, fits, the release) read a row group at a
# time, so this bounds their memory whatever the shard size.
ROW_GROUP_ROWS = 10_000

_HOST = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/:?#]+)"
# The same for URLs without "@" (the user-info group cannot match there): three times faster.
_HOST_NO_USER = r"^[A-Za-z][A-Za-z0-9+.-]*://([^/:?#]+)"


@dataclass(frozen=True)
class IngestFileTask:
    source: SourceConfig
    file: str
    file_index: int
    out_dir: str
    quarantine_dir: str
    ingest_run: str
    run_id: str
    shard_bytes: int
    fingerprint: str = ""
    # Markers ("<ingest_run>/<file_index:05d>") of earlier ingests this one replaces (an earlier
    # version of the file, or the file read with another reader config); see warehouse.supersede.
    supersedes: tuple[str, ...] = ()


@dataclass
class IngestFileResult:
    source: str
    file: str
    file_index: int
    fingerprint: str = ""
    ingest_run: str = ""
    parts: list[dict] = field(default_factory=list)  # {path, rows, text_bytes}
    rows_in: int = 0
    rows_written: int = 0
    rows_quarantined: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    skipped: bool = False
    quarantine_file: str | None = None
    # When the file's ingest finished (UTC, ISO 8601): global stages read older ingests first.
    ingested_at: str = ""
    supersedes: list[str] = field(default_factory=list)
    # The reader config the file was read with (reader_config()), for the record.
    reader: dict = field(default_factory=dict)


def effective_columns(source: SourceConfig) -> ColumnMap:
    cols = source.columns.model_dump()
    for k, v in FORMAT_COLUMNS.get(source.format, {}).items():
        if cols.get(k) is None:
            cols[k] = v
    return ColumnMap(**cols)


def document_ids(source: str, keys: list[str]) -> list[str]:
    """Stable ids: first 32 hex chars of sha256(source + 0x1F + key)."""
    return kernels.hashlib_ids(source.encode() + b"\x1f", [k.encode("utf-8", "replace") for k in keys])


def _as_string(col: pl.Series) -> pl.Series:
    if col.dtype == pl.String:
        return col
    if col.dtype in (pl.Binary,):
        return pl.Series(col.name, [None if b is None else b.decode("utf-8", "replace") for b in col.to_list()])
    if col.dtype.is_nested():
        return col.to_frame().select(pl.col(col.name).map_elements(lambda v: json.dumps(v, default=str), return_dtype=pl.String)).to_series()
    return col.cast(pl.String)


def _to_timestamp(col: pl.Series) -> pl.Series:
    if col.dtype == pl.Datetime:
        s = col
        if getattr(s.dtype, "time_zone", None) is None:
            s = s.dt.replace_time_zone("UTC")
        return s.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    if col.dtype == pl.Date:
        return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    s = _as_string(col)
    parsed = s.str.to_datetime(time_zone="UTC", strict=False, time_unit="us")
    return parsed


_STRINGS = (pa.string(), pa.large_string())


def _string_array(column: pa.ChunkedArray | pa.Array) -> pa.Array | pa.ChunkedArray:
    """A column as large_string: string columns as they are, chunks and all (no copy of the text,
    no round trip through Polars); any other type converted as ``_as_string`` converts it (Polars'
    casts, JSON for nested values)."""
    if column.type in _STRINGS:
        return column.cast(pa.large_string())
    series = pl.from_arrow(column)
    assert isinstance(series, pl.Series)
    return _as_string(series).to_arrow().cast(pa.large_string())


def _domains_regex(series: pl.Series) -> pl.Series:
    """The lower-cased host of each URL by the ``_HOST`` regex (Polars); URLs without "@" take the
    faster pattern."""
    host = series.str.extract(_HOST_NO_USER, 1)
    with_at = series.str.contains("@", literal=True).fill_null(False)
    if with_at.any():
        rows = with_at.arg_true()
        host = host.scatter(rows, series.gather(rows).str.extract(_HOST, 1))
    return host.str.to_lowercase()


def _domains(url: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The lower-cased host of each URL (``_HOST``): the compiled scan (readers/kernels.py) where
    built, with hosts holding non-ASCII bytes (Unicode lower-casing) by the regex; else the regex."""
    fast = kernels.url_hosts(url)
    if fast is None:
        series = pl.from_arrow(url)
        assert isinstance(series, pl.Series)
        return _domains_regex(series).to_arrow()
    hosts, rest = fast
    if not len(rest):
        return hosts
    series = pl.from_arrow(hosts)
    assert isinstance(series, pl.Series)
    urls = pl.from_arrow(url)
    assert isinstance(urls, pl.Series)
    return series.scatter(rest, _domains_regex(urls.gather(rest))).to_arrow()


def _filled(value: str | None, n: int) -> pa.Array:
    """n copies of a string (or n nulls), built in Arrow rather than from a Python list."""
    nulls = pa.nulls(n, pa.string())
    return nulls if value is None else nulls.fill_null(pa.scalar(value, pa.string()))


class Normaliser:
    """Turns a reader's native table into DOCUMENT rows, quarantining rows that cannot be used.

    Arrow-first: the text and the other string columns stay Arrow arrays (the text is never copied
    or converted to Polars); Polars is used where its semantics define the output: date parsing,
    casts of non-string fields, the ``meta`` JSON of non-string fields, and the domain and the
    all-string ``meta`` JSON where the compiled kernels are missing (readers/kernels.py computes
    them exactly as Polars does otherwise)."""

    def __init__(self, task: IngestFileTask):
        self.task = task
        self.cols = effective_columns(task.source)

    def __call__(self, table: pa.Table) -> tuple[pa.Table, list[Quarantined]]:
        src, cols, task = self.task.source, self.cols, self.task
        offsets = table.column(OFFSET_COLUMN)
        bad: list[Quarantined] = []
        if cols.text not in table.column_names:
            bad.append(Quarantined(task.file, int(offsets[0].as_py()), table.num_rows,
                                   f"no field {cols.text!r} in these records (set sources[].columns.text to the field holding the text)"))
            return DOCUMENT.empty_table(), bad
        text = _string_array(table.column(cols.text))
        missing = text.is_null().to_numpy(zero_copy_only=False)
        nbytes = pc.binary_length(text).fill_null(0).to_numpy()
        rejected = missing | (nbytes > src.max_doc_bytes)
        if rejected.any():
            for i in np.flatnonzero(rejected).tolist():
                if missing[i]:
                    err = f"field {cols.text!r} is missing or null (sources[].columns.text names the text field)"
                    raw = None
                else:
                    err = (f"document of {int(nbytes[i]):,} bytes exceeds max_doc_bytes={src.max_doc_bytes:,} "
                           "(raise sources[].max_doc_bytes to ingest it)")
                    raw = text[i].as_py().encode("utf-8")
                bad.append(Quarantined(task.file, int(offsets[i].as_py()), 1, err, raw))
            keep = pa.array(~rejected)
            table, text = table.filter(keep), text.filter(keep)
            if table.num_rows == 0:
                return DOCUMENT.empty_table(), bad
        n = table.num_rows

        def mapped(name: str | None) -> pa.Array | None:
            return _string_array(table.column(name)) if name and name in table.column_names else None

        native_id, url = mapped(cols.id), mapped(cols.url)
        key = pc.coalesce(*[a for a in (native_id, url, text) if a is not None])
        ids = kernels.hash_ids(src.name.encode() + b"\x1f", key)
        domain = _domains(url) if url is not None else None
        crawl = None
        if cols.crawl_date and cols.crawl_date in table.column_names:
            when = pl.from_arrow(table.column(cols.crawl_date))
            assert isinstance(when, pl.Series)
            crawl = _to_timestamp(when).to_arrow()
        lic = mapped(cols.license)
        if lic is None:
            lic = _filled(src.license, n)
        elif src.license:
            lic = lic.fill_null(src.license)
        lang = mapped(cols.lang)
        used = {c for c in (cols.text, cols.id, cols.url, cols.crawl_date, cols.license, cols.lang) if c} | {OFFSET_COLUMN}
        rest = [c for c in table.column_names if c not in used]
        meta = None
        if rest:
            meta = kernels.json_objects(table.select(rest))  # all-string fields: escaped in C
            if meta is None:
                frame = pl.from_arrow(table.select(rest))
                assert isinstance(frame, pl.DataFrame)
                meta = frame.select(pl.struct(rest).struct.json_encode()).to_series().to_arrow()

        def arr(a: pa.Array | pa.ChunkedArray | None, typ: pa.DataType) -> pa.Array:
            if a is None:
                return pa.nulls(n, typ)
            if isinstance(a, pa.ChunkedArray):
                a = a.combine_chunks()
            return a.cast(typ)

        out = pa.Table.from_arrays([
            ids, text,
            _filled(src.name, n), arr(url, pa.string()), arr(domain, pa.string()),
            arr(lang, pa.string()), arr(crawl, pa.timestamp("us", tz="UTC")), arr(lic, pa.string()),
            arr(meta, pa.large_string()), _filled(task.ingest_run, n),
            _filled(task.file, n), arr(table.column(OFFSET_COLUMN), pa.int64()),
        ], schema=DOCUMENT)
        return out, bad


class ShardWriteError(RuntimeError):
    """Writing a raw shard failed (storage, not the input): the file's ingest stops and publishes
    nothing, its done-marker is not written, so the next run ingests the file again."""


class _ShardSink:
    """Rolls raw shards over at ``shard_bytes`` of text (at a reader batch's end); each shard is
    written atomically (a temporary name renamed when complete) in row groups of
    ``ROW_GROUP_ROWS`` rows, streamed as the rows arrive: memory is one row group, not one shard,
    and every later pass over the shard can read it a row group at a time."""

    def __init__(self, task: IngestFileTask):
        self.task = task
        self.parts: list[dict] = []
        self.buffer: list[pa.Table] = []  # rows not yet written: less than one row group
        self.buffered_rows = 0
        self.shard_rows = self.shard_text_bytes = 0
        self._commit: ExitStack | None = None  # the open shard's atomic_path
        self._writer: pq.ParquetWriter | None = None

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.buffer.append(table)
        self.buffered_rows += table.num_rows
        self.shard_rows += table.num_rows
        self.shard_text_bytes += int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0)
        if self.buffered_rows >= ROW_GROUP_ROWS:
            with self._storage_step("writing"):
                self._write(final=False)
        if self.shard_text_bytes >= self.task.shard_bytes:
            self.flush()

    def _path(self) -> str:
        return f"{self.task.out_dir}/part-{self.task.file_index:05d}-{len(self.parts):03d}.parquet"

    def _write(self, final: bool) -> None:
        """Write the whole row groups buffered (and, if ``final``, the rest as the last one)."""
        if not self.buffer:  # the rows so far filled whole row groups, all written
            return
        table = pa.concat_tables(self.buffer)
        n = table.num_rows if final else table.num_rows - table.num_rows % ROW_GROUP_ROWS
        if n:
            if self._writer is None:
                self._commit = ExitStack()
                tmp = self._commit.enter_context(storage.atomic_path(self._path()))
                self._writer = storage.parquet_writer(tmp, DOCUMENT)
            self._writer.write_table(table.slice(0, n), row_group_size=ROW_GROUP_ROWS)
        rest = table.slice(n)
        self.buffer, self.buffered_rows = ([rest] if rest.num_rows else []), rest.num_rows

    @contextlib.contextmanager
    def _storage_step(self, verb: str) -> Iterator[None]:
        """A write of the open shard: on failure its temporary file goes (nothing is published) and
        the error becomes a ``ShardWriteError`` naming the shard (an interrupt stays itself)."""
        try:
            yield
        except BaseException as e:
            if self._commit is not None:
                self._commit.__exit__(*sys.exc_info())
            self._commit, self._writer = None, None
            if isinstance(e, Exception):
                raise ShardWriteError(f"{verb} raw shard {self._path()} failed: {type(e).__name__}: {e}") from e
            raise

    def flush(self) -> None:
        """Finish the open shard (if it has rows): its last row group, then the rename."""
        if not self.shard_rows:
            return
        with self._storage_step("writing"):
            self._write(final=True)
            assert self._writer is not None and self._commit is not None
            self._writer.close()
            commit, self._commit, self._writer = self._commit, None, None
        with self._storage_step("publishing"):
            commit.close()
        self.parts.append({"path": self._path(), "rows": self.shard_rows, "text_bytes": self.shard_text_bytes})
        self.shard_rows = self.shard_text_bytes = 0


def _done_marker(task: IngestFileTask) -> str:
    return f"{task.out_dir}/_done/{task.file_index:05d}.json"


def ingest_file(task: IngestFileTask) -> IngestFileResult:
    """Ingest one input file (runs in a worker). Never raises for bad content."""
    from readers.formats import get_reader
    t0 = time.perf_counter()
    marker = _done_marker(task)
    if storage.exists(marker):
        fs, p = storage.fs_and_path(marker)
        with fs.open(p, "r") as f:
            res = IngestFileResult(**json.load(f))
        res.skipped = True
        return res
    res = IngestFileResult(task.source.name, task.file, task.file_index, task.fingerprint, task.ingest_run,
                           supersedes=list(task.supersedes), reader=reader_config(task.source))
    normalise, sink = Normaliser(task), _ShardSink(task)
    quarantined: list[Quarantined] = []
    reader_rows_quarantined = 0  # rows readers could not yield (normaliser rejects were yielded)
    try:
        fs, p = storage.fs_and_path(task.file)
        res.bytes_read = int(fs.info(p).get("size") or 0)
        for item in get_reader(task.source.format)(task.file, task.source):
            if isinstance(item, Quarantined):
                quarantined.append(item)
                reader_rows_quarantined += item.rows
                continue
            res.rows_in += item.num_rows
            docs, bad = normalise(item)
            quarantined.extend(bad)
            sink.add(docs)
        sink.flush()
    except ShardWriteError:  # storage, not the input: fail the file (no marker), the next run redoes it
        raise
    except Exception as e:  # noqa: BLE001 - a reader bug must not lose the night; record it
        quarantined.append(Quarantined(task.file, None, 1, f"reader failed: {type(e).__name__}: {e}"))
        reader_rows_quarantined += 1
        sink.flush()
    res.parts = sink.parts
    res.rows_written = sum(p["rows"] for p in sink.parts)
    res.rows_quarantined = sum(q.rows for q in quarantined)
    res.rows_in += reader_rows_quarantined
    if quarantined:
        res.quarantine_file = f"{task.quarantine_dir}/{task.file_index:05d}.parquet"
        storage.write_table_atomic(res.quarantine_file, quarantine_table(quarantined, task.run_id, task.source.name, "ingest"))
    delay_point(f"ingest:{task.file.rsplit('/', 1)[-1]}")  # race tests: finish out of order
    res.seconds = time.perf_counter() - t0
    res.ingested_at = datetime.now(UTC).isoformat(timespec="microseconds")
    storage.write_bytes_atomic(marker, json.dumps(asdict(res)).encode())
    return res


def quarantine_table(entries: list[Quarantined], run_id: str, source: str, stage: str) -> pa.Table:
    return pa.Table.from_pylist([
        {"run_id": run_id, "source": source, "stage": stage, "file": q.file, "offset": q.offset,
         "rows": q.rows, "error": q.error, "raw": q.raw} for q in entries
    ], schema=QUARANTINE)


# Source fields that do not change how a file is read into rows.
_NOT_READER = frozenset({"name", "paths", "optional"})


def reader_config(source: SourceConfig) -> dict:
    """The part of a source's config that decides the rows read from a file: format, column
    mapping, license, max_doc_bytes, main_content, hf_builder and any reader option added later.
    Options left at their defaults are omitted, so adding an option does not re-ingest a lake."""
    dump = source.model_dump(mode="json", exclude_defaults=True)
    return {k: v for k, v in dump.items() if k not in _NOT_READER}


def file_fingerprint(url: str, source: SourceConfig | None = None) -> dict:
    """What identifies an ingest of an input file: path, size and modification time or ETag, and
    (given the source) the reader config, so fixing ``columns.text`` re-ingests the file."""
    fs, p = storage.fs_and_path(url)
    info = fs.info(p)
    stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or info.get("created")
    fp: dict = {"path": url, "size": int(info.get("size") or 0), "stamp": str(stamp)}
    if source is not None:
        fp["reader"] = reader_config(source)
    fp["fingerprint"] = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    return fp
