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
