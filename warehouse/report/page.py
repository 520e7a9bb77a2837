"""Render the report's data (warehouse/report/sections.py) as one self-contained HTML page.

The page needs nothing but itself: styles inline, plots as inline SVG, no scripts to run, no
fonts or files to fetch, so it opens from disk, from object storage or as a Prefect link. All
numbers are also embedded as JSON (``<script type="application/json" id="curate-report-data">``)
for tools and tests; example texts appear only in the HTML.
"""
from __future__ import annotations

import json
import math
from html import escape
from typing import Any

from warehouse.report import svg

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fff}
header{background:#1f2937;color:#f9fafb;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header .meta{color:#cbd5e1;font-size:13px}nav{padding:8px 28px;border-bottom:1px solid #e5e7eb;position:sticky;top:0;
background:#fff;z-index:1}nav a{margin-right:14px;color:#0072B2;text-decoration:none;font-size:13px}
main{padding:8px 28px 40px;max-width:1500px}h2{margin:28px 0 8px;font-size:18px;border-bottom:1px solid #e5e7eb;
padding-bottom:4px}h3{margin:14px 0 4px;font-size:14px}.grid{display:flex;flex-wrap:wrap;gap:14px 22px}
.card{border:1px solid #e5e7eb;border-radius:6px;padding:8px 10px}.card h3{margin-top:0}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{padding:3px 8px;border-bottom:1px solid #eee;
text-align:right}th{background:#f8fafc;font-weight:600}td.l,th.l{text-align:left}
code{background:#f3f4f6;padding:1px 4px;border-radius:3px;font-size:12px}.sel{white-space:pre-wrap;display:block;
padding:6px 8px}details{margin:4px 0;border:1px solid #eee;border-radius:5px;padding:4px 8px}summary{cursor:pointer}
pre.doc{white-space:pre-wrap;background:#fafafa;border-left:3px solid #D55E00;margin:6px 0;padding:6px 8px;
font-size:12px;max-height:12em;overflow:auto}.muted{color:#6b7280;font-size:12px}.note{color:#92400e}
.notes{padding:6px 28px}.rejected{margin:0;padding:10px 28px;background:#fef2f2;border-bottom:3px solid #b91c1c;color:#7f1d1d}
.rejected h2{border:0;margin:4px 0;color:#b91c1c}.rej{background:#b91c1c;color:#fff;padding:1px 8px;border-radius:4px}
.legend span{display:inline-block;margin-right:12px;font-size:12px}.legend i{display:inline-block;width:10px;
height:10px;margin-right:4px;vertical-align:-1px}.num-pos{color:#047857}.num-neg{color:#b91c1c}
"""


def _num(v: Any) -> str:
    return "–" if v is None else f"{v:,}" if isinstance(v, int) else escape(str(v))


def _table(cols: list[str], body: list[list[Any]], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{escape(c)}</th>' for i, c in enumerate(cols))
    trs = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{_num(v) if not isinstance(v, _Raw) else v}'
                                   f"</td>" for i, v in enumerate(r)) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>"


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _delta(v: int | None) -> _Raw:
    if v is None:
        return _Raw("–")
    cls = "num-pos" if v > 0 else "num-neg" if v < 0 else ""
    return _Raw(f'<span class="{cls}">{v:+,}</span>')


def render(data: dict[str, Any]) -> str:
    rel = data["release"]
    sources = list(data["accounting"])
    colours = {s: svg.colour(i) for i, s in enumerate(sources)}
    parts = [
        _header(rel),
        _rejected(data) if rel.get("rejected") else "",
        '<nav><a href="#accounting">Accounting</a><a href="#gates">Gates</a><a href="#drops">Drop reasons</a><a href="#scores">Scores</a>'
        '<a href="#duplicates">Duplicates</a><a href="#mixture">Mixture</a><a href="#diff">Changes</a>'
        '<a href="#timings">Timings</a></nav><main>',
        _accounting(data),
        _gates(data),
        _drops(data),
        _scores(data, colours),
        _duplicates(data),
        _mixture(data, colours),
        _diff(data),
        _timings(data),
        f'<p class="muted">Made by curate {escape(str(data.get("code_version", "")))} at '
        f'{escape(str(data.get("generated_at", "")))} from the lake {escape(str(data.get("lake", "")))}. '
        "All numbers on this page are in the JSON block <code>#curate-report-data</code>.</p></main>",
    ]
    # No "<" inside the script element: the JSON cannot end it or open another.
    blob = json.dumps(_finite(data), default=str, sort_keys=True, allow_nan=False).replace("<", "\\u003c")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>curate report · "
            f"{escape(rel['name'])}/{escape(rel['version'])}{' · REJECTED' if rel.get('rejected') else ''}</title><style>{CSS}</style></head><body>"
            + "".join(parts)
            + f'<script type="application/json" id="curate-report-data">{blob}</script></body></html>')


def _finite(v: Any) -> Any:
    """NaN and infinities (not JSON) as null."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _header(rel: dict[str, Any]) -> str:
    notes = "".join(f'<div class="note notes">{escape(n)}</div>' for n in rel.get("notes") or [])
    state = ' <span class="rej">REJECTED</span>' if rel.get("rejected") else ""
    would = "would have released " if rel.get("rejected") else ""
    return (f"<header><h1>Release {escape(rel['name'])}/{escape(rel['version'])}{state}</h1><div class=\"meta\">"
            f"{would}{rel['rows']:,} documents · {rel['tokens']:,} tokens · {rel['shards']} shard{'s' if rel['shards'] != 1 else ''} · "
            f"{rel['bytes'] / 1e6:,.1f} MB · created {escape(str(rel.get('created_at') or ''))} · pipeline "
            f"{escape(str(rel.get('pipeline') or ''))} · run {escape(str(rel.get('run_id') or ''))} · parent "
            f"{escape(str(rel.get('parent') or 'none'))}</div></header>"
            f"{notes}")


def _rejected(data: dict[str, Any]) -> str:
    """The banner of a release its gates stopped: the failed gates, and what to do."""
    g = data.get("gates") or {}
    fails = [c for c in g.get("checks") or [] if c.get("outcome") == "fail"]
    items = "".join(f"<li><b>{escape(str(c.get('gate')))}</b>: {escape(str(c.get('message')))}</li>" for c in fails)
    rel = data["release"]
    return (f'<section class="rejected" id="rejected"><h2>REJECTED: release {escape(rel["name"])}/'
            f'{escape(rel["version"])} was not published; {len(fails)} gate{"s" if len(fails) != 1 else ""} failed</h2>'
            f"<ul>{items}</ul><p>Fix the input or the pipeline, adjust <code>release.gates</code>, or publish it "
            "anyway with <code>curate run PIPELINE --accept-gates</code>. The sections below show what this release "
            "would have been.</p></section>")


def _accounting(data: dict[str, Any]) -> str:
    acc = data["accounting"]
    rows = [[s, a["rows_in"], a["rows_dropped"], a["rows_quarantined"], a["rows_kept"], a["rows_released"],
             a["tokens_released"]] for s, a in acc.items()]
    tot = [sum(r[i] for r in rows) for i in range(1, 7)]
    table = _table(["source", "rows in", "dropped", "quarantined", "kept", "released", "tokens released"],
                   rows + [["all", *tot]])
    charts = []
    for src, steps in data["waterfall"].items():
        plot = svg.waterfall([svg.Step(s["label"], int(s["rows"]), s["kind"]) for s in steps], f"waterfall {src}")
        charts.append(f'<div class="card"><h3>{escape(src)}</h3>{plot}</div>')
    legend = "".join(f'<span><i style="background:{c}"></i>{k}</span>' for k, c in svg.KIND_COLOURS.items())
    return (f'<h2 id="accounting">Accounting: where every document went</h2>'
            f'<p>Selection: <code class="sel">{escape(data["release"]["selection"])}</code></p>{table}'
            f'<p class="muted">Each row of a waterfall takes documents off what remains, in the order the release '
            f'decides: quarantine, empty texts, then the selection\'s filters in pipeline order (a document failing '
            f'several filters counts for the first). Released counts repeats planned by the mixture.</p>'
            f'<div class="legend">{legend}</div><div class="grid">{"".join(charts)}</div>')


def _drops(data: dict[str, Any]) -> str:
    sources = list(data["accounting"])
    body = [[d["stage"], d["reason"], *[d["per_source"].get(s, 0) for s in sources], d["rows"]]
            for d in data["drop_reasons"]]
    table = _table(["stage", "reason", *sources, "all"], body, left=2)
    blocks = []
    for g in data["examples"]:
        exs = "".join(
            f'<div class="muted">{escape(e["source"])} · '
            + (f'<code>{escape(e["id"])}</code>' if e.get("id") else escape(e.get("where") or ""))
            + (f' · {escape(e["reason"])}' if e.get("reason") and e["reason"] != g["reason"] else "")
            + f'</div><pre class="doc" data-id="{escape(e.get("id") or "")}">{escape(e["text"])}</pre>'
            for e in g["examples"])
        blocks.append(f'<details><summary><b>{escape(g["stage"])}</b>: {escape(g["reason"])} '
                      f'<span class="muted">({g["rows"]:,} documents; {len(g["examples"])} shown)</span></summary>'
                      f'{exs}</details>')
    return (f'<h2 id="drops">Drop reasons, with examples</h2>{table}'
            f'<p class="muted">Examples are drawn at random (seed {data.get("seed", 0)}): the first '
            f'{data.get("example_chars", 300)} characters of each. Open a document with '
            f'<code>curate show ID</code>; draw more with <code>curate sample --reason REASON -n 20</code>.</p>'
            f'{"".join(blocks) or "<p>Nothing was dropped.</p>"}')


def _scores(data: dict[str, Any], colours: dict[str, str]) -> str:
    cards, constants = [], []
    for h in data["histograms"]:
        name = f"{h['stage']}.{h['column']}"
        if h["kind"] == "constant":
            constants.append(f"<code>{escape(name)}</code> = {svg.fmt(h['value'])} ({h['n']:,} values)")
            continue
        series = [svg.Series(f"{s} (n={sum(c):,})", [v / max(sum(c), 1) for v in c], colours.get(s, "#777"))
                  for s, c in h["counts"].items()]
        marks = [(t["value"], f"{t['op']} {svg.fmt(t['value'])}") for t in h["thresholds"]]
        plot = svg.step_histogram(h["edges"], series, f"histogram of {name}", name, marks, log_x=h["log"])
        legend = "".join(f'<span><i style="background:{colours.get(s, "#777")}"></i>{escape(s)} '
                         f'({sum(c):,})</span>' for s, c in h["counts"].items())
        cards.append(f'<div class="card"><h3>{escape(name)}</h3>{plot}<div class="legend">{legend}</div></div>')
    const = f'<p class="muted">Constant columns: {", ".join(constants)}.</p>' if constants else ""
    return (f'<h2 id="scores">Scores and measurements</h2><p class="muted">Share of each source\'s documents per '
            f'bin (documents with a value; sampled scorers cover only their sample). Red dashed lines: thresholds '
            f'of the selection.</p><div class="grid">{"".join(cards)}</div>{const}')


def _size_label(s: int) -> str:
    return str(s)


def _duplicates(data: dict[str, Any]) -> str:
    out = ['<h2 id="duplicates">Duplicate clusters</h2>']
    if not data["duplicates"]:
        out.append("<p>No deduplication stage in this release.</p>")
    for d in data["duplicates"]:
        sizes = d["size_counts"]
        binned = _size_bins(sizes)
        plot = svg.count_bars([b[0] for b in binned], [b[1] for b in binned], f"cluster sizes {d['stage']}",
                              "documents per cluster") if binned else ""
        rows = []
        for c in d["largest"]:
            members = "".join(f'<div>{"★ " if m["survivor"] else ""}<span class="muted">{escape(m["source"])} '
                              f'{escape(m["id"][:12])}</span> {escape(m["first_line"])}</div>' for m in c["members"])
            more = c["size"] - len(c["members"])
            rows.append(f'<tr><td>{c["size"]:,}</td><td class="l">{members}'
                        f'{f"<div class=muted>… {more:,} more</div>" if more > 0 else ""}</td></tr>')
        table = (f'<table><thead><tr><th>size</th><th class="l">members (★ survivor): source, id, first line'
                 f'</th></tr></thead><tbody>{"".join(rows)}</tbody></table>') if rows else "<p>No clusters.</p>"
        out.append(f'<h3>{escape(d["stage"])}: {d["clusters"]:,} clusters, {d["documents_in_clusters"]:,} documents, '
                   f'{d["duplicates"]:,} duplicates beyond their survivors</h3><div class="grid"><div>{plot}</div>'
                   f'<div>{table}</div></div>')
    return "".join(out)


def _size_bins(sizes: list[list[int]] | list[tuple[int, int]]) -> list[tuple[str, int]]:
    """Cluster sizes 2..9 one by one, then powers-of-ten ranges."""
    bins: dict[str, int] = {}
    order: list[str] = []
    for s, c in sizes:
        if s < 10:
            label = str(s)
        else:
            lo = 10 ** int(math.log10(s))
            label = f"{lo}-{lo * 10 - 1}"
        if label not in bins:
            order.append(label)
            bins[label] = 0
        bins[label] += c
    return [(b, bins[b]) for b in order]


def _mixture(data: dict[str, Any], colours: dict[str, str]) -> str:
    out = ['<h2 id="mixture">Mixture and curriculum</h2>']
    mix = data.get("mixture")
    if not mix:
        out.append("<p>No mixture: every kept document is released once.</p>")
    else:
        out.append(f'<p>Method <code>{escape(str(mix["method"]))}</code>. Planned weight of each source per phase next '
                   f'to the share of the tokens that phase released.</p><div class="grid">')
        for ph in mix["phases"]:
            srcs = sorted(set(ph["planned"]) | set(ph["released"]))
            total = sum(v["tokens"] for v in ph["released"].values()) or 1
            plot = svg.grouped_bars(srcs, [
                svg.Series("planned weight", [float(ph["planned"].get(s, 0)) for s in srcs], svg.PALETTE[8]),
                svg.Series("released tokens", [ph["released"].get(s, {}).get("tokens", 0) / total for s in srcs],
                           svg.PALETTE[0])], f"mixture phase {ph['name']}")
            out.append(f'<div class="card"><h3>phase {escape(str(ph["name"]))} ({total:,} tokens)</h3>{plot}</div>')
        out.append("</div>")
    cur = data.get("curriculum")
    if cur:
        xs = [(b["start_row"] + b["end_row"]) / 2 for b in cur["buckets"]]
        ys = [b["mean"] for b in cur["buckets"]]
        marks = [(p["start_row"], str(p["name"])) for p in cur["phases"] if p["start_row"] > 0]
        plot = svg.line_chart(xs, ys, f"curriculum {cur['column']}", "position in the release (rows)",
                              f"mean {cur['column']}", marks, width=760)
        out.append(f'<h3>Curriculum ({escape(str(cur["kind"]))} by <code>{escape(cur["column"])}</code>): mean per '
                   f'1% of the release order</h3>{plot}')
    return "".join(out)


def _diff(data: dict[str, Any]) -> str:
    d = data.get("diff")
    out = ['<h2 id="diff">Changes since the parent release</h2>']
    if not d:
        out.append("<p>This release has no parent release.</p>")
        return "".join(out)
    out.append(f'<p>Parent <code>{escape(d["old"])}</code>.</p>')
    per = d["per_source"]
    out.append(_table(["source", "released before", "released now", "change", "tokens before", "tokens now"],
                      [[s, v["rows_old"], v["rows_new"], _delta(v["rows_delta"]), v["tokens_old"], v["tokens_new"]]
                       for s, v in per.items()]))
    for what, title in (("added", "Documents added"), ("removed", "Documents removed")):
        x = d["docs"][what]
        reasons = _table(["reason", "documents"], [[r["reason"], r["documents"]] for r in x["per_reason"][:15]])
        sample = "".join(f'<div class="muted">{escape(s["source"])} · <code>{escape(s["id"])}</code> · '
                         f'{escape(s["why"])}</div><pre class="doc">{escape(s["text"])}</pre>' for s in x["sample"])
        out.append(f'<details open><summary><b>{title}</b>: {x["documents"]:,} documents</summary>{reasons}'
                   f'{sample}</details>')
    if d.get("drop_reasons"):
        out.append("<h3>Drop reasons that changed</h3>" + _table(
            ["source", "stage", "reason", "before", "now"],
            [[r["source"], r["stage"], r["reason"], r["rows_old"], r["rows_new"]] for r in d["drop_reasons"]], left=3))
    return "".join(out)


GATE_COLUMNS = ["outcome", "gate", "source", "rule", "message", "value", "threshold"]


def _gates(data: dict[str, Any]) -> str:
    """The release's gates (failures and warnings first; passes folded away) and what its text
    transforms removed, per source and step."""
    g, steps = data.get("gates"), data.get("text_steps") or []
    out = ['<h2 id="gates">Gates and text transforms</h2>']
    if not g:
        out.append('<p class="muted">This release was made without gates.</p>')
    else:
        state = ("passed" if g["passed"] else "failed, published anyway (--accept-gates)" if g["accepted"]
                 else "failed")
        counts = ", ".join(f"{n} {o}" for o, n in g["outcomes"].items() if n)
        out.append(f"<p>Gates <b>{escape(state)}</b> ({escape(counts) or 'no checks'}).</p>")
        rows = [[c.get("outcome"), c.get("gate"), c.get("source"), c.get("rule"), c.get("message"),
                 _fmt_num(c.get("value")), _fmt_num(c.get("threshold"))] for c in g["checks"]]
        bad = [r for r in rows if r[0] in ("fail", "warn")]
        if bad:
            out.append(_table(GATE_COLUMNS, bad, left=5))
        rest = [r for r in rows if r[0] not in ("fail", "warn")]
        if rest:
            out.append(f"<details><summary>{len(rest)} other checks</summary>"
                       + _table(GATE_COLUMNS, rest, left=5)
                       + "</details>")
    if steps:
        labels = [f"{s['source']} · {s['stage']}" for s in steps]
        share = [float(s.get("chars_removed") or 0) / max(1, int(s.get("chars_in") or 0)) for s in steps]
        out.append("<h3>Text transforms (<code>release.text</code>): share of characters removed</h3>" + svg.grouped_bars(
            labels, [svg.Series("characters removed", share, svg.PALETTE[1])], "share of characters removed per step"))
        out.append(_table(["source", "step", "column", "documents", "changed", "chars in", "chars removed",
                           "lines removed"],
                          [[s["source"], s["step"], f"{s['stage']}.{s['column']}", s.get("docs"), s.get("docs_changed"),
                            s.get("chars_in"), s.get("chars_removed"), s.get("lines_removed")] for s in steps], left=3))
    return "".join(out)


def _fmt_num(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v


def _timings(data: dict[str, Any]) -> str:
    t = data.get("timings") or []
    if not t:
        return '<h2 id="timings">Stage timings</h2><p class="muted">No timings recorded for this run.</p>'
    labels = [str(r["stage"]) for r in t]
    plot = svg.grouped_bars(labels, [svg.Series("fit", [float(r["fit_seconds"] or 0) for r in t], svg.PALETTE[2]),
                                     svg.Series("apply", [float(r["apply_seconds"] or 0) for r in t], svg.PALETTE[0])],
                            "stage seconds: fit and apply", value_fmt="num", width=620)
    table = _table(["stage", "fit s", "fit", "apply s", "shards computed", "skipped", "failed", "rows"],
                   [[r["stage"], _secs(r["fit_seconds"]), r["fit_status"], _secs(r["apply_seconds"]),
                     r["shards_computed"], r["shards_skipped"], r["shards_failed"], r["rows"]] for r in t], left=1)
    return (f'<h2 id="timings">Stage timings of run {escape(str(data["release"].get("run_id")))}</h2>'
            '<p class="muted">From the catalog\'s <code>stage_runs</code>: a global stage\'s fit (its wall time; '
            '<i>reused</i>: a pinned model) and the apply, summed over the shards (worker seconds: with parallel '
            'workers more than the time that passed).</p>' + plot + table)


def _secs(v: float | None) -> str | None:
    return None if v is None else f"{v:.2f}"  # None: the table's dash