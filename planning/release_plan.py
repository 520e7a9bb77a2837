"""What a planned release includes and in which order: mixture -> sampling -> curriculum.

``plan_release`` takes, per source, a small frame of the documents the selection kept (no text:
``key`` (an opaque pointer the release step understands), ``id``, ``n_tokens`` and, if a
curriculum needs one, ``difficulty``) and returns the included copies in training order plus
the manifest fields that describe the plan. The release step (warehouse.release) then fetches
the texts in that order. Memory: a few dozen bytes per kept document.

Without a ``mixture`` every kept document is included once (phase 0); without a ``curriculum``
the order is seeded random.
"""
from __future__ import annotations

from collections.abc import Collection
from typing import Any, Callable

import polars as pl

from engines.extras import check as check_extras
from planning.curriculum import CurriculumConfig, order_release
from planning.mixture import METHOD_REQUIRES, MixtureConfig, plan_mixture
from planning.sampling import phase_boundaries, plan_sampling, sample_source
from planning.synthetic import with_synthetic_share

PlanFn = Callable[[dict[str, pl.DataFrame]], tuple[pl.DataFrame, dict[str, Any]]]


def make_planner(mixture: dict[str, Any] | None, curriculum: dict[str, Any] | None, anneal: dict[str, Any] | None,
                 seed: int, results: pl.DataFrame | None = None, synthetic: Collection[str] = ()) -> PlanFn:
    """Validate the configuration now (so errors come before any work) and return the planner.
    ``synthetic``: the derived sources (for ``mixture.synthetic_share``)."""
    mix = MixtureConfig.model_validate(mixture) if mixture is not None else None
    cur = CurriculumConfig.model_validate(curriculum or {"kind": "random"})
    ann = CurriculumConfig.model_validate(anneal) if anneal is not None else None
    if mix is not None:
        check_extras(f"release.mixture.method {mix.method!r}", METHOD_REQUIRES.get(mix.method, {}))
    if mix is not None and mix.method in ("regmix", "mixing_law", "cmr") and results is None:
        raise ValueError(f"release.mixture.method {mix.method!r} needs release.mixture.results "
                         "(a CSV/Parquet table of proxy-run results)")
    if mix is not None and mix.synthetic_share is not None and mix.group_by:
        raise ValueError("release.mixture: synthetic_share and group_by cannot be combined (group by "
                         "<rewrite stage>.origin to plan real against synthetic text by groups)")

    def plan(per_source: dict[str, pl.DataFrame]) -> tuple[pl.DataFrame, dict[str, Any]]:
        if mix is not None and mix.group_by:
            picks, extras = _plan(regroup(per_source, mix.group_by))
            return restore_sources(picks), {**extras, "group_by": mix.group_by}
        return _plan(per_source)

    def _plan(per_source: dict[str, pl.DataFrame]) -> tuple[pl.DataFrame, dict[str, Any]]:
        sources = [s for s, f in per_source.items() if f.height]
        extras: dict[str, Any] = {"curriculum": cur.model_dump(), "anneal": ann.model_dump() if ann else None}
        if mix is None:
            picks = pl.concat([f.with_columns(pl.lit(s).alias("source"), pl.lit(0, pl.Int64).alias("phase"),
                                              pl.lit(0, pl.Int64).alias("copy")) for s, f in per_source.items()],
                              how="vertical_relaxed") if per_source else pl.DataFrame()
            extras["phases"] = [{"name": "main", "start_row": 0, "end_row": picks.height}]
        else:
            tokens = {s: float(per_source[s].get_column("n_tokens").sum()) for s in sources}
            share = mix.synthetic_share if any(s in synthetic for s in sources) else None
            syn_tokens = {s: t for s, t in tokens.items() if s in synthetic} if share else {}
            real_tokens = {s: t for s, t in tokens.items() if s not in syn_tokens}
            use = mix
            if mix.end_phase is not None and mix.end_phase.upsample:
                # A source the selection emptied cannot be upsampled: note it instead of failing.
                gone = sorted(set(mix.end_phase.upsample) - set(sources))
                if gone:
                    extras["notes"] = [f"end_phase.upsample names sources with no kept documents: {gone}"]
                    kept_up = {k: v for k, v in mix.end_phase.upsample.items() if k in sources}
                    use = mix.model_copy(update={"end_phase": mix.end_phase.model_copy(
                        update={"upsample": kept_up or None})})
            mplan = plan_mixture(use, real_tokens, results=results)
            if share:
                mplan = with_synthetic_share(mplan, syn_tokens, share)
            splan = plan_sampling(mplan, tokens, rows={s: per_source[s].height for s in sources},
                                  max_epochs=mix.max_epochs, seed=seed)
            samples, parts = [], []
            for s in sources:
                f = per_source[s]
                smp = sample_source(splan, s, f.get_column("id"), f.get_column("n_tokens"))
                samples.append(smp)
                rows = smp.get_column("row").to_numpy()
                parts.append(f[rows].with_columns(pl.lit(s).alias("source"), smp.get_column("phase").cast(pl.Int64),
                                                  smp.get_column("copy").cast(pl.Int64)))
            picks = pl.concat(parts, how="vertical_relaxed")
            extras.update(mixture=mplan.to_dict(), sampling=splan.to_dict(), phases=phase_boundaries(splan, samples))
        if picks.height == 0:
            return picks, extras
        perm, starts = order_release(picks, cur, seed, anneal=ann)
        extras["phase_starts"] = [int(x) for x in starts]
        return picks[perm], extras

    return plan


GROUP_SOURCE = "_source"


def regroup(per_source: dict[str, pl.DataFrame], column: str) -> dict[str, pl.DataFrame]:
    """The kept documents of every source, re-split by the values of ``column`` (an annotation
    column the release step put in the frames, e.g. ``sem.cluster``): groups named
    ``<column>=<value>``, in sorted order; each row remembers its source in ``_source``."""
    frames = [f.with_columns(pl.lit(s).alias(GROUP_SOURCE)) for s, f in per_source.items() if f.height]
    if not frames:
        return {}
    allrows = pl.concat(frames, how="vertical_relaxed")
    if column not in allrows.columns:
        raise ValueError(f"release.mixture.group_by: column {column!r} is not in the release frames")
    label = pl.lit(column + "=") + pl.col(column).cast(pl.String).fill_null("null")
    allrows = allrows.with_columns(label.alias("_group"))
    groups = sorted(allrows.get_column("_group").unique().to_list(), key=_natural)
    return {g: allrows.filter(pl.col("_group") == g).drop("_group") for g in groups}


def restore_sources(picks: pl.DataFrame) -> pl.DataFrame:
    """Planned picks of a grouped plan with ``source`` back to the document's source and the
    group it was planned in as ``group``."""
    if picks.height == 0 or GROUP_SOURCE not in picks.columns:
        return picks
    return picks.with_columns(pl.col("source").alias("group"), pl.col(GROUP_SOURCE).alias("source")).drop(GROUP_SOURCE)


def _natural(label: str) -> tuple:
    value = label.rsplit("=", 1)[-1]
    return (0, int(value), "") if value.lstrip("-").isdigit() else (1, 0, value)
