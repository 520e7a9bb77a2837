"""Decoding a web page's bytes to text by the charset it declares.

The order is the one browsers use (WHATWG HTML, "determining the character encoding"):

1. a byte order mark (UTF-8, UTF-16 LE/BE) at the start of the body;
2. the ``charset`` parameter of the HTTP ``Content-Type`` header;
3. for HTML, a ``<meta charset=...>`` or ``<meta http-equiv="Content-Type" content="...; charset=...">``
   in the first ``PRESCAN_BYTES`` bytes;
4. nothing declared: UTF-8 if the bytes are valid UTF-8, else the encoding resiliparse's detector
   guesses, else UTF-8 with invalid bytes replaced by U+FFFD.

A label is mapped as browsers map it (``latin-1``, ``iso-8859-1`` and ``ascii`` all mean
windows-1252 on the web); labels that the WHATWG list lacks but Python's codecs know (``latin-1``
with a dash, ``cp1252``) are accepted too; an unknown label counts as no declaration. Bytes that
are invalid in the chosen encoding become U+FFFD: the document is repaired, not dropped.

Cost: a BOM check, a regular expression over the first 4 KB, one decode; detection only for
undeclared pages that are not valid UTF-8.
"""
from __future__ import annotations

import codecs
import re

from resiliparse.parse.encoding import detect_encoding, map_encoding_to_html5

# Browsers look for <meta charset> in the first 1024 bytes; pages in the wild put it a little later.
PRESCAN_BYTES = 4096
_HEADER_CHARSET = re.compile(r"""charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)
_META_CHARSET = re.compile(rb"""<meta\b[^>]*?\bcharset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
# The web's meanings of some labels (WHATWG Encoding): Latin-1 and ASCII pages are decoded as windows-1252.
_WEB_ALIASES = {"latin_1": "cp1252", "iso8859_1": "cp1252", "ascii": "cp1252"}


def python_codec(label: str | None) -> str | None:
    """The Python codec for a charset label as a browser reads it, or None if the label is unknown."""
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    html5 = map_encoding_to_html5(label, fallback_utf8=False)
    for candidate in (html5, label):
        if not candidate:
            continue
        try:
            name = codecs.lookup(candidate).name
        except LookupError:
            continue
        return _WEB_ALIASES.get(name.replace("-", "_"), name)
    return None


def declared_charset(body: bytes, content_type: str = "", html: bool = True) -> tuple[str | None, str]:
    """(Python codec, where it came from: 'bom' | 'http' | 'meta' | 'none') for a response body."""
    for bom, name in _BOMS:
        if body.startswith(bom):
            return name, "bom"
    header = _HEADER_CHARSET.search(content_type or "")
    codec = python_codec(header[1]) if header else None
    if codec:
        return codec, "http"
    if html:
        meta = _META_CHARSET.search(body, 0, PRESCAN_BYTES)
        codec = python_codec(meta[1].decode("ascii", "replace")) if meta else None
        if codec:
            # A <meta> read in ASCII-compatible bytes cannot be right about UTF-16: browsers take it as UTF-8.
            return ("utf-8" if codec.replace("_", "-").startswith("utf-16") else codec), "meta"
    return None, "none"


def decode_body(body: bytes, content_type: str = "", html: bool = True) -> str:
    """The text of a response body, decoded by its declared charset (see the module docstring)."""
    codec, where = declared_charset(body, content_type, html)
    if where == "bom":
        return body.decode(codec + ("-sig" if codec == "utf-8" else ""), "replace")  # type: ignore[operator]
    if codec is None:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            guessed = python_codec(detect_encoding(body, html5_compatible=True))
            codec = guessed or "utf-8"
    return body.decode(codec, "replace")
