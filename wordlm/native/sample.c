/* Drawing the next word from logits at a temperature: generation's last step, at batch 1.
 *
 * numpy's exp over 33,278 float32 logits is scalar on AVX2 machines (~95 us, longer than the model's
 * step); here the weights w[i] = exp((z[i] - max) / T) come from a branch-free polynomial that the
 * compiler vectorizes (one clone per instruction set, picked by the loader), summed per block of
 * 256 words; the draw is an inverse CDF: the block, then the word within it. The max is vectorized
 * too (a scalar loop over the logits took ~30 us, as long as the exps). ~15 us in all.
 * Plain C arithmetic without fused multiply-add: every clone computes the same bits.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h" /* wl_vext4 */

#if defined(__x86_64__) && (defined(__clang__) || __GNUC__ >= 8)
#define WL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define WL_CLONES
#endif
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

/* w[i] = exp((z[i] - zmax) * inv_t); sums[b] = the sum of block b (8 lanes, then in double) */
WL_CLONES WL_SELECT static void weights(const float *z, int64_t n, float zmax, float inv_t, float *w, double *sums) {
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
 * lanes' max and the tail's; a max is exact in any order */
WL_CLONES float wl_max(const float *z, int64_t n) {
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

/* The word i with cdf[i-1] <= u * total < cdf[i] under the weights above, for u in [0, 1);
 * w: scratch of n floats, sums: scratch of n / 256 + 1 doubles. zmax must be max(z). Returns -1
 * for bad arguments. */
int64_t wl_sample(const float *z, int64_t n, float zmax, float inv_t, double u, float *w, double *sums) {
    if (n < 1 || !(inv_t > 0.f) || !(u >= 0.0 && u < 1.0)) return -1;
    weights(z, n, zmax, inv_t, w, sums);
    int64_t blocks = (n + SAMPLE_BLOCK - 1) / SAMPLE_BLOCK;
    double total = 0.0;
    for (int64_t k = 0; k < blocks; k++) total += sums[k];
    double target = u * total, acc = 0.0;
    int64_t k = 0;
    while (k < blocks - 1 && (acc + sums[k] <= target || sums[k] == 0.0)) acc += sums[k++];
    int64_t i = k * SAMPLE_BLOCK, end = i + SAMPLE_BLOCK < n ? i + SAMPLE_BLOCK : n, last = -1;
    for (; i < end; i++) {
        if (w[i] > 0.f) last = i;
        acc += w[i];
        if (acc > target && w[i] > 0.f) return i;
    }
    return last >= 0 ? last : k * SAMPLE_BLOCK; /* rounding at the block's end: its last word of weight > 0 */
}
