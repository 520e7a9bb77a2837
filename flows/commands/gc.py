"""``curate gc``: remove annotation folders, artifacts and pins that nothing refers to.

Dry run by default (lists what would go, and how many bytes); ``--yes`` deletes, holding the
lake lock, and records what was removed (``<lake>/gc/<gc-id>.json``, catalog ``gc_removed``).
What counts as referenced: warehouse/gc.py. Give every pipeline file that writes to the lake:
a stage of a pipeline left out is kept only where a release or a pin of it refers to it.
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from typing import Any, Iterator

from schemas.config import PipelineConfig, load_config
from warehouse.gc import Garbage, References, collect, plan
from warehouse.lake import Lake


def current_references(cfg: PipelineConfig, lake: Lake) -> References:
    """The stage keys and effective keys a run of ``cfg`` would use now (no fit is run)."""
    from engines.stage import GlobalStage
    from flows.fitting import resolve_fit_key
    from flows.pipeline import configure_stages, stage_key
    refs = References()
    keys: dict[str, str] = {}
    for cs in configure_stages(cfg):
        key = stage_key(cs, keys)
        refs.stage_keys.add(key)
        if isinstance(cs.stage, GlobalStage):
            sources = [s.name for s in cfg.sources if cs.sources is None or s.name in cs.sources]
            shards = [raw for _, raw in lake.shards_by_age(sources)]
            key = resolve_fit_key(lake, cs.stage, key, shards) or key
        keys[cs.name] = key
        refs.current.add(key)
    return refs


@contextmanager
def _lake_lock(root: str) -> Iterator[None]:
    """The lake lock (warehouse/lock.py, from the lake-safety work) while deleting. Until that
    module is in this checkout there is no lock to take; the import picks it up once merged."""
    try:
        lock_mod: Any = importlib.import_module("warehouse.lock")
    except ModuleNotFoundError:
        yield
        return
    with lock_mod.lake_lock(root, "gc"):
        yield


def run_gc(pipelines: list[str], yes: bool = False) -> tuple[list[Garbage], dict[str, Any] | None]:
    """Plan (and with ``yes`` collect) the garbage of the lake the pipelines write to."""
    cfgs = [load_config(p) for p in pipelines]
    roots = {c.lake_path for c in cfgs}
    if len(roots) != 1:
        raise ValueError(f"the pipelines write to different lakes ({', '.join(sorted(roots))}): run gc once per lake")
    lake = Lake(roots.pop())
    if not yes:
        return plan(lake, _references(cfgs, lake)), None
    from warehouse.catalog import Catalog
    with _lake_lock(lake.root):  # no run can move a pin or add a key while this plans and deletes
        garbage = plan(lake, _references(cfgs, lake))
        return garbage, collect(lake, garbage, pipelines, Catalog.of_lake(lake.root))


def _references(cfgs: list[PipelineConfig], lake: Lake) -> References:
    refs = References()
    for cfg in cfgs:
        r = current_references(cfg, lake)
        refs.stage_keys |= r.stage_keys
        refs.current |= r.current
    return refs


def gc_command(pipelines: list[str], yes: bool, console: Any) -> None:
    """The CLI's output: a table of what goes (or went), and the total."""
    import typer
    from rich.table import Table

    from schemas.config import ConfigError
    try:
        garbage, record = run_gc(pipelines, yes)
    except (ConfigError, ValueError) as e:
        console.print(f"[red]{e}[/]", soft_wrap=True)
        raise typer.Exit(2) from None
    except Exception as e:  # the lake lock's errors (another writer holds it) carry their exit code
        if not hasattr(e, "exit_code"):
            raise
        console.print(f"[red]{e}[/]", soft_wrap=True)
        raise typer.Exit(int(e.exit_code)) from None
    table = Table(title="removed" if record else "would remove (dry run)")
    for col in ("what", "path", "MB", "why"):
        table.add_column(col, overflow="fold")
    for g in garbage:
        table.add_row(g.what, g.path, f"{g.bytes / 1e6:,.1f}", g.why)
    if garbage:
        console.print(table)
    total = sum(g.bytes for g in garbage) / 1e6
    if record:
        console.print(f"removed {len(garbage)} item(s), {total:,.1f} MB (record: gc/{record['gc_id']}.json)")
    elif garbage:
        console.print(f"{len(garbage)} item(s), {total:,.1f} MB: run again with --yes to delete them")
    else:
        console.print("nothing to remove: every annotation folder, artifact and pin is referenced")
