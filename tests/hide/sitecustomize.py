"""Make installed packages look absent, as on a machine with the core install only.

With this folder on ``PYTHONPATH``, every Python process started with
``CURATE_HIDE_PACKAGES=torch,transformers,...`` in its environment (the test's child, the
executor's spawned workers, Prefect's temporary server) runs this file at start-up: every finder on
``sys.meta_path`` is wrapped so that those top-level names, and their submodules, are not found.
``import torch`` then raises ModuleNotFoundError and ``importlib.util.find_spec("torch")`` returns
None: what a library probing for an optional package sees when it is not installed.

Test-only (tests/test_extras.py); self-contained because it runs before the test package is
importable.
"""
from __future__ import annotations

import os
import sys
from typing import Any


class _Hiding:
    def __init__(self, finder: Any, names: frozenset[str]):
        self._finder, self._names = finder, names

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name.partition(".")[0] in self._names:
            return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._finder, attr)


def hide(names: frozenset[str]) -> None:
    sys.meta_path[:] = [_Hiding(f, names) for f in sys.meta_path]


_names = frozenset(n.strip() for n in os.environ.get("CURATE_HIDE_PACKAGES", "").split(",") if n.strip())
if _names:
    hide(_names)
