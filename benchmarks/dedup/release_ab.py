"""The release step of the dedup user path alone, this tree against another checkout, alternating.

On a lake where ``curate run`` of the user-path pipeline (benchmarks/dedup/user_path.py) has run,
each round runs ``build_release`` with the run's stages and keys (read from its catalog) in a fresh
child process per code tree, after removing the release and its report folder, and prints the
child's CPU seconds (all threads), wall seconds and the sha256 of every release shard (equal
between the trees when the release is byte-identical)::

    .venv/bin/python -m benchmarks.dedup.release_ab --pipeline /tmp/up/pipeline.yaml --peer-code /tmp/curate-main

Cost: one release per round and tree (~5 CPU s at 200,000 documents).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from engines.allocators import apply_defaults
apply_defaults()
import duckdb
from flows.pipeline import configure_stages
from schemas.config import load_config
from warehouse.lake import Lake
from warehouse.release import StageInfo, build_release
cfg = load_config(sys.argv[2])
lake = Lake(cfg.lake_path)
con = duckdb.connect(lake.catalog_path, read_only=True)
keys = dict(con.execute("SELECT stage, stage_key FROM stage_timings WHERE run_id = (SELECT run_id FROM runs "
                        "WHERE status = 'completed' ORDER BY started_at DESC LIMIT 1) AND stage_key != ''").fetchall())
con.close()
infos = [StageInfo(cs.name, keys[cs.name], list(cs.stage.writes()), cs.sources) for cs in configure_stages(cfg)]
ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
manifest, created = build_release(cfg, lake, infos, "run-bench", "bench")
wall = time.perf_counter() - t0
ru1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime
print(json.dumps({"created": created, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                  "rows": manifest["totals"]["rows"], "tokens": manifest["totals"]["tokens"],
                  "sha256": [s["sha256"][:12] for s in manifest["shards"]]}))
"""


def clear_release(pipeline: Path) -> None:
    """Remove the pipeline's release and report folders, so the next ``build_release`` writes them anew."""
    from schemas.config import load_config

    cfg = load_config(str(pipeline))
    for d in (Path(cfg.lake_path) / "releases" / cfg.release.name, Path(cfg.lake_path) / "reports" / cfg.release.name):
        shutil.rmtree(d, ignore_errors=True)


def one(code: Path, pipeline: Path) -> dict:
    clear_release(pipeline)
    out = subprocess.run([sys.executable, "-c", CHILD, str(code), str(pipeline)], capture_output=True, text=True,
                         cwd=code, env={**os.environ, "CURATE_PROGRESS": "0"})
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", type=Path, required=True, help="the user-path pipeline file (its lake has run)")
    ap.add_argument("--peer-code", type=Path, required=True, help="another checkout of curate")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    for r in range(a.rounds):
        for name, code in (("peer", a.peer_code), ("this tree", REPO)):
            load = " ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"round {r + 1} {name}: {json.dumps(one(code, a.pipeline))} (load {load})", flush=True)


if __name__ == "__main__":
    main()
