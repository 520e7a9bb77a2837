"""Allocator defaults: set only where unset, applied by the CLI before Polars loads."""
from __future__ import annotations

import os
import subprocess
import sys

from engines import allocators


def test_defaults_fill_only_unset_variables(monkeypatch):
    for k in allocators.DEFAULTS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")  # the user's choice wins
    set_now = allocators.apply_defaults()
    assert "ARROW_DEFAULT_MEMORY_POOL" not in set_now
    assert os.environ["ARROW_DEFAULT_MEMORY_POOL"] == "jemalloc"
    assert set(set_now) == set(allocators.DEFAULTS) - {"ARROW_DEFAULT_MEMORY_POOL"}
    assert os.environ["MALLOC_ARENA_MAX"] == "2"
    assert allocators.apply_defaults() == []  # idempotent


def test_cli_applies_them_before_the_libraries_load():
    env = {k: v for k, v in os.environ.items() if k not in allocators.DEFAULTS}
    code = ("import flows.cli, os, pyarrow as pa; "
            "print(os.environ['_RJEM_MALLOC_CONF'], pa.default_memory_pool().backend_name)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    conf, pool = out.stdout.split()
    # Polars >= 2 puts its own settings first and ours after them; jemalloc reads options left to
    # right, so the last value of each option (ours) is the one in force.
    assert conf.endswith(allocators.DEFAULTS["_RJEM_MALLOC_CONF"]) and pool == "system"
