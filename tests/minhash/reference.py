"""A plain-Python, per-character implementation of the documented normalisation and hashes of
``minhash_signatures`` (docs/dedup.md), written from the definitions, for checking the kernels."""
from __future__ import annotations

from filters.minhash.kernels import _SEPARATOR_RANGES

MASK = (1 << 64) - 1
K = 0x9E3779B97F4A7C15
RANGES = [(int(lo), int(hi)) for lo, hi in _SEPARATOR_RANGES]


def fmix64(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & MASK
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & MASK
    k ^= k >> 33
    return k


def is_separator(ch: str) -> bool:
    cp = ord(ch)
    if cp < 128:
        return not ch.isascii() or not ch.isalnum()
    return any(lo <= cp <= hi for lo, hi in RANGES)


def words(text: str, fold_digits: bool = False) -> list[str]:
    out, cur = [], []
    for ch in text.lower():
        if is_separator(ch):
            if cur:
                out.append("".join(cur))
                cur = []
        else:
            cur.append("0" if fold_digits and "0" <= ch <= "9" else ch)
    if cur:
        out.append("".join(cur))
    return out


def word_hash(word: str) -> int:
    h = 0xCBF29CE484222325
    for b in word.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & MASK
    return fmix64(h)


def shingles(text: str, n: int = 5, fold_digits: bool = False) -> list[str]:
    """The shingles as strings (words joined by a space), in text order."""
    w = words(text, fold_digits)
    if not w:
        return []
    span = min(n, len(w))
    return [" ".join(w[i:i + span]) for i in range(len(w) - span + 1)]


def shingle_hashes(text: str, n: int = 5, fold_digits: bool = False) -> list[int]:
    w = [word_hash(x) for x in words(text, fold_digits)]
    if not w:
        return []
    span = min(n, len(w))
    out = []
    for i in range(len(w) - span + 1):
        h = 0
        for x in w[i:i + span]:
            h = (h * K + x) & MASK
        out.append(fmix64(h))
    return out


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if (a or b) else 0.0


def splitmix64(seed: int, n: int) -> list[int]:
    out, s = [], seed & MASK
    for _ in range(n):
        s = (s + 0x9E3779B97F4A7C15) & MASK
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        out.append(z ^ (z >> 31))
    return out


def signature(text: str, num_perm: int, seed: int, n: int = 5) -> list[int]:
    r = splitmix64(seed, 2 * num_perm)
    a, b = [x | 1 for x in r[0::2]], r[1::2]
    xs = set(shingle_hashes(text, n))
    return [min((aj * x + bj) & MASK for x in xs) for aj, bj in zip(a, b)]


def band_keys(sig: list[int], bands: int, rows: int) -> list[int]:
    keys = []
    for t in range(bands):
        h = fmix64(t + 1)
        for q in range(rows):
            h = fmix64((h * K + sig[t * rows + q]) & MASK)
        keys.append(h)
    return keys
