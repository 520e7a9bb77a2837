/* Perplexity-correlation kernels: the CPython extension scorers.ppl_corr._pplcorr.
 *
 * Built when the package is installed (setup.py); scorers/ppl_corr/kernels.py wraps it and
 * scorers/ppl_corr/estimators.py explains the arithmetic. X is (N models, D domains) float64
 * with unit column stride and any row stride. Domains are processed in blocks of L adjacent
 * columns copied into a small buffer as float32, so each SIMD lane is one domain.
 *
 * Kernels (each with a generic, an AVX2 and an AVX-512 version, chosen once at import;
 * CURATE_SIMD forces a narrower one through set_path):
 *
 * - rank_sums_sort: per domain, sum_k w_k * #{i: x_i < x_k} (integer w), computed by sorting
 *   each lane's N values with their weights through Batcher's odd-even merge network (about
 *   N log2(N)^2 / 4 compare-exchanges; 986 for N = 90) and summing position * weight. A domain
 *   where two sorted neighbours are equal in float32 is flagged (its sum is not the float64 one).
 * - pairs: per domain, sum_k sum_{i < lim[k]} (w_k - w_i) [x_i < x_k] over the models in the
 *   order `rows`, with a flag where a counted pair is equal in float32: N^2 / 2 compares, cheaper
 *   than the network for small N, and the only way to restrict pairs with `lim` (sign_sign).
 * - sign_pairs_f64: exact float64 sum_k sum_{i < lim[k]} sign(x_k - x_i) for listed domains.
 * - weighted_sum: per domain, sum_k c_k x_k in float64 (k ascending), X read once.
 *
 * Every kernel also reports whether some value of X is negative, NaN or infinite (checked while
 * copying), so the caller needs no separate pass over X. Float32 is exact where unflagged:
 * rounding to float32 is monotone, so a pair strictly ordered in float32 is ordered the same way
 * in float64, and all sums are of integers. Every path gives the same bits (integer sums, and
 * float sums in the same order with -ffp-contract=off).
 */
#define CUR_DISPATCH 1
#include "curate_native.h"
#include <float.h>
#include <stdlib.h>

#define ABI_VERSION 1

/* --- shared pieces ------------------------------------------------------------------------------ */

typedef struct {
    const double *X; int64_t ld, n;   /* models x domains, row stride in elements */
    const int64_t *rows;               /* model order (NULL: 0..n-1) */
} mat_t;

/* buf[j * L + b] = (float) X[row j, c + b] for b < m, 0 for the padding lanes. Returns 1 when a
   value is negative, NaN or infinite. -0.0 is allowed (it compares equal to 0.0). */
static inline __attribute__((always_inline)) int load_block(const mat_t *M, int64_t c, int64_t m, int L, float *buf) {
    int bad = 0;
    for (int64_t j = 0; j < M->n; j++) {
        const double *s = M->X + (M->rows ? M->rows[j] : j) * M->ld + c;
        float *d = buf + j * L;
        for (int l = 0; l < L; l += 8) __builtin_prefetch(s + 2 * L + l, 0, 2); /* two blocks ahead */
        int64_t b = 0;
        for (; b < m; b++) {
            const double v = s[b];
            d[b] = (float)v;
            bad |= !((v >= 0.0) & (v <= DBL_MAX));
        }
        for (; b < L; b++) d[b] = 0.0f;
    }
    return bad;
}

/* keys[j * L + b] = the float32 bits of X[j, c + b] (non-negative floats order like their bit
   patterns; -0.0 becomes +0.0) with the low `ib` bits replaced by the model index j. Padding
   lanes get index-only keys. Returns 1 when a value is negative, NaN or infinite. */
static inline __attribute__((always_inline)) int load_keys(const mat_t *M, int64_t c, int64_t m, int L, int ib,
                                                           int32_t *keys) {
    int bad = 0;
    const uint32_t hi = ~((1u << ib) - 1u);
    for (int64_t j = 0; j < M->n; j++) {
        const double *s = M->X + j * M->ld + c;
        int32_t *d = keys + j * L;
        for (int l = 0; l < L; l += 8) __builtin_prefetch(s + 2 * L + l, 0, 2); /* two blocks ahead: X is read once */
        int64_t b = 0;
        for (; b < m; b++) {
            const double v = s[b];
            bad |= !((v >= 0.0) & (v <= DBL_MAX));
            const float f = (float)v + 0.0f;
            uint32_t u;
            memcpy(&u, &f, 4);
            d[b] = (int32_t)((u & hi) | (uint32_t)j);
        }
        for (; b < L; b++) d[b] = (int32_t)j;
    }
    return bad;
}

/* --- generic versions (plain C; the compiler vectorises what it can for the baseline ISA) ------ */

#define GL 8 /* lanes of the generic kernels: two 128-bit vectors (SSE2 on x86-64, NEON on aarch64) */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

static int64_t sort_generic(const mat_t *M, int64_t c0, int64_t c1, const int32_t *w, const uint16_t *net,
                            int64_t ncmp, float *val, int32_t *pay, double *out, uint8_t *flag) {
    const int64_t n = M->n;
    int bad = 0;
    for (int64_t c = c0; c < c1; c += GL) {
        const int64_t m = c1 - c < GL ? c1 - c : GL;
        bad |= load_block(M, c, m, GL, val);
        for (int64_t j = 0; j < n; j++)
            for (int b = 0; b < GL; b++) pay[j * GL + b] = w[j];
        for (int64_t q = 0; q < ncmp; q++) {
            v4f *va = (v4f *)(val + net[2 * q] * GL), *vb = (v4f *)(val + net[2 * q + 1] * GL);
            v4i *pa = (v4i *)(pay + net[2 * q] * GL), *pb = (v4i *)(pay + net[2 * q + 1] * GL);
            for (int h = 0; h < GL / 4; h++) {
                const v4f x = va[h], y = vb[h];
                const v4i px = pa[h], py = pb[h];
                const v4i sw = y < x; /* all ones where the pair swaps */
                const v4i xi = (v4i)x, yi = (v4i)y;
                va[h] = (v4f)((yi & sw) | (xi & ~sw));
                vb[h] = (v4f)((xi & sw) | (yi & ~sw));
                pa[h] = (py & sw) | (px & ~sw);
                pb[h] = (px & sw) | (py & ~sw);
            }
        }
        double acc[GL];
        int tie[GL];
        for (int b = 0; b < GL; b++) { acc[b] = 0.0; tie[b] = 0; }
        for (int64_t j = 1; j < n; j++)
            for (int b = 0; b < GL; b++) {
                acc[b] += (double)((int32_t)j * pay[j * GL + b]);
                tie[b] |= val[j * GL + b] == val[(j - 1) * GL + b];
            }
        for (int64_t b = 0; b < m; b++) { out[c + b] = acc[b]; flag[c + b] = (uint8_t)tie[b]; }
    }
    return bad;
}

/* Packed keys: one 32-bit integer per value holds its float32 bits with the low ib bits replaced
   by the model index, so the network moves one vector per row (no separate weights) and min/max
   are plain integer ops. Sorting by key gives the float32 order wherever the truncated values
   are distinct; a domain where two sorted neighbours share their truncated value is flagged
   (the caller recomputes it exactly). sum_j j * w[index of key j] is the rank sum. */
static int64_t sort32_generic(const mat_t *M, int64_t c0, int64_t c1, const int32_t *w, const uint16_t *net,
                              int64_t ncmp, int ib, int32_t *keys, double *out, uint8_t *flag) {
    const int64_t n = M->n;
    const int32_t imask = (1 << ib) - 1;
    int bad = 0;
    for (int64_t c = c0; c < c1; c += GL) {
        const int64_t m = c1 - c < GL ? c1 - c : GL;
        bad |= load_keys(M, c, m, GL, ib, keys);
        for (int64_t q = 0; q < ncmp; q++) {
            v4i *ka = (v4i *)(keys + net[2 * q] * GL), *kb = (v4i *)(keys + net[2 * q + 1] * GL);
            for (int h = 0; h < GL / 4; h++) {
                const v4i x = ka[h], y = kb[h];
                const v4i lt = y < x;
                ka[h] = (y & lt) | (x & ~lt);
                kb[h] = (x & lt) | (y & ~lt);
            }
        }
        double acc[GL];
        int near[GL];
        for (int b = 0; b < GL; b++) { acc[b] = 0.0; near[b] = 0; }
        for (int64_t j = 1; j < n; j++)
            for (int b = 0; b < GL; b++) {
                const int32_t k = keys[j * GL + b];
                acc[b] += (double)((int32_t)j * w[k & imask]);
                near[b] |= (k >> ib) == (keys[(j - 1) * GL + b] >> ib);
            }
        for (int64_t b = 0; b < m; b++) { out[c + b] = acc[b]; flag[c + b] = (uint8_t)near[b]; }
    }
    return bad;
}

static int64_t pairs_generic(const mat_t *M, int64_t c0, int64_t c1, const int64_t *lim, const int32_t *w,
                             float *buf, int32_t *dw, double *out, uint8_t *flag) {
    const int64_t n = M->n;
    int bad = 0;
    for (int64_t c = c0; c < c1; c += GL) {
        const int64_t m = c1 - c < GL ? c1 - c : GL;
        bad |= load_block(M, c, m, GL, buf);
        double acc[GL];
        int32_t eq[GL];
        for (int b = 0; b < GL; b++) { acc[b] = 0.0; eq[b] = 0; }
        for (int64_t k = 0; k < n; k++) {
            const int64_t nk = lim[k];
            if (nk <= 0) continue;
            for (int64_t i = 0; i < nk; i++) dw[i] = w ? w[k] - w[i] : 1;
            v4i part[GL / 4], eqv[GL / 4];
            const v4f *xk = (const v4f *)(buf + k * GL);
            for (int h = 0; h < GL / 4; h++) { part[h] = (v4i){0, 0, 0, 0}; eqv[h] = (v4i){0, 0, 0, 0}; }
            for (int64_t i = 0; i < nk; i++) {
                const v4f *xi = (const v4f *)(buf + i * GL);
                const int32_t d = dw[i];
                for (int h = 0; h < GL / 4; h++) {
                    part[h] += (xi[h] < xk[h]) & d;
                    eqv[h] |= xi[h] == xk[h];
                }
            }
            for (int b = 0; b < GL; b++) eq[b] |= eqv[b / 4][b % 4];
            for (int b = 0; b < GL; b++) acc[b] += (double)part[b / 4][b % 4];
        }
        for (int64_t b = 0; b < m; b++) { out[c + b] = acc[b]; flag[c + b] = (uint8_t)(eq[b] != 0); }
    }
    return bad;
}

/* out[d] = sum_k c_k X[k, d], k ascending; blocks of WS columns stay in L1. */
#define WS 512
/* acc[b] += c[0] s0[b]; acc[b] += c[1] s1[b]; ... for R rows (one row at a time, in order, so the
   sums are those of a plain row loop; grouping rows only saves loads and stores of acc). Returns 1
   when some value is negative, NaN or infinite. */
static inline __attribute__((always_inline)) int wsum_rows4(double *restrict acc, const double *restrict s0,
                                                            const double *restrict s1, const double *restrict s2,
                                                            const double *restrict s3, const double *c, int64_t m) {
    const double c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
    int64_t ok = 1;
    for (int64_t b = 0; b < m; b++) {
        const double v0 = s0[b], v1 = s1[b], v2 = s2[b], v3 = s3[b];
        ok &= (v0 >= 0.0) & (v0 <= DBL_MAX) & (v1 >= 0.0) & (v1 <= DBL_MAX) & (v2 >= 0.0) & (v2 <= DBL_MAX) &
              (v3 >= 0.0) & (v3 <= DBL_MAX);
        double a = acc[b];
        a += c0 * v0; a += c1 * v1; a += c2 * v2; a += c3 * v3;
        acc[b] = a;
    }
    return !ok;
}

static inline __attribute__((always_inline)) int wsum_row(double *restrict acc, const double *restrict s, double ck,
                                                          int64_t m) {
    int64_t ok = 1;
    for (int64_t b = 0; b < m; b++) {
        const double v = s[b];
        ok &= (v >= 0.0) & (v <= DBL_MAX);
        acc[b] += ck * v;
    }
    return !ok;
}

static inline __attribute__((always_inline)) int64_t wsum_body(const mat_t *M, int64_t c0, int64_t c1,
                                                               const double *coef, double *out) {
    int bad = 0;
    double acc[WS];
    const int64_t ld = M->ld;
    for (int64_t c = c0; c < c1; c += WS) {
        const int64_t m = c1 - c < WS ? c1 - c : WS;
        for (int64_t b = 0; b < m; b++) acc[b] = 0.0;
        int64_t k = 0;
        for (; k + 4 <= M->n; k += 4) {
            const double *s = M->X + k * ld + c;
            for (int r = 0; r < 4; r++)
                for (int64_t l = 0; l < m; l += 8) __builtin_prefetch(s + r * ld + WS + l, 0, 2);
            bad |= wsum_rows4(acc, s, s + ld, s + 2 * ld, s + 3 * ld, coef + k, m);
        }
        for (; k < M->n; k++) bad |= wsum_row(acc, M->X + k * ld + c, coef[k], m);
        memcpy(out + c, acc, sizeof(double) * (size_t)m);
    }
    return bad;
}

static int64_t wsum_generic(const mat_t *M, int64_t c0, int64_t c1, const double *coef, double *out) {
    return wsum_body(M, c0, c1, coef, out);
}

#if CUR_X86
/* --- AVX2: 8 domains per 256-bit vector --------------------------------------------------------- */
CUR_TARGET_AVX2_BEGIN

static int64_t sort_avx2(const mat_t *M, int64_t c0, int64_t c1, const int32_t *w, const uint16_t *net,
                         int64_t ncmp, float *val, int32_t *pay, double *out, uint8_t *flag) {
    const int64_t n = M->n;
    int bad = 0;
    for (int64_t c = c0; c < c1; c += 8) {
        const int64_t m = c1 - c < 8 ? c1 - c : 8;
        bad |= load_block(M, c, m, 8, val);
        for (int64_t j = 0; j < n; j++) _mm256_store_si256((__m256i *)(pay + j * 8), _mm256_set1_epi32(w[j]));
        for (int64_t q = 0; q < ncmp; q++) {
            float *va = val + net[2 * q] * 8, *vb = val + net[2 * q + 1] * 8;
            float *pa = (float *)(pay + net[2 * q] * 8), *pb = (float *)(pay + net[2 * q + 1] * 8);
            const __m256 x = _mm256_load_ps(va), y = _mm256_load_ps(vb);
            const __m256 sw = _mm256_cmp_ps(y, x, _CMP_LT_OQ);
            _mm256_store_ps(va, _mm256_min_ps(y, x));
            _mm256_store_ps(vb, _mm256_max_ps(y, x));
            const __m256 px = _mm256_load_ps(pa), py = _mm256_load_ps(pb);
            _mm256_store_ps(pa, _mm256_blendv_ps(px, py, sw));
            _mm256_store_ps(pb, _mm256_blendv_ps(py, px, sw));
        }
        __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
        __m256 tie = _mm256_setzero_ps();
        for (int64_t j = 1; j < n; j++) {
            const __m256i p = _mm256_mullo_epi32(_mm256_load_si256((const __m256i *)(pay + j * 8)),
                                                 _mm256_set1_epi32((int32_t)j));
            lo = _mm256_add_pd(lo, _mm256_cvtepi32_pd(_mm256_castsi256_si128(p)));
            hi = _mm256_add_pd(hi, _mm256_cvtepi32_pd(_mm256_extracti128_si256(p, 1)));
            tie = _mm256_or_ps(tie, _mm256_cmp_ps(_mm256_load_ps(val + j * 8), _mm256_load_ps(val + (j - 1) * 8),
                                                  _CMP_EQ_OQ));
        }
        double acc[8];
        _mm256_storeu_pd(acc, lo);
        _mm256_storeu_pd(acc + 4, hi);
        const int tm = _mm256_movemask_ps(tie);
        for (int64_t b = 0; b < m; b++) { out[c + b] = acc[b]; flag[c + b] = (uint8_t)((tm >> b) & 1); }
    }
    return bad;
}

/* Packed keys (see sort32_generic), two vectors (16 domains) per compare-exchange. */
static int64_t sort32_avx2(const mat_t *M, int64_t c0, int64_t c1, const int32_t *w, const uint16_t *net,
                           int64_t ncmp, int ib, int32_t *keys, double *out, uint8_t *flag) {
    const int64_t n = M->n;
    const __m256i imask = _mm256_set1_epi32((1 << ib) - 1);
    int bad = 0;
    for (int64_t c = c0; c < c1; c += 16) {
        const int64_t m = c1 - c < 16 ? c1 - c : 16;
        bad |= load_keys(M, c, m, 16, ib, keys);
        for (int64_t q = 0; q < ncmp; q++) {
            __m256i *ka = (__m256i *)(keys + net[2 * q] * 16), *kb = (__m256i *)(keys + net[2 * q + 1] * 16);
            const __m256i x0 = _mm256_load_si256(ka), x1 = _mm256_load_si256(ka + 1);
            const __m256i y0 = _mm256_load_si256(kb), y1 = _mm256_load_si256(kb + 1);
            _mm256_store_si256(ka, _mm256_min_epi32(x0, y0));
            _mm256_store_si256(ka + 1, _mm256_min_epi32(x1, y1));
            _mm256_store_si256(kb, _mm256_max_epi32(x0, y0));
            _mm256_store_si256(kb + 1, _mm256_max_epi32(x1, y1));
        }
        __m256d acc[4];
        __m256i near[2];
        for (int v = 0; v < 4; v++) acc[v] = _mm256_setzero_pd();
        near[0] = near[1] = _mm256_setzero_si256();
        __m256i prev[2];
        for (int v = 0; v < 2; v++) prev[v] = _mm256_srai_epi32(_mm256_load_si256((const __m256i *)keys + v), ib);
        for (int64_t j = 1; j < n; j++) {
            const __m256i jv = _mm256_set1_epi32((int32_t)j);
            for (int v = 0; v < 2; v++) {
                const __m256i k = _mm256_load_si256((const __m256i *)(keys + j * 16) + v);
                const __m256i wv = _mm256_i32gather_epi32(w, _mm256_and_si256(k, imask), 4);
                const __m256i p = _mm256_mullo_epi32(wv, jv);
                acc[2 * v] = _mm256_add_pd(acc[2 * v], _mm256_cvtepi32_pd(_mm256_castsi256_si128(p)));
                acc[2 * v + 1] = _mm256_add_pd(acc[2 * v + 1], _mm256_cvtepi32_pd(_mm256_extracti128_si256(p, 1)));
                const __m256i t = _mm256_srai_epi32(k, ib);
                near[v] = _mm256_or_si256(near[v], _mm256_cmpeq_epi32(t, prev[v]));
                prev[v] = t;
            }
        }
        double tot[16];
        for (int v = 0; v < 4; v++) _mm256_storeu_pd(tot + 4 * v, acc[v]);
        const int nm = _mm256_movemask_ps(_mm256_castsi256_ps(near[0])) |
                       (_mm256_movemask_ps(_mm256_castsi256_ps(near[1])) << 8);
        for (int64_t b = 0; b < m; b++) { out[c + b] = tot[b]; flag[c + b] = (uint8_t)((nm >> b) & 1); }
    }
    return bad;
}

/* Four vectors (32 domains) per block: the model loops reuse each loaded x_i four times. */
static int64_t pairs_avx2(const mat_t *M, int64_t c0, int64_t c1, const int64_t *lim, const int32_t *w,
                          float *buf, int32_t *dw, double *out, uint8_t *flag) {
    const int64_t n = M->n;
    int bad = 0;
    for (int64_t c = c0; c < c1; c += 32) {
        const int64_t m = c1 - c < 32 ? c1 - c : 32;
        bad |= load_block(M, c, m, 32, buf);
        __m256d acc[8];
        __m256 eq[4];
        for (int v = 0; v < 8; v++) acc[v] = _mm256_setzero_pd();
        for (int v = 0; v < 4; v++) eq[v] = _mm256_setzero_ps();
        for (int64_t k = 0; k < n; k++) {
            const int64_t nk = lim[k];
            if (nk <= 0) continue;
            for (int64_t i = 0; i < nk; i++) dw[i] = w ? w[k] - w[i] : 1;
            __m256 xk[4];
            __m256i a[4];
            for (int v = 0; v < 4; v++) { xk[v] = _mm256_load_ps(buf + k * 32 + 8 * v); a[v] = _mm256_setzero_si256(); }
            for (int64_t i = 0; i < nk; i++) {
                const __m256i d = _mm256_set1_epi32(dw[i]);
                for (int v = 0; v < 4; v++) {
                    const __m256 xi = _mm256_load_ps(buf + i * 32 + 8 * v);
                    const __m256 lt = _mm256_cmp_ps(xi, xk[v], _CMP_LT_OQ);
                    a[v] = _mm256_add_epi32(a[v], _mm256_and_si256(_mm256_castps_si256(lt), d));
                    eq[v] = _mm256_or_ps(eq[v], _mm256_cmp_ps(xi, xk[v], _CMP_EQ_OQ));
                }
            }
            for (int v = 0; v < 4; v++) {
                acc[2 * v] = _mm256_add_pd(acc[2 * v], _mm256_cvtepi32_pd(_mm256_castsi256_si128(a[v])));
                acc[2 * v + 1] = _mm256_add_pd(acc[2 * v + 1], _mm256_cvtepi32_pd(_mm256_extracti128_si256(a[v], 1)));
            }
        }
        double tot[32];
        for (int v = 0; v < 8; v++) _mm256_storeu_pd(tot + 4 * v, acc[v]);
        int tm[4];
        for (int v = 0; v < 4; v++) tm[v] = _mm256_movemask_ps(eq[v]);
        for (int64_t b = 0; b < m; b++) { out[c + b] = tot[b]; flag[c + b] = (uint8_t)((tm[b / 8] >> (b % 8)) & 1); }
    }
    return bad;
}

static int64_t wsum_avx2(const mat_t *M, int64_t c0, int64_t c1, const double *coef, double *out) {
    return wsum_body(M, c0, c1, coef, out); /* the same loop, vectorised for AVX2 */
}
CUR_TARGET_END

/* --- AVX-512: 16 domains per 512-bit vector ----------------------------------------------------- */
CUR_TARGET_AVX512_BEGIN

static int64_t sort_avx512(const mat_t *M, int64_t c0, int64_t c1, const int32_t *w, const uint16_t *net,
                           int64_t ncmp, float *val, int32_t *pay, double *out, uint8_t *flag) {
    const int64_t n = M->n;
    int bad = 0;
    for (int64_t c = c0; c < c1; c += 16) {
        const int64_t m = c1 - c < 16 ? c1 - c : 16;
        bad |= load_block(M, c, m, 16, val);
        for (int64_t j = 0; j < n; j++) _mm512_store_si512((void *)(pay + j * 16), _mm512_set1_epi32(w[j]));
        for (int64_t q = 0; q < ncmp; q++) {
            float *va = val + net[2 * q] * 16, *vb = val + net[2 * q + 1] * 16;
            int32_t *pa = pay + net[2 * q] * 16, *pb = pay + net[2 * q + 1] * 16;
            const __m512 x = _mm512_load_ps(va), y = _mm512_load_ps(vb);
            const __mmask16 sw = _mm512_cmp_ps_mask(y, x, _CMP_LT_OQ);
            _mm512_store_ps(va, _mm512_min_ps(y, x));
            _mm512_store_ps(vb, _mm512_max_ps(y, x));
            const __m512i px = _mm512_load_si512((const void *)pa), py = _mm512_load_si512((const void *)pb);
            _mm512_store_si512((void *)pa, _mm512_mask_blend_epi32(sw, px, py));
            _mm512_store_si512((void *)pb, _mm512_mask_blend_epi32(sw, py, px));
        }
        __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
        __mmask16 tie = 0;
        for (int64_t j = 1; j < n; j++) {
            const __m512i p = _mm512_mullo_epi32(_mm512_load_si512((const void *)(pay + j * 16)),
                                                 _mm512_set1_epi32((int32_t)j));
            lo = _mm512_add_pd(lo, _mm512_cvtepi32_pd(_mm512_castsi512_si256(p)));
            hi = _mm512_add_pd(hi, _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(p, 1)));
            tie |= _mm512_cmp_ps_mask(_mm512_load_ps(val + j * 16), _mm512_load_ps(val + (j - 1) * 16), _CMP_EQ_OQ);
        }
        double acc[16];
        _mm512_storeu_pd(acc, lo);
        _mm512_storeu_pd(acc + 8, hi);
        for (int64_t b = 0; b < m; b++) { out[c + b] = acc[b]; flag[c + b] = (uint8_t)((tie >> b) & 1); }
    }
    return bad;
}

/* Packed keys (see sort32_generic), two vectors (32 domains) per compare-exchange. */
static int64_t sort32_avx512(const mat_t *M, int64_t c0, int64_t c1, const int32_t *w, const uint16_t *net,
                             int64_t ncmp, int ib, int32_t *keys, double *out, uint8_t *flag) {
    const int64_t n = M->n;
    const __m512i imask = _mm512_set1_epi32((1 << ib) - 1);
    int bad = 0;
    for (int64_t c = c0; c < c1; c += 32) {
        const int64_t m = c1 - c < 32 ? c1 - c : 32;
        bad |= load_keys(M, c, m, 32, ib, keys);
        for (int64_t q = 0; q < ncmp; q++) {
            __m512i *ka = (__m512i *)(keys + net[2 * q] * 32), *kb = (__m512i *)(keys + net[2 * q + 1] * 32);
            const __m512i x0 = _mm512_load_si512(ka), x1 = _mm512_load_si512(ka + 1);
            const __m512i y0 = _mm512_load_si512(kb), y1 = _mm512_load_si512(kb + 1);
            _mm512_store_si512(ka, _mm512_min_epi32(x0, y0));
            _mm512_store_si512(ka + 1, _mm512_min_epi32(x1, y1));
            _mm512_store_si512(kb, _mm512_max_epi32(x0, y0));
            _mm512_store_si512(kb + 1, _mm512_max_epi32(x1, y1));
        }
        __m512d acc[4];
        __mmask16 near[2] = {0, 0};
        __m512i prev[2];
        for (int v = 0; v < 4; v++) acc[v] = _mm512_setzero_pd();
        for (int v = 0; v < 2; v++) prev[v] = _mm512_srai_epi32(_mm512_load_si512((const __m512i *)keys + v), ib);
        for (int64_t j = 1; j < n; j++) {
            const __m512i jv = _mm512_set1_epi32((int32_t)j);
            for (int v = 0; v < 2; v++) {
                const __m512i k = _mm512_load_si512((const __m512i *)(keys + j * 32) + v);
                const __m512i wv = _mm512_i32gather_epi32(_mm512_and_si512(k, imask), w, 4);
                const __m512i p = _mm512_mullo_epi32(wv, jv);
                acc[2 * v] = _mm512_add_pd(acc[2 * v], _mm512_cvtepi32_pd(_mm512_castsi512_si256(p)));
                acc[2 * v + 1] = _mm512_add_pd(acc[2 * v + 1], _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(p, 1)));
                const __m512i t = _mm512_srai_epi32(k, ib);
                near[v] |= _mm512_cmpeq_epi32_mask(t, prev[v]);
                prev[v] = t;
            }
        }
        double tot[32];
        for (int v = 0; v < 4; v++) _mm512_storeu_pd(tot + 8 * v, acc[v]);
        const uint32_t nm = (uint32_t)near[0] | ((uint32_t)near[1] << 16);
        for (int64_t b = 0; b < m; b++) { out[c + b] = tot[b]; flag[c + b] = (uint8_t)((nm >> b) & 1); }
    }
    return bad;
}

/* Four vectors (64 domains) per block, as in the AVX2 version. */
static int64_t pairs_avx512(const mat_t *M, int64_t c0, int64_t c1, const int64_t *lim, const int32_t *w,
                            float *buf, int32_t *dw, double *out, uint8_t *flag) {
    const int64_t n = M->n;
    int bad = 0;
    for (int64_t c = c0; c < c1; c += 64) {
        const int64_t m = c1 - c < 64 ? c1 - c : 64;
        bad |= load_block(M, c, m, 64, buf);
        __m512d acc[8];
        __mmask16 neq[4];
        for (int v = 0; v < 8; v++) acc[v] = _mm512_setzero_pd();
        for (int v = 0; v < 4; v++) neq[v] = 0xFFFF;
        for (int64_t k = 0; k < n; k++) {
            const int64_t nk = lim[k];
            if (nk <= 0) continue;
            for (int64_t i = 0; i < nk; i++) dw[i] = w ? w[k] - w[i] : 1;
            __m512 xk[4];
            __m512i a[4];
            for (int v = 0; v < 4; v++) { xk[v] = _mm512_load_ps(buf + k * 64 + 16 * v); a[v] = _mm512_setzero_si512(); }
            for (int64_t i = 0; i < nk; i++) {
                const __m512i d = _mm512_set1_epi32(dw[i]);
                for (int v = 0; v < 4; v++) {
                    const __m512 xi = _mm512_load_ps(buf + i * 64 + 16 * v);
                    const __mmask16 lt = _mm512_cmp_ps_mask(xi, xk[v], _CMP_LT_OQ);
                    a[v] = _mm512_mask_add_epi32(a[v], lt, a[v], d);
                    neq[v] = _mm512_mask_cmp_ps_mask(neq[v], xi, xk[v], _CMP_NEQ_UQ);
                }
            }
            for (int v = 0; v < 4; v++) {
                acc[2 * v] = _mm512_add_pd(acc[2 * v], _mm512_cvtepi32_pd(_mm512_castsi512_si256(a[v])));
                acc[2 * v + 1] = _mm512_add_pd(acc[2 * v + 1], _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(a[v], 1)));
            }
        }
        double tot[64];
        for (int v = 0; v < 8; v++) _mm512_storeu_pd(tot + 8 * v, acc[v]);
        for (int64_t b = 0; b < m; b++) {
            out[c + b] = tot[b];
            flag[c + b] = (uint8_t)(!((neq[b / 16] >> (b % 16)) & 1));
        }
    }
    return bad;
}

static int64_t wsum_avx512(const mat_t *M, int64_t c0, int64_t c1, const double *coef, double *out) {
    return wsum_body(M, c0, c1, coef, out);
}
CUR_TARGET_END
#endif

/* --- dispatch ----------------------------------------------------------------------------------- */

typedef int64_t (*sort_fn)(const mat_t *, int64_t, int64_t, const int32_t *, const uint16_t *, int64_t, float *,
                           int32_t *, double *, uint8_t *);
typedef int64_t (*pairs_fn)(const mat_t *, int64_t, int64_t, const int64_t *, const int32_t *, float *, int32_t *,
                            double *, uint8_t *);
typedef int64_t (*wsum_fn)(const mat_t *, int64_t, int64_t, const double *, double *);
typedef int64_t (*sort32_fn)(const mat_t *, int64_t, int64_t, const int32_t *, const uint16_t *, int64_t, int,
                             int32_t *, double *, uint8_t *);

static struct { int path, lanes, pair_lanes, key_lanes; sort_fn sort; sort32_fn sort32; pairs_fn pairs; wsum_fn wsum; } K;

static void select_path(int path) {
#if CUR_X86
    if (path == CUR_PATH_AVX512) {
        K.path = path; K.lanes = 16; K.pair_lanes = 64; K.key_lanes = 32; K.sort32 = sort32_avx512; K.sort = sort_avx512; K.pairs = pairs_avx512; K.wsum = wsum_avx512;
        return;
    }
    if (path == CUR_PATH_AVX2) {
        K.path = path; K.lanes = 8; K.pair_lanes = 32; K.key_lanes = 16; K.sort32 = sort32_avx2; K.sort = sort_avx2; K.pairs = pairs_avx2; K.wsum = wsum_avx2;
        return;
    }
#endif
    K.path = CUR_PATH_GENERIC; K.lanes = GL; K.pair_lanes = GL; K.key_lanes = GL; K.sort32 = sort32_generic; K.sort = sort_generic; K.pairs = pairs_generic;
    K.wsum = wsum_generic;
}

static void cur_select(int path) { select_path(path); }
static int cur_current(void) { return K.path; }

/* Batcher's odd-even merge sort network for n inputs: the network for the next power of two
   with every compare-exchange that touches a position >= n dropped (those positions would hold
   +inf and never move). Writes index pairs (lower first) into net; returns their count. */
static int64_t make_network(int64_t n, uint16_t *net) {
    int64_t P = 1, q = 0;
    while (P < n) P <<= 1;
    for (int64_t p = 1; p < P; p <<= 1)
        for (int64_t k = p; k >= 1; k >>= 1)
            for (int64_t j = k % p; j + k <= P - 1; j += 2 * k)
                for (int64_t i = 0; i <= (k - 1 < P - j - k - 1 ? k - 1 : P - j - k - 1); i++)
                    if ((i + j) / (2 * p) == (i + j + k) / (2 * p) && i + j + k < n) {
                        if (net) { net[2 * q] = (uint16_t)(i + j); net[2 * q + 1] = (uint16_t)(i + j + k); }
                        q++;
                    }
    return q;
}

/* --- Python wrappers ---------------------------------------------------------------------------- */

#define MAX_MODELS 16384

/* X: a 2-D float64 buffer with unit column stride (any row stride, so column slices need no copy). */
static int get_matrix(PyObject *obj, Py_buffer *v, mat_t *M, int64_t *ncols) {
    if (PyObject_GetBuffer(obj, v, PyBUF_STRIDES | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "X must be a 2-D float64 array");
        return -1;
    }
    if (v->ndim != 2 || !cur_format_ok(v, 'f', 8) || v->strides[1] != 8 ||
        (v->shape[0] > 1 && (v->strides[0] % 8 || v->strides[0] < 8 * v->shape[1]))) {
        PyBuffer_Release(v);
        PyErr_SetString(PyExc_TypeError, "X must be a 2-D float64 array with unit column stride");
        return -1;
    }
    M->X = (const double *)v->buf;
    M->n = v->shape[0];
    M->ld = v->shape[0] > 1 ? v->strides[0] / 8 : v->shape[1];
    M->rows = NULL;
    *ncols = v->shape[1];
    if (M->n > MAX_MODELS) {
        PyBuffer_Release(v);
        PyErr_Format(PyExc_ValueError, "at most %d models", MAX_MODELS);
        return -1;
    }
    return 0;
}

static int check_range(int64_t c0, int64_t c1, int64_t ncols) {
    if (c0 < 0 || c1 < c0 || c1 > ncols) {
        PyErr_SetString(PyExc_ValueError, "column range out of bounds");
        return -1;
    }
    return 0;
}

static int check_rows(const int64_t *rows, int64_t n) {
    if (!rows) return 0;
    for (int64_t j = 0; j < n; j++)
        if (rows[j] < 0 || rows[j] >= n) { PyErr_SetString(PyExc_ValueError, "rows must hold N row indices"); return -1; }
    return 0;
}

static int check_lim(const int64_t *lim, int64_t n) {
    for (int64_t k = 0; k < n; k++)
        if (lim[k] < 0 || lim[k] > k) { PyErr_SetString(PyExc_ValueError, "lim[k] must be in [0, k]"); return -1; }
    return 0;
}

/* rank_sums_sort(X, w, c0, c1, out, flag) -> bad (0/1): out[d] = sum_k w_k #{i: x_i < x_k} for
   d in [c0, c1) where flag[d] == 0. */
static PyObject *py_rank_sums_sort(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 6, "rank_sums_sort") < 0) return NULL;
    Py_buffer xv;
    mat_t M;
    int64_t ncols, c0, c1;
    if (get_matrix(args[0], &xv, &M, &ncols) < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const int32_t *w; double *out; uint8_t *flag;
    if (!(w = cur_arg(&B, args[1], 'i', 4, 0, "w", M.n))) goto done;
    if (cur_int(args[2], &c0, "c0") < 0 || cur_int(args[3], &c1, "c1") < 0 || check_range(c0, c1, ncols) < 0) goto done;
    if (!(out = cur_arg(&B, args[4], 'f', 8, 1, "out", ncols))) goto done;
    if (!(flag = cur_arg(&B, args[5], 'b', 1, 1, "flag", ncols))) goto done;
    const int64_t ncmp = make_network(M.n, NULL), L = K.lanes;
    uint16_t *net = malloc(sizeof(uint16_t) * 2 * (size_t)(ncmp + 1));
    float *val = aligned_alloc(64, sizeof(float) * (size_t)((M.n * L + 15) / 16 * 16 + 16));
    int32_t *pay = aligned_alloc(64, sizeof(int32_t) * (size_t)((M.n * L + 15) / 16 * 16 + 16));
    if (!net || !val || !pay) { free(net); free(val); free(pay); PyErr_NoMemory(); goto done; }
    make_network(M.n, net);
    int64_t bad;
    sort_fn fn = K.sort;
    Py_BEGIN_ALLOW_THREADS
    bad = fn(&M, c0, c1, w, net, ncmp, val, pay, out, flag);
    Py_END_ALLOW_THREADS
    free(net); free(val); free(pay);
    res = PyLong_FromLongLong(bad);
done:
    cur_release(&B);
    PyBuffer_Release(&xv);
    return res;
}

/* rank_sums_keys(X, w, c0, c1, out, flag) -> bad (0/1): as rank_sums_sort with packed keys;
   flag also marks domains where two values agree in all but their low mantissa bits (recompute
   those exactly). */
static PyObject *py_rank_sums_keys(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 6, "rank_sums_keys") < 0) return NULL;
    Py_buffer xv;
    mat_t M;
    int64_t ncols, c0, c1;
    if (get_matrix(args[0], &xv, &M, &ncols) < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const int32_t *w; double *out; uint8_t *flag;
    if (!(w = cur_arg(&B, args[1], 'i', 4, 0, "w", M.n))) goto done;
    if (cur_int(args[2], &c0, "c0") < 0 || cur_int(args[3], &c1, "c1") < 0 || check_range(c0, c1, ncols) < 0) goto done;
    if (!(out = cur_arg(&B, args[4], 'f', 8, 1, "out", ncols))) goto done;
    if (!(flag = cur_arg(&B, args[5], 'b', 1, 1, "flag", ncols))) goto done;
    int ib = 0;
    while ((1 << ib) < M.n) ib++;
    const int64_t ncmp = make_network(M.n, NULL), L = K.key_lanes;
    uint16_t *net = malloc(sizeof(uint16_t) * 2 * (size_t)(ncmp + 1));
    int32_t *keys = aligned_alloc(64, sizeof(int32_t) * (size_t)((M.n * L + 15) / 16 * 16 + 16));
    if (!net || !keys) { free(net); free(keys); PyErr_NoMemory(); goto done; }
    make_network(M.n, net);
    int64_t bad;
    sort32_fn fn = K.sort32;
    Py_BEGIN_ALLOW_THREADS
    bad = fn(&M, c0, c1, w, net, ncmp, ib, keys, out, flag);
    Py_END_ALLOW_THREADS
    free(net); free(keys);
    res = PyLong_FromLongLong(bad);
done:
    cur_release(&B);
    PyBuffer_Release(&xv);
    return res;
}

/* pairs(X, lim, w or None, rows or None, c0, c1, out, flag) -> bad (0/1). */
static PyObject *py_pairs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 8, "pairs") < 0) return NULL;
    Py_buffer xv;
    mat_t M;
    int64_t ncols, c0, c1;
    if (get_matrix(args[0], &xv, &M, &ncols) < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const int64_t *lim; void *w, *rows; double *out; uint8_t *flag;
    if (!(lim = cur_arg(&B, args[1], 'i', 8, 0, "lim", M.n))) goto done;
    if (cur_opt(&B, args[2], 'i', 4, "w", M.n, &w) < 0 || cur_opt(&B, args[3], 'i', 8, "rows", M.n, &rows) < 0) goto done;
    if (cur_int(args[4], &c0, "c0") < 0 || cur_int(args[5], &c1, "c1") < 0 || check_range(c0, c1, ncols) < 0) goto done;
    if (!(out = cur_arg(&B, args[6], 'f', 8, 1, "out", ncols))) goto done;
    if (!(flag = cur_arg(&B, args[7], 'b', 1, 1, "flag", ncols))) goto done;
    M.rows = rows;
    if (check_rows(M.rows, M.n) < 0 || check_lim(lim, M.n) < 0) goto done;
    const int64_t L = K.pair_lanes;
    float *buf = aligned_alloc(64, sizeof(float) * (size_t)((M.n * L + 15) / 16 * 16 + 16));
    int32_t *dw = malloc(sizeof(int32_t) * (size_t)(M.n + 1));
    if (!buf || !dw) { free(buf); free(dw); PyErr_NoMemory(); goto done; }
    int64_t bad;
    pairs_fn fn = K.pairs;
    Py_BEGIN_ALLOW_THREADS
    bad = fn(&M, c0, c1, lim, w, buf, dw, out, flag);
    Py_END_ALLOW_THREADS
    free(buf); free(dw);
    res = PyLong_FromLongLong(bad);
done:
    cur_release(&B);
    PyBuffer_Release(&xv);
    return res;
}

/* sign_pairs_f64(X, cols, lim, rows or None, out) -> None: exact float64
   sum_k sum_{i < lim[k]} sign(x_k - x_i) for the domains cols. */
static PyObject *py_sign_pairs_f64(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 5, "sign_pairs_f64") < 0) return NULL;
    Py_buffer xv;
    mat_t M;
    int64_t ncols, nc;
    if (get_matrix(args[0], &xv, &M, &ncols) < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const int64_t *cols, *lim; void *rows; double *out;
    if (!(cols = cur_arg(&B, args[1], 'i', 8, 0, "cols", 0))) goto done;
    nc = cur_len(&B.v[0]);
    if (!(lim = cur_arg(&B, args[2], 'i', 8, 0, "lim", M.n))) goto done;
    if (cur_opt(&B, args[3], 'i', 8, "rows", M.n, &rows) < 0) goto done;
    if (!(out = cur_arg(&B, args[4], 'f', 8, 1, "out", nc))) goto done;
    M.rows = rows;
    if (check_rows(M.rows, M.n) < 0 || check_lim(lim, M.n) < 0) goto done;
    for (int64_t q = 0; q < nc; q++)
        if (cols[q] < 0 || cols[q] >= ncols) { PyErr_SetString(PyExc_IndexError, "column index out of range"); goto done; }
    double *col = malloc(sizeof(double) * (size_t)(M.n + 1));
    if (!col) { PyErr_NoMemory(); goto done; }
    Py_BEGIN_ALLOW_THREADS
    for (int64_t q = 0; q < nc; q++) {
        for (int64_t j = 0; j < M.n; j++) col[j] = M.X[(M.rows ? M.rows[j] : j) * M.ld + cols[q]];
        int64_t tot = 0;
        for (int64_t k = 0; k < M.n; k++)
            for (int64_t i = 0; i < lim[k]; i++) tot += (col[k] > col[i]) - (col[k] < col[i]);
        out[q] = (double)tot;
    }
    Py_END_ALLOW_THREADS
    free(col);
    res = Py_NewRef(Py_None);
done:
    cur_release(&B);
    PyBuffer_Release(&xv);
    return res;
}

/* weighted_sum(X, coef, c0, c1, out) -> bad (0/1): out[d] = sum_k coef_k X[k, d]. */
static PyObject *py_weighted_sum(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (cur_nargs(nargs, 5, "weighted_sum") < 0) return NULL;
    Py_buffer xv;
    mat_t M;
    int64_t ncols, c0, c1;
    if (get_matrix(args[0], &xv, &M, &ncols) < 0) return NULL;
    cur_bufs B = {.n = 0};
    PyObject *res = NULL;
    const double *coef; double *out;
    if (!(coef = cur_arg(&B, args[1], 'f', 8, 0, "coef", M.n))) goto done;
    if (cur_int(args[2], &c0, "c0") < 0 || cur_int(args[3], &c1, "c1") < 0 || check_range(c0, c1, ncols) < 0) goto done;
    if (!(out = cur_arg(&B, args[4], 'f', 8, 1, "out", ncols))) goto done;
    int64_t bad;
    wsum_fn fn = K.wsum;
    Py_BEGIN_ALLOW_THREADS
    bad = fn(&M, c0, c1, coef, out);
    Py_END_ALLOW_THREADS
    res = PyLong_FromLongLong(bad);
done:
    cur_release(&B);
    PyBuffer_Release(&xv);
    return res;
}

static PyObject *py_network_size(PyObject *self, PyObject *arg) {
    (void)self;
    int64_t n;
    if (cur_int(arg, &n, "n") < 0) return NULL;
    if (n < 0 || n > MAX_MODELS) { PyErr_SetString(PyExc_ValueError, "n out of range"); return NULL; }
    return PyLong_FromLongLong(make_network(n, NULL));
}

static PyMethodDef METHODS[] = {
    {"rank_sums_sort", (PyCFunction)(void (*)(void))py_rank_sums_sort, METH_FASTCALL,
     "rank_sums_sort(X, w, c0, c1, out, flag) -> bad: sum_k w_k #{i: x_i < x_k} per domain, by sorting networks."},
    {"rank_sums_keys", (PyCFunction)(void (*)(void))py_rank_sums_keys, METH_FASTCALL,
     "rank_sums_keys(X, w, c0, c1, out, flag) -> bad: as rank_sums_sort with packed 32-bit keys; flags near-ties too."},
    {"pairs", (PyCFunction)(void (*)(void))py_pairs, METH_FASTCALL,
     "pairs(X, lim, w, rows, c0, c1, out, flag) -> bad: sum_k sum_{i<lim[k]} (w_k - w_i)[x_i < x_k] per domain."},
    {"sign_pairs_f64", (PyCFunction)(void (*)(void))py_sign_pairs_f64, METH_FASTCALL,
     "sign_pairs_f64(X, cols, lim, rows, out): exact sum_k sum_{i<lim[k]} sign(x_k - x_i) for the domains cols."},
    {"weighted_sum", (PyCFunction)(void (*)(void))py_weighted_sum, METH_FASTCALL,
     "weighted_sum(X, coef, c0, c1, out) -> bad: sum_k coef_k X[k, d] per domain, X read once."},
    {"network_size", (PyCFunction)py_network_size, METH_O, "network_size(n) -> compare-exchanges of the sort network."},
    CUR_PATH_METHODS
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_pplcorr", "Perplexity-correlation kernels (see kernels.py).",
                                    -1, METHODS, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__pplcorr(void) {
    select_path(cur_best_path());
    PyObject *m = PyModule_Create(&MODULE);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "ABI", ABI_VERSION) < 0 || PyModule_AddIntConstant(m, "MAX_MODELS", MAX_MODELS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
