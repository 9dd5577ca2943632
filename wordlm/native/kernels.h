/* What kernels.c (the arithmetic contract, portable C, the drivers), entry.c (dispatch, entry points), kernels_x86.c (AVX2,
 * AVX-512 VNNI) and kernels_arm.c (NEON, dot product, I8MM) share: the blocking constants, the running log-sum-exp, and the table of one
 * instruction set's kernels. A new architecture is one more file that fills a wl_kernels table. */
#ifndef WORDLM_KERNELS_H
#define WORDLM_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "wordlm.h" /* WL_FINE, WL_CODES4, wl_packed */

#if defined(__x86_64__) || defined(__i386__)
#define WL_X86 1
#elif defined(__aarch64__) /* Linux, Android and macOS on ARM64 */
#define WL_ARM64 1
#endif

/* shared between the files of the library, not exported from it (ctypes sees only the wl_ entry points) */
#define WL_INTERNAL __attribute__((visibility("hidden")))

#define NR 16  /* rows of W per panel (two AVX2 registers of 8 int32) */
#define MR 5   /* rows of x per micro-kernel call (25 = 5 x 5 for the tutorial's bptt) */
#define NB 512 /* words per block of the running log-sum-exp (a block of logits stays in L1; 256 cost ~2%
                * more on the VNNI decoder, its per-block reductions, and no less on AVX2: 2026-12-05) */
#define UNIT_BLOCK 32 /* hidden units per block of the recurrent layers' partition (kernels.c says why) */

/* The running log-sum-exp of one row: sum of exp(z - max) over the logits folded in so far. */
typedef struct {
    float max;
    double sum;
} lse_t;

/* a block's max above the running one: rescale the sum to the new max */
static inline void lse_raise_max(lse_t *l, float bmax) {
    if (bmax > l->max) {
        l->sum *= exp((double)l->max - (double)bmax);
        l->max = bmax;
    }
}

typedef void (*wl_qgemm_fn)(const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                            const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                            const float *bias, float *z, int64_t ldz);

/* One instruction set's kernels; every one computes the same GEMMs bit for bit (kernels.c says how).
 *  quantize: x[m, k] -> 7-bit codes u[m, k], scale[m], zero point zp[m];
 *  qgemm:    rows (<= MR) of codes x `panels` panels of W -> z[r * ldz + j], j < panels * NR;
 *  lse_block: fold the logits z[0..len) (any len >= 1) into l;
 *  cell:     the LSTM cell of one batch row: gates g[4H] (i, f, g, o) -> h, c [H] in place;
 *  qgemm4:   qgemm for weights whose codes are all within [-8, 7] (WL_CODES4), or NULL where qgemm is
 *            as fast for them (the same integers either way);
 *  gemv_nibbles: qgemm of one row (rows = 1) against panels of nibbles (WL_NIBBLES: kernels.c), read as
 *            they are, or NULL; more rows (or none of its own) unpack the nibbles, block by block, for
 *            qgemm4 (or qgemm);
 *  unpack:   panels of nibbles -> the int8 layout (unpack_body);
 *  weights, max: the sampler's (sample.h: weights_body, max_body).
 * The last three are plain C, compiled once per table so that forcing a table tests its own. */
typedef struct {
    void (*quantize)(const float *x, int64_t m, int64_t k, uint8_t *u, float *scale, int32_t *zp);
    wl_qgemm_fn qgemm;
    void (*lse_block)(lse_t *l, const float *z, int64_t len);
    void (*cell)(const float *g, int64_t hidden, float *h, float *c);
    wl_qgemm_fn qgemm4;
    wl_qgemm_fn gemv_nibbles;
    void (*unpack)(const int8_t *nib, int64_t panels, int64_t k, int8_t *out);
    void (*weights)(const float *z, int64_t n, float zmax, float inv_t, float *w, double *sums);
    float (*max)(const float *z, int64_t n);
} wl_kernels;

/* the bytes of one panel of nibbles (kernels.c): 64 per pair of groups of 4 inputs, an odd last one
 * padded */
static inline int64_t wl_nibble_panel_bytes(int64_t k) { return 64 * ((k / 4 + 1) / 2); }

/* panels [0, panels) of nibbles (WL_NIBBLES: kernels.c) -> the int8 layout in out (panels * k * NR bytes):
 * a table's `unpack` (GCC vectorizes the loops as wide as the table's registers) */
static inline __attribute__((always_inline)) void unpack_body(const int8_t *nib, int64_t panels, int64_t k,
                                                              int8_t *out) {
    int64_t groups = k / 4;
    for (int64_t p = 0; p < panels; p++) {
        const uint8_t *in = (const uint8_t *)nib + p * wl_nibble_panel_bytes(k);
        int8_t *o = out + p * k * NR;
        for (int64_t g = 0; g < groups; g += 2, in += 64) {
            for (int i = 0; i < 64; i++) o[g * 64 + i] = (int8_t)((in[i] & 15) - 8);
            if (g + 1 < groups)
                for (int i = 0; i < 64; i++) o[(g + 1) * 64 + i] = (int8_t)((in[i] >> 4) - 8);
        }
    }
}

/* the GEMM of a table for a matrix of these flags (wordlm.h) */
static inline wl_qgemm_fn wl_qgemm_for(const wl_kernels *k, int64_t flags) {
    return (flags & WL_CODES4) && k->qgemm4 ? k->qgemm4 : k->qgemm;
}

/* 4 floats in GCC's (and clang's) vector types: a plain loop of `a < b ? a : b` stays scalar (GCC does
 * not reorder a float min or max without -ffast-math), one compare after another at their latency.
 * 16 bytes, which every target has (SSE2, NEON): GCC 12 splits a wider type into scalars, not
 * registers, wherever the target's registers are narrower than it (a 64-byte max ran scalar on AVX2) */
typedef float wl_f32x4 __attribute__((vector_size(16)));
typedef int32_t wl_i32x4 __attribute__((vector_size(16)));

/* *a = max(*a, z[0, 4)), or (lower) min, lane by lane; a NaN in z is passed over, as by `z > a ? z : a`
 * (by pointer: a vector passed by value changes the ABI per target) */
static inline __attribute__((always_inline)) void wl_vext4(wl_f32x4 *a, const float *z, const int lower) {
    wl_f32x4 v;
    memcpy(&v, z, sizeof v);
    wl_i32x4 take = lower ? v < *a : v > *a;
    *a = (wl_f32x4)((take & (wl_i32x4)v) | (~take & (wl_i32x4)*a));
}

/* min(0, row[0..k)) and max(0, ...): 4 chains of running minima and maxima, 4 lanes each, then theirs
 * and the tail's; min and max are exact, so this is a one-at-a-time loop's answer (the LSTM's per-step
 * quantization of h spent ~9% of its time in that loop's chain of compares) */
static inline __attribute__((always_inline)) void range_body(const float *row, int64_t k, float *lo, float *hi) {
    wl_f32x4 l[4] = {{0.f}}, h[4] = {{0.f}};
    int64_t i = 0;
    for (; i + 16 <= k; i += 16)
        for (int r = 0; r < 4; r++) wl_vext4(&l[r], row + i + 4 * r, 1), wl_vext4(&h[r], row + i + 4 * r, 0);
    float a = 0.f, b = 0.f;
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < 4; j++) a = l[r][j] < a ? l[r][j] : a, b = h[r][j] > b ? h[r][j] : b;
    for (; i < k; i++) a = row[i] < a ? row[i] : a, b = row[i] > b ? row[i] : b;
    *lo = a, *hi = b;
}

/* x[m, k] -> u[m, k] (7-bit codes), scale[m], zp[m]: one body, compiled once per instruction set
 * (vroundps is the same rint as nearbyintf, so the codes are identical) */
static inline __attribute__((always_inline)) void quantize_body(const float *x, int64_t m, int64_t k, uint8_t *u,
                                                                float *scale, int32_t *zp) {
    for (int64_t r = 0; r < m; r++) {
        const float *row = x + r * k;
        float lo, hi;
        range_body(row, k, &lo, &hi);
        float s = (hi - lo) / 127.f;
        if (!(s > 0.f)) s = 1.f;
        float inv = 1.f / s;
        float z = nearbyintf(-lo * inv);
        int32_t zpi = (int32_t)(z < 0.f ? 0.f : (z > 127.f ? 127.f : z));
        for (int64_t i = 0; i < k; i++) {
            float v = nearbyintf(row[i] * inv) + (float)zpi;
            u[r * k + i] = (uint8_t)(v < 0.f ? 0.f : (v > 127.f ? 127.f : v));
        }
        scale[r] = s;
        zp[r] = zpi;
    }
}

/* kernels.c: the portable kernels; the vector cells fall back to wl_cell_c for H not a multiple of their
 * width (8 on x86, 4 on ARM) */
WL_INTERNAL extern const wl_kernels wl_kernels_portable;
WL_INTERNAL void wl_cell_c(const float *g, int64_t hidden, float *h, float *c);

/* kernels.c: the decoder and the recurrent stack on table `kern` (wordlm.h's wl_decoder_nll and
 * wl_rnn, whose isa entry.c resolves to a table), and the cell table by number */
WL_INTERNAL int wl_decoder_run(const wl_kernels *kern, const float *x, int64_t m, int64_t k, const int8_t *wp,
                               int64_t n, int64_t n_pad, const float *wscale, const int32_t *wsum, const float *bias,
                               int flags, const int64_t *targets, float *nll, float *logits, float *lse, int threads,
                               void *scratch, size_t scratch_bytes);
WL_INTERNAL int wl_rnn_run(const wl_kernels *kern, int cell, const float *x, int64_t steps, int64_t batch,
                           int64_t in_dim, int64_t hidden, int64_t proj, int64_t layers, const wl_packed *w, float *h,
                           float *c, float *y, int threads, void *scratch, size_t scratch_bytes);
/* sample.c: wordlm.h's wl_sample on table `kern` */
WL_INTERNAL int64_t wl_sample_run(const wl_kernels *kern, const float *z, int64_t n, float zmax, float inv_t,
                                  double u, float *w, double *sums);
WL_INTERNAL int wl_cell_count(void);
WL_INTERNAL int wl_cell_row(int cell, const char **name, int64_t *gates, int *has_c, int *projection);

#ifdef WL_X86
/* kernels_x86.c */
WL_INTERNAL extern const wl_kernels wl_kernels_avx2, wl_kernels_avx512_vnni;
WL_INTERNAL int wl_x86_best_isa(void); /* 2: AVX-512 VNNI, 1: AVX2 (with FMA), 0: neither */
#endif

#ifdef WL_ARM64
/* kernels_arm.c */
WL_INTERNAL extern const wl_kernels wl_kernels_neon, wl_kernels_dotprod, wl_kernels_i8mm;
WL_INTERNAL int wl_arm_best_isa(void); /* 3: I8MM (with SDOT), 2: SDOT, 1: Advanced SIMD, 0: none */
#endif

#endif
