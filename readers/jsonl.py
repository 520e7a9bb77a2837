"""JSON Lines reader (plain, .gz, .zst, or any compression fsspec infers), and a decompressing
byte stream that reports truncation instead of ending quietly."""
from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pj
import zstandard
from fsspec.utils import infer_compression

from readers import kernels
from readers.base import MAX_RAW_BYTES, Quarantined, ReadItem, decode_utf8, open_binary
from readers.tables import finish
from schemas.config import SourceConfig

# A block of JSON Lines: the bytes read (bytes or a block buffer) or a view of their complete lines.
Block: TypeAlias = "bytes | bytearray | memoryview"
# Decompressed bytes parsed per pyarrow call: large enough for its threads to pay off.
BLOCK_BYTES = 16 << 20
# Compressed bytes fed to the decompressor per step, and decompressed bytes it may return per step.
_READ_BYTES = 256 << 10
_STEP_BYTES = 1 << 20
# How far past a block an uncompressed file is read to finish the block's last line.
_TAIL_BYTES = 1 << 20
# A line may be this many times max_doc_bytes before it is skipped unread: JSON escapes
# (\uXXXX for one UTF-8 byte) can make a document's line up to six times its text.
LINE_LIMIT_FACTOR = 6


class StreamError(Exception):
    """A compressed stream that is truncated or corrupt; everything yielded before it is good."""


def _members(raw: Any, new: Callable[[], Any], bounded: bool, name: str) -> Iterator[bytes]:
    """Decompress concatenated gzip members or zstd frames, raising StreamError when the input
    ends inside one (neither zlib nor zstandard's stream readers report that on their own)."""
    d, started, data = new(), False, b""
    while True:
        if not data:
            data = raw.read(_READ_BYTES)
            if not data:
                break
        if not started and not data.strip(b"\0"):
            data = b""  # zero padding after the last member, as some writers leave
            continue
        started = True
        try:
            out = d.decompress(data, _STEP_BYTES) if bounded else d.decompress(data)
        except (zlib.error, zstandard.ZstdError) as e:
            raise StreamError(f"corrupt {name} data ({e})") from None
        data = d.unconsumed_tail if bounded else b""
        if d.eof:
            data, d, started = d.unused_data, new(), False
        if out:
            yield out
    if started:
        raise StreamError(f"the {name} stream ends before its end-of-stream marker (the file is truncated)")


def decompressed_chunks(path: str) -> Iterator[bytes | memoryview]:
    """The decompressed bytes of a file, by compression inferred from its name, in chunks of about
    1 MiB (an uncompressed local file: blocks of BLOCK_BYTES, as memoryviews). Raises StreamError once the good data is exhausted if
    the file is truncated or corrupt."""
    kind = infer_compression(path)
    with open_binary(path, compression=None if kind in ("gzip", "zstd") else "infer") as raw:
        if kind == "gzip":
            yield from _members(raw, lambda: zlib.decompressobj(wbits=31), True, "gzip")
        elif kind == "zstd":
            yield from _members(raw, lambda: zstandard.ZstdDecompressor().decompressobj(), False, "zstd")
        elif kind is None and hasattr(raw, "readinto") and hasattr(raw, "readline"):
            yield from _plain_blocks(raw)
        else:
            read = getattr(raw, "read1", raw.read)  # read1 never drops data already decoded
            # An uncompressed file is read a block at a time: one copy from the page cache per block.
            step = BLOCK_BYTES if kind is None else _STEP_BYTES
            while True:
                try:
                    chunk = read(step)
                except (EOFError, OSError, ValueError) as e:
                    raise StreamError(f"cannot decompress ({e})") from None
                if not chunk:
                    return
                yield chunk


def _plain_blocks(raw: Any) -> Iterator[memoryview]:
    """An uncompressed file in blocks of about BLOCK_BYTES that end at a line's end where the line
    is shorter than _TAIL_BYTES: the block is read into its buffer and completed to the end of its
    last line, so the reader parses it without joining the rest of one block to the next (a copy of
    every block). Longer lines are left to the reader's general handling of partial lines.

    The buffer is uninitialised memory (NumPy), not a ``bytearray``, which zero-fills its 17 MiB
    before the read overwrites them (0.03 CPU s per 121 MB); a block is a byte view of its bytes."""
    while True:
        view = np.empty(BLOCK_BYTES + _TAIL_BYTES, np.uint8).data  # a byte view ("B") of the buffer
        try:
            n = raw.readinto(view[:BLOCK_BYTES])
            if n and view[n - 1] != 0x0A:
                tail = raw.readline(_TAIL_BYTES)
                view[n:n + len(tail)] = tail
                n += len(tail)
        except (EOFError, OSError, ValueError) as e:
            raise StreamError(f"cannot read ({e})") from None
        if not n:
            return
        yield view[:n]


def _find_newline(chunk: Block, last: bool = False) -> int:
    """``chunk.find(b"\\n")`` (``last``: ``rfind``) for bytes, a bytearray or a byte view; a view
    is searched in windows growing from 4 KiB, from the end for ``last``, so a block that ends at a
    line's end costs one small copy."""
    if not isinstance(chunk, memoryview):
        return chunk.rfind(b"\n") if last else chunk.find(b"\n")
    size, step, done = len(chunk), 1 << 12, 0
    while done < size:
        start, end = (max(0, size - done - step), size - done) if last else (done, min(size, done + step))
        window = bytes(chunk[start:end])
        i = window.rfind(b"\n") if last else window.find(b"\n")
        if i >= 0:
            return start + i
        done, step = done + (end - start), step * 4
    return -1


def _kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null")


def _loads(line: bytes | str) -> tuple[Any, orjson.JSONDecodeError | None]:
    try:
        return orjson.loads(line), None
    except orjson.JSONDecodeError as e:
        return None, e


def _parse_line(line: bytes, text_column: str) -> tuple[dict | None, str | None]:
    """One JSON object per line, invalid UTF-8 repaired first. Returns (record, None) or (None, problem)."""
    record, error = _loads(line)
    if error is not None:
        repaired = decode_utf8(line)
        if repaired.encode() != line:
            record, error = _loads(repaired)
    if error is not None:
        return None, f"not valid JSON ({error.msg} at column {error.colno}); fix or drop this line"
    if not isinstance(record, dict):
        return None, f"the line holds a JSON {_kind(record)}, not an object; each line must be one JSON object"
    text = record.get(text_column)
    if text is not None and not isinstance(text, str):
        return None, (f"field {text_column!r} is a JSON {_kind(text)}, not a string "
                      "(sources[].columns.text must name a string field)")
    return record, None


def _column(values: list, as_text: bool) -> pa.Array:
    if as_text:
        return pa.array(values, pa.string())
    try:
        return pa.array(values)
    except (pa.ArrowException, OverflowError):
        # Lines disagree on this field's type: keep every value, as JSON text.
        return pa.array([None if v is None else orjson.dumps(v).decode() for v in values], pa.string())


def _table_from_records(records: list[dict], text_column: str) -> pa.Table:
    names = dict.fromkeys([text_column])
    for record in records:
        names.update(dict.fromkeys(record))
    return pa.table({name: _column([r.get(name) for r in records], name == text_column) for name in names})


def _newlines(block: Block) -> np.ndarray:
    """Positions of the newline bytes of a block (one vectorised pass)."""
    return np.flatnonzero(np.frombuffer(block, np.uint8) == 0x0A)


def _line_bounds(block: Block, newlines: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start, end (exclusive, without the newline) and index of each non-blank line of a block
    (``newlines``: the block's newline positions, if already known)."""
    data = np.frombuffer(block, np.uint8)
    if newlines is None:
        newlines = _newlines(block)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(block)]))
    keep = ends > starts
    # A line starting with "{" is not blank; only the rare others are checked one by one.
    first = data[np.minimum(starts, max(len(block) - 1, 0))] if len(block) else np.zeros(len(starts), np.uint8)
    for i in np.flatnonzero(keep & (first != 0x7B)):
        keep[i] = bool(bytes(block[starts[i]:ends[i]]).strip())
    return starts[keep], ends[keep], np.flatnonzero(keep)


def _line_starts_with_bom(block: Block, newlines: np.ndarray) -> bool:
    """Whether a line of the block starts with a UTF-8 byte order mark (checked at line starts only)."""
    data = np.frombuffer(block, np.uint8)
    starts = np.concatenate(([0], newlines + 1))
    starts = starts[starts + 3 <= len(block)]
    if not len(starts):
        return False
    at = starts[data[starts] == 0xEF]
    return bool(np.any((data[at + 1] == 0xBB) & (data[at + 2] == 0xBF)))


def _is_utf8(block: Block) -> bool:
    mod = kernels.ext()
    if mod is not None:  # the compiled check (AVX2 where the CPU has it)
        return bool(mod.utf8_valid(block))
    return arrow_utf8(block)


def arrow_utf8(block: Block) -> bool:
    """Arrow's UTF-8 validation of ``block`` viewed as one string, without a copy (the check
    where the compiled kernels are missing, and the tests' reference for them)."""
    offsets = pa.py_buffer(np.array([0, len(block)], np.int64))
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(block)]).validate(full=True)
        return True
    except pa.ArrowInvalid:
        return False


def _parse_fast(block: Block, rows: int, longest: int, text_column: str, utf8: bool = False) -> pa.Table | None:
    """The whole block with pyarrow's multithreaded JSON reader, or None if it fails or its rows do
    not match the block's lines one to one (e.g. two objects on one line). ``utf8``: the block is
    known to be valid UTF-8 (the line scan checked it), so it is not validated again."""
    grow = 1
    if not utf8 and not _is_utf8(block):
        # pyarrow would accept invalid UTF-8 inside strings; repair it (newlines are never touched).
        block, grow = decode_utf8(bytes(block)).encode(), 3
    options = pj.ReadOptions(block_size=min(max(1 << 20, grow * longest + 2), (1 << 31) - 1))
    schema = pa.schema([(text_column, pa.string())])
    try:
        table = pj.read_json(pa.BufferReader(block), read_options=options,
                             parse_options=pj.ParseOptions(explicit_schema=schema))
    except pa.ArrowException:
        return None
    return table if table.num_rows == rows else None


_BOM = b"\xef\xbb\xbf"


def strip_line_boms(block: bytes) -> bytes:
    """The block without UTF-8 byte order marks at the start of a line (editors and some exporters
    write one at the start of a file, concatenated files carry them mid-file). Line numbers are
    unchanged; a U+FEFF inside a line is text and stays."""
    if _BOM not in block:
        return block
    if block.startswith(_BOM):
        block = block[len(_BOM):]
    return block.replace(b"\n" + _BOM, b"\n")


def _parse_simple(block: Block, first_line: int, lines: int, longest: int, path: str,
                  source: SourceConfig, utf8: bool = False) -> Iterator[ReadItem]:
    """A block whose every line starts with "{" (no blank lines, no byte order marks): line i is
    row i, so the per-line bookkeeping of ``_parse_block`` is skipped when pyarrow parses it one
    row per line; otherwise the block takes the general path. Same rows and offsets either way.
    ``utf8``: the line scan found the block valid UTF-8."""
    table = _parse_fast(block, lines, longest, source.columns.text, utf8)
    if table is None:
        yield from _parse_block(block, first_line, path, source)
        return
    offsets = np.arange(first_line, first_line + lines, dtype=np.int64)
    yield from finish(table, offsets, source.columns.text, source, path, utf8_valid=True)


def _parse_block(block: Block, first_line: int, path: str, source: SourceConfig,
                 newlines: np.ndarray | None = None) -> Iterator[ReadItem]:
    text_column = source.columns.text
    if newlines is None:
        newlines = _newlines(block)
    if _line_starts_with_bom(block, newlines):
        block = strip_line_boms(bytes(block))
        newlines = _newlines(block)
    starts, ends, index = _line_bounds(block, newlines)
    if not len(starts):
        return
    numbers = index + first_line
    table = _parse_fast(block, len(starts), int((ends - starts).max()), text_column)
    if table is not None:
        # Valid UTF-8 in (checked or repaired), and pyarrow rejects JSON escapes of lone surrogates:
        # its strings are valid UTF-8, so finish() need not check them again.
        yield from finish(table, numbers, text_column, source, path, utf8_valid=True)
        return
    block = bytes(block)  # the line-by-line path slices and decodes lines
    records, offsets = [], []
    for start, end, number in zip(starts.tolist(), ends.tolist(), numbers.tolist(), strict=True):
        line = block[start:end]
        record, problem = _parse_line(line, text_column)
        if record is None:
            yield Quarantined(path, number, 1, problem or "unreadable line", line)
        else:
            records.append(record)
            offsets.append(number)
    if records:
        yield from finish(_table_from_records(records, text_column), offsets, text_column, source, path)


def read_jsonl(path: str, source: SourceConfig) -> Iterator[ReadItem]:
    """Read a JSON Lines file: one JSON object per line, ``__offset`` = 0-based line number.

    Blank lines are skipped and are not rows. A UTF-8 byte order mark at the start of a line (or of
    the file) is removed, not taken for bad JSON. Fields are kept as pyarrow infers them (nested values
    become structs or lists); the text field (``sources[].columns.text``) is always a string column.
    Bad lines are quarantined one by one with their bytes: not JSON, not an object, or a text field
    that is not a string. Invalid UTF-8 is replaced with U+FFFD and the line kept. A line longer
    than 6 × ``max_doc_bytes`` is skipped unread and quarantined. A truncated or corrupt .gz/.zst
    stream keeps every complete line before the damage and quarantines the tail from the first
    incomplete line. Where a block holds a bad line, fields whose types differ between its lines
    are kept as JSON text.

    Cost: decompression plus pyarrow's multithreaded parser over 16 MiB blocks; a block with a bad
    line is re-parsed line by line with orjson (several times slower, that block only). A block whose
    every line starts with "{" needs no per-line index: the compiled line scan (readers/kernels.py,
    one memchr pass that also checks UTF-8) counts its lines; other blocks, or no extension, take
    the NumPy line index and Arrow's UTF-8 validation. An
    uncompressed file is read straight into each block's buffer. Memory is about two blocks, or one
    line when a line is longer than a block.
    """
    line_limit = LINE_LIMIT_FACTOR * source.max_doc_bytes + (1 << 20)
    line = 0  # number of the first line in `pending`
    # Bytes read but not parsed yet, as a list of chunks (joined once per block: appending to one
    # growing buffer copies it again and again) and their total size.
    pending: list[bytes | memoryview] = []
    size = 0
    cut = 0  # end of the last complete line in `pending`
    skipped: bytes | None = None  # head of an over-long line while the rest of it is discarded
    chunks = decompressed_chunks(path)
    failure: StreamError | None = None
    while True:
        try:
            chunk = next(chunks, b"")
        except StreamError as e:
            failure, chunk = e, b""
        at_end = not chunk
        if skipped is not None:
            newline = _find_newline(chunk)
            if newline < 0 and not at_end:
                continue
            yield Quarantined(path, line, 1, f"line is longer than {line_limit:,} bytes, more than a document under "
                                             f"max_doc_bytes={source.max_doc_bytes:,} can need; it was skipped unread "
                                             "(is the file one JSON array rather than JSON Lines? if not, raise "
                                             "sources[].max_doc_bytes)", skipped)
            line, skipped, chunk = line + 1, None, chunk[newline + 1:] if newline >= 0 else b""
        newline = _find_newline(chunk, last=True)
        if newline >= 0:
            cut = size + newline + 1
        if chunk:
            pending.append(chunk)
            size += len(chunk)
        if not at_end:
            if size < BLOCK_BYTES:
                continue
            if cut == 0:  # a single line longer than a block: keep reading it, up to the limit
                if size > line_limit:
                    skipped, pending, size = _head(pending, MAX_RAW_BYTES), [], 0
                continue
        elif failure is None:
            cut = size  # at a clean end the last line needs no newline
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        # The block is a view of the data (no copy); only the incomplete last line is copied out.
        block, rest = (data, b"") if cut == len(data) else (memoryview(data)[:cut], bytes(data[cut:]))
        pending, size, cut = ([rest], len(rest), 0) if rest else ([], 0, 0)
        scan = kernels.line_scan(block)
        if scan is not None and scan[3]:
            yield from _parse_simple(block, line, scan[1], scan[2], path, source, scan[4])
            line += scan[0]
        else:
            newlines = _newlines(block)
            yield from _parse_block(block, line, path, source, newlines)
            line += len(newlines)
        if at_end:
            break
    if failure is not None:
        yield Quarantined(path, line, 1, f"{failure}; everything before line {line} was read, the rest of the file "
                                         "is lost: fetch or compress the file again", b"".join(pending) or None)


def _head(chunks: list[bytes | memoryview], n: int) -> bytes:
    """The first n bytes of the concatenated chunks, without joining all of them."""
    out, size = [], 0
    for c in chunks:
        if size >= n:
            break
        out.append(c[:n - size])
        size += len(out[-1])
    return b"".join(out)
