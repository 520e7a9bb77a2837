"""Ablation results: written to the lake first, loaded into the catalog from there.

Lake layout (every file written atomically through ``engines.storage``)::

    <lake>/ablations/runs/<run key>/run.json        release, seed, config, tokenizer, parameters, tokens, epochs,
                                                    decontamination findings, seconds
    <lake>/ablations/runs/<run key>/evals.parquet   step, tokens_seen, metric, value (train/loss every step,
                                                    train/lr, bpb/<set>, acc/<task>, acc_norm/<task> at eval points)
    <lake>/ablations/runs/<run key>/checkpoint/     the final weights (config.json, model.safetensors, tokenizer.json)
    <lake>/ablations/<ablation id>/ablation.json    the releases, seeds, run keys, config and the summary
    <lake>/ablations/<ablation id>/loss.png         the loss curves

A run key hashes what decides a run's numbers (training config, tokenizer, release content, seed,
eval sets), so a run is shared by every ablation that needs it: comparing tonight's release with
yesterday's retrains only tonight's. Catalog tables (``load_ablation`` rebuilds an ablation's rows
from the lake; ``load_all_ablations`` the whole tables):

- ``ablations``: one row per (ablation, release, seed): the run's key, model, parameters,
  tokenizer, tokens seen, steps, epochs over the release, decontaminated, seconds.
- ``ablation_evals``: (ablation, release, seed, step, tokens_seen, metric, value).

The summary compares every release with the first one named (the baseline), per metric at the
last step: mean and sample standard deviation over seeds, and the per-seed (paired: same seed,
same initial weights) differences with their mean, standard deviation and a 95% t-interval.
"""
from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa

from engines import storage

EVALS_SCHEMA = pa.schema([("step", pa.int64()), ("tokens_seen", pa.int64()), ("metric", pa.string()),
                          ("value", pa.float64())])


def runs_dir(lake_root: str) -> str:
    return f"{lake_root.rstrip('/')}/ablations/runs"


def ablation_dir(lake_root: str, ablation_id: str) -> str:
    return f"{lake_root.rstrip('/')}/ablations/{ablation_id}"


def write_json(url: str, obj: Any) -> None:
    with storage.atomic_path(url) as tmp:
        fs, p = storage.fs_and_path(tmp)
        with fs.open(p, "w") as f:
            f.write(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


def read_json(url: str) -> Any:
    fs, p = storage.fs_and_path(url)
    with fs.open(p, "r") as f:
        return json.load(f)


def evals_table(rows: list[tuple[int, int, str, float]]) -> pa.Table:
    cols: list[Any] = list(zip(*rows)) if rows else [[], [], [], []]
    return pa.table([pa.array(c, t.type) for c, t in zip(cols, EVALS_SCHEMA)], schema=EVALS_SCHEMA)


def read_evals(run_dir: str) -> pa.Table:
    import pyarrow.parquet as pq

    fs, p = storage.fs_and_path(f"{run_dir}/evals.parquet")
    with fs.open(p, "rb") as f:
        return pq.read_table(f)


def run_done(run_dir: str) -> bool:
    return storage.exists(f"{run_dir}/run.json")


# --- summary ---------------------------------------------------------------------------------


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, sd


def summarise(final: dict[str, dict[int, dict[str, float]]], releases: list[str]) -> list[dict[str, Any]]:
    """Rows per (metric, release) from ``final[release][seed][metric]`` (values at the last step)."""
    from scipy import stats

    base = releases[0]
    metrics = sorted({m for per_seed in final.values() for ms in per_seed.values() for m in ms})
    rows = []
    for metric in metrics:
        for rel in releases:
            seeds = sorted(s for s, ms in final.get(rel, {}).items() if metric in ms)
            vals = [final[rel][s][metric] for s in seeds]
            if not vals:
                continue
            mean, sd = _mean_sd(vals)
            row: dict[str, Any] = {"metric": metric, "release": rel, "seeds": len(vals), "mean": mean, "sd": sd,
                                   "min": min(vals), "max": max(vals), "values": vals}
            if rel != base:
                paired = [s for s in seeds if metric in final.get(base, {}).get(s, {})]
                diffs = [final[rel][s][metric] - final[base][s][metric] for s in paired]
                if diffs:
                    dm, dsd = _mean_sd(diffs)
                    half = float(stats.t.ppf(0.975, len(diffs) - 1)) * dsd / math.sqrt(len(diffs)) \
                        if dsd is not None else None
                    row.update(baseline=base, diff_mean=dm, diff_sd=dsd, diff_ci95=half, diffs=diffs)
            rows.append(row)
    return rows


# --- catalog ---------------------------------------------------------------------------------


def load_ablation(catalog: Any, lake_root: str, ablation_id: str) -> None:
    """(Re)load one ablation's rows into the catalog from its lake files (idempotent)."""
    info = read_json(f"{ablation_dir(lake_root, ablation_id)}/ablation.json")
    run_rows, eval_tables = [], []
    for r in info["runs"]:
        rdir = f"{runs_dir(lake_root)}/{r['run_key']}"
        run = read_json(f"{rdir}/run.json")
        run_rows.append({
            "ablation_id": ablation_id, "created_at": info["created_at"], "release": run["release"]["label"],
            "seed": run["seed"], "run_key": r["run_key"], "config_hash": info["config_hash"],
            "model": run["model"]["preset"], "params": run["model"]["params"],
            "params_non_embedding": run["model"]["params_non_embedding"], "tokenizer_sha256": run["tokenizer"]["sha256"],
            "export_format": run["export"]["format"], "budget_tokens": run["budget_tokens"],
            "tokens_seen": run["tokens_seen"], "steps": run["steps"], "release_tokens": run["export"]["tokens"],
            "epochs": run["epochs"], "decontaminated": run["decontamination"]["clean"],
            "seconds": run["seconds"], "path": rdir})
        t = read_evals(rdir)
        n = t.num_rows
        eval_tables.append(pa.table({
            "ablation_id": pa.array([ablation_id] * n, pa.string()),
            "release": pa.array([run["release"]["label"]] * n, pa.string()),
            "seed": pa.array([run["seed"]] * n, pa.int64()), "run_key": pa.array([r["run_key"]] * n, pa.string()),
            "step": t.column("step"), "tokens_seen": t.column("tokens_seen"), "metric": t.column("metric"),
            "value": t.column("value")}))
    with catalog.connect() as con:
        con.execute("DELETE FROM ablations WHERE ablation_id = ?", [ablation_id])
        con.execute("DELETE FROM ablation_evals WHERE ablation_id = ?", [ablation_id])
    catalog.insert("ablations", run_rows)
    if eval_tables:
        evals = pa.concat_tables(eval_tables)
        with catalog.connect() as con:
            con.register("ablation_evals_new", evals)
            con.execute("INSERT INTO ablation_evals (ablation_id, release, seed, run_key, step, tokens_seen, metric, value) "
                        "SELECT ablation_id, release, seed, run_key, step, tokens_seen, metric, value FROM ablation_evals_new")


def load_all_ablations(catalog: Any, lake_root: str) -> list[str]:
    """Load every ablation recorded in the lake (for rebuilding the catalog); returns their ids."""
    ids = [p.rstrip("/").rsplit("/", 2)[-2] for p in storage.glob(f"{lake_root.rstrip('/')}/ablations/*/ablation.json")]
    for ablation_id in ids:
        load_ablation(catalog, lake_root, ablation_id)
    return ids
