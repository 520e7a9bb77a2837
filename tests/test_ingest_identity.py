"""The ingest speed-up changed no persisted value: raw shards (ids, text, meta JSON, dates,
provenance) and quarantine records of real inputs digest exactly as before it (tests/ingest_golden.py
explains the inputs and the digest; tests/data/ingest_golden.json holds the digests of the code
before the change)."""
from __future__ import annotations

import json

from tests.ingest_golden import GOLDEN, digests


def test_raw_shards_are_identical_to_the_ones_before_the_speed_up(tmp_path):
    want = json.loads(GOLDEN.read_text())
    got = digests(tmp_path)
    assert set(got) == set(want)
    for source in want:
        assert got[source] == want[source], source
    # the inputs exercised what the hot path does
    assert want["mixed"]["rows_quarantined"] == 2 and want["gutenberg"]["rows_written"] == 14
    assert sum(len(v["parts"]) for v in want.values()) >= 8


def test_host_of_urls_with_and_without_user_info_matches_the_one_pattern():
    """The domain column takes a shorter pattern for URLs without "@"; on every URL both give what
    the full pattern gives (polars regex) and what Python's ``re`` gives with it."""
    import re

    import polars as pl
    import pyarrow as pa

    from readers.ingest import _HOST, _domains
    urls = ["https://en.wikipedia.org/wiki/X", "http://user@/path", "HTTP://Ex.COM:80/x", "ftp://a@b@c/",
            "https://xn--bcher-kva.example/", "mailto:x@y", "", None, "//no.scheme/", "http://[::1]:80/", "a://",
            "http://host?x", "http://h#f", "http://u:p@h.com:1/x", "9http://x.com", "http://", "http:///x",
            "h-t.t+p://ok.com", "http://ok.com:", "http://ÄÖ.de/x", "https://h.com/p?mail=a@b.org", "http://@h.com"]
    got = _domains(pa.array(urls, pa.string())).to_pylist()
    full = pl.Series(urls, dtype=pl.String).str.extract(_HOST, 1).str.to_lowercase().to_list()
    pattern = re.compile(_HOST)
    python = [None if u is None or not (m := pattern.match(u)) else m.group(1).lower() for u in urls]
    assert got == full == python
    assert got[0] == "en.wikipedia.org" and got[13] == "h.com" and got[20] == "h.com"
