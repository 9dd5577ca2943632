/* The kernels' entry points (wordlm.h): the choice of a table of kernels by number (the ISA dispatch)
 * and the calls the Python package (through ctypes) and libwordlm's context (context.c) make. The
 * arithmetic and the drivers are in kernels.c, the tables in kernels.c (portable), kernels_x86.c and
 * kernels_arm.c: this file is the one that knows them all, so the includes form a tree. */
#ifndef WL_NO_PYTHON /* a C program or libwordlm.so links this file without Python */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif

#include "kernels.h"
#include "wordlm.h"

/* ---- the kernels by number: x86 0 portable C, 1 AVX2, 2 AVX-512 VNNI; ARM64 0 portable C, 1 NEON,
 * 2 dot product, 3 I8MM (wordlm.native's ISAS names them alike, and checks) ---- */

#if defined(WL_X86)
static const wl_kernels *const isa_tables[] = {&wl_kernels_portable, &wl_kernels_avx2, &wl_kernels_avx512_vnni};
static const char *const isa_names[] = {"portable", "avx2", "avx512-vnni"};
#elif defined(WL_ARM64)
static const wl_kernels *const isa_tables[] = {&wl_kernels_portable, &wl_kernels_neon, &wl_kernels_dotprod,
                                               &wl_kernels_i8mm};
static const char *const isa_names[] = {"portable", "neon", "dotprod", "i8mm"};
#else
static const wl_kernels *const isa_tables[] = {&wl_kernels_portable};
static const char *const isa_names[] = {"portable"};
#endif
#define ISA_COUNT ((int)(sizeof(isa_names) / sizeof(isa_names[0])))

static int best_isa(void) {
#if defined(WL_X86)
    return wl_x86_best_isa();
#elif defined(WL_ARM64)
    return wl_arm_best_isa();
#else
    return 0;
#endif
}

/* the table of kernel `isa`, or NULL when this CPU cannot run it: never a silent substitute */
static const wl_kernels *kernels_for(int isa) {
    if (isa < 0 || isa >= ISA_COUNT || isa > best_isa()) return NULL;
    return isa_tables[isa];
}

int wl_decoder_nll(const float *x, int64_t m, int64_t k, const int8_t *wp, int64_t n, int64_t n_pad,
                   const float *wscale, const int32_t *wsum, const float *bias, int flags, const int64_t *targets,
                   float *nll, float *logits, float *lse, int isa, int threads, void *scratch, size_t scratch_bytes) {
    return wl_decoder_run(kernels_for(isa), x, m, k, wp, n, n_pad, wscale, wsum, bias, flags, targets, nll, logits,
                          lse, threads, scratch, scratch_bytes);
}

int wl_rnn(int cell, const float *x, int64_t steps, int64_t batch, int64_t in_dim, int64_t hidden, int64_t proj,
           int64_t layers, const wl_packed *w, float *h, float *c, float *y, int isa, int threads, void *scratch,
           size_t scratch_bytes) {
    return wl_rnn_run(kernels_for(isa), cell, x, steps, batch, in_dim, hidden, proj, layers, w, h, c, y, threads,
                      scratch, scratch_bytes);
}

int64_t wl_sample(const float *z, int64_t n, float zmax, float inv_t, double u, float *w, double *sums, int isa) {
    return wl_sample_run(kernels_for(isa), z, n, zmax, inv_t, u, w, sums);
}

float wl_max(const float *z, int64_t n, int isa) {
    const wl_kernels *kern = kernels_for(isa);
    return kern && z && n >= 1 ? kern->max(z, n) : NAN;
}

/* the units per block of the recurrent layers' rows (wordlm.native checks that it orders them the same way) */
int wl_unit_block(void) { return UNIT_BLOCK; }

/* the best kernel this CPU runs, by number (x86: 2 AVX-512 VNNI, 1 AVX2; ARM64: 3 I8MM, 2 dot product,
 * 1 NEON; 0 portable C) */
int wl_best_isa(void) { return best_isa(); }

/* the name of kernel `isa` of this build's architecture, lowest first; NULL past the last */
const char *wl_isa_name(int isa) { return isa >= 0 && isa < ISA_COUNT ? isa_names[isa] : NULL; }

const char *wl_cell_name(int cell) {
    const char *name;
    int64_t gates;
    int has_c, projection;
    return wl_cell_row(cell, &name, &gates, &has_c, &projection) == 0 ? name : NULL;
}

int wl_cell_info(int cell, int64_t *gates, int *has_c, int *projection) {
    const char *name;
    return wl_cell_row(cell, &name, gates, has_c, projection);
}

#ifndef WL_NO_PYTHON
/* A Python module only so that the library is built and found like any extension; the functions
 * above are called through ctypes (wordlm/native/__init__.py). */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_kernels", .m_doc = "wordlm's native kernels",
                                    .m_size = -1};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
#endif
