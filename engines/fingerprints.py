"""Content fingerprints of the files a fit reads besides the corpus (benchmarks, tables)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def content_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (relative names and bytes, sorted);
    ``missing`` when nothing is there (the fit itself reports that)."""
    path = Path(path)
    if not path.exists():
        return "missing"
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
