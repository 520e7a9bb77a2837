"""``curate ablate``: train the same small model on each release and compare (see ablations/)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def ablate(releases: Annotated[list[str], typer.Argument(
               help="Releases to compare: NAME (its LATEST), NAME/VERSION or a release folder. The first is the baseline.")],
           config: Annotated[Path, typer.Option("--config", "-c", help="The ablation YAML (model, budget, seeds, eval sets).")],
           lake: Annotated[str, typer.Option("--lake", "-l", help="Lake folder, or a pipeline YAML whose lake to use.")] = "./lake",
           seeds: Annotated[str | None, typer.Option(help="Override the config's seeds, e.g. 0,1,2.")] = None,
           plot: Annotated[Path | None, typer.Option(help="Also copy the loss-curve PNG here.")] = None):
    """Proxy-model ablation: train one small decoder-only LM per release and seed (same tokenizer,
    architecture, token budget, schedule and seeds), evaluate held-out bits per byte and
    multiple-choice accuracy, and record everything in the lake (<lake>/ablations/) and the
    catalog (tables ablations, ablation_evals). Finished runs are reused on a re-run.
    """
    from ablations.config import load_ablation_config
    from ablations.data import AblationError
    from ablations.runner import run_ablation
    from flows.cli import _lake_root, console
    from schemas.config import ConfigError
    from warehouse.catalog import Catalog

    try:
        cfg = load_ablation_config(config)
        if seeds:
            cfg = cfg.model_copy(update={"seeds": [int(s) for s in seeds.split(",") if s.strip()]})
    except (ConfigError, ValueError) as e:
        console.print(f"[red]{e}[/]", soft_wrap=True)
        raise typer.Exit(2) from None
    root = _lake_root(lake)
    progress = _Progress(console, cfg.steps)
    try:
        info = run_ablation(releases, cfg, root, log=lambda m: console.print(m, highlight=False), progress=progress,
                            catalog=Catalog.of_lake(root))
    except (AblationError, FileNotFoundError) as e:
        console.print(f"[red]{e}[/]", soft_wrap=True)
        raise typer.Exit(1) from None
    print_summary(console, info)
    if plot and info.get("plot"):
        import shutil
        plot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(info["plot"], plot)
        console.print(f"plot: {plot}")


class _Progress:
    """One line per ~10% of a run's steps (no live widgets, so logs stay readable)."""

    def __init__(self, console: Any, steps: int):
        self.console, self.steps, self.every = console, steps, max(1, steps // 10)

    def __call__(self, release: str, seed: int, step: int, tokens: int, loss: float) -> None:
        if step % self.every == 0 or step == self.steps:
            self.console.print(f"  {release} seed {seed}: step {step}/{self.steps}, {tokens:,} tokens, "
                               f"loss {loss:.4f}", highlight=False)


def print_summary(console: Any, info: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"ablation {info['ablation_id']}: last evaluation, mean ± sd over seeds; "
                    f"Δ = release − {info['baseline']} (paired by seed)")
    for c in ("metric", "release", "seeds", "mean ± sd", "Δ mean ± sd", "Δ 95% CI"):
        t.add_column(c)
    for r in info["summary"]:
        sd = f" ± {r['sd']:.4f}" if r.get("sd") is not None else ""
        d = ci = ""
        if "diff_mean" in r:
            d = f"{r['diff_mean']:+.4f}" + (f" ± {r['diff_sd']:.4f}" if r.get("diff_sd") is not None else "")
            if r.get("diff_ci95") is not None:
                ci = f"[{r['diff_mean'] - r['diff_ci95']:+.4f}, {r['diff_mean'] + r['diff_ci95']:+.4f}]"
        t.add_row(r["metric"], r["release"], str(r["seeds"]), f"{r['mean']:.4f}{sd}", d, ci)
    console.print(t)
    console.print(f"results: {info['path']}  (catalog tables ablations, ablation_evals; ablation_id = "
                  f"'{info['ablation_id']}')")


def print_flow_ablation(console: Any, ab: dict[str, Any]) -> None:
    """What `curate run` prints about the pipeline's ablation step."""
    if ab.get("error"):
        console.print(f"[red]ablation of {', '.join(ab['releases'])} not run:[/] {ab['error']}")
        return
    print_summary(console, {**ab, "baseline": ab["releases"][0]})
