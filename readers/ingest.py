"""The ``ingest`` stage: read one input file with its format's reader and write raw shards.

Output: ``<out_dir>/part-<file:05d>-<k:03d>.parquet`` (zstd, DOCUMENT schema), rolled over once a
shard holds ``shard_bytes`` of text; ``<out_dir>/_done/<file:05d>.json`` records the result and is
written last, so a file with a marker is complete and a re-run skips it, while a file without one
is redone from scratch (its part names are deterministic, so a redo overwrites, never duplicates).
Rows that cannot be read go to ``<quarantine_dir>/<file:05d>.parquet`` with file, offset and error.

Column mapping (``sources[].columns``): ``text`` (required), ``id``, ``url``, ``crawl_date``,
``license``, ``lang``; all other fields go to ``meta`` as one JSON object. Document ids: see
schemas/documents.py (sha256 of source + native id, else URL, else text; 32 hex chars).

Cost: one pass over the input; hashing ids and encoding ``meta`` are vectorised or per-row C
calls; writing zstd Parquet dominates on fast readers.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from engines import storage
from readers.base import OFFSET_COLUMN, Quarantined
from schemas.config import ColumnMap, SourceConfig
from schemas.documents import DOCUMENT, QUARANTINE

# Defaults for formats whose readers produce well-known columns (used where the YAML is silent).
FORMAT_COLUMNS = {
    "warc": {"id": "warc_record_id", "url": "url", "crawl_date": "crawl_date"},
}

_HOST = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/:?#]+)"


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
    prefix = source.encode() + b"\x1f"
    return [hashlib.sha256(prefix + k.encode("utf-8", "replace")).hexdigest()[:32] for k in keys]


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


class Normaliser:
    """Turns a reader's native table into DOCUMENT rows, quarantining rows that cannot be used."""

    def __init__(self, task: IngestFileTask):
        self.task = task
        self.cols = effective_columns(task.source)

    def __call__(self, table: pa.Table) -> tuple[pa.Table, list[Quarantined]]:
        src, cols, task = self.task.source, self.cols, self.task
        df = pl.from_arrow(table)
        assert isinstance(df, pl.DataFrame)
        offsets = df.get_column(OFFSET_COLUMN)
        bad: list[Quarantined] = []
        if cols.text not in df.columns:
            bad.append(Quarantined(task.file, int(offsets[0]), df.height,
                                   f"no field {cols.text!r} in these records (set sources[].columns.text to the field holding the text)"))
            return DOCUMENT.empty_table(), bad
        text = _as_string(df.get_column(cols.text))
        nbytes = text.str.len_bytes()
        missing = text.is_null()
        too_big = nbytes > src.max_doc_bytes
        for i in (missing | too_big).arg_true().to_list():
            if missing[i]:
                err = f"field {cols.text!r} is missing or null (sources[].columns.text names the text field)"
                raw = None
            else:
                err = (f"document of {nbytes[i]:,} bytes exceeds max_doc_bytes={src.max_doc_bytes:,} "
                       "(raise sources[].max_doc_bytes to ingest it)")
                raw = text[i].encode("utf-8")
            bad.append(Quarantined(task.file, int(offsets[i]), 1, err, raw))
        ok = ~(missing | too_big)
        df, text = df.filter(ok), text.filter(ok)
        if df.height == 0:
            return DOCUMENT.empty_table(), bad

        def mapped(name: str | None) -> pl.Series | None:
            return _as_string(df.get_column(name)) if name and name in df.columns else None

        native_id, url = mapped(cols.id), mapped(cols.url)
        key = text
        if url is not None:
            key = url.fill_null(text)
        if native_id is not None:
            key = native_id.fill_null(key)
        ids = document_ids(src.name, key.to_list())
        domain = url.str.extract(_HOST, 1).str.to_lowercase() if url is not None else pl.Series([None] * df.height, dtype=pl.String)
        crawl = (_to_timestamp(df.get_column(cols.crawl_date)) if cols.crawl_date and cols.crawl_date in df.columns
                 else pl.Series([None] * df.height, dtype=pl.Datetime("us", "UTC")))
        lic = mapped(cols.license)
        if lic is None:
            lic = pl.Series([src.license] * df.height, dtype=pl.String)
        elif src.license:
            lic = lic.fill_null(src.license)
        lang = mapped(cols.lang)
        used = {c for c in (cols.text, cols.id, cols.url, cols.crawl_date, cols.license, cols.lang) if c} | {OFFSET_COLUMN}
        rest = [c for c in df.columns if c not in used]
        meta = (df.select(pl.struct(rest).struct.json_encode()).to_series() if rest
                else pl.Series([None] * df.height, dtype=pl.String))
        n = df.height

        def arr(s: pl.Series | None, typ: pa.DataType) -> pa.Array:
            if s is None:
                return pa.nulls(n, typ)
            return s.to_arrow().cast(typ)

        out = pa.Table.from_arrays([
            pa.array(ids, pa.string()), arr(text, pa.large_string()),
            pa.array([src.name] * n, pa.string()), arr(url, pa.string()), arr(domain, pa.string()),
            arr(lang, pa.string()), arr(crawl, pa.timestamp("us", tz="UTC")), arr(lic, pa.string()),
            arr(meta, pa.large_string()), pa.array([task.ingest_run] * n, pa.string()),
            pa.array([task.file] * n, pa.string()), arr(df.get_column(OFFSET_COLUMN), pa.int64()),
        ], schema=DOCUMENT)
        return out, bad


class _ShardSink:
    """Rolls raw shards over at ``shard_bytes`` of text; each shard is written atomically."""

    def __init__(self, task: IngestFileTask):
        self.task = task
        self.parts: list[dict] = []
        self.buffer: list[pa.Table] = []
        self.buffered_bytes = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.buffer.append(table)
        self.buffered_bytes += int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0)
        if self.buffered_bytes >= self.task.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        path = f"{self.task.out_dir}/part-{self.task.file_index:05d}-{len(self.parts):03d}.parquet"
        table = pa.concat_tables(self.buffer)
        storage.write_table_atomic(path, table)
        self.parts.append({"path": path, "rows": table.num_rows, "text_bytes": self.buffered_bytes})
        self.buffer, self.buffered_bytes = [], 0


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
