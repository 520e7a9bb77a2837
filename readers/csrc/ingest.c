/* Kernels of the ingest stage (wrapped by readers/kernels.py).
 *
 * 1. Line scanning for the JSON Lines reader (readers/jsonl.py): one memchr pass over a block.
 *
 * line_scan(block) -> (newlines, lines, longest, simple, utf8)
 *   newlines: number of 0x0A bytes in the block;
 *   lines:    number of lines (a last line without a newline counts when it is not empty);
 *   longest:  bytes of the longest line, newline excluded;
 *   simple:   1 when there are lines and every one (the unterminated last one included) starts with '{', so none is
 *             blank and none starts with a byte order mark: line i is row i, and the reader can
 *             skip its per-line bookkeeping. 0 otherwise (the caller takes its general path);
 *   utf8:     1 when the whole block is valid UTF-8 (RFC 3629: no overlong forms, no surrogates,
 *             nothing above U+10FFFF; what Python's and Arrow's validators accept), checked line by
 *             line while the line is in cache (a newline is ASCII, so no valid sequence spans one).
 *
 * memchr is the C library's vectorised byte search (AVX2/AVX-512 in glibc, NEON on aarch64). The
 * UTF-8 check has two paths (paths()/set_path(), chosen at import like the other kernels): AVX2,
 * the lookup-table method of Keiser and Lemire ("Validating UTF-8 in less than one instruction
 * per byte", 2021) over the whole block, 32 bytes a step; and scalar (any CPU, and the "avx512"
 * path uses AVX2 here), a byte-wise check that skips ASCII 16 bytes at a time, line by line while
 * the line is in cache. Both accept exactly the same blocks. The GIL is released during the scan.
 *
 * utf8_valid(data) -> whether a bytes-like object is valid UTF-8 (the same check), for string
 *   columns whose data buffer is checked as a whole (readers/kernels.py: strings_valid).
 *
 * 2. URL hosts for the lake's ``domain`` column (readers/ingest.py):
 *
 * url_hosts(data, offsets, valid, out, out_offsets, state) -> rows needing the general path
 *   For each URL data[offsets[i]:offsets[i + 1]] (valid[i] = 0: null), the host as the pattern
 *   ^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/:?#]+) captures it (leftmost-first, as Polars'
 *   and Python's regex engines match it), ASCII letters lower-cased, appended to out with
 *   out_offsets[i + 1] its end. state[i]: 0 no match or null, 1 host written, 2 the host holds a
 *   non-ASCII byte (Unicode lower-casing: the caller computes those rows; nothing is written).
 *
 * 3. JSON string literals for the lake's ``meta`` column (readers/ingest.py):
 *
 * json_strings(data, offsets, valid, out, out_offsets) -> bytes needed
 *   Each string as a JSON string literal, escaped as serde_json and Polars' json_encode escape it
 *   (and Python's json.dumps with ensure_ascii=False): '"' and '\\' with a backslash, \b \f \n \r \t,
 *   other bytes below 0x20 as \u00xx (lower-case hex), everything else as it is; a null as
 *   ``null``. With out=None only out_offsets is filled (the sizes), so the caller can allocate.
 *
 * 4. Document ids (readers/ingest.py): the first 32 hex digits of sha256(prefix + key) for every
 *    key of a string column, with the x86 SHA extensions (SHA-NI: Goldmont, Ice Lake and later
 *    Intel, every AMD Zen). has_sha() says whether this CPU has them; without them the caller
 *    hashes with hashlib (OpenSSL), which is as fast per byte but pays Python's per-row cost.
 */
#define CUR_DISPATCH 1
#include "curate_native.h"

#define ABI_VERSION 2

/* Whether s[0:n] is valid UTF-8 (RFC 3629). ASCII runs are skipped 16 bytes at a time. */
static int utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {  /* an ASCII run: whole 16-byte steps, then byte by byte to its end */
            for (uint64_t a, b; i + 16 <= n; i += 16) {
                memcpy(&a, s + i, 8);
                memcpy(&b, s + i + 8, 8);
                if ((a | b) & 0x8080808080808080ULL) break;
            }
            while (i < n && s[i] < 0x80) i++;
            continue;
        }
        const uint8_t c = s[i];
        if (c < 0xC2 || c > 0xF4) return 0;  /* a continuation byte, an overlong lead (C0, C1), or > U+10FFFF */
        if (c < 0xE0) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) return 0;
            i += 2;
        } else if (c < 0xF0) {
            if (i + 2 >= n) return 0;
            const uint8_t c1 = s[i + 1];
            if ((c1 & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80) return 0;
            if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F)) return 0;  /* overlong; surrogate */
            i += 3;
        } else {
            if (i + 3 >= n) return 0;
            const uint8_t c1 = s[i + 1];
            if ((c1 & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 || (s[i + 3] & 0xC0) != 0x80) return 0;
            if ((c == 0xF0 && c1 < 0x90) || (c == 0xF4 && c1 > 0x8F)) return 0;  /* overlong; > U+10FFFF */
            i += 4;
        }
    }
    return 1;
}

/* --- UTF-8 with AVX2 (Keiser & Lemire's lookup method) ---------------------------------------- */

#if CUR_X86
CUR_TARGET_AVX2_BEGIN
/* The byte n positions before each byte of cur (prev: the 32 bytes before cur). */
#define PREV(cur, prev, n) _mm256_alignr_epi8((cur), _mm256_permute2x128_si256((prev), (cur), 0x21), 16 - (n))

static inline __m256i lookup16(__m256i idx, const int8_t t[16]) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t));
    return _mm256_shuffle_epi8(table, idx);
}

/* Error bits for each byte given the byte before it (prev1): every two-byte pattern that cannot
   occur in UTF-8, except where a third or fourth byte of a sequence is expected (checked apart). */
#define TOO_SHORT (1 << 0)   /* 11______ 0_______ or 11______ 11______ */
#define TOO_LONG (1 << 1)    /* 0_______ 10______ */
#define OVERLONG_3 (1 << 2)  /* 11100000 100_____ */
#define TOO_LARGE (1 << 3)   /* 11110100 1001____, 11110100 101_____, 11110101+ 1001____ / 101_____ */
#define SURROGATE (1 << 4)   /* 11101101 101_____ */
#define OVERLONG_2 (1 << 5)  /* 1100000_ 10______ */
#define TOO_LARGE_1000 (1 << 6) /* 11110101+ 1000____ */
#define OVERLONG_4 (1 << 6)  /* 11110000 1000____ */
#define TWO_CONTS (1 << 7)   /* 10______ 10______ */
#define CARRY (TOO_SHORT | TOO_LONG | TWO_CONTS)

static const int8_t BYTE_1_HIGH[16] = {
    TOO_LONG, TOO_LONG, TOO_LONG, TOO_LONG, TOO_LONG, TOO_LONG, TOO_LONG, TOO_LONG,
    (int8_t)TWO_CONTS, (int8_t)TWO_CONTS, (int8_t)TWO_CONTS, (int8_t)TWO_CONTS,
    TOO_SHORT | OVERLONG_2, TOO_SHORT, TOO_SHORT | OVERLONG_3 | SURROGATE,
    TOO_SHORT | TOO_LARGE | TOO_LARGE_1000 | OVERLONG_4};
static const int8_t BYTE_1_LOW[16] = {
    (int8_t)(CARRY | OVERLONG_3 | OVERLONG_2 | OVERLONG_4), (int8_t)(CARRY | OVERLONG_2), (int8_t)CARRY, (int8_t)CARRY,
    (int8_t)(CARRY | TOO_LARGE), (int8_t)(CARRY | TOO_LARGE | TOO_LARGE_1000), (int8_t)(CARRY | TOO_LARGE | TOO_LARGE_1000),
    (int8_t)(CARRY | TOO_LARGE | TOO_LARGE_1000), (int8_t)(CARRY | TOO_LARGE | TOO_LARGE_1000),
    (int8_t)(CARRY | TOO_LARGE | TOO_LARGE_1000), (int8_t)(CARRY | TOO_LARGE | TOO_LARGE_1000),
    (int8_t)(CARRY | TOO_LARGE | TOO_LARGE_1000), (int8_t)(CARRY | TOO_LARGE | TOO_LARGE_1000),
    (int8_t)(CARRY | TOO_LARGE | TOO_LARGE_1000 | SURROGATE), (int8_t)(CARRY | TOO_LARGE | TOO_LARGE_1000),
    (int8_t)(CARRY | TOO_LARGE | TOO_LARGE_1000)};
static const int8_t BYTE_2_HIGH[16] = {
    TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT,
    (int8_t)(TOO_LONG | OVERLONG_2 | TWO_CONTS | OVERLONG_3 | TOO_LARGE_1000 | OVERLONG_4),
    (int8_t)(TOO_LONG | OVERLONG_2 | TWO_CONTS | OVERLONG_3 | TOO_LARGE),
    (int8_t)(TOO_LONG | OVERLONG_2 | TWO_CONTS | SURROGATE | TOO_LARGE),
    (int8_t)(TOO_LONG | OVERLONG_2 | TWO_CONTS | SURROGATE | TOO_LARGE),
    TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT};

static inline __m256i utf8_block_errors(__m256i in, __m256i prev_in) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i prev1 = PREV(in, prev_in, 1);
    const __m256i b1h = lookup16(_mm256_and_si256(_mm256_srli_epi16(prev1, 4), low4), BYTE_1_HIGH);
    const __m256i b1l = lookup16(_mm256_and_si256(prev1, low4), BYTE_1_LOW);
    const __m256i b2h = lookup16(_mm256_and_si256(_mm256_srli_epi16(in, 4), low4), BYTE_2_HIGH);
    const __m256i special = _mm256_and_si256(_mm256_and_si256(b1h, b1l), b2h);
    /* a third or fourth byte of a sequence must be a continuation: exactly where TWO_CONTS says */
    const __m256i prev2 = PREV(in, prev_in, 2), prev3 = PREV(in, prev_in, 3);
    const __m256i third = _mm256_subs_epu8(prev2, _mm256_set1_epi8((char)(0xE0 - 0x80)));
    const __m256i fourth = _mm256_subs_epu8(prev3, _mm256_set1_epi8((char)(0xF0 - 0x80)));
    const __m256i must23 = _mm256_and_si256(_mm256_or_si256(third, fourth), _mm256_set1_epi8((char)0x80));
    return _mm256_xor_si256(must23, special);
}

/* Bytes of the last three that start a sequence the block does not finish. */
static inline __m256i utf8_incomplete(__m256i in) {
    const __m256i max = _mm256_setr_epi8(-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                         -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                         (char)(0xF0 - 1), (char)(0xE0 - 1), (char)(0xC0 - 1));
    return _mm256_subs_epu8(in, max);
}

static int utf8_valid_avx2(const uint8_t *s, size_t n) {
    __m256i error = _mm256_setzero_si256(), prev_in = _mm256_setzero_si256(), prev_incomplete = _mm256_setzero_si256();
    size_t i = 0;
    uint8_t last[32];
    for (;;) {
        __m256i in;
        if (i + 32 <= n) {
            in = _mm256_loadu_si256((const __m256i *)(s + i));
        } else if (i < n) {  /* the tail, padded with ASCII */
            memset(last, 0x20, sizeof last);
            memcpy(last, s + i, n - i);
            in = _mm256_loadu_si256((const __m256i *)last);
        } else {
            break;
        }
        if (_mm256_movemask_epi8(in) == 0) {
            error = _mm256_or_si256(error, prev_incomplete);  /* ASCII cannot finish a sequence */
            prev_incomplete = _mm256_setzero_si256();
        } else {
            error = _mm256_or_si256(error, utf8_block_errors(in, prev_in));
            prev_incomplete = utf8_incomplete(in);
            prev_in = in;
        }
        i += 32;
        if ((i & 4095) == 0 && !_mm256_testz_si256(error, error)) return 0;
    }
    error = _mm256_or_si256(error, prev_incomplete);
    return _mm256_testz_si256(error, error);
}
CUR_TARGET_END
#endif

static int use_avx2 = 0;

static void cur_select(int path) { use_avx2 = CUR_X86 && path >= CUR_PATH_AVX2; }
static int cur_current(void) { return use_avx2 ? CUR_PATH_AVX2 : CUR_PATH_GENERIC; }

static int utf8_check(const uint8_t *s, size_t n) {
#if CUR_X86
    if (use_avx2) return utf8_valid_avx2(s, n);
#endif
    return utf8_valid(s, n);
}

static PyObject *py_utf8_valid(PyObject *self, PyObject *data) {
    (void)self;
    Py_buffer v;
    if (PyObject_GetBuffer(data, &v, PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "utf8_valid takes a contiguous bytes-like object");
        return NULL;
    }
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = utf8_check((const uint8_t *)v.buf, (size_t)v.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v);
    return PyBool_FromLong(ok);
}

static PyObject *py_line_scan(PyObject *self, PyObject *block) {
    (void)self;
    Py_buffer v;
    if (PyObject_GetBuffer(block, &v, PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "line_scan takes a contiguous bytes-like block");
        return NULL;
    }
    const uint8_t *data = (const uint8_t *)v.buf;
    const Py_ssize_t len = v.len;
    int64_t newlines = 0, lines = 0, longest = 0;
    int simple = 1, utf8 = 1;
    Py_BEGIN_ALLOW_THREADS
    /* per line (in cache) for the scalar check; the AVX2 check reads the block once after the scan */
    const int per_line = !use_avx2;
    Py_ssize_t start = 0;
    while (start < len) {
        const uint8_t *nl = memchr(data + start, '\n', (size_t)(len - start));
        const Py_ssize_t end = nl ? (Py_ssize_t)(nl - data) : len;
        const int64_t n = (int64_t)(end - start);
        if (n > longest) longest = n;
        if (n == 0 || data[start] != '{') simple = 0;
        if (per_line && utf8 && !utf8_valid(data + start, (size_t)n)) utf8 = 0;
        lines += n > 0 || nl != NULL;  /* blank lines are lines too; only an empty tail is not */
        if (!nl) break;
        newlines++;
        start = end + 1;
    }
    if (!per_line) utf8 = utf8_check(data, (size_t)len);  /* a newline is ASCII: the block is valid iff every line is */
    Py_END_ALLOW_THREADS
    if (lines == 0) simple = 0;  /* nothing to parse: the general path returns at once */
    PyBuffer_Release(&v);
    return Py_BuildValue("(LLLii)", (long long)newlines, (long long)lines, (long long)longest, simple, utf8);
}

/* --- URL hosts ------------------------------------------------------------------------------ */

static inline int is_alpha(uint8_t c) { return (uint8_t)((c | 0x20) - 'a') < 26; }
static inline int is_scheme(uint8_t c) {
    return is_alpha(c) || (uint8_t)(c - '0') < 10 || c == '+' || c == '.' || c == '-';
}
static inline int ends_user(uint8_t c) { return c == '@' || c == '/' || c == '?' || c == '#'; }
static inline int ends_host(uint8_t c) { return c == '/' || c == ':' || c == '?' || c == '#'; }

/* The host of u[0:n] as [*h, *h + *hn), or 0 when the pattern does not match. */
static int url_host(const uint8_t *u, int64_t n, int64_t *h, int64_t *hn) {
    if (n < 1 || !is_alpha(u[0])) return 0;
    int64_t i = 1;
    while (i < n && is_scheme(u[i])) i++;
    if (n - i < 3 || u[i] != ':' || u[i + 1] != '/' || u[i + 2] != '/') return 0;
    const int64_t p = i + 3;
    int64_t q = p;
    while (q < n && !ends_user(u[q])) q++;
    if (q < n && u[q] == '@') {  /* user info, taken when a non-empty host follows it */
        int64_t e = q + 1;
        while (e < n && !ends_host(u[e])) e++;
        if (e > q + 1) { *h = q + 1; *hn = e - q - 1; return 1; }
    }
    int64_t e = p;  /* no user info: the host runs to the first of / : ? # ("@" included) */
    while (e < n && !ends_host(u[e])) e++;
    if (e == p) return 0;
    *h = p;
    *hn = e - p;
    return 1;
}

static PyObject *py_url_hosts(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 6, "url_hosts") < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const uint8_t *data, *valid; const int64_t *off; uint8_t *out, *state; int64_t *out_off;
    if (!(data = cur_arg(&B, args[0], 'b', 1, 0, "data", 0))) goto done;
    const int64_t len = cur_len(&B.v[0]);
    if (!(off = cur_arg(&B, args[1], 'i', 8, 0, "offsets", 1))) goto done;
    const int64_t n = cur_len(&B.v[1]) - 1;
    if (!(valid = cur_arg(&B, args[2], 'b', 1, 0, "valid", n))) goto done;
    if (!(out = cur_arg(&B, args[3], 'b', 1, 1, "out", 0))) goto done;
    const int64_t cap = cur_len(&B.v[3]);
    if (!(out_off = cur_arg(&B, args[4], 'i', 8, 1, "out_offsets", n + 1))) goto done;
    if (!(state = cur_arg(&B, args[5], 'b', 1, 1, "state", n))) goto done;
    for (int64_t i = 0; i < n; i++)
        if (off[i] < 0 || off[i] > off[i + 1] || off[i + 1] > len) {
            PyErr_SetString(PyExc_ValueError, "offsets must be non-decreasing and within data");
            goto done;
        }
    if (n > 0 && off[n] - off[0] > cap) {  /* a host is never longer than its URL */
        PyErr_SetString(PyExc_ValueError, "out is smaller than the URLs");
        goto done;
    }
    int64_t general = 0;
    Py_BEGIN_ALLOW_THREADS
    int64_t w = 0;
    out_off[0] = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t h, hn;
        uint8_t st = 0;
        if (valid[i] && url_host(data + off[i], off[i + 1] - off[i], &h, &hn)) {
            const uint8_t *src = data + off[i] + h;
            uint8_t high = 0;
            for (int64_t k = 0; k < hn; k++) {
                const uint8_t c = src[k];
                high |= c;
                out[w + k] = (uint8_t)((uint8_t)(c - 'A') < 26 ? c | 0x20 : c);
            }
            if (high & 0x80) { st = 2; general++; } else { st = 1; w += hn; }
        }
        state[i] = st;
        out_off[i + 1] = w;
    }
    Py_END_ALLOW_THREADS
    res = PyLong_FromLongLong((long long)general);
done:
    cur_release(&B);
    return res;
}

/* --- JSON string literals ----------------------------------------------------------------- */

/* Escaped size of each byte: 1 as it is, 2 for a short escape, 6 for \u00xx. */
static uint8_t JSON_SIZE[256];
static char JSON_SHORT[256];

static void json_tables(void) {
    for (int c = 0; c < 256; c++) { JSON_SIZE[c] = c < 0x20 ? 6 : 1; JSON_SHORT[c] = 0; }
    const char *from = "\"\\\b\f\n\r\t", *to = "\"\\bfnrt";
    for (int i = 0; from[i]; i++) { JSON_SIZE[(uint8_t)from[i]] = 2; JSON_SHORT[(uint8_t)from[i]] = to[i]; }
}

static PyObject *py_json_strings(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 5, "json_strings") < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const uint8_t *data, *valid; const int64_t *off; uint8_t *out = NULL; int64_t *out_off;
    if (!(data = cur_arg(&B, args[0], 'b', 1, 0, "data", 0))) goto done;
    const int64_t len = cur_len(&B.v[0]);
    if (!(off = cur_arg(&B, args[1], 'i', 8, 0, "offsets", 1))) goto done;
    const int64_t n = cur_len(&B.v[1]) - 1;
    if (!(valid = cur_arg(&B, args[2], 'b', 1, 0, "valid", n))) goto done;
    int64_t cap = 0;
    if (args[3] != Py_None) {
        if (!(out = cur_arg(&B, args[3], 'b', 1, 1, "out", 0))) goto done;
        cap = cur_len(&B.v[B.n - 1]);
    }
    if (!(out_off = cur_arg(&B, args[4], 'i', 8, 1, "out_offsets", n + 1))) goto done;
    for (int64_t i = 0; i < n; i++)
        if (off[i] < 0 || off[i] > off[i + 1] || off[i + 1] > len) {
            PyErr_SetString(PyExc_ValueError, "offsets must be non-decreasing and within data");
            goto done;
        }
    int64_t w = 0;
    out_off[0] = 0;
    if (!out) {
        Py_BEGIN_ALLOW_THREADS
        for (int64_t i = 0; i < n; i++) {
            int64_t size = 4;  /* null */
            if (valid[i]) {
                size = 2;
                for (int64_t k = off[i]; k < off[i + 1]; k++) size += JSON_SIZE[data[k]];
            }
            w += size;
            out_off[i + 1] = w;
        }
        Py_END_ALLOW_THREADS
        res = PyLong_FromLongLong((long long)w);
        goto done;
    }
    /* out_offsets holds the sizes from the first call; check them against out before writing */
    for (int64_t i = 0; i < n; i++)
        if (out_off[i] > out_off[i + 1]) { PyErr_SetString(PyExc_ValueError, "out_offsets must come from the sizing call"); goto done; }
    if (out_off[n] > cap) { PyErr_SetString(PyExc_ValueError, "out is smaller than out_offsets says"); goto done; }
    Py_BEGIN_ALLOW_THREADS
    static const char HEX[] = "0123456789abcdef";
    for (int64_t i = 0; i < n; i++) {
        uint8_t *o = out + out_off[i], *end = out + out_off[i + 1];
        if (!valid[i]) {
            if (end - o == 4) memcpy(o, "null", 4);
            continue;
        }
        if (end - o < 2) continue;
        *o++ = '"';
        for (int64_t k = off[i]; k < off[i + 1] && o < end - 1; k++) {
            const uint8_t c = data[k];
            const uint8_t size = JSON_SIZE[c];
            if (size == 1) { *o++ = c; continue; }
            if (o + size > end - 1) break;
            *o++ = '\\';
            if (size == 2) { *o++ = (uint8_t)JSON_SHORT[c]; continue; }
            *o++ = 'u'; *o++ = '0'; *o++ = '0'; *o++ = (uint8_t)HEX[c >> 4]; *o++ = (uint8_t)HEX[c & 15];
        }
        *o = '"';
    }
    Py_END_ALLOW_THREADS
    res = PyLong_FromLongLong((long long)out_off[n]);
done:
    cur_release(&B);
    return res;
}

/* --- SHA-256 with the SHA extensions ------------------------------------------------------ */

#if CUR_X86
#include <cpuid.h>

static const uint32_t SHA_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};
static const uint32_t SHA_H0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

static int cpu_has_sha(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int ssse3 = (c >> 9) & 1, sse41 = (c >> 19) & 1;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return ssse3 && sse41 && ((b >> 29) & 1);
}

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("sha,sse4.1,ssse3"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("sha,sse4.1,ssse3")
#endif

/* The running hash in the layout the SHA instructions use: (a, b, e, f) and (c, d, g, h). */
typedef struct { __m128i abef, cdgh; uint8_t buf[64]; int fill; uint64_t total; } sha_ctx;

static void sha_blocks(sha_ctx *c, const uint8_t *p, size_t blocks) {
    const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i s0 = c->abef, s1 = c->cdgh;
    for (; blocks; blocks--, p += 64) {
        const __m128i save0 = s0, save1 = s1;
        __m128i w[4];
        for (int g = 0; g < 16; g++) {  /* 16 groups of 4 rounds */
            __m128i m;
            if (g < 4) {
                m = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * g)), swap);
            } else {  /* W[t..t+3] from W[t-16..t-1] (w[g % 4] holds W[t-16..t-13]) */
                const __m128i a = w[g & 3], b = w[(g + 1) & 3], d7 = w[(g + 2) & 3], d3 = w[(g + 3) & 3];
                m = _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32(a, b), _mm_alignr_epi8(d3, d7, 4)), d3);
            }
            w[g & 3] = m;
            __m128i k = _mm_add_epi32(m, _mm_loadu_si128((const __m128i *)(SHA_K + 4 * g)));
            s1 = _mm_sha256rnds2_epu32(s1, s0, k);
            s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(k, 0x0E));
        }
        s0 = _mm_add_epi32(s0, save0);
        s1 = _mm_add_epi32(s1, save1);
    }
    c->abef = s0;
    c->cdgh = s1;
}

static void sha_init(sha_ctx *c) {
    const __m128i dcba = _mm_loadu_si128((const __m128i *)SHA_H0);
    const __m128i hgfe = _mm_loadu_si128((const __m128i *)(SHA_H0 + 4));
    const __m128i cdab = _mm_shuffle_epi32(dcba, 0xB1), efgh = _mm_shuffle_epi32(hgfe, 0x1B);
    c->abef = _mm_alignr_epi8(cdab, efgh, 8);
    c->cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
    c->fill = 0;
    c->total = 0;
}

static void sha_update(sha_ctx *c, const uint8_t *p, size_t n) {
    c->total += n;
    if (c->fill) {
        size_t take = 64 - (size_t)c->fill < n ? 64 - (size_t)c->fill : n;
        memcpy(c->buf + c->fill, p, take);
        c->fill += (int)take; p += take; n -= take;
        if (c->fill < 64) return;
        sha_blocks(c, c->buf, 1);
        c->fill = 0;
    }
    if (n >= 64) { sha_blocks(c, p, n / 64); p += n & ~(size_t)63; n &= 63; }
    if (n) { memcpy(c->buf, p, n); c->fill = (int)n; }
}

/* The first 16 bytes of the digest as 32 lower-case hex digits. */
static void sha_hex32(sha_ctx *c, uint8_t *out) {
    static const char HEX[] = "0123456789abcdef";
    const uint64_t bits = c->total * 8;
    uint8_t pad[72] = {0x80};
    const size_t padlen = (c->fill < 56 ? 56 : 120) - (size_t)c->fill;
    for (int i = 0; i < 8; i++) pad[padlen + i] = (uint8_t)(bits >> (56 - 8 * i));
    sha_update(c, pad, padlen + 8);
    /* back to (a, b, c, d), (e, f, g, h) */
    const __m128i feba = _mm_shuffle_epi32(c->abef, 0x1B), dchg = _mm_shuffle_epi32(c->cdgh, 0xB1);
    uint32_t h[8];
    _mm_storeu_si128((__m128i *)h, _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128((__m128i *)(h + 4), _mm_alignr_epi8(dchg, feba, 8));
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            const uint8_t byte = (uint8_t)(h[i] >> (24 - 8 * j));
            out[8 * i + 2 * j] = (uint8_t)HEX[byte >> 4];
            out[8 * i + 2 * j + 1] = (uint8_t)HEX[byte & 15];
        }
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else
static int cpu_has_sha(void) { return 0; }
#endif

static PyObject *py_has_sha(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    return PyBool_FromLong(cpu_has_sha());
}

/* sha256_hex32(prefix, data, offsets, out): out[32 i : 32 i + 32] = the first 32 hex digits of
   sha256(prefix + data[offsets[i]:offsets[i + 1]]). RuntimeError on a CPU without SHA-NI. */
static PyObject *py_sha256_hex32(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 4, "sha256_hex32") < 0) return NULL;
    if (!cpu_has_sha()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU has no SHA extensions (check has_sha() first)");
        return NULL;
    }
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const uint8_t *prefix, *data; const int64_t *off; uint8_t *out;
    if (!(prefix = cur_arg(&B, args[0], 'b', 1, 0, "prefix", 0))) goto done;
    const int64_t plen = cur_len(&B.v[0]);
    if (!(data = cur_arg(&B, args[1], 'b', 1, 0, "data", 0))) goto done;
    const int64_t len = cur_len(&B.v[1]);
    if (!(off = cur_arg(&B, args[2], 'i', 8, 0, "offsets", 1))) goto done;
    const int64_t n = cur_len(&B.v[2]) - 1;
    if (!(out = cur_arg(&B, args[3], 'b', 1, 1, "out", 32 * n))) goto done;
    for (int64_t i = 0; i < n; i++)
        if (off[i] < 0 || off[i] > off[i + 1] || off[i + 1] > len) {
            PyErr_SetString(PyExc_ValueError, "offsets must be non-decreasing and within data");
            goto done;
        }
#if CUR_X86
    Py_BEGIN_ALLOW_THREADS
    sha_ctx base, c;
    sha_init(&base);
    sha_update(&base, prefix, (size_t)plen);
    for (int64_t i = 0; i < n; i++) {
        c = base;
        sha_update(&c, data + off[i], (size_t)(off[i + 1] - off[i]));
        sha_hex32(&c, out + 32 * i);
    }
    Py_END_ALLOW_THREADS
#endif
    res = Py_NewRef(Py_None);
done:
    cur_release(&B);
    return res;
}

static PyMethodDef METHODS[] = {
    CUR_PATH_METHODS
    {"utf8_valid", (PyCFunction)py_utf8_valid, METH_O, "utf8_valid(data) -> whether the bytes are valid UTF-8."},
    {"has_sha", (PyCFunction)py_has_sha, METH_NOARGS, "has_sha() -> whether this CPU has the SHA extensions."},
    {"sha256_hex32", (PyCFunction)(void (*)(void))py_sha256_hex32, METH_FASTCALL,
     "sha256_hex32(prefix, data, offsets, out): the first 32 hex digits of sha256(prefix + each string)."},
    {"line_scan", (PyCFunction)py_line_scan, METH_O,
     "line_scan(block) -> (newlines, lines, longest, simple, utf8): one pass over a JSON Lines block."},
    {"json_strings", (PyCFunction)(void (*)(void))py_json_strings, METH_FASTCALL,
     "json_strings(data, offsets, valid, out, out_offsets) -> bytes: each string as a JSON string literal (out=None: sizes only)."},
    {"url_hosts", (PyCFunction)(void (*)(void))py_url_hosts, METH_FASTCALL,
     "url_hosts(data, offsets, valid, out, out_offsets, state) -> rows left to the caller: the lower-cased host of each URL."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_ingest", "Kernels of the ingest stage: JSON Lines line scan and UTF-8 check, URL hosts, JSON strings, document ids.", -1,
                                    METHODS, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ingest(void) {
    json_tables();
    cur_select(cur_best_path());
    PyObject *m = PyModule_Create(&MODULE);
    if (m && PyModule_AddIntConstant(m, "ABI", ABI_VERSION) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
