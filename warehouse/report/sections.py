"""The numbers behind each section of the report, as plain dicts (also embedded in the page as JSON).

Every aggregate runs in DuckDB over the release's files (annotation shards, release shards, the
fates file), so a release of any size is streamed, never loaded: what comes back is a few
hundred numbers per section. Texts are read only for the handful of documents shown.
"""
from __future__ import annotations

import math
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from engines import storage
from warehouse.report.context import ReleaseContext, thresholds
from warehouse.report.duck import files_sql, lit, q, register, rows
from warehouse.report.fates import as_matches

# Columns that identify rather than measure (never histogrammed).
ID_COLUMNS = {"cluster_id", "cluster", "sem_group", "survivor_id", "nearest_id", "src_offset"}
# Sizes of duplicate groups: shown in the duplicates section.
GROUP_SIZE_COLUMNS = {"dup_group_size", "cluster_size", "sem_group_size"}
BINS = 40
EMPTIED = "empty_after_text_transforms"  # the release's reason for a selected row whose released text is empty


# --- accounting ---------------------------------------------------------------------------------
def accounting(ctx: ReleaseContext) -> dict[str, dict[str, int]]:
    """Per source: rows in, kept, dropped, quarantined, released (with repeats) and tokens, from the manifest."""
    m = ctx.manifest
    released = m.get("released") or {}
    out = {}
    for src, v in (m.get("sources") or {}).items():
        rel = released.get(src) or {}
        out[src] = {"rows_in": int(v.get("rows_in", 0)), "rows_kept": int(v.get("rows_kept", 0)),
                    "rows_dropped": int(v.get("rows_dropped", 0)), "rows_quarantined": int(v.get("rows_quarantined", 0)),
                    "tokens_kept": int(v.get("tokens_kept", 0)),
                    "rows_released": int(rel.get("rows", v.get("rows_kept", 0))),
                    "tokens_released": int(rel.get("tokens", v.get("tokens_kept", 0)))}
    return out


def waterfalls(ctx: ReleaseContext) -> dict[str, list[dict[str, Any]]]:
    """Per source, the steps from rows in to rows released, in the order the release decides:
    quarantine first (ingest, then stage errors), empty texts, then each filter of the selection
    in pipeline order (filters that dropped nothing too), the selection itself, kept, released."""
    acc = accounting(ctx)
    drops = ctx.manifest.get("drop_reasons") or []
    selected = {t.split(".")[0] for t in _selection_columns(ctx)}
    order = [s.name for s in ctx.stages if s.is_filter and s.name in selected]
    out: dict[str, list[dict[str, Any]]] = {}
    for src, a in acc.items():
        mine = [d for d in drops if d.get("source") == src]
        by_stage: dict[str, int] = {}
        reasons: dict[str, list[tuple[str, int]]] = {}
        q_ingest = q_stage = 0
        for d in mine:
            n, stage, reason = int(d.get("rows", 0)), str(d.get("stage") or ""), str(d.get("reason") or "")
            if reason.startswith("quarantined"):
                if stage == "ingest":
                    q_ingest += n
                else:
                    q_stage += n
                continue
            if stage == "release" and reason == EMPTIED:
                stage = EMPTIED  # after the selection: the text transforms left nothing
            by_stage[stage] = by_stage.get(stage, 0) + n
            reasons.setdefault(stage, []).append((reason, n))
        steps: list[dict[str, Any]] = [{"label": "rows in", "kind": "in", "rows": a["rows_in"]}]
        if q_ingest:
            steps.append({"label": "quarantined at ingest", "kind": "quarantine", "rows": q_ingest})
        if q_stage:
            steps.append({"label": "quarantined (stage errors)", "kind": "quarantine", "rows": q_stage})
        if by_stage.get("release"):
            steps.append({"label": "empty text", "kind": "drop", "rows": by_stage.pop("release")})
        emptied = by_stage.pop(EMPTIED, 0)
        for stage in order + sorted(s for s in by_stage if s not in order and s != "select") + ["select"]:
            n = by_stage.get(stage, 0)
            if stage == "select" and not n:
                continue
            top = sorted(reasons.get(stage, []), key=lambda r: -r[1])[:3]
            steps.append({"label": "selection (other)" if stage == "select" else stage, "kind": "drop", "rows": n,
                          "reasons": [{"reason": r, "rows": k} for r, k in top]})
        if emptied:
            steps.append({"label": "empty after text transforms", "kind": "drop", "rows": emptied})
        steps.append({"label": "kept", "kind": "kept", "rows": a["rows_kept"]})
        steps.append({"label": "released (with repeats)", "kind": "released", "rows": a["rows_released"]})
        out[src] = steps
    return out


def _selection_columns(ctx: ReleaseContext) -> set[str]:
    import re
    return {m.group(0) for m in re.finditer(r"\b[A-Za-z_][\w]*\.[A-Za-z_]\w*", ctx.selection)}


def drop_table(ctx: ReleaseContext) -> list[dict[str, Any]]:
    """Drop reasons (stage, reason) with rows per source and in all, largest first."""
    agg: dict[tuple[str, str], dict[str, int]] = {}
    for d in ctx.manifest.get("drop_reasons") or []:
        key = (str(d.get("stage") or ""), str(d.get("reason") or ""))
        per = agg.setdefault(key, {})
        per[d["source"]] = per.get(d["source"], 0) + int(d.get("rows", 0))
    out = [{"stage": k[0], "reason": k[1], "rows": sum(v.values()), "per_source": v} for k, v in agg.items()]
    return sorted(out, key=lambda r: (-r["rows"], r["stage"], r["reason"]))


# --- examples -----------------------------------------------------------------------------------
def examples(ctx: ReleaseContext, con: duckdb.DuckDBPyConnection, fates: str, per_reason: int = 5, seed: int = 0,
             chars: int = 300, max_reasons: int = 60, known: dict[tuple[str, int], str] | None = None
             ) -> list[dict[str, Any]]:
    """For each (stage, reason) of dropped or quarantined documents, ``per_reason`` of them drawn
    at random (seeded: the order of md5(seed, id)) with their first ``chars`` characters.
    Quarantine reasons are error messages; they are grouped per stage. ``known``: raw texts
    already in hand (see ``duplicates``)."""
    picked = rows(con, f"""
        WITH f AS (
          SELECT *, CASE WHEN fate = 'quarantined' THEN 'quarantined' ELSE reason END AS grp
          FROM read_parquet({lit(fates)}) WHERE fate != 'kept'),
        n AS (SELECT stage, grp, count(*) AS total FROM f GROUP BY ALL),
        r AS (SELECT f.*, row_number() OVER (PARTITION BY f.stage, f.grp ORDER BY md5(? || ':' || f.id)) AS k FROM f)
        SELECT r.id, r.source, r.raw, r."row", r.fate, r.stage, r.reason, r.grp, n.total
        FROM r JOIN n USING (stage, grp) WHERE k <= ? ORDER BY n.total DESC, r.stage, r.grp, r.k""",
                  [str(seed), per_reason])
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    matches = as_matches(picked, chars, known)
    for r, m in zip(picked, matches):
        g = groups.setdefault((r["stage"], r["grp"]), {"stage": r["stage"], "reason": r["grp"], "rows": int(r["total"]),
                                                        "examples": []})
        g["examples"].append({"id": m.id, "source": m.source, "reason": m.reason, "text": m.text})
    out = list(groups.values())[:max_reasons]
    out += ingest_quarantine_examples(ctx, per_reason, chars)
    return out


def ingest_quarantine_examples(ctx: ReleaseContext, per_source: int, chars: int) -> list[dict[str, Any]]:
    """Rows that could not be read at ingest (they have no id): file, offset, error and raw bytes."""
    exs: list[dict[str, Any]] = []
    total = 0
    for src in ctx.sources:
        for marker in ctx.lake.ingest_markers(src):
            path = marker.get("quarantine_file")
            if not path or not storage.exists(path):
                continue
            total += int(marker.get("rows_quarantined") or 0)
            if sum(e["source"] == src for e in exs) >= per_source:
                continue
            fs, p = storage.fs_and_path(path)
            with fs.open(p, "rb") as f:
                t = pq.read_table(f, columns=["file", "offset", "error", "raw"]).slice(0, per_source)
            for r in t.to_pylist():
                raw = r.get("raw") or b""
                exs.append({"id": None, "source": src, "reason": str(r.get("error") or "")[:200],
                            "where": f"{r.get('file')} @ {r.get('offset')}",
                            "text": raw.decode("utf-8", "replace")[:chars] if isinstance(raw, bytes) else str(raw)[:chars]})
    return [{"stage": "ingest", "reason": "quarantined", "rows": total, "examples": exs}] if exs else []


# --- score histograms ---------------------------------------------------------------------------
def _numeric_columns(schema: pa.Schema) -> list[str]:
    out = []
    for f in schema:
        if f.name in ID_COLUMNS or f.name in GROUP_SIZE_COLUMNS or f.name in ("id", "_error"):
            continue
        t = f.type
        if pa.types.is_floating(t) or (pa.types.is_integer(t) and not pa.types.is_uint64(t)):
            out.append(f.name)
    return out


def _schema(path: str) -> pa.Schema:
    fs, p = storage.fs_and_path(path)
    with fs.open(p, "rb") as f:
        return pq.read_schema(f)


def _register_files(con: duckdb.DuckDBPyConnection, files: list[tuple[str, str, str]], name: str = "ann_files") -> str:
    """Register (filename -> source) for annotation files; returns the DuckDB list of their paths."""
    paths = [a for _, _, a in files]
    # read_parquet(filename=true) reports the path it was given (or the filesystem's form of it).
    register(con, name, {"filename": paths, "source": [s for s, _, _ in files], "raw": [r for _, r, _ in files]})
    return files_sql(paths)


def histograms(ctx: ReleaseContext, con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Every numeric annotation column, per source: 40 shared bins (log-spaced when the values
    span more than two orders of magnitude, unit-wide for small integer ranges), counts per
    source, and the selection's thresholds on that column."""
    marks = thresholds(ctx.selection)
    out = []
    for st in ctx.stages:
        files = ctx.annotation_files(st)
        if not files:
            continue
        cols = [c for c in _numeric_columns(_schema(files[0][2])) if c in st.columns]
        if not cols:
            continue
        listing = _register_files(con, files)
        for col in cols:
            h = _histogram(con, listing, col)
            if h is None:
                continue
            h.update(stage=st.name, column=col,
                     thresholds=[{"op": t.op, "value": t.value} for t in marks if t.column == f"{st.name}.{col}"])
            out.append(h)
    return out


def _histogram(con: duckdb.DuckDBPyConnection, listing: str, col: str) -> dict[str, Any] | None:
    base = (f"SELECT f.source, a.{q(col)}::DOUBLE AS x FROM read_parquet({listing}, filename=true) a "
            f"JOIN ann_files f USING (filename) WHERE a.{q(col)} IS NOT NULL AND isfinite(a.{q(col)}::DOUBLE)")
    stats = con.execute(f"SELECT min(x), max(x), count(*), bool_and(x = round(x)) FROM ({base})").fetchall()[0]
    if not stats[2]:
        return None
    lo, hi, n, integral = float(stats[0]), float(stats[1]), int(stats[2]), bool(stats[3])
    if hi == lo:
        return {"kind": "constant", "value": lo, "n": n}
    log = lo > 0 and hi / lo > 100
    if log:
        a, b = math.log10(lo), math.log10(hi)
        edges = [a + (b - a) * i / BINS for i in range(BINS + 1)]
        xexpr = "log10(x)"
    elif integral and hi - lo < BINS:
        edges = [lo - 0.5 + i for i in range(int(hi - lo) + 2)]
        xexpr = "x"
    else:
        edges = [lo + (hi - lo) * i / BINS for i in range(BINS + 1)]
        xexpr = "x"
    nb = len(edges) - 1
    width = (edges[-1] - edges[0]) / nb
    got = con.execute(
        f"SELECT source, least(greatest(floor(({xexpr} - ?) / ?)::BIGINT, 0), ?) AS b, count(*) "
        f"FROM ({base}) GROUP BY ALL ORDER BY 1, 2", [edges[0], width, nb - 1]).fetchall()
    counts: dict[str, list[int]] = {}
    for src, b, c in got:
        counts.setdefault(src, [0] * nb)[int(b)] = int(c)
    return {"kind": "histogram", "log": log, "edges": edges, "counts": counts, "min": lo, "max": hi, "n": n,
            "n_per_source": {s: sum(v) for s, v in counts.items()}}


# --- duplicates ---------------------------------------------------------------------------------
def _dedup_files(ctx: ReleaseContext) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(stage, its annotation files) of each dedup stage (one writing ``survivor_id``) that has files."""
    out = []
    for st in ctx.stages:
        if "survivor_id" not in st.columns:
            continue
        files = ctx.annotation_files(st)
        if files:
            out.append((st.name, files))
    return out


def _largest_clusters(con: duckdb.DuckDBPyConnection, files: list[tuple[str, str, str]], largest: int,
                      members: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Temp tables ``members`` and ``clusters`` of one dedup stage; returns the ``largest`` clusters
    (survivor_id, size) and up to ``members`` of their members each (survivor first, then by id)."""
    listing = _register_files(con, files)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE members AS
        SELECT a.id, a.survivor_id, f.source, f.raw, a.file_row_number AS "row"
        FROM read_parquet({listing}, filename=true, file_row_number=true) a JOIN ann_files f USING (filename)
        WHERE a.survivor_id IS NOT NULL""")
    con.execute("""CREATE OR REPLACE TEMP TABLE clusters AS
        SELECT survivor_id, count(*) AS size FROM members GROUP BY 1 HAVING count(*) > 1""")
    top = rows(con, "SELECT survivor_id, size FROM clusters ORDER BY size DESC, survivor_id LIMIT ?", [largest])
    mem = rows(con, """SELECT m.* FROM members m JOIN (SELECT survivor_id FROM clusters
        ORDER BY size DESC, survivor_id LIMIT ?) t USING (survivor_id)
        QUALIFY row_number() OVER (PARTITION BY m.survivor_id ORDER BY m.id = m.survivor_id DESC, m.id) <= ?""",
               [largest, members])
    return top, mem


def shown_duplicates(ctx: ReleaseContext, con: duckdb.DuckDBPyConnection, largest: int = 5,
                     members: int = 6) -> set[tuple[str, int]]:
    """The (raw shard, row) of every document ``duplicates`` shows (same defaults): known from the
    annotation files alone, so the release pass can keep their texts (releasing/report_texts.py).
    Cost: the duplicates section's queries, without its text reads."""
    out: set[tuple[str, int]] = set()
    for _, files in _dedup_files(ctx):
        out.update((r["raw"], int(r["row"])) for r in _largest_clusters(con, files, largest, members)[1])
    return out


def duplicates(ctx: ReleaseContext, con: duckdb.DuckDBPyConnection, largest: int = 5, members: int = 6,
               line_chars: int = 120, known: dict[tuple[str, int], str] | None = None) -> list[dict[str, Any]]:
    """For each dedup stage (one writing ``survivor_id``: exact, MinHash, semantic): how many
    clusters (documents sharing a survivor), their size distribution, and the largest clusters
    with their members' first lines. ``known``: texts of (raw shard, row) already in hand (the
    release pass kept them: ``shown_duplicates``); the others are read from the raw shards."""
    out = []
    for name, files in _dedup_files(ctx):
        top, mem = _largest_clusters(con, files, largest, members)
        sizes = [(int(s), int(c)) for s, c in con.execute(
            "SELECT size, count(*) FROM clusters GROUP BY 1 ORDER BY 1").fetchall()]
        texts = as_matches([{**r, "fate": "", "stage": None, "reason": None} for r in mem], 2000, known)
        lines = {m.id: _first_line(m.text, line_chars) for m in texts}
        clusters = [{"survivor_id": t["survivor_id"], "size": int(t["size"]),
                     "members": [{"id": r["id"], "source": r["source"], "survivor": r["id"] == t["survivor_id"],
                                  "first_line": lines.get(r["id"], "")} for r in mem if r["survivor_id"] == t["survivor_id"]]}
                    for t in top]
        out.append({"stage": name, "clusters": sum(c for _, c in sizes),
                    "documents_in_clusters": sum(s * c for s, c in sizes),
                    "duplicates": sum((s - 1) * c for s, c in sizes), "size_counts": sizes, "largest": clusters})
    return out


def _first_line(text: str, chars: int) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line[:chars] + ("…" if len(line) > chars else "")


# --- mixture and curriculum ---------------------------------------------------------------------
def _release_rows(con: duckdb.DuckDBPyConnection, ctx: ReleaseContext) -> bool:
    """Register ``release_rows`` (id, source, n_tokens, pos: the row's place in training order)."""
    shards = ctx.manifest.get("shards") or []
    if not shards:
        return False
    offsets, start = [], 0
    for s in shards:
        offsets.append(start)
        start += int(s["rows"])
    files = ctx.shard_files
    register(con, "shard_offsets", {"filename": files, "start": offsets})
    con.execute(f"""CREATE OR REPLACE TEMP TABLE release_rows AS
        SELECT r.id, r.source, r.n_tokens, o.start + r.file_row_number AS pos
        FROM read_parquet({files_sql(files)}, filename=true, file_row_number=true) r JOIN shard_offsets o USING (filename)""")
    return True


def mixture(ctx: ReleaseContext, con: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
    """Planned weights per phase and source next to the tokens each phase released per source
    (counted from the release shards and the manifest's phase boundaries)."""
    m = ctx.manifest
    mix = m.get("mixture")
    if not mix or not _release_rows(con, ctx):
        return None
    phases = m.get("phases") or []
    bounds = [(p.get("phase") or p.get("name") or f"phase {i}", int(p.get("start_row", 0)), int(p.get("end_row", 0)))
              for i, p in enumerate(phases)]
    register(con, "phase_bounds", {"phase": [b[0] for b in bounds], "start_row": [b[1] for b in bounds],
                                   "end_row": [b[2] for b in bounds]})
    got = con.execute("""SELECT p.phase, r.source, count(*) AS rows, sum(r.n_tokens) AS tokens
        FROM release_rows r JOIN phase_bounds p ON r.pos >= p.start_row AND r.pos < p.end_row
        GROUP BY ALL""").fetchall()
    released: dict[str, dict[str, dict[str, int]]] = {}
    for ph, src, n, t in got:
        released.setdefault(ph, {})[src] = {"rows": int(n), "tokens": int(t or 0)}
    out_phases = []
    for ph in mix.get("phases") or []:
        name = ph.get("name")
        out_phases.append({"name": name, "planned": dict(ph.get("weights") or {}),
                           "released": released.get(name, {})})
    return {"method": mix.get("method"), "epochs": mix.get("epochs") or {}, "tokens_available": mix.get("tokens") or {},
            "phases": out_phases}


def curriculum(ctx: ReleaseContext, con: duckdb.DuckDBPyConnection, buckets: int = 100) -> dict[str, Any] | None:
    """The curriculum's difficulty column along the release order: its mean over ``buckets``
    equal slices of the release rows, with the phase starts."""
    cur = ctx.manifest.get("curriculum") or {}
    column = cur.get("column")
    if not column or "." not in column:
        return None
    stage_name, col = column.split(".", 1)
    st = ctx.stage(stage_name)
    if st is None or not _release_rows(con, ctx):
        return None
    files = ctx.annotation_files(st)
    if not files:
        return None
    listing = _register_files(con, files)
    total = int((ctx.manifest.get("totals") or {}).get("rows") or 0) or 1
    # avg in release order: DuckDB sums a group's doubles in whatever order its threads met the
    # files, so an unordered mean can change in its last bits between two builds of the same page.
    got = con.execute(f"""
        WITH a AS (SELECT id, {q(col)}::DOUBLE AS v FROM read_parquet({listing}))
        SELECT floor(r.pos * ? / ?)::BIGINT AS b, min(r.pos), max(r.pos), avg(a.v ORDER BY r.pos), count(a.v), count(*)
        FROM release_rows r LEFT JOIN a USING (id) GROUP BY 1 ORDER BY 1""", [buckets, total]).fetchall()
    phases = [{"name": p.get("phase") or p.get("name"), "start_row": int(p.get("start_row", 0))}
              for p in ctx.manifest.get("phases") or []]
    return {"column": column, "kind": cur.get("kind"), "rows": total,
            "buckets": [{"start_row": int(a), "end_row": int(b) + 1, "mean": v, "n_values": int(nv), "n": int(n)}
                        for _, a, b, v, nv, n in got],
            "phases": phases}


# --- gates and text transforms -------------------------------------------------------------------
def gates(ctx: ReleaseContext) -> dict[str, Any] | None:
    """The release's gate report (warehouse/releasing/gates.py) as the manifest records it: every
    check with its outcome, failures and warnings first. None for a release made without gates."""
    g = ctx.manifest.get("gates")
    if not isinstance(g, dict):
        return None
    order = {"fail": 0, "warn": 1, "skipped": 2, "pass": 3}
    checks = sorted(g.get("checks") or [], key=lambda c: (order.get(str(c.get("outcome")), 4), str(c.get("gate"))))
    return {"passed": bool(g.get("passed", True)), "accepted": bool(g.get("accepted")), "checks": checks,
            "outcomes": {o: sum(c.get("outcome") == o for c in checks) for o in order}}


def text_steps(ctx: ReleaseContext) -> list[dict[str, Any]]:
    """What each ``release.text`` step (cleaning, redaction) changed in the kept documents, per
    source (the manifest's ``text.steps``)."""
    text = ctx.manifest.get("text")
    return list(text.get("steps") or []) if isinstance(text, dict) else []


# --- timings ------------------------------------------------------------------------------------
TIMINGS_SQL = """
SELECT stage,
       sum(seconds) FILTER (WHERE phase = 'fit') AS fit_seconds,
       string_agg(DISTINCT status, '/') FILTER (WHERE phase = 'fit') AS fit_status,
       sum(seconds) FILTER (WHERE phase = 'apply') AS apply_seconds,
       count(*) FILTER (WHERE phase = 'apply' AND status = 'computed') AS shards_computed,
       count(*) FILTER (WHERE phase = 'apply' AND status = 'skipped') AS shards_skipped,
       count(*) FILTER (WHERE phase = 'apply' AND status = 'failed') AS shards_failed,
       sum(rows) FILTER (WHERE phase = 'apply' AND status = 'computed') AS rows,
       min(recorded_at) AS first_recorded
FROM stage_runs WHERE run_id = ? GROUP BY stage"""


def timings(ctx: ReleaseContext) -> list[dict[str, Any]]:
    """Seconds per stage of the run that made the release, from the catalog's ``stage_runs``: the
    global fit (its ``fit`` row: fitted, extended or a pinned model reused) and the apply, summed
    over the run's per-shard ``apply`` rows (worker seconds: with parallel workers more than the
    elapsed time), with the shards computed, skipped (annotations reused) and failed. Stages in
    pipeline order; a stage of the run the release does not name comes last."""
    from warehouse.catalog import Catalog
    run_id = ctx.manifest.get("run_id")
    if not run_id or not storage.exists(ctx.lake.catalog_path):
        return []
    try:
        cols, got = Catalog(ctx.lake.catalog_path).query(TIMINGS_SQL, [run_id])
    except Exception:  # noqa: BLE001 - an older catalog without the phase column, or one busy: the section is optional
        return []
    order = {s.name: i for i, s in enumerate(ctx.stages)}
    rows = sorted((dict(zip(cols, r)) for r in got),
                  key=lambda r: (order.get(r["stage"], len(order)), r.pop("first_recorded")))
    for r in rows:
        for k in ("fit_seconds", "apply_seconds"):
            r[k] = None if r[k] is None else round(float(r[k]), 4)
        for k in ("shards_computed", "shards_skipped", "shards_failed", "rows"):
            r[k] = None if r[k] is None else int(r[k])
    return rows
