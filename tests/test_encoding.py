"""Character encodings: a WARC page is decoded by the charset it declares (HTTP header or HTML
meta), Latin-1/windows-1252 pages come out right, UTF-8 stays UTF-8; a JSONL byte order mark is
stripped, not quarantined. Pages are real handbook pages (French, so full of accents) re-encoded."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastwarc.warc import ArchiveIterator

from readers.charset import declared_charset, decode_body, python_codec
from readers.jsonl import strip_line_boms
from tests.test_readers import read, warc_record

PLANT = "Au menu : café crème, thé à la menthe, crêpes flambées — 3 € la tasse, « ça va » dit l’hôte."


@pytest.fixture(scope="module")
def french_page(corpora: Path) -> str:
    """The HTML of a real French page of the Debian handbook, with a planted paragraph."""
    with open(corpora / "handbook.warc.gz", "rb") as f:
        for record in ArchiveIterator(f, parse_http=False):
            uri = record.headers.get("WARC-Target-URI") or ""
            if "/fr-FR/" in uri:
                block = record.reader.read()
                body = block[block.index(b"\r\n\r\n") + 4:]
                html = body.decode("utf-8")
                if "é" in html and "<body" in html and len(html) > 5000:
                    break
    # The page declares UTF-8 in a <meta>; the cases below set their own declaration.
    html = re.sub(r"<meta[^>]*charset[^>]*>", "", html, flags=re.I)
    body_open = html.index(">", html.index("<body")) + 1
    return html[:body_open] + f"<p>{PLANT}</p>" + html[body_open:]


def page(html: str, encoding: str, header_charset: str | None = None, meta_charset: str | None = None) -> bytes:
    if meta_charset:
        html = html.replace("<head>", f'<head><meta charset="{meta_charset}">', 1)
    body = html.encode(encoding, "xmlcharrefreplace")
    ctype = "text/html" + (f"; charset={header_charset}" if header_charset else "")
    return f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def extract(tmp_path: Path, http: bytes, main_content: bool = False) -> str:
    path = tmp_path / "one.warc"
    path.write_bytes(warc_record("https://debian-handbook.info/browse/fr-FR/stable/x.html", http))
    got = read("warc", path, main_content=main_content)
    assert got.quarantined == []
    [row] = got.rows
    return row["text"]


@pytest.fixture(scope="module")
def reference(french_page, tmp_path_factory) -> str:
    """The page's text when served as UTF-8 with a UTF-8 header: what every variant must give."""
    text = extract(tmp_path_factory.mktemp("ref"), page(french_page, "utf-8", "utf-8"))
    assert PLANT in text and "é" in text
    return text


@pytest.mark.parametrize("encoding,header,meta", [
    ("latin-1", "latin-1", None),          # the case: a label resiliparse's table lacks
    ("latin-1", "ISO-8859-1", None),
    ("cp1252", "windows-1252", None),
    ("cp1252", "latin-1", None),           # browsers read Latin-1 labels as windows-1252
    ("latin-1", None, "iso-8859-1"),       # declared only in the HTML
    ("cp1252", None, "windows-1252"),
    ("cp1252", "cp1252", "utf-8"),         # the HTTP header wins over the meta tag
    ("utf-8", "utf-8", None),
    ("utf-8", None, "utf-8"),
    ("utf-8", None, None),                 # undeclared, valid UTF-8
])
def test_declared_charset_is_honoured(tmp_path, french_page, reference, encoding, header, meta):
    text = extract(tmp_path, page(french_page, encoding, header, meta))
    assert "café crème" in text and "\ufffd" not in text
    if encoding == "latin-1":  # the euro sign and typographic quotes are not Latin-1: served as &#...; references
        assert PLANT in text
    assert text == reference


def test_undeclared_latin1_is_detected(tmp_path, french_page, reference):
    text = extract(tmp_path, page(french_page, "cp1252"))
    assert "café crème" in text and "\ufffd" not in text


def test_undeclared_broken_utf8_is_repaired_not_redecoded(tmp_path, french_page):
    """One stray Latin-1 byte in an undeclared UTF-8 page: that byte is replaced, the rest stays UTF-8."""
    http = page(french_page, "utf-8").replace("crème".encode(), b"cr\xe8me", 1)
    text = extract(tmp_path, http)
    assert "crêpes flambées" in text and "cr\ufffdme" in text


def test_bom_decides_first(tmp_path, french_page, reference):
    body = b"\xef\xbb\xbf" + french_page.encode("utf-8")
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=latin-1\r\n\r\n" + body
    assert extract(tmp_path, http) == reference


def test_plain_text_record(tmp_path):
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=latin-1\r\n\r\n" + PLANT.encode("cp1252")
    assert extract(tmp_path, http) == PLANT


def test_charset_labels():
    assert python_codec("latin-1") == python_codec("ISO-8859-1") == python_codec("latin1") == "cp1252"
    assert python_codec("UTF8") == python_codec("utf-8") == "utf-8"
    assert python_codec("shift_jis") in ("shift_jis", "cp932")
    assert python_codec("no-such-charset") is None
    assert declared_charset(b"<html><head><meta http-equiv='Content-Type' content='text/html; charset=iso-8859-15'>",
                            "text/html") == ("iso8859-15", "meta")
    assert declared_charset(b'<meta charset="utf-16">', "") == ("utf-8", "meta")  # as browsers do
    assert decode_body("café".encode("cp1252"), "text/html; charset=bogus") == "café"  # unknown label: detection


# --- JSONL byte order marks -----------------------------------------------------------------------

def test_jsonl_bom_at_file_and_line_start(tmp_path, corpora):
    import pyarrow.parquet as pq
    docs = pq.read_table(corpora / "wiki_fr.parquet", columns=["text", "url"]).slice(0, 6).to_pylist()
    lines = [json.dumps(d, ensure_ascii=False).encode() for d in docs]
    bom = b"\xef\xbb\xbf"
    # A BOM at the start of the file, and two files concatenated with `cat` (a BOM mid-file).
    data = bom + b"\n".join(lines[:3]) + b"\n" + bom + b"\n".join(lines[3:]) + b"\n"
    path = tmp_path / "bom.jsonl"
    path.write_bytes(data)
    got = read("jsonl", path)
    assert got.quarantined == []
    assert [r["text"] for r in got.rows] == [d["text"] for d in docs]
    assert got.offsets == list(range(6))  # line numbers unchanged
    # A U+FEFF inside a string is text, and stays.
    inner = json.dumps({"text": "\ufeffmot"}, ensure_ascii=False).encode()
    assert strip_line_boms(inner) == inner
    path.write_bytes(inner + b"\n")
    assert read("jsonl", path).rows[0]["text"] == "\ufeffmot"


def test_jsonl_bom_on_the_slow_path(tmp_path):
    """A block with a bad line is parsed line by line; a BOM line there is still a document."""
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "premi\xc3\xa8re"}\nnot json\n\xef\xbb\xbf{"text": "troisi\xc3\xa8me"}\n')
    got = read("jsonl", path)
    assert [r["text"] for r in got.rows] == ["première", "troisième"]
    assert [q.offset for q in got.quarantined] == [1]
