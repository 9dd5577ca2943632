/* wordlm's native C API: what the Python extension calls through ctypes (wordlm/native/__init__.py) and
 * what the C harness of tests/arm calls directly. One declaration of each, so that a changed signature
 * breaks the build of both instead of the harness calling an old one. */
#ifndef WORDLM_NATIVE_API_H
#define WORDLM_NATIVE_API_H

#include <stdint.h>

/* a matrix's flags (wl_packed.flags, wl_decoder_nll's flags): WL_FINE, its inputs as two 7-bit codes,
 * the code and its residual's (kernels.c); WL_CODES4, every code within [-8, 7] (int4 weights), which
 * lets a kernel add more products in int16 before widening (kernels_x86.c) with the same sums;
 * WL_NIBBLES (with WL_CODES4; the decoder's only): the panels hold two codes a byte (kernels.c) */
#define WL_FINE 1
#define WL_CODES4 2
#define WL_NIBBLES 4

/* one packed matrix as the decoder takes it: codes in panels (64-byte aligned) and per row [n_pad] the
 * scale, code sum and bias, and its flags (wordlm.native.PackedLinear) */
typedef struct {
    const int8_t *panels;
    const float *scale;
    const int32_t *sum;
    const float *bias;
    int64_t flags;
} wl_packed;

int wl_decoder_nll(const float *x, int64_t m, int64_t k, const int8_t *wp, int64_t n, int64_t n_pad,
                   const float *wscale, const int32_t *wsum, const float *bias, int flags, const int64_t *targets,
                   float *nll, float *logits, float *lse, int isa, int threads);
int wl_rnn(int cell, const float *x, int64_t steps, int64_t batch, int64_t in_dim, int64_t hidden, int64_t proj,
           int64_t layers, const wl_packed *w, float *h, float *c, float *y, int isa, int threads);
int wl_unit_block(void);
int wl_best_isa(void);
const char *wl_isa_name(int isa);
/* the recurrent cells by number (wl_rnn's `cell`): the name wordlm/cells.py's registry gives as the
 * cell's `kernel`, NULL past the last; its gate rows per unit, whether it has c and takes a projection */
const char *wl_cell_name(int cell);
int wl_cell_info(int cell, int64_t *gates, int *has_c, int *projection);
int64_t wl_sample(const float *z, int64_t n, float zmax, float inv_t, double u, float *w, double *sums);

#endif
