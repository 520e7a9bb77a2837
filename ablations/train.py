"""One ablation run: train the proxy model on one release with one seed, evaluating as it goes.

The loop is plain PyTorch: AdamW (weight decay on matrices only), linear warm-up then cosine
(or linear, or constant) decay, gradient clipping, next-token cross-entropy averaged over the
``batch_size * seq_len`` targets of a step (micro-batches, when set, are equal slices of the
batch, so accumulation computes the same mean). Every step's loss is recorded; the model is
evaluated before training (step 0) and at the configured points. The seed sets the initial
weights; the data order is the release's. Under ``reproducible_torch`` (deterministic
algorithms, fixed threads) the same release, config and seed give the same losses bit for bit
on a CPU.

Cost per step: about 6 x parameters x tokens floating-point operations (plus attention); the
1m preset trains at a few thousand tokens per second on one CPU core.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ablations.config import AblationConfig, ScheduleSpec
from ablations.model import build_model, count_parameters, reproducible_torch

Evaluator = Callable[[Any, int], dict[str, float]]  # (model, step) -> metrics


@dataclass
class RunOutput:
    curve: list[tuple[int, int, float, float]] = field(default_factory=list)  # step, tokens, loss, lr
    evals: list[tuple[int, int, str, float]] = field(default_factory=list)  # step, tokens, metric, value
    tokens_seen: int = 0
    steps: int = 0
    epochs_started: int = 0
    params: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    model: Any = None


def lr_factor(step: int, steps: int, s: ScheduleSpec) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (1-based)."""
    warm = int(round(s.warmup_fraction * steps))
    if warm and step <= warm:
        return step / warm
    if s.decay == "constant" or steps <= warm:
        return 1.0
    t = (step - warm) / max(1, steps - warm)
    shape = 0.5 * (1 + math.cos(math.pi * t)) if s.decay == "cosine" else 1 - t
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * shape


def _optimizer(model: Any, s: ScheduleSpec) -> Any:
    import torch

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps, foreach=False)


def train_run(cfg: AblationConfig, batches: Iterator[tuple[np.ndarray, int]], *, vocab_size: int, eos_id: int,
              seed: int, device: str, evaluate: Evaluator | None = None,
              progress: Callable[[int, int, float], None] | None = None) -> RunOutput:
    """Train from scratch for ``cfg.steps`` steps on ``batches``; returns curve, evals and model."""
    import torch
    import torch.nn.functional as F

    out = RunOutput()
    eval_at = set(cfg.eval_steps())
    t0 = time.perf_counter()
    with reproducible_torch(cfg.threads, device):
        model = build_model(cfg, vocab_size, eos_id, seed).to(device)
        out.params = count_parameters(model)
        opt = _optimizer(model, cfg.schedule)
        micro = cfg.micro_batch_size or cfg.batch_size
        autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if (
            device != "cpu" and cfg.dtype == "bfloat16") else None

        def run_eval(step: int) -> None:
            if evaluate is None:
                return
            state = torch.get_rng_state()
            model.eval()
            for metric, value in evaluate(model, step).items():
                out.evals.append((step, out.tokens_seen, metric, float(value)))
            model.train()
            torch.set_rng_state(state)

        if 0 in eval_at:
            run_eval(0)
        model.train()
        for step in range(1, cfg.steps + 1):
            windows, epoch = next(batches)
            out.epochs_started = max(out.epochs_started, epoch + 1)
            lr = cfg.schedule.lr * lr_factor(step, cfg.steps, cfg.schedule)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = torch.from_numpy(windows).to(device)
            loss_sum = torch.zeros((), dtype=torch.float64)
            for i in range(0, batch.shape[0], micro):
                x, y = batch[i:i + micro, :-1], batch[i:i + micro, 1:]
                if autocast is not None:
                    with autocast:
                        logits = model(input_ids=x).logits
                else:
                    logits = model(input_ids=x).logits
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
                (loss * (x.shape[0] / batch.shape[0])).backward()
                loss_sum += loss.detach().double().cpu() * x.shape[0]
                out.tokens_seen += int(y.numel())
            if cfg.schedule.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.schedule.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            value = float(loss_sum.item() / batch.shape[0])
            if not math.isfinite(value):
                raise FloatingPointError(f"training loss is {value} at step {step}; lower schedule.lr")
            out.curve.append((step, out.tokens_seen, value, lr))
            if progress is not None:
                progress(step, out.tokens_seen, value)
            if step in eval_at:
                run_eval(step)
        out.steps = cfg.steps
    out.seconds = time.perf_counter() - t0
    out.model = model.cpu()
    return out
