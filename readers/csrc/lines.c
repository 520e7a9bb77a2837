/* Line scanning for the JSON Lines reader (readers/jsonl.py): one memchr pass over a block.
 *
 * line_scan(block) -> (newlines, lines, longest, simple)
 *   newlines: number of 0x0A bytes in the block;
 *   lines:    number of lines (a last line without a newline counts when it is not empty);
 *   longest:  bytes of the longest line, newline excluded;
 *   simple:   1 when every line (the unterminated last one included) starts with '{', so none is
 *             blank and none starts with a byte order mark: line i is row i, and the reader can
 *             skip its per-line bookkeeping. 0 otherwise (the caller takes its general path).
 *
 * memchr is the C library's vectorised byte search (AVX2/AVX-512 in glibc, NEON on aarch64), so
 * this needs no SIMD versions of its own. The GIL is released during the scan.
 */
#include "curate_native.h"

#define ABI_VERSION 1

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
    int simple = 1;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t start = 0;
    while (start < len) {
        const uint8_t *nl = memchr(data + start, '\n', (size_t)(len - start));
        const Py_ssize_t end = nl ? (Py_ssize_t)(nl - data) : len;
        const int64_t n = (int64_t)(end - start);
        if (n > longest) longest = n;
        if (n == 0 || data[start] != '{') simple = 0;
        lines += n > 0 || nl != NULL;  /* blank lines are lines too; only an empty tail is not */
        if (!nl) break;
        newlines++;
        start = end + 1;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v);
    return Py_BuildValue("(LLLi)", (long long)newlines, (long long)lines, (long long)longest, simple);
}

static PyMethodDef METHODS[] = {
    {"line_scan", (PyCFunction)py_line_scan, METH_O,
     "line_scan(block) -> (newlines, lines, longest, simple): one pass over a JSON Lines block."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_lines", "Line scanning of the JSON Lines reader.", -1,
                                    METHODS, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__lines(void) {
    PyObject *m = PyModule_Create(&MODULE);
    if (m && PyModule_AddIntConstant(m, "ABI", ABI_VERSION) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
