"""engines/strings.py: the bytes and offsets the kernels read, checked against Python's own UTF-8
encoding of each text, on the layouts a batch can have (read from Parquet, gathered, rebuilt by a
Polars string operation, sliced, with nulls)."""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engines.strings import contiguous_view_buffers, string_buffers
from tests.helpers import real_texts


@pytest.fixture(scope="module")
def texts(corpora) -> list[str]:
    # Real paragraphs, plus their first words: strings of 12 bytes and less live inside Arrow's views.
    paras = [p for t in real_texts(corpora, "wiki_en", 60) for p in t.split("\n") if p.strip()][:600]
    return [p if i % 3 else p[: i % 14] for i, p in enumerate(paras)]


def _spans(data: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    return [data[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]


def _read_back(tmp_path, texts: list[str]) -> tuple[pl.Series, pa.Array]:
    """The texts as a batch of the executor has them: Parquet -> Arrow record batch -> Polars."""
    pq.write_table(pa.table({"text": pa.array(texts, type=pa.large_string())}), tmp_path / "t.parquet")
    rb = next(pq.ParquetFile(tmp_path / "t.parquet").iter_batches(batch_size=len(texts)))
    frame = pl.from_arrow(pa.Table.from_batches([rb]))
    assert isinstance(frame, pl.DataFrame)
    return frame.get_column("text"), rb.column("text")


def test_a_batch_read_from_parquet_reaches_the_kernels_without_a_copy(tmp_path, texts):
    assert any(len(t.encode()) <= 12 for t in texts) and any(len(t.encode()) > 12 for t in texts)
    series, arrow = _read_back(tmp_path, texts)
    data, offsets = string_buffers(series)
    assert _spans(data, offsets) == [t.encode() for t in texts]
    # The bytes are Arrow's own buffer, the one the Parquet reader filled.
    assert data.ctypes.data == np.frombuffer(arrow.buffers()[2], dtype=np.uint8).ctypes.data


def test_other_layouts_give_the_same_bytes(tmp_path, texts):
    series, _ = _read_back(tmp_path, texts)
    order = np.random.default_rng(3).permutation(len(texts))
    cases = {
        "gathered": (series.gather(order), [texts[i] for i in order]),
        "lower-cased by Polars": (series.str.to_lowercase(), [t.lower() for t in texts]),
        "sliced": (series.slice(7, 301), texts[7:308]),
        "with nulls": (pl.Series([None if i % 5 == 0 else t for i, t in enumerate(texts)]),
                       ["" if i % 5 == 0 else t for i, t in enumerate(texts)]),
        "short only": (pl.Series([t[:5] for t in texts]), [t[:5] for t in texts]),
        "empty": (pl.Series([], dtype=pl.String), []),
    }
    for name, (got, want) in cases.items():
        assert _spans(*string_buffers(got)) == [t.encode() for t in want], name


def _views(strings: list[bytes], data: bytes, at: list[int]) -> pa.Array:
    """A string_view array built by hand (Arrow's layout): string i is ``strings[i]``, stored inside
    its view when short, else pointing at ``data[at[i]:]``."""
    views = bytearray()
    for b, pos in zip(strings, at):
        if len(b) <= 12:
            views += len(b).to_bytes(4, "little") + b.ljust(12, b"\0")
        else:
            views += len(b).to_bytes(4, "little") + b[:4] + (0).to_bytes(4, "little") + pos.to_bytes(4, "little")
    return pa.Array.from_buffers(pa.string_view(), len(strings), [None, pa.py_buffer(bytes(views)), pa.py_buffer(data)])


def test_only_views_whose_bytes_lie_in_row_order_are_taken_as_they_are(texts):
    rows = [t.encode() for t in texts[:90]]
    starts = np.concatenate([[0], np.cumsum([len(b) for b in rows])]).tolist()
    run = b"".join(rows)
    # Every string at its place in one run (short ones too): taken as it is, no copy.
    got = contiguous_view_buffers(_views(rows, run, starts))
    assert got is not None and _spans(*got) == rows
    # Only the long strings in the buffer, back to back (how Polars rebuilds a column), then bytes that
    # are not the short strings: every long view points where a run would put it if the short strings
    # came last, so only the check of the short strings' bytes can refuse it.
    longs = [b for b in rows if len(b) > 12]
    shorts = [b for b in rows if 0 < len(b) <= 12]
    order = longs + shorts
    at = np.concatenate([[0], np.cumsum([len(b) for b in order])]).tolist()
    noise = bytes(reversed(b"".join(shorts)))
    assert contiguous_view_buffers(_views(order, b"".join(longs) + noise, at)) is None
    assert contiguous_view_buffers(_views(order, b"".join(order), at)) is not None  # the control
    # A long view pointing anywhere but its place: refused.
    moved = [p + 1 if len(b) > 12 else p for b, p in zip(rows, starts)]
    assert contiguous_view_buffers(_views(rows, run + b" ", moved)) is None
    # Whatever the layout, string_buffers gives each string's bytes as Arrow reads the views.
    for arr in (_views(order, b"".join(longs) + noise, at), _views(rows, run + b" ", moved)):
        series = pl.from_arrow(pa.table({"t": arr})).get_column("t")
        assert _spans(*string_buffers(series)) == [t.encode() for t in arr.to_pylist()]
