"""The ablation configuration (``ablation.yaml``), validated before any work starts.

A file looks like (``demo/ablation/ablation.yaml`` is a complete one)::

    model: {preset: 1m}              # 1m | 10m | 125m | 360m | 1b | test, plus any override below
    tokenizer: builtin               # builtin (byte-level BPE, 4,096 ids) | smollm2 | path/to/tokenizer.json
    budget_tokens: 262144            # training tokens per run (predicted tokens, counted, not rows)
    seq_len: 256
    batch_size: 16                   # sequences per optimizer step
    seeds: [0, 1, 2]
    schedule: {lr: 0.003, warmup_fraction: 0.05, decay: cosine, min_lr_ratio: 0.1}
    eval:
      points: 4                      # evaluations spread evenly over the run (plus one before training)
      heldout:                       # bits per byte on held-out text (JSONL or Parquet)
        - {name: wiki_en, path: heldout_wiki_en.jsonl, text_field: text}
      benchmarks:                    # multiple-choice accuracy (lm-evaluation-harness task files)
        - {name: cloze, task: cloze_mc.yaml}
    decontamination: require         # require | warn | off (see ablations.contamination)

Relative paths are relative to the file. Every run of every release uses the same values; the
run's seed sets the initial weights (the data order is the release's own order, which the
release step seeded and recorded). ``budget_tokens`` is rounded down to whole steps
(``batch_size * seq_len`` tokens each).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.config import ConfigError, read_config_yaml, stable_hash, validation_lines


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """A preset (see ``ablations.model.PRESETS``) and optional overrides of its Llama shape."""

    preset: str = "1m"
    hidden_size: int | None = Field(default=None, gt=0)
    intermediate_size: int | None = Field(default=None, gt=0)
    num_hidden_layers: int | None = Field(default=None, gt=0)
    num_attention_heads: int | None = Field(default=None, gt=0)
    num_key_value_heads: int | None = Field(default=None, gt=0)
    tie_word_embeddings: bool | None = None
    rope_theta: float | None = Field(default=None, gt=0)

    @field_validator("preset")
    @classmethod
    def _known(cls, v: str) -> str:
        from ablations.model import PRESETS
        if v not in PRESETS:
            raise ValueError(f"unknown model preset {v!r}; choose one of {', '.join(PRESETS)}")
        return v


class ScheduleSpec(_Strict):
    """AdamW with linear warm-up then cosine (or linear, or no) decay to ``min_lr_ratio * lr``."""

    lr: float = Field(default=3e-3, gt=0)
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1)
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0)
    grad_clip: float | None = Field(default=1.0, gt=0)


class HeldoutSpec(_Strict):
    """Held-out text for bits per byte: a JSONL (.gz) or Parquet file of documents."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: str
    format: Literal["jsonl", "parquet"] | None = None
    text_field: str = "text"
    max_docs: int | None = Field(default=None, gt=0)


class BenchmarkSpec(_Strict):
    """A multiple-choice task in lm-evaluation-harness's YAML format, with local data files."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    task: str  # path of the task YAML
    limit: int | None = Field(default=None, gt=0)


class EvalSpec(_Strict):
    points: int = Field(default=4, ge=1, le=1000)
    at_start: bool = True  # also evaluate the untrained model (step 0)
    batch_size: int = Field(default=16, gt=0)
    # Multiple-choice benchmarks at the last point only (default: they cost a forward pass per
    # choice) or at every point like the held-out sets.
    benchmark_points: Literal["last", "all"] = "last"
    heldout: list[HeldoutSpec] = []
    benchmarks: list[BenchmarkSpec] = []

    @field_validator("heldout", "benchmarks")
    @classmethod
    def _unique(cls, v: list[Any]) -> list[Any]:
        names = [s.name for s in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"eval set names must be unique, repeated: {dup}")
        return v


class AblationConfig(_Strict):
    model: ModelSpec = ModelSpec()
    tokenizer: str = "builtin"
    budget_tokens: int = Field(gt=0)
    seq_len: int = Field(default=256, gt=1)
    batch_size: int = Field(default=16, gt=0)
    # Sequences per forward pass (gradient accumulation up to batch_size); None: the whole batch.
    micro_batch_size: int | None = Field(default=None, gt=0)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    schedule: ScheduleSpec = ScheduleSpec()
    export: Literal["hf", "megatron"] = "hf"
    # A release with fewer tokens than the budget is repeated; more passes than this are refused.
    max_epochs: float = Field(default=4.0, gt=0)
    eval: EvalSpec = EvalSpec()
    decontamination: Literal["require", "warn", "off"] = "require"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    dtype: Literal["float32", "bfloat16"] = "float32"
    threads: int = Field(default=1, gt=0)  # torch intra-op threads (results are reproducible per count)
    keep_checkpoint: bool = True  # save the final weights (safetensors) beside the results
    base_dir: str = Field(default=".", exclude=True)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _steps(self) -> AblationConfig:
        if self.budget_tokens < self.tokens_per_step:
            raise ValueError(f"budget_tokens={self.budget_tokens} is less than one step "
                             f"(batch_size * seq_len = {self.tokens_per_step})")
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}")
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def steps(self) -> int:
        return self.budget_tokens // self.tokens_per_step

    @property
    def tokens_trained(self) -> int:
        """The budget actually trained: whole steps only."""
        return self.steps * self.tokens_per_step

    def eval_steps(self) -> list[int]:
        """Steps after which the model is evaluated (0 = before training), ascending, unique."""
        pts = {round(i * self.steps / self.eval.points) for i in range(1, self.eval.points + 1)}
        if self.eval.at_start:
            pts.add(0)
        return sorted(p for p in pts if p >= 0)

    def resolve(self, path: str) -> str:
        if "://" in path or Path(path).is_absolute():
            return path
        return str((Path(self.base_dir) / path).resolve())

    def training_key(self) -> dict[str, Any]:
        """What decides the weights of a run besides the release and the seed."""
        d = self.model_dump(mode="json", exclude={"seeds", "eval", "decontamination", "keep_checkpoint", "tokenizer"})
        return d

    def config_hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))[:12]


def load_ablation_config(path: str | Path | None = None, data: dict[str, Any] | None = None,
                         base_dir: str | None = None) -> AblationConfig:
    """Read and validate an ablation YAML (or an inline mapping, e.g. a pipeline's ``ablation:``).

    Raises ``ConfigError`` with one line per problem: ``file:line: key.path: message``."""
    node = None
    where = "ablation config"
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: no such ablation config (pass a YAML file, e.g. demo/ablation/ablation.yaml)")
        node, data = read_config_yaml(p)  # size and alias-expansion limits, duplicate keys
        base_dir = str(p.resolve().parent)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping (model, tokenizer, budget_tokens, eval ...)")
    data = {**data, "base_dir": base_dir or "."}
    try:
        return AblationConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError("invalid ablation config:\n  " + "\n  ".join(validation_lines(e, node, where))) from None


class PipelineAblation(_Strict):
    """The optional ``ablation:`` block of a pipeline file: ablate each new release after the run.

    ``config`` names an ablation YAML (relative to the pipeline file) or ``settings`` gives one
    inline; ``compare`` lists releases trained beside the new one (``parent``: the release it
    replaces; ``NAME`` or ``NAME/VERSION``), the first being the baseline. Runs already in the
    lake are reused, so a nightly comparison with the parent trains only the new release."""

    config: str | None = None
    settings: dict[str, Any] | None = None
    compare: list[str] = ["parent"]

    @model_validator(mode="after")
    def _one_source(self) -> PipelineAblation:
        if (self.config is None) == (self.settings is None):
            raise ValueError("give exactly one of ablation.config (a YAML file) or ablation.settings (inline)")
        return self


def pipeline_ablation(block: dict[str, Any], base_dir: str) -> tuple[PipelineAblation, AblationConfig]:
    """Validate a pipeline's ``ablation:`` block and the ablation config it names."""
    try:
        pa = PipelineAblation.model_validate(block)
    except ValidationError as e:
        raise ConfigError("invalid ablation block: " + "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or 'ablation'}: {err['msg']}" for err in e.errors())) from None
    if pa.config is not None:
        path = Path(pa.config) if Path(pa.config).is_absolute() else Path(base_dir) / pa.config
        return pa, load_ablation_config(path)
    return pa, load_ablation_config(data=pa.settings, base_dir=base_dir)
