"""Prefect settings curate sets when the user has not: call before the first ``import prefect``.

Prefect reads its settings from the environment when it is imported. Without ``PREFECT_API_URL``
each run starts a temporary local server and waits for it ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``
(20 s by default): on a busy machine that start alone can take longer, and the run then fails
before doing anything. curate waits up to ``EPHEMERAL_STARTUP_TIMEOUT_S`` instead. A value the
user set is never changed.
"""
from __future__ import annotations

import os

EPHEMERAL_STARTUP_TIMEOUT_S = 180

DEFAULTS = {
    # No network is assumed: keep Prefect's server from trying to send telemetry.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(EPHEMERAL_STARTUP_TIMEOUT_S),
}


def apply_prefect_defaults() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
