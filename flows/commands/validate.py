"""``curate validate PIPELINE.yaml``, and the same check at the start of ``curate run``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

# Errors go to stderr, one line each, so a script (or a person) sees them without a traceback.
_err = Console(stderr=True, highlight=False, soft_wrap=True)


def check_or_exit(pipeline: Path, reingest: list[str] | None = None, quiet: bool = False) -> None:
    """Validate the pipeline file; print every problem and exit with code 2 if there is one."""
    from flows.validate import validate_pipeline
    report = validate_pipeline(pipeline, reingest or ())
    for w in report.warnings:
        _err.print(f"[yellow]warning:[/] {w}", markup=True)
    if report.errors:
        n = len(report.errors)
        _err.print(f"[red]{pipeline}: {n} problem{'s' if n != 1 else ''}[/] (nothing was run):", markup=True)
        for e in report.errors:
            _err.print(f"  {e}", markup=False)
        raise typer.Exit(2)
    if not quiet and report.cfg is not None:
        cfg = report.cfg
        typer.echo(f"{pipeline}: ok ({len(cfg.sources)} sources, {len(cfg.stages)} stages, "
                   f"release {cfg.release.name!r}; lake {cfg.lake_path})")


def validate(pipeline: Annotated[Path, typer.Argument(help="The pipeline YAML file to check.")]) -> None:
    """Check a pipeline file without running anything: schema, stage kinds and params, inputs,
    the select expression, files named in params, and that every source path matches a file.

    Exit code 0 when it is valid, 2 with one line per problem when it is not.
    """
    check_or_exit(pipeline)
