"""``perplexity_correlation``: select data whose loss tracks benchmark performance across models.

Inputs the user supplies (real use needs tens of public LLMs scored on a GPU; the demo ships a
small, clearly labelled synthetic pair of files):

- ``bpb``: a CSV/Parquet table ``model, domain, bpb`` -- bits per byte of each public model on
  each domain (the ``perplexity`` stage computes these per document, and the catalog's
  ``bpb_matrix`` aggregates them per domain for one run's models);
- ``scores``: a CSV/Parquet table with a ``model`` column and one column per benchmark;
  ``targets`` names the benchmark columns to average and ``kind`` says whether they are
  ``error`` (lower is better) or ``accuracy`` (converted to 1 - accuracy). ``kind`` has no
  default on purpose: passing accuracy as error would silently flip the selection.

**Fit** streams the corpus once: whitespace tokens per group (``group_by``: the URL's domain,
else the source; ``source``; or ``column``: the values of a column fed as ``group`` with
``inputs: {group: STAGE.COLUMN}``, e.g. ``semantic_dedup``'s ``cluster``, so the selection runs
over topics: the bpb table's ``domain`` then holds those values) and a seeded reservoir of
documents per group. It estimates each domain's
correlation (``estimator``, default ``sign_cdf``), turns token counts into caps for the
selection ``ratio`` (a domain cannot give more tokens than it has), projects the estimate onto
the capped simplex (``projection``: ``linear`` fills the best-ranked domains up to their caps,
``l2`` is the Euclidean projection), and records the weights. To reach documents of domains no
public model was scored on, it trains a fastText classifier (selected domains' documents against
the other scored domains') and picks the score threshold that keeps ``ratio`` of the corpus
tokens (token-weighted, on a calibration sample).

**Apply** writes ``ppl_weight`` (the document's domain weight, null for unscored domains),
``ppl_score`` (classifier probability), ``keep`` and ``reason`` ("ppl_corr_not_selected").
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from engines.fingerprints import content_sha256
from engines.stage import GlobalStage, StageContext, register_stage
from scorers.fasttext_quality import LABELS, _FastTextScorer, _Reservoir, _unit_hash, normalise
from scorers.model_store import Store, has_model, load_fasttext, model_bytes, save_fasttext
from scorers.ppl_corr.estimators import estimate
from scorers.ppl_corr.projections import caps_from_tokens, project


class PplCorrParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bpb: str
    scores: str
    targets: list[str] = Field(min_length=1)
    kind: Literal["error", "accuracy"]
    estimator: Literal["spearmanr", "sign_cdf", "sign_sign", "sign", "product"] = "sign_cdf"
    projection: Literal["linear", "l2"] = "linear"
    ratio: float = Field(default=0.5, gt=0, le=1)
    group_by: Literal["domain", "source", "column"] = "domain"
    per_group_sample: int = Field(default=2000, ge=10)
    calibration_sample: int = Field(default=20_000, ge=100)
    max_chars: int = Field(default=10_000, ge=100)
    epoch: int = Field(default=10, ge=1)
    seed: int = 0
    # How the generaliser is stored (scorers/model_store.py): quantised (~5 MB) by default.
    store: Store = "quantized"
    quantize_cutoff: int = Field(default=100_000, ge=1000)


def _read(path: str) -> pl.DataFrame:
    return pl.read_csv(path) if path.endswith(".csv") else pl.read_parquet(path)


@register_stage
class PerplexityCorrelation(GlobalStage):
    kind = "perplexity_correlation"
    path_params = ("bpb", "scores")
    version = "2"  # 2: the generaliser is stored quantised by default
    needs = ("text", "domain", "source")
    Params = PplCorrParams
    # The selection and its fastText generaliser score documents: fitted once, then pinned (a
    # new bpb or scores table refits it, through fit_inputs).
    fit_policy = "pinned"

    def fit_inputs(self) -> dict[str, Any]:
        p: PplCorrParams = self.params  # type: ignore[assignment]
        return {"bpb": content_sha256(self.resolve_path(p.bpb)), "scores": content_sha256(self.resolve_path(p.scores))}

    def writes(self) -> dict[str, pa.DataType]:
        return {"ppl_weight": pa.float64(), "ppl_score": pa.float64(), "keep": pa.bool_(), "reason": pa.string()}

    def __init__(self, params: BaseModel | dict[str, Any] | None = None, upstream: dict[str, str] | None = None):
        super().__init__(params, upstream)
        if self.params.group_by == "column":  # type: ignore[attr-defined]
            self.needs = (*type(self).needs, "group")  # type: ignore[misc,assignment]

    def _group(self, batch: pl.DataFrame) -> pl.Series:
        p: PplCorrParams = self.params  # type: ignore[assignment]
        if p.group_by == "source":
            return batch.get_column("source")
        if p.group_by == "column":  # null: a document outside every group (no weight, not selected)
            return batch.get_column("group").cast(pl.String).fill_null("null")
        return batch.select(pl.coalesce("domain", "source")).to_series()

    def weights(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Domains of the bpb table, their estimates, and the y it was estimated against."""
        p: PplCorrParams = self.params  # type: ignore[assignment]
        bpb = _read(self.resolve_path(p.bpb))
        scores = _read(self.resolve_path(p.scores))
        missing = [t for t in p.targets if t not in scores.columns]
        if missing:
            raise ValueError(f"scores file has no columns {missing}; it has {scores.columns}")
        wide = bpb.pivot(on="domain", index="model", values="bpb", aggregate_function="mean")
        joined = wide.join(scores.select("model", pl.mean_horizontal(p.targets).alias("_y")), on="model", how="inner")
        domains = [c for c in wide.columns if c != "model"]
        X = joined.select(domains).to_numpy().astype(np.float64)
        if np.isnan(X).any():
            raise ValueError("the bpb table must give every model a value for every domain")
        y = joined.get_column("_y").to_numpy().astype(np.float64)
        return domains, estimate(X, y, kind=p.kind, method=p.estimator), y

    def fit(self, batches: Iterator[pl.DataFrame], artifact_dir: str) -> dict[str, Any]:
        import fasttext

        p: PplCorrParams = self.params  # type: ignore[assignment]
        domains, est, y = self.weights()
        tokens: dict[str, int] = {}
        per_group: dict[str, _Reservoir] = {}
        calib = _Reservoir(p.calibration_sample)
        for b in batches:
            g = self._group(b)
            n_tok = b.get_column("text").str.count_matches(r"\S+").cast(pl.Int64)
            frame = pl.DataFrame({"g": g, "text": normalise(b.get_column("text"), p.max_chars), "tokens": n_tok,
                                  "_key": _unit_hash(b.get_column("id"), f"ppl{p.seed}")})
            for grp, t in frame.group_by("g").agg(pl.col("tokens").sum()).iter_rows():
                tokens[grp] = tokens.get(grp, 0) + int(t)
            for (grp,), part in frame.group_by("g"):
                per_group.setdefault(str(grp), _Reservoir(p.per_group_sample)).add(part)
            calib.add(frame)
        dom_tokens = np.array([tokens.get(d, 0) for d in domains], dtype=np.float64)
        if dom_tokens.sum() == 0:
            raise ValueError("no document of the corpus belongs to a domain of the bpb table "
                             f"(table domains: {domains[:5]}...; group_by={p.group_by})")
        caps = caps_from_tokens(dom_tokens, p.ratio)
        w = project(est, caps, method=p.projection)
        selected = {d for d, wi in zip(domains, w) if wi > 0}
        pos = [per_group[d].result() for d in selected if d in per_group]
        neg = [per_group[d].result() for d in domains if d not in selected and d in per_group]
        info: dict[str, Any] = {"domains": {d: {"estimate": float(e), "weight": float(wi), "tokens": int(t)}
                                            for d, e, wi, t in zip(domains, est, w, dom_tokens)},
                                "models": int(len(y)), "estimator": p.estimator, "projection": p.projection}
        threshold, metrics = 0.0, {}
        if pos and neg and sum(f.height for f in neg):
            data = pl.concat([f.with_columns(pl.lit(1).alias("label")) for f in pos]
                             + [f.with_columns(pl.lit(0).alias("label")) for f in neg]).sort("_key")
            with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as fh:
                for lab, text in zip(data.get_column("label").to_list(), data.get_column("text").to_list()):
                    fh.write(f"{LABELS[0] if lab else LABELS[1]} {text}\n")
                path = fh.name
            try:
                full = fasttext.train_supervised(input=path, epoch=p.epoch, wordNgrams=2, dim=64, thread=1,
                                                 seed=p.seed, verbose=0)
            finally:
                os.unlink(path)
            # The threshold is calibrated with the model as stored: the one the apply loads.
            model = save_fasttext(full, artifact_dir, p.store, p.quantize_cutoff)
            cal = calib.result()
            s = _FastTextScorer._predict(model, cal.get_column("text").to_list())
            t = cal.get_column("tokens").to_numpy().astype(np.float64)
            order = np.argsort(-s, kind="mergesort")
            cum = np.cumsum(t[order]) / max(t.sum(), 1.0)
            threshold = float(s[order][min(np.searchsorted(cum, p.ratio), len(s) - 1)])
            metrics = {"classifier_docs": int(data.height), "threshold": threshold,
                       "store": {"format": p.store, "bytes": model_bytes(artifact_dir)}}
        else:
            info["note"] = "every scored domain selected or none: no classifier; keep = selected domains only"
        info.update(metrics)
        Path(artifact_dir, "selection.json").write_text(json.dumps(info, indent=1))
        return {"models": int(len(y)), "selected_domains": sorted(selected), **metrics}

    def setup(self, ctx: StageContext) -> None:

        assert ctx.artifact_dir, "perplexity_correlation needs its fitted artifact"
        info = json.loads(Path(ctx.artifact_dir, "selection.json").read_text())
        self._weights = {d: v["weight"] for d, v in info["domains"].items()}
        self._model = load_fasttext(ctx.artifact_dir) if has_model(ctx.artifact_dir) else None
        self._threshold = info.get("threshold", 0.0)

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: PplCorrParams = self.params  # type: ignore[assignment]
        g = self._group(batch).to_list()
        w = [self._weights.get(x) for x in g]
        if self._model is not None:
            s = _FastTextScorer._predict(self._model, normalise(batch.get_column("text"), p.max_chars))
            keep = s >= self._threshold
            score: list[float | None] = [float(x) for x in s]
        else:
            keep = np.array([(x or 0) > 0 for x in w])
            score = [None] * len(g)
        return pl.DataFrame({"ppl_weight": w, "ppl_score": score, "keep": keep,
                             "reason": [None if k else "ppl_corr_not_selected" for k in keep]},
                            schema={"ppl_weight": pl.Float64, "ppl_score": pl.Float64, "keep": pl.Boolean,
                                    "reason": pl.String})
