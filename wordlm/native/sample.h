/* The sampler's arithmetic (sample.c draws the word): bodies that each table's file (kernels.c,
 * kernels_x86.c, kernels_arm.c) compiles once for its instruction set, as kernels.h's quantize_body,
 * so that forcing a kernel (WORDLM_ISA, the SIMDe build) tests each of them on any machine. Plain C
 * arithmetic without fused multiply-add: every table computes the same bits. */
#ifndef WORDLM_SAMPLE_H
#define WORDLM_SAMPLE_H

#include <stdint.h>
#include <string.h>

#include "kernels.h" /* wl_vext4 */

/* GCC keeps a float comparison as a branch, not a vector select, unless told that comparisons do not
 * trap (they do not here: the inputs are finite logits); no effect on the arithmetic */
#if defined(__GNUC__) && !defined(__clang__)
#define WL_SELECT __attribute__((optimize("no-trapping-math")))
#else
#define WL_SELECT
#endif

#define SAMPLE_BLOCK 256

/* exp(x) for x <= 0: 2^(x log2 e) = 2^n * 2^f with n = rint, f in [-0.5, 0.5] and a degree-6
 * polynomial for 2^f (~3 ulp); x below -87 is clamped (its weight ~1e-38: nothing next to the mode's 1) */
static inline __attribute__((always_inline)) float exp_nonpos(float x) {
    x = x < -87.f ? -87.f : x;
    float t = x * 1.44269504088896341f;
    float n = (t + 12582912.f) - 12582912.f; /* rint by 1.5 * 2^23: plain adds, so the loop vectorizes */
    float f = t - n;
    float p = 1.5353362e-4f;
    p = p * f + 1.3398874e-3f;
    p = p * f + 9.6181291e-3f;
    p = p * f + 5.5504109e-2f;
    p = p * f + 2.4022651e-1f;
    p = p * f + 6.9314718e-1f;
    p = p * f + 1.f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* w[i] = exp((z[i] - zmax) * inv_t); sums[b] = the sum of block b (8 lanes, then in double); a table's
 * `weights`, WL_SELECT */
static inline __attribute__((always_inline)) void weights_body(const float *z, int64_t n, float zmax, float inv_t,
                                                               float *w, double *sums) {
    for (int64_t i = 0; i < n; i++) w[i] = exp_nonpos((z[i] - zmax) * inv_t);
    for (int64_t b0 = 0, k = 0; b0 < n; b0 += SAMPLE_BLOCK, k++) {
        int64_t end = b0 + SAMPLE_BLOCK < n ? b0 + SAMPLE_BLOCK : n, i = b0;
        float lane[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        for (; i + 8 <= end; i += 8)
            for (int j = 0; j < 8; j++) lane[j] += w[i + j];
        double s = 0.0;
        for (int j = 0; j < 8; j++) s += lane[j];
        for (; i < end; i++) s += w[i];
        sums[k] = s;
    }
}

/* max(z[0, n)), n >= 1: 8 chains of 4 lanes of running maxima (kernels.h's vector types), then the
 * lanes' max and the tail's; a max is exact in any order; a table's `max` */
static inline __attribute__((always_inline)) float max_body(const float *z, int64_t n) {
    wl_f32x4 lane[8]; /* eight chains: one compare-and-select chain would wait on its own latency */
    int64_t i = 0;
    for (int r = 0; r < 8; r++)
        for (int j = 0; j < 4; j++) lane[r][j] = z[0];
    for (; i + 32 <= n; i += 32)
        for (int r = 0; r < 8; r++) wl_vext4(&lane[r], z + i + 4 * r, 0);
    float m = z[0];
    for (int r = 0; r < 8; r++)
        for (int j = 0; j < 4; j++) m = lane[r][j] > m ? lane[r][j] : m;
    for (; i < n; i++) m = z[i] > m ? z[i] : m;
    return m;
}

/* A table's plain-C kernels (kernels.h's unpack_body, the sampler's bodies above) compiled with `attr`
 * (a target attribute, or nothing): unpack_<suffix>, weights_<suffix>, max_<suffix> */
#define WL_PLAIN_KERNELS(suffix, attr)                                                                         \
    static attr void unpack_##suffix(const int8_t *nib, int64_t panels, int64_t k, int8_t *out) {               \
        unpack_body(nib, panels, k, out);                                                                       \
    }                                                                                                           \
    static attr WL_SELECT void weights_##suffix(const float *z, int64_t n, float zmax, float inv_t, float *w,   \
                                                double *sums) {                                                 \
        weights_body(z, n, zmax, inv_t, w, sums);                                                               \
    }                                                                                                           \
    static attr float max_##suffix(const float *z, int64_t n) { return max_body(z, n); }

#endif
