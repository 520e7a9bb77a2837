"""Record an export's counts in the catalog (table ``exports``): one row per source with its rows
and tokens, the tokens being the trainer's tokenizer's when one was given.

The facts come from the export's ``export.json`` (the lake's copy), so ``record_export`` can
rebuild the rows from that file alone: ``record_export(cat, read_export_info(out_dir))``.
Re-exporting into the same folder (``--overwrite``) replaces its rows.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from engines import storage
from warehouse.catalog import Catalog, now


def read_export_info(out_dir: str) -> dict[str, Any]:
    fs, p = storage.fs_and_path(f"{out_dir}/export.json")
    with fs.open(p, "r") as f:
        return json.load(f)


def export_rows(info: dict[str, Any], exported_at: datetime | None = None) -> list[dict[str, Any]]:
    rel = info.get("release") or {}
    tok = info.get("tokenizer") or {}
    return [{"name": rel.get("name"), "version": rel.get("version"), "format": info.get("format"),
             "out_dir": str(info.get("out_dir")), "source": src, "rows": int(v.get("rows", 0)),
             "tokens": int(v.get("tokens", 0)), "token_source": info.get("token_source"),
             "tokenizer": tok.get("file"), "tokenizer_sha256": tok.get("sha256"), "exported_at": exported_at or now()}
            for src, v in sorted((info.get("sources") or {}).items())]


def record_export(cat: Catalog, info: dict[str, Any], exported_at: datetime | None = None) -> int:
    """Replace the catalog rows of this export folder with the counts in ``info``; returns the rows written."""
    rows = export_rows(info, exported_at)
    with cat.connect() as con:
        con.execute("DELETE FROM exports WHERE out_dir = ?", [str(info.get("out_dir"))])
    cat.insert("exports", rows)
    return len(rows)


def record_in_catalog(lake_root: str, info: dict[str, Any]) -> bool:
    """Record an export in the lake's catalog, if the lake has one (an export of a release folder
    outside any lake has nowhere to go); True if recorded."""
    cat = Catalog(f"{lake_root}/catalog.duckdb")
    if not storage.exists(cat.path):
        return False
    record_export(cat, info)
    return True
