"""C source of the perplexity-correlation kernels (kept in a .py file so it ships with the package).

``scorers.ppl_corr.kernels`` compiles it once per machine (``engines.native``) and calls it with
ctypes. Functions work on caller-allocated NumPy buffers and hold no global state, so calls from
several threads on disjoint column ranges run in parallel.

Layout: ``X`` is (N models, D domains) float64 with row stride ``ld`` (elements). A block of
``PC_BLOCK`` adjacent domains is copied row by row into a small buffer (N x 64 floats, L1-sized
for realistic N), so every SIMD lane is one domain and the model loops are plain scalar loops.

``pc_pairs_f32``: for each domain, over the model pairs (i, k) with i < lim[k] (in the order
given by ``rows``), ``out = sum (w[k] - w[i]) [x_i < x_k]`` (weight 1 when ``w`` is NULL),
comparing in float32, and ``flag = 1`` when some counted pair is equal in float32. Returns 1
when some value of X is negative, NaN or infinite (checked while copying, so the caller needs no
separate pass over X), -1 when out of memory, else 0. Rounding
to float32 is monotone, so a pair that is strictly ordered in float32 is ordered the same way
in float64: an unflagged domain's result is exactly the float64 one. Flagged domains (a float64
tie, or two values that only float32 merges) are recomputed exactly by the caller.
Partial sums are int32 per model k and accumulated in float64 (exact for integer weights).

``pc_sign_pairs_f64``: exact float64 ``sum_k sum_{i < lim[k]} sign(x_k - x_i)`` for a list of
domains (the recomputation of flagged domains for sign_sign; ties give 0).
"""

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <float.h>
#if defined(__AVX512F__) && defined(__AVX512DQ__) && !defined(PC_GENERIC)
#include <immintrin.h>
#define PC_AVX512 1
#endif

#define PC_BLOCK 64
#define PC_V (PC_BLOCK / 16)

typedef float pc_vf __attribute__((vector_size(64)));
typedef int32_t pc_vi __attribute__((vector_size(64)));

/* buf[j * PC_BLOCK + b] = (float) X[rows[j], c + b] for b < m, 0 for the padding lanes.
   Returns 1 when a value is negative, NaN or infinite (the caller then reports it). */
static int pc_load_f32(const double* X, int64_t ld, int64_t n, const int64_t* rows, int64_t c, int64_t m,
                       float* buf) {
    int bad = 0;
#ifdef PC_AVX512
    __mmask8 badk = 0;
#endif
    for (int64_t j = 0; j < n; j++) {
        const double* s = X + (rows ? rows[j] : j) * ld + c;
        float* d = buf + j * PC_BLOCK;
        if (m == PC_BLOCK) {
#ifdef PC_AVX512
            for (int b = 0; b < PC_BLOCK; b += 8) {
                const __m512d v = _mm512_loadu_pd(s + b);
                /* NaN (0x01, 0x80), +-inf (0x08, 0x10), negative finite (0x40); -0.0 is fine */
                badk |= _mm512_fpclass_pd_mask(v, 0xD9);
                _mm256_store_ps(d + b, _mm512_cvtpd_ps(v));
            }
#else
            for (int b = 0; b < PC_BLOCK; b++) {
                const double v = s[b];
                d[b] = (float)v;
                bad |= !((v >= 0.0) & (v <= DBL_MAX));
            }
#endif
        } else {
            int64_t b = 0;
            for (; b < m; b++) {
                const double v = s[b];
                d[b] = (float)v;
                bad |= !((v >= 0.0) & (v <= DBL_MAX));
            }
            for (; b < PC_BLOCK; b++) d[b] = 0.0f;
        }
    }
#ifdef PC_AVX512
    bad |= badk != 0;
#endif
    return bad;
}

int64_t pc_pairs_f32(const double* X, int64_t ld, int64_t n, const int64_t* rows, int64_t c0, int64_t c1,
                     const int64_t* lim, const int32_t* w, double* out, uint8_t* flag) {
    float* buf = aligned_alloc(64, (size_t)n * PC_BLOCK * sizeof(float));
    int32_t* dw = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    if (!buf || !dw) { free(buf); free(dw); return -1; }
    int bad = 0;
    for (int64_t c = c0; c < c1; c += PC_BLOCK) {
        const int64_t m = c1 - c < PC_BLOCK ? c1 - c : PC_BLOCK;
        bad |= pc_load_f32(X, ld, n, rows, c, m, buf);
        double acc[PC_BLOCK] __attribute__((aligned(64)));
        for (int b = 0; b < PC_BLOCK; b++) acc[b] = 0.0;
        int any_tie[PC_BLOCK];
#ifdef PC_AVX512
        __mmask16 neq[PC_V];
        for (int v = 0; v < PC_V; v++) neq[v] = 0xFFFF;
#else
        pc_vi eq[PC_V];
        for (int v = 0; v < PC_V; v++) eq[v] = (pc_vi){0};
#endif
        for (int64_t k = 0; k < n; k++) {
            const int64_t nk = lim[k];
            if (nk <= 0) continue;
            if (w) { for (int64_t i = 0; i < nk; i++) dw[i] = w[k] - w[i]; }
            else { for (int64_t i = 0; i < nk; i++) dw[i] = 1; }
            int32_t part[PC_BLOCK] __attribute__((aligned(64)));
#ifdef PC_AVX512
            __m512 xk[PC_V];
            __m512i a[PC_V];
            for (int v = 0; v < PC_V; v++) {
                xk[v] = _mm512_load_ps(buf + k * PC_BLOCK + 16 * v);
                a[v] = _mm512_setzero_si512();
            }
            for (int64_t i = 0; i < nk; i++) {
                const __m512i d = _mm512_set1_epi32(dw[i]);
                for (int v = 0; v < PC_V; v++) {
                    const __m512 xi = _mm512_load_ps(buf + i * PC_BLOCK + 16 * v);
                    const __mmask16 lt = _mm512_cmp_ps_mask(xi, xk[v], _CMP_LT_OQ);
                    a[v] = _mm512_mask_add_epi32(a[v], lt, a[v], d);
                    neq[v] = _mm512_mask_cmp_ps_mask(neq[v], xi, xk[v], _CMP_NEQ_UQ);
                }
            }
            for (int v = 0; v < PC_V; v++) _mm512_store_si512((void*)(part + 16 * v), a[v]);
#else
            const pc_vf* bv = (const pc_vf*)buf;
            pc_vf xk[PC_V];
            pc_vi a[PC_V];
            for (int v = 0; v < PC_V; v++) { xk[v] = bv[k * PC_V + v]; a[v] = (pc_vi){0}; }
            for (int64_t i = 0; i < nk; i++) {
                const int32_t d = dw[i];
                for (int v = 0; v < PC_V; v++) {
                    const pc_vf xi = bv[i * PC_V + v];
                    a[v] += (xi < xk[v]) & d;
                    eq[v] |= (xi == xk[v]);
                }
            }
            memcpy(part, a, sizeof part);
#endif
            for (int b = 0; b < PC_BLOCK; b++) acc[b] += (double)part[b];
        }
#ifdef PC_AVX512
        for (int b = 0; b < PC_BLOCK; b++) any_tie[b] = !((neq[b / 16] >> (b % 16)) & 1);
#else
        for (int b = 0; b < PC_BLOCK; b++) any_tie[b] = eq[b / 16][b % 16] != 0;
#endif
        for (int64_t b = 0; b < m; b++) {
            out[c + b] = acc[b];
            flag[c + b] = (uint8_t)any_tie[b];
        }
    }
    free(buf);
    free(dw);
    return bad;
}

#define PC_BLOCK_D 32
typedef double pc_vd __attribute__((vector_size(64)));
typedef int64_t pc_vl __attribute__((vector_size(64)));

int64_t pc_sign_pairs_f64(const double* X, int64_t ld, int64_t n, const int64_t* rows, const int64_t* cols,
                          int64_t ncols, const int64_t* lim, double* out) {
    double* buf = aligned_alloc(64, (size_t)n * PC_BLOCK_D * sizeof(double));
    if (!buf) return -1;
    const int V = PC_BLOCK_D / 8;
    for (int64_t c = 0; c < ncols; c += PC_BLOCK_D) {
        const int64_t m = ncols - c < PC_BLOCK_D ? ncols - c : PC_BLOCK_D;
        for (int64_t j = 0; j < n; j++) {
            const double* s = X + (rows ? rows[j] : j) * ld;
            double* d = buf + j * PC_BLOCK_D;
            int64_t b = 0;
            for (; b < m; b++) d[b] = s[cols[c + b]];
            for (; b < PC_BLOCK_D; b++) d[b] = 0.0;
        }
        const pc_vd* bv = (const pc_vd*)buf;
        pc_vl tot[PC_BLOCK_D / 8];
        for (int v = 0; v < V; v++) tot[v] = (pc_vl){0};
        for (int64_t k = 0; k < n; k++) {
            for (int64_t i = 0; i < lim[k]; i++) {
                for (int v = 0; v < V; v++) {
                    const pc_vd xi = bv[i * V + v], xk = bv[k * V + v];
                    tot[v] += (xi > xk) - (xi < xk);  /* masks are -1: [x_i < x_k] - [x_i > x_k] */
                }
            }
        }
        for (int64_t b = 0; b < m; b++) out[c + b] = (double)tot[b / 8][b % 8];
    }
    free(buf);
    return 0;
}
"""
