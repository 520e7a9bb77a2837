"""A release's per-source accounting in a few lines: in -> dropped by top reasons -> released.

Read from the catalog (``release_sources`` and ``drop_reasons``), for the end of ``curate run``
and the Prefect run summary. ``markdown_summary`` renders a run's summary dict as the markdown
the Prefect UI shows.
"""
from __future__ import annotations

from typing import Any

from warehouse.catalog import Catalog


def source_accounting(cat: Catalog, name: str, version: str, top: int = 3) -> list[dict[str, Any]]:
    """Per source: rows in, quarantined, kept, released, tokens released and the ``top`` drop
    reasons (``stage: reason``, rows), largest first; one row per source of the release."""
    with cat.held(read_only=True):  # both queries on one connection
        cols, got = cat.query(
            "SELECT source, rows_in, rows_dropped, rows_quarantined, rows_kept, rows_released, tokens_released "
            "FROM release_sources WHERE name = ? AND version = ? ORDER BY source", [name, version])
        _, drops = cat.query(
            "SELECT source, stage, reason, rows FROM drop_reasons WHERE name = ? AND version = ? "
            "AND reason NOT LIKE 'quarantined%' ORDER BY rows DESC, stage, reason", [name, version])
    out = [dict(zip(cols, r)) for r in got]
    for row in out:
        mine = [(_why(st, re), n) for s, st, re, n in drops if s == row["source"]]
        row["top_drops"] = mine[:top]
        row["other_drops"] = sum(n for _, n in mine[top:])
    return out


def _why(stage: str, reason: str) -> str:
    """``c4: too_few_sentences``, but just ``c4_too_few_sentences`` when the reason names its stage."""
    return reason if stage in ("select", "") or reason.startswith(stage) else f"{stage}: {reason}"


def accounting_line(row: dict[str, Any]) -> str:
    """``1,274 in → −412 langid: …, −300 … → 296 kept → 310 released``"""
    drops = ", ".join(f"−{n:,} {why}" for why, n in row["top_drops"])
    if row["other_drops"]:
        drops += f", −{row['other_drops']:,} other"
    q = f", −{row['rows_quarantined']:,} quarantined" if row["rows_quarantined"] else ""
    return (f"{row['rows_in']:,} in → {drops or 'nothing dropped'}{q} → {row['rows_kept']:,} kept → "
            f"{row['rows_released']:,} released ({row['tokens_released']:,} tokens)")


def _md_table(cols: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        s = f"{v:,}" if isinstance(v, int) else "" if v is None else str(v)
        return s.replace("|", "\\|").replace("\n", " ")
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows])


def markdown_summary(summary: dict[str, Any], accounting: list[dict[str, Any]],
                     timings: list[dict[str, Any]]) -> str:
    """The run as markdown: release, per-source accounting, stages (with fit/apply seconds), ingest."""
    rel = summary["release"]
    state = "written" if rel.get("created") else "unchanged (identical to an existing release)"
    report = summary.get("report") or {}
    lines = [f"# Release `{rel['name']}/{rel['version']}` ({state})",
             f"**{rel['rows']:,} documents**, {rel['tokens']:,} tokens, {rel['shards']} shard(s). "
             f"Run `{summary['run_id']}`; lake `{summary['lake']}`.",
             f"Report: `{report['path']}`" if report.get("path") else "Report: not written (see the run's log).",
             "", "## Where the documents went",
             _md_table(["source", "in", "dropped (top reasons)", "quarantined", "kept", "released", "tokens released"],
                       [[a["source"], a["rows_in"], "; ".join(f"{why} {n:,}" for why, n in a["top_drops"])
                         + (f"; other {a['other_drops']:,}" if a["other_drops"] else ""), a["rows_quarantined"],
                         a["rows_kept"], a["rows_released"], a["tokens_released"]] for a in accounting])]
    secs: dict[tuple[str, str], float] = {}
    for t in timings:
        secs[(t["stage"], t["phase"])] = secs.get((t["stage"], t["phase"]), 0.0) + float(t["seconds"] or 0)
    lines += ["", "## Stages",
              _md_table(["stage", "computed", "skipped", "failed", "row errors", "fit s", "apply s"],
                        [[s["stage"], s.get("computed"), s.get("skipped"), s.get("failed"), s.get("row_errors"),
                          _secs(secs.get((s["stage"], "fit"))), _secs(secs.get((s["stage"], "apply")))]
                         for s in summary.get("stages") or []]),
              "", "## Ingest",
              _md_table(["source", "files", "rows in", "rows written", "quarantined"],
                        [[i["source"], i.get("files"), i.get("rows_in"), i.get("rows_written"),
                          i.get("rows_quarantined")] for i in summary.get("ingest") or []])]
    return "\n".join(lines) + "\n"


def _secs(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"
