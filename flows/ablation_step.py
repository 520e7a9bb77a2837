"""The pipeline's optional ablation step: after the release, train the proxy model on it and on
the releases named in ``ablation.compare`` (see ablations/ and the ``ablation:`` block)."""
from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from ablations.config import AblationConfig, PipelineAblation, pipeline_ablation
from schemas.config import PipelineConfig


def check_ablation(cfg: PipelineConfig) -> tuple[PipelineAblation, AblationConfig] | None:
    """Validate the block before any work starts (None when the pipeline has none)."""
    return pipeline_ablation(cfg.ablation, cfg.base_dir) if cfg.ablation else None


def releases_to_compare(block: PipelineAblation, name: str, version: str, parent: str | None) -> list[str]:
    refs: list[str] = []
    for c in block.compare:
        ref = (f"{name}/{parent}" if parent else None) if c == "parent" else c
        if ref and ref not in refs and ref != f"{name}/{version}":
            refs.append(ref)
    return refs + [f"{name}/{version}"]


@task(name="ablate", retries=0, cache_policy=NONE)
def ablate_release(lake_root: str, catalog: Any, cfg: PipelineConfig, rel: dict[str, Any]) -> dict[str, Any]:
    from ablations.data import AblationError, resolve_release
    from ablations.runner import run_ablation
    from warehouse.export.release_reader import open_release

    checked = check_ablation(cfg)
    assert checked is not None
    block, acfg = checked
    parent = open_release(rel["path"]).manifest.get("parent")
    refs = releases_to_compare(block, rel["name"], rel["version"], parent)
    log = get_run_logger()
    try:
        # `compare: [NAME]` names LATEST, which may be the new release itself: train it once.
        labels = list(dict.fromkeys(resolve_release(r, lake_root).label for r in refs))
        refs = labels if len(labels) < len(refs) else refs
        info = run_ablation(refs, acfg, lake_root, log=log.info, catalog=catalog)
    except AblationError as e:  # the release stands; say why its ablation did not run
        log.error("ablation of %s not run: %s", ", ".join(refs), e)
        return {"error": str(e), "releases": refs}
    log.info("ablation %s of %s: %s", info["ablation_id"], ", ".join(refs), info["path"])
    return {"ablation_id": info["ablation_id"], "releases": refs, "path": info["path"], "summary": info["summary"]}
