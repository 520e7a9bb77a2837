"""Allocator settings against each other on the dedup user path's two heaviest steps, alternating.

Each round runs, once per setting, in a fresh process with the setting's variables in its
environment (``engines/allocators.py`` keeps a variable the user has set, so a setting replaces
just the defaults it names): the release alone (``release_ab``'s child, on a lake where ``curate
run`` of the user-path pipeline has run) and, with ``--lake``, the three MinHash stages
(``run_curate``). Prints per process tree, from ``wait4``: CPU seconds (user + sys), minor page
faults and peak RSS, plus the 1-minute load; the release's shard sha256s must be equal across
settings::

    .venv/bin/python -m benchmarks.dedup.allocator_ab --pipeline /tmp/up/pipeline.yaml --lake /tmp/lake-200k \\
        --setting old= --setting jemalloc=ARROW_DEFAULT_MEMORY_POOL=jemalloc

A setting is ``NAME=`` (the defaults) or ``NAME=VAR=VALUE[;VAR=VALUE...]``. Cost per round and
setting at 200,000 documents: ~8 CPU s (release) and ~16 CPU s (stages, ``--workers 1``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.dedup.release_ab import CHILD, REPO, clear_release


def measured(cmd: list[str], env: dict[str, str]) -> tuple[str, dict]:
    """Run ``cmd``; its stdout and its process tree's CPU s, minor faults and peak RSS (MB)."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.DEVNULL)
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode:
        raise RuntimeError(f"{cmd[:4]} exited {proc.returncode}")
    return text, {"cpu_s": round(ru.ru_utime + ru.ru_stime, 2), "sys_s": round(ru.ru_stime, 2),
                  "minflt_k": ru.ru_minflt // 1000, "peak_mb": ru.ru_maxrss // 1024}


def parse_setting(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition("=")
    return name, dict(kv.split("=", 1) for kv in rest.split(";") if kv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", type=Path, required=True, help="the user-path pipeline file (its lake has run)")
    ap.add_argument("--lake", type=Path, help="a lake of raw shards for run_curate (its work/ is rewritten)")
    ap.add_argument("--workers", type=int, default=1, help="run_curate's workers (default 1, as the user path)")
    ap.add_argument("--setting", action="append", required=True, help="NAME= or NAME=VAR=VALUE[;VAR=VALUE...]")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    settings = [parse_setting(s) for s in a.setting]
    for r in range(a.rounds):
        for name, extra in settings:
            env = {**os.environ, "CURATE_PROGRESS": "0", **extra}
            clear_release(a.pipeline)
            load = os.getloadavg()[0]
            text, ru = measured([sys.executable, "-c", CHILD, str(REPO), str(a.pipeline)], env)
            sha = json.loads(text.strip().splitlines()[-1])["sha256"]
            print(f"round {r + 1} {name} release: {json.dumps(ru)} sha256 {' '.join(sha)} (load {load:.1f})", flush=True)
            if a.lake:
                load = os.getloadavg()[0]
                with tempfile.TemporaryDirectory() as tmp:
                    _, ru = measured([sys.executable, "-m", "benchmarks.dedup.run_curate", "--lake", str(a.lake),
                                      "--out", f"{tmp}/removed.npy", "--workers", str(a.workers)], env)
                print(f"round {r + 1} {name} stages: {json.dumps(ru)} (load {load:.1f})", flush=True)


if __name__ == "__main__":
    main()
