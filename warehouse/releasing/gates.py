"""Release gates: checks on a finished, not yet published release (``release.gates``).

``evaluate`` reads only the manifest the release step assembled (per-source accounting, drop
reasons, released rows) and the parent release's manifest, and returns a report: one check per
violation or warning, plus one passing summary per gate that found nothing. A failed gate stops
the publication (``GateFailed``) unless the run accepts it (``curate run --accept-gates``); the
report goes into the manifest (``gates``), the catalog (``release_gates``) and, for a stopped
release, ``releases/<name>/_rejected/<version>.json``.

Gates (schemas/gates.py has the defaults): ``min_rows`` (the release), ``min_source_rows`` (each
source), ``max_drop_rate`` (each rule on each source), ``max_drop_shift`` (each rule on each
source against the parent release of the same configuration), ``max_quarantine_rate`` (each
source). ``warn_drop_rate`` only warns.
"""
from __future__ import annotations

from collections.abc import Collection
from typing import Any

from schemas.gates import GatesConfig


class GateFailed(RuntimeError):
    """A release stopped by its gates; ``report`` holds every check, ``record`` where it is kept,
    ``report_path`` the HTML report of the rejected release once the flow wrote it (``with_report``)."""

    def __init__(self, name: str, version: str, report: dict[str, Any], record: str):
        self.name, self.version, self.report, self.record = name, version, report, record
        self.report_path: str | None = None
        fails = [c["message"] for c in report["checks"] if c["outcome"] == "fail"]
        super().__init__(f"release {name}/{version} was not published: {len(fails)} gate(s) failed\n  - "
                         + "\n  - ".join(fails)
                         + "\nFix the input or the pipeline, adjust release.gates, or publish it anyway with "
                           "`curate run PIPELINE --accept-gates`.")

    def with_report(self, path: str | None) -> GateFailed:
        """Name the rejected release's report in the message (and so in the run's record and log)."""
        if path:
            self.report_path = path
            self.args = (f"{self.args[0]}\nThe report of the rejected release (what it would have been, failed "
                         f"gates first): {path}",)
        return self


def _check(gate: str, outcome: str, message: str, source: str | None = None, rule: str | None = None,
           value: float | None = None, threshold: float | None = None) -> dict[str, Any]:
    return {"gate": gate, "outcome": outcome, "source": source, "rule": rule, "value": value,
            "threshold": threshold, "message": message}


def _rates(manifest: dict[str, Any]) -> dict[tuple[str, str], tuple[float, int, int]]:
    """(source, rule) -> (drop rate, rows dropped, rows in) for drops (not quarantines)."""
    rows_in = {s: int(v["rows_in"]) for s, v in manifest["sources"].items()}
    out = {}
    for d in manifest["drop_reasons"]:
        if str(d["reason"]).startswith("quarantined") or not rows_in.get(d["source"]):
            continue
        rule = f"{d['stage']}:{d['reason']}"
        n = int(d["rows"])
        out[(d["source"], rule)] = (n / rows_in[d["source"]], n, rows_in[d["source"]])
    return out


def _floor(cfg: GatesConfig, source: str) -> int | None:
    if cfg.min_source_rows is None:
        return None
    if isinstance(cfg.min_source_rows, dict):
        return cfg.min_source_rows.get(source, 1)
    return cfg.min_source_rows


def _size_gates(cfg: GatesConfig, manifest: dict[str, Any], optional: Collection[str]) -> list[dict[str, Any]]:
    out = []
    total = int(manifest["totals"]["rows"])
    if cfg.min_rows is not None:
        ok = total >= cfg.min_rows
        out.append(_check("min_rows", "pass" if ok else "fail",
                          f"the release has {total:,} rows (gates.min_rows: {cfg.min_rows:,})",
                          value=total, threshold=cfg.min_rows))
    failed = False
    for source, acc in manifest["sources"].items():
        floor = _floor(cfg, source)
        if floor is None or source in optional:
            continue
        got = int(manifest.get("released", {}).get(source, {}).get("rows", acc["rows_kept"]))
        if got < floor:
            failed = True
            out.append(_check("min_source_rows", "fail",
                              f"source {source} released {got:,} rows (floor {floor:,}): {acc['rows_in']:,} in, "
                              f"{acc['rows_kept']:,} kept, {acc['rows_dropped']:,} dropped, "
                              f"{acc['rows_quarantined']:,} quarantined", source=source, value=got, threshold=floor))
    if cfg.min_source_rows is not None and not failed:
        out.append(_check("min_source_rows", "pass", "every source released at least its floor"))
    return out


def _rate_gates(cfg: GatesConfig, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    big = {s for s, v in manifest["sources"].items() if int(v["rows_in"]) >= cfg.min_source_rows_in}
    rates = _rates(manifest)
    if cfg.max_drop_rate is not None:
        bad = [(k, v) for k, v in rates.items() if k[0] in big and v[0] > cfg.max_drop_rate]
        for (source, rule), (rate, n, rows_in) in bad:
            out.append(_check("max_drop_rate", "fail",
                              f"rule {rule} dropped {rate:.1%} of {source} ({n:,} of {rows_in:,} rows; "
                              f"ceiling {cfg.max_drop_rate:.0%})", source, rule, rate, cfg.max_drop_rate))
        if not bad:
            worst = max((v[0] for k, v in rates.items() if k[0] in big), default=0.0)
            out.append(_check("max_drop_rate", "pass", f"no rule dropped more than {worst:.1%} of a source",
                              value=worst, threshold=cfg.max_drop_rate))
    if cfg.max_quarantine_rate is not None:
        failed = False
        for source in sorted(big):
            acc = manifest["sources"][source]
            rate = int(acc["rows_quarantined"]) / int(acc["rows_in"])
            if rate > cfg.max_quarantine_rate:
                failed = True
                out.append(_check("max_quarantine_rate", "fail",
                                  f"{rate:.1%} of {source} was quarantined ({acc['rows_quarantined']:,} of "
                                  f"{acc['rows_in']:,} rows; ceiling {cfg.max_quarantine_rate:.0%}): see "
                                  "`curate stats` (quarantine)", source, None, rate, cfg.max_quarantine_rate))
        if not failed:
            out.append(_check("max_quarantine_rate", "pass", "no source above the quarantine ceiling"))
    if cfg.warn_drop_rate is not None:
        for (source, rule), (rate, n, rows_in) in sorted(rates.items()):
            if rate > cfg.warn_drop_rate and (cfg.max_drop_rate is None or rate <= cfg.max_drop_rate
                                              or source not in big):
                out.append(_check("warn_drop_rate", "warn",
                                  f"rule {rule} removes {rate:.1%} of {source} ({n:,} of {rows_in:,} rows); if that "
                                  "is not intended, see the README's table of filter rules and defaults",
                                  source, rule, rate, cfg.warn_drop_rate))
    return out


def _shift_gate(cfg: GatesConfig, manifest: dict[str, Any], parent: dict[str, Any] | None) -> list[dict[str, Any]]:
    if cfg.max_drop_shift is None or parent is None:
        return []
    if parent.get("curation_hash") != manifest.get("curation_hash"):
        return [_check("max_drop_shift", "skipped", f"the parent release {parent['version']} was built from another "
                       "pipeline configuration: drop rates are not compared")]
    out = []
    now, before = _rates(manifest), _rates(parent)
    big = {s for s, v in manifest["sources"].items() if int(v["rows_in"]) >= cfg.min_source_rows_in
           and int(parent["sources"].get(s, {}).get("rows_in", 0)) >= cfg.min_source_rows_in}
    for source, rule in sorted(set(now) | set(before)):
        if source not in big:
            continue
        a, b = before.get((source, rule), (0.0, 0, 0))[0], now.get((source, rule), (0.0, 0, 0))[0]
        if abs(b - a) > cfg.max_drop_shift:
            out.append(_check("max_drop_shift", "fail",
                              f"rule {rule} dropped {b:.1%} of {source}, {a:.1%} in the parent release "
                              f"{parent['version']}: {abs(b - a) * 100:.0f} points off (at most "
                              f"{cfg.max_drop_shift * 100:.0f})", source, rule, b - a, cfg.max_drop_shift))
    if not out:
        out.append(_check("max_drop_shift", "pass", f"drop rates within {cfg.max_drop_shift * 100:.0f} points of "
                          f"the parent release {parent['version']}"))
    return out


def evaluate(cfg: GatesConfig, manifest: dict[str, Any], parent: dict[str, Any] | None,
             optional: Collection[str] = ()) -> dict[str, Any]:
    """The gate report of a release (see the module doc); ``optional``: sources exempt from floors."""
    checks = _size_gates(cfg, manifest, optional) + _rate_gates(cfg, manifest) + _shift_gate(cfg, manifest, parent)
    return {"passed": not any(c["outcome"] == "fail" for c in checks), "accepted": False, "checks": checks,
            "parent": parent["version"] if parent else None}


def warnings(report: dict[str, Any]) -> list[str]:
    return [c["message"] for c in report.get("checks", []) if c["outcome"] == "warn"]


def failures(report: dict[str, Any]) -> list[str]:
    return [c["message"] for c in report.get("checks", []) if c["outcome"] == "fail"]
