"""The ingest stage's compiled kernels (readers/csrc/ingest.c) against what they replace: the line
scan against the reader's NumPy line index, document ids against hashlib, and the JSON Lines fast
path (blocks whose every line starts with "{") against the general path, on real text and on bad
input (invalid UTF-8, bad lines, blank lines, byte order marks, giant documents and lines)."""
from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import readers.jsonl as jsonl
from readers import kernels
from readers.base import OFFSET_COLUMN, Quarantined
from readers.ingest import IngestFileTask, document_ids, ingest_file
from schemas.config import SourceConfig
from tests.ingest_golden import table_digest

pytestmark = pytest.mark.skipif(kernels.ext() is None, reason="the readers._ingest extension is not built")


@pytest.fixture(scope="module")
def rows(corpora: Path) -> list[dict]:
    """Real documents of three languages, with their URLs."""
    out = []
    for name in ("wiki_en", "wiki_fr", "wiki_es"):
        out += pq.read_table(corpora / f"{name}.parquet", columns=["text", "url", "title"]).slice(0, 150).to_pylist()
    return out


def _valid_utf8(block: bytes) -> bool:
    try:
        block.decode("utf-8")  # Python's strict decoder: no overlongs, surrogates or code points over U+10FFFF
        return True
    except UnicodeDecodeError:
        return False


@pytest.fixture(params=["scalar", "avx2"])
def simd(request):
    """Each path of the UTF-8 check this CPU has (the kernels compute the same on every path)."""
    mod = kernels.ext()
    if request.param not in mod.paths():
        pytest.skip(f"this CPU has no {request.param} path")
    old = mod.path()
    mod.set_path(request.param)
    yield request.param
    mod.set_path(old)


def numpy_scan(block: bytes) -> tuple[int, int, int, bool, bool]:
    """What the reader's general path computes for a block: newlines, non-blank lines, longest one,
    whether every line (non-blank, BOM-free) starts with "{", and (Python's decoder, Arrow's
    validation) whether the block is valid UTF-8."""
    newlines = jsonl._newlines(block)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(block)]))
    lines = len(newlines) + (1 if len(block) and not block.endswith(b"\n") else 0)
    longest = int((ends - starts).max()) if len(block) else 0
    simple = bool(lines) and all(block[s:e][:1] == b"{" for s, e in zip(starts[:lines], ends[:lines], strict=True))
    assert _valid_utf8(block) == jsonl.arrow_utf8(block)
    return len(newlines), lines, longest, simple, _valid_utf8(block)


@pytest.mark.parametrize("block", [
    b"", b"\n", b"\n\n", b"{}", b"{}\n", b'{"a":1}\n{"b":2}', b'{"a":1}\n\n{"b":2}\n', b' {"a":1}\n',
    b'\xef\xbb\xbf{"a":1}\n', b'{"a":1}\n\xef\xbb\xbf{"b":2}\n', b'{"a":1}\n  \n', b'{"a":1}\r\n{"b":22222}\r\n',
    b'[1]\n{"a":1}\n', b'{"a":1}\n{', b"x" * 70_000 + b"\n{}\n",
])
def test_line_scan_matches_the_numpy_line_index(block):
    assert kernels.line_scan(block) == numpy_scan(block)
    assert kernels.line_scan(memoryview(block)) == numpy_scan(block)
    assert kernels.line_scan(bytearray(block)) == numpy_scan(block)


def test_line_scan_on_real_jsonl(rows):
    block = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    assert kernels.line_scan(block) == numpy_scan(block) == (len(rows), len(rows), numpy_scan(block)[2], True, True)
    with pytest.raises(TypeError):
        kernels.ext().line_scan("not bytes")


# Invalid UTF-8 of every kind (a stray continuation byte, overlong forms, UTF-16 surrogates, code
# points above U+10FFFF, bytes never used, sequences cut short by the line's or the block's end)
# and valid edge cases (the first and last code point of each length).
UTF8_CASES = [b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xed\xa0\x80",
              b"\xed\xbf\xbf", b"\xf0\x80\x80\x80", b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",
              b"\xff", b"\xfe", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xc3\n\xa9", b"\xe2\x82\n\xac",
              b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xef\xbf\xbf",
              b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf", "é日😀".encode()]


@pytest.mark.parametrize("case", UTF8_CASES)
def test_line_scan_checks_utf8_as_python_and_arrow_do(rows, case, simd):
    text = orjson.dumps(rows[0])  # real text around the bytes, at every alignment of the 16/32-byte steps
    for cut in (0, 1, 7, 15, 16, 17, 29, 30, 31, 32, 33, 40, 63, 64, 65, len(text) - 2):
        block = text[:cut] + case + text[cut:] + b"\n" + text + b"\n"
        assert kernels.line_scan(block) == numpy_scan(block)
        assert kernels.line_scan(block[:-1] + case) == numpy_scan(block[:-1] + case)  # at the block's end
        assert kernels.ext().utf8_valid(block) == _valid_utf8(block)
    for pad in range(70):  # the case alone, after an ASCII run of every length (the AVX2 tail handling)
        assert kernels.ext().utf8_valid(b"q" * pad + case) == _valid_utf8(b"q" * pad + case)


def test_utf8_check_on_damaged_real_text(rows, simd):
    """Real text in three languages with one byte changed, at random places, against Python."""
    text = b"\n".join(orjson.dumps(r) for r in rows)[:300_000]
    rng = np.random.default_rng(14)
    for _ in range(300):
        damaged = bytearray(text[:int(rng.integers(1000, len(text)))])
        damaged[int(rng.integers(len(damaged)))] = int(rng.integers(256))
        assert kernels.ext().utf8_valid(damaged) == _valid_utf8(bytes(damaged)) == kernels.line_scan(damaged)[4]


def _unchecked(values: list[bytes | None]) -> pa.Array:
    """A string array over these bytes without Arrow's validation (as a reader can produce one)."""
    data = b"".join(v for v in values if v is not None)
    offsets = np.cumsum([0] + [0 if v is None else len(v) for v in values]).astype(np.int32)
    valid = np.packbits([v is not None for v in values], bitorder="little")
    return pa.Array.from_buffers(pa.string(), len(values), [pa.py_buffer(valid), pa.py_buffer(offsets), pa.py_buffer(data)],
                                 null_count=sum(v is None for v in values))


def test_strings_valid_agrees_with_arrow(rows, simd):
    good = [r["title"].encode() for r in rows]
    cases = {
        "real": good, "empty values": [b"", b"a", b""] + good[:5],
        "a character split across two values": good[:3] + ["é".encode()[:1], "é".encode()[1:]] + good[3:6],
        "invalid byte": good[:4] + [b"ab\xffcd"] + good[4:8], "nulls": [None] + good[:4] + [None],
        "cut at the end": good[:4] + ["日".encode()[:2]],
    }
    for name, values in cases.items():
        array = _unchecked(values)
        for chunk in (array, array.slice(1), array.slice(2, 3)):
            try:
                chunk.validate(full=True)
                arrow = True
            except pa.ArrowInvalid:
                arrow = False
            assert kernels.strings_valid(chunk) == arrow, name  # valid, or the caller validates with Arrow


def _urls(rows: list[dict]) -> list[str | None]:
    """Real URLs, and URLs that exercise each part of the host pattern."""
    return [r["url"] for r in rows] + [
        "http://user@/path", "HTTP://Ex.COM:80/x", "ftp://a@b@c/", "https://xn--bcher-kva.example/", "mailto:x@y", "",
        None, "//no.scheme/", "http://[::1]:80/", "a://", "http://host?x", "http://h#f", "http://u:p@h.com:1/x",
        "9http://x.com", "http://", "http:///x", "h-t.t+p://ok.com", "http://ok.com:", "http://ÄÖ.de/x",
        "https://h.com/p?mail=a@b.org", "http://@h.com", "http://ÉCOLE.fr", "https://u@ß.de/", "HTTPS://WWW.Wiki.ORG",
        "http://a@", "http://a@:80", "http://a:b@c:d@e/", "x+y.z-w://Host.Name/p", "http://h\nx/", "http:/x.com",
        "http:\\x.com", " http://x.com", "http://x.com\u00e9", "http://日本.jp/", "http://ex.com?@evil.com",
        "http://ex.com#@evil.com", "http://ex.com/@evil.com"]


def test_url_hosts_match_the_regex(rows):
    from readers.ingest import _HOST, _domains_regex
    urls = _urls(rows)
    array = pa.array(urls, pa.string())
    hosts, rest = kernels.url_hosts(array)
    want = _domains_regex(pl.Series(urls, dtype=pl.String)).to_list()
    got = hosts.to_pylist()
    assert {i for i, u in enumerate(urls) if u is not None and any(ord(c) > 127 for c in (want[i] or ""))} <= set(rest)
    for i in rest:
        got[i] = want[i]
    assert got == want
    pattern = re.compile(_HOST)  # Python's engine agrees with Polars' on the ASCII rows
    assert [None if u is None or not (m := pattern.match(u)) else m.group(1).lower() for u in urls] == want
    # chunked and sliced columns read their buffers at the right offsets
    sliced = pa.chunked_array([array.slice(3, 40), array.slice(50)])
    hosts, rest = kernels.url_hosts(sliced)
    assert [h for i, h in enumerate(hosts.to_pylist()) if i not in set(rest)] == \
        [h for i, h in enumerate(want[3:43] + want[50:]) if i not in set(rest)]


def test_domains_with_and_without_the_kernel(rows, monkeypatch):
    from readers.ingest import _domains
    array = pa.array(_urls(rows), pa.string())
    fast = _domains(array).to_pylist()
    monkeypatch.setenv("CURATE_NATIVE", "0")
    assert kernels.url_hosts(array) is None
    assert _domains(array).to_pylist() == fast


def _keys(rows: list[dict]) -> list[str]:
    # URLs, texts (some long), non-ASCII, the empty key, and keys around SHA-256's 55/56/64-byte padding edges
    return ([r["url"] for r in rows] + [r["text"] for r in rows] + ["", "é", "日本語のキー"]
            + ["k" * n for n in range(40, 140)] + ["x" * 1_000_000])


@pytest.mark.parametrize("source", ["wiki_en", "", "s" * 58, "src-ü"])
def test_hash_ids_equal_hashlib(rows, source):
    keys = _keys(rows)
    want = document_ids(source, keys)  # hashlib, one key at a time
    assert [hashlib.sha256(f"{source}\x1f{k}".encode()).hexdigest()[:32] for k in keys[:5]] == want[:5]
    got = kernels.hash_ids(source.encode() + b"\x1f", pa.chunked_array([pa.array(keys[:100]), pa.array(keys[100:])]))
    assert got.type == pa.string() and got.to_pylist() == want
    sliced = pa.array(keys, pa.large_string()).slice(7, 50)  # an offset into the buffers
    assert kernels.hash_ids(source.encode() + b"\x1f", sliced).to_pylist() == want[7:57]
    assert kernels.hash_ids(b"x", pa.array([], pa.string())).to_pylist() == []


def test_hash_ids_without_sha_ni_are_the_same(rows, monkeypatch):
    keys = _keys(rows)[:300]
    fast = kernels.hash_ids(b"wiki\x1f", pa.array(keys))
    monkeypatch.setenv("CURATE_NATIVE", "0")
    assert kernels.hash_path() == "hashlib"
    assert kernels.hash_ids(b"wiki\x1f", pa.array(keys)).equals(fast)


def _read(path: Path, **options) -> tuple[list[dict], list[tuple]]:
    source = SourceConfig(name="t", format="jsonl", paths=[str(path)], **options)
    tables, bad = [], []
    for item in jsonl.read_jsonl(str(path), source):
        if isinstance(item, Quarantined):
            bad.append((item.offset, item.rows, item.error, item.raw))
        else:
            tables.append(item)
    return [r for t in tables for r in t.to_pylist()], bad


def _both_paths(path: Path, monkeypatch, **options) -> tuple[list[dict], list[tuple]]:
    """Read with the kernels and with CURATE_NATIVE=0; assert the same rows, offsets and quarantine."""
    fast = _read(path, **options)
    with monkeypatch.context() as m:
        m.setenv("CURATE_NATIVE", "0")
        assert kernels.line_scan(b"{}\n") is None
        slow = _read(path, **options)
    assert fast == slow
    return fast


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_fast_path_reads_what_the_general_path_reads(tmp_path, rows, suffix, monkeypatch):
    lines = [orjson.dumps(r) for r in rows]
    good = tmp_path / f"good.jsonl{suffix}"
    data = b"\n".join(lines) + b"\n"
    good.write_bytes(gzip.compress(data) if suffix else data)
    got, bad = _both_paths(good, monkeypatch)
    assert [r["url"] for r in got] == [r["url"] for r in rows] and [r[OFFSET_COLUMN] for r in got] == list(range(len(rows)))
    assert bad == []
    # bad input: invalid UTF-8 in a line that still starts with "{", a line that is not JSON, two
    # objects on one line, a blank line, a byte order mark, a giant document, no final newline
    spoiled = list(lines)
    spoiled[3] = spoiled[3].replace(b'"text":"', b'"text":"\xff\xfe', 1)
    spoiled[10] = b'{"text": "unterminated'
    spoiled[20] = spoiled[20] + b" " + spoiled[21]
    spoiled[30] = b""
    spoiled[40] = b"\xef\xbb\xbf" + spoiled[40]
    spoiled[50] = orjson.dumps({"text": "y" * 5000, "url": "u"})
    path = tmp_path / f"bad.jsonl{suffix}"
    data = b"\n".join(spoiled)
    path.write_bytes(gzip.compress(data) if suffix else data)
    got, bad = _both_paths(path, monkeypatch, max_doc_bytes=4000)
    offsets = [r[OFFSET_COLUMN] for r in got]
    assert 10 not in offsets and 30 not in offsets and 50 not in offsets and 40 in offsets
    assert "\ufffd" in got[offsets.index(3)]["text"]
    assert {b[0] for b in bad} >= {10, 50}
    assert len(got) + sum(b[1] for b in bad) >= len(rows) - 1  # nothing lost (line 30 is blank, not a row)


def test_plain_blocks_end_at_line_ends_and_lose_nothing(tmp_path, rows, monkeypatch):
    """An uncompressed file is read in blocks completed to their last line's end; lines longer than
    the completion limit fall back to the reader's partial-line handling. Small blocks force both."""
    monkeypatch.setattr(jsonl, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(jsonl, "_TAIL_BYTES", 1024)
    lines = [orjson.dumps(r) for r in rows] + [orjson.dumps({"text": "z" * 20_000})]
    data = b"\n".join(lines)  # no final newline
    path = tmp_path / "p.jsonl"
    path.write_bytes(data)
    with open(path, "rb") as f:
        blocks = list(jsonl._plain_blocks(f))
    assert b"".join(blocks) == data
    assert sum(b[-1:] == b"\n" for b in blocks) >= len(blocks) // 2
    got, bad = _both_paths(path, monkeypatch)
    assert bad == [] and [r["text"] for r in got] == [r["text"] for r in rows] + ["z" * 20_000]


def test_ingest_with_and_without_kernels_writes_the_same_lake(tmp_path, rows, monkeypatch):
    lines = [orjson.dumps({"body": r["text"], "link": r["url"], "title": r["title"]}) for r in rows]
    lines[5] = b"not json"
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    source = SourceConfig(name="s", format="jsonl", paths=[str(path)], columns={"text": "body", "url": "link"})

    def lake(where: str) -> list[str]:
        task = IngestFileTask(source, str(path), 0, str(tmp_path / where / "raw"), str(tmp_path / where / "q"),
                              "ing", "run", 1 << 27)
        res = ingest_file(task)
        assert res.rows_quarantined == 1 and res.rows_written == len(rows) - 1
        return [table_digest(pq.read_table(p["path"]), tmp_path) for p in res.parts]

    fast = lake("fast")
    monkeypatch.setenv("CURATE_NATIVE", "0")
    assert fast and lake("slow") == fast


def test_golden_inputs_digest_the_same_without_the_kernels(tmp_path, monkeypatch):
    """tests/test_ingest_identity.py checks the golden digests with the kernels (where built); this
    checks them on the fallback paths (NumPy line index, hashlib ids)."""
    import json

    from tests.ingest_golden import GOLDEN, digests
    monkeypatch.setenv("CURATE_NATIVE", "0")
    assert digests(tmp_path) == json.loads(GOLDEN.read_text())


def test_find_newline_in_a_view_is_bytes_find(rows):
    """The reader searches byte views (uncompressed blocks) in growing windows; it must find what
    bytes.find / rfind find, wherever the newline is (window edges included) or when there is none."""
    text = orjson.dumps(rows[0])[:30_000].replace(b"\n", b" ")
    for where in (None, 0, 1, 4095, 4096, 4097, 20_479, 20_480, len(text) - 1):
        data = text if where is None else text[:where] + b"\n" + text[where + 1:]
        for chunk in (data, memoryview(data), memoryview(bytearray(data))[3:]):
            raw = bytes(chunk)
            assert jsonl._find_newline(chunk) == raw.find(b"\n")
            assert jsonl._find_newline(chunk, last=True) == raw.rfind(b"\n")


# Strings that exercise every escape: quote, backslash, each control byte, DEL, non-ASCII, U+2028.
ESCAPES = ['a"b\\c', "tab\there", "nl\nx\r\n", "".join(map(chr, range(32))), "\x7f/é日😀\u2028\u2029", "", None]


def test_json_objects_are_what_polars_writes(rows, monkeypatch):
    titles = [r["title"] for r in rows] + ESCAPES
    texts = [r["text"][:500] for r in rows] + list(reversed(ESCAPES))
    table = pa.table({"title": pa.array(titles, pa.string()), 'we"ird\nkey é': pa.array(texts, pa.large_string())})
    want = pl.from_arrow(table).select(pl.struct(table.column_names).struct.json_encode()).to_series().to_list()
    got = kernels.json_objects(table)
    assert got.type == pa.large_string() and got.to_pylist() == want
    assert [orjson.loads(v) for v in want[-len(ESCAPES):]] == [  # and it is JSON that means the strings
        {"title": a, 'we"ird\nkey é': b} for a, b in zip(ESCAPES, reversed(ESCAPES), strict=True)]
    sliced = pa.Table.from_batches(table.slice(5, 300).to_batches())  # offsets into the buffers
    assert kernels.json_objects(sliced).to_pylist() == want[5:305]
    assert kernels.json_objects(pa.table({"n": [1, 2]})) is None  # not a string column: Polars writes it
    monkeypatch.setenv("CURATE_NATIVE", "0")
    assert kernels.json_objects(table) is None


def test_golden_inputs_digest_the_same_on_the_scalar_utf8_path(tmp_path):
    """tests/test_ingest_identity.py runs the golden inputs on the CPU's widest path (AVX2 here);
    the scalar UTF-8 check must write the same lake."""
    import json

    from tests.ingest_golden import GOLDEN, digests
    mod = kernels.ext()
    old = mod.path()
    mod.set_path("scalar")
    try:
        assert digests(tmp_path) == json.loads(GOLDEN.read_text())
    finally:
        mod.set_path(old)
