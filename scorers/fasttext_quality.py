"""fastText quality classifiers: trained on labelled sources or distilled from LLM grades.

``fasttext_quality`` (a global stage). **Fit** streams the corpus once and keeps a seeded
reservoir sample per class (at most ``max_per_class`` documents each): positives are documents
of the ``positive`` sources (say Wikipedia and docs), negatives those of ``negative`` (a noisy
web pool). ``fasttext_distill`` is the same classifier with labels from a score written by an
earlier stage (``label_column``, e.g. the LLM grader's ``score``): score >= ``label_threshold``
is positive, other graded documents negative, ungraded ones unused. So an expensive LLM grades
a sample and a classifier that scores ~10^4-10^5 documents/s per core covers the corpus.

Training: documents lower-cased with whitespace collapsed and cut to ``max_chars``; a held-out
part (``holdout``, chosen by a hash of the id) is kept out of training; fastText supervised with
word bigrams (``word_ngrams=2``), ``dim=64``, ``epoch=5``, ``lr=0.1``, one thread and a fixed
``seed``, so a fit is reproducible. Reported (and stored in the catalog's ``artifacts``):
held-out precision, recall and F1 at 0.5, and ROC AUC (rank statistic), plus class counts.

Calibration: a seeded reservoir of ``calibration_sample`` documents is scored after training to
find ``buckets`` byte-weighted percentile edges (Nemotron-CC style: bucket k holds about 1/buckets
of the corpus bytes, 0 lowest). **Apply** writes ``score`` = P(positive), ``bucket``, and, when
``select_top`` is set, ``keep``/``reason`` = the top fraction of documents or bytes
(``select_by``) by the calibrated threshold.

Cost: fit holds 2 x ``max_per_class`` + ``calibration_sample`` truncated texts (about 200 MB at
the defaults); apply is one batched fastText predict per batch.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from engines.stage import GlobalStage, StageContext, register_stage
from filters.whitespace import collapse_whitespace
from scorers.model_store import Store, agreement, load_fasttext, model_bytes, save_fasttext

LABELS = ("__label__pos", "__label__neg")
FASTTEXT_EPS = 1e-5  # what fastText adds to every probability it reports


class QualityParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    positive: list[str] = Field(default_factory=list)
    negative: list[str] = Field(default_factory=list)
    max_per_class: int = Field(default=20_000, ge=10)
    holdout: float = Field(default=0.1, gt=0, lt=0.5)
    max_chars: int = Field(default=10_000, ge=100)
    word_ngrams: int = Field(default=2, ge=1)
    dim: int = Field(default=64, ge=2)
    epoch: int = Field(default=5, ge=1)
    lr: float = Field(default=0.1, gt=0)
    min_count: int = Field(default=1, ge=1)
    seed: int = 0
    buckets: int = Field(default=20, ge=2)
    calibration_sample: int = Field(default=20_000, ge=100)
    select_top: float | None = Field(default=None, gt=0, le=1)
    select_by: Literal["documents", "bytes"] = "documents"
    # How the model is stored (scorers/model_store.py): quantised (~5 MB) by default.
    store: Store = "quantized"
    quantize_cutoff: int = Field(default=100_000, ge=1000)


class DistillParams(QualityParams):
    label_column: str = "score"
    label_threshold: float = 0.5


def normalise(texts: pl.Series, max_chars: int) -> list[str]:
    """fastText reads one line of space-separated tokens: lower-case, collapse whitespace, cut."""
    lowered = texts.fill_null("").str.slice(0, max_chars).str.to_lowercase()
    return collapse_whitespace(lowered).str.strip_chars().to_list()


def _unit_hash(ids: pl.Series, salt: str) -> np.ndarray:
    """A deterministic number in [0, 1) per id (holdout membership, reservoir keys)."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{salt}:{i}".encode(), digest_size=8).digest(), "little") / 2**64
                     for i in ids.to_list()])


def byte_weighted_edges(scores: np.ndarray, weights: np.ndarray, buckets: int) -> list[float]:
    """``buckets - 1`` score edges such that each bucket holds about 1/buckets of the bytes."""
    order = np.argsort(scores, kind="mergesort")
    cum = np.cumsum(weights[order]) / max(weights.sum(), 1.0)
    return [float(scores[order][min(np.searchsorted(cum, k / buckets), len(scores) - 1)]) for k in range(1, buckets)]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic with average ranks for ties."""
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    s = scores[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


class _Reservoir:
    """Keeps the ``k`` items with the smallest hash keys: a seeded, order-independent sample."""

    def __init__(self, k: int):
        self.k = k
        self.frames: list[pl.DataFrame] = []
        self.n = 0

    def add(self, frame: pl.DataFrame) -> None:
        if frame.height == 0:
            return
        self.frames.append(frame)
        self.n += frame.height
        if self.n > 4 * self.k:
            self._shrink()

    def _shrink(self) -> None:
        merged = pl.concat(self.frames).sort("_key").head(self.k)
        self.frames, self.n = [merged], merged.height

    def result(self) -> pl.DataFrame:
        if not self.frames:
            return pl.DataFrame()
        self._shrink()
        return self.frames[0]


class _FastTextScorer(GlobalStage):
    version = "2"  # 2: the stored model is quantised by default (scorers/model_store.py)
    Params = QualityParams
    # Fitted once, then reused night after night: old documents' scores never drift, and new
    # shards are scored by the same model (flows/fitting.py; `curate run --refit NAME`).
    fit_policy = "pinned"

    def writes(self) -> dict[str, pa.DataType]:
        cols = {"score": pa.float64(), "bucket": pa.int32()}
        if self.params.select_top is not None:  # type: ignore[attr-defined]
            cols.update({"keep": pa.bool_(), "reason": pa.string()})
        return cols

    def _labels(self, batch: pl.DataFrame) -> pl.Series:
        """1 positive, 0 negative, null unused."""
        raise NotImplementedError

    def fit(self, batches: Iterator[pl.DataFrame], artifact_dir: str) -> dict[str, Any]:
        import fasttext

        p: QualityParams = self.params  # type: ignore[assignment]
        pos, neg, calib = _Reservoir(p.max_per_class), _Reservoir(p.max_per_class), _Reservoir(p.calibration_sample)
        for b in batches:
            frame = pl.DataFrame({"id": b.get_column("id"), "text": normalise(b.get_column("text"), p.max_chars),
                                  "bytes": b.get_column("text").str.len_bytes().cast(pl.Int64),
                                  "label": self._labels(b),
                                  "_key": _unit_hash(b.get_column("id"), f"sample{p.seed}")})
            pos.add(frame.filter(pl.col("label") == 1))
            neg.add(frame.filter(pl.col("label") == 0))
            calib.add(frame.select("text", "bytes", "_key"))
        train_rows = [f for f in (pos.result(), neg.result()) if f.height]
        if not train_rows:
            raise ValueError("no labelled documents: check the stage's positive/negative sources or label column")
        data = pl.concat(train_rows).with_columns(
            pl.Series("_ho", _unit_hash(pl.concat(train_rows).get_column("id"), f"holdout{p.seed}") < p.holdout))
        train, held = data.filter(~pl.col("_ho")).sort("_key"), data.filter(pl.col("_ho"))
        counts = {"train_pos": int((train.get_column("label") == 1).sum()), "train_neg": int((train.get_column("label") == 0).sum()),
                  "holdout_pos": int((held.get_column("label") == 1).sum()), "holdout_neg": int((held.get_column("label") == 0).sum())}
        if min(counts["train_pos"], counts["train_neg"]) == 0:
            raise ValueError(f"need both classes to train, got {counts}")
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as fh:
            for label, text in zip(train.get_column("label").to_list(), train.get_column("text").to_list()):
                fh.write(f"{LABELS[0] if label == 1 else LABELS[1]} {text}\n")
            path = fh.name
        try:
            full = fasttext.train_supervised(input=path, lr=p.lr, dim=p.dim, epoch=p.epoch, wordNgrams=p.word_ngrams,
                                             minCount=p.min_count, thread=1, seed=p.seed, verbose=0)
        finally:
            os.unlink(path)
        cal = calib.result()
        # The full model's scores on the calibration sample, for the agreement with the stored
        # one: taken now, because quantising changes the model in place.
        full_scores = self._predict(full, cal.get_column("text").to_list()) if p.store == "quantized" else None
        # Metrics and calibration use the model as stored: that is the one the apply loads.
        model = save_fasttext(full, artifact_dir, p.store, p.quantize_cutoff)
        metrics: dict[str, Any] = dict(counts)
        if held.height:
            s = self._predict(model, held.get_column("text").to_list())
            y = held.get_column("label").to_numpy() == 1
            pred = s >= 0.5
            tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
            prec = tp / (tp + fp) if tp + fp else float("nan")
            rec = tp / (tp + fn) if tp + fn else float("nan")
            metrics.update(precision=prec, recall=rec, f1=2 * prec * rec / (prec + rec) if prec + rec else float("nan"),
                           auc=auc(s, y), accuracy=float((pred == y).mean()))
        cs = self._predict(model, cal.get_column("text").to_list())
        w = cal.get_column("bytes").to_numpy().astype(np.float64)
        order = np.argsort(cs, kind="mergesort")
        cum = np.cumsum(w[order]) / max(w.sum(), 1.0)
        edges = byte_weighted_edges(cs, w, p.buckets)
        threshold = None
        if p.select_top is not None:
            if p.select_by == "bytes":
                threshold = float(cs[order][min(np.searchsorted(cum, 1 - p.select_top), len(cs) - 1)])
            else:
                threshold = float(np.quantile(cs, 1 - p.select_top))
        (Path(artifact_dir) / "calibration.json").write_text(json.dumps(
            {"bucket_edges": edges, "threshold": threshold, "calibration_docs": int(cal.height)}, indent=1))
        metrics["store"] = {"format": p.store, "bytes": model_bytes(artifact_dir)}
        if (fs := full_scores) is not None:
            metrics["store"]["agreement_with_full_model"] = agreement(
                fs, cs, np.searchsorted(byte_weighted_edges(fs, w, p.buckets), fs, side="right"),
                np.searchsorted(edges, cs, side="right"))
        return metrics

    @staticmethod
    def _predict(model: Any, texts: list[str]) -> np.ndarray:
        """P(positive), computed from the smaller of the two labels' probabilities.

        fastText reports each probability as float32 ``p + 1e-5``: near 1 a float32 cannot tell
        0.99999999 from 1, so confident documents would all tie at 1.0 (and byte-weighted
        buckets could not split them). The smaller probability keeps its precision, so the
        score is ``1 - (P(neg) - 1e-5)`` when the positive label wins, ``P(pos) - 1e-5``
        otherwise."""
        labels, probs = model.predict(texts, k=2)
        first_pos = np.fromiter((lab[0] == LABELS[0] for lab in labels), dtype=bool, count=len(texts))
        second = np.fromiter((p[1] if len(p) > 1 else 0.0 for p in probs), dtype=np.float64, count=len(texts))
        second = np.maximum(second - FASTTEXT_EPS, 0.0)
        return np.clip(np.where(first_pos, 1.0 - second, second), 0.0, 1.0)

    def setup(self, ctx: StageContext) -> None:
        assert ctx.artifact_dir, f"{self.kind} needs its fitted artifact"
        self._model = load_fasttext(ctx.artifact_dir)
        cal = json.loads((Path(ctx.artifact_dir) / "calibration.json").read_text())
        self._edges = np.asarray(cal["bucket_edges"], dtype=np.float64)
        self._threshold = cal["threshold"]

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: QualityParams = self.params  # type: ignore[assignment]
        s = self._predict(self._model, normalise(batch.get_column("text"), p.max_chars))
        out = pl.DataFrame({"score": s, "bucket": np.searchsorted(self._edges, s, side="right").astype(np.int32)})
        if p.select_top is not None:
            keep = s >= self._threshold
            out = out.with_columns(pl.Series("keep", keep),
                                   pl.Series("reason", [None if k else "below_quality_threshold" for k in keep], dtype=pl.String))
        return out


@register_stage
class FastTextQuality(_FastTextScorer):
    kind = "fasttext_quality"
    source_params = ("positive[]", "negative[]")
    needs = ("text", "source")
    Params = QualityParams

    def _labels(self, batch: pl.DataFrame) -> pl.Series:
        p: QualityParams = self.params  # type: ignore[assignment]
        src = batch.get_column("source")
        return batch.select(pl.when(src.is_in(p.positive)).then(pl.lit(1, pl.Int8))
                            .when(src.is_in(p.negative)).then(pl.lit(0, pl.Int8))
                            .otherwise(pl.lit(None, pl.Int8)).alias("label")).to_series()


@register_stage
class FastTextDistill(_FastTextScorer):
    kind = "fasttext_distill"
    Params = DistillParams

    def __init__(self, params: Any = None, upstream: dict[str, str] | None = None):
        super().__init__(params, upstream)
        # The label column is whatever the config names (fed from the stage that writes it).
        self.needs = ("text", self.params.label_column)  # type: ignore[attr-defined,misc]

    def _labels(self, batch: pl.DataFrame) -> pl.Series:
        p: DistillParams = self.params  # type: ignore[assignment]
        score = batch.get_column(p.label_column).cast(pl.Float64)
        return pl.Series("label", [None if v is None else int(v >= p.label_threshold) for v in score.to_list()],
                         dtype=pl.Int8)
