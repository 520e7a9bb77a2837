"""Publishing a release atomically, on local disk and on object storage alike.

Object stores have no atomic rename of a folder, so a release is never "moved into place".
Under ``releases/<name>/``:

    <version>/shard-000000.parquet ...   written first, straight under their final names
    <version>/manifest.json              written last, in one atomic step: the commit record
    LATEST                               the newest committed version (a pointer, verified)
    _rejected/<version>.json             a release the gates stopped, with the reasons
    .tmp-*                               scratch space and half-written pointer files

One step is atomic on every store: writing one small object (a single PUT on S3; write to a
temporary name and rename on local disk). So the manifest is the commit: a version folder is a
release only once its ``manifest.json`` parses, names the folder's version and lists shards that
exist with the sizes it records. Readers here (``find_release``, ``latest_version``,
``published_shards``, ``resolve``) see committed releases only; a folder without a manifest is a
leftover of a crash, invisible, and the next release step of that name deletes it.

``LATEST`` is written after the manifest and is only a hint: ``latest_version`` returns the newest
committed release (by ``created_at``, then version) at or after the date of the pointer, so a crash
between the manifest and the pointer can never make a reader use an older version, and the next
run rewrites the pointer (``repair_latest``). A damaged manifest is reported with its path
(``ManifestError``), never as a bare JSON error; listings skip such a folder.

Cost: listing a release name reads the manifests of versions dated at or after ``LATEST`` (one
small GET each) plus one listing per version read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from engines import storage
from engines.faults import fault_point

MANIFEST = "manifest.json"
LATEST = "LATEST"
REJECTED = "_rejected"
SCRATCH = ".tmp-"
REQUIRED_KEYS = ("name", "version", "content_hash", "created_at", "shards", "totals")


class ManifestError(ValueError):
    """A manifest that exists but cannot be used; the message names the file and what to do."""


class ReleaseNotFound(LookupError):
    """No committed release answers the request; the message says what exists."""


def _as_url(like: str, path: str) -> str:
    """``path`` as returned by the filesystem, in the protocol of ``like`` (a URL or a local path)."""
    if "://" in like and "://" not in path:
        return f"{like.split('://', 1)[0]}://{path}"
    return path


def put_atomic(url: str, data: bytes) -> None:
    """Write one small object so that readers see the old state or the whole new one, nothing between."""
    storage.write_bytes_atomic(url, data)  # rename locally; one PUT on object stores
    fs, path = storage.fs_and_path(url)
    fs.invalidate_cache(storage.parent(path))


def read_manifest(url: str) -> dict[str, Any]:
    """A manifest, checked for the keys every committed manifest has."""
    fs, path = storage.fs_and_path(url)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise ManifestError(f"{url}: no manifest (the release was never committed or was deleted)") from None
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{url} is damaged or truncated ({len(data)} bytes, {e}); delete its folder and "
                            "re-run the pipeline to write the release again") from None
    if not isinstance(manifest, dict) or any(k not in manifest for k in REQUIRED_KEYS):
        have = sorted(manifest) if isinstance(manifest, dict) else type(manifest).__name__
        raise ManifestError(f"{url} is not a release manifest (needs {', '.join(REQUIRED_KEYS)}; has {have})")
    return manifest


def _entries(url: str) -> list[dict[str, Any]]:
    fs, path = storage.fs_and_path(url)
    fs.invalidate_cache(path)
    try:
        return list(fs.ls(path, detail=True))
    except FileNotFoundError:
        return []


def _basename(entry: dict[str, Any]) -> str:
    return str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]


@dataclass
class Listing:
    """What a release name's folder holds."""

    committed: list[dict[str, Any]] = field(default_factory=list)  # manifests, oldest first
    incomplete: list[str] = field(default_factory=list)  # version folders without a manifest
    damaged: dict[str, str] = field(default_factory=dict)  # version folder -> what is wrong
    scratch: list[str] = field(default_factory=list)  # .tmp-* entries


def _check_shards(version_url: str, manifest: dict[str, Any]) -> str | None:
    sizes = {_basename(e): e.get("size") for e in _entries(version_url)}
    for s in manifest["shards"]:
        if s.get("file") not in sizes:
            return f"shard {s.get('file')} listed in the manifest is missing"
        size = sizes[s["file"]]
        if s.get("bytes") is not None and size is not None and int(size) != int(s["bytes"]):
            return f"shard {s['file']} has {size} bytes, the manifest says {s['bytes']}"
    return None


def scan(release_root: str, since: str | None = None) -> Listing:
    """Classify the entries of ``releases/<name>/``; with ``since`` (a version), manifests of versions
    dated more than a day before it are not read (they cannot be newer)."""
    out = Listing()
    cutoff = _day_before(since) if since else None
    for entry in _entries(release_root):
        name = _basename(entry)
        url = _as_url(release_root, str(entry["name"]).rstrip("/"))
        if name.startswith(SCRATCH):
            out.scratch.append(url)
            continue
        if name.startswith(("_", ".")) or name == LATEST or entry.get("type") != "directory":
            continue
        if cutoff and name[:10] < cutoff:
            continue
        if not storage.exists(f"{url}/{MANIFEST}"):
            out.incomplete.append(url)
            continue
        try:
            manifest = read_manifest(f"{url}/{MANIFEST}")
        except ManifestError as e:
            out.damaged[url] = str(e)
            continue
        problem = (f"{url}/{MANIFEST} names version {manifest['version']!r}" if manifest["version"] != name
                   else _check_shards(url, manifest))
        if problem:
            out.damaged[url] = problem
        else:
            out.committed.append(manifest)
    out.committed.sort(key=lambda m: (str(m["created_at"]), str(m["version"])))
    return out


def _day_before(version: str) -> str | None:
    """The date a day before a version's date: a release built across midnight is dated by its
    start but created after it, so one day of margin keeps every possibly newer version."""
    try:
        return (datetime.strptime(version[:10], "%Y-%m-%d") - timedelta(days=1)).strftime("%Y-%m-%d")
    except ValueError:
        return None


def _pointer(release_root: str) -> str | None:
    fs, path = storage.fs_and_path(f"{release_root}/{LATEST}")
    try:
        return fs.cat_file(path).decode("utf-8", "replace").strip() or None
    except FileNotFoundError:
        return None


def latest_version(release_root: str) -> str | None:
    """The newest committed version of a release name (``LATEST`` verified against the manifests)."""
    pointer = _pointer(release_root)
    committed = scan(release_root, since=pointer).committed
    if pointer is not None and pointer not in {m["version"] for m in committed}:
        committed = scan(release_root).committed  # the pointer names no committed release: look at all
    return str(committed[-1]["version"]) if committed else None


def find_release(release_root: str, content_hash: str) -> dict[str, Any] | None:
    """The committed release of this name built from exactly these inputs, if any."""
    for manifest in scan(release_root).committed:
        if manifest.get("content_hash") == content_hash:
            return manifest
    return None


def repair_latest(release_root: str) -> str | None:
    """Point ``LATEST`` at the newest committed version if it does not already; returns that version."""
    newest = latest_version(release_root)
    if newest is not None and _pointer(release_root) != newest:
        put_atomic(f"{release_root}/{LATEST}", (newest + "\n").encode())
    return newest


def clean_leftovers(release_root: str) -> list[str]:
    """Delete what crashed release steps left: scratch entries and version folders without a
    manifest. Damaged committed folders are left for ``curate check`` (they may hold evidence)."""
    listing = scan(release_root)
    removed = listing.scratch + listing.incomplete
    for url in removed:
        fs, path = storage.fs_and_path(url)
        fs.rm(path, recursive=True)
    return removed


def prepare(release_root: str, version: str, content_hash: str) -> str:
    """Clean leftovers and return the empty folder to write ``version``'s shards into."""
    clean_leftovers(release_root)
    url = f"{release_root}/{version}"
    fs, path = storage.fs_and_path(url)
    if fs.exists(path):
        # A committed folder of this version with other contents would be a 24-bit hash collision.
        try:
            other = read_manifest(f"{url}/{MANIFEST}")
            if other["content_hash"] != content_hash:
                raise RuntimeError(f"{url} holds another release with the same version name; delete it to go on")
        except ManifestError:
            pass
        fs.rm(path, recursive=True)
    fs.makedirs(path, exist_ok=True)
    return url


def commit(release_root: str, manifest: dict[str, Any]) -> None:
    """Publish: the manifest (the commit record), then the ``LATEST`` pointer."""
    version = manifest["version"]
    put_atomic(f"{release_root}/{version}/{MANIFEST}",
               json.dumps(manifest, indent=2, sort_keys=True).encode())
    fault_point("release:manifest_written")
    put_atomic(f"{release_root}/{LATEST}", (version + "\n").encode())
    fault_point("release:latest_written")


def reject(release_root: str, version: str, record: dict[str, Any]) -> str:
    """Remove the shards of a release the gates stopped and keep the record of why; returns its path."""
    fs, path = storage.fs_and_path(f"{release_root}/{version}")
    if fs.exists(path):
        fs.rm(path, recursive=True)
    url = f"{release_root}/{REJECTED}/{version}.json"
    storage.fs_and_path(url)[0].makedirs(storage.parent(storage.fs_and_path(url)[1]), exist_ok=True)
    put_atomic(url, json.dumps(record, indent=2, sort_keys=True, default=str).encode())
    return url


def release_names(lake_root: str) -> list[str]:
    return sorted(_basename(e) for e in _entries(f"{lake_root}/releases")
                  if e.get("type") == "directory" and not _basename(e).startswith((".", "_")))


def published_shards(lake_root: str) -> list[str]:
    """Every shard of every committed release in the lake (for the catalog's ``release_shards``)."""
    out: list[str] = []
    for name in release_names(lake_root):
        root = f"{lake_root}/releases/{name}"
        for m in scan(root).committed:
            out.extend(f"{root}/{m['version']}/{s['file']}" for s in m["shards"])
    return out


def resolve(lake_root: str, spec: str) -> str:
    """The folder of ``NAME`` (its newest committed version) or ``NAME/VERSION``."""
    name, _, version = spec.partition("/")
    root = f"{lake_root}/releases/{name}"
    if not version:
        found = latest_version(root)
        if found is None:
            known = ", ".join(release_names(lake_root)) or "none"
            raise ReleaseNotFound(f"no committed release named {name!r} in {lake_root} (releases: {known})")
        version = found
    url = f"{root}/{version}"
    manifest = read_manifest(f"{url}/{MANIFEST}")
    problem = _check_shards(url, manifest)
    if problem:
        raise ManifestError(f"{url}: {problem}; the release is damaged (see `curate check`)")
    return url
