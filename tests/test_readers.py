"""Source readers on real text (shared corpora), good and damaged: every input row must come out as a
row or be counted in a Quarantined entry that points at the right place."""
from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import datasets
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from fastwarc.warc import ArchiveIterator

import readers.parquet
import readers.tables
from readers.base import OFFSET_COLUMN, Quarantined
from readers.formats import READERS, get_reader
from schemas.config import SourceConfig

datasets.disable_progress_bars()


@dataclass
class Read:
    rows: list[dict]
    quarantined: list[Quarantined]
    tables: list[pa.Table]

    @property
    def offsets(self) -> list[int]:
        return [r[OFFSET_COLUMN] for r in self.rows]

    @property
    def quarantined_rows(self) -> int:
        return sum(q.rows for q in self.quarantined)


def read(fmt: str, path: str | Path, **options) -> Read:
    source = SourceConfig(name="test", format=fmt, paths=[str(path)], **options)
    tables, quarantined = [], []
    for item in get_reader(fmt)(str(path), source):
        (quarantined if isinstance(item, Quarantined) else tables).append(item)
    for t in tables:
        assert t.column(OFFSET_COLUMN).type == pa.int64()
        text = "text" if fmt == "warc" else source.columns.text
        assert pa.types.is_string(t.column(text).type) or pa.types.is_large_string(t.column(text).type)
    return Read([r for t in tables for r in t.to_pylist()], quarantined, tables)


@pytest.fixture(scope="module")
def wiki(corpora: Path) -> list[dict]:
    """200 real Wikipedia summaries (title, text, description, topic, lang, url)."""
    return pq.read_table(corpora / "wiki_en.parquet").slice(0, 200).to_pylist()


def jsonl_bytes(rows: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def spoil(line: bytes, text: str, at: int, bad: bytes) -> bytes:
    """A JSON line with bytes inserted into its "text" value after the first ``at`` characters."""
    key = b'"text":"'
    start = line.index(key) + len(key) + len(text[:at].encode())
    assert line[start - len(text[:at].encode()):start] == text[:at].encode()
    return line[:start] + bad + line[start:]


def without_offset(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != OFFSET_COLUMN} for r in rows]


# --- JSONL -------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix,compress", [
    ("", lambda b: b),
    (".gz", gzip.compress),
    (".zst", lambda b: zstandard.ZstdCompressor().compress(b)),
])
def test_jsonl_round_trip(tmp_path, wiki, suffix, compress):
    path = tmp_path / f"wiki.jsonl{suffix}"
    path.write_bytes(compress(jsonl_bytes(wiki)))
    got = read("jsonl", path)
    assert got.quarantined == []
    assert got.offsets == list(range(200))
    assert [r["text"] for r in got.rows] == [r["text"] for r in wiki]
    assert without_offset(got.rows) == wiki


def test_jsonl_multi_member_gzip_and_multi_frame_zstd(tmp_path, wiki):
    gz, zst = tmp_path / "a.jsonl.gz", tmp_path / "a.jsonl.zst"
    gz.write_bytes(gzip.compress(jsonl_bytes(wiki[:120])) + gzip.compress(jsonl_bytes(wiki[120:])))
    cctx = zstandard.ZstdCompressor()
    zst.write_bytes(cctx.compress(jsonl_bytes(wiki[:7])) + cctx.compress(jsonl_bytes(wiki[7:])))
    for path in (gz, zst):
        got = read("jsonl", path)
        assert got.quarantined == []
        assert [r["text"] for r in got.rows] == [r["text"] for r in wiki]


def test_jsonl_bad_lines_are_quarantined_one_by_one(tmp_path, wiki):
    lines = [orjson.dumps(r) for r in wiki[:20]]
    text10 = wiki[10]["text"]
    lines[10] = spoil(lines[10], text10, 25, b"\xff\xfe")  # invalid UTF-8 inside the text
    lines[3] = b'{"title": "Unclosed", "text": "' + wiki[3]["text"][:40].encode()  # not JSON
    lines[5] = b"[1, 2, 3]"
    lines[6] = b"42"
    lines[8] = b""  # blank line: not a row
    lines[12] = orjson.dumps({"title": wiki[12]["title"], "text": ""})
    lines[14] = orjson.dumps({"title": wiki[14]["title"], "text": 7})
    lines[15] = orjson.dumps({"title": wiki[15]["title"], "text": wiki[15]["text"], "year": 1999})
    lines[16] = orjson.dumps({"title": wiki[16]["title"], "text": wiki[16]["text"], "year": "MCMXCIX"})
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    got = read("jsonl", path)

    by_offset = {q.offset: q for q in got.quarantined}
    assert sorted(by_offset) == [3, 5, 6, 14]
    assert all(q.file == str(path) and q.rows == 1 for q in got.quarantined)
    assert "not valid JSON" in by_offset[3].error and by_offset[3].raw == lines[3]
    assert "JSON array, not an object" in by_offset[5].error and by_offset[5].raw == b"[1, 2, 3]"
    assert "JSON number, not an object" in by_offset[6].error and by_offset[6].raw == b"42"
    assert "'text' is a JSON number, not a string" in by_offset[14].error
    # 19 non-blank lines = rows + quarantined rows
    assert len(got.rows) + got.quarantined_rows == 19
    assert got.offsets == [i for i in range(20) if i not in (3, 5, 6, 8, 14)]
    rows = {r[OFFSET_COLUMN]: r for r in got.rows}
    assert rows[10]["text"] == text10[:25] + "\ufffd\ufffd" + text10[25:]
    assert rows[12]["text"] == ""
    assert rows[0]["text"] == wiki[0]["text"]
    # the block fell back to line-by-line parsing; a field whose type varies is kept as JSON text
    assert (rows[15]["year"], rows[16]["year"], rows[0]["year"]) == ("1999", '"MCMXCIX"', None)


def test_jsonl_invalid_utf8_on_the_fast_path(tmp_path, wiki):
    lines = [orjson.dumps(r) for r in wiki[:5]]
    lines[2] = spoil(lines[2], wiki[2]["text"], 10, b"\xc3")  # a cut-off two-byte sequence
    path = tmp_path / "utf8.jsonl"
    path.write_bytes(b"\n".join(lines))  # and no newline after the last line
    got = read("jsonl", path)
    assert got.quarantined == []
    assert got.offsets == [0, 1, 2, 3, 4]
    assert got.rows[2]["text"] == wiki[2]["text"][:10] + "\ufffd" + wiki[2]["text"][10:]
    assert got.rows[4]["text"] == wiki[4]["text"]


def test_jsonl_nested_values_and_missing_text(tmp_path, wiki):
    rows = [{"text": wiki[0]["text"], "meta": {"topic": wiki[0]["topic"], "tags": ["a", "b"]}},
            {"title": wiki[1]["title"]}]
    path = tmp_path / "nested.jsonl"
    path.write_bytes(jsonl_bytes(rows))
    got = read("jsonl", path)
    assert got.quarantined == []
    assert got.rows[0]["meta"] == {"topic": wiki[0]["topic"], "tags": ["a", "b"]}
    assert got.rows[1]["text"] is None  # the ingest step decides about a missing text
    assert pa.types.is_struct(got.tables[0].column("meta").type)


def _complete_lines(prefix: bytes) -> tuple[int, bytes]:
    return prefix.count(b"\n"), prefix[prefix.rfind(b"\n") + 1:]


def test_jsonl_truncated_gzip_keeps_complete_lines(tmp_path, wiki):
    data = gzip.compress(jsonl_bytes(wiki))
    cut = data[: len(data) * 2 // 3]
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(cut)
    complete, tail = _complete_lines(zlib.decompressobj(wbits=31).decompress(cut))
    assert 50 < complete < 199
    got = read("jsonl", path)
    assert [r["text"] for r in got.rows] == [r["text"] for r in wiki[:complete]]
    [q] = got.quarantined
    assert (q.file, q.offset, q.rows, q.raw) == (str(path), complete, 1, tail)
    assert "truncated" in q.error and f"before line {complete} was read" in q.error


def test_jsonl_truncated_zstd_keeps_complete_lines(tmp_path, corpora):
    # zstd emits nothing before a whole block (128 KiB) arrives: use enough distinct text
    data = zstandard.ZstdCompressor().compress(jsonl_bytes(pq.read_table(corpora / "wiki_fr.parquet").to_pylist()))
    cut = data[: len(data) // 2]
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(cut)
    complete, _ = _complete_lines(zstandard.ZstdDecompressor().decompressobj().decompress(cut))
    got = read("jsonl", path)
    assert len(got.rows) == complete > 0
    [q] = got.quarantined
    assert q.offset == complete and "zstd stream ends before its end-of-stream marker" in q.error


def test_jsonl_not_gzip_despite_name(tmp_path, wiki):
    path = tmp_path / "plain.jsonl.gz"
    path.write_bytes(jsonl_bytes(wiki[:3]))
    got = read("jsonl", path)
    assert got.rows == []
    [q] = got.quarantined
    assert q.offset == 0 and "corrupt gzip data" in q.error


def test_jsonl_giant_document(tmp_path, wiki):
    corpus = "\n\n".join(r["text"] for r in wiki)
    big = (corpus * (50_000_000 // len(corpus) + 1))[:50_000_000]
    path = tmp_path / "giant.jsonl"
    path.write_bytes(jsonl_bytes([wiki[0], {"title": "everything", "text": big}, wiki[1]]))

    got = read("jsonl", path)
    assert got.quarantined == [] and got.offsets == [0, 1, 2]
    assert got.rows[1]["text"] == big

    got = read("jsonl", path, max_doc_bytes=10_000_000)
    assert got.offsets == [0, 2]
    [q] = got.quarantined
    assert (q.offset, q.rows) == (1, 1)
    assert f"{len(big.encode()):,} bytes, over the limit of 10,000,000" in q.error and "sources[].max_doc_bytes" in q.error
    assert q.raw == big.encode()[: 1 << 20]

    # far over the limit the line is not even held in memory
    got = read("jsonl", path, max_doc_bytes=1_000_000)
    assert got.offsets == [0, 2]
    [q] = got.quarantined
    assert q.offset == 1 and "skipped unread" in q.error and "sources[].max_doc_bytes" in q.error


def test_tables_are_bounded(tmp_path, wiki, monkeypatch):
    monkeypatch.setattr(readers.tables, "BATCH_ROWS", 16)
    monkeypatch.setattr(readers.tables, "BATCH_BYTES", 3000)
    path = tmp_path / "wiki.jsonl"
    path.write_bytes(jsonl_bytes(wiki))
    got = read("jsonl", path)
    assert got.offsets == list(range(200))
    for t in got.tables:
        sizes = [len(s.encode()) for s in t.column("text").to_pylist()]
        assert t.num_rows <= 16 and (sum(sizes) <= 3000 or t.num_rows == 1)


# --- Parquet -----------------------------------------------------------------------------------

def test_parquet_round_trip_over_row_groups(tmp_path, wiki):
    path = tmp_path / "wiki.parquet"
    pq.write_table(pa.Table.from_pylist(wiki), path, row_group_size=64)
    got = read("parquet", path)
    assert got.quarantined == [] and got.offsets == list(range(200))
    assert without_offset(got.rows) == wiki


@pytest.mark.parametrize("damage", ["random", "truncated_footer", "empty"])
def test_parquet_unreadable_file(tmp_path, wiki, damage):
    good = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(wiki), good)
    data = {"random": bytes(range(256)) * 40, "truncated_footer": good.getvalue()[:-100], "empty": b""}[damage]
    path = tmp_path / "bad.parquet"
    path.write_bytes(data)
    got = read("parquet", path)
    assert got.rows == []
    [q] = got.quarantined
    assert (q.file, q.offset, q.rows) == (str(path), None, 1)
    assert "not a readable Parquet file" in q.error and "truncated" in q.error


def _chunk_span(path: Path, group: int, column: int) -> tuple[int, int]:
    chunk = pq.ParquetFile(path).metadata.row_group(group).column(column)
    start = min(o for o in (chunk.dictionary_page_offset, chunk.data_page_offset) if o is not None)
    return start, chunk.total_compressed_size


@pytest.mark.parametrize("checksums", [False, True])
def test_parquet_corrupt_row_group(tmp_path, wiki, checksums):
    path = tmp_path / "wiki.parquet"
    pq.write_table(pa.Table.from_pylist(wiki), path, row_group_size=50, compression="zstd",
                   write_page_checksum=checksums)
    start, size = _chunk_span(path, 2, 1)  # row group 2, column "text"
    data = bytearray(path.read_bytes())
    data[start + size // 2: start + size // 2 + 64] = b"\x00" * 64
    path.write_bytes(bytes(data))
    got = read("parquet", path)
    [q] = got.quarantined
    assert (q.offset, q.rows) == (100, 50)
    assert "row group 2 (rows 100-149) cannot be decoded" in q.error
    assert ("CRC checksum" if checksums else "Unexpected end of stream") in q.error
    assert got.offsets == [*range(100), *range(150, 200)]
    assert [r["text"] for r in got.rows] == [r["text"] for r in wiki[:100] + wiki[150:]]


def test_parquet_uncompressed_corruption_reads_as_data(tmp_path, wiki):
    """Without compression or page checksums, damaged string bytes decode without any error: pyarrow
    returns them as they are. The reader can only keep the strings valid UTF-8."""
    path = tmp_path / "raw.parquet"
    pq.write_table(pa.Table.from_pylist(wiki), path, compression="none", use_dictionary=False)
    target = wiki[120]["text"][:60].encode()
    data = bytearray(path.read_bytes())
    at = data.find(target)
    assert at > 0
    data[at + 10: at + 13] = b"\xff\xff\xff"
    path.write_bytes(bytes(data))
    got = read("parquet", path)
    assert got.quarantined == [] and got.offsets == list(range(200))
    text = wiki[120]["text"]
    assert got.rows[120]["text"] == text[:10] + "\ufffd" * 3 + text[13:]
    assert [r["text"] for i, r in enumerate(got.rows) if i != 120] == [r["text"] for i, r in enumerate(wiki) if i != 120]


def test_parquet_binary_text_is_decoded(tmp_path, wiki):
    texts = [r["text"].encode() for r in wiki[:3]]
    texts[1] = texts[1][:5] + b"\x80" + texts[1][5:]
    path = tmp_path / "binary.parquet"
    pq.write_table(pa.table({"text": pa.array(texts, pa.binary()), "title": [r["title"] for r in wiki[:3]]}), path)
    got = read("parquet", path)
    assert [r["text"] for r in got.rows] == [wiki[0]["text"], wiki[1]["text"][:5] + "\ufffd" + wiki[1]["text"][5:],
                                             wiki[2]["text"]]


# --- Hugging Face datasets ---------------------------------------------------------------------

def test_hf_disk_round_trip(tmp_path, wiki):
    datasets.Dataset(pa.Table.from_pylist(wiki)).save_to_disk(str(tmp_path / "ds"))
    for path in (str(tmp_path / "ds"), (tmp_path / "ds").as_uri()):
        got = read("hf_disk", path)
        assert got.quarantined == [] and got.offsets == list(range(200))
        assert without_offset(got.rows) == wiki


def test_hf_disk_bad_folders(tmp_path, wiki):
    splits = {"train": datasets.Dataset(pa.Table.from_pylist(wiki)),
              "test": datasets.Dataset(pa.Table.from_pylist(wiki[:10]))}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dd"))
    got = read("hf_disk", tmp_path / "dd")
    [q] = got.quarantined
    assert (got.rows, q.offset, q.rows) == ([], None, 210)
    assert "DatasetDict with splits ['test', 'train']" in q.error and "dd/test" in q.error

    got = read("hf_disk", tmp_path / "missing")
    [q] = got.quarantined
    assert q.offset is None and "save_to_disk" in q.error


def test_hf_load_dataset_json(tmp_path, wiki):
    path = tmp_path / "wiki.jsonl"
    path.write_bytes(jsonl_bytes(wiki))
    got = read("hf", path)
    assert got.quarantined == [] and got.offsets == list(range(200))
    assert without_offset(got.rows) == wiki

    # datasets cannot skip a bad line: the rest of the file is one entry (format jsonl does better)
    path.write_bytes(jsonl_bytes(wiki[:5]) + b"not json\n" + jsonl_bytes(wiki[5:10]))
    got = read("hf", path)
    [q] = got.quarantined
    assert (len(got.rows), q.offset, q.rows) == (0, 0, 1)
    assert "ArrowInvalid" in q.error and "format jsonl" in q.error

    got = read("hf", tmp_path / "wiki.unknown")
    [q] = got.quarantined
    assert "sources[].hf_builder" in q.error


# --- WARC --------------------------------------------------------------------------------------

def warc_record(uri: str, http: bytes, record_type: str = "response", n: int = 0) -> bytes:
    header = (f"WARC/1.0\r\nWARC-Type: {record_type}\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-{n:012d}>\r\n"
              f"WARC-Date: 2024-05-06T07:08:09Z\r\nWARC-Target-URI: {uri}\r\n"
              f"Content-Type: application/http; msgtype={record_type}\r\nContent-Length: {len(http)}\r\n\r\n")
    return header.encode() + http + b"\r\n\r\n"


@pytest.fixture(scope="module")
def handbook(corpora: Path) -> dict:
    """The first 12 records of the real crawl: raw gzip bytes, record offsets, URLs and HTTP blocks."""
    raw = (corpora / "handbook.warc.gz").read_bytes()[:3_000_000]
    offsets, urls, blocks = [], [], []
    for record in ArchiveIterator(io.BytesIO(raw), parse_http=False):
        offsets.append(record.stream_pos)
        urls.append(record.headers["WARC-Target-URI"])
        blocks.append(record.reader.read())
        if len(offsets) == 13:
            break
    return {"gz": raw[: offsets[12]], "offsets": offsets[:12], "urls": urls[:12], "blocks": blocks[:12]}


def test_warc_real_slice(tmp_path, handbook):
    path = tmp_path / "slice.warc.gz"
    path.write_bytes(handbook["gz"])
    got = read("warc", path)
    assert got.quarantined == []
    assert got.offsets == handbook["offsets"]
    assert [r["url"] for r in got.rows] == handbook["urls"]
    for r in got.rows:
        assert r["url"].startswith("https://debian-handbook.info/browse/")
        assert len(r["text"]) > 100 and "<div" not in r["text"] and "</a>" not in r["text"]
        assert (r["http_status"], r["content_type"], r["html_lang"]) == (200, "text/html", None)
        assert r["crawl_date"] == datetime(2026, 10, 1, tzinfo=UTC)
        assert r["warc_record_id"].startswith("<urn:uuid:")
    assert "12.1.1" in got.rows[0]["text"]  # a section number of the first page's table of contents
    # main-content extraction drops navigation, so every page gets shorter
    everything = read("warc", path, main_content=False)
    assert all(len(a["text"]) < len(b["text"]) for a, b in zip(got.rows, everything.rows, strict=True))


def test_warc_bad_records(tmp_path, handbook):
    good = handbook["blocks"][0]
    html = good.split(b"\r\n\r\n", 1)[1]
    records = [
        warc_record("https://example.org/ok", good, n=1),
        warc_record("https://example.org/garbled", b"HTTP/1.1 abc Garbled\r\nContent-Type: text/html\r\n\r\n" + html, n=2),
        warc_record("https://example.org/noheader", b"<html><body><p>no HTTP header at all</p></body></html>", n=3),
        warc_record("https://example.org/missing", b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\n\r\n" + html, n=4),
        warc_record("https://example.org/logo.png", b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n", n=5),
        warc_record("https://example.org/ok", b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n", "request", n=6),
        warc_record("https://example.org/notes.txt",
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nCaf\xe9 cr\xe8me", n=7),
        warc_record("https://example.org/de", b"HTTP/1.0 200 OK\nContent-Type: text/html\n\n"
                    b'<html lang="de"><body><p>Guten Tag.</p></body></html>', n=8),
    ]
    path = tmp_path / "bad.warc"
    path.write_bytes(b"".join(records))
    starts = [sum(len(r) for r in records[:i]) for i in range(len(records))]
    got = read("warc", path)
    by_offset = {q.offset: q for q in got.quarantined}
    assert sorted(by_offset) == [starts[1], starts[2], starts[3], starts[4]]
    assert "malformed HTTP status line b'HTTP/1.1 abc Garbled'" in by_offset[starts[1]].error
    assert by_offset[starts[1]].raw.startswith(b"HTTP/1.1 abc Garbled")
    assert "malformed HTTP status line b'<html><body>" in by_offset[starts[2]].error
    assert "HTTP status 404" in by_offset[starts[3]].error
    assert "content type 'image/png'" in by_offset[starts[4]].error
    # 7 responses (the request record is not a document) = 3 rows + 4 quarantined
    assert got.offsets == [starts[0], starts[6], starts[7]]
    assert len(got.rows) + got.quarantined_rows == 7
    ok, plain, de = got.rows
    (tmp_path / "slice.warc.gz").write_bytes(handbook["gz"])
    assert ok["text"] == read("warc", tmp_path / "slice.warc.gz").rows[0]["text"]
    assert (plain["text"], plain["content_type"], plain["html_lang"]) == ("Café crème", "text/plain", None)
    assert (de["text"], de["html_lang"], de["url"]) == ("Guten Tag.", "de", "https://example.org/de")


@pytest.mark.parametrize("into_record", [5, 400])
def test_warc_truncated_gzip(tmp_path, handbook, into_record):
    """Cut inside the gzip member of record 8: 5 bytes in, fastwarc ends quietly (the reader notices the
    bytes left over); 400 bytes in, fastwarc returns the record cut short."""
    cut_at = handbook["offsets"][8] + into_record
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(handbook["gz"][:cut_at])
    got = read("warc", path)
    assert got.offsets == handbook["offsets"][:8]
    [q] = got.quarantined
    assert (q.file, q.offset, q.rows) == (str(path), handbook["offsets"][8], 1)
    assert "truncated" in q.error


def test_warc_corrupt_gzip_in_the_middle(tmp_path, handbook):
    data = bytearray(handbook["gz"])
    at = handbook["offsets"][5]
    data[at + 30: at + 90] = b"\x00" * 60
    path = tmp_path / "corrupt.warc.gz"
    path.write_bytes(bytes(data))
    got = read("warc", path)
    assert got.offsets == handbook["offsets"][:5]
    [q] = got.quarantined
    assert q.offset == handbook["offsets"][5] and "the rest of the file was skipped" in q.error


def test_warc_truncated_plain(tmp_path, handbook):
    plain = gzip.decompress(handbook["gz"])
    starts = [r.stream_pos for r in ArchiveIterator(io.BytesIO(plain), parse_http=False)]
    for cut in (3, 30, 5000):  # in "WARC/1.0", in the header, in the body
        path = tmp_path / f"cut{cut}.warc"
        path.write_bytes(plain[: starts[10] + cut])
        got = read("warc", path)
        assert got.offsets == starts[:10]
        [q] = got.quarantined
        assert q.offset == starts[10] and q.rows == 1, (cut, q)


def test_warc_text_over_the_limit(tmp_path, handbook):
    path = tmp_path / "slice.warc.gz"
    path.write_bytes(handbook["gz"])
    full = read("warc", path)
    limit = sorted(len(r["text"].encode()) for r in full.rows)[6]
    got = read("warc", path, max_doc_bytes=limit)
    assert len(got.rows) + got.quarantined_rows == 12
    assert sorted(got.offsets + [q.offset for q in got.quarantined]) == handbook["offsets"]
    assert all("max_doc_bytes" in q.error for q in got.quarantined) and len(got.quarantined) == 5


# --- fsspec URLs and the registry --------------------------------------------------------------

def test_fsspec_file_urls(tmp_path, wiki, handbook):
    (tmp_path / "wiki.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(wiki)))
    pq.write_table(pa.Table.from_pylist(wiki), tmp_path / "wiki.parquet")
    (tmp_path / "slice.warc.gz").write_bytes(handbook["gz"])
    for fmt, name in [("jsonl", "wiki.jsonl.gz"), ("parquet", "wiki.parquet"), ("warc", "slice.warc.gz"),
                      ("hf", "wiki.jsonl.gz")]:
        url = (tmp_path / name).as_uri()
        assert url.startswith("file:///")
        by_url, by_path = read(fmt, url), read(fmt, tmp_path / name)
        assert by_url.quarantined == [] and len(by_url.rows) == len(by_path.rows) > 0
        assert by_url.rows == by_path.rows


def test_registry():
    assert set(READERS) == {"jsonl", "parquet", "hf", "hf_disk", "warc"}
    with pytest.raises(ValueError, match="unknown source format 'csv'.*hf, hf_disk, jsonl, parquet, warc"):
        get_reader("csv")
