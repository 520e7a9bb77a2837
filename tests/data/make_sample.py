"""Rebuild tests/data/corpora, the real-text sample bundled for tests, from the shared corpora.

    python tests/data/make_sample.py /path/to/shared/corpora

Each Parquet file keeps the first rows of its shared namesake (tests take ``head(n)``, so a test
asking for no more rows than the sample holds sees the same documents either way), all columns.
``handbook.warc.gz`` keeps every 13th page of the handbook in all 26 languages, copied record by
record (the gzip members are the original bytes). Deterministic: the same input gives the same files.
See tests/data/corpora/README.md for sources and licences.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq

ROWS = {"wiki_en": 3500, "wiki_fr": 3500, "wiki_es": 3500, "python_docs": 150, "gutenberg": 14}
PAGE_STEP = 13  # of the 127 pages (sorted by file name), keep those at index 0, 13, 26, ...


def sample_parquet(src: Path, dst: Path, rows: int) -> None:
    table = pq.read_table(src).slice(0, rows)
    pq.write_table(table, dst, compression="zstd", compression_level=19, row_group_size=1000)


def sample_warc(src: Path, dst: Path) -> None:
    from fastwarc.warc import ArchiveIterator

    records = []
    with open(src, "rb") as f:
        for r in ArchiveIterator(f, parse_http=False):
            records.append((r.stream_pos, r.headers.get("WARC-Target-URI") or ""))
    data = src.read_bytes()
    ends = [p for p, _ in records[1:]] + [len(data)]
    pages = sorted({uri.rsplit("/", 1)[-1] for _, uri in records})
    keep = set(pages[::PAGE_STEP])
    with open(dst, "wb") as out:
        for (start, uri), end in zip(records, ends):
            if uri.rsplit("/", 1)[-1] in keep:
                out.write(data[start:end])


def main() -> None:
    src = Path(sys.argv[1])
    dst = Path(__file__).resolve().parent / "corpora"
    dst.mkdir(exist_ok=True)
    for name, rows in ROWS.items():
        sample_parquet(src / f"{name}.parquet", dst / f"{name}.parquet", rows)
    sample_warc(src / "handbook.warc.gz", dst / "handbook.warc.gz")
    for p in sorted(dst.iterdir()):
        print(f"{p.name:24s} {p.stat().st_size / 1e6:6.2f} MB")


if __name__ == "__main__":
    main()
