"""Reproduce the ablation experiment of docs/ablation.md (CPU, minutes; needs the ablate extra).

1. Writes generated/shuffled.jsonl: every document of the demo's four text sources (English,
   French and Spanish Wikipedia summaries, Python docs) with its words shuffled (fixed seed).
2. `curate run clean.yaml`: the demo-style cleaned release (demo-clean).
3. Writes generated/unfiltered.yaml: unfiltered.yaml with absolute paths and its mixture budget
   set to demo-clean's token count, then `curate run` on it (demo-unfiltered).
4. `curate ablate demo-clean demo-unfiltered --config ablation.yaml`, plot to docs/ablation_loss.png.

Usage (from the repository root): .venv/bin/python demo/ablation/run.py
Everything is written under demo/ablation/lake and demo/ablation/generated (git-ignored).
"""
from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import polars as pl
import yaml
import zstandard

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CURATE = [sys.executable, "-m", "flows.cli"]


def _texts(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        return pl.read_parquet(path, columns=["text"]).get_column("text").to_list()
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    elif path.suffix == ".zst":
        raw = zstandard.ZstdDecompressor().stream_reader(raw).read()
    return [json.loads(line)["text"] for line in raw.decode().splitlines() if line.strip()]


def write_shuffled(out: Path) -> None:
    """One word-shuffled copy of every document (the degraded source); deterministic. The file
    is rewritten only when its content would change: a new modification time would make the
    next `curate run` ingest it again as a new input file."""
    rng = random.Random(18)
    lines = []
    for name in ("wiki_en.parquet", "wiki_fr.jsonl.gz", "wiki_es.jsonl.zst", "python_docs.jsonl"):
        for i, text in enumerate(_texts(REPO / "demo" / "data" / name)):
            words = text.split()
            rng.shuffle(words)
            lines.append(json.dumps({"id": f"{name}:{i}", "text": " ".join(words)}, ensure_ascii=False) + "\n")
    data = "".join(lines).encode()
    if out.exists() and out.read_bytes() == data:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)


def absolute(cfg: dict, base: Path) -> dict:
    cfg["lake"] = str((base / cfg["lake"]).resolve())
    for s in cfg["sources"]:
        s["paths"] = [str((base / p).resolve()) for p in s["paths"]]
    for st in cfg["stages"]:
        for b in st.get("params", {}).get("benchmarks", []):
            b["path"] = str((base / b["path"]).resolve())
    return cfg


def run(*args: str) -> None:
    print("$ curate " + " ".join(args), flush=True)
    subprocess.run(CURATE + list(args), cwd=REPO, check=True)


def main() -> None:
    write_shuffled(HERE / "generated" / "shuffled.jsonl")
    run("run", str(HERE / "clean.yaml"))
    lake = HERE / "lake"
    clean_version = (lake / "releases" / "demo-clean" / "LATEST").read_text().strip()
    clean = json.loads((lake / "releases" / "demo-clean" / clean_version / "manifest.json").read_text())
    cfg = absolute(yaml.safe_load((HERE / "unfiltered.yaml").read_text()), HERE)
    cfg["release"]["mixture"]["budget"] = clean["totals"]["tokens"]
    resolved = HERE / "generated" / "unfiltered.yaml"
    resolved.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run("run", str(resolved))
    run("ablate", "demo-clean", "demo-unfiltered", "--config", str(HERE / "ablation.yaml"), "--lake", str(lake),
        "--plot", str(REPO / "docs" / "ablation_loss.png"))


if __name__ == "__main__":
    main()
