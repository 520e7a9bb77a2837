"""Bad input through the whole flow: every case ends processed or quarantined (file, offset,
error), the run completes, and rows in = kept + dropped + quarantined for each source."""
from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from flows.pipeline import run_pipeline
from tests.helpers import real_texts

pytestmark = pytest.mark.slow


def _jsonl(path: Path, texts: list[str]) -> list[bytes]:
    lines = [json.dumps({"text": t, "n": i}, ensure_ascii=False).encode() for i, t in enumerate(texts)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def _complete_gzip_lines(data: bytes) -> int:
    """Complete lines recoverable from a truncated gzip stream (zlib, not our reader)."""
    out = zlib.decompressobj(wbits=31).decompress(data)
    return out.count(b"\n")


def _warc_record(url: str, http: bytes) -> bytes:
    head = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Date: 2026-10-01T00:00:00Z\r\n"
            f"WARC-Record-ID: <urn:uuid:{hashlib.md5(url.encode()).hexdigest()}>\r\nWARC-Target-URI: {url}\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n").encode()
    return head + http + b"\r\n\r\n"


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, corpora):
    d = tmp_path_factory.mktemp("bad")
    texts = real_texts(corpora, "wiki_en", 400)
    expected: dict[str, int] = {}

    # corrupt Parquet: one good file and one that is not Parquet at all
    (d / "pq").mkdir()
    pq.write_table(pa.table({"text": texts[:100]}), d / "pq" / "good.parquet")
    (d / "pq" / "bad.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 40 + b"PAR1")
    expected["corrupt_parquet"] = 100 + 1

    # truncated gzip: cut in the middle of the stream
    blob = gzip.compress(b"\n".join(json.dumps({"text": t}).encode() for t in texts[100:300]) + b"\n")
    cut = blob[: len(blob) // 2]
    (d / "trunc.jsonl.gz").write_bytes(cut)
    expected["truncated_gzip"] = _complete_gzip_lines(cut) + 1

    # a JSONL line that is not JSON
    lines = _jsonl(d / "badline.jsonl", texts[:60])
    lines[37] = b'{"text": "unterminated'
    (d / "badline.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    expected["bad_json_line"] = 60

    # invalid UTF-8 inside a text value
    lines = _jsonl(d / "utf8.jsonl", texts[60:100])
    lines[3] = lines[3].replace(b"the", b"th\xff\xfee", 1)
    (d / "utf8.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    expected["invalid_utf8"] = 40

    # an empty text
    _jsonl(d / "empty.jsonl", texts[300:320] + [""])
    expected["empty_text"] = 21

    # a 50 MB single document made of real text (one line, no newlines)
    big = " ".join(texts).replace("\n", " ")
    big = (big + " ") * (50_000_000 // len(big) + 1)
    _jsonl(d / "giant.jsonl", [big[:50_000_000]] + texts[320:330])
    expected["giant_document"] = 11

    # a WARC with a broken HTTP header among good records
    page = "<html lang='en'><body><p>{}</p></body></html>"
    recs = [_warc_record(f"https://example.org/{i}", b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
                         + page.format(texts[330 + i]).encode()) for i in range(4)]
    recs[2] = _warc_record("https://example.org/broken", b"HTTP/1.1 OK-ish garbage\x00\r\n\r\n<html>broken</html>")
    (d / "mixed.warc").write_bytes(b"".join(recs))
    expected["broken_warc"] = 4

    sources = [
        {"name": "corrupt_parquet", "format": "parquet", "paths": [str(d / "pq" / "*.parquet")]},
        {"name": "truncated_gzip", "format": "jsonl", "paths": [str(d / "trunc.jsonl.gz")]},
        {"name": "bad_json_line", "format": "jsonl", "paths": [str(d / "badline.jsonl")]},
        {"name": "invalid_utf8", "format": "jsonl", "paths": [str(d / "utf8.jsonl")]},
        {"name": "empty_text", "format": "jsonl", "paths": [str(d / "empty.jsonl")]},
        {"name": "giant_document", "format": "jsonl", "paths": [str(d / "giant.jsonl")]},
        {"name": "broken_warc", "format": "warc", "paths": [str(d / "mixed.warc")]},
    ]
    cfg = {"name": "bad", "lake": str(d / "lake"), "executor": {"workers": 2}, "sources": sources,
           "stages": [{"name": "length", "kind": "length_filter", "params": {"min_words": 3, "max_chars": 1_000_000}}],
           "release": {"name": "bad", "select": "length.keep"}}
    (d / "p.yaml").write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(str(d / "p.yaml"))
    con = duckdb.connect(str(d / "lake" / "catalog.duckdb"), read_only=True)
    yield summary, con, expected, d
    con.close()


CASES = ["corrupt_parquet", "truncated_gzip", "bad_json_line", "invalid_utf8", "empty_text", "giant_document", "broken_warc"]


@pytest.mark.parametrize("case", CASES)
def test_every_row_accounted_for(bad_run, case):
    summary, con, expected, _ = bad_run
    row = con.execute("SELECT rows_in, rows_kept, rows_dropped, rows_quarantined FROM release_sources WHERE source=?",
                      [case]).fetchone()
    assert row is not None, f"no accounting for {case}"
    rows_in, kept, dropped, quarantined = row
    assert rows_in == expected[case]
    assert rows_in == kept + dropped + quarantined


def _quarantine(con, case):
    return con.execute('SELECT file, "offset", rows, error FROM quarantine WHERE source=? ORDER BY "offset"', [case]).fetchall()


def test_run_completed(bad_run):
    _, con, _, _ = bad_run
    assert con.execute("SELECT status FROM runs").fetchall() == [("completed",)]


def test_corrupt_parquet_is_quarantined_with_its_file(bad_run):
    _, con, _, d = bad_run
    [(file, _, rows, err)] = _quarantine(con, "corrupt_parquet")
    assert file.endswith("bad.parquet") and rows == 1 and err


def test_truncated_gzip_keeps_the_complete_lines(bad_run):
    _, con, expected, _ = bad_run
    [(file, offset, _, err)] = _quarantine(con, "truncated_gzip")
    assert file.endswith("trunc.jsonl.gz") and offset == expected["truncated_gzip"] - 1
    assert "truncat" in err.lower() or "ended" in err.lower()


def test_bad_json_line_is_quarantined_at_its_line(bad_run):
    _, con, _, _ = bad_run
    [(file, offset, rows, _)] = _quarantine(con, "bad_json_line")
    assert file.endswith("badline.jsonl") and offset == 37 and rows == 1
    kept = con.execute("SELECT rows_kept + rows_dropped FROM release_sources WHERE source='bad_json_line'").fetchone()[0]
    assert kept == 59


def test_invalid_utf8_is_repaired_not_lost(bad_run):
    _, con, _, _ = bad_run
    assert _quarantine(con, "invalid_utf8") == []
    [(text,)] = con.execute("SELECT text FROM documents WHERE source='invalid_utf8' AND src_offset=3").fetchall()
    assert "\ufffd" in text


def test_empty_text_is_dropped_with_a_reason(bad_run):
    _, con, _, _ = bad_run
    rows = con.execute("SELECT stage, reason, rows FROM drop_reasons WHERE source='empty_text'").fetchall()
    assert ("release", "empty_text", 1) in rows


def test_giant_document_is_processed_and_dropped_by_rule(bad_run):
    _, con, _, _ = bad_run
    assert _quarantine(con, "giant_document") == []
    rows = con.execute("SELECT stage, reason, rows FROM drop_reasons WHERE source='giant_document'").fetchall()
    assert ("length", "too_many_chars", 1) in rows


def test_broken_warc_header_is_quarantined_at_its_offset(bad_run):
    _, con, _, d = bad_run
    q = _quarantine(con, "broken_warc")
    assert len(q) == 1
    file, offset, rows, err = q[0]
    data = (d / "mixed.warc").read_bytes()
    assert file.endswith("mixed.warc") and rows == 1
    assert data[offset:offset + 8] == b"WARC/1.0" and b"example.org/broken" in data[offset:offset + 600]
