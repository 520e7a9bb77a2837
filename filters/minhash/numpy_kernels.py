"""The MinHash kernels in vectorised NumPy: the fallback when the compiled extension is missing.

Same definitions, same results bit for bit as ``csrc/minhash.c`` (``tests/minhash`` runs both on
the same inputs), several times slower: the work is spread over whole batches (every byte, word
or shingle of a batch at once) instead of one document at a time, so Python loops run over
positions within a word, n-gram offsets, permutations and bands, never over documents.

Two loops cannot be vectorised: FNV-1a is sequential over a word's bytes (one NumPy step per
byte position, over every word at least that long; the last few very long words finish in plain
Python), and a document that is not well-formed UTF-8 (which Arrow strings never are) is decoded
byte by byte in Python, exactly as the C code does.
"""
from __future__ import annotations

import numpy as np

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
K_POLY = np.uint64(0x9E3779B97F4A7C15)
NO_VALUE = np.uint64(0xFFFFFFFFFFFFFFFF)
_MASK = (1 << 64) - 1
_C1, _C2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_S33, _S32 = np.uint64(33), np.uint64(32)

# ASCII letters and digits are word characters; every other ASCII byte separates words.
_ASCII_WORD = np.zeros(128, dtype=bool)
for _lo, _hi in ((48, 57), (65, 90), (97, 122)):
    _ASCII_WORD[_lo:_hi + 1] = True
# The byte an ASCII word character contributes to its word's hash (upper case folded), and with
# digit folding.
_ASCII_BYTE = np.arange(128, dtype=np.uint8)
_ASCII_BYTE[65:91] += 32
_ASCII_BYTE_FOLD = _ASCII_BYTE.copy()
_ASCII_BYTE_FOLD[48:58] = ord("0")


def fmix64(k: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, element-wise (uint64, wrapping)."""
    k = k ^ (k >> _S33)
    k = k * _C1
    k ^= k >> _S33
    k *= _C2
    k ^= k >> _S33
    return k


def _fmix64_int(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _MASK
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _MASK
    return k ^ (k >> 33)


def fnv_runs(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """FNV-1a 64 of each byte run ``data[starts[i] : starts[i] + lengths[i]]`` (no finaliser).

    One vector step per byte position over the runs that are at least that long (longest first,
    so the active runs are a prefix); the last few very long runs finish in Python integers."""
    n = len(starts)
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    order = np.argsort(-lengths, kind="stable")
    st, ln = starts[order], lengths[order]
    h = np.full(n, FNV_OFFSET, dtype=np.uint64)
    # active[j] = how many runs are longer than j (lengths sorted descending)
    desc = ln[::-1]  # ascending
    j, longest = 0, int(ln[0]) if n else 0
    while j < longest:
        active = n - int(np.searchsorted(desc, j, side="right"))
        if active <= 4 and longest - j > 256:
            break  # a few long runs left: cheaper in Python than one tiny vector step per byte
        h[:active] = (h[:active] ^ data[st[:active] + j]) * FNV_PRIME
        j += 1
    if j < longest:
        for r in range(n - int(np.searchsorted(desc, j, side="right"))):
            v = int(h[r])
            for b in data[st[r] + j:st[r] + ln[r]].tolist():
                v = ((v ^ b) * 0x100000001B3) & _MASK
            h[r] = v
    out[order] = h
    return out


def fnv_strings(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """FNV-1a 64 + fmix64 of each string ``data[offsets[i]:offsets[i+1]]``."""
    return fmix64(fnv_runs(data, offsets[:-1], np.diff(offsets)))


# --- words ------------------------------------------------------------------------------------

def _lead_sizes(b: np.ndarray) -> np.ndarray:
    """Bytes of the UTF-8 sequence each byte would start (1 for ASCII and stray bytes)."""
    size = np.ones(len(b), dtype=np.int64)
    size[b >= 0xC0] = 2
    size[b >= 0xE0] = 3
    size[b >= 0xF0] = 4
    return size


def _well_formed(b: np.ndarray, doc: np.ndarray, rel_end: np.ndarray) -> np.ndarray:
    """Per document: whether the C decoder reads it as plain UTF-8 sequences (every lead byte's
    sequence fits in the document, and the bytes after each lead are exactly its continuation
    bytes), so that lead bytes and sizes can be found without a sequential scan."""
    n_docs = len(rel_end)
    if len(b) == 0:
        return np.ones(n_docs, dtype=bool)
    lead = (b & 0xC0) != 0x80
    pos = np.flatnonzero(lead)
    nxt = pos + _lead_sizes(b[pos])
    bad = np.zeros(n_docs, dtype=bool)
    # the next lead must be exactly where this sequence ends (or the document ends there)
    ends = rel_end[doc[pos]]
    following = np.r_[pos[1:], len(b)]
    same_doc_next = np.r_[doc[pos[1:]] == doc[pos[:-1]], False]
    ok = np.where(same_doc_next, nxt == following, nxt == ends)
    bad[doc[pos[~ok]]] = True
    # a document that starts with a continuation byte
    starts = np.r_[0, rel_end[:-1]]
    nonempty = rel_end > starts
    first_cont = np.zeros(n_docs, dtype=bool)
    first_cont[nonempty] = ~lead[starts[nonempty]]
    return ~(bad | first_cont)


def _code_points(b: np.ndarray, pos: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Code point of the sequence of ``size`` bytes at each lead position (the C formulas)."""
    c = b[pos].astype(np.int64)
    cp = c.copy()

    def at(k: np.ndarray, off: int) -> np.ndarray:
        return b[k + off].astype(np.int64) & 0x3F

    for s, mask in ((2, 0x1F), (3, 0x0F), (4, 0x07)):
        sel = size == s
        k = pos[sel]
        v = c[sel] & mask
        for off in range(1, s):
            v = (v << 6) | at(k, off)
        cp[sel] = v
    return cp


def _is_separator(cp: np.ndarray, sep_lo: np.ndarray, sep_hi: np.ndarray) -> np.ndarray:
    sep = np.empty(len(cp), dtype=bool)
    ascii_ = cp < 128
    sep[ascii_] = ~_ASCII_WORD[cp[ascii_]]
    other = ~ascii_
    if other.any():
        v = cp[other]
        i = np.searchsorted(sep_hi, v, side="left")  # first range whose upper end is >= v
        inside = i < len(sep_hi)
        res = np.zeros(len(v), dtype=bool)
        res[inside] = sep_lo[i[inside]] <= v[inside]
        sep[other] = res
    return sep


def _word_bytes_slow(doc_bytes: np.ndarray, sep_lo: np.ndarray, sep_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Word-character flags of one document decoded byte by byte exactly as the C code does
    (lenient: a lead byte takes the bytes after it whatever they are), and the flags of bytes
    inside multi-byte sequences (hashed as they are, even when ASCII)."""
    b = doc_bytes.tolist()
    end = len(b)
    flags = np.zeros(end, dtype=bool)
    multi = np.zeros(end, dtype=bool)
    i = 0
    while i < end:
        c = b[i]
        if c < 0x80:
            size, cp = 1, c
        elif c >= 0xF0 and i + 3 < end:
            size, cp = 4, ((c & 0x07) << 18) | ((b[i + 1] & 0x3F) << 12) | ((b[i + 2] & 0x3F) << 6) | (b[i + 3] & 0x3F)
        elif c >= 0xE0 and i + 2 < end:
            size, cp = 3, ((c & 0x0F) << 12) | ((b[i + 1] & 0x3F) << 6) | (b[i + 2] & 0x3F)
        elif c >= 0xC0 and i + 1 < end:
            size, cp = 2, ((c & 0x1F) << 6) | (b[i + 1] & 0x3F)
        else:
            size, cp = 1, c
        if not _is_separator(np.array([cp]), sep_lo, sep_hi)[0]:
            flags[i:i + size] = True
        multi[i:i + size] = size > 1
        i += size
    return flags, multi


def word_hashes(data: np.ndarray, offsets: np.ndarray, fold: bool, sep_lo: np.ndarray,
                sep_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Word hashes of every document in text order (flat) and the words per document."""
    o0, o_end = int(offsets[0]), int(offsets[-1])
    n_docs = len(offsets) - 1
    b = data[o0:o_end]
    rel = offsets - o0
    doc = np.repeat(np.arange(n_docs), np.diff(rel))
    word = np.zeros(len(b), dtype=bool)
    good = _well_formed(b, doc, rel[1:])
    lead = (b & 0xC0) != 0x80
    pos = np.flatnonzero(lead & good[doc])
    size = _lead_sizes(b[pos])
    is_word = ~_is_separator(_code_points(b, pos, size), sep_lo, sep_hi)
    # spread each sequence's flag over its bytes
    word_pos = pos[is_word]
    word_size = size[is_word]
    for s in range(1, 5):
        k = word_pos[word_size == s]
        for off in range(s):
            word[k + off] = True
    # the bytes hashed: ASCII word bytes lower-cased (and digits folded); others as they are
    hb = b.copy()
    ascii_ = hb < 0x80
    hb[ascii_] = (_ASCII_BYTE_FOLD if fold else _ASCII_BYTE)[hb[ascii_]]
    for d in np.flatnonzero(~good).tolist():
        flags, multi = _word_bytes_slow(b[rel[d]:rel[d + 1]], sep_lo, sep_hi)
        word[rel[d]:rel[d + 1]] = flags
        hb[rel[d]:rel[d + 1]][multi] = b[rel[d]:rel[d + 1]][multi]
    # words: runs of word bytes, cut at document starts
    starts_flag = word.copy()
    starts_flag[1:] &= ~word[:-1]
    doc_start = rel[:-1][rel[:-1] < rel[1:]]
    starts_flag[doc_start] = word[doc_start]
    w_start = np.flatnonzero(starts_flag)
    # a word ends at the first non-word byte or document end after its start
    stops_flag = word.copy()
    stops_flag[:-1] &= ~word[1:]
    doc_last = rel[1:][rel[:-1] < rel[1:]] - 1
    stops_flag[doc_last] = word[doc_last]
    w_stop = np.flatnonzero(stops_flag) + 1
    hashes = fmix64(fnv_runs(hb, w_start, w_stop - w_start))
    per_doc = np.bincount(doc[w_start], minlength=n_docs).astype(np.int64) if len(w_start) else np.zeros(n_docs, np.int64)
    return hashes, per_doc


def shingles(words: np.ndarray, per_doc: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes (flat, text order) and shingles per document from word hashes."""
    n_docs = len(per_doc)
    word_off = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(per_doc, out=word_off[1:])
    span = np.minimum(per_doc, ngram)
    count = np.where(per_doc > 0, per_doc - span + 1, 0)
    out_off = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(count, out=out_off[1:])
    out = np.empty(int(out_off[-1]), dtype=np.uint64)
    # documents with at least ngram words: every window of ngram words
    full = per_doc >= ngram
    if full.any():
        d = np.flatnonzero(full)
        first = np.repeat(word_off[d], count[d]) + _ranks(count[d])
        h = np.zeros(len(first), dtype=np.uint64)
        for k in range(ngram):
            h = h * K_POLY + words[first + k]
        out[np.repeat(out_off[d], count[d]) + _ranks(count[d])] = fmix64(h)
    # shorter documents: one shingle of all their words
    for s in np.unique(span[(per_doc > 0) & ~full]).tolist():
        d = np.flatnonzero(per_doc == s)
        h = np.zeros(len(d), dtype=np.uint64)
        for k in range(s):
            h = h * K_POLY + words[word_off[d] + k]
        out[out_off[d]] = fmix64(h)
    return out, count


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each count c, concatenated."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - starts


def shingle_hashes(data, offsets, ngram, fold_digits, sep_lo, sep_hi):
    """Every document's shingle hashes in text order (flat array + n+1 offsets)."""
    words, per_doc = word_hashes(data, offsets, bool(fold_digits), sep_lo, sep_hi)
    sh, count = shingles(words, per_doc, int(ngram))
    off = np.zeros(len(count) + 1, dtype=np.int64)
    np.cumsum(count, out=off[1:])
    return sh, off


def _sorted_unique(sh: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each document's distinct shingles ascending (flat), their document, and counts."""
    doc = np.repeat(np.arange(len(count)), count)
    order = np.lexsort((sh, doc))
    s, d = sh[order], doc[order]
    keep = np.ones(len(s), dtype=bool)
    keep[1:] = (s[1:] != s[:-1]) | (d[1:] != d[:-1])
    s, d = s[keep], d[keep]
    return s, d, np.bincount(d, minlength=len(count)).astype(np.int64)


def _minhash(values: np.ndarray, doc_counts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """mins[d, j] = min over document d's values of a_j * x + b_j (mod 2^64); NO_VALUE when empty."""
    n = len(doc_counts)
    mins = np.full((n, len(a)), NO_VALUE, dtype=np.uint64)
    nonempty = np.flatnonzero(doc_counts > 0)
    if len(nonempty) == 0:
        return mins
    starts = (np.cumsum(doc_counts) - doc_counts)[nonempty]
    tmp = np.empty(len(values), dtype=np.uint64)
    for j in range(len(a)):
        np.multiply(values, a[j], out=tmp)
        tmp += b[j]
        mins[nonempty, j] = np.minimum.reduceat(tmp, starts)
    return mins


def signatures(data, offsets, ngram, fold_digits, a, b, bands, rows, keep_k, sep_lo, sep_hi):
    """Band keys, distinct shingle counts, bottom-``keep_k`` stored shingles (see kernels.py)."""
    sh, off = shingle_hashes(data, offsets, ngram, fold_digits, sep_lo, sep_hi)
    n = len(off) - 1
    values, doc, counts = _sorted_unique(sh, np.diff(off))
    band_keys = np.full((n, bands), NO_VALUE, dtype=np.uint64)
    if bands > 0 and n:
        mins = _minhash(values, counts, a, b)
        has = counts > 0
        for t in range(bands):
            h = np.full(int(has.sum()), _fmix64_int(t + 1), dtype=np.uint64)
            for q in range(rows):
                h = fmix64(h * K_POLY + mins[has, t * rows + q])
            band_keys[has, t] = h
    stored_off = np.zeros(n + 1, dtype=np.int64)
    if keep_k > 0 and len(values):
        v32 = (values >> _S32).astype(np.uint32)
        new = np.ones(len(v32), dtype=bool)
        new[1:] = (v32[1:] != v32[:-1]) | (doc[1:] != doc[:-1])
        v32, d32 = v32[new], doc[new]
        per = np.bincount(d32, minlength=n)
        rank = _ranks(per)
        take = rank < keep_k
        stored = v32[take]
        np.cumsum(np.minimum(per, keep_k), out=stored_off[1:])
    else:
        stored = np.zeros(0, dtype=np.uint32)
    return band_keys, counts, stored, stored_off


def signature_matrix(data, offsets, ngram, fold_digits, a, b, sep_lo, sep_hi):
    """Full signatures (n x num_perm) and distinct shingle counts."""
    sh, off = shingle_hashes(data, offsets, ngram, fold_digits, sep_lo, sep_hi)
    values, _, counts = _sorted_unique(sh, np.diff(off))
    return _minhash(values, counts, a, b), counts


# --- candidates, verification, components ----------------------------------------------------

def bucket_pairs(keys: np.ndarray, pos: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The C kernel's candidate pairs, in its order: per bucket member q (after the first), the
    pair with the bucket's first member when it lies beyond the window, then the pairs with the
    up to ``window`` members before q (skipping equal positions)."""
    n = len(keys)
    new = np.ones(n, dtype=bool)
    new[1:] = keys[1:] != keys[:-1]
    start = np.maximum.accumulate(np.where(new, np.arange(n), 0))
    r = np.arange(n) - start  # rank within the bucket
    beyond = r > window
    cnt = np.minimum(r, window) + beyond
    q = np.repeat(np.arange(n), cnt)
    t = _ranks(cnt)
    first = np.maximum(q - window, start[q])
    head = beyond[q]
    p = np.where(head, np.where(t == 0, start[q], first + t - 1), first + t)
    keep = (head & (t == 0)) | (pos[p] != pos[q])
    return pos[p[keep]], pos[q[keep]]


def jaccard(values, offsets, full, left, right, chunk_values: int = 1 << 22) -> np.ndarray:
    """Jaccard of each pair of stored sets: exact when both are complete, else the share of the
    first k elements of their union (k the smaller set) found in both."""
    npairs = len(left)
    out = np.zeros(npairs, dtype=np.float64)
    na = offsets[left + 1] - offsets[left]
    nb = offsets[right + 1] - offsets[right]
    sizes = na + nb
    p0 = 0
    while p0 < npairs:
        # pairs whose values fit the chunk (at least one)
        p1 = p0 + max(1, int(np.searchsorted(np.cumsum(sizes[p0:]), chunk_values, side="right")))
        _jaccard_chunk(values, offsets, full, left[p0:p1], right[p0:p1], out[p0:p1])
        p0 = p1
    return out


def _jaccard_chunk(values, offsets, full, left, right, out) -> None:
    m = len(left)
    na = offsets[left + 1] - offsets[left]
    nb = offsets[right + 1] - offsets[right]
    idx_a = np.repeat(offsets[left], na) + _ranks(na)
    idx_b = np.repeat(offsets[right], nb) + _ranks(nb)
    pair = np.concatenate([np.repeat(np.arange(m), na), np.repeat(np.arange(m), nb)]).astype(np.uint64)
    key = (pair << _S32) | np.concatenate([values[idx_a], values[idx_b]]).astype(np.uint64)
    key.sort()
    pk = key >> _S32
    dup = np.zeros(len(key), dtype=bool)
    dup[1:] = key[1:] == key[:-1]  # the second copy of a value in both sets
    first_of_value = ~dup
    # rank of each union element within its pair (1-based), carried to its duplicate
    union_rank = np.cumsum(first_of_value)
    pair_start = np.searchsorted(pk, np.arange(m, dtype=np.uint64), side="left")
    base = np.zeros(m, dtype=np.int64)
    nonempty = pair_start < len(key)
    base[nonempty] = union_rank[pair_start[nonempty]] - 1
    union_rank = union_rank - base[pk.astype(np.int64)] if len(key) else union_rank
    union_size = np.bincount(pk[first_of_value].astype(np.int64), minlength=m)
    exact = (full[left] != 0) & (full[right] != 0)
    k = np.where(exact, na + nb, np.minimum(na, nb))
    counted = dup & (union_rank <= k[pk.astype(np.int64)])
    inter = np.bincount(pk[counted].astype(np.int64), minlength=m)
    seen = np.minimum(k, union_size)
    empty = (na == 0) | (nb == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        res = np.where(exact, inter / (na + nb - inter), inter / seen)
    out[:] = np.where(empty, 0.0, res)


def read_u32_ranges(fd: int, starts: np.ndarray, ends: np.ndarray, values: np.ndarray, local_off: np.ndarray) -> None:
    """Fills ``values`` with the uint32 ranges of the file (one ``preadv`` per range)."""
    import os

    view = memoryview(values).cast("B")
    for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
        if b > a:
            got = os.preadv(fd, [view[int(local_off[i]) * 4:int(local_off[i + 1]) * 4]], a * 4)
            if got != (b - a) * 4:
                raise EOFError("the file ends before a range")


def roots(parent: np.ndarray) -> None:
    """Every entry becomes its root, in place (pointer jumping)."""
    while True:
        pp = parent[parent]
        if np.array_equal(pp, parent):
            return
        parent[:] = pp


def union(parent: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """Joins the components of each edge, in place. Afterwards every entry holds its component's
    smallest index (the roots the C union-find ends with, after ``roots``)."""
    if len(lo) == 0:
        return
    roots(parent)
    ra, rb = parent[lo], parent[hi]
    nodes, inv = np.unique(np.concatenate([ra, rb]), return_inverse=True)
    u, v = inv[:len(ra)], inv[len(ra):]
    lab = np.arange(len(nodes))  # nodes ascending: the smallest label is the smallest root
    while True:
        m = np.minimum(lab[u], lab[v])
        new = lab.copy()
        np.minimum.at(new, u, m)
        np.minimum.at(new, v, m)
        new = new[new]  # pointer jumping
        if np.array_equal(new, lab):
            break
        lab = new
    i = np.searchsorted(nodes, parent)
    i = np.minimum(i, len(nodes) - 1)
    hit = nodes[i] == parent
    parent[hit] = nodes[lab[i[hit]]]
