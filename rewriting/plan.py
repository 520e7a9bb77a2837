"""Routing and planning: which parents each route takes, and which shards still need work.

**Routing** (``route_shard``). A parent goes to a route when the route's ``when`` expression is
true for it (null counts as false, as in ``release.select``), when a hash of (route seed, id)
falls under ``sample_rate`` (the same parents on every run), and while the route's token budget
lasts: parents are taken in lake order (oldest ingest first, then row order), each charged its
whitespace words, and a parent that would overrun the budget ends the route's intake. Budgets
count what every earlier shard already charged (their annotations keep ``routed_tokens``), so a
nightly run spends only what is left, and a new night's shards never change earlier choices.

**Fingerprints.** A route's work on one parent shard is identified by the stage's generation
settings (model, language check), the route's own settings (method, prompts with their
versions, limits, sampling, seed), the parent shard and the ids routed: ``fingerprint``. A
derived marker with the same fingerprint and no backend errors is current; nothing is generated
or written again for it, even when the stage's key changed because an upstream stage was refit.

**Superseding.** When a route's work on a parent shard changes (new fingerprint), its new marker
lists the route's earlier live markers for that shard in ``supersedes`` (warehouse/supersede.py):
from then on only the new documents count. A route that no longer takes anything from a shard,
or whose parent shard is no longer live (re-ingested), gets a tombstone: a marker with no parts
that supersedes the stale ones.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import polars as pl

from rewriting.methods import method_for
from rewriting.methods.base import RouteConfig
from rewriting.templates import load_template
from schemas.config import stable_hash

WORDS = r"\S+"


def in_sample(ids: pl.Series, rate: float, seed: int) -> pl.Series:
    """Deterministic sample membership per id: sha256(seed, id) below ``rate``."""
    if rate >= 1:
        return pl.Series([True] * len(ids), dtype=pl.Boolean)
    prefix = f"{seed}\x1f".encode()
    return pl.Series([int(hashlib.sha256(prefix + i.encode()).hexdigest()[:8], 16) / 2**32 < rate
                      for i in ids.to_list()], dtype=pl.Boolean)


@dataclass
class Routed:
    rows: list[int]  # shard rows taken, in order
    tokens: int  # words charged


def route_shard(frame: pl.DataFrame, routes: list[RouteConfig], exprs: dict[str, pl.Expr],
                spent: dict[str, int]) -> tuple[dict[str, Routed], pl.Series]:
    """Route one shard's rows. ``frame`` holds ``id``, ``text`` (or ``_words``) and the columns the
    expressions read; ``spent`` (route -> words charged so far) is updated in place.
    Returns (route -> rows taken, words per row)."""
    words = (frame.get_column("_words") if "_words" in frame.columns
             else frame.get_column("text").str.count_matches(WORDS).cast(pl.Int64))
    empty = frame.get_column("text").str.strip_chars().str.len_bytes() == 0 if "text" in frame.columns else None
    out: dict[str, Routed] = {}
    for r in routes:
        name = r.route_name
        mask = frame.select(exprs[name].fill_null(False).alias("m")).get_column("m")
        mask = mask & in_sample(frame.get_column("id"), r.sample_rate, r.seed)
        if empty is not None:
            mask = mask & ~empty
        rows = mask.arg_true().to_list()
        taken: list[int] = []
        total = 0
        for i in rows:
            w = int(words[i])
            if r.budget_tokens is not None and spent.get(name, 0) + total + w > r.budget_tokens:
                break
            taken.append(i)
            total += w
        spent[name] = spent.get(name, 0) + total
        out[name] = Routed(taken, total)
    return out, words


def route_identity(route: RouteConfig) -> dict:
    """What decides what a routed parent becomes: the route without its routing fields, plus the
    versions of the prompts it uses."""
    method = method_for(route)
    prompts = sorted({load_template(f.template).ref for f in method.families().values()})
    keep = route.model_dump(mode="json", exclude={"when", "sample_rate", "budget_tokens"})
    if keep.get("frequency_penalty", 0) is None:  # unset: fingerprints as before the field existed
        del keep["frequency_penalty"]
    extra = method.identity()  # only when non-empty: other methods' fingerprints stay as they were
    return {"route": keep, "prompts": prompts, **({"method": extra} if extra else {})}


def fingerprint(generation_hash: str, route: RouteConfig, parent_rel: str, ids: list[str]) -> str:
    return stable_hash({"generation": generation_hash, "route": route_identity(route), "parent": parent_rel,
                        "ids": hashlib.sha256("\x1f".join(ids).encode()).hexdigest()})[:16]


def marker_key(marker: dict) -> str:
    """``<run>/<file_index>``: how a marker is named in ``supersedes``."""
    return f"{marker['ingest_run']}/{int(marker['file_index']):05d}"


def current(marker: dict, fp: str) -> bool:
    """A live derived marker that needs no redo: same fingerprint, no backend errors."""
    rw = marker.get("rewrite") or {}
    return marker.get("fingerprint") == fp and not rw.get("errors")


def run_name(stage_key: str, work: list[tuple[str, str, str]]) -> str:
    """The folder of this run's derived shards: a hash of the work planned (route, parent shard,
    fingerprint), so a re-run after a crash resumes in the same folder."""
    return "rw-" + stable_hash({"stage": stage_key, "work": sorted(work)})[:12]
