/* wordlm native kernels: int8 GEMMs for the LSTM and the decoder of evaluation, with the loss fused.
 *
 * The decoder: logits[m, n] = x[m, :] . W[n, :] + b[n] for M rows of LSTM output x and N = 33,278
 * words, then the negative log-likelihood of one target per row. Each block of logits goes to a small
 * buffer that stays in L1 and is folded into a running log-sum-exp, so the M x N logits never reach
 * memory and no separate log-softmax pass reads them back (benchmarks/quant.md).
 * The LSTM: one layer over all steps; the input projection of every step is one GEMM, then per step
 * the recurrent GEMM of the batch's h and the cell, vectorised.
 *
 * Arithmetic (the numpy reference in wordlm/native/__init__.py computes exactly the same GEMMs):
 * - weights: int8 codes q[n, k] in [-128, 127] with one float scale per row, packed by `pack_linear`
 *   into panels of 16 rows: [N/16][K/4][16][4] bytes;
 * - activations: per row, asymmetric 7-bit, u = clamp(rint(x * inv_s) + zp, 0, 127) with
 *   s = (max(x, 0) - min(x, 0)) / 127. Seven bits because the AVX2 int8 product (vpmaddubsw) adds
 *   pairs of u8 x s8 products in int16: 127 * 128 * 2 = 32,512 cannot saturate, where full u8
 *   activations could (the saturation ONNX Runtime documents for its AVX2 u8s8 kernels);
 * - acc = sum_k u * q - zp * sum_k q (exact, int32); y = (float)acc * (s * w_scale) + b, with no
 *   fused multiply-add (built with -ffp-contract=off), so every kernel and numpy agree bit for bit.
 *
 * Three kernels, the best the CPU has chosen at run time: AVX-512 VNNI, AVX2, portable C. The GEMMs
 * are identical; exp (in the log-sum-exp and the LSTM's sigmoid and tanh) is a polynomial in the
 * vector kernels and libm in C, ~1e-7 relative apart.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define WL_X86 1
#endif

#define NR 16  /* rows of W per panel (two AVX2 registers of 8 int32) */
#define MR 5   /* rows of x per micro-kernel call (25 = 5 x 5 for the tutorial's bptt) */
#define NB 256 /* words per block of the running log-sum-exp */

/* ---- activations ---- */

/* x[m, k] -> u[m, k] (7-bit codes), scale[m], zp[m] */
static inline __attribute__((always_inline)) void quantize_body(const float *x, int64_t m, int64_t k, uint8_t *u, float *scale, int32_t *zp) {
    for (int64_t r = 0; r < m; r++) {
        const float *row = x + r * k;
        float lo = 0.f, hi = 0.f;
        for (int64_t i = 0; i < k; i++) {
            lo = row[i] < lo ? row[i] : lo;
            hi = row[i] > hi ? row[i] : hi;
        }
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

static void quantize_rows_c(const float *x, int64_t m, int64_t k, uint8_t *u, float *scale, int32_t *zp) {
    quantize_body(x, m, k, u, scale, zp);
}

/* ---- the running log-sum-exp of one row over blocks of logits ---- */

typedef struct {
    float max;
    double sum; /* of exp(logit - max) */
    float target;
} lse_t;

static void lse_init(lse_t *l) {
    l->max = -INFINITY;
    l->sum = 0.0;
    l->target = NAN;
}

static void lse_finish(const lse_t *l, float *nll) { *nll = (float)(log(l->sum) + (double)l->max - l->target); }

/* a block's max above the running one: rescale the sum to the new max */
static void lse_raise_max(lse_t *l, float bmax) {
    if (bmax > l->max) {
        l->sum *= exp((double)l->max - (double)bmax);
        l->max = bmax;
    }
}

/* fold a block of logits z[0..len) into l */
static void lse_block_c(lse_t *l, const float *z, int64_t len) {
    float bmax = -INFINITY;
    for (int64_t i = 0; i < len; i++) bmax = z[i] > bmax ? z[i] : bmax;
    lse_raise_max(l, bmax);
    double s = 0.0;
    for (int64_t i = 0; i < len; i++) s += expf(z[i] - l->max);
    l->sum += s;
}

/* ---- portable kernel ---- */

static void qgemm_c(const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                    const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                    const float *bias, float *z /* [rows][panels * NR] */) {
    int64_t width = panels * NR;
    for (int64_t p = 0; p < panels; p++) {
        const int8_t *panel = wp + p * k * NR;
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t c = 0; c < NR; c++) {
                int32_t acc = 0;
                for (int64_t k4 = 0; k4 < k / 4; k4++)
                    for (int64_t j = 0; j < 4; j++)
                        acc += (int32_t)u[r * k + k4 * 4 + j] * (int32_t)panel[(k4 * NR + c) * 4 + j];
                int64_t n = p * NR + c;
                acc -= zp[r] * wsum[n];
                z[r * width + p * NR + c] = (float)acc * (ascale[r] * wscale[n]) + bias[n];
            }
        }
    }
}

static float sigmoid_c(float x) { return 1.f / (1.f + expf(-x)); }

static void cell_c(const float *g, int64_t hidden, float *h, float *c) {
    for (int64_t j = 0; j < hidden; j++) {
        float i = sigmoid_c(g[j]), f = sigmoid_c(g[hidden + j]), gg = tanhf(g[2 * hidden + j]);
        float o = sigmoid_c(g[3 * hidden + j]);
        c[j] = f * c[j] + i * gg;
        h[j] = o * tanhf(c[j]);
    }
}

/* ---- AVX2 kernel ---- */
#ifdef WL_X86

#define AVX2 __attribute__((target("avx2,fma")))

/* rows (<= MR) x 16 words: int32 dot products of 7-bit activations and int8 weights, then the
 * logits. The panel's 4 inputs x 16 words per 64 bytes meet one broadcast 4-byte group of each row. */
static inline AVX2 __attribute__((always_inline)) void micro(const uint8_t *u, int64_t k, const int8_t *panel,
                                                              const int rows, const float *ascale,
                                                              const int32_t *zp, const float *wscale,
                                                              const int32_t *wsum, const float *bias, float *z,
                                                              int64_t ldz) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[MR][2];
    for (int r = 0; r < rows; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t k4 = 0; k4 < k / 4; k4++) {
        __m256i w0 = _mm256_load_si256((const __m256i *)(panel + k4 * 64));
        __m256i w1 = _mm256_load_si256((const __m256i *)(panel + k4 * 64 + 32));
        for (int r = 0; r < rows; r++) {
            int32_t four;
            memcpy(&four, u + r * k + k4 * 4, 4);
            __m256i a = _mm256_set1_epi32(four);
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(a, w0), ones));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(a, w1), ones));
        }
    }
    for (int h = 0; h < 2; h++) {
        __m256 ws = _mm256_loadu_ps(wscale + 8 * h);
        __m256i sums = _mm256_loadu_si256((const __m256i *)(wsum + 8 * h));
        __m256 b = _mm256_loadu_ps(bias + 8 * h);
        for (int r = 0; r < rows; r++) {
            __m256i exact = _mm256_sub_epi32(acc[r][h], _mm256_mullo_epi32(_mm256_set1_epi32(zp[r]), sums));
            __m256 sc = _mm256_mul_ps(_mm256_set1_ps(ascale[r]), ws);
            __m256 out = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(exact), sc), b);
            _mm256_storeu_ps(z + r * ldz + 8 * h, out);
        }
    }
}

static AVX2 void qgemm_avx2(const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                            const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                            const float *bias, float *z) {
    int64_t width = panels * NR;
    for (int64_t p = 0; p < panels; p++) {
        const int8_t *panel = wp + p * k * NR;
        int64_t n = p * NR;
        /* constant row counts, so that the accumulators live in registers; 16 ymm registers hold 3
         * rows (5 spill: measured 2.76 against 2.49 ms for the tutorial's decoder) */
        switch (rows) {
        case 5:
            micro(u, k, panel, 3, ascale, zp, wscale + n, wsum + n, bias + n, z + n, width);
            micro(u + 3 * k, k, panel, 2, ascale + 3, zp + 3, wscale + n, wsum + n, bias + n, z + 3 * width + n,
                  width);
            break;
        case 4:
            micro(u, k, panel, 2, ascale, zp, wscale + n, wsum + n, bias + n, z + n, width);
            micro(u + 2 * k, k, panel, 2, ascale + 2, zp + 2, wscale + n, wsum + n, bias + n, z + 2 * width + n,
                  width);
            break;
        case 3: micro(u, k, panel, 3, ascale, zp, wscale + n, wsum + n, bias + n, z + n, width); break;
        case 2: micro(u, k, panel, 2, ascale, zp, wscale + n, wsum + n, bias + n, z + n, width); break;
        default: micro(u, k, panel, 1, ascale, zp, wscale + n, wsum + n, bias + n, z + n, width); break;
        }
    }
}

/* The same with AVX-512 VNNI (vpdpbusd: four u8 x s8 products summed into int32 in one instruction):
 * one 512-bit register holds a panel's 4 inputs x 16 words. */
#define VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

/* int32 sums of one row and 16 words -> its 16 outputs (the AVX2 kernel's epilogue, 16 lanes wide) */
static inline VNNI void epilogue_vnni(__m512i acc, float ascale, int32_t zp, const float *wscale,
                                      const int32_t *wsum, const float *bias, float *z) {
    __m512i exact = _mm512_sub_epi32(acc, _mm512_mullo_epi32(_mm512_set1_epi32(zp), _mm512_loadu_si512(wsum)));
    __m512 sc = _mm512_mul_ps(_mm512_set1_ps(ascale), _mm512_loadu_ps(wscale));
    _mm512_storeu_ps(z, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(exact), sc), _mm512_loadu_ps(bias)));
}

static inline VNNI __attribute__((always_inline)) void micro_vnni(const uint8_t *u, int64_t k, const int8_t *panel,
                                                                  const int rows, const float *ascale,
                                                                  const int32_t *zp, const float *wscale,
                                                                  const int32_t *wsum, const float *bias, float *z,
                                                                  int64_t ldz) {
    __m512i acc[MR];
    for (int r = 0; r < rows; r++) acc[r] = _mm512_setzero_si512();
    for (int64_t k4 = 0; k4 < k / 4; k4++) {
        __m512i w = _mm512_load_si512((const void *)(panel + k4 * 64));
        for (int r = 0; r < rows; r++) {
            int32_t four;
            memcpy(&four, u + r * k + k4 * 4, 4);
            acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_set1_epi32(four), w);
        }
    }
    for (int r = 0; r < rows; r++) epilogue_vnni(acc[r], ascale[r], zp[r], wscale, wsum, bias, z + r * ldz);
}

/* one row (the LSTM's recurrent step at batch 1): four panels at a time, so that four independent
 * vpdpbusd chains hide its latency and share each broadcast (one chain: 148 against 125 us for a
 * 25-step layer of the tutorial model, benchmarks/quant.md) */
static VNNI void gemv_vnni(const uint8_t *u, int64_t k, const int8_t *wp, int64_t panels, float ascale, int32_t zp,
                           const float *wscale, const int32_t *wsum, const float *bias, float *z) {
    int64_t p = 0, stride = k * NR;
    for (; p + 4 <= panels; p += 4) {
        const int8_t *w = wp + p * stride;
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t k4 = 0; k4 < k / 4; k4++) {
            int32_t four;
            memcpy(&four, u + k4 * 4, 4);
            __m512i a = _mm512_set1_epi32(four);
            a0 = _mm512_dpbusd_epi32(a0, a, _mm512_load_si512((const void *)(w + k4 * 64)));
            a1 = _mm512_dpbusd_epi32(a1, a, _mm512_load_si512((const void *)(w + stride + k4 * 64)));
            a2 = _mm512_dpbusd_epi32(a2, a, _mm512_load_si512((const void *)(w + 2 * stride + k4 * 64)));
            a3 = _mm512_dpbusd_epi32(a3, a, _mm512_load_si512((const void *)(w + 3 * stride + k4 * 64)));
        }
        int64_t n = p * NR;
        epilogue_vnni(a0, ascale, zp, wscale + n, wsum + n, bias + n, z + n);
        epilogue_vnni(a1, ascale, zp, wscale + n + 16, wsum + n + 16, bias + n + 16, z + n + 16);
        epilogue_vnni(a2, ascale, zp, wscale + n + 32, wsum + n + 32, bias + n + 32, z + n + 32);
        epilogue_vnni(a3, ascale, zp, wscale + n + 48, wsum + n + 48, bias + n + 48, z + n + 48);
    }
    for (; p < panels; p++) {
        int64_t n = p * NR;
        micro_vnni(u, k, wp + p * stride, 1, &ascale, &zp, wscale + n, wsum + n, bias + n, z + n, panels * NR);
    }
}

static VNNI void qgemm_vnni(const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                            const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                            const float *bias, float *z) {
    int64_t width = panels * NR;
    if (rows == 1) {
        gemv_vnni(u, k, wp, panels, *ascale, *zp, wscale, wsum, bias, z);
        return;
    }
    for (int64_t p = 0; p < panels; p++) {
        const int8_t *panel = wp + p * k * NR;
        int64_t n = p * NR;
        switch (rows) {
        case 5: micro_vnni(u, k, panel, 5, ascale, zp, wscale + n, wsum + n, bias + n, z + n, width); break;
        case 4: micro_vnni(u, k, panel, 4, ascale, zp, wscale + n, wsum + n, bias + n, z + n, width); break;
        case 3: micro_vnni(u, k, panel, 3, ascale, zp, wscale + n, wsum + n, bias + n, z + n, width); break;
        case 2: micro_vnni(u, k, panel, 2, ascale, zp, wscale + n, wsum + n, bias + n, z + n, width); break;
        default: micro_vnni(u, k, panel, 1, ascale, zp, wscale + n, wsum + n, bias + n, z + n, width); break;
        }
    }
}

/* exp for x <= 0 (a logit minus the running max): Cephes' range reduction and degree-6 polynomial,
 * ~2 ulp; inputs below -87 give 0. */
static inline AVX2 __m256 exp_avx2(__m256 x) {
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f), c1 = _mm256_set1_ps(0.693359375f),
                 c2 = _mm256_set1_ps(-2.12194440e-4f);
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_sub_ps(_mm256_sub_ps(x, _mm256_mul_ps(n, c1)), _mm256_mul_ps(n, c2));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline AVX2 float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline AVX2 float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static AVX2 void lse_block_avx2(lse_t *l, const float *z, int64_t len) { /* len: a multiple of 8 */
    __m256 vm = _mm256_set1_ps(-INFINITY);
    for (int64_t i = 0; i < len; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(z + i));
    float bmax = hmax(vm);
    lse_raise_max(l, bmax);
    __m256 m = _mm256_set1_ps(l->max), s = _mm256_setzero_ps();
    for (int64_t i = 0; i < len; i += 8) s = _mm256_add_ps(s, exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(z + i), m)));
    l->sum += (double)hsum(s);
}

/* exp(x) for x <= 0 with AVX-512: 2^t, t = x log2(e), as 2^frac(t) (a degree-6 polynomial) scaled
 * by 2^round(t) with vscalefps, which also takes care of t < -126 (0). ~3 ulp where it matters
 * (|x| < 20); 16 lanes and ~10 instructions, against ~17 for 8 lanes above. */
static inline VNNI __m512 exp512(__m512 x) {
    __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n); /* in [-0.5, 0.5] */
    __m512 p = _mm512_set1_ps(1.5353362e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3398874e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
}

static VNNI void lse_block_512(lse_t *l, const float *z, int64_t len) { /* len: a multiple of 16 */
    __m512 vm = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < len; i += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(z + i));
    float bmax = _mm512_reduce_max_ps(vm);
    lse_raise_max(l, bmax);
    __m512 m = _mm512_set1_ps(l->max), s = _mm512_setzero_ps();
    for (int64_t i = 0; i < len; i += 16) s = _mm512_add_ps(s, exp512(_mm512_sub_ps(_mm512_loadu_ps(z + i), m)));
    l->sum += (double)_mm512_reduce_add_ps(s);
}

/* the same code vectorised by the compiler (vroundps is exact rint: identical codes) */
static AVX2 void quantize_rows_avx2(const float *x, int64_t m, int64_t k, uint8_t *u, float *scale, int32_t *zp) {
    quantize_body(x, m, k, u, scale, zp);
}

static inline AVX2 __m256 sigmoid_avx2(__m256 x) { /* 1 / (1 + e^-x) from e = e^-|x| <= 1 */
    const __m256 one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
    __m256 e = exp_avx2(_mm256_sub_ps(zero, _mm256_andnot_ps(_mm256_set1_ps(-0.f), x)));
    __m256 r = _mm256_div_ps(one, _mm256_add_ps(one, e));
    return _mm256_blendv_ps(_mm256_mul_ps(e, r), r, _mm256_cmp_ps(x, zero, _CMP_GE_OQ));
}

static inline AVX2 __m256 tanh_avx2(__m256 x) { /* sign(x) (1 - e) / (1 + e), e = e^-2|x| */
    const __m256 one = _mm256_set1_ps(1.f);
    __m256 sign = _mm256_and_ps(x, _mm256_set1_ps(-0.f));
    __m256 e = exp_avx2(_mm256_mul_ps(_mm256_xor_ps(x, sign), _mm256_set1_ps(-2.f)));
    return _mm256_or_ps(_mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e)), sign);
}

/* the LSTM cell for one batch row: gates g[4H] in torch's order (i, f, g, o); h, c [H] updated */
static AVX2 void cell_avx2(const float *g, int64_t hidden, float *h, float *c) {
    for (int64_t j = 0; j < hidden; j += 8) {
        __m256 i = sigmoid_avx2(_mm256_loadu_ps(g + j)), f = sigmoid_avx2(_mm256_loadu_ps(g + hidden + j));
        __m256 gg = tanh_avx2(_mm256_loadu_ps(g + 2 * hidden + j)), o = sigmoid_avx2(_mm256_loadu_ps(g + 3 * hidden + j));
        __m256 cn = _mm256_add_ps(_mm256_mul_ps(f, _mm256_loadu_ps(c + j)), _mm256_mul_ps(i, gg));
        _mm256_storeu_ps(c + j, cn);
        _mm256_storeu_ps(h + j, _mm256_mul_ps(o, tanh_avx2(cn)));
    }
}

/* 2: AVX-512 VNNI, 1: AVX2, 0: portable C */
static int best_isa(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 0;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
        return 2;
    return 1;
}
#else
static int best_isa(void) { return 0; }
#endif

/* ---- dispatch ---- */

static void quantize_rows(int isa, const float *x, int64_t m, int64_t k, uint8_t *u, float *scale, int32_t *zp) {
#ifdef WL_X86
    if (isa) {
        quantize_rows_avx2(x, m, k, u, scale, zp);
        return;
    }
#endif
    quantize_rows_c(x, m, k, u, scale, zp);
}

/* rows (<= MR) of 7-bit codes x the panels of W -> z[rows][panels * NR] */
static void qgemm(int isa, const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                  const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum, const float *bias,
                  float *z) {
#ifdef WL_X86
    if (isa == 2) {
        qgemm_vnni(u, rows, k, wp, panels, ascale, zp, wscale, wsum, bias, z);
        return;
    }
    if (isa == 1) {
        qgemm_avx2(u, rows, k, wp, panels, ascale, zp, wscale, wsum, bias, z);
        return;
    }
#endif
    qgemm_c(u, rows, k, wp, panels, ascale, zp, wscale, wsum, bias, z);
}

/* out[m, n] = x[m, k] (quantized per row) . W^T + b, n a multiple of 16 (no padding); u, ascale, zp:
 * scratch for m rows */
static void qlinear(int isa, const float *x, int64_t m, int64_t k, const int8_t *wp, int64_t n, const float *wscale,
                    const int32_t *wsum, const float *bias, float *out, uint8_t *u, float *ascale, int32_t *zp) {
    quantize_rows(isa, x, m, k, u, ascale, zp);
    for (int64_t r0 = 0; r0 < m; r0 += MR) {
        int64_t rows = m - r0 < MR ? m - r0 : MR;
        qgemm(isa, u + r0 * k, rows, k, wp, n / NR, ascale + r0, zp + r0, wscale, wsum, bias, out + r0 * n);
    }
}

static void cell(int isa, const float *g, int64_t hidden, float *h, float *c) {
#ifdef WL_X86
    if (isa && hidden % 8 == 0) {
        cell_avx2(g, hidden, h, c);
        return;
    }
#endif
    cell_c(g, hidden, h, c);
}

static int pick_isa(int isa) {
    int best = best_isa();
    return isa < best ? isa : best;
}

/* ---- the exported entry points (called through ctypes) ---- */

/* the best kernel this CPU runs: 2 AVX-512 VNNI, 1 AVX2, 0 portable C */
int wl_best_isa(void) { return best_isa(); }

/* NLL of targets[m] after the decoder, and (when logits != NULL) the logits [m, n] themselves.
 * wp: packed weights (n_pad = panels * 16 rows, 64-byte aligned); wscale, wsum, bias: [n_pad] with
 * zero padding. isa: the kernel (see wl_best_isa; more than this CPU has runs the best it has).
 * Returns 0, or -1 for a bad argument. */
int wl_decoder_nll(const float *x, int64_t m, int64_t k, const int8_t *wp, int64_t n, int64_t n_pad,
                   const float *wscale, const int32_t *wsum, const float *bias, const int64_t *targets, float *nll,
                   float *logits, int isa) {
    if (m < 1 || k < 4 || k % 4 || n < 1 || n_pad % NR || n_pad < n || ((uintptr_t)wp & 63)) return -1;
    for (int64_t r = 0; r < m; r++)
        if (targets && (targets[r] < 0 || targets[r] >= n)) return -1;
    isa = pick_isa(isa);
    uint8_t *u = malloc((size_t)(m * k));
    float *ascale = malloc(sizeof(float) * (size_t)m);
    int32_t *zp = malloc(sizeof(int32_t) * (size_t)m);
    lse_t *lse = malloc(sizeof(lse_t) * (size_t)m);
    float *z = malloc(sizeof(float) * MR * NB);
    if (!u || !ascale || !zp || !lse || !z) {
        free(u), free(ascale), free(zp), free(lse), free(z);
        return -1;
    }
    quantize_rows(isa, x, m, k, u, ascale, zp);
    for (int64_t r = 0; r < m; r++) lse_init(&lse[r]);
    for (int64_t n0 = 0; n0 < n_pad; n0 += NB) {
        int64_t panels = (n_pad - n0 < NB ? n_pad - n0 : NB) / NR;
        int64_t width = panels * NR, valid = n - n0 < width ? n - n0 : width; /* words past n are padding */
        const int8_t *block = wp + n0 * k;
        for (int64_t r0 = 0; r0 < m; r0 += MR) {
            int64_t rows = m - r0 < MR ? m - r0 : MR;
            qgemm(isa, u + r0 * k, rows, k, block, panels, ascale + r0, zp + r0, wscale + n0, wsum + n0, bias + n0, z);
            for (int64_t r = 0; r < rows; r++) {
                const float *zr = z + r * width;
                lse_t *l = &lse[r0 + r];
                if (logits) memcpy(logits + (r0 + r) * n + n0, zr, sizeof(float) * (size_t)valid);
                if (targets && targets[r0 + r] >= n0 && targets[r0 + r] < n0 + valid)
                    l->target = zr[targets[r0 + r] - n0];
#ifdef WL_X86
                if (isa == 2 && valid % 16 == 0)
                    lse_block_512(l, zr, valid);
                else if (isa && valid % 8 == 0)
                    lse_block_avx2(l, zr, valid);
                else
#endif
                    lse_block_c(l, zr, valid);
            }
        }
    }
    if (targets)
        for (int64_t r = 0; r < m; r++) lse_finish(&lse[r], nll + r);
    free(u), free(ascale), free(zp), free(lse), free(z);
    return 0;
}

/* One LSTM layer over steps x batch inputs x[steps, batch, in_dim]: y[steps, batch, hidden] and the
 * state h, c [batch, hidden] (read, then updated in place). */
static int lstm_layer(int isa, const float *x, int64_t steps, int64_t batch, int64_t in_dim, int64_t hidden,
                      const int8_t *wih, const float *wih_scale, const int32_t *wih_sum, const float *b_ih,
                      const int8_t *whh, const float *whh_scale, const int32_t *whh_sum, const float *b_hh, float *h,
                      float *c, float *y) {
    int64_t g4 = 4 * hidden, rows = steps * batch, widest = in_dim > hidden ? in_dim : hidden;
    float *xproj = malloc(sizeof(float) * (size_t)(rows * g4)), *gates = malloc(sizeof(float) * (size_t)(batch * g4));
    uint8_t *u = malloc((size_t)(rows * widest));
    float *ascale = malloc(sizeof(float) * (size_t)rows);
    int32_t *zp = malloc(sizeof(int32_t) * (size_t)rows);
    int ok = xproj && gates && u && ascale && zp;
    if (ok) {
        qlinear(isa, x, rows, in_dim, wih, g4, wih_scale, wih_sum, b_ih, xproj, u, ascale, zp); /* all steps */
        for (int64_t t = 0; t < steps; t++) {
            qlinear(isa, h, batch, hidden, whh, g4, whh_scale, whh_sum, b_hh, gates, u, ascale, zp);
            const float *xp = xproj + t * batch * g4;
            for (int64_t i = 0; i < batch * g4; i++) gates[i] = xp[i] + gates[i];
            for (int64_t b = 0; b < batch; b++) cell(isa, gates + b * g4, hidden, h + b * hidden, c + b * hidden);
            memcpy(y + t * batch * hidden, h, sizeof(float) * (size_t)(batch * hidden));
        }
    }
    free(xproj), free(gates), free(u), free(ascale), free(zp);
    return ok ? 0 : -1;
}

/* A stack of LSTM layers (torch's gate order) over x[steps, batch, in_dim]: y[steps, batch, hidden] of
 * the top layer, and the state h, c [layers, batch, hidden] (read, then updated in place). Per layer
 * l: W_ih [4H, in] (in = in_dim for the first layer, hidden above) and W_hh [4H, hidden] packed as
 * for the decoder (4H a multiple of 16), with their scales, code sums and biases [4H].
 * Returns 0, or -1 for a bad argument or no memory. */
int wl_lstm(const float *x, int64_t steps, int64_t batch, int64_t in_dim, int64_t hidden, int64_t layers,
            const int8_t *const *wih, const float *const *wih_scale, const int32_t *const *wih_sum,
            const float *const *b_ih, const int8_t *const *whh, const float *const *whh_scale,
            const int32_t *const *whh_sum, const float *const *b_hh, float *h, float *c, float *y, int isa) {
    if (steps < 1 || batch < 1 || layers < 1 || in_dim % 4 || hidden % 4 || (4 * hidden) % NR) return -1;
    for (int64_t l = 0; l < layers; l++)
        if (((uintptr_t)wih[l] & 63) || ((uintptr_t)whh[l] & 63)) return -1;
    isa = pick_isa(isa);
    float *buf = layers > 1 ? malloc(sizeof(float) * (size_t)(steps * batch * hidden)) : NULL;
    if (layers > 1 && !buf) return -1;
    const float *in = x;
    int rc = 0;
    for (int64_t l = 0; l < layers && rc == 0; l++) {
        float *out = (layers - 1 - l) % 2 == 0 ? y : buf; /* alternate, so that the top layer writes y */
        rc = lstm_layer(isa, in, steps, batch, l ? hidden : in_dim, hidden, wih[l], wih_scale[l], wih_sum[l], b_ih[l],
                        whh[l], whh_scale[l], whh_sum[l], b_hh[l], h + l * batch * hidden, c + l * batch * hidden,
                        out);
        in = out;
    }
    free(buf);
    return rc;
}

/* A Python module only so that the library is built and found like any extension; the functions
 * above are called through ctypes (wordlm/native/__init__.py). */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "wordlm's native kernels", -1, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
