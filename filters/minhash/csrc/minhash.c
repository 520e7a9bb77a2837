/* MinHash deduplication kernels: the CPython extension filters.minhash._minhash.
 *
 * Built when the package is installed (setup.py); the Python side is filters/minhash/kernels.py,
 * which allocates every output and documents each function. The definitions of every hash are
 * in that module's docstring and in docs/dedup.md; tests/minhash checks them against a
 * plain-Python version and against the NumPy fallback (filters/minhash/numpy_kernels.py).
 *
 * The only loop with per-CPU variants is the MinHash itself (min over shingles of
 * a_j * x + b_j mod 2^64 for every permutation j): generic C, AVX2 (64-bit products from three
 * 32-bit ones) and AVX-512 (vpmullq). All are integer arithmetic: every path gives the same bits.
 * Every function releases the GIL and holds no global state besides the chosen path, so threads
 * run kernels in parallel.
 */
#define CUR_DISPATCH 1
#include "curate_native.h"
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#define ABI_VERSION 3

#define FNV_OFFSET 0xCBF29CE484222325ULL
#define FNV_PRIME 0x100000001B3ULL
#define K_POLY 0x9E3779B97F4A7C15ULL
#define NO_VALUE 0xFFFFFFFFFFFFFFFFULL
#define FLAG_FOLD 1  /* fold_digits */
#define FLAG_LOWER 2 /* lower-case the text as Polars' str.to_lowercase */

static inline uint64_t fmix64(uint64_t k) {
    k ^= k >> 33; k *= 0xFF51AFD7ED558CCDULL;
    k ^= k >> 33; k *= 0xC4CEB9FE1A85EC53ULL;
    k ^= k >> 33; return k;
}

/* --- words and shingles ----------------------------------------------------------------------- */

typedef struct {
    const int64_t *lo, *hi;
    int64_t n;
} seps_t;

/* ASCII letters and digits are word characters; every other ASCII byte separates words. */
static const uint8_t ASCII_WORD[128] = {
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 1,1,1,1,1,1,1,1,1,1,0,0,0,0,0,0,
    0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,0,0,0,0,0,
    0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,0,0,0,0,0,
};

static inline int is_sep_cp(int64_t cp, const seps_t *s) {
    int64_t l = 0, h = s->n;
    while (l < h) { /* first range whose upper end is >= cp */
        int64_t m = (l + h) >> 1;
        if (s->hi[m] < cp) l = m + 1; else h = m;
    }
    return l < s->n && s->lo[l] <= cp;
}

/* The byte an ASCII word character adds to its word's hash (upper case folded; with fold_digits,
   digits become '0'), 0 for an ASCII separator. Filled at import. */
static uint8_t ASCII_BYTE[2][128];

static void init_tables(void) {
    for (int f = 0; f < 2; f++)
        for (int c = 0; c < 128; c++) {
            int b = c;
            if (b >= 'A' && b <= 'Z') b += 32;
            else if (f && b >= '0' && b <= '9') b = '0';
            ASCII_BYTE[f][c] = ASCII_WORD[c] ? (uint8_t)b : 0;
        }
}

/* Decodes the code point at data[i] (lenient UTF-8: a lead byte takes its continuation bytes
   whatever they are, a byte that cannot start a sequence is a code point of its own) and returns
   its size in bytes. */
static inline int64_t decode(const uint8_t *data, int64_t i, int64_t end, int64_t *cp) {
    const int64_t c = data[i];
    if (c >= 0xF0 && i + 3 < end) {
        *cp = ((c & 0x07) << 18) | ((int64_t)(data[i + 1] & 0x3F) << 12) | ((int64_t)(data[i + 2] & 0x3F) << 6)
              | (data[i + 3] & 0x3F);
        return 4;
    }
    if (c >= 0xE0 && i + 2 < end) {
        *cp = ((c & 0x0F) << 12) | ((int64_t)(data[i + 1] & 0x3F) << 6) | (data[i + 2] & 0x3F);
        return 3;
    }
    if (c >= 0xC0 && i + 1 < end) {
        *cp = ((c & 0x1F) << 6) | (data[i + 1] & 0x3F);
        return 2;
    }
    *cp = c;
    return 1;
}

/* Number of words in data[start:end] (sizes a buffer for an enormous document). */
static int64_t count_words(const uint8_t *data, int64_t start, int64_t end, const seps_t *seps) {
    int64_t n = 0, i = start;
    int in_word = 0;
    while (i < end) {
        int64_t cp, size = 1, w;
        if (data[i] < 0x80) w = ASCII_WORD[data[i]];
        else { size = decode(data, i, end, &cp); w = !is_sep_cp(cp, seps); }
        n += in_word & !w;
        in_word = (int)w;
        i += size;
    }
    return n + in_word;
}

/* --- lower-casing (Polars' str.to_lowercase, see filters/minhash/lower_table.py) ----------------- */

#include "lower_table.h"

/* The class of cp in the final-sigma rule: SIGMA_IGNORABLE, SIGMA_CASED or 0. */
static int sigma_class(int64_t cp) {
    int64_t l = 0, h = (int64_t)(sizeof SIGMA_CLASS / sizeof SIGMA_CLASS[0]);
    while (l < h) { /* first range whose last code point is >= cp */
        const int64_t m = (l + h) >> 1;
        if ((int64_t)SIGMA_CLASS[m][1] < cp) l = m + 1; else h = m;
    }
    return l < (int64_t)(sizeof SIGMA_CLASS / sizeof SIGMA_CLASS[0]) && (int64_t)SIGMA_CLASS[l][0] <= cp
           ? (int)SIGMA_CLASS[l][2] : 0;
}

/* Whether the capital sigma at data[i] of the document [start, end) ends a word (Unicode's
   Final_Sigma, as Rust's str::to_lowercase): a cased letter before it, skipping case-ignorable
   characters, and none after it. */
static int final_sigma(const uint8_t *data, int64_t start, int64_t end, int64_t i) {
    int before = 0;
    for (int64_t j = i; j > start;) {
        int64_t k = j - 1, cp;
        while (k > start && (data[k] & 0xC0) == 0x80 && j - k < 4) k--;
        decode(data, k, j, &cp);
        j = k;
        const int c = sigma_class(cp);
        if (c == SIGMA_IGNORABLE) continue;
        before = c == SIGMA_CASED;
        break;
    }
    if (!before) return 0;
    for (int64_t j = i + 2; j < end;) {
        int64_t cp;
        j += decode(data, j, end, &cp);
        const int c = sigma_class(cp);
        if (c == SIGMA_IGNORABLE) continue;
        return c != SIGMA_CASED;
    }
    return 1;
}

/* The lower case of the code point cp of `size` bytes at data[i] (a document [start, end)):
   writes 1-3 code points to low and returns how many, or 0 when it is its own lower case or the
   bytes are not well-formed UTF-8 (Arrow strings always are; bytes that are not stay as they are,
   as without lower-casing). */
static int lowered(const uint8_t *data, int64_t start, int64_t end, int64_t i, int64_t size, int64_t cp,
                   uint32_t low[3]) {
    if (size < 2 || cp >= LOWER_LIMIT) return 0;
    const int32_t d = LOWER_DELTA[LOWER_PAGE[cp >> LOWER_PAGE_BITS]][cp & ((1 << LOWER_PAGE_BITS) - 1)];
    if (d == 0) return 0;
    for (int64_t k = 1; k < size; k++) if ((data[i + k] & 0xC0) != 0x80) return 0;
    if (cp < (size == 2 ? 0x80 : size == 3 ? 0x800 : 0x10000)) return 0; /* overlong: not UTF-8 */
    if (cp == 0x3A3) { low[0] = final_sigma(data, start, end, i) ? 0x3C2 : 0x3C3; return 1; }
    if (d != LOWER_IS_MULTI) { low[0] = (uint32_t)(cp + d); return 1; }
    for (size_t m = 0; m < sizeof LOWER_MULTI / sizeof LOWER_MULTI[0]; m++) {
        if (LOWER_MULTI[m][0] != (uint32_t)cp) continue;
        int n = 0;
        while (n < 3 && LOWER_MULTI[m][n + 1]) { low[n] = LOWER_MULTI[m][n + 1]; n++; }
        return n;
    }
    return 0;
}

/* Feeds one code point of lower-cased text to a stream of the word hasher (see WORD_STEP). */
#define FEED_CP(cp, n, h, in_word, out)                                                         \
    do {                                                                                        \
        const uint32_t c2_ = (cp);                                                              \
        const uint64_t b2_ = c2_ < 0x80 ? tab[c2_] : 0;                                         \
        if (c2_ < 0x80 ? b2_ == 0 : is_sep_cp(c2_, seps)) {                                     \
            out[n] = h;                                                                         \
            n += in_word;                                                                       \
            h = FNV_OFFSET;                                                                     \
            in_word = 0;                                                                        \
        } else if (c2_ < 0x80) {                                                                \
            h = (h ^ b2_) * FNV_PRIME;                                                          \
            in_word = 1;                                                                        \
        } else {                                                                                \
            uint8_t u_[4];                                                                      \
            int nu_;                                                                            \
            if (c2_ < 0x800) { u_[0] = (uint8_t)(0xC0 | c2_ >> 6); u_[1] = (uint8_t)(0x80 | (c2_ & 0x3F)); nu_ = 2; } \
            else if (c2_ < 0x10000) { u_[0] = (uint8_t)(0xE0 | c2_ >> 12); u_[1] = (uint8_t)(0x80 | (c2_ >> 6 & 0x3F)); \
                                      u_[2] = (uint8_t)(0x80 | (c2_ & 0x3F)); nu_ = 3; }                          \
            else { u_[0] = (uint8_t)(0xF0 | c2_ >> 18); u_[1] = (uint8_t)(0x80 | (c2_ >> 12 & 0x3F));             \
                   u_[2] = (uint8_t)(0x80 | (c2_ >> 6 & 0x3F)); u_[3] = (uint8_t)(0x80 | (c2_ & 0x3F)); nu_ = 4; } \
            for (int j2_ = 0; j2_ < nu_; j2_++) h = (h ^ u_[j2_]) * FNV_PRIME;                  \
            in_word = 1;                                                                        \
        }                                                                                       \
    } while (0)

/* The word hasher handles one or two streams of bytes. A stream's state is (i, n, h, in_word): the
   position, the words finished, the running FNV-1a state and whether a word is open; finished
   words' raw states go to out[] (the finaliser is applied afterwards). The ASCII step has no
   branch on the data: the state is written at out[n] every byte and n advances only where a word
   byte is followed by a separator (so out holds one value more than the words), and the reset
   to the FNV offset at a separator is a mask. Bytes >= 0x80 (rare in most text) take a branch. */
#define WORD_STEP(i, end, n, h, in_word, out)                                                   \
    do {                                                                                        \
        const uint32_t c_ = data[i];                                                            \
        if (__builtin_expect(c_ < 0x80, 1)) {                                                   \
            const uint64_t b_ = tab[c_];                                                        \
            const uint64_t w_ = b_ != 0, m_ = 0 - w_;                                           \
            out[n] = h;                                                                         \
            n += in_word & (w_ ^ 1);                                                            \
            h = (((h ^ b_) * FNV_PRIME) & m_) | (FNV_OFFSET & ~m_);                             \
            in_word = w_;                                                                       \
            i++;                                                                                \
        } else {                                                                                \
            int64_t cp_;                                                                        \
            const int64_t size_ = decode(data, i, end, &cp_);                                   \
            uint32_t low_[3];                                                                   \
            const int nl_ = lower ? lowered(data, doc_start, doc_end, i, size_, cp_, low_) : 0; \
            if (nl_) {                                                                          \
                for (int k_ = 0; k_ < nl_; k_++) FEED_CP(low_[k_], n, h, in_word, out);         \
            } else if (is_sep_cp(cp_, seps)) {                                                  \
                out[n] = h;                                                                     \
                n += in_word;                                                                   \
                h = FNV_OFFSET;                                                                 \
                in_word = 0;                                                                    \
            } else {                                                                            \
                for (int64_t j_ = 0; j_ < size_; j_++) h = (h ^ (uint64_t)data[i + j_]) * FNV_PRIME; \
                in_word = 1;                                                                    \
            }                                                                                   \
            i += size_;                                                                         \
        }                                                                                       \
    } while (0)

/* Word hashes of data[start:end] into out, which holds (end - start) / 2 + 2 values; tmp holds as
   many. Returns the word count. Long documents are cut in two at an ASCII separator near the
   middle and both halves hashed in one loop: FNV-1a is a serial chain per word, and two
   independent chains keep the multiplier busy. */
static int64_t word_hashes(const uint8_t *data, int64_t start, int64_t end, int flags, const seps_t *seps,
                           uint64_t *restrict out, uint64_t *restrict tmp) {
    const uint8_t *tab = ASCII_BYTE[flags & FLAG_FOLD ? 1 : 0];
    const int lower = (flags & FLAG_LOWER) != 0;
    const int64_t doc_start = start, doc_end = end;
    int64_t mid = end;
    if (end - start >= 256) { /* an ASCII separator after the middle (never inside a UTF-8 sequence) */
        for (int64_t j = start + (end - start) / 2, lim = j + 64 < end ? j + 64 : end; j < lim; j++)
            if (data[j] < 0x80 && !ASCII_WORD[data[j]]) { mid = j; break; }
    }
    int64_t ia = start, na = 0;
    uint64_t ha = FNV_OFFSET, wa = 0;
    if (mid < end) {
        int64_t ib = mid, nb = 0;
        uint64_t hb = FNV_OFFSET, wb = 0;
        while (ia < mid && ib < end) {
            WORD_STEP(ia, mid, na, ha, wa, out);
            WORD_STEP(ib, end, nb, hb, wb, tmp);
        }
        while (ib < end) WORD_STEP(ib, end, nb, hb, wb, tmp);
        tmp[nb] = hb;
        nb += wb;
        while (ia < mid) WORD_STEP(ia, mid, na, ha, wa, out);
        out[na] = ha;
        na += wa;
        memcpy(out + na, tmp, sizeof(uint64_t) * (size_t)nb);
        na += nb;
    } else {
        while (ia < end) WORD_STEP(ia, end, na, ha, wa, out);
        out[na] = ha;
        na += wa;
    }
    for (int64_t j = 0; j < na; j++) out[j] = fmix64(out[j]);
    return na;
}

/* Shingle hashes from word hashes, in place: shingle i overwrites word i, which no later shingle
   reads. Returns the count. */
static int64_t shingles(uint64_t *words, int64_t nw, int64_t ngram) {
    if (nw == 0) return 0;
    const int64_t span = nw >= ngram ? ngram : nw, count = nw - span + 1;
    if (span == 5) { /* the default: unrolled */
        for (int64_t i = 0; i < count; i++) {
            uint64_t h = words[i];
            h = h * K_POLY + words[i + 1]; h = h * K_POLY + words[i + 2];
            h = h * K_POLY + words[i + 3]; h = h * K_POLY + words[i + 4];
            words[i] = fmix64(h);
        }
        return count;
    }
    for (int64_t i = 0; i < count; i++) {
        uint64_t h = 0;
        for (int64_t k = 0; k < span; k++) h = h * K_POLY + words[i + k];
        words[i] = fmix64(h);
    }
    return count;
}

/* A word buffer big enough for document [start, end): grown to the exact word count only when
   the cheap bound (one word per two bytes) exceeds it, so an enormous document costs 8 bytes
   per word, not per two bytes. Returns NULL when out of memory (buf is freed then). */
static uint64_t *word_buffer(uint64_t *buf, int64_t *cap, const uint8_t *data, int64_t start, int64_t end, int fold,
                             const seps_t *seps) {
    if ((end - start) / 2 + 2 <= *cap) return buf;
    (void)fold;
    const int64_t need = count_words(data, start, end, seps) + 2;
    if (need <= *cap) return buf;
    free(buf);
    *cap = need;
    return malloc(sizeof(uint64_t) * (size_t)need);
}

/* --- sorting and distinct values ---------------------------------------------------------------- */

static void insertion_u64(uint64_t *a, int64_t n) {
    for (int64_t i = 1; i < n; i++) {
        uint64_t v = a[i]; int64_t j = i - 1;
        while (j >= 0 && a[j] > v) { a[j + 1] = a[j]; j--; }
        a[j + 1] = v;
    }
}

/* LSD radix sort on 11-bit digits (6 passes), using tmp (n values); for long arrays. */
static void radix_u64(uint64_t *a, uint64_t *tmp, int64_t n) {
    enum { BITS = 11, SIZE = 1 << BITS };
    static _Thread_local uint32_t count[6][SIZE];
    memset(count, 0, sizeof count);
    for (int64_t i = 0; i < n; i++) {
        const uint64_t v = a[i];
        for (int p = 0; p < 6; p++) count[p][(v >> (p * BITS)) & (SIZE - 1)]++;
    }
    uint64_t *src = a, *dst = tmp;
    for (int p = 0; p < 6; p++) {
        uint32_t sum = 0;
        int trivial = 0;
        for (int d = 0; d < SIZE; d++) {
            const uint32_t c = count[p][d];
            if (c == (uint32_t)n) trivial = 1;
            count[p][d] = sum; sum += c;
        }
        if (trivial) continue; /* every value has the same digit */
        for (int64_t i = 0; i < n; i++) {
            const uint64_t v = src[i];
            dst[count[p][(v >> (p * BITS)) & (SIZE - 1)]++] = v;
        }
        uint64_t *t = src; src = dst; dst = t;
    }
    if (src != a) memcpy(a, src, sizeof(uint64_t) * (size_t)n);
}

static void quick_u64(uint64_t *a, int64_t n) {
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
        if (j + 1 < n - j - 1) { quick_u64(a, j + 1); a += j + 1; n -= j + 1; }
        else { quick_u64(a + j + 1, n - j - 1); n = j + 1; }
    }
    insertion_u64(a, n);
}

/* Sorts a[0:n] ascending (aux holds n values): insertion sort when short, else an LSD radix sort
   on bytes (one counting pass, then a scatter pass per byte that is not the same everywhere). */
static void sort_u32(uint32_t *a, uint32_t *aux, int64_t n) {
    if (n <= 32) {
        for (int64_t i = 1; i < n; i++) {
            const uint32_t v = a[i];
            int64_t j = i - 1;
            while (j >= 0 && a[j] > v) { a[j + 1] = a[j]; j--; }
            a[j + 1] = v;
        }
        return;
    }
    uint32_t count[4][256];
    memset(count, 0, sizeof count);
    for (int64_t i = 0; i < n; i++) {
        const uint32_t v = a[i];
        count[0][v & 255]++; count[1][(v >> 8) & 255]++; count[2][(v >> 16) & 255]++; count[3][v >> 24]++;
    }
    uint32_t *src = a, *dst = aux;
    for (int p = 0; p < 4; p++) {
        uint32_t sum = 0;
        int same = 0;
        for (int d = 0; d < 256; d++) {
            const uint32_t c = count[p][d];
            same |= c == (uint32_t)n;
            count[p][d] = sum;
            sum += c;
        }
        if (same) continue;
        const int shift = 8 * p;
        for (int64_t i = 0; i < n; i++) {
            const uint32_t v = src[i];
            dst[count[p][(v >> shift) & 255]++] = v;
        }
        uint32_t *t = src; src = dst; dst = t;
    }
    if (src != a) memcpy(a, src, sizeof(uint32_t) * (size_t)n);
}

/* Sorts a[0:n] ascending and removes repeats; returns the count left. tmp holds n values. */
static int64_t sort_unique(uint64_t *a, uint64_t *tmp, int64_t n) {
    if (n == 0) return 0;
    if (n >= 1024 && tmp) radix_u64(a, tmp, n);
    else quick_u64(a, n);
    int64_t m = 1;
    for (int64_t i = 1; i < n; i++) if (a[i] != a[m - 1]) a[m++] = a[i];
    return m;
}

/* Removes repeats without sorting (open addressing in tmp, a power of two >= 2n slots); the
   first occurrences stay, in order. Returns the count left. */
static int64_t unique_hashed(uint64_t *a, uint64_t *table, int64_t slots, int64_t n) {
    /* NO_VALUE marks an empty slot; a real NO_VALUE shingle is kept aside in `has_max`. */
    memset(table, 0xFF, sizeof(uint64_t) * (size_t)slots);
    const uint64_t mask = (uint64_t)slots - 1;
    int64_t m = 0, has_max = 0;
    for (int64_t i = 0; i < n; i++) {
        const uint64_t v = a[i];
        if (v == NO_VALUE) { if (!has_max) { has_max = 1; a[m++] = v; } continue; }
        uint64_t s = (v * K_POLY) >> 32 & mask;
        for (;;) {
            const uint64_t t = table[s];
            if (t == v) break;
            if (t == NO_VALUE) { table[s] = v; a[m++] = v; break; }
            s = (s + 1) & mask;
        }
    }
    return m;
}

/* --- MinHash: out[j] = min_i (a[j] * x[i] + b[j]) mod 2^64 -------------------------------------- */

typedef void (*minhash_fn)(const uint64_t *, int64_t, const uint64_t *, const uint64_t *, int64_t, uint64_t *);

static void minhash_generic(const uint64_t *x, int64_t m, const uint64_t *a, const uint64_t *b, int64_t num_perm,
                            uint64_t *out) {
    for (int64_t j = 0; j < num_perm; j++) {
        const uint64_t aj = a[j], bj = b[j];
        uint64_t mn = NO_VALUE;
        for (int64_t i = 0; i < m; i++) {
            const uint64_t v = aj * x[i] + bj;
            mn = v < mn ? v : mn;
        }
        out[j] = mn;
    }
}

#if CUR_X86
CUR_TARGET_AVX2_BEGIN
/* Four permutations per 256-bit vector, 16 per pass over the shingles. A 64-bit product from
   32-bit ones: a*x = alo*xlo + ((ahi*xlo + alo*xhi) << 32) mod 2^64. Unsigned min as signed min
   of values with the top bit flipped (adding 2^63 to b flips it in the sum). */
static void minhash_avx2(const uint64_t *x, int64_t m, const uint64_t *a, const uint64_t *b, int64_t num_perm,
                         uint64_t *out) {
    const __m256i flip = _mm256_set1_epi64x(INT64_MIN);
    int64_t j = 0;
    for (; j + 16 <= num_perm; j += 16) {
        __m256i al[4], ah[4], bb[4], mn[4];
        for (int v = 0; v < 4; v++) {
            al[v] = _mm256_loadu_si256((const __m256i *)(a + j + 4 * v));
            ah[v] = _mm256_srli_epi64(al[v], 32);
            bb[v] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(b + j + 4 * v)), flip);
            mn[v] = _mm256_set1_epi64x(INT64_MAX);
        }
        for (int64_t i = 0; i < m; i++) {
            const __m256i xl = _mm256_set1_epi64x((int64_t)x[i]);
            const __m256i xh = _mm256_set1_epi32((int32_t)(x[i] >> 32));
            for (int v = 0; v < 4; v++) {
                const __m256i lo = _mm256_mul_epu32(al[v], xl);
                const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(ah[v], xl), _mm256_mul_epu32(al[v], xh));
                const __m256i val = _mm256_add_epi64(_mm256_add_epi64(lo, _mm256_slli_epi64(cross, 32)), bb[v]);
                mn[v] = _mm256_blendv_epi8(mn[v], val, _mm256_cmpgt_epi64(mn[v], val));
            }
        }
        for (int v = 0; v < 4; v++)
            _mm256_storeu_si256((__m256i *)(out + j + 4 * v), _mm256_xor_si256(mn[v], flip));
    }
    if (j < num_perm) minhash_generic(x, m, a + j, b + j, num_perm - j, out + j);
}
CUR_TARGET_END

CUR_TARGET_AVX512_BEGIN
/* Eight permutations per 512-bit vector, 32 per pass over the shingles (vpmullq, vpminuq). */
static void minhash_avx512(const uint64_t *x, int64_t m, const uint64_t *a, const uint64_t *b, int64_t num_perm,
                           uint64_t *out) {
    int64_t j = 0;
    for (; j + 32 <= num_perm; j += 32) {
        __m512i av[4], bv[4], mn[4];
        for (int v = 0; v < 4; v++) {
            av[v] = _mm512_loadu_si512((const void *)(a + j + 8 * v));
            bv[v] = _mm512_loadu_si512((const void *)(b + j + 8 * v));
            mn[v] = _mm512_set1_epi64(-1);
        }
        for (int64_t i = 0; i < m; i++) {
            const __m512i xv = _mm512_set1_epi64((int64_t)x[i]);
            for (int v = 0; v < 4; v++)
                mn[v] = _mm512_min_epu64(mn[v], _mm512_add_epi64(_mm512_mullo_epi64(av[v], xv), bv[v]));
        }
        for (int v = 0; v < 4; v++) _mm512_storeu_si512((void *)(out + j + 8 * v), mn[v]);
    }
    for (; j + 8 <= num_perm; j += 8) {
        const __m512i av = _mm512_loadu_si512((const void *)(a + j)), bv = _mm512_loadu_si512((const void *)(b + j));
        __m512i mn = _mm512_set1_epi64(-1);
        for (int64_t i = 0; i < m; i++)
            mn = _mm512_min_epu64(mn, _mm512_add_epi64(_mm512_mullo_epi64(av, _mm512_set1_epi64((int64_t)x[i])), bv));
        _mm512_storeu_si512((void *)(out + j), mn);
    }
    if (j < num_perm) minhash_generic(x, m, a + j, b + j, num_perm - j, out + j);
}
CUR_TARGET_END
#endif

static minhash_fn MINHASH = minhash_generic;
static int PATH = CUR_PATH_GENERIC;

static int select_path(int path) {
#if CUR_X86
    MINHASH = path == CUR_PATH_AVX512 ? minhash_avx512 : path == CUR_PATH_AVX2 ? minhash_avx2 : minhash_generic;
#else
    MINHASH = minhash_generic;
    path = CUR_PATH_GENERIC;
#endif
    PATH = path;
    return 0;
}

static void cur_select(int path) { select_path(path); }
static int cur_current(void) { return PATH; }

/* --- per-document pipelines --------------------------------------------------------------------- */

#define START_CAP 65536

typedef struct {
    uint64_t *words, *tmp;
    int64_t cap;
} scratch_t;

/* Each thread keeps one standard-size scratch between calls: fresh buffers of this size are
   mapped pages, and faulting them in again for every batch cost more than the kernel's work on
   small batches. Buffers grown for an enormous document are freed after the call. */
static _Thread_local scratch_t CACHED;

static int scratch_init(scratch_t *s) {
    if (CACHED.words) {
        *s = CACHED;
        CACHED.words = CACHED.tmp = NULL;
        return 0;
    }
    s->cap = START_CAP;
    s->words = malloc(sizeof(uint64_t) * START_CAP);
    s->tmp = malloc(sizeof(uint64_t) * 4 * START_CAP);
    return s->words && s->tmp ? 0 : -1;
}

static void scratch_free(scratch_t *s) {
    if (s->cap == START_CAP && s->words && s->tmp && !CACHED.words) {
        CACHED = *s;
    } else {
        free(s->words);
        free(s->tmp);
    }
    s->words = s->tmp = NULL;
}

/* Word buffer and scratch (4x: a hash table of a power of two >= 2 x words) for document [start, end). Returns -1 when out of memory. */
static int scratch_fit(scratch_t *s, const uint8_t *data, int64_t start, int64_t end, int fold, const seps_t *seps) {
    const int64_t old = s->cap;
    s->words = word_buffer(s->words, &s->cap, data, start, end, fold, seps);
    if (!s->words) return -1;
    if (s->cap != old) {
        free(s->tmp);
        s->tmp = malloc(sizeof(uint64_t) * 4 * (size_t)s->cap);
        if (!s->tmp) return -1;
    }
    return 0;
}

static int64_t pow2_at_least(int64_t n) { int64_t p = 16; while (p < n) p <<= 1; return p; }

typedef struct {
    const uint8_t *data; const int64_t *offsets; int64_t n, ngram, fold;
    const uint64_t *a, *b; int64_t num_perm, bands, rows, keep_k;
    seps_t seps;
    uint64_t *band_keys; int64_t *counts; uint32_t *stored; int64_t *stored_off; int64_t stored_cap;
} sig_args;

/* Band keys, distinct shingle counts and bottom-k stored shingles of n documents. Returns 0,
   -1 when out of memory, -2 when `stored` is too small. */
static int64_t run_signatures(const sig_args *g) {
    scratch_t s;
    uint64_t mins[4096];
    if (g->num_perm > 4096) return -3;
    if (scratch_init(&s) < 0) { scratch_free(&s); return -1; }
    g->stored_off[0] = 0;
    for (int64_t d = 0; d < g->n; d++) {
        const int64_t st = g->offsets[d], en = g->offsets[d + 1];
        if (scratch_fit(&s, g->data, st, en, (int)g->fold, &g->seps) < 0) { scratch_free(&s); return -1; }
        const int64_t nw = word_hashes(g->data, st, en, (int)g->fold, &g->seps, s.words, s.tmp);
        const int64_t ns = shingles(s.words, nw, g->ngram);
        int64_t w = g->stored_off[d];
        g->stored_off[d + 1] = w;
        if (ns == 0) {
            g->counts[d] = 0;
            for (int64_t t = 0; t < g->bands; t++) g->band_keys[d * g->bands + t] = NO_VALUE;
            continue;
        }
        const int64_t m = unique_hashed(s.words, s.tmp, pow2_at_least(2 * ns), ns); /* order not needed */
        g->counts[d] = m;
        if (g->bands > 0) {
            MINHASH(s.words, m, g->a, g->b, g->num_perm, mins);
            for (int64_t t = 0; t < g->bands; t++) {
                uint64_t h = fmix64((uint64_t)(t + 1));
                for (int64_t q = 0; q < g->rows; q++) h = fmix64(h * K_POLY + mins[t * g->rows + q]);
                g->band_keys[d * g->bands + t] = h;
            }
        }
        if (g->keep_k > 0) {
            /* the keep_k smallest distinct values of the top 32 bits: sorted 32-bit keys */
            uint32_t *v = (uint32_t *)s.tmp, *aux = v + m;
            for (int64_t i = 0; i < m; i++) v[i] = (uint32_t)(s.words[i] >> 32);
            sort_u32(v, aux, m);
            const int64_t start = w;
            for (int64_t i = 0; i < m && w - start < g->keep_k; i++) {
                if (i > 0 && v[i] == v[i - 1]) continue;
                if (w >= g->stored_cap) { scratch_free(&s); return -2; }
                g->stored[w++] = v[i];
            }
            g->stored_off[d + 1] = w;
        }
    }
    scratch_free(&s);
    return 0;
}

/* --- Python wrappers ---------------------------------------------------------------------------- */

static int check_offsets(const int64_t *off, int64_t n, int64_t data_len) {
    if (n < 0) { PyErr_SetString(PyExc_ValueError, "offsets must hold n + 1 >= 1 values"); return -1; }
    for (int64_t i = 0; i < n; i++) {
        if (off[i] < 0 || off[i + 1] < off[i]) {
            PyErr_SetString(PyExc_ValueError, "offsets must be non-negative and non-decreasing");
            return -1;
        }
    }
    if (off[n] > data_len || off[0] < 0) {
        PyErr_SetString(PyExc_ValueError, "offsets point past the end of data");
        return -1;
    }
    return 0;
}

static int get_seps(cur_bufs *B, PyObject *lo, PyObject *hi, seps_t *s) {
    s->lo = cur_arg(B, lo, 'i', 8, 0, "sep_lo", 0);
    if (!s->lo) return -1;
    s->hi = cur_arg(B, hi, 'i', 8, 0, "sep_hi", 0);
    if (!s->hi) return -1;
    s->n = cur_len(&B->v[B->n - 1]);
    if (cur_len(&B->v[B->n - 2]) != s->n) { PyErr_SetString(PyExc_ValueError, "sep_lo and sep_hi differ in length"); return -1; }
    return 0;
}

/* Adds the word hasher's FLAG_LOWER to *fold (which becomes FLAG_FOLD or 0) when the Python
   argument `lower` is true. */
static int flags_arg(PyObject *lower, int64_t *fold) {
    int64_t on;
    if (cur_int(lower, &on, "lower") < 0) return -1;
    *fold = (*fold ? FLAG_FOLD : 0) | (on ? FLAG_LOWER : 0);
    return 0;
}

static PyObject *raise_rc(int64_t rc) {
    if (rc == -1) return PyErr_NoMemory();
    if (rc == -2) PyErr_SetString(PyExc_ValueError, "output buffer too small");
    else if (rc == -3) PyErr_SetString(PyExc_ValueError, "num_perm must be at most 4096");
    else PyErr_Format(PyExc_RuntimeError, "kernel failed (%lld)", (long long)rc);
    return NULL;
}

/* signatures(data, offsets, ngram, fold, a, b, bands, rows, keep_k, sep_lo, sep_hi,
              band_keys_out, counts_out, stored_out, stored_off_out, lower) -> None */
static PyObject *py_signatures(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 16, "signatures") < 0) return NULL;
    cur_bufs B = {.n = 0};
    sig_args g;
    PyObject *res = NULL;
    if (!(g.data = cur_arg(&B, args[0], 'b', 1, 0, "data", 0))) goto done;
    Py_ssize_t data_len = cur_len(&B.v[0]);
    if (!(g.offsets = cur_arg(&B, args[1], 'i', 8, 0, "offsets", 1))) goto done;
    g.n = cur_len(&B.v[1]) - 1;
    if (cur_int(args[2], &g.ngram, "ngram") < 0 || cur_int(args[3], &g.fold, "fold") < 0) goto done;
    if (!(g.a = cur_arg(&B, args[4], 'u', 8, 0, "a", 0))) goto done;
    g.num_perm = cur_len(&B.v[B.n - 1]);
    if (!(g.b = cur_arg(&B, args[5], 'u', 8, 0, "b", g.num_perm))) goto done;
    if (cur_int(args[6], &g.bands, "bands") < 0 || cur_int(args[7], &g.rows, "rows") < 0 ||
        cur_int(args[8], &g.keep_k, "keep_k") < 0) goto done;
    if (g.ngram < 1 || g.bands < 0 || g.rows < 0 || g.keep_k < 0 || g.bands * g.rows > g.num_perm) {
        PyErr_SetString(PyExc_ValueError, "need ngram >= 1, keep_k >= 0 and bands * rows <= len(a)");
        goto done;
    }
    if (get_seps(&B, args[9], args[10], &g.seps) < 0) goto done;
    if (flags_arg(args[15], &g.fold) < 0) goto done;
    if (!(g.band_keys = cur_arg(&B, args[11], 'u', 8, 1, "band_keys", g.n * g.bands))) goto done;
    if (!(g.counts = cur_arg(&B, args[12], 'i', 8, 1, "counts", g.n))) goto done;
    if (!(g.stored = cur_arg(&B, args[13], 'u', 4, 1, "stored", 0))) goto done;
    g.stored_cap = cur_len(&B.v[B.n - 1]);
    if (!(g.stored_off = cur_arg(&B, args[14], 'i', 8, 1, "stored_off", g.n + 1))) goto done;
    if (check_offsets(g.offsets, g.n, data_len) < 0) goto done;
    int64_t rc;
    Py_BEGIN_ALLOW_THREADS
    rc = run_signatures(&g);
    Py_END_ALLOW_THREADS
    if (rc != 0) { raise_rc(rc); goto done; }
    res = Py_NewRef(Py_None);
done:
    cur_release(&B);
    return res;
}

static int64_t run_matrix(const uint8_t *data, const int64_t *offsets, int64_t n, int64_t ngram, int fold,
                          const uint64_t *a, const uint64_t *b, int64_t num_perm, const seps_t *seps, uint64_t *sig,
                          int64_t *counts) {
    scratch_t s;
    if (scratch_init(&s) < 0) { scratch_free(&s); return -1; }
    for (int64_t d = 0; d < n; d++) {
        if (scratch_fit(&s, data, offsets[d], offsets[d + 1], fold, seps) < 0) { scratch_free(&s); return -1; }
        const int64_t nw = word_hashes(data, offsets[d], offsets[d + 1], fold, seps, s.words, s.tmp);
        const int64_t m = sort_unique(s.words, s.tmp, shingles(s.words, nw, ngram));
        counts[d] = m;
        MINHASH(s.words, m, a, b, num_perm, sig + d * num_perm);
    }
    scratch_free(&s);
    return 0;
}

/* signature_matrix(data, offsets, ngram, fold, a, b, sep_lo, sep_hi, sig_out, counts_out, lower) -> None */
static PyObject *py_signature_matrix(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 11, "signature_matrix") < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const uint8_t *data; const int64_t *offsets; const uint64_t *a, *b; uint64_t *sig; int64_t *counts;
    int64_t ngram, fold, n, num_perm;
    seps_t seps;
    if (!(data = cur_arg(&B, args[0], 'b', 1, 0, "data", 0))) goto done;
    Py_ssize_t data_len = cur_len(&B.v[0]);
    if (!(offsets = cur_arg(&B, args[1], 'i', 8, 0, "offsets", 1))) goto done;
    n = cur_len(&B.v[1]) - 1;
    if (cur_int(args[2], &ngram, "ngram") < 0 || cur_int(args[3], &fold, "fold") < 0) goto done;
    if (ngram < 1) { PyErr_SetString(PyExc_ValueError, "ngram must be >= 1"); goto done; }
    if (!(a = cur_arg(&B, args[4], 'u', 8, 0, "a", 0))) goto done;
    num_perm = cur_len(&B.v[B.n - 1]);
    if (!(b = cur_arg(&B, args[5], 'u', 8, 0, "b", num_perm))) goto done;
    if (get_seps(&B, args[6], args[7], &seps) < 0) goto done;
    if (flags_arg(args[10], &fold) < 0) goto done;
    if (!(sig = cur_arg(&B, args[8], 'u', 8, 1, "sig", n * num_perm))) goto done;
    if (!(counts = cur_arg(&B, args[9], 'i', 8, 1, "counts", n))) goto done;
    if (check_offsets(offsets, n, data_len) < 0) goto done;
    int64_t rc;
    Py_BEGIN_ALLOW_THREADS
    rc = run_matrix(data, offsets, n, ngram, (int)fold, a, b, num_perm, &seps, sig, counts);
    Py_END_ALLOW_THREADS
    if (rc != 0) { raise_rc(rc); goto done; }
    res = Py_NewRef(Py_None);
done:
    cur_release(&B);
    return res;
}

/* shingle_hashes(data, offsets, ngram, fold, sep_lo, sep_hi, out, out_off, lower) -> None; out holds
   sum_d (bytes_d / 2 + 1) values (a bound on the words of each document). */
static PyObject *py_shingle_hashes(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 9, "shingle_hashes") < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const uint8_t *data; const int64_t *offsets; uint64_t *out; int64_t *out_off;
    int64_t ngram, fold, n, cap;
    seps_t seps;
    if (!(data = cur_arg(&B, args[0], 'b', 1, 0, "data", 0))) goto done;
    Py_ssize_t data_len = cur_len(&B.v[0]);
    if (!(offsets = cur_arg(&B, args[1], 'i', 8, 0, "offsets", 1))) goto done;
    n = cur_len(&B.v[1]) - 1;
    if (cur_int(args[2], &ngram, "ngram") < 0 || cur_int(args[3], &fold, "fold") < 0) goto done;
    if (ngram < 1) { PyErr_SetString(PyExc_ValueError, "ngram must be >= 1"); goto done; }
    if (get_seps(&B, args[4], args[5], &seps) < 0) goto done;
    if (flags_arg(args[8], &fold) < 0) goto done;
    if (!(out = cur_arg(&B, args[6], 'u', 8, 1, "out", 0))) goto done;
    cap = cur_len(&B.v[B.n - 1]);
    if (!(out_off = cur_arg(&B, args[7], 'i', 8, 1, "out_off", n + 1))) goto done;
    if (check_offsets(offsets, n, data_len) < 0) goto done;
    int64_t need = 0;
    for (int64_t d = 0; d < n; d++) need += (offsets[d + 1] - offsets[d]) / 2 + 1;
    if (cap < need) { PyErr_SetString(PyExc_ValueError, "out is smaller than the word bound"); goto done; }
    int64_t rc = 0;
    Py_BEGIN_ALLOW_THREADS
    scratch_t sc;
    if (scratch_init(&sc) < 0) rc = -1;
    out_off[0] = 0;
    for (int64_t d = 0; d < n && rc == 0; d++) {
        if (scratch_fit(&sc, data, offsets[d], offsets[d + 1], (int)fold, &seps) < 0) { rc = -1; break; }
        const int64_t nw = word_hashes(data, offsets[d], offsets[d + 1], (int)fold, &seps, sc.words, sc.tmp);
        const int64_t ns = shingles(sc.words, nw, ngram);
        memcpy(out + out_off[d], sc.words, sizeof(uint64_t) * (size_t)ns);
        out_off[d + 1] = out_off[d] + ns;
    }
    scratch_free(&sc);
    Py_END_ALLOW_THREADS
    if (rc != 0) { raise_rc(rc); goto done; }
    res = Py_NewRef(Py_None);
done:
    cur_release(&B);
    return res;
}

/* bucket_pairs(keys, pos, window, lo_out, hi_out) -> number of pairs written. Rows sorted by
   (key, pos); each bucket member is paired with the bucket's first member and with up to
   `window` members before it. */
static PyObject *py_bucket_pairs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 5, "bucket_pairs") < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const uint64_t *keys; const int64_t *pos; int64_t window, *lo, *hi, n, cap;
    if (!(keys = cur_arg(&B, args[0], 'u', 8, 0, "keys", 0))) goto done;
    n = cur_len(&B.v[0]);
    if (!(pos = cur_arg(&B, args[1], 'i', 8, 0, "pos", n))) goto done;
    if (cur_int(args[2], &window, "window") < 0) goto done;
    if (!(lo = cur_arg(&B, args[3], 'i', 8, 1, "lo", 0))) goto done;
    cap = cur_len(&B.v[B.n - 1]);
    if (!(hi = cur_arg(&B, args[4], 'i', 8, 1, "hi", cap))) goto done;
    int64_t m = 0, overflow = 0;
    Py_BEGIN_ALLOW_THREADS
    int64_t i = 0;
    while (i < n && !overflow) {
        int64_t j = i + 1;
        while (j < n && keys[j] == keys[i]) j++;
        for (int64_t q = i + 1; q < j && !overflow; q++) {
            const int64_t first = q - window > i ? q - window : i;
            if (first > i) {
                if (m >= cap) { overflow = 1; break; }
                lo[m] = pos[i]; hi[m] = pos[q]; m++;
            }
            for (int64_t p = first; p < q; p++) {
                if (pos[p] == pos[q]) continue;
                if (m >= cap) { overflow = 1; break; }
                lo[m] = pos[p]; hi[m] = pos[q]; m++;
            }
        }
        i = j;
    }
    Py_END_ALLOW_THREADS
    if (overflow) { PyErr_SetString(PyExc_ValueError, "lo/hi are too small for the pairs"); goto done; }
    res = PyLong_FromLongLong(m);
done:
    cur_release(&B);
    return res;
}

/* jaccard(values, offsets, full, left, right, out) -> None. Exact when both sets are complete,
   else the bottom-k estimate with k the smaller stored size. */
static PyObject *py_jaccard(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 6, "jaccard") < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const uint32_t *values; const int64_t *offsets, *left, *right; const uint8_t *full; double *out;
    int64_t nv, nsets, npairs;
    if (!(values = cur_arg(&B, args[0], 'u', 4, 0, "values", 0))) goto done;
    nv = cur_len(&B.v[0]);
    if (!(offsets = cur_arg(&B, args[1], 'i', 8, 0, "offsets", 1))) goto done;
    nsets = cur_len(&B.v[1]) - 1;
    if (!(full = cur_arg(&B, args[2], 'b', 1, 0, "full", nsets))) goto done;
    if (!(left = cur_arg(&B, args[3], 'i', 8, 0, "left", 0))) goto done;
    npairs = cur_len(&B.v[B.n - 1]);
    if (!(right = cur_arg(&B, args[4], 'i', 8, 0, "right", npairs))) goto done;
    if (!(out = cur_arg(&B, args[5], 'f', 8, 1, "out", npairs))) goto done;
    if (check_offsets(offsets, nsets, nv) < 0) goto done;
    for (int64_t p = 0; p < npairs; p++) {
        if (left[p] < 0 || left[p] >= nsets || right[p] < 0 || right[p] >= nsets) {
            PyErr_SetString(PyExc_IndexError, "pair index out of range");
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (int64_t p = 0; p < npairs; p++) {
        const int64_t a0 = offsets[left[p]], a1 = offsets[left[p] + 1];
        const int64_t b0 = offsets[right[p]], b1 = offsets[right[p] + 1];
        const int64_t na = a1 - a0, nb = b1 - b0;
        if (na == 0 || nb == 0) { out[p] = 0.0; continue; }
        const int exact = full[left[p]] && full[right[p]];
        const int64_t k = exact ? na + nb : (na < nb ? na : nb);
        int64_t i = a0, j = b0, seen = 0, inter = 0;
        while (seen < k && (i < a1 || j < b1)) {
            if (j >= b1 || (i < a1 && values[i] < values[j])) i++;
            else if (i >= a1 || values[j] < values[i]) j++;
            else { inter++; i++; j++; }
            seen++;
        }
        out[p] = exact ? (double)inter / (double)(na + nb - inter) : (double)inter / (double)seen;
    }
    Py_END_ALLOW_THREADS
    res = Py_NewRef(Py_None);
done:
    cur_release(&B);
    return res;
}

static inline int64_t find_root(int64_t *parent, int64_t x) {
    int64_t root = x;
    while (parent[root] != root) root = parent[root];
    while (parent[x] != root) { const int64_t nx = parent[x]; parent[x] = root; x = nx; }
    return root;
}

static int check_parent(const int64_t *parent, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (parent[i] < 0 || parent[i] >= n) {
            PyErr_SetString(PyExc_ValueError, "parent holds an index out of range");
            return -1;
        }
    }
    return 0;
}

/* union(parent, lo, hi) -> None: union-find in place; the larger root goes under the smaller. */
static PyObject *py_union(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 3, "union") < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    int64_t *parent; const int64_t *lo, *hi; int64_t n, m;
    if (!(parent = cur_arg(&B, args[0], 'i', 8, 1, "parent", 0))) goto done;
    n = cur_len(&B.v[0]);
    if (!(lo = cur_arg(&B, args[1], 'i', 8, 0, "lo", 0))) goto done;
    m = cur_len(&B.v[1]);
    if (!(hi = cur_arg(&B, args[2], 'i', 8, 0, "hi", m))) goto done;
    for (int64_t e = 0; e < m; e++) {
        if (lo[e] < 0 || lo[e] >= n || hi[e] < 0 || hi[e] >= n) {
            PyErr_SetString(PyExc_IndexError, "edge index out of range");
            goto done;
        }
    }
    if (check_parent(parent, n) < 0) goto done;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t e = 0; e < m; e++) {
        const int64_t ra = find_root(parent, lo[e]), rb = find_root(parent, hi[e]);
        if (ra < rb) parent[rb] = ra; else if (rb < ra) parent[ra] = rb;
    }
    Py_END_ALLOW_THREADS
    res = Py_NewRef(Py_None);
done:
    cur_release(&B);
    return res;
}

/* roots(parent) -> None: every entry becomes its root, in place. */
static PyObject *py_roots(PyObject *self, PyObject *arg) {
    (void)self;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    int64_t *parent, n;
    if (!(parent = cur_arg(&B, arg, 'i', 8, 1, "parent", 0))) goto done;
    n = cur_len(&B.v[0]);
    if (check_parent(parent, n) < 0) goto done;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t x = 0; x < n; x++) parent[x] = find_root(parent, x);
    Py_END_ALLOW_THREADS
    res = Py_NewRef(Py_None);
done:
    cur_release(&B);
    return res;
}

/* fnv_strings(data, offsets, out) -> None: FNV-1a 64 + fmix64 of each string. */
static PyObject *py_fnv_strings(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 3, "fnv_strings") < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const uint8_t *data; const int64_t *offsets; uint64_t *out; int64_t n;
    if (!(data = cur_arg(&B, args[0], 'b', 1, 0, "data", 0))) goto done;
    Py_ssize_t data_len = cur_len(&B.v[0]);
    if (!(offsets = cur_arg(&B, args[1], 'i', 8, 0, "offsets", 1))) goto done;
    n = cur_len(&B.v[1]) - 1;
    if (!(out = cur_arg(&B, args[2], 'u', 8, 1, "out", n))) goto done;
    if (check_offsets(offsets, n, data_len) < 0) goto done;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t d = 0; d < n; d++) {
        uint64_t h = FNV_OFFSET;
        for (int64_t i = offsets[d]; i < offsets[d + 1]; i++) h = (h ^ (uint64_t)data[i]) * FNV_PRIME;
        out[d] = fmix64(h);
    }
    Py_END_ALLOW_THREADS
    res = Py_NewRef(Py_None);
done:
    cur_release(&B);
    return res;
}

/* read_u32_ranges(fd, starts, ends, out) -> None: out = the uint32 values [starts[i], ends[i]) of
   the file, one after another (pread per range, GIL released): the shingle sets of the documents
   of one verification partition, without mapping the file. */
static PyObject *py_read_u32_ranges(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 4, "read_u32_ranges") < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    int64_t fd, n, cap;
    const int64_t *starts, *ends;
    uint32_t *out;
    if (cur_int(args[0], &fd, "fd") < 0) goto done;
    if (!(starts = cur_arg(&B, args[1], 'i', 8, 0, "starts", 0))) goto done;
    n = cur_len(&B.v[0]);
    if (!(ends = cur_arg(&B, args[2], 'i', 8, 0, "ends", n))) goto done;
    if (!(out = cur_arg(&B, args[3], 'u', 4, 1, "out", 0))) goto done;
    cap = cur_len(&B.v[2]);
    int64_t need = 0;
    for (int64_t i = 0; i < n; i++) {
        if (starts[i] < 0 || ends[i] < starts[i]) { PyErr_SetString(PyExc_ValueError, "bad range"); goto done; }
        need += ends[i] - starts[i];
    }
    if (need > cap) { PyErr_SetString(PyExc_ValueError, "out is too small"); goto done; }
    int err = 0, short_read = 0;
    Py_BEGIN_ALLOW_THREADS
    uint8_t *dst = (uint8_t *)out;
    for (int64_t i = 0; i < n && !err && !short_read; i++) {
        size_t left = (size_t)(ends[i] - starts[i]) * 4;
        off_t at = (off_t)starts[i] * 4;
        while (left) {
            const ssize_t r = pread((int)fd, dst, left, at);
            if (r < 0) { if (errno == EINTR) continue; err = errno; break; }
            if (r == 0) { short_read = 1; break; }
            dst += r; at += r; left -= (size_t)r;
        }
    }
    Py_END_ALLOW_THREADS
    if (err) { errno = err; PyErr_SetFromErrno(PyExc_OSError); goto done; }
    if (short_read) { PyErr_SetString(PyExc_EOFError, "the file ends before a range"); goto done; }
    res = Py_NewRef(Py_None);
done:
    cur_release(&B);
    return res;
}

static PyMethodDef METHODS[] = {
    {"signatures", (PyCFunction)(void (*)(void))py_signatures, METH_FASTCALL,
     "signatures(data, offsets, ngram, fold, a, b, bands, rows, keep_k, sep_lo, sep_hi, band_keys, counts, "
     "stored, stored_off, lower): band keys, distinct shingle counts and bottom-k stored shingles (outputs in place)."},
    {"signature_matrix", (PyCFunction)(void (*)(void))py_signature_matrix, METH_FASTCALL,
     "signature_matrix(data, offsets, ngram, fold, a, b, sep_lo, sep_hi, sig, counts, lower): full signatures."},
    {"shingle_hashes", (PyCFunction)(void (*)(void))py_shingle_hashes, METH_FASTCALL,
     "shingle_hashes(data, offsets, ngram, fold, sep_lo, sep_hi, out, out_off, lower): shingle hashes in text order."},
    {"bucket_pairs", (PyCFunction)(void (*)(void))py_bucket_pairs, METH_FASTCALL,
     "bucket_pairs(keys, pos, window, lo, hi) -> int: candidate pairs of (key, pos)-sorted rows."},
    {"jaccard", (PyCFunction)(void (*)(void))py_jaccard, METH_FASTCALL,
     "jaccard(values, offsets, full, left, right, out): Jaccard of stored shingle sets."},
    {"union", (PyCFunction)(void (*)(void))py_union, METH_FASTCALL, "union(parent, lo, hi): union-find, in place."},
    {"roots", (PyCFunction)py_roots, METH_O, "roots(parent): every entry becomes its root, in place."},
    {"fnv_strings", (PyCFunction)(void (*)(void))py_fnv_strings, METH_FASTCALL,
     "fnv_strings(data, offsets, out): FNV-1a 64 + fmix64 of each string."},
    {"read_u32_ranges", (PyCFunction)(void (*)(void))py_read_u32_ranges, METH_FASTCALL,
     "read_u32_ranges(fd, starts, ends, out): the uint32 values of each [start, end) of a file, concatenated."},
    CUR_PATH_METHODS
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_minhash", "MinHash dedup kernels (see kernels.py).", -1,
                                    METHODS, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__minhash(void) {
    init_tables();
    select_path(cur_best_path());
    PyObject *m = PyModule_Create(&MODULE);
    if (m && PyModule_AddIntConstant(m, "ABI", ABI_VERSION) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
