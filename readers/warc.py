"""WARC reader: one row per HTTP response record, HTML reduced to text with resiliparse."""
from __future__ import annotations

import io
import re
import zlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from fastwarc.stream_io import BrotliReader, ChunkedReader, GzipReader, ZstdReader
from fastwarc.warc import ArchiveIterator, WarcRecord, WarcRecordType
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.html import HTMLTree

from readers.base import BATCH_BYTES, BATCH_ROWS, MAX_RAW_BYTES, Quarantined, ReadItem, open_binary
from readers.charset import decode_body
from readers.tables import finish
from schemas.config import SourceConfig

SCHEMA = pa.schema([
    ("text", pa.string()),
    ("url", pa.string()),
    ("warc_record_id", pa.string()),
    ("crawl_date", pa.timestamp("us", tz="UTC")),
    ("http_status", pa.int32()),
    ("content_type", pa.string()),
    ("html_lang", pa.string()),
])
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
TEXT_TYPES = frozenset({"text/plain"})
# A record block is read into memory only up to this many times max_doc_bytes: markup and
# legacy encodings make a page larger than its text, but not without bound.
BLOCK_LIMIT_FACTOR = 4

_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)?[ \t]+(\d{3})(?:[ \t].*)?")
_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\d+)", re.IGNORECASE | re.MULTILINE)
_PAYLOAD_DECODERS: dict[str, Any] = {"gzip": GzipReader, "x-gzip": GzipReader, "br": BrotliReader, "zstd": ZstdReader}


class _Skip(Exception):
    """A record that becomes a Quarantined entry instead of a row."""

    def __init__(self, error: str, raw: bytes | None = None):
        super().__init__(error)
        self.raw = raw


def _split_http(block: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status code, headers (lower-case names) and body of an HTTP response block."""
    status_line = block[:block.find(b"\n")].rstrip(b"\r") if b"\n" in block else block
    status = _STATUS_LINE.fullmatch(status_line)
    if status is None:
        raise _Skip(f"malformed HTTP status line {status_line[:200]!r} (expected e.g. b'HTTP/1.1 200 OK')",
                    block[:MAX_RAW_BYTES])
    ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := block.find(sep)) >= 0]
    if not ends:
        raise _Skip("the HTTP header never ends (no blank line before the body)", block[:MAX_RAW_BYTES])
    end, sep = min(ends)
    headers = {}
    for line in block[:end].split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return int(status[1]), headers, block[end + sep:]


def _decode_payload(body: bytes, headers: dict[str, str]) -> bytes:
    """Undo chunked transfer and content encodings that some crawlers store as received."""
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = ChunkedReader(io.BytesIO(body)).read()
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding == "deflate":
            return zlib.decompressobj(wbits=47 if body[:1] == b"\x78" else -15).decompress(body)
        if encoding not in _PAYLOAD_DECODERS:
            raise _Skip(f"unsupported HTTP Content-Encoding {encoding!r}")
        return _PAYLOAD_DECODERS[encoding](io.BytesIO(body)).read()
    except (OSError, zlib.error) as e:
        raise _Skip(f"cannot decode the HTTP payload ({e})", body[:MAX_RAW_BYTES]) from None


def _read_block(record: WarcRecord, size: int) -> bytes:
    parts, left = [], size
    while left > 0:
        part = record.reader.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _row(record: WarcRecord, source: SourceConfig) -> dict | None:
    """The row of a response record, None for other record types; raises _Skip for a bad record."""
    declared = (record.headers.get("Content-Length") or "").strip()
    if not declared.isdigit():
        raise _Skip("the WARC record header is incomplete (no valid Content-Length): the file is probably truncated here")
    if record.record_type != WarcRecordType.response:
        return None
    limit = BLOCK_LIMIT_FACTOR * source.max_doc_bytes
    if int(declared) > limit:
        raise _Skip(f"the response is {int(declared):,} bytes, over the {limit:,} bytes read for one record "
                    f"({BLOCK_LIMIT_FACTOR} × max_doc_bytes); raise sources[].max_doc_bytes to read it")
    block = _read_block(record, int(declared))
    if len(block) < int(declared):
        raise _Skip(f"the record is cut short: {len(block):,} of its {int(declared):,} bytes are in the file "
                    "(the file is truncated)", block[:MAX_RAW_BYTES])
    status, headers, body = _split_http(block)
    if not 200 <= status < 300:
        raise _Skip(f"HTTP status {status}: only 2xx responses hold a document")
    content_type = headers.get("content-type", "")
    mime = content_type.split(";")[0].strip().lower() or "text/html"  # no type: servers mostly mean HTML
    if mime not in HTML_TYPES and mime not in TEXT_TYPES:
        raise _Skip(f"content type {mime!r} is neither HTML nor plain text")
    decoded = decode_body(_decode_payload(body, headers), content_type, html=mime in HTML_TYPES)
    lang = None
    if mime in HTML_TYPES:
        try:
            tree = HTMLTree.parse(decoded)
            root = tree.document.query_selector("html") if tree.document is not None else None
            lang = (root.getattr("lang") or root.getattr("xml:lang") or None) if root is not None else None
            text = extract_plain_text(tree, main_content=source.main_content)
        except Exception as e:  # resiliparse's parser errors share no base class besides Exception
            raise _Skip(f"cannot parse the HTML ({type(e).__name__}: {e})", body[:MAX_RAW_BYTES]) from None
    else:
        text = decoded
    url = record.headers.get("WARC-Target-URI")
    try:
        date = record.record_date
    except ValueError:
        date = None
    return {"text": text, "url": url.strip("<>") if url else None, "warc_record_id": record.record_id,
            "crawl_date": date, "http_status": status, "content_type": mime, "html_lang": lang}


def _record_end(f: Any, pos: int) -> int | None:
    """The file offset just past the record starting at ``pos``: past its gzip member for a
    per-record .warc.gz, past its block for a plain .warc; None where that cannot be told (a
    .warc.gz compressed as one member, a damaged record)."""
    f.seek(pos)
    head = f.read(2)
    f.seek(pos)
    if head == b"\x1f\x8b":
        inflate, fed = zlib.decompressobj(wbits=31), 0
        try:
            while not inflate.eof:
                data = f.read(256 << 10)
                if not data:
                    return None
                fed += len(data)
                while data and not inflate.eof:
                    inflate.decompress(data, 1 << 20)
                    data = inflate.unconsumed_tail
        except zlib.error:
            return None
        return pos + fed - len(inflate.unused_data)
    if head == b"WA":
        header = f.read(64 << 10)
        end = header.find(b"\r\n\r\n")
        length = _CONTENT_LENGTH.search(header, 0, max(end, 0))
        return pos + end + 4 + int(length[1]) + 4 if end >= 0 and length else None
    return None


def _unread_tail(f: Any, path: str, last: int | None) -> Quarantined | None:
    """fastwarc ends quietly when a file stops inside a record header; say so if bytes are left."""
    end = 0 if last is None else _record_end(f, last)
    if end is None:
        return None
    size = f.seek(0, 2)
    f.seek(end)
    rest = f.read(MAX_RAW_BYTES)
    if end >= size or (size - end <= len(rest) and not rest.strip(b" \t\r\n\0")):
        return None
    return Quarantined(path, end, 1, f"the last {size - end:,} bytes, from byte {end:,}, hold no complete WARC record "
                                     "(the file is truncated or has trailing garbage); the records before were read", rest)


class _Batch:
    """Rows collected until BATCH_ROWS rows or about BATCH_BYTES of text."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.offsets: list[int] = []
        self.text_chars = 0

    def add(self, row: dict, offset: int) -> bool:
        """Add a row; True when the batch is full."""
        self.rows.append(row)
        self.offsets.append(offset)
        self.text_chars += len(row["text"])  # characters: close enough to bytes for a batch bound
        return len(self.rows) >= BATCH_ROWS or self.text_chars >= BATCH_BYTES

    def flush(self, source: SourceConfig, path: str) -> Iterator[ReadItem]:
        if self.rows:
            table, offsets = pa.Table.from_pylist(self.rows, SCHEMA), self.offsets
            self.rows, self.offsets, self.text_chars = [], [], 0
            yield from finish(table, offsets, "text", source, path)


def read_warc(path: str, source: SourceConfig) -> Iterator[ReadItem]:
    """Read a .warc or .warc.gz (also .zst/.lz4, detected by fastwarc): one row per response record.

    Columns: ``text`` (HTML reduced to plain text by resiliparse, ``main_content`` per
    ``sources[].main_content``; text/plain passed through), ``url`` (WARC-Target-URI),
    ``warc_record_id``, ``crawl_date`` (WARC-Date, UTC), ``http_status``, ``content_type`` (MIME type
    only), ``html_lang`` (the ``<html lang>`` attribute, else null). ``__offset`` is the byte offset
    of the record in the file as stored (compressed offsets for a .warc.gz made of one gzip member
    per record, the usual layout). The body is decoded as a browser would (readers.charset): a BOM,
    else the HTTP Content-Type charset, else an HTML ``<meta charset>``, else UTF-8 if valid, else
    the detected encoding; invalid bytes become U+FFFD. A page whose extracted text is empty is kept as an empty row
    (filters drop it with a reason).

    Other record types (request, metadata, warcinfo, revisit) are not documents and are skipped.
    Quarantined, one entry per record at its offset: a broken HTTP header or status line, a non-2xx
    status, a content type that is neither HTML nor text/plain, an undecodable payload, a record cut
    short by the end of the file, a record over 4 × max_doc_bytes (not read) or text over
    max_doc_bytes. Damage that stops fastwarc, or a file ending inside a record header, is one entry
    for the rest of the file; the records before it are kept.

    Cost: dominated by HTML parsing and extraction (about a millisecond per page); memory is one
    batch of text plus one record.
    """
    batch = _Batch()
    last: int | None = None
    with open_binary(path, compression=None) as f:
        records = iter(ArchiveIterator(f, parse_http=False))
        while True:
            try:
                record = next(records, None)
            except OSError as e:
                end = 0 if last is None else _record_end(f, last)
                where = f"byte {end:,}" if end is not None else f"the record at byte {last:,}"
                yield Quarantined(path, end, 1, f"cannot read WARC records after {where} ({e}); the rest of the file "
                                                "was skipped, the records before were read")
                break
            if record is None:
                tail = _unread_tail(f, path, last)
                if tail is not None:
                    yield tail
                break
            last = record.stream_pos
            try:
                row = _row(record, source)
            except _Skip as e:
                yield Quarantined(path, last, 1, str(e), e.raw)
                continue
            if row is not None and batch.add(row, last):
                yield from batch.flush(source, path)
    yield from batch.flush(source, path)
