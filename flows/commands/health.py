"""``curate check``, ``curate repair`` and ``curate catalog rebuild``: see warehouse/health.py."""
from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console

from warehouse.lock import LockRecord

console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
WaitOpt = Annotated[float, typer.Option("--wait", help="Seconds to wait for another writer of the lake (default: none).")]


def _root(lake: str) -> str:
    from flows.cli import _lake_root
    return _lake_root(lake)


def _waiting(holder: LockRecord | None) -> None:
    console.print(f"[yellow]waiting for the lake lock: held by {holder.describe() if holder else 'another writer'}[/]")


def check(lake: Annotated[str, typer.Option("--lake", "-l", help="Lake folder, or a pipeline YAML whose lake to use.")]
          = "./lake",
          deep: Annotated[bool, typer.Option(help="Also read every page of raw and annotation files "
                                                  "(checksums verified); slow on a large lake.")] = False,
          as_json: Annotated[bool, typer.Option("--json", help="Print findings as JSON lines.")] = False):
    """Verify the lake against what it records: raw shards (rows per ingest marker), annotation
    files (rows and ids of their raw shard), release shards (size, rows, sha256 of the manifest),
    the catalog (opens, misses nothing), killed runs, stale temporaries. Exit 1 if anything is damaged.
    """
    from warehouse.health import check_lake
    root = _root(lake)
    findings = check_lake(root, deep=deep, progress=None if as_json else lambda m: console.print(f"checking {m}..."))
    for f in findings:
        if as_json:
            sys.stdout.write(json.dumps({"kind": f.kind, "path": f.path, "problem": f.problem, "action": f.action,
                                         "repairable": f.repairable}) + "\n")
        else:
            console.print(f"[red]{f.kind}[/] {f.path}\n    {f.problem}\n    repair: "
                          f"{f.action if f.repairable else 'not automatic: ' + f.action}")
    if not as_json:
        fixable = sum(f.repairable for f in findings)
        console.print("[green]the lake is healthy[/]" if not findings else
                      f"[bold]{len(findings)} problem{'s' if len(findings) != 1 else ''}[/] found; "
                      f"`curate repair --lake {root}` fixes {fixable} of them")
    raise typer.Exit(1 if findings else 0)


def repair(lake: Annotated[str, typer.Option("--lake", "-l", help="Lake folder, or a pipeline YAML whose lake to use.")]
           = "./lake",
           deep: Annotated[bool, typer.Option(help="Check every page of raw and annotation files first.")] = False,
           drop_lost: Annotated[bool, typer.Option(
               "--drop-lost", help="Where a damaged raw shard's input file is gone or changed, remove its "
                                   "documents from the lake instead of leaving it for you.")] = False,
           wait: WaitOpt = 0.0):
    """Fix what `curate check` finds, holding the lake lock: forget damaged raw shards so the next
    run re-ingests their input files, delete damaged annotations (recomputed by the next run),
    rebuild or complete the catalog, mark killed runs failed, remove stale temporaries.
    Damaged releases are reported, never rewritten."""
    from warehouse.health import check_lake, repair_lake
    from warehouse.lock import lake_lock
    root = _root(lake)
    with lake_lock(root, "repair", wait_s=wait, on_wait=_waiting):
        findings = check_lake(root, deep=deep)
        done, left = repair_lake(root, findings, drop_lost=drop_lost)
    for line in done:
        console.print(f"[green]fixed[/] {line}")
    for f in left:
        console.print(f"[red]not fixed[/] {f.path}: {f.problem}\n    {f.action}")
    if not done and not left:
        console.print("[green]nothing to repair: the lake is healthy[/]")
    elif done:
        console.print("run the pipeline again to re-ingest and recompute what was removed")
    raise typer.Exit(1 if left else 0)


catalog_app = typer.Typer(help="The DuckDB catalog: rebuild it from the lake.", no_args_is_help=True)


@catalog_app.command("rebuild")
def catalog_rebuild(lake: Annotated[str, typer.Option("--lake", "-l", help="Lake folder, or a pipeline YAML.")] = "./lake",
                    wait: WaitOpt = 0.0):
    """Rebuild catalog.duckdb from the lake alone (run records, journal, ingest markers, quarantine
    files, release manifests); the old file is kept as catalog.duckdb.before-rebuild."""
    from warehouse.catalog_sync import rebuild_catalog
    from warehouse.lock import lake_lock
    root = _root(lake)
    with lake_lock(root, "catalog rebuild", wait_s=wait, on_wait=_waiting):
        added = rebuild_catalog(root)
    from engines.storage_duckdb import catalog_path
    console.print(f"[green]rebuilt {catalog_path(root)}[/] from the lake: " +
                  ", ".join(f"{n} {k}" for k, n in added.items()))
