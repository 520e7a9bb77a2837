"""Multiple-choice accuracy by log-likelihood, with lm-evaluation-harness on local task files.

A benchmark is a task YAML in lm-evaluation-harness's format with ``output_type:
multiple_choice`` whose data are local files (``dataset_path: json | parquet | csv`` and
``dataset_kwargs.data_files``, resolved relative to the YAML); ``include:`` of another local
YAML is followed. The task runs through ``lm_eval.simple_evaluate`` on the in-memory model
(``lm_eval.models.huggingface.HFLM`` wrapping the ``LlamaForCausalLM`` and the ablation
tokenizer as a ``PreTrainedTokenizerFast``) with only this task indexed (no built-in tasks), zero
shots, no request cache, and the Hugging Face libraries held offline. lm-eval scores each
choice by the summed log-probability of its tokens after the context, and reports ``acc``
(argmax) and ``acc_norm`` (argmax of the sum over the choice's length in characters).

Task files that call Python (``!function`` tags) are refused: nothing in a config is run as
code. Checked: lm-eval 0.4.13 installs beside torch 2.13.0 and runs offline here (see
docs/ablation.md); it is in the ``ablate`` and ``test`` extras.

Cost: one forward pass per (example, choice), batched; lm-eval adds about a millisecond of
bookkeeping per request.
"""
from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ablations.config import AblationConfig, BenchmarkSpec
from ablations.data import AblationError
from schemas.yaml_safe import YamlLimitError, load_yaml, read_limited

LOCAL_BUILDERS = ("json", "parquet", "csv")


@dataclass
class MCTask:
    name: str  # the name in the ablation config (metrics are acc/<name>, acc_norm/<name>)
    task_name: str  # the task's own name in its YAML
    config: dict[str, Any]  # the task config, data files made absolute
    data_files: list[str]
    limit: int | None


def _load_yaml(path: Path, depth: int = 0) -> dict[str, Any]:
    if depth > 4:
        raise AblationError(f"{path}: include chain too deep")
    try:
        _, data = load_yaml(read_limited(path))  # bounded size and alias expansion, safe loader
    except FileNotFoundError:
        raise AblationError(f"benchmark task file not found: {path}") from None
    except YamlLimitError as e:
        raise AblationError(f"{path}: {e}") from None
    except yaml.constructor.ConstructorError as e:
        raise AblationError(f"{path}: {e.problem} (task files that call Python with !function are not run; "
                            "write the prompt with Jinja fields instead)") from None
    except yaml.YAMLError as e:
        raise AblationError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise AblationError(f"{path}: a task file is a mapping (task, dataset_path, doc_to_text, ...)")
    if "include" in data:
        base = _load_yaml(path.parent / str(data.pop("include")), depth + 1)
        data = {**base, **data}
    return data


def _absolute_files(files: Any, base: Path) -> Any:
    if isinstance(files, str):
        p = Path(files)
        return str(p if p.is_absolute() else (base / p).resolve())
    if isinstance(files, list):
        return [_absolute_files(f, base) for f in files]
    if isinstance(files, dict):
        return {k: _absolute_files(v, base) for k, v in files.items()}
    raise AblationError(f"dataset_kwargs.data_files must be a path, a list or a split -> path mapping, not {files!r}")


def _flatten(files: Any) -> list[str]:
    if isinstance(files, str):
        return [files]
    if isinstance(files, list):
        return [f for x in files for f in _flatten(x)]
    return [f for x in files.values() for f in _flatten(x)]


def prepare_task(spec: BenchmarkSpec, path: str) -> MCTask:
    """Read and check a task file; make its data files absolute and check that they exist."""
    yaml_path = Path(path)
    cfg = _load_yaml(yaml_path)
    where = f"benchmark {spec.name!r} ({yaml_path})"
    if not isinstance(cfg.get("task"), str):
        raise AblationError(f"{where}: the task file needs a `task:` name")
    if cfg.get("output_type") != "multiple_choice":
        raise AblationError(f"{where}: output_type is {cfg.get('output_type')!r}; ablations score multiple_choice tasks")
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    if cfg.get("dataset_path") not in LOCAL_BUILDERS or "data_files" not in kwargs:
        raise AblationError(f"{where}: needs local data: dataset_path: json | parquet | csv and "
                            "dataset_kwargs.data_files (nothing is downloaded)")
    kwargs["data_files"] = _absolute_files(kwargs["data_files"], yaml_path.parent)
    files = _flatten(kwargs["data_files"])
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise AblationError(f"{where}: data file not found: {missing[0]}")
    cfg["dataset_kwargs"] = kwargs
    cfg.pop("num_fewshot", None)
    return MCTask(spec.name, cfg["task"], cfg, files, spec.limit)


@contextmanager
def _quiet_offline(cache_dir: str) -> Iterator[None]:
    """HF libraries offline, lm-eval's progress bars (stderr) and per-request logs off, for one call."""
    keys = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": cache_dir}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_HF_TOKENIZERS: dict[str, Any] = {}


def hf_tokenizer(text_tokenizer: Any) -> Any:
    """The ablation tokenizer as a ``transformers`` fast tokenizer (what HFLM expects), adding
    the end-of-text token in front of a text, as every training document follows one."""
    key = text_tokenizer.sha256
    if key not in _HF_TOKENIZERS:
        from tokenizers import Tokenizer, processors
        from transformers import PreTrainedTokenizerFast

        eos = text_tokenizer.eos_token
        tok = Tokenizer.from_file(str(text_tokenizer.path))
        tok.post_processor = processors.TemplateProcessing(single=f"{eos} $A", special_tokens=[(eos, text_tokenizer.eos_id)])
        _HF_TOKENIZERS[key] = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, pad_token=eos)
    return _HF_TOKENIZERS[key]


def evaluate_task(model: Any, text_tokenizer: Any, task: MCTask, cfg: AblationConfig, device: str,
                  cache_dir: str) -> dict[str, float]:
    """``{"acc": ..., "acc_norm": ...}`` of the model on the task (zero-shot)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    config = {**task.config, "dataset_kwargs": {**task.config["dataset_kwargs"], "cache_dir": cache_dir}}
    with _quiet_offline(cache_dir):
        lm = HFLM(pretrained=model, tokenizer=hf_tokenizer(text_tokenizer), batch_size=cfg.eval.batch_size,
                  max_length=cfg.seq_len, device=device, add_bos_token=True)
        out = simple_evaluate(model=lm, tasks=[config], task_manager=TaskManager(include_defaults=False),
                              limit=task.limit, num_fewshot=0, bootstrap_iters=0, log_samples=False,
                              random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    if out is None:
        raise AblationError(f"lm-eval returned no results for {task.name!r}")
    res = out["results"][task.task_name]
    metrics = {"acc": float(res["acc,none"])}
    if "acc_norm,none" in res:
        metrics["acc_norm"] = float(res["acc_norm,none"])
    return metrics
