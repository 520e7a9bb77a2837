"""C source of the MinHash kernels (kept in a .py file so it ships with the package).

``filters.minhash.kernels`` compiles it once per machine with the system C compiler and loads it
with ctypes. Every function works on caller-allocated NumPy buffers and holds no global state,
so calls from several threads run in parallel (ctypes releases the GIL).
"""

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FNV_OFFSET 0xCBF29CE484222325ULL
#define FNV_PRIME 0x100000001B3ULL
#define K_POLY 0x9E3779B97F4A7C15ULL
#define NO_VALUE 0xFFFFFFFFFFFFFFFFULL

static inline uint64_t fmix64(uint64_t k) {
    k ^= k >> 33; k *= 0xFF51AFD7ED558CCDULL;
    k ^= k >> 33; k *= 0xC4CEB9FE1A85EC53ULL;
    k ^= k >> 33; return k;
}

static inline int is_sep(int64_t cp, const int64_t* lo, const int64_t* hi, int64_t nsep) {
    if (cp < 128) {
        return !((cp >= 'a' && cp <= 'z') || (cp >= '0' && cp <= '9') || (cp >= 'A' && cp <= 'Z'));
    }
    int64_t l = 0, h = nsep;
    while (l < h) {  /* first range whose upper end is >= cp */
        int64_t m = (l + h) >> 1;
        if (hi[m] < cp) l = m + 1; else h = m;
    }
    return l < nsep && lo[l] <= cp;
}

/* Word hashes of data[start:end] into out (or only their count when out is NULL). */
static int64_t word_hashes(const uint8_t* data, int64_t start, int64_t end, int fold,
                           const int64_t* lo, const int64_t* hi, int64_t nsep, uint64_t* out) {
    int64_t n = 0, i = start;
    uint64_t h = FNV_OFFSET;
    int in_word = 0;
    while (i < end) {
        int64_t c = data[i], cp, size;
        if (c < 0x80) { cp = c; size = 1; }
        else if (c >= 0xF0 && i + 3 < end) {
            cp = ((c & 0x07) << 18) | ((int64_t)(data[i + 1] & 0x3F) << 12) | ((int64_t)(data[i + 2] & 0x3F) << 6)
                 | (data[i + 3] & 0x3F);
            size = 4;
        } else if (c >= 0xE0 && i + 2 < end) {
            cp = ((c & 0x0F) << 12) | ((int64_t)(data[i + 1] & 0x3F) << 6) | (data[i + 2] & 0x3F);
            size = 3;
        } else if (c >= 0xC0 && i + 1 < end) {
            cp = ((c & 0x1F) << 6) | (data[i + 1] & 0x3F);
            size = 2;
        } else { cp = c; size = 1; }
        if (is_sep(cp, lo, hi, nsep)) {
            if (in_word) { if (out) out[n] = fmix64(h); n++; h = FNV_OFFSET; in_word = 0; }
        } else {
            in_word = 1;
            if (size == 1) {
                int64_t b = c;
                if (b >= 'A' && b <= 'Z') b += 32;
                else if (fold && b >= '0' && b <= '9') b = '0';
                h = (h ^ (uint64_t)b) * FNV_PRIME;
            } else {
                for (int64_t j = 0; j < size; j++) h = (h ^ (uint64_t)data[i + j]) * FNV_PRIME;
            }
        }
        i += size;
    }
    if (in_word) { if (out) out[n] = fmix64(h); n++; }
    return n;
}

/* Shingle hashes from word hashes, in place: shingle i overwrites word i, which no later shingle
   reads. Returns the count. */
static int64_t shingles(uint64_t* words, int64_t nw, int64_t ngram) {
    if (nw == 0) return 0;
    int64_t span = nw >= ngram ? ngram : nw, count = nw - span + 1;
    for (int64_t i = 0; i < count; i++) {
        uint64_t h = 0;
        for (int64_t k = 0; k < span; k++) h = h * K_POLY + words[i + k];
        words[i] = fmix64(h);
    }
    return count;
}

/* A word buffer big enough for document [start, end): grown to the exact word count only when
   the cheap bound (one word per two bytes) exceeds it, so an enormous document costs 8 bytes
   per word, not per two bytes. Returns NULL when out of memory. */
static uint64_t* word_buffer(uint64_t* buf, int64_t* cap, const uint8_t* data, int64_t start, int64_t end,
                             int fold, const int64_t* lo, const int64_t* hi, int64_t nsep) {
    if ((end - start) / 2 + 2 <= *cap) return buf;
    int64_t need = word_hashes(data, start, end, fold, lo, hi, nsep, NULL) + 2;
    if (need <= *cap) return buf;
    free(buf);
    *cap = need;
    return malloc(sizeof(uint64_t) * need);
}

static void sort_u64(uint64_t* a, int64_t n) {
    while (n > 24) {
        uint64_t x = a[0], y = a[n / 2], z = a[n - 1], p;
        p = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        int64_t i = 0, j = n - 1;
        for (;;) {
            while (a[i] < p) i++;
            while (a[j] > p) j--;
            if (i >= j) break;
            uint64_t t = a[i]; a[i] = a[j]; a[j] = t;
            i++; j--;
        }
        /* recurse into the smaller part, loop on the larger */
        if (j + 1 < n - j - 1) { sort_u64(a, j + 1); a += j + 1; n -= j + 1; }
        else { sort_u64(a + j + 1, n - j - 1); n = j + 1; }
    }
    for (int64_t i = 1; i < n; i++) {
        uint64_t v = a[i]; int64_t j = i - 1;
        while (j >= 0 && a[j] > v) { a[j + 1] = a[j]; j--; }
        a[j + 1] = v;
    }
}

static int64_t sort_unique(uint64_t* a, int64_t n) {
    if (n == 0) return 0;
    sort_u64(a, n);
    int64_t m = 1;
    for (int64_t i = 1; i < n; i++) if (a[i] != a[m - 1]) a[m++] = a[i];
    return m;
}

/* out[j] = min_i (a[j] * x[i] + b[j]) mod 2^64 */
static void minhash(const uint64_t* x, int64_t m, const uint64_t* a, const uint64_t* b, int64_t num_perm,
                    uint64_t* out) {
    for (int64_t j = 0; j < num_perm; j++) {
        uint64_t aj = a[j], bj = b[j], mn = NO_VALUE;
        for (int64_t i = 0; i < m; i++) {
            uint64_t v = aj * x[i] + bj;
            mn = v < mn ? v : mn;
        }
        out[j] = mn;
    }
}

#define START_CAP 65536

/* Band keys, distinct shingle counts and bottom-k stored shingles of n documents.
   stored must hold sum_d min(keep_k, words_d) values (the caller bounds words by bytes / 2 + 1).
   Returns 0, or -1 when out of memory. */
int64_t mh_signatures(const uint8_t* data, const int64_t* offsets, int64_t n, int64_t ngram, int64_t fold,
                      const uint64_t* a, const uint64_t* b, int64_t num_perm, int64_t bands, int64_t rows,
                      int64_t keep_k, const int64_t* sep_lo, const int64_t* sep_hi, int64_t nsep,
                      uint64_t* band_keys, int64_t* n_shingles, uint32_t* stored, int64_t* stored_off) {
    int64_t cap = START_CAP;
    uint64_t* words = malloc(sizeof(uint64_t) * cap);
    uint64_t* mins = malloc(sizeof(uint64_t) * (num_perm > 0 ? num_perm : 1));
    if (!words || !mins) { free(words); free(mins); return -1; }
    stored_off[0] = 0;
    for (int64_t d = 0; d < n; d++) {
        words = word_buffer(words, &cap, data, offsets[d], offsets[d + 1], (int)fold, sep_lo, sep_hi, nsep);
        if (!words) { free(mins); return -1; }
        int64_t nw = word_hashes(data, offsets[d], offsets[d + 1], (int)fold, sep_lo, sep_hi, nsep, words);
        int64_t ns = shingles(words, nw, ngram);
        uint64_t* shing = words;
        int64_t w = stored_off[d];
        stored_off[d + 1] = w;
        if (ns == 0) {
            n_shingles[d] = 0;
            for (int64_t t = 0; t < bands; t++) band_keys[d * bands + t] = NO_VALUE;
            continue;
        }
        int64_t m = sort_unique(shing, ns);
        n_shingles[d] = m;
        minhash(shing, m, a, b, num_perm, mins);
        for (int64_t t = 0; t < bands; t++) {
            uint64_t h = fmix64((uint64_t)(t + 1));
            for (int64_t q = 0; q < rows; q++) h = fmix64(h * K_POLY + mins[t * rows + q]);
            band_keys[d * bands + t] = h;
        }
        int64_t last = -1, start = w;
        for (int64_t i = 0; i < m && w - start < keep_k; i++) {
            int64_t v32 = (int64_t)(shing[i] >> 32);
            if (v32 != last) { stored[w++] = (uint32_t)v32; last = v32; }
        }
        stored_off[d + 1] = w;
    }
    free(words); free(mins);
    return 0;
}

/* Full signatures (n x num_perm) and distinct shingle counts, for tests and benchmarks. */
int64_t mh_signature_matrix(const uint8_t* data, const int64_t* offsets, int64_t n, int64_t ngram, int64_t fold,
                            const uint64_t* a, const uint64_t* b, int64_t num_perm,
                            const int64_t* sep_lo, const int64_t* sep_hi, int64_t nsep,
                            uint64_t* sig, int64_t* counts) {
    int64_t cap = START_CAP;
    uint64_t* words = malloc(sizeof(uint64_t) * cap);
    if (!words) return -1;
    for (int64_t d = 0; d < n; d++) {
        words = word_buffer(words, &cap, data, offsets[d], offsets[d + 1], (int)fold, sep_lo, sep_hi, nsep);
        if (!words) return -1;
        int64_t nw = word_hashes(data, offsets[d], offsets[d + 1], (int)fold, sep_lo, sep_hi, nsep, words);
        int64_t m = sort_unique(words, shingles(words, nw, ngram));
        counts[d] = m;
        minhash(words, m, a, b, num_perm, sig + d * num_perm);
    }
    free(words);
    return 0;
}

/* Every document's shingle hashes in text order; out must hold sum_d (bytes_d / 2 + 1) values. */
int64_t mh_shingle_hashes(const uint8_t* data, const int64_t* offsets, int64_t n, int64_t ngram, int64_t fold,
                          const int64_t* sep_lo, const int64_t* sep_hi, int64_t nsep,
                          uint64_t* out, int64_t* out_off) {
    out_off[0] = 0;
    for (int64_t d = 0; d < n; d++) {
        uint64_t* out_d = out + out_off[d];  /* the caller sized out by the bytes / 2 + 1 bound */
        int64_t nw = word_hashes(data, offsets[d], offsets[d + 1], (int)fold, sep_lo, sep_hi, nsep, out_d);
        out_off[d + 1] = out_off[d] + shingles(out_d, nw, ngram);
    }
    return 0;
}

/* Candidate pairs of rows sorted by (key, pos): each bucket member with the bucket's first member
   and with up to `window` members before it. lo/hi must hold the bound computed by the caller. */
int64_t mh_bucket_pairs(const uint64_t* keys, const int64_t* pos, int64_t n, int64_t window,
                        int64_t* lo, int64_t* hi) {
    int64_t m = 0, i = 0;
    while (i < n) {
        int64_t j = i + 1;
        while (j < n && keys[j] == keys[i]) j++;
        for (int64_t q = i + 1; q < j; q++) {
            int64_t first = q - window > i ? q - window : i;
            if (first > i) { lo[m] = pos[i]; hi[m] = pos[q]; m++; }
            for (int64_t p = first; p < q; p++) {
                if (pos[p] == pos[q]) continue;
                lo[m] = pos[p]; hi[m] = pos[q]; m++;
            }
        }
        i = j;
    }
    return m;
}

/* Jaccard of stored shingle sets: exact when both are complete, else the bottom-k estimate. */
void mh_jaccard(const uint32_t* values, const int64_t* offsets, const uint8_t* full,
                const int64_t* left, const int64_t* right, int64_t npairs, double* out) {
    for (int64_t p = 0; p < npairs; p++) {
        int64_t a0 = offsets[left[p]], a1 = offsets[left[p] + 1];
        int64_t b0 = offsets[right[p]], b1 = offsets[right[p] + 1];
        int64_t na = a1 - a0, nb = b1 - b0;
        if (na == 0 || nb == 0) { out[p] = 0.0; continue; }
        int exact = full[left[p]] && full[right[p]];
        int64_t k = exact ? na + nb : (na < nb ? na : nb);
        int64_t i = a0, j = b0, seen = 0, inter = 0;
        while (seen < k && (i < a1 || j < b1)) {
            if (j >= b1 || (i < a1 && values[i] < values[j])) i++;
            else if (i >= a1 || values[j] < values[i]) j++;
            else { inter++; i++; j++; }
            seen++;
        }
        out[p] = exact ? (double)inter / (double)(na + nb - inter) : (double)inter / (double)seen;
    }
}

static inline int64_t find(int64_t* parent, int64_t x) {
    int64_t root = x;
    while (parent[root] != root) root = parent[root];
    while (parent[x] != root) { int64_t nx = parent[x]; parent[x] = root; x = nx; }
    return root;
}

/* Union-find: the larger root always goes under the smaller, so roots are component minima. */
void mh_union(int64_t* parent, const int64_t* lo, const int64_t* hi, int64_t m) {
    for (int64_t e = 0; e < m; e++) {
        int64_t ra = find(parent, lo[e]), rb = find(parent, hi[e]);
        if (ra < rb) parent[rb] = ra; else if (rb < ra) parent[ra] = rb;
    }
}

void mh_roots(int64_t* parent, int64_t n) {
    for (int64_t x = 0; x < n; x++) parent[x] = find(parent, x);
}

void mh_fnv_strings(const uint8_t* data, const int64_t* offsets, int64_t n, uint64_t* out) {
    for (int64_t d = 0; d < n; d++) {
        uint64_t h = FNV_OFFSET;
        for (int64_t i = offsets[d]; i < offsets[d + 1]; i++) h = (h ^ (uint64_t)data[i]) * FNV_PRIME;
        out[d] = fmix64(h);
    }
}
"""
