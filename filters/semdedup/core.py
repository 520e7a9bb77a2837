"""The algorithm of ``semantic_dedup``, on vectors in a memory-mapped file (no stage, no lake).

Steps (see docs/semdedup.md for the defaults and the measured figures):

1. ``train_centroids``: seeded spherical k-means (faiss) on a seeded sample of the valid vectors.
2. ``assign``: each vector's ``n_probe`` nearest centroids by cosine (faiss flat inner-product
   search, streamed in blocks); the first is its cluster.
3. ``bucket_positions``: a counting sort of positions by cluster (members) and by probed cluster
   (guests), streamed, into memory-mapped arrays.
4. ``search_clusters``: one cluster at a time, members x members and guests x members cosine
   similarities by blocked matrix products; pairs within ``band`` of the threshold are checked
   again in float64 (``exact_cosine``), so a pair is accepted exactly when its float64 cosine is
   at least the threshold, as in the brute force. Each cluster's accepted pairs become connected
   components of that cluster; a star of edges per component goes to an edge spill. Every
   document's most similar document seen is tracked (``nearest``).
5. ``components``: connected components over the edge spill by min-label propagation with
   pointer jumping, on a memory-mapped label array: a group's label is its first position.

Memory: the vectors are a memory-mapped file; per-document bookkeeping (labels, nearest,
clusters, probes, orders) are memory-mapped arrays too; what is held in RAM is the centroids
(k x dim float32), the k-means sample, one cluster's member and guest vectors as float32 and one
similarity block (at most ``BLOCK_CELLS`` float32).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

# faiss's OpenMP threads spin while they wait: on a machine busy with other work that made k-means
# 10-30x slower (measured: 3.2 s instead of 0.1 s for 3,000 vectors). Passive waiting costs
# nothing on an idle machine. Read when OpenMP starts, i.e. at the first faiss call.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BLOCK_CELLS = 1 << 22  # similarity cells per block: 16 MB of float32
ROWS_PER_STEP = 1 << 14  # vectors per streamed step (assignment, sorting)
BAND = 1e-4  # float32 sims within this of the threshold are decided in float64
EDGE_COMPACT = 1 << 21  # local edges held before a cluster's graph is compacted
PAIR_DTYPE = np.dtype([("a", np.int64), ("b", np.int64), ("sim", np.float64)])


def open_array(path: str, dtype: Any, shape: tuple[int, ...], mode: str = "w+") -> np.ndarray:
    """A memory-mapped .npy array (created with ``w+``, or opened ``r``/``r+``)."""
    if mode == "w+":
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    return np.load(path, mmap_mode=mode)  # type: ignore[no-any-return,arg-type]


class VectorSpill:
    """Append-only raw file of vectors (rows of ``dim`` values of ``dtype``), plus a validity
    flag per row; ``finish`` maps it back read-only."""

    def __init__(self, folder: str, dim: int, dtype: str = "float16"):
        os.makedirs(folder, exist_ok=True)
        self.folder, self.dim, self.dtype = folder, dim, np.dtype(dtype)
        self._vec = open(f"{folder}/vectors.bin", "wb")
        self._valid = open(f"{folder}/valid.bin", "wb")
        self.n = 0

    def add(self, vectors: np.ndarray, valid: np.ndarray) -> None:
        v = np.where(valid[:, None], vectors, 0).astype(self.dtype, copy=False)
        self._vec.write(np.ascontiguousarray(v).tobytes())
        self._valid.write(np.ascontiguousarray(valid, dtype=np.bool_).tobytes())
        self.n += len(vectors)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        self._vec.close()
        self._valid.close()
        if self.n == 0:
            return np.zeros((0, self.dim), self.dtype), np.zeros(0, bool)
        vec = np.memmap(f"{self.folder}/vectors.bin", dtype=self.dtype, mode="r", shape=(self.n, self.dim))
        valid = np.memmap(f"{self.folder}/valid.bin", dtype=np.bool_, mode="r", shape=(self.n,))
        return vec, valid


def rows_f32(vectors: np.ndarray, positions: np.ndarray | slice) -> np.ndarray:
    """A writable float32 copy of the rows (never a view of the read-only map: faiss and the
    normalisation write into it)."""
    return np.array(vectors[positions], dtype=np.float32, order="C", copy=True)


def unit_rows(vectors: np.ndarray, positions: np.ndarray | slice) -> np.ndarray:
    """Rows as float32 scaled to unit norm: stored float16 vectors are up to ~1e-3 off unit
    length, more than the float32 products' error, so products are taken on re-normalised rows
    (their float32 dot is the float64 ``exact_cosine`` within ~1e-6, well inside ``BAND``)."""
    x = rows_f32(vectors, positions)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def exact_cosine(vectors: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of the stored vectors at positions a[i], b[i], in float64, re-normalised (stored
    float16 vectors are not exactly unit length). The one definition of "similarity" that the
    stage and the brute-force reference share."""
    if not len(a):
        return np.zeros(0)
    x = np.asarray(vectors[a], dtype=np.float64)
    y = np.asarray(vectors[b], dtype=np.float64)
    num = np.einsum("ij,ij->i", x, y)
    den = np.sqrt(np.einsum("ij,ij->i", x, x) * np.einsum("ij,ij->i", y, y))
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


# ----------------------------------------------------------------------------------------------
# k-means and assignment
# ----------------------------------------------------------------------------------------------
def auto_clusters(n_valid: int, docs_per_cluster: int) -> int:
    return max(1, min(n_valid, round(n_valid / docs_per_cluster)))


def train_centroids(vectors: np.ndarray, valid: np.ndarray, k: int, seed: int, niter: int,
                    max_train: int, threads: int) -> tuple[np.ndarray, int]:
    """Spherical k-means centroids (k x dim float32, unit norm) from a seeded sample of at most
    ``max_train`` valid vectors; returns (centroids, sample size)."""
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    pos = np.flatnonzero(np.asarray(valid))
    rng = np.random.default_rng(seed)
    if len(pos) > max_train:
        pos = np.sort(rng.choice(pos, size=max_train, replace=False))
    sample = rows_f32(vectors, pos)
    faiss.normalize_L2(sample)
    k = max(1, min(k, len(sample)))
    if k == 1:
        c = sample.mean(axis=0, keepdims=True)
        faiss.normalize_L2(c)
        return c, len(sample)
    km = faiss.Kmeans(sample.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=max(1, -(-len(sample) // k)), min_points_per_centroid=1)
    km.train(sample)
    return np.ascontiguousarray(km.centroids, dtype=np.float32), len(sample)


def assign(vectors: np.ndarray, valid: np.ndarray, centroids: np.ndarray, n_probe: int, folder: str
           ) -> tuple[np.ndarray, np.ndarray]:
    """(probe, sims): the ``n_probe`` nearest centroids of every vector, nearest first, and their
    cosines, as memory-mapped (n, n_probe) arrays; -1 / NaN for invalid rows."""
    import faiss

    n = len(vectors)
    n_probe = min(n_probe, len(centroids))
    probe = open_array(f"{folder}/probe.npy", np.int32, (n, n_probe))
    sims = open_array(f"{folder}/probe_sims.npy", np.float32, (n, n_probe))
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    for s in range(0, n, ROWS_PER_STEP):
        e = min(n, s + ROWS_PER_STEP)
        block = rows_f32(vectors, slice(s, e))
        faiss.normalize_L2(block)
        d, i = index.search(block, n_probe)
        ok = np.asarray(valid[s:e])
        probe[s:e] = np.where(ok[:, None], i, -1)
        sims[s:e] = np.where(ok[:, None], d, np.nan)
    return probe, sims


def bucket_positions(labels: np.ndarray, k: int, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions grouped by label (a counting sort, streamed; ascending within a label), and the
    offsets (k + 1) of each label's run. ``labels`` is (n,) or (n, r): every column counts,
    negative labels are left out."""
    lab2 = labels.reshape(len(labels), -1)
    counts = np.zeros(k, dtype=np.int64)
    for s in range(0, len(lab2), ROWS_PER_STEP):
        blk = np.asarray(lab2[s:s + ROWS_PER_STEP]).ravel()
        counts += np.bincount(blk[blk >= 0], minlength=k)
    offsets = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    out = open_array(path, np.int64, (int(offsets[-1]),))
    cursor = offsets[:-1].copy()
    for s in range(0, len(lab2), ROWS_PER_STEP):
        blk = np.asarray(lab2[s:s + ROWS_PER_STEP])
        pos = np.repeat(np.arange(s, s + len(blk), dtype=np.int64), lab2.shape[1])
        flat = blk.ravel()
        ok = flat >= 0
        flat, pos = flat[ok], pos[ok]
        order = np.argsort(flat, kind="stable")
        sl = flat[order]
        rank = np.arange(len(sl)) - np.searchsorted(sl, sl, side="left")
        out[cursor[sl] + rank] = pos[order]
        cursor += np.bincount(flat, minlength=k)
    return out, offsets


# ----------------------------------------------------------------------------------------------
# within-cluster search
# ----------------------------------------------------------------------------------------------
@dataclass
class SearchStats:
    clusters: int = 0
    largest_cluster: int = 0
    compared: int = 0  # similarity cells computed
    candidates: int = 0  # cells within the band or above, checked
    pairs: int = 0  # accepted pairs (a pair found in two clusters counts twice)


class _EdgeSpill:
    def __init__(self, path: str):
        self.path = path
        self.f = open(path, "wb")
        self.n = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        if len(a):
            self.f.write(np.stack([a, b], axis=1).astype(np.int64).tobytes())
            self.n += len(a)

    def close(self) -> None:
        self.f.close()

    def chunks(self, rows: int = 1 << 20) -> Iterator[np.ndarray]:
        if not self.n:
            return
        mm = np.memmap(self.path, dtype=np.int64, mode="r", shape=(self.n, 2))
        for s in range(0, self.n, rows):
            yield np.asarray(mm[s:s + rows])


def _components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(u), dtype=np.int8), (u, v)), shape=(n, n)).tocsr()
    return connected_components(g, directed=False)[1]


def _star(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges (first member, other member) of every component of 2+ nodes (local indices)."""
    order = np.argsort(labels, kind="stable")
    sl = labels[order]
    first = order[np.searchsorted(sl, sl, side="left")]
    other = first != order
    return first[other], order[other]


class _LocalGraph:
    """Accepted pairs of one cluster (local indices), compacted to a spanning star forest when
    they grow past ``EDGE_COMPACT`` (a clique of m copies has m^2/2 pairs)."""

    def __init__(self, n: int):
        self.n = n
        self.u: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.size = 0

    def add(self, u: np.ndarray, v: np.ndarray) -> None:
        if len(u):
            self.u.append(u)
            self.v.append(v)
            self.size += len(u)
            if self.size > EDGE_COMPACT:
                a, b = self.stars()
                self.u, self.v, self.size = [a], [b], len(a)

    def stars(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.size:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return _star(_components(self.n, np.concatenate(self.u), np.concatenate(self.v)))


class ClusterSearch:
    """Within-cluster similarity search over every cluster, one at a time."""

    def __init__(self, vectors: np.ndarray, threshold: float, folder: str, record_pairs: bool = False):
        n = len(vectors)
        self.vectors, self.threshold = vectors, threshold
        self.nearest_sim = open_array(f"{folder}/nearest_sim.npy", np.float32, (n,))
        self.nearest_sim[:] = -np.inf
        self.nearest_pos = open_array(f"{folder}/nearest_pos.npy", np.int64, (n,))
        self.nearest_pos[:] = -1
        self.edges = _EdgeSpill(f"{folder}/edges.bin")
        self.pairs = open(f"{folder}/pairs.bin", "wb") if record_pairs else None
        self.stats = SearchStats()

    def _nearest(self, pos: np.ndarray, sims: np.ndarray, other: np.ndarray) -> None:
        """Raise each pos[i]'s best similarity to sims[i] (with other[i]) where higher."""
        cur = self.nearest_sim[pos]
        better = sims > cur
        if better.any():
            self.nearest_sim[pos[better]] = sims[better]
            self.nearest_pos[pos[better]] = other[better]

    def _accept(self, pa_: np.ndarray, pb: np.ndarray, s32: np.ndarray) -> np.ndarray:
        """Mask of candidate pairs whose similarity is at least the threshold; cells within
        ``BAND`` of it are decided by the float64 cosine."""
        sure = s32 >= self.threshold + BAND
        near = ~sure
        if near.any():
            exact = exact_cosine(self.vectors, pa_[near], pb[near])
            sure[np.flatnonzero(near)] = exact >= self.threshold
        return sure

    def _record(self, a: np.ndarray, b: np.ndarray) -> None:
        if self.pairs is not None and len(a):
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            sims = exact_cosine(self.vectors, lo, hi)
            self.pairs.write(np.rec.fromarrays([lo, hi, sims], dtype=PAIR_DTYPE).tobytes())

    def cluster(self, members: np.ndarray, guests: np.ndarray) -> None:
        """Search one cluster: its members against each other and its guests (documents whose
        2nd..n-th nearest centroid it is) against its members."""
        m, g = len(members), len(guests)
        self.stats.clusters += 1
        self.stats.largest_cluster = max(self.stats.largest_cluster, m)
        if m == 0 or (m == 1 and g == 0):
            return
        xm = unit_rows(self.vectors, members)
        graph = _LocalGraph(m + g)
        step = max(1, BLOCK_CELLS // m)
        lo_thr = self.threshold - BAND
        for s in range(0, m, step):
            e = min(m, s + step)
            sim = xm[s:e] @ xm.T
            rows = np.arange(e - s)
            sim[rows, rows + s] = -np.inf
            best = sim.argmax(axis=1)
            self._nearest(members[s:e], sim[rows, best], members[best])
            r, c = np.nonzero(sim >= lo_thr)
            up = c > r + s
            r, c = r[up] + s, c[up]
            self._pairs(graph, members, members, r, c, sim[r - s, c], 0)
            self.stats.compared += (e - s) * m
        if g:
            gstep = max(1, BLOCK_CELLS // m)
            for s in range(0, g, gstep):
                e = min(g, s + gstep)
                xg = unit_rows(self.vectors, guests[s:e])
                sim = xg @ xm.T
                rows = np.arange(e - s)
                best = sim.argmax(axis=1)
                self._nearest(guests[s:e], sim[rows, best], members[best])
                col_best = sim.argmax(axis=0)
                self._nearest(members, sim[col_best, np.arange(m)], guests[s:e][col_best])
                r, c = np.nonzero(sim >= lo_thr)
                self._pairs(graph, guests, members, r + s, c, sim[r, c], m)
                self.stats.compared += (e - s) * m
        a, b = graph.stars()
        local = np.concatenate([members, guests])
        self.edges.add(local[a], local[b])

    def _pairs(self, graph: _LocalGraph, rows_of: np.ndarray, cols_of: np.ndarray, r: np.ndarray, c: np.ndarray,
               s32: np.ndarray, row_offset: int) -> None:
        if not len(r):
            return
        self.stats.candidates += len(r)
        pa_, pb = rows_of[r], cols_of[c]
        ok = self._accept(pa_, pb, s32)
        self.stats.pairs += int(ok.sum())
        self._record(pa_[ok], pb[ok])
        graph.add(r[ok] + row_offset, c[ok])

    def close(self) -> None:
        self.edges.close()
        if self.pairs is not None:
            self.pairs.close()



def read_pairs(folder: str) -> np.ndarray:
    """The recorded accepted pairs (a < b, float64 cosine), each once, sorted."""
    raw = np.fromfile(f"{folder}/pairs.bin", dtype=PAIR_DTYPE)
    if not len(raw):
        return raw
    raw = np.sort(raw, order=["a", "b"])
    keep = np.ones(len(raw), bool)
    keep[1:] = (raw["a"][1:] != raw["a"][:-1]) | (raw["b"][1:] != raw["b"][:-1])
    return raw[keep]


def components(n: int, edges: _EdgeSpill, folder: str) -> np.ndarray:
    """Connected components of the edge spill: a memory-mapped label per position, the smallest
    position of its component. Min-label propagation over the edges with pointer jumping."""
    labels = open_array(f"{folder}/labels.npy", np.int64, (n,))
    for s in range(0, n, ROWS_PER_STEP):
        labels[s:s + ROWS_PER_STEP] = np.arange(s, min(n, s + ROWS_PER_STEP))
    changed = edges.n > 0
    while changed:
        changed = False
        for chunk in edges.chunks():
            u, v = chunk[:, 0], chunk[:, 1]
            lu, lv = labels[u], labels[v]
            low = np.minimum(lu, lv)
            if (lu != lv).any():
                changed = True
                np.minimum.at(labels, u, low)
                np.minimum.at(labels, v, low)
                np.minimum.at(labels, lu, low)
                np.minimum.at(labels, lv, low)
        # pointer jumping until every label is a root
        while True:
            moved = False
            for s in range(0, n, ROWS_PER_STEP):
                cur = np.asarray(labels[s:s + ROWS_PER_STEP])
                nxt = labels[cur]
                if (nxt != cur).any():
                    labels[s:s + ROWS_PER_STEP] = nxt
                    moved = True
            if not moved:
                break
    return labels


# ----------------------------------------------------------------------------------------------
# the reference: every pair above the threshold, by brute force
# ----------------------------------------------------------------------------------------------
def brute_force_pairs(vectors: np.ndarray, valid: np.ndarray, threshold: float, block: int = 2048) -> np.ndarray:
    """Every pair (a < b) of valid vectors whose ``exact_cosine`` is at least ``threshold``, by
    blocked matrix products over all pairs (float32 to find candidates within ``BAND``, float64
    to decide them). O(n^2 d): for checking the stage, not for production."""
    pos = np.flatnonzero(np.asarray(valid))
    x = unit_rows(vectors, pos)
    out = []
    for s in range(0, len(pos), block):
        sim = x[s:s + block] @ x[s:].T
        r, c = np.nonzero(sim >= threshold - BAND)
        up = c > r
        r, c = r[up], c[up]
        a, b = pos[r + s], pos[c + s]
        exact = exact_cosine(vectors, a, b)
        ok = exact >= threshold
        if ok.any():
            out.append(np.rec.fromarrays([a[ok], b[ok], exact[ok]], dtype=PAIR_DTYPE))
    if not out:
        return np.zeros(0, dtype=PAIR_DTYPE)
    return np.sort(np.concatenate(out).view(PAIR_DTYPE), order=["a", "b"])
