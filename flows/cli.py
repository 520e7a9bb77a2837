"""The ``curate`` command line. ``curate --help`` lists the commands; each has its own --help."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

# No network is assumed: keep Prefect's server from trying to send telemetry.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
if __name__ == "__main__":  # `python -m flows.cli run`: launch Prefect's server before the imports below
    from flows.launch import start_early

    start_early(sys.argv[1:])
# Before Polars and PyArrow load: their allocators read these once (see engines/allocators.py).
from engines.allocators import apply_defaults  # noqa: E402

apply_defaults()

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from flows.commands.report import print_run_accounting, report, sample, show  # noqa: E402
from flows.commands.validate import check_or_exit, validate  # noqa: E402

app = typer.Typer(
    help="curate: turn raw corpora into versioned, trainer-ready releases.\n\n"
         "Start with `curate run demo/pipeline.yaml`, then `curate stats` and `curate releases`.",
    no_args_is_help=True, add_completion=False)
releases_app = typer.Typer(help="List releases, show one, or diff two.", invoke_without_command=True)
app.add_typer(releases_app, name="releases")
app.command()(validate)
for _cmd in (report, show, sample):
    app.command()(_cmd)
# Wide enough for catalog tables when output is piped (rich would assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)

LakeOpt = Annotated[str, typer.Option("--lake", "-l", help="Lake folder, or a pipeline YAML whose lake to use.")]


def _lake_root(lake: str) -> str:
    if lake.endswith((".yaml", ".yml")):
        from schemas.config import ConfigError, load_config
        try:
            return load_config(lake).lake_path
        except ConfigError as e:
            console.print(f"[red]{e}[/]", soft_wrap=True)
            raise typer.Exit(2) from None
    return str(Path(lake).resolve()) if "://" not in lake else lake


def _catalog(lake: str):
    from warehouse.catalog import Catalog
    root = _lake_root(lake)
    cat = Catalog.of_lake(root)
    if not Path(cat.path).exists():
        console.print(f"[red]No catalog at {cat.path}.[/] Run `curate run PIPELINE.yaml` first, "
                      "or point --lake at the lake folder (default ./lake).")
        raise typer.Exit(1)
    return cat


def _print(cols: list[str], rows: list[tuple], title: str | None = None, limit: int = 200) -> None:
    t = Table(title=title, show_lines=False)
    for c in cols:
        t.add_column(c, overflow="fold")
    for r in rows[:limit]:
        t.add_row(*("" if v is None else str(v) for v in r))
    console.print(t)
    if len(rows) > limit:
        console.print(f"... {len(rows) - limit} more rows")


@app.command()
def run(pipeline: Annotated[Path, typer.Argument(help="The pipeline YAML file, e.g. demo/pipeline.yaml.")],
        workers: Annotated[int | None, typer.Option(help="Worker processes (default: executor.workers or all CPUs).")] = None,
        reingest: Annotated[list[str] | None, typer.Option(
            help="Ingest every file of this source again (repeatable); earlier ingests of it are superseded.")] = None,
        refit: Annotated[list[str] | None, typer.Option(
            help="Fit this global stage again over every shard (repeatable), although a pinned model "
                 "or incremental index exists; its annotations are recomputed.")] = None,
        accept_gates: Annotated[bool, typer.Option(
            "--accept-gates", help="Publish the release even if release.gates fail (recorded as accepted).")] = False,
        wait: Annotated[float, typer.Option("--wait", help="Seconds to wait while another run holds the lake "
                                                          "(default: exit at once, naming it).")] = 0.0):
    """Run a pipeline once: ingest new input, run the stages, write a release, update the catalog.

    Safe to re-run: finished work is skipped, and a release with identical inputs is reused.
    The file is validated first (as `curate validate` does); problems stop the run before it starts.
    Trained models stay pinned and dedup indexes grow night after night (see README).
    A release that fails its gates (release.gates) is not published and the command exits with 3.
    One run per lake at a time: a second one waits (--wait) or exits with code 75.
    """
    from flows.commands.run_startup import RunStartup
    with RunStartup(early_server=_STANDALONE) as startup:  # Prefect's server boots while we import and validate
        check_or_exit(pipeline, reingest, quiet=True)
        startup.mark("validated")
        from flows.commands.health import _waiting
        from flows.fitting import RefitError
        from flows.pipeline import run_pipeline
        from warehouse.releasing.gates import GateFailed
        startup.mark("imported")
        try:
            summary = run_pipeline(str(pipeline), workers=workers, reingest=reingest, validated=True, refit=refit,
                                   accept_gates=accept_gates, wait_s=wait, on_wait=_waiting, before_flow=startup.ready)
        except RefitError as e:
            console.print(f"[red]{e}[/]", soft_wrap=True)
            raise typer.Exit(2) from None
        except GateFailed as e:
            console.print(f"[red]{e}[/]\nwhy, in the catalog: curate sql \"SELECT * FROM release_gates WHERE "
                          f"version = '{e.version}'\"\nthe record: {e.record}", soft_wrap=True)
            raise typer.Exit(3) from None
    _print_summary(summary)


def _label_passes(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """After a rewrite stage the flow runs the stages before it again, over the new derived
    shards (flows/rewrite_step.stage_passes): say so on those rows instead of listing a stage twice."""
    seen: set[str] = set()
    out = []
    for r in stages:
        name = r.get("stage", "")
        out.append({**r, "stage": f"{name} (again: derived shards)"} if name in seen else r)
        seen.add(name)
    return out


def _print_summary(s: dict[str, Any]) -> None:
    from warehouse.lake import Lake
    for title, rows, cols in (("ingest", s["ingest"], ("source", "files", "rows_in", "rows_written", "rows_quarantined")),
                              ("stages", _label_passes(s["stages"]), ("stage", "computed", "skipped", "failed", "row_errors"))):
        _print(list(cols), [tuple(r.get(c, "") for c in cols) for r in rows], title=title)
    r = s["release"]
    for message in r.get("warnings") or []:
        console.print(f"[yellow]warning: {message}[/]")
    state = "written" if r["created"] else "unchanged: identical to an existing release"
    if r.get("accepted"):
        state += ", gates failed and were accepted (--accept-gates)"
    console.print(f"[bold green]release {r['name']}/{r['version']}[/] ({state}): {r['rows']:,} documents, "
                  f"{r['tokens']:,} tokens, {r['shards']} shard{'s' if r['shards'] != 1 else ''}\n  {r['path']}\n"
                  f"catalog: {Lake(s['lake']).catalog_path}  (try `curate stats --lake {s['lake']}`)")
    if s.get("ablation"):
        from flows.commands.ablate import print_flow_ablation
        print_flow_ablation(console, s["ablation"])
    print_run_accounting(console, s)  # last: where the documents went, and the report's path


@app.command()
def gc(pipelines: Annotated[list[Path], typer.Argument(help="The pipeline YAML file(s) writing to the lake.")],
       yes: Annotated[bool, typer.Option("--yes", help="Delete (default: only list what would go).")] = False):
    """Remove annotation folders, models/indexes and pins no release, pin or current stage uses."""
    from flows.commands.gc import gc_command
    gc_command([str(p) for p in pipelines], yes, console)


@app.command()
def serve(pipeline: Annotated[Path, typer.Argument(help="The pipeline YAML file to run on schedule.")],
          cron: Annotated[str, typer.Option(help="Cron schedule, e.g. '0 2 * * *' for 02:00 every night.")] = "0 2 * * *",
          name: Annotated[str | None, typer.Option(help="Deployment name shown in the Prefect UI (default: the "
                                                        "pipeline's name, so pipelines served side by side differ).")] = None,
          timezone: Annotated[str, typer.Option(help="Time zone of the cron schedule.")] = "UTC"):
    """Serve the pipeline as a scheduled Prefect deployment (runs until stopped).

    Needs a Prefect server: start one with `prefect server start` and set
    PREFECT_API_URL=http://127.0.0.1:4200/api in this shell. Each scheduled run ingests only the
    input files that are new since the last run, then releases a new version.
    """
    check_or_exit(pipeline, quiet=True)
    if not os.environ.get("PREFECT_API_URL"):
        console.print("[yellow]PREFECT_API_URL is not set: the schedule lives only as long as this process "
                      "(Prefect's temporary server). For a persistent one run `prefect server start` and export "
                      "PREFECT_API_URL=http://127.0.0.1:4200/api.[/]")
    from prefect.schedules import Cron

    from flows.pipeline import curate_flow
    from schemas.config import load_config
    curate_flow.serve(name=name or load_config(pipeline).name, schedules=[Cron(cron, timezone=timezone)],
                      parameters={"config_path": str(pipeline.resolve())})


# A fit reads every shard and has none of its own: its shards cell says "-", not 0.
STAGES_SQL = ("SELECT stage, phase, status, CASE WHEN phase = 'fit' THEN '-' ELSE count(shard)::VARCHAR END AS shards, "
              "sum(rows) AS rows, round(sum(seconds), 2) AS seconds FROM stage_runs "
              "WHERE run_id = (SELECT max(run_id) FROM runs) GROUP BY stage, phase, status ORDER BY stage, phase DESC")


@app.command()
def stats(lake: LakeOpt = "./lake"):
    """Print the common catalog tables: runs, per-source accounting, drop reasons, quarantine."""
    cat = _catalog(lake)
    queries = {
        "latest runs": "SELECT run_id, status, strftime(started_at, '%Y-%m-%d %H:%M:%S') AS started, "
                       "round(epoch(finished_at) - epoch(started_at), 1) AS seconds, "
                       "release_name || '/' || release_version AS release "
                       "FROM runs ORDER BY started_at DESC LIMIT 5",
        "latest release, per source (rows_in = kept + dropped + quarantined)":
            "SELECT s.source, s.rows_in, s.rows_kept, s.rows_dropped, s.rows_quarantined, s.tokens_kept "
            "FROM release_sources s JOIN (SELECT name, version FROM releases ORDER BY created_at DESC LIMIT 1) r "
            "USING (name, version) ORDER BY s.source",
        "drop reasons (latest release)":
            "SELECT d.source, d.stage, d.reason, d.rows FROM drop_reasons d JOIN (SELECT name, version FROM releases "
            "ORDER BY created_at DESC LIMIT 1) r USING (name, version) ORDER BY d.rows DESC LIMIT 30",
        "quarantine": "SELECT source, stage, left(error, 90) AS error, sum(rows) AS rows FROM quarantine "
                      "GROUP BY ALL ORDER BY rows DESC LIMIT 20",
        "stages (latest run; fit: a global stage's model)":
            STAGES_SQL,
    }
    for title, sql in queries.items():
        cols, rows = cat.query(sql)
        _print(cols, rows, title=title)


@app.command()
def sql(query: Annotated[str, typer.Argument(help="SQL for DuckDB, e.g. \"SELECT * FROM releases\".")],
        lake: LakeOpt = "./lake",
        as_json: Annotated[bool, typer.Option("--json", help="Print rows as JSON lines.")] = False):
    """Run one read-only SQL query against the catalog (tables: runs, ingested_files, shards,
    stage_runs, quarantine, releases, release_sources, drop_reasons; views: documents,
    release_shards, ann_<stage>). Only SELECT-like statements run, and only the lake can be read."""
    import duckdb

    from warehouse.errors import LakeError
    from warehouse.sql_door import readonly_query
    cat = _catalog(lake)
    try:
        cols, rows = readonly_query(cat.path, cat.lake_root, query)
    except LakeError as e:  # refused, unparsable, or the catalog busy/damaged: one line
        console.print(f"[red]{e}[/]", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except duckdb.Error as e:
        console.print(f"[red]{e}[/]", soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        for r in rows:
            sys.stdout.write(json.dumps(dict(zip(cols, r)), default=str) + "\n")
    else:
        _print(cols, rows)


@releases_app.callback()
def releases(ctx: typer.Context, lake: LakeOpt = "./lake",
             name: Annotated[str | None, typer.Option(help="Only releases with this name.")] = None):
    """List releases (newest first) with rows, tokens, shards and parent."""
    ctx.obj = lake
    if ctx.invoked_subcommand:
        return
    cat = _catalog(lake)
    cols, rows = cat.query(
        "SELECT name, version, parent, strftime(created_at, '%Y-%m-%d %H:%M') AS created, rows, tokens, shards, "
        "selection "
        "FROM releases WHERE ? IS NULL OR name = ? ORDER BY created_at DESC", [name, name])
    _print(cols, rows, title="releases")


@releases_app.command("diff")
def releases_diff(ctx: typer.Context,
                  old: Annotated[str, typer.Argument(help="NAME/VERSION of the older release.")],
                  new: Annotated[str, typer.Argument(help="NAME/VERSION of the newer release.")],
                  docs: Annotated[int, typer.Option(help="Also list the documents added and removed: counts by "
                                                         "reason and this many sampled documents of each.")] = 0):
    """Compare two releases: totals, per-source rows and tokens, drop reasons, config (and with
    --docs N, the documents added and removed, by reason)."""
    from warehouse.releases_diff import diff_releases
    cat = _catalog(ctx.obj or "./lake")
    try:
        tables = diff_releases(cat, old, new)
    except ValueError as e:  # a wrong NAME/VERSION: one line that says where to look, no traceback
        console.print(f"[red]{e}[/]", soft_wrap=True)
        raise typer.Exit(2) from None
    for title, (cols, rows) in tables.items():
        _print(cols, rows, title=title)
    if docs:
        from flows.commands.report import print_docs_diff
        from warehouse.lake import Lake
        print_docs_diff(Lake(_lake_root(ctx.obj or "./lake")), old, new, docs)


@app.command()
def export(release: Annotated[str, typer.Argument(help="NAME (its LATEST version), NAME/VERSION, or a release folder.")],
           format: Annotated[str, typer.Option("--format", "-f", help="hf | mds | megatron | jsonl")] = "hf",
           lake: LakeOpt = "./lake",
           out: Annotated[Path | None, typer.Option(help="Output folder (default: <lake>/exports/NAME/VERSION/FORMAT).")] = None,
           tokenizer: Annotated[str | None, typer.Option(
               help="A tokenizer.json for the `tokenizers` library, or `smollm2` for the bundled test tokenizer. "
                    "Required for megatron; adds token ids to hf and mds.")] = None,
           overwrite: Annotated[bool, typer.Option(help="Replace an existing export.")] = False):
    """Export a release for a trainer, in release order, with the mixture weights baked in.

    hf: Parquet + dataset card (datasets.load_dataset); mds: MosaicML Streaming shards per
    source + stream proportions; megatron: tokenized .bin/.idx per source + the weighted blend;
    jsonl: one JSON document per line.
    """
    from warehouse.export import FORMATS, export_release
    if format not in FORMATS:
        console.print(f"[red]unknown format {format!r}[/]; choose one of {', '.join(FORMATS)}")
        raise typer.Exit(2)
    from warehouse.releasing.publish import ManifestError, ReleaseNotFound, resolve
    root = _lake_root(lake)
    if not (Path(release) / "manifest.json").is_file():
        name, _, version = release.partition("/")
        _check_names(("release name", name), ("release version", version))
    try:  # a committed release only: LATEST is checked against the manifests, a damaged one is named
        rel_dir = Path(release) if (Path(release) / "manifest.json").is_file() else Path(resolve(root, release))
    except (ManifestError, ReleaseNotFound) as e:
        console.print(f"[red]{e}[/] (see `curate releases --lake {root}`)", soft_wrap=True)
        raise typer.Exit(1) from None
    tok_path: str | None = tokenizer
    dest = out or Path(root) / "exports" / rel_dir.parent.name / rel_dir.name / format
    try:
        if tokenizer == "smollm2":
            from engines.inference.models import smollm2_tokenizer
            tok_path = str(smollm2_tokenizer())
        info = export_release(rel_dir, dest, format, tokenizer_path=tok_path, overwrite=overwrite)  # type: ignore[arg-type]
    except (ValueError, FileExistsError, ImportError) as e:
        console.print(f"[red]{e}[/]", soft_wrap=True)
        raise typer.Exit(1) from None
    from warehouse.export.record import record_in_catalog
    try:
        record_in_catalog(root, info)
    except Exception as e:  # noqa: BLE001 - the export is complete; its catalog row can be added later
        console.print(f"[yellow]exported, but not recorded in the catalog ({e}); export.json holds the counts[/]")
    console.print(f"[bold green]exported {rel_dir.parent.name}/{rel_dir.name} as {format}[/]: "
                  f"{info['rows']:,} documents, {info['tokens']:,} tokens\n  {dest}")


def _check_names(*named: tuple[str, str]) -> None:
    """Exit 2 if a name from the command line would not be a safe lake folder name."""
    from schemas.names import name_problem
    for what, value in named:
        problem = name_problem(value, what) if value else None
        if problem:
            console.print(f"[red]{problem}[/]")
            raise typer.Exit(2)


from flows.commands import health  # noqa: E402

app.command()(health.check)
app.command()(health.repair)
app.add_typer(health.catalog_app, name="catalog")
from flows.commands.ablate import ablate  # noqa: E402

app.command()(ablate)


# True when this process is the `curate` command itself (not a test runner invoking the app in-process).
_STANDALONE = False


def main() -> None:
    global _STANDALONE
    _STANDALONE = True
    from warehouse.errors import LakeError
    try:
        app()
    except LakeError as e:  # a lake problem with a remedy: one line, no traceback
        console.print(f"[red]{e}[/]", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    from flows.launch import run_cli

    run_cli(main)
