/* Shared by curate's compiled kernels (filters/minhash/csrc, scorers/ppl_corr/csrc):
 *
 * - CPU dispatch: every kernel that gains from wider vectors is compiled several times in one
 *   build (a generic version for the baseline ISA, plus AVX2 and AVX-512 versions on x86-64, each
 *   with a target pragma), and the extension picks one at import with __builtin_cpu_supports. So
 *   one wheel, built without -march=native, runs at full width on any x86-64 CPU. aarch64 has NEON
 *   in its baseline, so the generic version there is the NEON one.
 * - Arguments: NumPy arrays (or any buffer) checked for item kind, size, contiguity and
 *   writability, so a wrong dtype is a TypeError and never a crash.
 *
 * Every path computes exactly the same numbers: kernels use integer arithmetic, float
 * comparisons, or float sums in a fixed order, and the build passes -ffp-contract=off so no
 * path fuses a multiply-add that another path rounds twice.
 */
#ifndef CURATE_NATIVE_H
#define CURATE_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define CUR_X86 1
#include <immintrin.h>
#else
#define CUR_X86 0
#endif

/* Paths, widest last. On x86-64: generic (SSE2 baseline), AVX2, AVX-512; elsewhere one path. */
enum { CUR_PATH_GENERIC = 0, CUR_PATH_AVX2 = 1, CUR_PATH_AVX512 = 2 };

#if defined(__aarch64__) || defined(_M_ARM64)
#define CUR_GENERIC_NAME "neon"
#else
#define CUR_GENERIC_NAME "scalar"
#endif

static const char *const cur_path_names[3] = {CUR_GENERIC_NAME, "avx2", "avx512"};

/* The widest path this CPU (and OS: gcc's check includes the XSAVE state) supports. */
static int cur_best_path(void) {
#if CUR_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        return CUR_PATH_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt"))
        return CUR_PATH_AVX2;
#endif
    return CUR_PATH_GENERIC;
}

/* Python: paths() -> tuple of the path names this CPU supports, narrowest first. */
static inline PyObject *cur_py_paths(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    int best = cur_best_path();
    PyObject *t = PyTuple_New(best + 1);
    if (!t) return NULL;
    for (int i = 0; i <= best; i++) {
        PyObject *s = PyUnicode_FromString(cur_path_names[i]);
        if (!s) { Py_DECREF(t); return NULL; }
        PyTuple_SET_ITEM(t, i, s);
    }
    return t;
}

/* The path name -> its index, -1 (with ValueError) when this CPU cannot run it. */
static inline int cur_path_index(PyObject *name) {
    const char *s = PyUnicode_AsUTF8(name);
    if (!s) return -1;
    int best = cur_best_path();
    for (int i = 0; i <= best; i++)
        if (strcmp(s, cur_path_names[i]) == 0) return i;
    PyErr_Format(PyExc_ValueError, "SIMD path %R is not available on this CPU", name);
    return -1;
}

#ifdef CUR_DISPATCH
/* A module with SIMD paths defines these two before including this header. */
static void cur_select(int path);
static int cur_current(void);

/* Python: set_path(name) and path(). */
static PyObject *cur_py_set_path(PyObject *self, PyObject *name) {
    (void)self;
    const int p = cur_path_index(name);
    if (p < 0) return NULL;
    cur_select(p);
    return Py_NewRef(Py_None);
}

static PyObject *cur_py_path(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    return PyUnicode_FromString(cur_path_names[cur_current()]);
}

#define CUR_PATH_METHODS                                                                          \
    {"paths", (PyCFunction)cur_py_paths, METH_NOARGS, "paths() -> the SIMD paths this CPU supports, narrowest first."}, \
    {"set_path", (PyCFunction)cur_py_set_path, METH_O, "set_path(name): use this SIMD path (results never change)."}, \
    {"path", (PyCFunction)cur_py_path, METH_NOARGS, "path() -> the SIMD path in use."},
#endif

/* --- arguments ----------------------------------------------------------------------------- */

/* kind: 'u' unsigned int, 'i' signed int, 'f' float, 'b' one byte of any kind (uint8/int8/bool). */
static inline int cur_format_ok(const Py_buffer *v, char kind, Py_ssize_t itemsize) {
    if (v->itemsize != itemsize) return 0;
    const char *f = v->format ? v->format : "B";
    while (*f == '@' || *f == '=' || *f == '<') f++;
    if (f[0] == 0 || f[1] != 0) return 0;
    switch (kind) {
    case 'b': return strchr("bBc?", f[0]) != NULL;
    case 'u': return strchr("BHILQN", f[0]) != NULL;
    case 'i': return strchr("bhilqn", f[0]) != NULL;
    case 'f': return strchr("efd", f[0]) != NULL;
    default: return 0;
    }
}

/* A C-contiguous buffer of `kind`/`itemsize` items (writable when asked). Returns 0 or -1 with
   TypeError/ValueError set. The caller releases it with PyBuffer_Release. */
static inline int cur_get(PyObject *obj, Py_buffer *v, char kind, Py_ssize_t itemsize, int writable, const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, v, flags) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous%s array", name, writable ? " writable" : "");
        return -1;
    }
    if (!cur_format_ok(v, kind, itemsize)) {
        PyErr_Format(PyExc_TypeError, "%s has item format '%s' (size %zd); expected a %zd-byte %s", name,
                     v->format ? v->format : "B", v->itemsize, itemsize,
                     kind == 'u' ? "unsigned integer" : kind == 'i' ? "signed integer" : kind == 'f' ? "float" : "byte");
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

static inline Py_ssize_t cur_len(const Py_buffer *v) { return v->len / v->itemsize; }

/* Buffers held by one call; released together. */
#define CUR_MAX_BUFS 24
typedef struct { Py_buffer v[CUR_MAX_BUFS]; int n; } cur_bufs;

static inline void *cur_arg(cur_bufs *b, PyObject *obj, char kind, Py_ssize_t itemsize, int writable, const char *name,
                     Py_ssize_t min_len) {
    if (b->n >= CUR_MAX_BUFS) { PyErr_SetString(PyExc_RuntimeError, "too many buffers"); return NULL; }
    Py_buffer *v = &b->v[b->n];
    if (cur_get(obj, v, kind, itemsize, writable, name) < 0) return NULL;
    b->n++;
    if (cur_len(v) < min_len) {
        PyErr_Format(PyExc_ValueError, "%s has %zd items; at least %zd needed", name, cur_len(v), min_len);
        return NULL;
    }
    /* a zero-length buffer may have a NULL pointer: hand out a valid one */
    static int64_t empty[1];
    return v->len ? v->buf : (void *)empty;
}

/* Optional array argument: None gives NULL (and no error). */
static inline int cur_opt(cur_bufs *b, PyObject *obj, char kind, Py_ssize_t itemsize, const char *name, Py_ssize_t min_len,
                   void **out) {
    if (obj == Py_None) { *out = NULL; return 0; }
    *out = cur_arg(b, obj, kind, itemsize, 0, name, min_len);
    return *out ? 0 : -1;
}

static inline void cur_release(cur_bufs *b) {
    for (int i = 0; i < b->n; i++) PyBuffer_Release(&b->v[i]);
    b->n = 0;
}

static inline int cur_int(PyObject *o, int64_t *out, const char *name) {
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be an integer", name);
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

static inline int cur_nargs(Py_ssize_t nargs, Py_ssize_t want, const char *fn) {
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", fn, want, nargs);
        return -1;
    }
    return 0;
}

/* Target pragmas around a block of functions (gcc and clang spell them differently). */
#if defined(__clang__)
#define CUR_PRAGMA(x) _Pragma(#x)
#define CUR_TARGET_AVX2_BEGIN CUR_PRAGMA(clang attribute push(__attribute__((target("avx2,fma,bmi,bmi2,popcnt"))), apply_to = function))
#define CUR_TARGET_AVX512_BEGIN CUR_PRAGMA(clang attribute push(__attribute__((target("avx2,fma,bmi,bmi2,popcnt,avx512f,avx512dq,avx512bw,avx512vl,avx512cd"))), apply_to = function))
#define CUR_TARGET_END CUR_PRAGMA(clang attribute pop)
#elif defined(__GNUC__)
#define CUR_PRAGMA(x) _Pragma(#x)
#define CUR_TARGET_AVX2_BEGIN CUR_PRAGMA(GCC push_options) CUR_PRAGMA(GCC target("avx2,fma,bmi,bmi2,popcnt"))
#define CUR_TARGET_AVX512_BEGIN CUR_PRAGMA(GCC push_options) \
    CUR_PRAGMA(GCC target("avx2,fma,bmi,bmi2,popcnt,avx512f,avx512dq,avx512bw,avx512vl,avx512cd"))
#define CUR_TARGET_END CUR_PRAGMA(GCC pop_options)
#endif

#define CUR_CAT_(a, b) a##b
#define CUR_CAT(a, b) CUR_CAT_(a, b)

#endif
