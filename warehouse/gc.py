"""Garbage collection of a lake: annotation folders, artifacts and pins nothing refers to.

A folder under ``annotations/`` or ``artifacts/`` is named by a stage key. It is **live** when

- a release manifest names the key (``inputs.stages``: the annotations a release was built
  from, and the model or index that made them), or
- the current pipeline configuration(s) would use it now (``References.current``: per-shard
  stage keys, the effective keys of global stages), or
- a live pin names it (a pin is live when its stage key is current or its key is released).

Everything else under those two folders is garbage: annotations of old parameters, models and
indexes of stage configurations no longer in use, incremental index states superseded by a
newer one (a run deletes its own, so these are left only by a crash), and unfinished fits
(``artifacts/*.tmp-*``). Pins of stage keys that are neither current nor released go too.
Raw shards, releases, exports, the result cache and the catalog are never touched.

``plan`` lists the garbage with its size; ``collect`` deletes it (the caller holds the lake
lock) and records what went in ``<lake>/gc/<gc-id>.json`` and the catalog's ``gc_removed``.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from engines import storage
from warehouse.lake import Lake
from warehouse.pins import PINS_DIR, all_pins, folder_bytes, pin_path, write_json

GC_DIR = "gc"


@dataclass
class References:
    """What the pipeline configurations use now: stage keys (``<name>@<v>-<cfg>``, the keys
    pins are filed under) and effective keys (annotation and artifact folder names)."""

    stage_keys: set[str] = field(default_factory=set)
    current: set[str] = field(default_factory=set)


@dataclass
class Garbage:
    path: str  # relative to the lake root
    what: str  # annotations | artifact | index state | unfinished fit | pin
    bytes: int
    why: str


def released_keys(lake: Lake) -> dict[str, list[str]]:
    """Every stage key some release manifest names, with the releases naming it."""
    out: dict[str, list[str]] = {}
    for path in storage.glob(f"{lake.root}/releases/*/*/manifest.json"):
        fs, p = storage.fs_and_path(path)
        with fs.open(p, "r") as f:
            manifest = json.load(f)
        for key in (manifest.get("inputs", {}).get("stages") or {}).values():
            out.setdefault(key, []).append(f"{manifest.get('name')}/{manifest.get('version')}")
    return out


def _children(url: str) -> list[str]:
    """Names of the entries directly under a folder (none when it does not exist)."""
    fs, p = storage.fs_and_path(url)
    if not fs.exists(p):
        return []
    return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=False))


def plan(lake: Lake, refs: References) -> list[Garbage]:
    """What ``collect`` would delete, and why (nothing is deleted here)."""
    released = released_keys(lake)
    pins = all_pins(lake)
    live_pins = [p for p in pins if p["stage_key"] in refs.stage_keys or p.get("fit_key") in released]
    live = set(released) | refs.current | {p["fit_key"] for p in live_pins}
    pinned_states = {p["artifact"] for p in live_pins}
    out: list[Garbage] = []

    def add(rel: str, what: str, why: str) -> None:
        out.append(Garbage(rel, what, folder_bytes(f"{lake.root}/{rel}"), why))

    for name in _children(f"{lake.root}/annotations"):
        if name not in live:
            add(f"annotations/{name}", "annotations", "no release, pin or current stage uses this key")
    for name in _children(f"{lake.root}/artifacts"):
        rel = f"artifacts/{name}"
        if ".tmp-" in name:
            add(rel, "unfinished fit", "a fit that never completed (its run stopped)")
        elif name not in live:
            add(rel, "artifact", "no release, pin or current stage uses this key")
        else:
            states = [s for s in _children(f"{lake.root}/{rel}") if s.startswith("s-")]
            named = {s for s in states if f"{rel}/{s}" in pinned_states}
            for s in states:
                if ".tmp-" in s:
                    add(f"{rel}/{s}", "unfinished fit", "an index update that never completed (its run stopped)")
                elif named and s not in named:
                    add(f"{rel}/{s}", "index state", "superseded by the pinned state of the same index")
    for p in pins:
        if p not in live_pins:
            out.append(Garbage(f"{PINS_DIR}/{p['stage_key']}.json", "pin", folder_bytes(pin_path(lake, p["stage_key"])),
                               "its stage key is not in the current pipeline and no release uses its artifact"))
    return out


def collect(lake: Lake, garbage: list[Garbage], pipelines: list[str], catalog: Any | None = None) -> dict[str, Any]:
    """Delete ``garbage`` (the caller holds the lake lock) and record it: the lake record is
    written before the first deletion (status ``deleting``) and after the last (``done``)."""
    gc_id = f"gc-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    record = {"gc_id": gc_id, "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "pipelines": pipelines,
              "status": "deleting", "removed": [asdict(g) for g in garbage], "bytes": sum(g.bytes for g in garbage)}
    path = f"{lake.root}/{GC_DIR}/{gc_id}.json"
    write_json(path, record)
    fs = storage.fs_and_path(lake.root)[0]
    for g in garbage:
        target = storage.fs_and_path(f"{lake.root}/{g.path}")[1]
        if fs.exists(target):
            fs.rm(target, recursive=True)
    record.update(status="done", finished_at=datetime.now(UTC).isoformat(timespec="seconds"))
    write_json(path, record)
    if catalog is not None and garbage:
        now = datetime.now(UTC)
        catalog.insert("gc_removed", [{"gc_id": gc_id, "path": g.path, "what": g.what, "bytes": g.bytes,
                                       "removed_at": now} for g in garbage])
    return record
