"""Catalog rows for what a release step decided: gate checks and text-transform statistics.

Both come from lake records (the manifest's ``gates`` and ``text.steps``, or a rejected release's
``_rejected/<version>.json``), so the catalog tables ``release_gates`` and ``release_text`` can be
rebuilt from the lake.
"""
from __future__ import annotations

from typing import Any


def gate_rows(record: dict[str, Any], run_id: str | None, recorded_at: Any) -> list[dict[str, Any]]:
    """``release_gates`` rows of a manifest or rejected-release record."""
    report = record.get("gates") or {}
    return [{"name": record["name"], "version": record["version"], "run_id": run_id or record.get("run_id"),
             "gate": c["gate"], "outcome": c["outcome"], "source": c.get("source"), "rule": c.get("rule"),
             "value": c.get("value"), "threshold": c.get("threshold"), "message": c["message"],
             "published": not (report.get("passed") is False and not report.get("accepted")),
             "accepted": bool(report.get("accepted")), "recorded_at": recorded_at}
            for c in report.get("checks", [])]


def text_rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """``release_text`` rows: per source and chain step, what the step changed in the kept rows."""
    steps = (manifest.get("text") or {}).get("steps", [])
    return [{"name": manifest["name"], "version": manifest["version"], "source": s["source"], "step": s["step"],
             "stage": s["stage"], "column_name": s["column"], "docs": s["docs"], "docs_changed": s["docs_changed"],
             "chars_in": s["chars_in"], "chars_removed": s["chars_removed"], "lines_in": s["lines_in"],
             "lines_removed": s["lines_removed"]} for s in steps]
