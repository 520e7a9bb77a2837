"""Fitting global stages night after night: pinned models, incremental indexes, full refits.

``fit_stage`` decides, from the stage's ``fit_policy`` (engines/stage.py) and the lake's pin
record (warehouse/pins.py), what a run does with a global stage, and returns the key its
annotations go under plus the artifact folder to apply:

- ``pinned``: the first run fits over the shards it sees and pins the artifact; later runs
  reuse it (same key: old annotation files are skipped, new shards are scored with the pinned
  model). A new fit happens only when the stage key changes (version, params, upstream keys:
  then there is no pin for the new key), when ``fit_inputs()`` differ from the pin's, or when
  the run was asked ``--refit NAME``.
- ``incremental``: the pin names the latest index state. When the shards it covers are still
  the first ones in lake order, ``fit_incremental`` adds only the new shards (a new state
  folder under the same key; the superseded state is deleted once the pin moved on). Otherwise
  (``--refit``, inputs changed, shards removed or re-ordered) a full fit starts a new lineage
  under a new key, so every shard is annotated again.
- ``full``: a fit per distinct set of input shards (the behaviour before policies existed).

Keys: ``<stage-key>-fit<id>`` for pinned and full fits, ``<stage-key>-inc<id>`` for an
incremental lineage, where ``id`` hashes the shards of the fit that started it (and the fit
inputs). Artifact folders: ``artifacts/<key>/`` (pinned, full) and ``artifacts/<key>/s-<id>/``
(one state of an incremental lineage). Each folder is written under a temporary name and
renamed when complete, with ``_fit.json`` (stage, key, policy, shards, rows, inputs, metrics),
so a crash mid-fit leaves nothing a re-run would mistake for a finished fit.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Callable

from engines import storage
from engines.executor import Executor, ShardTask
from engines.faults import fault_point
from engines.stage import GlobalStage
from engines.storage_dirs import local_dir, staged_dir
from schemas.config import stable_hash
from warehouse.catalog import Catalog, now
from warehouse.lake import Lake
from warehouse.pins import folder_bytes, read_json, read_pin, write_pin

POLICIES = ("pinned", "incremental", "full")
FIT_RECORD = "_fit.json"


class RefitError(ValueError):
    """``--refit`` names something that is not a global stage of the pipeline."""


@dataclass
class FitRun:
    """Where a fit happens: the lake, its catalog, the executor and the run asking."""

    lake: Lake
    catalog: Catalog
    executor: Executor
    run_id: str
    log: logging.Logger | logging.LoggerAdapter


def policy_of(stage: GlobalStage) -> str:
    policy = getattr(stage, "fit_policy", "full")
    if policy not in POLICIES:
        raise ValueError(f"{type(stage).__name__}.fit_policy must be one of {POLICIES}, not {policy!r}")
    return policy


def _rel(lake: Lake, path: str) -> str:
    return path[len(lake.root) + 1:]


def fit_id(lake: Lake, shards: list[str], inputs: dict[str, Any]) -> str:
    """Identity of a fit over ``shards`` (absolute paths) with these fit inputs."""
    rel = [p[len(lake.root):] for p in shards]
    return stable_hash(rel if not inputs else {"shards": rel, "inputs": inputs})[:8]


def full_fit_key(lake: Lake, stage: GlobalStage, key: str, shards: list[str]) -> str:
    """The key a ``full`` stage uses for this set of shards."""
    return f"{key}-fit{fit_id(lake, shards if stage.fit_reads_corpus else [], stage.fit_inputs())}"


def fit_stage(run: FitRun, name: str, stage: GlobalStage, key: str, tasks: list[ShardTask],
              refit: bool = False) -> tuple[str, str]:
    """Fit (or reuse, or extend) a global stage; returns (effective key, artifact folder)."""
    policy = policy_of(stage)
    if not stage.fit_reads_corpus:
        tasks = []
    shards = [t.raw_path for t in tasks]
    if policy == "full":
        fkey = full_fit_key(run.lake, stage, key, shards)
        art = run.lake.artifact_dir(fkey)
        _fit_into(run, name, stage, fkey, art, tasks, policy, lambda d: run.executor.fit(stage, tasks, d))
        return fkey, art
    inputs = stage.fit_inputs()
    pin, why = _usable_pin(run.lake, key, inputs, refit)
    if pin and policy == "pinned":
        run.log.info("stage %s: pinned model %s reused (fitted %s on %s shards)", name, pin["artifact"],
                     pin["pinned_at"], pin["trained_on"]["shards"])
        return pin["fit_key"], f"{run.lake.root}/{pin['artifact']}"
    if pin:
        extended = _extend(run, name, stage, pin, tasks)
        if extended is not None:
            return extended
        why = "the shards of the last index are no longer the first ones in lake order"
    tag = "fit" if policy == "pinned" else "inc"
    fkey = f"{key}-{tag}{fit_id(run.lake, shards, inputs)}"
    art = run.lake.artifact_dir(fkey)
    if policy == "incremental":
        art = f"{art}/s-{stable_hash([_rel(run.lake, p) for p in shards])[:8]}"
    run.log.info("stage %s: fitting over %d shards (%s)", name, len(tasks), why)
    _fit_into(run, name, stage, fkey, art, tasks, policy, lambda d: run.executor.fit(stage, tasks, d))
    _pin(run, name, stage, key, fkey, art, policy, why)
    return fkey, art


def _usable_pin(lake: Lake, key: str, inputs: dict[str, Any], refit: bool) -> tuple[dict[str, Any] | None, str]:
    """The stage key's pin if it can be used as it is, else None and why not."""
    if refit:
        return None, "refit requested"
    pin = read_pin(lake, key)
    if pin is None:
        return None, "first fit"
    if pin.get("inputs", {}) != inputs:
        return None, "training inputs changed"
    if not storage.exists(f"{lake.root}/{pin['artifact']}/{FIT_RECORD}"):
        return None, f"pinned artifact {pin['artifact']} is missing"
    return pin, ""


def _extend(run: FitRun, name: str, stage: GlobalStage, pin: dict[str, Any],
            tasks: list[ShardTask]) -> tuple[str, str] | None:
    """Add the shards after the pinned state's to an incremental index; None if the pinned
    shards are not a prefix of ``tasks`` (then the caller fits anew)."""
    lake = run.lake
    prev_dir = f"{lake.root}/{pin['artifact']}"
    prev = read_json(f"{prev_dir}/{FIT_RECORD}") or {}
    covered = prev.get("shards", [])
    rel = [_rel(lake, t.raw_path) for t in tasks]
    if rel[:len(covered)] != covered:
        return None
    new = tasks[len(covered):]
    if not new:
        return pin["fit_key"], prev_dir
    fkey = pin["fit_key"]
    art = f"{lake.artifact_dir(fkey)}/s-{stable_hash(rel)[:8]}"
    run.log.info("stage %s: adding %d new shards to the index of %d (%s)", name, len(new), len(covered), pin["artifact"])
    _fit_into(run, name, stage, fkey, art, tasks, "incremental",
              lambda d: run.executor.fit_incremental(stage, local_dir(prev_dir), new, tasks[:len(covered)], d),
              previous=pin["artifact"], rows_before=int(prev.get("rows") or 0), covered=len(covered))
    _pin(run, name, stage, pin["stage_key"], fkey, art, "incremental", f"{len(new)} new shards")
    if art != prev_dir:  # the superseded state: nothing reads it once the pin moved on
        fs, p = storage.fs_and_path(prev_dir)
        fs.rm(p, recursive=True)
    return fkey, art


def _fit_into(run: FitRun, name: str, stage: GlobalStage, fkey: str, art: str, tasks: list[ShardTask], policy: str,
              fit: Callable[[str], dict[str, Any]], previous: str | None = None, rows_before: int = 0,
              covered: int = 0) -> None:
    """Run ``fit`` into a temporary folder and rename it to ``art``, unless ``art`` is complete.
    ``covered`` leading tasks (``rows_before`` rows) are already in the previous state."""
    if storage.exists(f"{art}/{FIT_RECORD}"):
        return
    # The fit writes a local folder (its tools need local files: fastText, np.save, os.preadv); the
    # storage layer publishes it: one rename on a local lake, an upload with _fit.json last on S3.
    # A failed fit leaves nothing; a killed one leaves a .tmp folder for `curate gc`.
    with staged_dir(art, marker=FIT_RECORD) as tmp:
        metrics = fit(tmp)
        fault_point("fit:before-rename")
        record = {"stage": name, "kind": stage.kind, "key": fkey, "policy": policy,
                  "shards": [_rel(run.lake, t.raw_path) for t in tasks],
                  "rows": rows_before + sum(storage.parquet_rows(t.raw_path) for t in tasks[covered:]),
                  "inputs": stage.fit_inputs(), "previous": previous, "run_id": run.run_id,
                  "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"), "metrics": metrics}
        with open(f"{tmp}/{FIT_RECORD}", "w") as f:
            json.dump(record, f, default=str)
    fault_point("fit:before-pin")
    run.catalog.insert("artifacts", [{"stage": name, "stage_key": fkey, "path": art, "run_id": run.run_id,
                                      "metrics": json.dumps(metrics, default=str), "created_at": now()}])
    run.catalog.load_artifact_tables(name, fkey, art)  # a fit's catalog/*.parquet, e.g. semantic_groups


def _pin(run: FitRun, name: str, stage: GlobalStage, key: str, fkey: str, art: str, policy: str, reason: str) -> None:
    """Point the stage key's pin at ``art`` (lake record + catalog row)."""
    lake = run.lake
    info = read_json(f"{art}/{FIT_RECORD}") or {}
    old = read_pin(lake, key)
    rec = write_pin(lake, {
        "stage": name, "kind": stage.kind, "policy": policy, "stage_key": key, "fit_key": fkey,
        "artifact": _rel(lake, art), "pinned_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_id": run.run_id, "reason": reason, "inputs": stage.fit_inputs(), "bytes": folder_bytes(art),
        "trained_on": {"shards": len(info.get("shards", [])), "rows": info.get("rows"),
                       "fitted_at": info.get("fitted_at"), "fit_run_id": info.get("run_id")}})
    run.catalog.insert("pins", [{
        "stage": name, "kind": stage.kind, "policy": policy, "stage_key": key, "fit_key": fkey,
        "artifact": rec["artifact"], "pinned_at": now(), "run_id": run.run_id, "reason": reason,
        "shards": rec["trained_on"]["shards"], "rows": rec["trained_on"]["rows"], "bytes": rec["bytes"],
        "previous_artifact": old.get("artifact") if old else None}])


def resolve_fit_key(lake: Lake, stage: GlobalStage, key: str, shards: list[str]) -> str | None:
    """The key a run would use for this global stage now, without fitting: the pin's for pinned
    and incremental stages (None when there is none yet), the shard set's for full ones."""
    if policy_of(stage) == "full":
        return full_fit_key(lake, stage, key, shards)
    pin = read_pin(lake, key)
    return pin["fit_key"] if pin else None
