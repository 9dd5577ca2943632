/* Drawing the next word from logits at a temperature: generation's last step, at batch 1.
 *
 * numpy's exp over 33,278 float32 logits is scalar on AVX2 machines (~95 us, longer than the model's
 * step); here the weights w[i] = exp((z[i] - max) / T) come from a branch-free polynomial that the
 * compiler vectorizes (a table's `weights`: sample.h), summed per block of 256 words; the draw is an
 * inverse CDF: the block, then the word within it. The max is vectorized too (a table's `max`: a
 * scalar loop over the logits took ~30 us, as long as the exps). ~15 us in all.
 */
#include "sample.h"

/* The word i with cdf[i-1] <= u * total < cdf[i] under the weights above, for u in [0, 1);
 * w: scratch of n floats, sums: scratch of n / 256 + 1 doubles. zmax must be max(z). Returns -1
 * for bad arguments (a NULL table: a kernel this CPU does not run). */
int64_t wl_sample_run(const wl_kernels *kern, const float *z, int64_t n, float zmax, float inv_t, double u, float *w,
                      double *sums) {
    if (!kern || n < 1 || !(inv_t > 0.f) || !(u >= 0.0 && u < 1.0)) return -1;
    kern->weights(z, n, zmax, inv_t, w, sums);
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
