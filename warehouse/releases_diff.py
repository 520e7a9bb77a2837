"""Differences between two releases, read from the catalog."""
from __future__ import annotations

from warehouse.catalog import Catalog


def _split(ref: str) -> tuple[str, str]:
    if "/" not in ref:
        raise ValueError(f"release reference {ref!r} must be NAME/VERSION (see `curate releases`)")
    name, version = ref.split("/", 1)
    return name, version


def diff_releases(cat: Catalog, old: str, new: str) -> dict[str, tuple[list[str], list[tuple]]]:
    (n1, v1), (n2, v2) = _split(old), _split(new)
    for n, v in ((n1, v1), (n2, v2)):
        if not cat.query("SELECT 1 FROM releases WHERE name=? AND version=?", [n, v])[1]:
            raise ValueError(f"no release {n}/{v} in the catalog (see `curate releases`)")
    p = [n1, v1, n2, v2]
    return {
        "totals": cat.query(
            "SELECT a.rows AS rows_old, b.rows AS rows_new, b.rows - a.rows AS rows_delta, a.tokens AS tokens_old, "
            "b.tokens AS tokens_new, b.tokens - a.tokens AS tokens_delta, a.config_hash = b.config_hash AS same_config, "
            "a.selection AS selection_old, b.selection AS selection_new "
            "FROM releases a, releases b WHERE a.name=? AND a.version=? AND b.name=? AND b.version=?", p),
        "per source": cat.query(
            "SELECT coalesce(a.source, b.source) AS source, a.rows_kept AS kept_old, b.rows_kept AS kept_new, "
            "coalesce(b.rows_kept, 0) - coalesce(a.rows_kept, 0) AS kept_delta, a.rows_released AS released_old, "
            "b.rows_released AS released_new, coalesce(b.rows_released, 0) - coalesce(a.rows_released, 0) AS released_delta, "
            "a.tokens_released AS tokens_old, b.tokens_released AS tokens_new FROM (SELECT * FROM release_sources WHERE name=? AND version=?) a "
            "FULL JOIN (SELECT * FROM release_sources WHERE name=? AND version=?) b USING (source) ORDER BY source", p),
        "drop reasons": cat.query(
            "SELECT coalesce(a.source, b.source) AS source, coalesce(a.stage, b.stage) AS stage, "
            "coalesce(a.reason, b.reason) AS reason, a.rows AS rows_old, b.rows AS rows_new "
            "FROM (SELECT * FROM drop_reasons WHERE name=? AND version=?) a "
            "FULL JOIN (SELECT * FROM drop_reasons WHERE name=? AND version=?) b USING (source, stage, reason) "
            "WHERE a.rows IS DISTINCT FROM b.rows ORDER BY 1, 2, 3", p),
    }
