"""The release joins each raw shard with the annotation files of its stages by id, not only by
position (issue 13): a file of the right length holding other documents' rows quarantines the
shard's rows with a reason that names the file, instead of releasing documents under another
document's verdict."""
from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import make_raw_shard, real_texts
from warehouse.releasing.fates import Reads, StageInfo, shard_chunks, shard_frame


def _chunked(*args):
    """shard_chunks (what the release reads), concatenated, with its one ``missing``."""
    parts = list(shard_chunks(*args))
    return pl.concat([df for df, _ in parts]), parts[0][1]


@pytest.fixture(params=[shard_frame, _chunked], ids=["whole", "chunks"])
def reader(request):
    return request.param


def _setup(tmp_path, corpora, ann_ids, reader=shard_frame):
    raw = tmp_path / "raw.parquet"
    shard = make_raw_shard(raw, "wiki_en", real_texts(corpora, "wiki_en", 8))
    ids = shard.column("id").to_pylist()
    keep = [len(t.split()) > 50 for t in shard.column("text").to_pylist()]
    ann = tmp_path / "ann.parquet"
    pq.write_table(pa.table({"id": ann_ids(ids), "keep": keep, "_error": pa.nulls(len(ids), pa.string())}), ann)
    st = StageInfo("len", "len@1-x", ["keep"], None)
    reads = Reads.of([st], {"len.keep"}, {"len"}, [])
    return reader(str(raw), "wiki_en", [st], reads, lambda key, raw_path: str(ann)), keep, str(ann)


def test_aligned_annotations_are_joined(tmp_path, corpora, reader):
    (df, missing), keep, _ = _setup(tmp_path, corpora, lambda ids: ids, reader)
    assert missing == {} and df.get_column("len.keep").to_list() == keep


def test_same_length_other_order_is_refused_with_the_file_named(tmp_path, corpora, reader):
    (df, missing), _, ann = _setup(tmp_path, corpora, lambda ids: ids[1:] + ids[:1], reader)  # rotated by one row
    assert "len.keep" not in df.columns
    assert "not aligned with the shard by id" in missing["len"] and "row 0" in missing["len"] and ann in missing["len"]
