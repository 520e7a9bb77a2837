"""Fault injection for crash and race tests: stop the process hard, or slow it, at a named point.

``fault_point("release:after_shards")`` does nothing unless ``CURATE_FAULT`` names that point
(several may be given, comma-separated); then the process kills itself with SIGKILL, as the OOM
killer or a preempted node would, with no cleanup, no ``finally`` and no atexit. Tests use it to
prove that a re-run after a crash at any named step ends in the same state as an uninterrupted run.
With ``CURATE_FAULT_ONCE_DIR`` set, each point fires once only (the first process to create
``<dir>/<point>`` dies; retries and other workers pass): a worker killed once, then retried.
Cost when unset: one environment lookup.

``delay_point("ingest:wiki_a.parquet")`` sleeps when ``CURATE_DELAY`` lists ``name=seconds``
(comma-separated): race tests use it to make workers finish in another order than they started.
"""
from __future__ import annotations

import os
import signal
import time


def fault_point(name: str) -> None:
    """SIGKILL this process if ``$CURATE_FAULT`` lists ``name``."""
    wanted = os.environ.get("CURATE_FAULT")
    if wanted and name in {w.strip() for w in wanted.split(",")}:
        once = os.environ.get("CURATE_FAULT_ONCE_DIR")
        if once:
            try:
                os.close(os.open(os.path.join(once, name.replace(":", "_")), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)


def delay_point(name: str) -> None:
    """Sleep if ``$CURATE_DELAY`` lists ``name=seconds``."""
    wanted = os.environ.get("CURATE_DELAY")
    if not wanted:
        return
    for item in wanted.split(","):
        point, _, seconds = item.strip().rpartition("=")
        if point == name:
            time.sleep(float(seconds))
