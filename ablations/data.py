"""From a release to training batches: the release's own tokenised export, read in release order.

1. ``resolve_release`` finds the release folder (``NAME`` = its LATEST version, ``NAME/VERSION``,
   or a folder holding ``manifest.json``).
2. ``ensure_export`` reuses an export of that release made with the ablation's tokenizer
   (``<lake>/exports/NAME/VERSION/*/export.json`` with the same format and tokenizer SHA-256:
   e.g. one made by ``curate export NAME --format hf --tokenizer T``), or makes one on demand in
   ``<lake>/exports/NAME/VERSION/<format>-<tokenizer sha[:12]>`` with ``warehouse.export``.
3. ``document_stream`` yields the token ids (each document ending with end-of-text, as the
   exporter writes them) in training order, one export shard at a time (bounded memory):
   - ``hf``: the ``input_ids`` column of the Parquet files, in file order = release order, so a
     curriculum or an annealing phase is trained exactly where the release put it;
   - ``megatron``: one ``.bin``/``.idx`` pair per source, so the cross-source order of the
     release is not in the files; each source keeps its release order and the sources are
     interleaved by document so that each is consumed at the same fractional rate (the blend's
     weights, as Megatron's ``BlendedDataset`` does per sample).
4. ``batches`` packs the stream into ``[batch, seq_len + 1]`` windows that overlap by one token
   (every stream position is a prediction target exactly once) and stops after exactly
   ``steps * batch * seq_len`` targets. A release with fewer tokens is read again from its
   start (counted as epochs); more than ``max_epochs`` passes is refused before training.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq


class AblationError(ValueError):
    """A user-facing problem with the releases, the config or the eval sets (one short message)."""


@dataclass(frozen=True)
class ReleaseRef:
    label: str  # NAME/VERSION
    dir: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.label.split("/", 1)[0]

    @property
    def version(self) -> str:
        return self.label.split("/", 1)[1]

    @property
    def content_hash(self) -> str:
        return str(self.manifest.get("content_hash") or self.manifest.get("version"))

    @property
    def tokens(self) -> int:
        return int(self.manifest.get("totals", {}).get("tokens", 0))


def resolve_release(ref: str, lake_root: str) -> ReleaseRef:
    """``NAME`` (its LATEST), ``NAME/VERSION`` or a release folder -> a ReleaseRef."""
    if "://" in lake_root:
        raise AblationError(f"ablations read releases from a local lake; {lake_root} is remote "
                            "(copy the release folder locally and pass its path)")
    folder = Path(ref)
    if not (folder / "manifest.json").is_file():
        name, _, version = ref.partition("/")
        if not version:
            pointer = Path(lake_root) / "releases" / name / "LATEST"
            if not pointer.is_file():
                raise AblationError(f"no release named {name!r} in {lake_root} (see `curate releases --lake {lake_root}`)")
            version = pointer.read_text().strip()
        folder = Path(lake_root) / "releases" / name / version
        if not (folder / "manifest.json").is_file():
            raise AblationError(f"no release {name}/{version} in {lake_root} (see `curate releases --lake {lake_root}`)")
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except json.JSONDecodeError as e:
        raise AblationError(f"{folder}/manifest.json is not valid JSON: {e}") from None
    label = f"{manifest.get('name', folder.parent.name)}/{manifest.get('version', folder.name)}"
    return ReleaseRef(label, folder.resolve(), manifest)


def export_root(release: ReleaseRef, lake_root: str) -> Path:
    return Path(lake_root) / "exports" / release.name / release.version


def ensure_export(release: ReleaseRef, lake_root: str, fmt: str, tokenizer_path: Path, tokenizer_sha: str,
                  log: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]]:
    """An export of the release in ``fmt`` tokenised by this tokenizer: found, or made now."""
    root = export_root(release, lake_root)
    for info_path in sorted(root.glob("*/export.json")):
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError:
            continue
        tok = info.get("tokenizer") or {}
        if info.get("format") == fmt and tok.get("sha256") == tokenizer_sha and tok.get("append_eos"):
            return info_path.parent, info
    from warehouse.export import export_release

    out = root / f"{fmt}-{tokenizer_sha[:12]}"
    log(f"exporting {release.label} as {fmt} with the ablation tokenizer -> {out}")
    info = export_release(release.dir, out, fmt, tokenizer_path, overwrite=True)  # type: ignore[arg-type]
    return out, info


def document_stream(export_dir: Path, info: dict[str, Any]) -> Iterator[np.ndarray]:
    """Token ids of the export in training order, as a sequence of flat chunks (documents whole)."""
    if info["format"] == "hf":
        yield from _hf_stream(export_dir, info)
    elif info["format"] == "megatron":
        yield from _megatron_stream(export_dir)
    else:
        raise AblationError(f"cannot train on a {info['format']!r} export; use hf or megatron")


def _hf_stream(export_dir: Path, info: dict[str, Any]) -> Iterator[np.ndarray]:
    for entry in info["files"]:
        pf = pq.ParquetFile(export_dir / entry["file"])
        if "input_ids" not in pf.schema_arrow.names:
            raise AblationError(f"{export_dir}: the hf export has no input_ids (it was made without a tokenizer)")
        for batch in pf.iter_batches(columns=["input_ids"], batch_size=8192):
            ids = batch.column(0).flatten().to_numpy(zero_copy_only=False)
            if ids.size:
                yield ids


def read_megatron_index(path: Path) -> tuple[np.dtype, np.ndarray, np.ndarray]:
    """(dtype, sequence lengths, byte offsets) from a Megatron ``.idx`` (MMIDIDX version 1)."""
    from warehouse.export.megatron import DTYPE_CODES, MAGIC

    codes: dict[int, np.dtype] = {v: np.dtype(k) for k, v in DTYPE_CODES.items()}  # type: ignore[call-overload]
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise AblationError(f"{path} is not a Megatron index (bad magic)")
        (version,) = struct.unpack("<Q", f.read(8))
        (code,) = struct.unpack("<B", f.read(1))
        (n,) = struct.unpack("<Q", f.read(8))
        struct.unpack("<Q", f.read(8))
        lengths = np.frombuffer(f.read(4 * n), dtype=np.int32)
        pointers = np.frombuffer(f.read(8 * n), dtype=np.int64)
    if version != 1 or code not in codes:
        raise AblationError(f"{path}: unsupported Megatron index version {version} / dtype code {code}")
    return codes[code], lengths, pointers


def _megatron_stream(export_dir: Path, chunk_docs: int = 4096) -> Iterator[np.ndarray]:
    blend = json.loads((export_dir / "blend.json").read_text())["blend"]
    bins, lens, keys, src = [], [], [], []
    for k, b in enumerate(blend):
        dtype, lengths, _ = read_megatron_index(export_dir / f"{b['prefix']}.idx")
        bins.append(np.memmap(export_dir / f"{b['prefix']}.bin", dtype=dtype, mode="r"))
        lens.append(lengths.astype(np.int64))
        total = max(1, int(lengths.sum()))
        # A document's place in the blend: how far through its source it starts (0..1).
        keys.append((np.cumsum(lengths) - lengths) / total)
        src.append(np.full(lengths.size, k, dtype=np.int32))
    if not blend:
        return
    key, source = np.concatenate(keys), np.concatenate(src)
    doc = np.concatenate([np.arange(x.size) for x in lens])
    order = np.lexsort((source, key))
    starts = [np.cumsum(x) - x for x in lens]
    for i in range(0, order.size, chunk_docs):
        part = order[i:i + chunk_docs]
        yield np.concatenate([bins[source[j]][starts[source[j]][doc[j]]:starts[source[j]][doc[j]] + lens[source[j]][doc[j]]]
                              for j in part])


def batches(stream_factory: Callable[[], Iterator[np.ndarray]], *, batch_size: int, seq_len: int,
            steps: int) -> Iterator[tuple[np.ndarray, int]]:
    """``(windows [batch, seq_len + 1] int64, epoch)`` for each of ``steps`` steps.

    Window ``w`` (counting over all steps) holds stream positions ``[w * seq_len, (w + 1) * seq_len]``;
    when the stream ends it starts again from the release's first token and ``epoch`` goes up."""
    buf = np.empty(0, dtype=np.int64)
    pos = 0  # stream position of buf[0]
    epoch = 0
    it = stream_factory()
    for step in range(steps):
        lo = step * batch_size * seq_len
        hi = lo + batch_size * seq_len + 1
        if lo > pos:
            buf, pos = buf[lo - pos:], lo
        parts = [buf]
        have = buf.size
        while pos + have < hi:
            chunk = next(it, None)
            if chunk is None:
                if pos + have == 0:
                    raise AblationError("the release export holds no tokens")
                epoch += 1
                it = stream_factory()
                continue
            parts.append(chunk.astype(np.int64, copy=False))
            have += chunk.size
        buf = np.concatenate(parts) if len(parts) > 1 else buf
        rows = np.lib.stride_tricks.sliding_window_view(buf[:hi - pos], seq_len + 1)[::seq_len]
        yield np.ascontiguousarray(rows), epoch
