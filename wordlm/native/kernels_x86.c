/* wordlm's x86 kernels: AVX2 (with FMA, used only in exp's polynomial) and AVX-512 VNNI, each a
 * wl_kernels table (kernels.h) that kernels.c picks at run time. The GEMMs follow kernels.c's
 * arithmetic contract bit for bit; only exp (log-sum-exp, sigmoid, tanh) is a polynomial here and libm
 * in the portable kernels, ~1e-7 relative apart. Compiled per function with target attributes, so the
 * library itself needs no -mavx2 and runs on any x86-64. The intrinsics come from x86_simd.h: the
 * compiler's, or SIMDe's portable C in the tests' second build, which runs both tables on any x86-64. */
#include "kernels.h"
#include "sample.h"

#ifdef WL_X86
#include <string.h>

#include "x86_simd.h"

/* ---- AVX2 ---- */

#define AVX2 WL_TARGET("avx2,fma")

/* int32 sums of one row and 8 words -> their 8 outputs: (float)(acc - zp * sum_k q) * (s * w_scale) + b,
 * a multiply then an add (no FMA: numpy rounds twice too) */
static inline AVX2 __attribute__((always_inline)) void epilogue_avx2(__m256i acc, float ascale, int32_t zp,
                                                                     const float *wscale, const int32_t *wsum,
                                                                     const float *bias, float *z) {
    __m256i sums = _mm256_loadu_si256((const __m256i *)wsum);
    __m256i exact = _mm256_sub_epi32(acc, _mm256_mullo_epi32(_mm256_set1_epi32(zp), sums));
    __m256 sc = _mm256_mul_ps(_mm256_set1_ps(ascale), _mm256_loadu_ps(wscale));
    _mm256_storeu_ps(z, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(exact), sc), _mm256_loadu_ps(bias)));
}

/* u8 x s8 -> int32: vpmaddubsw sums pairs in int16 (7-bit codes: no saturation), vpmaddwd by 1 the
 * pairs of pairs; one group of 4 inputs of each of 8 words per 32 bytes of a panel */
static inline AVX2 __attribute__((always_inline)) __m256i dot4_avx2(__m256i acc, __m256i a, __m256i w) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, w), _mm256_set1_epi16(1)));
}

/* one group of 4 inputs of `rows` rows against a panel's 64 bytes of them (w0, w1: 8 words each) */
static inline AVX2 __attribute__((always_inline)) void group_avx2(__m256i acc[][2], const uint8_t *u, int64_t k,
                                                                   const int rows, __m256i w0, __m256i w1) {
    for (int r = 0; r < rows; r++) {
        int32_t four;
        memcpy(&four, u + r * k, 4);
        __m256i a = _mm256_set1_epi32(four);
        acc[r][0] = dot4_avx2(acc[r][0], a, w0);
        acc[r][1] = dot4_avx2(acc[r][1], a, w1);
    }
}

/* rows (<= MR) x 16 words of one panel: its 4 inputs x 16 words per 64 bytes meet one broadcast
 * 4-byte group of each row. Two groups per iteration, and (`prefetch`) the same two lines of the next
 * panel asked for ahead: 5.46 -> 4.19 ms for the tutorial's decoder GEMM at 25 rows (EPYC, p25 of 40
 * interleaved; the unrolling and the prefetch ~15% each) */
static inline AVX2 __attribute__((always_inline)) void micro(const uint8_t *u, int64_t k, const int8_t *panel,
                                                              const int rows, const float *ascale,
                                                              const int32_t *zp, const float *wscale,
                                                              const int32_t *wsum, const float *bias, float *z,
                                                              int64_t ldz, const int prefetch) {
    __m256i acc[MR][2];
    for (int r = 0; r < rows; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    int64_t k4 = 0, groups = k / 4;
    for (; k4 + 2 <= groups; k4 += 2) {
        const int8_t *w = panel + k4 * 64;
        if (prefetch) {
            _mm_prefetch((const char *)(w + k * NR), _MM_HINT_T0);
            _mm_prefetch((const char *)(w + k * NR + 64), _MM_HINT_T0);
        }
        group_avx2(acc, u + k4 * 4, k, rows, _mm256_load_si256((const __m256i *)w),
                   _mm256_load_si256((const __m256i *)(w + 32)));
        group_avx2(acc, u + k4 * 4 + 4, k, rows, _mm256_load_si256((const __m256i *)(w + 64)),
                   _mm256_load_si256((const __m256i *)(w + 96)));
    }
    if (k4 < groups)
        group_avx2(acc, u + k4 * 4, k, rows, _mm256_load_si256((const __m256i *)(panel + k4 * 64)),
                   _mm256_load_si256((const __m256i *)(panel + k4 * 64 + 32)));
    for (int r = 0; r < rows; r++)
        for (int h = 0; h < 2; h++)
            epilogue_avx2(acc[r][h], ascale[r], zp[r], wscale + 8 * h, wsum + 8 * h, bias + 8 * h,
                          z + r * ldz + 8 * h);
}

/* one group of 4 inputs of one row against 4 panels' 64 bytes of them (w: the first panel's) */
static inline AVX2 __attribute__((always_inline)) void gemv_group(__m256i acc[8], const uint8_t *u,
                                                                   const int8_t *w, int64_t stride) {
    int32_t four;
    memcpy(&four, u, 4);
    __m256i a = _mm256_set1_epi32(four);
    for (int j = 0; j < 4; j++) {
        acc[2 * j] = dot4_avx2(acc[2 * j], a, _mm256_load_si256((const __m256i *)(w + j * stride)));
        acc[2 * j + 1] = dot4_avx2(acc[2 * j + 1], a, _mm256_load_si256((const __m256i *)(w + j * stride + 32)));
    }
}

/* one row (generation's decoder, the LSTM at batch 1): four panels at a time, sharing each broadcast
 * and the loop, as gemv_vnni does. The 1-row micro-kernel panel by panel: 466 -> 376 us for the
 * tutorial's decoder (33,278 x 256, logits kept; EPYC, median of 600). Two groups per iteration:
 * 116 -> 104 us for 25 steps of a tutorial layer's W_hh (1024 x 256, in L2; p25 of 40 interleaved);
 * a prefetch of the next 4 panels, as micro's, made that 20% slower (it looked faster for the
 * generation decoder's row, streamed from memory, in a noisy measurement: not kept) */
static AVX2 void gemv_avx2(const uint8_t *u, int64_t k, const int8_t *wp, int64_t panels, float ascale, int32_t zp,
                           const float *wscale, const int32_t *wsum, const float *bias, float *z) {
    int64_t p = 0, stride = k * NR;
    for (; p + 4 <= panels; p += 4) {
        const int8_t *w = wp + p * stride;
        __m256i acc[8];
        for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_si256();
        int64_t k4 = 0;
        for (; k4 + 2 <= k / 4; k4 += 2) {
            gemv_group(acc, u + k4 * 4, w + k4 * 64, stride);
            gemv_group(acc, u + k4 * 4 + 4, w + k4 * 64 + 64, stride);
        }
        if (k4 < k / 4) gemv_group(acc, u + k4 * 4, w + k4 * 64, stride);
        int64_t n = p * NR;
        for (int j = 0; j < 8; j++)
            epilogue_avx2(acc[j], ascale, zp, wscale + n + 8 * j, wsum + n + 8 * j, bias + n + 8 * j, z + n + 8 * j);
    }
    for (; p < panels; p++) {
        int64_t n = p * NR;
        micro(u, k, wp + p * stride, 1, &ascale, &zp, wscale + n, wsum + n, bias + n, z + n, 0, 0);
    }
}

static AVX2 void qgemm_avx2(const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                            const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                            const float *bias, float *z, int64_t ldz) {
    if (rows == 1) {
        gemv_avx2(u, k, wp, panels, *ascale, *zp, wscale, wsum, bias, z);
        return;
    }
    for (int64_t p = 0; p < panels; p++) {
        const int8_t *panel = wp + p * k * NR;
        int64_t n = p * NR;
        /* constant row counts, so that the accumulators live in registers; 16 ymm registers hold 3
         * rows (5 spill: measured 2.76 against 2.49 ms for the tutorial's decoder) */
        switch (rows) { /* the first pass over the panel asks for the next one */
        case 5:
            micro(u, k, panel, 3, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz, 1);
            micro(u + 3 * k, k, panel, 2, ascale + 3, zp + 3, wscale + n, wsum + n, bias + n, z + 3 * ldz + n, ldz,
                  0);
            break;
        case 4:
            micro(u, k, panel, 2, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz, 1);
            micro(u + 2 * k, k, panel, 2, ascale + 2, zp + 2, wscale + n, wsum + n, bias + n, z + 2 * ldz + n, ldz,
                  0);
            break;
        case 3: micro(u, k, panel, 3, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz, 1); break;
        case 2: micro(u, k, panel, 2, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz, 1); break;
        default: micro(u, k, panel, 1, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz, 1); break;
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

/* 8 lanes, then the last len % 8 logits (the vocabulary's end) one by one */
static AVX2 void lse_block_avx2(lse_t *l, const float *z, int64_t len) {
    int64_t vec = len & ~(int64_t)7, i;
    __m256 vm = _mm256_set1_ps(-INFINITY);
    for (i = 0; i < vec; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(z + i));
    float bmax = hmax(vm);
    for (i = vec; i < len; i++) bmax = z[i] > bmax ? z[i] : bmax;
    lse_raise_max(l, bmax);
    __m256 m = _mm256_set1_ps(l->max), s = _mm256_setzero_ps();
    for (i = 0; i < vec; i += 8) s = _mm256_add_ps(s, exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(z + i), m)));
    double sum = (double)hsum(s);
    for (i = vec; i < len; i++) sum += expf(z[i] - l->max);
    l->sum += sum;
}

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

static AVX2 void cell_avx2(const float *g, int64_t hidden, float *h, float *c) {
    if (hidden % 8) {
        wl_cell_c(g, hidden, h, c);
        return;
    }
    for (int64_t j = 0; j < hidden; j += 8) {
        __m256 i = sigmoid_avx2(_mm256_loadu_ps(g + j)), f = sigmoid_avx2(_mm256_loadu_ps(g + hidden + j));
        __m256 gg = tanh_avx2(_mm256_loadu_ps(g + 2 * hidden + j));
        __m256 o = sigmoid_avx2(_mm256_loadu_ps(g + 3 * hidden + j));
        __m256 cn = _mm256_add_ps(_mm256_mul_ps(f, _mm256_loadu_ps(c + j)), _mm256_mul_ps(i, gg));
        _mm256_storeu_ps(c + j, cn);
        _mm256_storeu_ps(h + j, _mm256_mul_ps(o, tanh_avx2(cn)));
    }
}

/* ---- AVX2 for int4 weights (codes within [-8, 7]: WL_CODES4) ----
 * A vpmaddubsw pair sum of a 7-bit code and such a weight is at most 2 x 127 x 8 = 2,032 in magnitude,
 * so the results of SPAN4 = 16 groups of 4 inputs add in int16 (<= 32,512) before one vpmaddwd widens
 * them to int32: per group and 8 words one multiply (vpmaddubsw) and one vpaddw, where qgemm_avx2 takes
 * two multiplies (vpmaddubsw, vpmaddwd) and a vpaddd. The same integers, so the same bits. */
#define SPAN4 16

/* int16 sums (pairs of products) -> added to the int32 ones (pairs of pairs) */
static inline AVX2 __attribute__((always_inline)) __m256i widen_avx2(__m256i acc, __m256i s16) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(s16, _mm256_set1_epi16(1)));
}

/* one group of 4 inputs of `rows` rows against a panel's 64 bytes of them, into int16 sums */
static inline AVX2 __attribute__((always_inline)) void group4_avx2(__m256i s[][2], const uint8_t *u, int64_t k,
                                                                    const int rows, __m256i w0, __m256i w1) {
    for (int r = 0; r < rows; r++) {
        int32_t four;
        memcpy(&four, u + r * k, 4);
        __m256i a = _mm256_set1_epi32(four);
        s[r][0] = _mm256_add_epi16(s[r][0], _mm256_maddubs_epi16(a, w0));
        s[r][1] = _mm256_add_epi16(s[r][1], _mm256_maddubs_epi16(a, w1));
    }
}

/* micro's int4 twin: rows (<= 3: int32 and int16 sums of 16 words, 4 registers a row) x one panel,
 * spans of SPAN4 groups in int16, each widened once; (`prefetch`) the next panel's line of each group */
static inline AVX2 __attribute__((always_inline)) void micro4(const uint8_t *u, int64_t k, const int8_t *panel,
                                                               const int rows, const float *ascale,
                                                               const int32_t *zp, const float *wscale,
                                                               const int32_t *wsum, const float *bias, float *z,
                                                               int64_t ldz, const int prefetch) {
    __m256i acc[MR][2], s[MR][2];
    for (int r = 0; r < rows; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    int64_t groups = k / 4;
    for (int64_t g0 = 0; g0 < groups; g0 += SPAN4) {
        int64_t g1 = g0 + SPAN4 < groups ? g0 + SPAN4 : groups;
        for (int r = 0; r < rows; r++) s[r][0] = s[r][1] = _mm256_setzero_si256();
        for (int64_t g = g0; g < g1; g++) {
            const int8_t *w = panel + g * 64;
            if (prefetch) _mm_prefetch((const char *)(w + k * NR), _MM_HINT_T0);
            group4_avx2(s, u + g * 4, k, rows, _mm256_load_si256((const __m256i *)w),
                        _mm256_load_si256((const __m256i *)(w + 32)));
        }
        for (int r = 0; r < rows; r++) {
            acc[r][0] = widen_avx2(acc[r][0], s[r][0]);
            acc[r][1] = widen_avx2(acc[r][1], s[r][1]);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int h = 0; h < 2; h++)
            epilogue_avx2(acc[r][h], ascale[r], zp[r], wscale + 8 * h, wsum + 8 * h, bias + 8 * h,
                          z + r * ldz + 8 * h);
}

/* one row: four panels at a time (8 int16 sums in registers, sharing each broadcast; the int32 sums,
 * touched once a span, may live in memory), then panel by panel */
static AVX2 void gemv4_avx2(const uint8_t *u, int64_t k, const int8_t *wp, int64_t panels, float ascale,
                            int32_t zp, const float *wscale, const int32_t *wsum, const float *bias, float *z) {
    int64_t p = 0, stride = k * NR, groups = k / 4;
    for (; p + 4 <= panels; p += 4) {
        const int8_t *w = wp + p * stride;
        __m256i acc[8], s[8];
        for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_si256();
        for (int64_t g0 = 0; g0 < groups; g0 += SPAN4) {
            int64_t g1 = g0 + SPAN4 < groups ? g0 + SPAN4 : groups;
            for (int j = 0; j < 8; j++) s[j] = _mm256_setzero_si256();
            for (int64_t g = g0; g < g1; g++) {
                int32_t four;
                memcpy(&four, u + g * 4, 4);
                __m256i a = _mm256_set1_epi32(four);
                for (int j = 0; j < 8; j++) {
                    const int8_t *wj = w + (j / 2) * stride + g * 64 + (j % 2) * 32;
                    s[j] = _mm256_add_epi16(s[j], _mm256_maddubs_epi16(a, _mm256_load_si256((const __m256i *)wj)));
                }
            }
            for (int j = 0; j < 8; j++) acc[j] = widen_avx2(acc[j], s[j]);
        }
        int64_t n = p * NR;
        for (int j = 0; j < 8; j++)
            epilogue_avx2(acc[j], ascale, zp, wscale + n + 8 * j, wsum + n + 8 * j, bias + n + 8 * j, z + n + 8 * j);
    }
    for (; p < panels; p++) {
        int64_t n = p * NR;
        micro4(u, k, wp + p * stride, 1, &ascale, &zp, wscale + n, wsum + n, bias + n, z + n, 0, 0);
    }
}

static AVX2 void qgemm4_avx2(const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                             const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                             const float *bias, float *z, int64_t ldz) {
    if (rows == 1) {
        gemv4_avx2(u, k, wp, panels, *ascale, *zp, wscale, wsum, bias, z);
        return;
    }
    for (int64_t p = 0; p < panels; p++) {
        const int8_t *panel = wp + p * k * NR;
        int64_t n = p * NR;
        switch (rows) { /* at most 3 rows a pass (12 registers of sums), as qgemm_avx2 */
        case 5:
            micro4(u, k, panel, 3, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz, 1);
            micro4(u + 3 * k, k, panel, 2, ascale + 3, zp + 3, wscale + n, wsum + n, bias + n, z + 3 * ldz + n, ldz,
                   0);
            break;
        case 4:
            micro4(u, k, panel, 2, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz, 1);
            micro4(u + 2 * k, k, panel, 2, ascale + 2, zp + 2, wscale + n, wsum + n, bias + n, z + 2 * ldz + n, ldz,
                   0);
            break;
        case 3: micro4(u, k, panel, 3, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz, 1); break;
        default: micro4(u, k, panel, 2, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz, 1); break;
        }
    }
}

/* ---- AVX2, one row against int4 codes two a byte (WL_NIBBLES: kernels.c) ----
 * Generation's decoder: half the bytes from memory. 32 bytes of nibbles hold a pair of groups of 4
 * inputs for 8 words: the low nibbles (code + 8) are the first group's int8 layout, the high ones the
 * second's; AND, shift and subtract give the codes, which go on as in qgemm4_avx2 (int16 spans of 16
 * groups, widened once). */

/* the codes of a pair of groups: lo the first's, hi the second's */
static inline AVX2 __attribute__((always_inline)) void unnibble_avx2(__m256i v, __m256i *lo, __m256i *hi) {
    const __m256i mask = _mm256_set1_epi8(15), eight = _mm256_set1_epi8(8);
    *lo = _mm256_sub_epi8(_mm256_and_si256(v, mask), eight);
    *hi = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(v, 4), mask), eight);
}

/* one row x np (1 or 2) panels of nibbles from wp (stride bytes apart) -> z[0, np * 16) */
static inline AVX2 __attribute__((always_inline)) void gemv_nibble_panels(const uint8_t *u, int64_t k,
                                                                           const int8_t *wp, int64_t stride,
                                                                           const int np, float ascale, int32_t zp,
                                                                           const float *wscale, const int32_t *wsum,
                                                                           const float *bias, float *z) {
    __m256i acc[4], s[4], lo, hi;
    for (int j = 0; j < 2 * np; j++) acc[j] = _mm256_setzero_si256();
    int64_t pairs = k / 8;
    for (int64_t i0 = 0; i0 < pairs; i0 += SPAN4 / 2) { /* a pair a step: SPAN4 groups per int16 span */
        int64_t i1 = i0 + SPAN4 / 2 < pairs ? i0 + SPAN4 / 2 : pairs;
        for (int j = 0; j < 2 * np; j++) s[j] = _mm256_setzero_si256();
        for (int64_t i = i0; i < i1; i++) {
            int32_t f0, f1;
            memcpy(&f0, u + i * 8, 4), memcpy(&f1, u + i * 8 + 4, 4);
            __m256i a0 = _mm256_set1_epi32(f0), a1 = _mm256_set1_epi32(f1);
            for (int j = 0; j < 2 * np; j++) {
                unnibble_avx2(_mm256_load_si256((const __m256i *)(wp + (j / 2) * stride + i * 64 + (j % 2) * 32)), &lo,
                              &hi);
                s[j] = _mm256_add_epi16(s[j], _mm256_add_epi16(_mm256_maddubs_epi16(a0, lo), _mm256_maddubs_epi16(a1, hi)));
            }
        }
        for (int j = 0; j < 2 * np; j++) acc[j] = widen_avx2(acc[j], s[j]);
    }
    if (k / 4 % 2) { /* an odd last group: the low nibbles of its pair (the high ones are padding) */
        int32_t f0;
        memcpy(&f0, u + pairs * 8, 4);
        __m256i a0 = _mm256_set1_epi32(f0);
        for (int j = 0; j < 2 * np; j++) {
            unnibble_avx2(_mm256_load_si256((const __m256i *)(wp + (j / 2) * stride + pairs * 64 + (j % 2) * 32)), &lo,
                          &hi);
            acc[j] = widen_avx2(acc[j], _mm256_maddubs_epi16(a0, lo));
        }
    }
    for (int j = 0; j < 2 * np; j++)
        epilogue_avx2(acc[j], ascale, zp, wscale + 8 * j, wsum + 8 * j, bias + 8 * j, z + 8 * j);
}

static AVX2 void gemv_nibbles_avx2(const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                                   const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                                   const float *bias, float *z, int64_t ldz) {
    (void)rows, (void)ldz; /* one row */
    int64_t stride = wl_nibble_panel_bytes(k), p = 0;
    for (; p + 2 <= panels; p += 2)
        gemv_nibble_panels(u, k, wp + p * stride, stride, 2, *ascale, *zp, wscale + p * NR, wsum + p * NR,
                           bias + p * NR, z + p * NR);
    if (p < panels)
        gemv_nibble_panels(u, k, wp + p * stride, stride, 1, *ascale, *zp, wscale + p * NR, wsum + p * NR,
                           bias + p * NR, z + p * NR);
}

/* nibbles for more than one row: unpacking in registers two rows a pass (16 registers) took longer than
 * unpacking each block once for qgemm4 (25 rows of the tutorial's decoder, 2.3 against 2.1 ms, p25 of 20
 * interleaved on a busy machine, load 5.5: a direction, not a figure) */
WL_PLAIN_KERNELS(avx2, AVX2) /* sample.h: unpacking and the sampler, compiled for AVX2 */

const wl_kernels wl_kernels_avx2 = {quantize_rows_avx2, qgemm_avx2,  lse_block_avx2, cell_avx2, qgemm4_avx2,
                                    gemv_nibbles_avx2,  unpack_avx2, weights_avx2,   max_avx2};

/* ---- AVX-512 VNNI ---- */

/* vpdpbusd: four u8 x s8 products summed into int32 in one instruction; one 512-bit register holds
 * a panel's 4 inputs x 16 words */
#define VNNI WL_TARGET("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")

/* int32 sums of one row and 16 words -> its 16 outputs (the AVX2 epilogue, 16 lanes wide) */
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
            WL_DPBUSD(acc[r], _mm512_set1_epi32(four), w);
        }
    }
    for (int r = 0; r < rows; r++) epilogue_vnni(acc[r], ascale[r], zp[r], wscale, wsum, bias, z + r * ldz);
}

/* one row (the LSTM's recurrent step at batch 1, the decoder while generating): four panels at a
 * time, so that four independent vpdpbusd chains hide its latency and share each broadcast (one
 * chain: 148 against 125 us for a 25-step layer of the tutorial model, benchmarks/quant.md) */
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
            WL_DPBUSD(a0, a, *(const __m512i *)(w + k4 * 64));
            WL_DPBUSD(a1, a, *(const __m512i *)(w + stride + k4 * 64));
            WL_DPBUSD(a2, a, *(const __m512i *)(w + 2 * stride + k4 * 64));
            WL_DPBUSD(a3, a, *(const __m512i *)(w + 3 * stride + k4 * 64));
        }
        int64_t n = p * NR;
        epilogue_vnni(a0, ascale, zp, wscale + n, wsum + n, bias + n, z + n);
        epilogue_vnni(a1, ascale, zp, wscale + n + 16, wsum + n + 16, bias + n + 16, z + n + 16);
        epilogue_vnni(a2, ascale, zp, wscale + n + 32, wsum + n + 32, bias + n + 32, z + n + 32);
        epilogue_vnni(a3, ascale, zp, wscale + n + 48, wsum + n + 48, bias + n + 48, z + n + 48);
    }
    for (; p < panels; p++) {
        int64_t n = p * NR;
        micro_vnni(u, k, wp + p * stride, 1, &ascale, &zp, wscale + n, wsum + n, bias + n, z + n, 0);
    }
}

/* rows (<= MR) x two panels: each broadcast of a row's four codes serves two vpdpbusd (one per panel),
 * where micro_vnni's serves one; broadcasts and weight loads share the load ports with the multiplies,
 * so this takes 10 rows of a 10,000-word decoder (a beam search's step) from 0.79x to about fbgemm's
 * speed. The same int32 sums: the bits do not change. */
static inline VNNI __attribute__((always_inline)) void micro2_vnni(const uint8_t *u, int64_t k, const int8_t *panel,
                                                                   const int rows, const float *ascale,
                                                                   const int32_t *zp, const float *wscale,
                                                                   const int32_t *wsum, const float *bias, float *z,
                                                                   int64_t ldz) {
    __m512i acc0[MR], acc1[MR];
    const int8_t *next = panel + k * NR;
    for (int r = 0; r < rows; r++) acc0[r] = acc1[r] = _mm512_setzero_si512();
    for (int64_t k4 = 0; k4 < k / 4; k4++) {
        __m512i w0 = _mm512_load_si512((const void *)(panel + k4 * 64));
        __m512i w1 = _mm512_load_si512((const void *)(next + k4 * 64));
        for (int r = 0; r < rows; r++) {
            int32_t four;
            memcpy(&four, u + r * k + k4 * 4, 4);
            __m512i a = _mm512_set1_epi32(four);
            WL_DPBUSD(acc0[r], a, w0);
            WL_DPBUSD(acc1[r], a, w1);
        }
    }
    for (int r = 0; r < rows; r++) {
        epilogue_vnni(acc0[r], ascale[r], zp[r], wscale, wsum, bias, z + r * ldz);
        epilogue_vnni(acc1[r], ascale[r], zp[r], wscale + NR, wsum + NR, bias + NR, z + r * ldz + NR);
    }
}

static VNNI void qgemm_vnni(const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                            const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                            const float *bias, float *z, int64_t ldz) {
    if (rows == 1) {
        gemv_vnni(u, k, wp, panels, *ascale, *zp, wscale, wsum, bias, z);
        return;
    }
    int64_t p = 0;
    for (; p + 2 <= panels; p += 2) {
        const int8_t *panel = wp + p * k * NR;
        int64_t n = p * NR;
        switch (rows) {
        case 5: micro2_vnni(u, k, panel, 5, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz); break;
        case 4: micro2_vnni(u, k, panel, 4, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz); break;
        case 3: micro2_vnni(u, k, panel, 3, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz); break;
        default: micro2_vnni(u, k, panel, 2, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz); break;
        }
    }
    for (; p < panels; p++) {
        const int8_t *panel = wp + p * k * NR;
        int64_t n = p * NR;
        switch (rows) {
        case 5: micro_vnni(u, k, panel, 5, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz); break;
        case 4: micro_vnni(u, k, panel, 4, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz); break;
        case 3: micro_vnni(u, k, panel, 3, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz); break;
        default: micro_vnni(u, k, panel, 2, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz); break;
        }
    }
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

/* the 16 lanes' sum, in the order of GCC's _mm512_reduce_add_ps (halves, then AVX2's hsum), which
 * SIMDe lacks: written out, the native and the SIMDe build (x86_simd.h) sum alike */
static inline VNNI float hsum512(__m512 v) {
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return hsum(_mm256_add_ps(hi, _mm512_castps512_ps256(v)));
}

/* 16 lanes, then the last len % 16 logits one by one */
static VNNI void lse_block_512(lse_t *l, const float *z, int64_t len) {
    int64_t vec = len & ~(int64_t)15, i;
    __m512 vm = _mm512_set1_ps(-INFINITY), vm2 = vm;
    for (i = 0; i + 32 <= vec; i += 32) /* two chains of max and of sums: one waits on its own latency */
        vm = _mm512_max_ps(vm, _mm512_loadu_ps(z + i)), vm2 = _mm512_max_ps(vm2, _mm512_loadu_ps(z + i + 16));
    if (i < vec) vm = _mm512_max_ps(vm, _mm512_loadu_ps(z + i));
    float bmax = _mm512_reduce_max_ps(_mm512_max_ps(vm, vm2));
    for (i = vec; i < len; i++) bmax = z[i] > bmax ? z[i] : bmax;
    lse_raise_max(l, bmax);
    __m512 m = _mm512_set1_ps(l->max), s = _mm512_setzero_ps(), s2 = s;
    for (i = 0; i + 32 <= vec; i += 32) {
        s = _mm512_add_ps(s, exp512(_mm512_sub_ps(_mm512_loadu_ps(z + i), m)));
        s2 = _mm512_add_ps(s2, exp512(_mm512_sub_ps(_mm512_loadu_ps(z + i + 16), m)));
    }
    if (i < vec) s = _mm512_add_ps(s, exp512(_mm512_sub_ps(_mm512_loadu_ps(z + i), m)));
    double sum = (double)hsum512(_mm512_add_ps(s, s2));
    for (i = vec; i < len; i++) sum += expf(z[i] - l->max);
    l->sum += sum;
}

/* one row x np (1 to 4) panels of nibbles (WL_NIBBLES: kernels.c): 64 bytes hold a pair of groups of
 * 16 words, AND, shift and subtract give each group's 64 codes, one vpdpbusd each */
static inline VNNI __attribute__((always_inline)) void gemv_nibble_panels_vnni(const uint8_t *u, int64_t k,
                                                                                const int8_t *wp, int64_t stride,
                                                                                const int np, float ascale,
                                                                                int32_t zp, const float *wscale,
                                                                                const int32_t *wsum,
                                                                                const float *bias, float *z) {
    const __m512i mask = _mm512_set1_epi8(15), eight = _mm512_set1_epi8(8);
    __m512i acc[4];
    for (int j = 0; j < np; j++) acc[j] = _mm512_setzero_si512();
    int64_t pairs = k / 8;
    for (int64_t i = 0; i < pairs; i++) {
        int32_t f0, f1;
        memcpy(&f0, u + i * 8, 4), memcpy(&f1, u + i * 8 + 4, 4);
        __m512i a0 = _mm512_set1_epi32(f0), a1 = _mm512_set1_epi32(f1);
        for (int j = 0; j < np; j++) {
            __m512i v = _mm512_load_si512((const void *)(wp + j * stride + i * 64));
            __m512i lo = _mm512_sub_epi8(_mm512_and_si512(v, mask), eight);
            __m512i hi = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 4), mask), eight);
            WL_DPBUSD(acc[j], a0, lo);
            WL_DPBUSD(acc[j], a1, hi);
        }
    }
    if (k / 4 % 2) { /* an odd last group: the low nibbles of its pair */
        int32_t f0;
        memcpy(&f0, u + pairs * 8, 4);
        __m512i a0 = _mm512_set1_epi32(f0);
        for (int j = 0; j < np; j++) {
            __m512i v = _mm512_load_si512((const void *)(wp + j * stride + pairs * 64));
            __m512i lo = _mm512_sub_epi8(_mm512_and_si512(v, mask), eight);
            WL_DPBUSD(acc[j], a0, lo);
        }
    }
    for (int j = 0; j < np; j++)
        epilogue_vnni(acc[j], ascale, zp, wscale + 16 * j, wsum + 16 * j, bias + 16 * j, z + 16 * j);
}

/* four panels at a time, as gemv_vnni, then one by one */
static VNNI void gemv_nibbles_vnni(const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                                   const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                                   const float *bias, float *z, int64_t ldz) {
    (void)rows, (void)ldz; /* one row */
    int64_t stride = wl_nibble_panel_bytes(k), p = 0;
    for (; p + 4 <= panels; p += 4)
        gemv_nibble_panels_vnni(u, k, wp + p * stride, stride, 4, *ascale, *zp, wscale + p * NR, wsum + p * NR,
                                bias + p * NR, z + p * NR);
    for (; p < panels; p++)
        gemv_nibble_panels_vnni(u, k, wp + p * stride, stride, 1, *ascale, *zp, wscale + p * NR, wsum + p * NR,
                                bias + p * NR, z + p * NR);
}

/* quantization and the cell are AVX2's: neither is where the time goes. No GEMM of its own for int4
 * codes: vpdpbusd adds four products into int32 in one instruction already. Nibbles are read as they are
 * for one row; for more, unpacking a block once for all the rows and running the two-panel GEMM beat
 * unpacking them in registers for each group of rows (the tutorial's decoder at 25 rows: 1.44 against
 * 1.60 ms, int8 codes 1.28-1.36; Xeon with AVX-512 VNNI, medians of 60) */
WL_PLAIN_KERNELS(512, VNNI) /* the same for AVX-512 (GCC vectorizes them 64 bytes wide) */

const wl_kernels wl_kernels_avx512_vnni = {quantize_rows_avx2, qgemm_vnni, lse_block_512, cell_avx2,  NULL,
                                           gemv_nibbles_vnni,  unpack_512, weights_512,   max_512};

int wl_x86_best_isa(void) {
#ifdef WL_SIMDE /* SIMDe's portable C runs every table on any x86-64 */
    return 2;
#endif
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 0;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
        return 2;
    return 1;
}

#else
typedef int wl_no_x86_kernels; /* ISO C wants a translation unit to declare something */
#endif
