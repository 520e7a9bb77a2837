"""Folders on the lake: publish a folder built with local-file APIs, and read one back as local files.

Global stages build their artifacts with the tools their algorithms need (``np.save``,
fastText's ``save_model``, spill files read back with ``os.preadv``, memory maps); those need a
local folder. So a fit writes into a local folder and the storage layer publishes it:

- ``staged_dir(url, marker)``: yields a local folder to fill. Local lake: a temporary sibling
  folder renamed onto ``url`` (one rename). Object store: a private local folder whose files are
  uploaded one object each (every PUT is atomic), ``marker`` last, after a leftover of an earlier
  killed upload was removed; readers treat a folder without its marker as absent.
- ``local_dir(url)``: a folder of the lake as a local folder. Identity on a local lake;
  otherwise downloaded once per machine into the scratch folder, keyed by the URL and the
  listing (names, sizes, ETags), so a changed folder is downloaded again. Meant for folders that
  are immutable once their marker exists (artifacts are keyed by config and inputs).
- For an executor that fills a staged folder on another machine (a Ray task on any node, the
  driver maybe not a node at all): ``fill_remotely(local)`` gives the lake URL the folder becomes;
  the task stages a folder of its own there (``staged_dir(url)``: uploaded, without a marker, when
  it returns) and the driver's ``staged_dir`` then uploads only what it wrote itself (the marker)
  on top. ``lake_url(local)`` names the lake folder a ``local_dir`` copy came from, so a task on
  another machine can make its own copy.

Cost on object stores: one LIST plus one GET per file on the first use on a machine; nothing after.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock

from engines import storage
from engines.assets import cache_dir


def scratch_root() -> Path:
    """Local scratch for copies of remote lake files: ``$CURATE_SCRATCH``, else ``<curate cache>/lake``."""
    return Path(os.environ.get("CURATE_SCRATCH") or cache_dir() / "lake")


def local_key(url: str) -> str:
    """A short local name for a remote URL. ``memory://`` lives in one process only, so its copies are
    keyed by the process too (two test processes may reuse a memory URL for different content)."""
    salt = f"{os.getpid()}-{id(storage)}" if url.startswith("memory://") else ""
    return hashlib.sha256(f"{salt}{url}".encode()).hexdigest()[:20]


@contextmanager
def staged_dir(url: str, marker: str | None = None) -> Iterator[str]:
    """Yield a local folder; when the block succeeds its files become the folder ``url``.

    ``marker`` (a file name inside the folder, written by the caller) is published last, so a
    folder whose marker exists is complete. On failure nothing is published.
    """
    fs, path = storage.fs_and_path(url)
    if storage.is_local(fs):
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:6]}"
        os.makedirs(tmp)
        try:
            yield tmp
            storage.fault_point("storage:before_publish")
            if os.path.isdir(path) and not (marker and os.path.exists(f"{path}/{marker}")):
                shutil.rmtree(path)  # an incomplete leftover (cannot arise from this function; be safe)
            os.rename(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    scratch = scratch_root() / "staging"
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="dir-", dir=scratch)
    _STAGED[tmp] = url
    try:
        yield tmp
        # Filled by a task elsewhere (fill_remotely): that task cleared the folder and uploaded
        # its files; only what was written here (the marker) goes on top.
        publish_dir(tmp, url, marker, clear=tmp not in _FILLED)
    finally:
        _STAGED.pop(tmp, None)
        _FILLED.discard(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


# Folders of staged_dir in this process on an object-store lake: local folder -> lake URL; and
# those whose files a task on another machine uploads itself (fill_remotely).
_STAGED: dict[str, str] = {}
_FILLED: set[str] = set()


def fill_remotely(local: str) -> str | None:
    """The lake URL that ``local``, a folder ``staged_dir`` yielded in this process, becomes, for a
    task on another machine that fills it there: the task runs ``staged_dir(url)`` (no marker)
    around its writes, which clears a leftover of an earlier attempt and uploads its files when
    it returns; this process's ``staged_dir`` then uploads only what was written into ``local``
    (the marker, last) and does not clear the folder. ``None`` when ``local`` is not such a
    folder (a local lake: ``local`` is itself on the lake's filesystem; or any other folder):
    then the task must write into ``local`` itself."""
    url = _STAGED.get(local)
    if url is not None:
        _FILLED.add(local)
    return url


def publish_dir(local: str, url: str, marker: str | None = None, clear: bool = True) -> None:
    """Upload every file under ``local`` to ``url`` (one atomic PUT each), ``marker`` last.

    With ``clear``, a leftover of an earlier attempt (files but no marker: an upload killed
    half-way) is removed first, so the published folder holds exactly this attempt's files.
    """
    fs, path = storage.fs_and_path(url)
    if clear and fs.exists(path):
        fs.rm(path, recursive=True)
    files = sorted(p for p in Path(local).rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == marker)  # stable: the marker goes last
    for i, f in enumerate(files):
        if i == len(files) - 1:
            storage.fault_point("storage:before_marker")
        fs.put_file(str(f), f"{path}/{f.relative_to(local).as_posix()}")
    fs.invalidate_cache(path)


_LOCAL: dict[str, str] = {}


def local_dir(url: str) -> str:
    """The folder ``url`` as a local folder (see the module docstring); cached per process and machine."""
    fs, path = storage.fs_and_path(url)
    if storage.is_local(fs):
        return path
    if url in _LOCAL:
        return _LOCAL[url]
    fs.invalidate_cache(path)
    listing = fs.find(path, detail=True)
    if not listing:
        raise FileNotFoundError(f"{url}: no such folder on the lake")
    stamp = sorted((k, v.get("size"), str(v.get("ETag") or v.get("etag") or v.get("mtime") or v.get("created")))
                   for k, v in listing.items())
    dest = scratch_root() / "copies" / local_key(f"{url}|{stamp}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{dest}.lock"):
        if not dest.exists():
            tmp = Path(f"{dest}.tmp-{uuid.uuid4().hex[:6]}")
            try:
                for key in listing:
                    target = tmp / key[len(path):].lstrip("/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(key, str(target))
                os.rename(tmp, dest)  # complete, or not there at all
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    _LOCAL[url] = str(dest)
    return str(dest)


def lake_url(local: str) -> str:
    """The lake folder whose copy ``local_dir`` made at ``local`` in this process, else ``local``
    itself (a folder of a local lake is its own local folder)."""
    return next((url for url, copy in _LOCAL.items() if copy == local), local)

