"""The whole ablation: every release x every seed, resumable, recorded in the lake and catalog.

``run_ablation(["demo/V1", "demo/V2"], cfg, lake_root)`` checks everything that can be checked
before any training (releases exist, the tokenizer loads, the eval files load, the releases were
decontaminated against them, each release has enough tokens for the budget within
``max_epochs``), then trains one run per (release, seed) in the order given, skipping runs whose
results are already in the lake (same run key: a re-run after a crash, or a release compared
again), writes ``ablation.json`` with the summary, loads the catalog tables and draws the plot.
The first release named is the baseline of the summary's differences.
"""
from __future__ import annotations

import io
import platform
import tempfile
import time
from collections.abc import Callable
from contextlib import redirect_stderr
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ablations import results as res
from ablations.config import AblationConfig
from ablations.contamination import EvalFile, Finding, as_records, check_releases
from ablations.data import AblationError, ReleaseRef, batches, document_stream, ensure_export, resolve_release
from ablations.evaluate import EncodedText, bits_per_byte, encode_heldout, load_heldout
from ablations.model import model_shape, resolve_device
from ablations.tokenizer import resolve_tokenizer
from engines import storage
from schemas.config import stable_hash

Log = Callable[[str], None]
# Bump when a change to the training or evaluation code changes the numbers of a run.
RUN_FORMAT = 1


@dataclass
class Prepared:
    """Everything a run needs, checked before the first step."""

    cfg: AblationConfig
    lake_root: str
    releases: list[ReleaseRef]
    exports: dict[str, tuple[Path, dict[str, Any]]]
    tokenizer: Any  # warehouse.export.tokenize.TextTokenizer
    heldout: list[EncodedText]
    benchmarks: list[Any]  # ablations.mc.MCTask
    eval_identity: list[dict[str, Any]]
    findings: list[Finding]
    device: str
    workdir: str
    epochs: dict[str, float] = field(default_factory=dict)


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def prepare(refs: list[str], cfg: AblationConfig, lake_root: str, workdir: str, log: Log = print) -> Prepared:
    """Resolve and check everything; raises ``AblationError`` (a one-line message) on a user mistake."""
    from engines.fingerprints import content_sha256
    from warehouse.export.tokenize import TextTokenizer

    if not refs:
        raise AblationError("name at least one release (NAME, NAME/VERSION or a release folder)")
    releases = [resolve_release(r, lake_root) for r in refs]
    labels = [r.label for r in releases]
    if len(set(labels)) != len(labels):
        raise AblationError(f"a release is named twice: {labels}")
    try:
        tok = TextTokenizer(resolve_tokenizer(cfg.tokenizer, cfg.base_dir))
    except (FileNotFoundError, ValueError) as e:
        raise AblationError(f"tokenizer: {e}") from None
    try:  # a bad shape override or a missing GPU fails here, not after the exports
        model_shape(cfg)
        device = resolve_device(cfg)
    except ValueError as e:
        raise AblationError(f"model: {e}") from None

    heldout, files, identity = [], [], []
    for spec in cfg.eval.heldout:
        path = cfg.resolve(spec.path)
        heldout.append(encode_heldout(spec.name, load_heldout(spec, path), tok.tok, int(tok.eos_id or 0)))
        files.append(EvalFile(spec.name, path, (spec.text_field,)))
        identity.append({"heldout": spec.model_dump(mode="json"), "fingerprint": content_sha256(Path(path))})
    benchmarks = []
    if cfg.eval.benchmarks:
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            raise AblationError("eval.benchmarks need lm-evaluation-harness: pip install -e '.[ablate]'") from None
        from ablations.mc import prepare_task
        for bspec in cfg.eval.benchmarks:
            task = prepare_task(bspec, cfg.resolve(bspec.task))
            benchmarks.append(task)
            files.extend(EvalFile(bspec.name, f, None) for f in task.data_files)
            identity.append({"benchmark": bspec.model_dump(mode="json"), "config": task.config,
                             "fingerprints": [content_sha256(Path(f)) for f in task.data_files]})
    if not files:
        log("warning: no eval sets configured (eval.heldout, eval.benchmarks): only the training loss is recorded")
    findings = check_releases(releases, files, lake_root, cfg.decontamination, log=log)

    exports: dict[str, tuple[Path, dict[str, Any]]] = {}
    epochs: dict[str, float] = {}
    for rel in releases:
        exports[rel.label] = ensure_export(rel, lake_root, cfg.export, tok.path, tok.sha256, log=log)
        have = int(exports[rel.label][1].get("tokens") or 0)
        epochs[rel.label] = (cfg.tokens_trained + 1) / have if have else float("inf")
        if epochs[rel.label] > cfg.max_epochs:
            raise AblationError(f"release {rel.label} has {have:,} tokens: the budget of {cfg.tokens_trained:,} would "
                                f"read it {epochs[rel.label]:.1f} times (max_epochs: {cfg.max_epochs}); lower "
                                "budget_tokens or raise max_epochs")
        if epochs[rel.label] > 1:
            log(f"note: release {rel.label} ({have:,} tokens) is read {epochs[rel.label]:.2f} times to fill the budget")
        elif epochs[rel.label] < 1:
            log(f"note: the budget covers the first {epochs[rel.label]:.0%} of release {rel.label} in its order; "
                "later parts (e.g. an end phase) are not trained on")
    return Prepared(cfg, lake_root, releases, exports, tok, heldout, benchmarks, identity, findings, device, workdir,
                    epochs)


def run_key(p: Prepared, rel: ReleaseRef, seed: int) -> str:
    return stable_hash({"format": RUN_FORMAT, "training": p.cfg.training_key(), "tokenizer": p.tokenizer.sha256,
                        "release": [rel.label, rel.content_hash], "seed": seed,
                        "eval": {"points": p.cfg.eval_steps(), "batch_size": p.cfg.eval.batch_size,
                                 "benchmark_points": p.cfg.eval.benchmark_points,
                                 "sets": p.eval_identity}})[:16]


def ablation_id(p: Prepared) -> str:
    return "abl-" + stable_hash({"keys": [[r.label, s, run_key(p, r, s)] for r in p.releases for s in p.cfg.seeds],
                                 "config": p.cfg.model_dump(mode="json")})[:12]


def _evaluator(p: Prepared) -> Callable[[Any, int], dict[str, float]]:
    def evaluate(model: Any, step: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for text in p.heldout:
            out[f"bpb/{text.name}"] = bits_per_byte(model, text, p.cfg.seq_len, p.cfg.eval.batch_size, p.device)
        if p.benchmarks and (p.cfg.eval.benchmark_points == "all" or step == p.cfg.steps):
            from ablations.mc import evaluate_task
            for task in p.benchmarks:
                for metric, value in evaluate_task(model, p.tokenizer, task, p.cfg, p.device,
                                                   f"{p.workdir}/hf-datasets").items():
                    out[f"{metric}/{task.name}"] = value
        return out
    return evaluate


def train_one(p: Prepared, rel: ReleaseRef, seed: int, key: str, log: Log = print,
              progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Train and evaluate one run; write its folder; return its run.json record."""
    from ablations.train import train_run

    export_dir, info = p.exports[rel.label]
    stream = batches(lambda: document_stream(export_dir, info), batch_size=p.cfg.batch_size, seq_len=p.cfg.seq_len,
                     steps=p.cfg.steps)
    out = train_run(p.cfg, stream, vocab_size=p.tokenizer.vocab_size, eos_id=int(p.tokenizer.eos_id or 0), seed=seed,
                    device=p.device, evaluate=_evaluator(p), progress=progress)
    rows = [(s, t, "train/loss", v) for s, t, v, _ in out.curve] + [(s, t, "train/lr", lr) for s, t, _, lr in out.curve]
    rows += out.evals
    rows.sort(key=lambda r: (r[0], r[2]))
    last = max((s for s, *_ in out.evals), default=None)
    final = {m: v for s, _, m, v in out.evals if s == last}
    if out.curve:
        final["train/loss"] = out.curve[-1][2]
    rdir = f"{res.runs_dir(p.lake_root)}/{key}"
    if p.cfg.keep_checkpoint:
        _save_checkpoint(out.model, p.tokenizer.path, f"{rdir}/checkpoint")
    storage.write_table_atomic(f"{rdir}/evals.parquet", res.evals_table(rows))
    mine = [f for f in p.findings if f.release == rel.label]
    record = {
        "run_key": key, "release": {"label": rel.label, "dir": str(rel.dir), "content_hash": rel.content_hash,
                                    "selection": rel.manifest.get("selection"), "order": rel.manifest.get("order")},
        "seed": seed, "config": p.cfg.model_dump(mode="json"), "config_hash": p.cfg.config_hash(),
        "model": {"preset": p.cfg.model.preset, "architecture": "LlamaForCausalLM", "shape": model_shape(p.cfg),
                  **out.params},
        "tokenizer": p.tokenizer.describe(),
        "export": {"dir": str(export_dir), "format": info["format"], "tokens": int(info["tokens"]), "rows": info["rows"]},
        "budget_tokens": p.cfg.tokens_trained, "tokens_seen": out.tokens_seen, "steps": out.steps,
        "epochs": p.epochs[rel.label], "eval_steps": p.cfg.eval_steps(), "final": final,
        "decontamination": {"policy": p.cfg.decontamination, "clean": all(f.clean for f in mine) if mine else None,
                            "findings": as_records(mine)},
        "device": p.device, "threads": p.cfg.threads, "seconds": round(out.seconds, 2),
        "versions": {"torch": _package_version("torch"), "transformers": _package_version("transformers"),
                     "python": platform.python_version()},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    res.write_json(f"{rdir}/run.json", record)  # last: its presence marks the run complete
    return record


def _save_checkpoint(model: Any, tokenizer_path: Path, url: str) -> None:
    fs, path = storage.fs_and_path(url)
    with tempfile.TemporaryDirectory(prefix="curate-ckpt-") as tmp:
        with redirect_stderr(io.StringIO()):  # transformers' progress bar
            model.save_pretrained(tmp, safe_serialization=True)
        (Path(tmp) / "tokenizer.json").write_bytes(tokenizer_path.read_bytes())
        if fs.exists(path):
            fs.rm(path, recursive=True)
        fs.makedirs(storage.parent(path), exist_ok=True)
        fs.put(tmp.rstrip("/") + "/", path, recursive=True)


def run_ablation(refs: list[str], cfg: AblationConfig, lake_root: str, *, log: Log = print,
                 progress: Callable[[str, int, int, int, float], None] | None = None, catalog: Any = None,
                 plot: bool = True) -> dict[str, Any]:
    """Run (or resume) an ablation; returns ``ablation.json``'s content (with ``summary``)."""
    lake_root = lake_root.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="curate-ablate-") as workdir:
        p = prepare(refs, cfg, lake_root, workdir, log=log)
        aid = ablation_id(p)
        runs: list[dict[str, Any]] = []
        final: dict[str, dict[int, dict[str, float]]] = {}
        evals: dict[tuple[str, int], Any] = {}
        t0 = time.perf_counter()
        for rel in p.releases:
            for seed in cfg.seeds:
                key = run_key(p, rel, seed)
                rdir = f"{res.runs_dir(lake_root)}/{key}"
                if res.run_done(rdir):
                    log(f"{rel.label} seed {seed}: already trained ({rdir}), reusing")
                    record = res.read_json(f"{rdir}/run.json")
                else:
                    log(f"{rel.label} seed {seed}: training {cfg.steps} steps ({cfg.tokens_trained:,} tokens)")
                    cb = (lambda step, tokens, loss, _r=rel.label, _s=seed: progress(_r, _s, step, tokens, loss)) \
                        if progress else None
                    record = train_one(p, rel, seed, key, log=log, progress=cb)
                runs.append({"release": rel.label, "seed": seed, "run_key": key})
                final.setdefault(rel.label, {})[seed] = record["final"]
                evals[(rel.label, seed)] = res.read_evals(rdir)
        labels = [r.label for r in p.releases]
        info = {
            "ablation_id": aid, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "releases": labels, "baseline": labels[0], "seeds": cfg.seeds, "runs": runs,
            "config": cfg.model_dump(mode="json"), "config_hash": cfg.config_hash(),
            "tokenizer": p.tokenizer.describe(), "budget_tokens": cfg.tokens_trained, "steps": cfg.steps,
            "decontamination": as_records(p.findings), "summary": res.summarise(final, labels),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        adir = res.ablation_dir(lake_root, aid)
        if plot:
            from ablations.plot import plot_ablation, plot_available
            if plot_available():
                png = Path(workdir) / "loss.png"
                plot_ablation(evals, labels, str(png), f"{aid}: {cfg.model.preset} model, {cfg.tokens_trained:,} tokens, "
                              f"seeds {cfg.seeds}")
                fs, path = storage.fs_and_path(f"{adir}/loss.png")
                fs.makedirs(storage.parent(path), exist_ok=True)
                fs.put(str(png), path)
                info["plot"] = f"{adir}/loss.png"
            else:
                log("note: matplotlib is not installed (pip install -e '.[ablate]'): no plot")
        res.write_json(f"{adir}/ablation.json", info)
        if catalog is not None:
            res.load_ablation(catalog, lake_root, aid)
        info["path"] = adir
        return info
