"""``curate report``, ``curate show``, ``curate sample``, the documents part of ``curate releases
diff``, and the per-source accounting that ends ``curate run``.

Each command finds the release (``NAME/VERSION``, ``NAME`` for its LATEST, or nothing for the
newest release in the lake), prints readable text with rich, and says what to do next when
something is missing (one line, exit code 1 or 2, no traceback).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from engines import storage

if TYPE_CHECKING:  # imported where used: `curate run` imports this module before Prefect's server starts
    from warehouse.lake import Lake
    from warehouse.report.context import ReleaseContext

console = Console(highlight=False)
LakeOpt = Annotated[str, typer.Option("--lake", "-l", help="Lake folder, or a pipeline YAML whose lake to use.")]
ReleaseOpt = Annotated[str | None, typer.Option(
    "--release", "-r", help="NAME/VERSION or NAME (its LATEST); default: the newest release in the lake.")]


def _fail(msg: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]{msg}[/]")
    return typer.Exit(code)


def _lake(lake: str) -> Lake:
    from flows.cli import _lake_root
    from warehouse.lake import Lake
    return Lake(_lake_root(lake))


def resolve_release(lake: Lake, ref: str | None) -> tuple[str, str]:
    """(name, version) of ``NAME/VERSION``, ``NAME`` (its LATEST) or None (the newest release of any name)."""
    from warehouse.release import latest_version
    from warehouse.report.context import read_manifest
    if ref:
        name, _, version = ref.partition("/")
        version = version or (latest_version(lake, name) or "")
        if not version:
            raise _fail(f"no release named {name!r} in {lake.root} (see `curate releases --lake {lake.root}`)")
        return name, version
    newest: tuple[str, str, str] | None = None
    for pointer in storage.glob(f"{lake.root}/releases/*/LATEST"):
        pname = pointer.rsplit("/", 2)[-2]
        pversion = latest_version(lake, pname)
        if not pversion or not storage.exists(f"{lake.release_dir(pname, pversion)}/manifest.json"):
            continue
        created = str(read_manifest(lake, pname, pversion).get("created_at") or "")
        if newest is None or created > newest[0]:
            newest = (created, pname, pversion)
    if newest is None:
        raise _fail(f"no release in {lake.root}: run `curate run PIPELINE.yaml` first, or point --lake at the lake")
    return newest[1], newest[2]


def _stages_from_config(lake: Lake, manifest: dict[str, Any]) -> list[Any] | None:
    """The stages of the pipeline file that made a release (from the catalog's run record), or None."""
    from flows.pipeline import configure_stages
    from schemas.config import load_config
    from warehouse.catalog import Catalog
    from warehouse.release import StageInfo
    try:
        _, got = Catalog(lake.catalog_path).query("SELECT config_path FROM runs WHERE run_id = ?", [manifest.get("run_id")])
        cfg = load_config(got[0][0])
        keys = (manifest.get("inputs") or {}).get("stages") or {}
        return [StageInfo(cs.name, keys.get(cs.name, ""), list(cs.stage.writes()), cs.sources)
                for cs in configure_stages(cfg) if cs.name in keys]
    except Exception:  # noqa: BLE001 - any reason the file is gone or changed: infer from the lake instead
        return None


def release_context(lake: Lake, ref: str | None) -> ReleaseContext:
    """The release ``ref`` names; a ``NAME/VERSION`` its gates stopped is read from its ``_rejected`` record."""
    from warehouse.report.context import load_context, read_manifest, rejected_record, report_dir
    name, version = resolve_release(lake, ref)
    rejected = not storage.exists(f"{lake.release_dir(name, version)}/manifest.json") and storage.exists(
        rejected_record(lake, name, version))
    try:
        manifest = read_manifest(lake, name, version, rejected)
    except FileNotFoundError as e:
        raise _fail(str(e)) from None
    stages = None
    if not storage.exists(f"{report_dir(lake, name, version, rejected)}/context.json"):
        stages = _stages_from_config(lake, manifest)
    return load_context(lake, name, version, stages, rejected=rejected)


# --- curate report --------------------------------------------------------------------------------
def report(release: Annotated[str | None, typer.Argument(help="NAME/VERSION or NAME; default: the newest release.")] = None,
           out: Annotated[Path | None, typer.Option(help="Write the page here (default: <lake>/reports/NAME/VERSION/report.html).")] = None,
           lake: LakeOpt = "./lake",
           seed: Annotated[int, typer.Option(help="Seed of the example documents drawn per drop reason.")] = 0) -> None:
    """Write the HTML report of a release: accounting waterfalls, drop reasons with example
    documents, score histograms, duplicate clusters, mixture and curriculum, changes since the
    parent. One self-contained file: open it in a browser, no server needed. NAME/VERSION of a
    release its gates stopped writes that one's report (marked REJECTED)."""
    from flows.pipeline import code_version
    from warehouse.report import build_report
    lk = _lake(lake)
    ctx = release_context(lk, release)
    with console.status(f"building the report of {ctx.ref} ..."):
        rep = build_report(lk, ctx.name, ctx.version, stages=ctx.stages, out=str(out.resolve()) if out else None,
                           seed=seed, code_version=code_version(), rejected=ctx.rejected)
    for note in ctx.notes:
        console.print(f"[yellow]note:[/] {note}")
    state = " [bold red](REJECTED by its gates)[/]" if ctx.rejected else ""
    console.print(f"[bold green]report of {ctx.ref}[/]{state} ({rep.bytes / 1024:,.0f} KB):\n  {rep.path}", soft_wrap=True)


# --- curate show ------------------------------------------------------------------------------------
def _find(lake: Lake, doc_id: str) -> list[dict[str, Any]]:
    from warehouse.report import duck
    pattern = f"{lake.root}/raw/*/*/part-*.parquet"
    if not storage.glob(pattern):
        return []
    with duck.connect(lake.root) as con:
        cond = "id = ?" if len(doc_id) >= 32 else "starts_with(id, ?)"
        return duck.rows(con, f"SELECT *, filename AS _raw, file_row_number AS _row FROM read_parquet('{pattern}', "
                              f"filename=true, file_row_number=true, union_by_name=true) WHERE {cond} LIMIT 20", [doc_id])


def _annotations(lake: Lake, raw: str, row: int) -> list[tuple[str, dict[str, Any]]]:
    """(stage key, the row's columns) of every annotation file aligned with this raw shard."""
    from warehouse.report.io import read_rows
    rel = raw[len(f"{lake.root}/raw/"):]
    out = []
    for path in storage.glob(f"{lake.root}/annotations/*/{rel}"):
        key = path[len(f"{lake.root}/annotations/"):].split("/", 1)[0]
        got = read_rows(path, [row])  # one row group of the file, not all of it
        if row in got:
            out.append((key, got[row]))
    return out


def _short(v: Any, limit: int = 160) -> str:
    if isinstance(v, (list, tuple)):
        return f"[{len(v)} values: {', '.join(_short(x, 12) for x in v[:4])}{', …' if len(v) > 4 else ''}]"
    s = "" if v is None else str(v)
    return s if len(s) <= limit else s[:limit] + f"… ({len(s):,} chars)"


def _fate_in(lake: Lake, raw: str, doc_id: str) -> list[tuple[str, str, int]]:
    """(release, fate, copies released) in the latest version of each release that read this shard."""
    from warehouse.release import latest_version
    from warehouse.report import duck
    from warehouse.report.context import read_manifest
    from warehouse.report.fates import decided_shard, fates_path
    out = []
    for pointer in storage.glob(f"{lake.root}/releases/*/LATEST"):
        name = pointer.rsplit("/", 2)[-2]
        version = latest_version(lake, name)
        if not version or not storage.exists(f"{lake.release_dir(name, version)}/manifest.json"):
            continue
        manifest = read_manifest(lake, name, version)
        if raw[len(lake.root) + 1:] not in ((manifest.get("inputs") or {}).get("raw_shards") or []):
            continue
        ctx = release_context(lake, f"{name}/{version}")
        with duck.connect(lake.root) as con:
            got: list[tuple[Any, ...]] = []
            if storage.exists(fates_path(ctx)):
                got = con.execute(f"SELECT fate, stage, reason FROM read_parquet({duck.lit(fates_path(ctx))}) "
                                  "WHERE id = ?", [doc_id]).fetchall()
            if not got:  # no fates file yet: decide this one shard as the release did
                df = decided_shard(ctx, raw)
                got = df.filter(df["id"] == doc_id).select("_fate", "_stage", "_reason").rows()
            copies = con.execute(f"SELECT count(*) FROM read_parquet({duck.files_sql(ctx.shard_files)}) WHERE id = ?",
                                 [doc_id]).fetchall()[0][0] if ctx.shard_files else 0
        for fate, stage, reason in got[:1]:
            out.append((ctx.ref, "kept" if fate == "kept" else f"{fate} by {stage}: {reason}", int(copies)))
    return out


def show(doc_id: Annotated[str, typer.Argument(help="A document id (or its first 8+ characters).")],
         lake: LakeOpt = "./lake",
         full: Annotated[bool, typer.Option(help="Print the whole text (default: the first 2,000 characters).")] = False) -> None:
    """Show one document: its text, its provenance, every annotation of every stage (all stage
    versions in the lake), and its fate in each release that read it."""
    if len(doc_id) < 8:
        raise _fail("give at least 8 characters of the id (ids are 32 hex characters; see `curate sample`)", 2)
    lk = _lake(lake)
    found = _find(lk, doc_id)
    if not found:
        raise _fail(f"no document with id {doc_id!r} in {lk.root}/raw (try `curate sample` for ids)")
    ids = sorted({f["id"] for f in found})
    if len(ids) > 1:
        raise _fail(f"{len(ids)} documents start with {doc_id!r}: {', '.join(ids[:10])}; give more characters", 2)
    doc = found[0]
    text = doc.get("text") or ""
    body = text if full or len(text) <= 2000 else text[:2000] + f"\n… ({len(text):,} characters; --full prints all)"
    console.print(Panel(Text(body), title=f"{doc['id']} · {doc['source']}", title_align="left"))
    prov = Table(title="provenance", show_header=False, title_justify="left")
    for col in ("source", "url", "domain", "lang", "crawl_date", "license", "ingest_run", "src_file", "src_offset"):
        prov.add_row(col, _short(doc.get(col)))
    meta = doc.get("meta")
    if meta:
        prov.add_row("meta", _short(json.dumps(json.loads(meta)) if isinstance(meta, str) else meta, 400))
    prov.add_row("raw shard", f"{doc['_raw']} (row {doc['_row']})")
    if len(found) > 1:
        prov.add_row("also in", "; ".join(f"{f['_raw']} (row {f['_row']})" for f in found[1:]))
    console.print(prov)
    for key, values in _annotations(lk, doc["_raw"], int(doc["_row"])):
        t = Table(title=f"stage {key.split('@')[0]}  [dim]{key}[/]", show_header=False, title_justify="left")
        for col, v in values.items():
            if col != "id":
                t.add_row(col, _short(v))
        console.print(t)
    fates = _fate_in(lk, doc["_raw"], doc["id"])
    if fates:
        t = Table(title="in releases (latest version of each)", title_justify="left")
        for c in ("release", "fate", "copies released"):
            t.add_column(c)
        for ref, why, n in fates:
            t.add_row(ref, why, str(n))
        console.print(t)


# --- curate sample ----------------------------------------------------------------------------------
def _match_reason(con: Any, reason: str) -> tuple[str, list[Any]]:
    """SQL condition for a user's ``--reason``: a reason, a stage, ``stage:reason`` or ``stage_reason``."""
    pairs = con.execute("SELECT stage, CASE WHEN fate = 'quarantined' THEN 'quarantined' ELSE reason END AS r, "
                        "count(*) AS n FROM pool WHERE fate != 'kept' GROUP BY ALL "
                        "ORDER BY n DESC").fetchall()
    want = reason.strip()
    hits = [(s, r) for s, r, _ in pairs if want in (r, s, f"{s}:{r}", f"{s}: {r}", f"{s}_{r}")]
    if not hits:
        hits = [(s, r) for s, r, _ in pairs if want.lower() in f"{s}:{r}".lower()]
    if not hits:
        known = ", ".join(f"{s}:{r} ({n:,})" for s, r, n in pairs[:25]) or "none: nothing was dropped"
        raise _fail(f"no drop reason matches {reason!r}. Reasons in this release: {known}", 2)
    cond = " OR ".join("(stage = ? AND (reason = ? OR (fate = 'quarantined' AND ? = 'quarantined')))" for _ in hits)
    return f"({cond})", [v for s, r in hits for v in (s, r, r)]


def sample(reason: Annotated[str | None, typer.Option(help="A drop reason: `too_few_sentences`, `c4`, `c4:too_few_sentences`, `c4_too_few_sentences`, `quarantined`.")] = None,
           source: Annotated[list[str] | None, typer.Option(help="Only this source (repeatable).")] = None,
           where: Annotated[str | None, typer.Option(help="A condition in the selection language, e.g. \"quality.score < 0.2 and lang == 'en'\".")] = None,
           fate: Annotated[str | None, typer.Option(help="kept | dropped | quarantined.")] = None,
           n: Annotated[int, typer.Option("-n", help="How many documents.")] = 10,
           seed: Annotated[int, typer.Option(help="Seed of the random draw (same seed, same documents).")] = 0,
           chars: Annotated[int, typer.Option(help="Characters of text to print per document.")] = 300,
           release: ReleaseOpt = None, lake: LakeOpt = "./lake") -> None:
    """Print a seeded random sample of a release's documents: by drop reason, source, fate, or
    any condition on the annotations (`--where`, the selection language)."""
    import pyarrow as pa

    from warehouse.report import duck
    from warehouse.report.fates import as_matches, ensure_fates, where_matches
    from warehouse.selection import SelectionError
    if fate and fate not in ("kept", "dropped", "quarantined"):
        raise _fail("--fate is kept, dropped or quarantined", 2)
    lk = _lake(lake)
    ctx = release_context(lk, release)
    fates = ensure_fates(ctx)
    conds, params = ["true"], []
    with duck.connect(lk.root) as con:
        if where:
            try:
                parts = list(where_matches(ctx, where, source))
            except SelectionError as e:
                raise _fail(str(e), 2) from None
            con.register("pool", pa.concat_tables(parts) if parts else pa.table(
                {c: pa.array([], pa.string()) for c in ("id", "source", "raw", "fate", "stage", "reason")}
                | {"row": pa.array([], pa.int64())}))
        else:
            con.execute(f"CREATE TEMP VIEW pool AS SELECT * FROM read_parquet({duck.lit(fates)})")
        if reason:
            cond, p = _match_reason(con, reason)
            conds.append(cond)
            params += p
        if source:
            conds.append("source IN (SELECT unnest(?))")
            params.append(list(source))
        if fate:
            conds.append("fate = ?")
            params.append(fate)
        sql_where = " AND ".join(conds)
        total = int(con.execute(f"SELECT count(*) FROM pool WHERE {sql_where}", params).fetchall()[0][0])
        picked = duck.rows(con, f"SELECT * FROM pool WHERE {sql_where} ORDER BY md5(? || ':' || id) LIMIT ?",
                           [*params, str(seed), n])
    console.print(f"[bold]{ctx.ref}[/]: {total:,} documents match; {len(picked)} shown (seed {seed}). "
                  "Open one with `curate show ID`.")
    for m in as_matches(picked, chars):
        why = "kept" if m.fate == "kept" else f"{m.fate} by {m.stage}: {m.reason}"
        body = m.text + ("…" if len(m.text) >= chars else "")
        console.print(Panel(Text(body), title=f"{m.id} · {m.source} · {why}", title_align="left"))


# --- curate releases diff --docs --------------------------------------------------------------------
def print_docs_diff(lake: Lake, old: str, new: str, sample_n: int) -> None:
    """Documents added and removed between two releases: counts per source and reason, and a sample."""
    from warehouse.report import duck
    from warehouse.report.docs_diff import docs_diff
    a, b = release_context(lake, old), release_context(lake, new)
    with duck.connect(lake.root) as con:
        d = docs_diff(con, a, b, sample=sample_n)
    for what in ("added", "removed"):
        x = d[what]
        t = Table(title=f"documents {what}: {x['documents']:,} ({', '.join(f'{s} {v:,}' for s, v in x['per_source'].items()) or 'none'})",
                  title_justify="left")
        t.add_column("reason")
        t.add_column("documents", justify="right")
        for r in x["per_reason"][:20]:
            t.add_row(r["reason"], f"{r['documents']:,}")
        console.print(t)
        for s in x["sample"]:
            console.print(Panel(Text(s["text"]), title=f"{s['id']} · {s['source']} · {s['why']}", title_align="left"))


# --- the end of curate run ----------------------------------------------------------------------------
def print_run_accounting(out: Console, summary: dict[str, Any]) -> None:
    """Per source: in -> dropped by top reasons -> kept -> released; then the report's path."""
    from warehouse.catalog import Catalog
    from warehouse.report.summary import accounting_line, source_accounting
    rel = summary["release"]
    try:
        rows = source_accounting(Catalog.of_lake(summary["lake"]), rel["name"], rel["version"])
    except Exception as e:  # noqa: BLE001 - the run is done; its accounting is a courtesy
        out.print(f"[yellow]per-source accounting unavailable: {e}[/]")
        rows = []
    if rows:
        width = max(len(r["source"]) for r in rows)
        out.print("[bold]where the documents went[/] (dropped: top reasons)")
        for r in rows:
            out.print(f"  {r['source']:<{width}}  {accounting_line(r)}", highlight=False, soft_wrap=True)
    path = (summary.get("report") or {}).get("path")
    if path:
        out.print(f"[bold]report:[/] {path}", soft_wrap=True)
    else:
        out.print(f"[yellow]no report was written[/] ({(summary.get('report') or {}).get('error', 'see the log')}); "
                  f"try `curate report {rel['name']}/{rel['version']} --lake {summary['lake']}`")
