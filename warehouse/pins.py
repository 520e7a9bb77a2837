"""Pins: which fitted artifact each global stage uses, recorded in the lake.

``<lake>/pins/<stage-key>.json`` names the artifact a ``pinned`` or ``incremental`` global stage
currently applies (docs/nightly.md). The flow reads it before fitting: a pin whose training
inputs still match is reused (a pinned model) or extended (an incremental index); otherwise the
stage is fitted and the pin rewritten. Every change is also a row of the catalog's ``pins``
table. A record holds:

- ``stage``, ``kind``, ``policy``, ``stage_key`` (``<name>@<version>-<cfg>``);
- ``fit_key``: the key the stage's annotations are written under (``annotations/<fit_key>/``)
  and that downstream stages see; it stays the same for as long as the pin stands;
- ``artifact``: the artifact folder, relative to the lake root;
- ``pinned_at``, ``run_id``, ``reason`` (first fit, ``--refit``, inputs changed, new shards);
- ``trained_on``: shards and rows the artifact covers, ``inputs`` (``GlobalStage.fit_inputs``),
  ``bytes`` (size of the artifact folder);
- ``history``: earlier pins of the same stage key under other keys (earlier models or index
  lineages, without their own history), newest last.

Writes are atomic (temporary file and rename), so a crash leaves the old pin or the new one.
"""
from __future__ import annotations

import json
from typing import Any

from engines import storage
from warehouse.lake import Lake

PINS_DIR = "pins"
# Fields copied into the history (the shard list of a pin is in the artifact's _fit.json).
_HISTORY_FIELDS = ("fit_key", "artifact", "pinned_at", "run_id", "reason", "trained_on")


def pin_path(lake: Lake, stage_key: str) -> str:
    return f"{lake.root}/{PINS_DIR}/{stage_key}.json"


def read_json(url: str) -> dict[str, Any] | None:
    """A JSON object from the lake, or None when the file does not exist."""
    if not storage.exists(url):
        return None
    fs, p = storage.fs_and_path(url)
    with fs.open(p, "r") as f:
        out = json.load(f)
    return out if isinstance(out, dict) else None


def write_json(url: str, obj: dict[str, Any]) -> None:
    """Replace ``url`` with ``obj`` as JSON, atomically."""
    storage.write_bytes_atomic(url, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def read_pin(lake: Lake, stage_key: str) -> dict[str, Any] | None:
    return read_json(pin_path(lake, stage_key))


def write_pin(lake: Lake, record: dict[str, Any]) -> dict[str, Any]:
    """Write the pin of ``record["stage_key"]``, moving the previous one into ``history`` when it
    had another key (another model, or another index lineage; the nightly states of one index
    are not history). Returns the record written."""
    old = read_pin(lake, record["stage_key"])
    history = list(old.get("history", [])) if old else []
    if old and old.get("fit_key") != record.get("fit_key"):
        history.append({k: old.get(k) for k in _HISTORY_FIELDS})
    record = {**record, "history": history}
    write_json(pin_path(lake, record["stage_key"]), record)
    return record


def all_pins(lake: Lake) -> list[dict[str, Any]]:
    """Every pin record of the lake, sorted by stage key."""
    out = []
    for path in storage.glob(f"{lake.root}/{PINS_DIR}/*.json"):
        rec = read_json(path)
        if rec and "stage_key" in rec:
            out.append(rec)
    return sorted(out, key=lambda r: r["stage_key"])


def folder_bytes(url: str) -> int:
    """Total size of the files under a folder (0 when it does not exist)."""
    fs, p = storage.fs_and_path(url)
    if not fs.exists(p):
        return 0
    return int(sum(info.get("size") or 0 for info in fs.find(p, detail=True).values()))
