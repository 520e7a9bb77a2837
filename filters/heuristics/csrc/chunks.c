/* Text kernels of the heuristic filters: the CPython extension filters.heuristics._chunks.
 *
 * chunk_count / chunk_encode cut each text into its whitespace-separated chunks (runs of
 * characters outside Python's str.isspace set: Unicode White_Space plus U+001C..U+001F, the set
 * spaCy splits on) and number the distinct chunks in order of first appearance, in one pass over
 * the UTF-8 bytes with a hash table. filters/heuristics/words.py uses it in place of a regex
 * extraction, an explode and a categorical encoding (same output: the tests compare both).
 * Scalar code only: the work is a byte scan and hashing, and every path of the build would run
 * the same loop.
 *
 * token_counts counts, per text, the runs of characters outside Unicode White_Space (without
 * U+001C..U+001F): the regex \S+ of Polars/Rust, the release's n_tokens.
 *
 * ngram_scan computes Gopher's two n-gram statistics per document on word hashes (the most
 * frequent n-gram's characters, and the characters of n-grams repeating an earlier one, by
 * datatrove's left-to-right scan), in place of the NumPy/Polars bounds and the Python scan.
 */
#include "curate_native.h"
#include <stdlib.h>

#define ABI_VERSION 3

/* Bytes of the whitespace character at data[i] (0 when it is not whitespace). */
static inline int ws_len(const uint8_t *d, int64_t i, int64_t end) {
    const uint8_t c = d[i];
    if (c < 0x80) return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) ? 1 : 0;
    if (c == 0xC2 && i + 1 < end) return d[i + 1] == 0x85 || d[i + 1] == 0xA0 ? 2 : 0;
    if (c == 0xE1 && i + 2 < end) return d[i + 1] == 0x9A && d[i + 2] == 0x80 ? 3 : 0;
    if (c == 0xE2 && i + 2 < end) {
        if (d[i + 1] == 0x80) {
            const uint8_t e = d[i + 2];
            return (e >= 0x80 && e <= 0x8A) || e == 0xA8 || e == 0xA9 || e == 0xAF ? 3 : 0;
        }
        return d[i + 1] == 0x81 && d[i + 2] == 0x9F ? 3 : 0;
    }
    if (c == 0xE3 && i + 2 < end) return d[i + 1] == 0x80 && d[i + 2] == 0x80 ? 3 : 0;
    return 0;
}

/* Length of the UTF-8 sequence starting with c (continuation bytes are skipped one by one). */
static inline int seq_len(uint8_t c) { return c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

/* Calls emit(start, stop) for every chunk of data[s:e]. */
#define FOR_CHUNKS(data, s, e, BODY)                                                        \
    do {                                                                                    \
        int64_t i_ = (s), st_ = -1;                                                         \
        while (i_ < (e)) {                                                                  \
            const int w_ = ws_len((data), i_, (e));                                         \
            if (w_) {                                                                       \
                if (st_ >= 0) { const int64_t cs = st_, ce = i_; BODY; st_ = -1; }          \
                i_ += w_;                                                                   \
            } else {                                                                        \
                if (st_ < 0) st_ = i_;                                                      \
                int64_t l_ = seq_len((data)[i_]);                                           \
                i_ += l_ <= (e) - i_ ? l_ : 1;                                              \
            }                                                                               \
        }                                                                                   \
        if (st_ >= 0) { const int64_t cs = st_, ce = (e) < i_ ? (e) : i_; BODY; }           \
    } while (0)

static inline uint64_t hash_bytes(const uint8_t *p, int64_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
        p += 8; n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, p, (size_t)n);
    h = (h ^ v) * 0xC4CEB9FE1A85EC53ULL;
    return h ^ (h >> 29);
}

static int check_offsets(const int64_t *off, int64_t n, int64_t len) {
    for (int64_t i = 0; i < n; i++)
        if (off[i] < 0 || off[i + 1] < off[i]) { PyErr_SetString(PyExc_ValueError, "offsets must be non-decreasing"); return -1; }
    if (n >= 0 && off[n] > len) { PyErr_SetString(PyExc_ValueError, "offsets point past the end of data"); return -1; }
    return 0;
}

/* chunk_count(data, offsets) -> (chunks, chunk bytes) */
static PyObject *py_chunk_count(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 2, "chunk_count") < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const uint8_t *data; const int64_t *off; int64_t n;
    if (!(data = cur_arg(&B, args[0], 'b', 1, 0, "data", 0))) goto done;
    const int64_t len = cur_len(&B.v[0]);
    if (!(off = cur_arg(&B, args[1], 'i', 8, 0, "offsets", 1))) goto done;
    n = cur_len(&B.v[1]) - 1;
    if (check_offsets(off, n, len) < 0) goto done;
    int64_t chunks = 0, bytes = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t d = 0; d < n; d++) FOR_CHUNKS(data, off[d], off[d + 1], { chunks++; bytes += ce - cs; });
    Py_END_ALLOW_THREADS
    res = Py_BuildValue("(LL)", (long long)chunks, (long long)bytes);
done:
    cur_release(&B);
    return res;
}

/* chunk_encode(data, offsets, row_out, code_out, uniq_off_out, uniq_data_out) -> distinct count.
   row_out/code_out hold one entry per chunk (chunk_count), uniq_off_out chunks + 1, uniq_data_out
   the chunk bytes. Codes number distinct chunks in order of first appearance. */
static PyObject *py_chunk_encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 6, "chunk_encode") < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const uint8_t *data; const int64_t *off; int64_t n, *row, *code, *uoff; uint8_t *udata;
    if (!(data = cur_arg(&B, args[0], 'b', 1, 0, "data", 0))) goto done;
    const int64_t len = cur_len(&B.v[0]);
    if (!(off = cur_arg(&B, args[1], 'i', 8, 0, "offsets", 1))) goto done;
    n = cur_len(&B.v[1]) - 1;
    if (!(row = cur_arg(&B, args[2], 'i', 8, 1, "row", 0))) goto done;
    const int64_t cap = cur_len(&B.v[2]);
    if (!(code = cur_arg(&B, args[3], 'i', 8, 1, "code", cap))) goto done;
    if (!(uoff = cur_arg(&B, args[4], 'i', 8, 1, "uniq_off", cap + 1))) goto done;
    if (!(udata = cur_arg(&B, args[5], 'b', 1, 1, "uniq_data", 0))) goto done;
    const int64_t ucap = cur_len(&B.v[5]);
    if (check_offsets(off, n, len) < 0) goto done;
    /* Two passes. First the chunk boundaries; then each chunk's hash is looked up in a table
       that grows with the distinct chunks (load <= 1/2), with the slot of the chunk 16 places
       ahead prefetched: the table is larger than the caches once a batch has ~100k distinct
       chunks, and a lookup is otherwise one cache miss. A slot holds the code, 24 bits of the
       hash, the length, and the first 8 bytes, so a chunk of up to 8 bytes (most words) is
       matched without reading the distinct chunks' bytes. */
    typedef struct { uint64_t key8; uint32_t tag; int32_t code; } slot_t;
    int64_t slots = 1 << 12;
    slot_t *table = malloc(sizeof(slot_t) * (size_t)slots);
    uint64_t *uhash = malloc(sizeof(uint64_t) * (size_t)(cap + 1));
    int64_t *cstart = malloc(sizeof(int64_t) * (size_t)(cap + 1));
    uint64_t *chash = malloc(sizeof(uint64_t) * (size_t)(cap + 1));
    if (!table || !uhash || !cstart || !chash || cap >= (1LL << 31)) {
        free(table); free(uhash); free(cstart); free(chash); PyErr_NoMemory(); goto done;
    }
    int64_t m = 0, nu = 0, ub = 0, overflow = 0, oom = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t d = 0; d < n && !overflow; d++) {
        FOR_CHUNKS(data, off[d], off[d + 1], {
            if (m >= cap) { overflow = 1; break; }
            row[m] = d;
            cstart[m] = cs;
            code[m] = ce - cs; /* the length, for now */
            m++;
        });
    }
    for (int64_t q = 0; q < m; q++) chash[q] = hash_bytes(data + cstart[q], code[q]);
    for (int64_t q = 0; q < slots; q++) table[q].code = -1;
    uint64_t mask = (uint64_t)slots - 1;
    uoff[0] = 0;
    for (int64_t q = 0; q < m && !overflow && !oom; q++) {
        if (q + 16 < m) __builtin_prefetch(&table[chash[q + 16] & mask]);
        const int64_t cs = cstart[q], clen = code[q];
        const uint64_t h = chash[q];
        const uint32_t tag = (uint32_t)((h >> 40) << 8) | (uint32_t)(clen < 255 ? clen : 255);
        uint64_t key8 = 0;
        memcpy(&key8, data + cs, (size_t)(clen < 8 ? clen : 8));
        uint64_t s = h & mask;
        int64_t c;
        for (;;) {
            const slot_t e = table[s];
            if (e.code < 0) {
                if (ub + clen > ucap) { overflow = 1; break; }
                c = nu++;
                table[s] = (slot_t){key8, tag, (int32_t)c};
                uhash[c] = h;
                memcpy(udata + ub, data + cs, (size_t)clen);
                ub += clen;
                uoff[nu] = ub;
                if (2 * nu > slots) { /* grow and re-insert */
                    const int64_t ns = slots * 2;
                    slot_t *nt = malloc(sizeof(slot_t) * (size_t)ns);
                    if (!nt) { oom = 1; break; }
                    for (int64_t u = 0; u < ns; u++) nt[u].code = -1;
                    const uint64_t nm = (uint64_t)ns - 1;
                    for (int64_t u = 0; u < slots; u++) {
                        if (table[u].code < 0) continue;
                        uint64_t r = uhash[table[u].code] & nm;
                        while (nt[r].code >= 0) r = (r + 1) & nm;
                        nt[r] = table[u];
                    }
                    free(table);
                    table = nt; slots = ns; mask = nm;
                }
                break;
            }
            if (e.tag == tag && e.key8 == key8) {
                c = e.code;
                if (clen <= 8) break;
                if (uoff[c + 1] - uoff[c] == clen && memcmp(udata + uoff[c] + 8, data + cs + 8, (size_t)clen - 8) == 0) break;
            }
            s = (s + 1) & mask;
        }
        if (overflow || oom) break;
        code[q] = c;
    }
    Py_END_ALLOW_THREADS
    free(cstart); free(chash);
    free(uhash);
    free(table);
    if (oom) { PyErr_NoMemory(); goto done; }
    if (overflow) { PyErr_SetString(PyExc_ValueError, "output buffers too small (use chunk_count)"); goto done; }
    res = PyLong_FromLongLong(nu);
done:
    cur_release(&B);
    return res;
}

/* --- whitespace-separated tokens (the release's n_tokens) -------------------------------- */

/* ASCII White_Space: \t \n \v \f \r and space (U+001C..U+001F are not White_Space). */
static const uint8_t ASCII_WS[128] = {['\t'] = 1, ['\n'] = 1, ['\v'] = 1, ['\f'] = 1, ['\r'] = 1, [' '] = 1};

/* token_counts(data, offsets, out): out[d] = runs of non-White_Space characters in text d. One
   pass over the bytes; continuation bytes belong to the character their lead byte started. */
static PyObject *py_token_counts(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 3, "token_counts") < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const uint8_t *data; const int64_t *off; int64_t n, *out;
    if (!(data = cur_arg(&B, args[0], 'b', 1, 0, "data", 0))) goto done;
    const int64_t len = cur_len(&B.v[0]);
    if (!(off = cur_arg(&B, args[1], 'i', 8, 0, "offsets", 1))) goto done;
    n = cur_len(&B.v[1]) - 1;
    if (!(out = cur_arg(&B, args[2], 'i', 8, 1, "out", n))) goto done;
    if (check_offsets(off, n, len) < 0) goto done;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t d = 0; d < n; d++) {
        int64_t i = off[d], t = 0;
        const int64_t e = off[d + 1];
        int in = 0;
        while (i < e) {
            const uint8_t c = data[i];
            if (c < 0x80) {
                const int sp = ASCII_WS[c];
                t += !sp & !in;
                in = !sp;
                i++;
                continue;
            }
            /* Only C2 (U+0085, U+00A0), E1 (U+1680), E2 (U+2000..U+205F) and E3 (U+3000) start
               non-ASCII White_Space; any other byte is part of a token. */
            const int w = (c == 0xC2 || (c >= 0xE1 && c <= 0xE3)) ? ws_len(data, i, e) : 0;
            if (w) {
                in = 0;
                i += w;
            } else {
                t += !in;
                in = 1;
                i++;
            }
        }
        out[d] = t;
    }
    Py_END_ALLOW_THREADS
    res = Py_NewRef(Py_None);
done:
    cur_release(&B);
    return res;
}

/* --- duplicated lines and paragraphs (Gopher repetition) ----------------------------------- */

/* Bytes of the whitespace character that ends at data[e - 1] (0 when it is not whitespace). */
static inline int ws_len_back(const uint8_t *d, int64_t s, int64_t e) {
    int64_t i = e - 1;
    while (i > s && (d[i] & 0xC0) == 0x80 && e - i < 4) i--;
    const int w = ws_len(d, i, e);
    return w == e - i ? w : 0;
}

static inline int64_t n_chars(const uint8_t *p, int64_t n) {
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) c += (p[i] & 0xC0) != 0x80;
    return c;
}

typedef struct { uint64_t h; int64_t start, len; } item_t;

/* Items of data[s:e]: mode 0, runs without "\n" (lines); mode 1, after stripping whitespace
   from both ends, runs separated by two or more "\n" (paragraphs). For each: the count, the
   items equal to an earlier item, and their characters. */
static void dup_doc(const uint8_t *d, int64_t s, int64_t e, int mode, item_t *items, int64_t *table, int64_t tcap,
                    int64_t *n_out, int64_t *dup_out, int64_t *chars_out) {
    if (mode == 1) {
        int w;
        while (s < e && (w = ws_len(d, s, e)) > 0) s += w;
        while (e > s && (w = ws_len_back(d, s, e)) > 0) e -= w;
    }
    int64_t n = 0, i = s;
    while (i < e) {
        int64_t j = i;
        if (mode == 0) {
            while (j < e && d[j] != '\n') j++;
        } else {
            for (;;) { /* a paragraph ends before "\n\n" or at the end */
                while (j < e && d[j] != '\n') j++;
                if (j >= e || (j + 1 < e && d[j + 1] == '\n') || j + 1 >= e) break;
                j++;
            }
        }
        if (j > i) { items[n].start = i; items[n].len = j - i; n++; }
        i = j;
        while (i < e && d[i] == '\n') i++;
    }
    int64_t slots = 16;
    while (slots < 2 * n) slots <<= 1;
    if (slots > tcap) slots = tcap; /* tcap >= 2 n by construction */
    for (int64_t q = 0; q < slots; q++) table[q] = -1;
    const uint64_t mask = (uint64_t)slots - 1;
    int64_t dup = 0, chars = 0;
    for (int64_t k = 0; k < n; k++) {
        const uint8_t *p = d + items[k].start;
        const int64_t len = items[k].len;
        const uint64_t h = hash_bytes(p, len);
        items[k].h = h;
        uint64_t q = h & mask;
        for (;;) {
            const int64_t t = table[q];
            if (t < 0) { table[q] = k; break; }
            if (items[t].h == h && items[t].len == len && memcmp(d + items[t].start, p, (size_t)len) == 0) {
                dup++;
                chars += n_chars(p, len);
                break;
            }
            q = (q + 1) & mask;
        }
    }
    *n_out = n; *dup_out = dup; *chars_out = chars;
}

/* dup_stats(data, offsets, mode, n_items, dup_items, dup_chars) -> None (mode 0 lines, 1 paragraphs) */
static PyObject *py_dup_stats(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 6, "dup_stats") < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const uint8_t *data; const int64_t *off; int64_t n, mode, *n_items, *dup_items, *dup_chars;
    if (!(data = cur_arg(&B, args[0], 'b', 1, 0, "data", 0))) goto done;
    const int64_t len = cur_len(&B.v[0]);
    if (!(off = cur_arg(&B, args[1], 'i', 8, 0, "offsets", 1))) goto done;
    n = cur_len(&B.v[1]) - 1;
    if (cur_int(args[2], &mode, "mode") < 0) goto done;
    if (!(n_items = cur_arg(&B, args[3], 'i', 8, 1, "n_items", n))) goto done;
    if (!(dup_items = cur_arg(&B, args[4], 'i', 8, 1, "dup_items", n))) goto done;
    if (!(dup_chars = cur_arg(&B, args[5], 'i', 8, 1, "dup_chars", n))) goto done;
    if (check_offsets(off, n, len) < 0) goto done;
    int64_t longest = 0;
    for (int64_t d = 0; d < n; d++) longest = off[d + 1] - off[d] > longest ? off[d + 1] - off[d] : longest;
    const int64_t max_items = longest / 2 + 2, tcap = 4 * max_items + 16;
    item_t *items = malloc(sizeof(item_t) * (size_t)max_items);
    int64_t *table = malloc(sizeof(int64_t) * (size_t)tcap);
    if (!items || !table) { free(items); free(table); PyErr_NoMemory(); goto done; }
    Py_BEGIN_ALLOW_THREADS
    for (int64_t d = 0; d < n; d++)
        dup_doc(data, off[d], off[d + 1], (int)mode, items, table, tcap, &n_items[d], &dup_items[d], &dup_chars[d]);
    Py_END_ALLOW_THREADS
    free(items); free(table);
    res = Py_NewRef(Py_None);
done:
    cur_release(&B);
    return res;
}

/* --- n-grams of words (Gopher repetition) -------------------------------------------------- */

/* Open-addressing set/map of 64-bit n-gram hashes: key, count, first position. */
typedef struct { uint64_t key; int64_t count, first; } gram_t;

static inline int64_t gram_slot(gram_t *t, uint64_t mask, uint64_t key, int64_t *used) {
    uint64_t s = (key ^ (key >> 29)) * 0xBF58476D1CE4E5B9ULL;
    s = (s ^ (s >> 32)) & mask;
    for (;;) {
        if (used[s] == 0) return -(int64_t)s - 1; /* empty: -(slot) - 1 */
        if (t[s].key == key) return (int64_t)s;
        s = (s + 1) & mask;
    }
}

/* ngram_scan(h, chars, starts, ends, k, mode, out): for each document d, its words are
   h[starts[d]:ends[d]] (64-bit word hashes) with chars[] their lengths in characters. An n-gram
   of k words is identified by the polynomial hash sum(h[i + j] * K^(k-1-j)) (mod 2^64).
   mode 0: out[d] = count x (characters + k - 1) of the most frequent k-gram, the earliest first
   occurrence winning a tie (Counter.most_common); 0 without a k-gram.
   mode 1: out[d] = characters (words joined without spaces) of the k-grams met again in
   datatrove's scan: left to right, a k-gram already seen adds its characters and jumps k words,
   any other is marked seen and the scan moves one word. */
static PyObject *py_ngram_scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 7, "ngram_scan") < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const uint64_t *h; const int64_t *chars, *starts, *ends; int64_t *out, k, mode, n, m;
    if (!(h = cur_arg(&B, args[0], 'u', 8, 0, "h", 0))) goto done;
    n = cur_len(&B.v[0]);
    if (!(chars = cur_arg(&B, args[1], 'i', 8, 0, "chars", n))) goto done;
    if (!(starts = cur_arg(&B, args[2], 'i', 8, 0, "starts", 0))) goto done;
    m = cur_len(&B.v[2]);
    if (!(ends = cur_arg(&B, args[3], 'i', 8, 0, "ends", m))) goto done;
    if (cur_int(args[4], &k, "k") < 0 || cur_int(args[5], &mode, "mode") < 0) goto done;
    if (!(out = cur_arg(&B, args[6], 'i', 8, 1, "out", m))) goto done;
    if (k < 1) { PyErr_SetString(PyExc_ValueError, "k must be >= 1"); goto done; }
    int64_t longest = 0;
    for (int64_t d = 0; d < m; d++) {
        if (starts[d] < 0 || ends[d] < starts[d] || ends[d] > n) {
            PyErr_SetString(PyExc_ValueError, "document word ranges must lie inside h"); goto done;
        }
        if (ends[d] - starts[d] > longest) longest = ends[d] - starts[d];
    }
    int64_t cap = 16;
    while (cap < 2 * longest) cap <<= 1;
    gram_t *table = malloc(sizeof(gram_t) * (size_t)cap);
    int64_t *used = calloc((size_t)cap, sizeof(int64_t));
    uint64_t *gh = malloc(sizeof(uint64_t) * (size_t)(longest + 1));
    int64_t *gc = malloc(sizeof(int64_t) * (size_t)(longest + 1));
    if (!table || !used || !gh || !gc) { free(table); free(used); free(gh); free(gc); PyErr_NoMemory(); goto done; }
    const uint64_t K = 0x9E3779B97F4A7C15ULL;
    uint64_t Kk1 = 1; /* K^(k-1) */
    for (int64_t j = 1; j < k; j++) Kk1 *= K;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t d = 0; d < m; d++) {
        const int64_t s = starts[d], w = ends[d] - s, g = w - k + 1;
        out[d] = 0;
        if (g <= 0) continue;
        /* the k-grams' hashes and characters, rolling */
        uint64_t H = 0; int64_t C = 0;
        for (int64_t j = 0; j < k; j++) { H = H * K + h[s + j]; C += chars[s + j]; }
        for (int64_t i = 0; i < g; i++) {
            gh[i] = H; gc[i] = C;
            if (i + 1 < g) {
                H = (H - h[s + i] * Kk1) * K + h[s + i + k];
                C += chars[s + i + k] - chars[s + i];
            }
        }
        int64_t slots = 16;
        while (slots < 2 * g) slots <<= 1;
        const uint64_t mask = (uint64_t)slots - 1;
        if (mode == 0) {
            for (int64_t i = 0; i < g; i++) {
                int64_t q = gram_slot(table, mask, gh[i], used);
                if (q < 0) { q = -q - 1; used[q] = 1; table[q] = (gram_t){gh[i], 0, i}; }
                table[q].count++;
            }
            int64_t best = 0, best_len = 0;
            for (int64_t i = 0; i < g; i++) { /* first occurrences in order: the earliest wins a tie */
                const int64_t q = gram_slot(table, mask, gh[i], used);
                if (table[q].first == i && table[q].count > best) { best = table[q].count; best_len = gc[i] + k - 1; }
            }
            out[d] = best * best_len;
        } else {
            int64_t total = 0, i = 0;
            while (i < g) {
                int64_t q = gram_slot(table, mask, gh[i], used);
                if (q >= 0) { total += gc[i]; i += k; }
                else { q = -q - 1; used[q] = 1; table[q].key = gh[i]; i++; }
            }
            out[d] = total;
        }
        memset(used, 0, sizeof(int64_t) * (size_t)slots);
    }
    Py_END_ALLOW_THREADS
    free(table); free(used); free(gh); free(gc);
    res = Py_NewRef(Py_None);
done:
    cur_release(&B);
    return res;
}

static PyMethodDef METHODS[] = {
    {"chunk_count", (PyCFunction)(void (*)(void))py_chunk_count, METH_FASTCALL,
     "chunk_count(data, offsets) -> (chunks, bytes): whitespace-separated chunks of the texts."},
    {"chunk_encode", (PyCFunction)(void (*)(void))py_chunk_encode, METH_FASTCALL,
     "chunk_encode(data, offsets, row, code, uniq_off, uniq_data) -> distinct chunks (numbered by first appearance)."},
    {"token_counts", (PyCFunction)(void (*)(void))py_token_counts, METH_FASTCALL,
     "token_counts(data, offsets, out): per text, runs of non-White_Space characters (regex \\S+)"},
    {"dup_stats", (PyCFunction)(void (*)(void))py_dup_stats, METH_FASTCALL,
     "dup_stats(data, offsets, mode, n_items, dup_items, dup_chars): lines (0) or paragraphs (1) equal to an "
     "earlier one of the same text."},
    {"ngram_scan", (PyCFunction)(void (*)(void))py_ngram_scan, METH_FASTCALL,
     "ngram_scan(h, chars, starts, ends, k, mode, out): per document, the most frequent k-gram's characters x count "
     "(mode 0) or the characters of repeated k-grams by datatrove's scan (mode 1)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_chunks", "Text kernels of the heuristic filters.", -1,
                                    METHODS, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__chunks(void) {
    PyObject *m = PyModule_Create(&MODULE);
    if (m && PyModule_AddIntConstant(m, "ABI", ABI_VERSION) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
