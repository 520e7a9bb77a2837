"""Small pieces of the report: thresholds from the selection, chart helpers, artifact keys,
markdown escaping, the page's JSON block surviving hostile text."""
from __future__ import annotations

import json
import re

import pytest

from flows.run_report import artifact_key, report_link
from warehouse.report import page, svg
from warehouse.report.context import Threshold, thresholds
from warehouse.report.summary import _md_table, accounting_line


def test_thresholds_from_selection():
    sel = ("langid.keep and quality.score >= 0.5 and 0.2 < difficulty.mtld and (grade.score > -1 or x.y == 3) "
           "and ppl.bpb <= 1.5e0 and not (fuzzy.cluster_size != 1) and source == 'web'")
    assert set(thresholds(sel)) == {Threshold("quality.score", ">=", 0.5), Threshold("difficulty.mtld", ">", 0.2),
                                    Threshold("grade.score", ">", -1.0), Threshold("x.y", "==", 3.0),
                                    Threshold("ppl.bpb", "<=", 1.5), Threshold("fuzzy.cluster_size", "!=", 1.0)}
    assert set(thresholds("a.b < 1 < c.d")) == {Threshold("a.b", "<", 1.0), Threshold("c.d", ">", 1.0)}
    assert thresholds("this is ( not parseable") == []
    assert thresholds("a.keep == true") == []  # booleans are not thresholds


@pytest.mark.parametrize("lo,hi", [(0, 1), (0, 1274), (-3.2, 7.9), (0.001, 0.0042), (5, 5.0000001)])
def test_nice_ticks_cover_the_range(lo, hi):
    ticks = svg.nice_ticks(lo, hi, 5)
    assert ticks == sorted(ticks) and 2 <= len(ticks) <= 12
    assert all(lo - 1e-9 <= t <= hi + 1e-9 for t in ticks)
    step = ticks[1] - ticks[0]
    assert ticks[0] - lo < step + 1e-12 and hi - ticks[-1] < step + 1e-12


def test_fmt():
    assert [svg.fmt(v) for v in (0, 7, 1274, 296_000, 4_500_000, 0.0312, 2.5, None)] == \
           ["0", "7", "1,274", "296k", "4.5M", "0.031", "2.5", "–"]


def test_waterfall_bars_take_off_what_remains():
    out = svg.waterfall([svg.Step("in", 100, "in"), svg.Step("a", 30, "drop"), svg.Step("b", 20, "drop"),
                         svg.Step("kept", 50, "kept")], "w")
    xs = [(float(x), float(w)) for x, w in re.findall(r'<rect x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', out)]
    (x_in, w_in), (x_a, w_a), (x_b, w_b), (x_k, w_k) = xs
    assert x_a + w_a == pytest.approx(x_in + w_in, abs=0.2)  # the first drop ends where the input ends
    assert x_b + w_b == pytest.approx(x_a, abs=0.2)  # the next one ends where the previous began
    assert w_k == pytest.approx(w_in / 2, abs=0.2) and x_b == pytest.approx(x_k + w_k, abs=0.2)


def test_size_bins():
    assert page._size_bins([(2, 5), (3, 1), (12, 2), (19, 1), (150, 1)]) == [("2", 5), ("3", 1), ("10-99", 3),
                                                                             ("100-999", 1)]


def test_artifact_keys_and_links(tmp_path):
    assert artifact_key("Web_EDU.v2", "summary") == "curate-web-edu-v2-summary"
    assert report_link(str(tmp_path / "r.html")).startswith("file:///")
    assert report_link("s3://bucket/lake/reports/x/report.html") == "s3://bucket/lake/reports/x/report.html"


def test_markdown_and_line_escape_hostile_text():
    t = _md_table(["a", "b"], [["x|y", "line\nbreak"], [1234, None]])
    assert "x\\|y" in t and "line break" in t and "1,234" in t
    row = {"source": "s", "rows_in": 10, "rows_quarantined": 1, "rows_kept": 5, "rows_released": 7,
           "tokens_released": 70, "top_drops": [("c4: too_few_sentences", 3)], "other_drops": 1}
    assert accounting_line(row) == ("10 in → −3 c4: too_few_sentences, −1 other, −1 quarantined → 5 kept → "
                                    "7 released (70 tokens)")


def test_page_escapes_documents_and_embeds_json():
    evil = "</script><script>alert(1)</script> & <b>"
    data = {"release": {"name": "n", "version": "v", "rows": 1, "tokens": 2, "shards": 1, "bytes": 10,
                        "selection": evil, "notes": []},
            "accounting": {"s": {"rows_in": 3, "rows_kept": 1, "rows_dropped": 2, "rows_quarantined": 0,
                                 "tokens_kept": 2, "rows_released": 1, "tokens_released": 2}},
            "waterfall": {"s": [{"label": "rows in", "kind": "in", "rows": 3}, {"label": "x", "kind": "drop", "rows": 2},
                                {"label": "kept", "kind": "kept", "rows": 1}]},
            "drop_reasons": [{"stage": "x", "reason": evil, "rows": 2, "per_source": {"s": 2}}],
            "examples": [{"stage": "x", "reason": evil, "rows": 2, "examples": [
                {"id": "ab", "source": "s", "reason": evil, "text": evil}]}],
            "histograms": [], "duplicates": [], "mixture": None, "curriculum": None, "diff": None, "timings": []}
    html = page.render(data)
    assert "<script>alert" not in html and html.count("<script") == 1
    blob = re.search(r'id="curate-report-data">(.*?)</script>', html, re.S).group(1)
    assert json.loads(blob)["release"]["selection"] == evil


def _tables(n: int, fail_at: int | None = None):
    import pyarrow as pa
    for i in range(n):
        if i == fail_at:
            raise RuntimeError("the shard could not be read")
        yield pa.table({"id": [f"d{i}-{k}" for k in range(1000)], "row": list(range(1000))})


@pytest.mark.parametrize("remote", [False, True])
def test_report_writes_are_whole_or_absent(remote, tmp_path, request):
    """The fates/page writes stream table by table; a failure midway leaves no file (no partial
    object on S3: the upload is aborted, not committed), and a success reads back every row."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from warehouse.report.io import write_bytes, write_parquet
    base = request.getfixturevalue("s3_server").bucket() if remote else str(tmp_path)
    fs, root = fsspec.core.url_to_fs(base)
    schema = pa.schema([("id", pa.string()), ("row", pa.int64())])
    with pytest.raises(RuntimeError):
        write_parquet(f"{base}/r/bad.parquet", schema, _tables(5, fail_at=3))
    assert not fs.exists(f"{root}/r/bad.parquet")
    assert [p for p in (fs.ls(f"{root}/r") if fs.exists(f"{root}/r") else []) if "tmp" in p] == []
    write_parquet(f"{base}/r/good.parquet", schema, _tables(5))
    with fs.open(f"{root}/r/good.parquet", "rb") as f:
        t = pq.read_table(f)
    assert t.num_rows == 5000 and t.column("id")[4999].as_py() == "d4-999"
    write_bytes(f"{base}/r/page.html", b"<html>x</html>")
    assert fs.cat(f"{root}/r/page.html") == b"<html>x</html>"


def test_read_rows_reads_only_the_row_groups_it_needs(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from warehouse.report.io import read_rows
    n = 2500
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)]}),
                   tmp_path / "s.parquet", row_group_size=1000)
    read: list[int] = []
    orig = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, g, **kw: read.append(g) or orig(self, g, **kw))
    got = read_rows(str(tmp_path / "s.parquet"), [2499, 3, 999, 2000, n + 5], ["text"])
    assert got == {2499: {"text": "text 2499"}, 3: {"text": "text 3"}, 999: {"text": "text 999"},
                   2000: {"text": "text 2000"}}
    assert sorted(read) == [0, 2]  # the middle group (rows 1000-1999) is never read
