/* wordlm's ARM64 kernels: baseline NEON (ARMv8.0), dot product (ARMv8.2 SDOT) and I8MM (SMMLA), each
 * a wl_kernels table (kernels.h) that kernels.c picks at run time (Linux and Android: getauxval's
 * HWCAP bits; macOS: sysctl). The GEMMs follow kernels.c's arithmetic contract bit for bit (7-bit
 * activation codes u, int8 weight codes q, exact int32 sums, then acc - zp * sum q and a multiply and
 * an add in float, never fused); exp (log-sum-exp, sigmoid, tanh) is a polynomial here, as on x86.
 *
 * One binary runs on every ARMv8 CPU: the baseline needs nothing beyond AArch64's Advanced SIMD, and
 * the SDOT and SMMLA functions are compiled with per-function target attributes. Those two
 * instructions are written as one-instruction inline assembly rather than intrinsics: GCC and clang
 * >= 16 offer vdotq_laneq_s32 / vmmlaq_s32 inside a target("...dotprod") function, but clang <= 15's
 * arm_neon.h hides them unless the whole file is built with -march=...+dotprod, which would let the
 * compiler put SDOT in the baseline functions too.
 *
 * Inner loops (what one step costs; counts of instructions, not time: nothing here was timed on ARM):
 *  neon:    SMULL + SMLAL (two products of a 7-bit code and an int8 weight in each int16 lane: at most
 *           2 x 127 x 128 = 32,512, no saturation: the reason for 7-bit codes, as with AVX2's
 *           vpmaddubsw) then SADALP (pairs into int32): 3 instructions per 16 multiply-adds; for int4
 *           weights, 16 groups' products in each int16 lane before widening: 2 per 16;
 *  dotprod: SDOT by element, a panel's 16 bytes (4 words x 4 inputs) against one row's 4-byte group
 *           taken from a register that holds 4 groups: 1 instruction per 16 multiply-adds;
 *  i8mm:    SMMLA, a 2 x 8 block of two rows' codes (interleaved once per call) against a 2 x 8 block
 *           of two words' weights (ZIP1/ZIP2 of two groups of the panel): 1 instruction per 32
 *           multiply-adds, plus one ZIP per two SMMLAs of a pair of rows. */
#include "kernels.h"
#include "sample.h"

#ifdef WL_ARM64
#include <arm_neon.h>
#include <stdatomic.h>
#include <string.h>

#if defined(__linux__)
#include <sys/auxv.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#include <sys/types.h>
#endif

#if defined(__clang__)
#define DOTPROD __attribute__((target("dotprod")))
#define I8MM __attribute__((target("dotprod,i8mm")))
#else
#define DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#define I8MM __attribute__((target("arch=armv8.2-a+dotprod+i8mm")))
#endif
#define INLINE static inline __attribute__((always_inline))
/* loops over rows, words and accumulators unrolled whatever their size (and over rows up to the most
 * there can be, each guarded by the kernel's row count, a constant once inlined), so that every
 * accumulator is indexed by a constant and lives in a register: GCC and clang otherwise keep an array
 * of 16 or 20 of them in memory, loaded and stored around each step */
#if defined(__clang__)
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif

/* GCC's scheduler otherwise hoists the next step's loads above this one's multiply-adds, needing more
 * registers than there are: a barrier to scheduling, no instruction */
#define STEP_BARRIER() __asm__ __volatile__("")
/* acc[i] += sum_j w[4i + j] * a[4 lane + j] (int8 x int8 -> int32); lane: a literal 0..3 */
#define SDOT_LANE(acc, w, a, lane) __asm__("sdot %0.4s, %1.16b, %2.4b[" #lane "]" : "+w"(acc) : "w"(w), "w"(a))
/* acc (2 x 2, row-major) += a (2 x 8: two rows of 8 codes) x b (2 x 8: two words' 8 weights) transposed */
#define SMMLA(acc, a, b) __asm__("smmla %0.4s, %1.16b, %2.16b" : "+w"(acc) : "w"(a), "w"(b))

/* the 4 bytes of a group of 4 inputs, in every 32-bit lane */
INLINE int8x16_t broadcast4(const uint8_t *u) {
    int32_t four;
    memcpy(&four, u, 4);
    return vreinterpretq_s8_s32(vdupq_n_s32(four));
}

/* int32 sums of one row and 4 words -> their 4 outputs: (float)(acc - zp * sum_k q) * (s * w_scale) + b,
 * a multiply then an add (FMUL, FADD: no FMLA, numpy rounds twice too; built with -ffp-contract=off) */
INLINE void epilogue4(int32x4_t acc, float ascale, int32_t zp, const float *wscale, const int32_t *wsum,
                      const float *bias, float *z) {
    int32x4_t exact = vsubq_s32(acc, vmulq_s32(vdupq_n_s32(zp), vld1q_s32(wsum)));
    float32x4_t sc = vmulq_f32(vdupq_n_f32(ascale), vld1q_f32(wscale));
    vst1q_f32(z, vaddq_f32(vmulq_f32(vcvtq_f32_s32(exact), sc), vld1q_f32(bias)));
}

/* ---- NEON (ARMv8.0) ---- */

/* the products of one half (4 words) of two consecutive groups for one row: lo (words 0, 1) and hi
 * (words 2, 3) each get two products per int16 lane, then SADALP adds lanes pairwise into int32, so
 * that each word's sum is spread over two int32 lanes of acc[0] (words 0, 1) or acc[1] (2, 3) */
INLINE void pair_neon(int32x4_t acc[2], int8x16_t w0, int8x16_t w1, int8x16_t a0, int8x16_t a1) {
    int16x8_t lo = vmull_s8(vget_low_s8(w0), vget_low_s8(a0));
    lo = vmlal_s8(lo, vget_low_s8(w1), vget_low_s8(a1));
    int16x8_t hi = vmull_high_s8(w0, a0);
    hi = vmlal_high_s8(hi, w1, a1);
    acc[0] = vpadalq_s16(acc[0], lo);
    acc[1] = vpadalq_s16(acc[1], hi);
}

/* the same for a last, odd group: one product per int16 lane */
INLINE void single_neon(int32x4_t acc[2], int8x16_t w0, int8x16_t a0) {
    acc[0] = vpadalq_s16(acc[0], vmull_s8(vget_low_s8(w0), vget_low_s8(a0)));
    acc[1] = vpadalq_s16(acc[1], vmull_high_s8(w0, a0));
}

/* rows (1 or 2) x the 16 words of one panel: 8 accumulators per row (32 registers hold 2 rows) */
INLINE void micro_neon(const uint8_t *u, int64_t k, const int8_t *panel, const int rows, const float *ascale,
                       const int32_t *zp, const float *wscale, const int32_t *wsum, const float *bias, float *z,
                       int64_t ldz) {
    int32x4_t acc[2][4][2];
    UNROLL for (int r = 0; r < 2; r++) if (r < rows)
        UNROLL for (int q = 0; q < 4; q++) acc[r][q][0] = acc[r][q][1] = vdupq_n_s32(0);
    int64_t k4 = 0, groups = k / 4;
    for (; k4 + 2 <= groups; k4 += 2) {
        const int8_t *w = panel + k4 * 64;
        int8x16_t a0[2], a1[2];
        UNROLL for (int r = 0; r < 2; r++) if (r < rows) a0[r] = broadcast4(u + r * k + k4 * 4), a1[r] = broadcast4(u + r * k + k4 * 4 + 4);
        UNROLL for (int q = 0; q < 4; q++) {
            int8x16_t w0 = vld1q_s8(w + 16 * q), w1 = vld1q_s8(w + 64 + 16 * q);
            UNROLL for (int r = 0; r < 2; r++) if (r < rows) pair_neon(acc[r][q], w0, w1, a0[r], a1[r]);
            STEP_BARRIER();
        }
    }
    if (k4 < groups) {
        const int8_t *w = panel + k4 * 64;
        UNROLL for (int r = 0; r < 2; r++) if (r < rows) {
            int8x16_t a0 = broadcast4(u + r * k + k4 * 4);
            UNROLL for (int q = 0; q < 4; q++) single_neon(acc[r][q], vld1q_s8(w + 16 * q), a0);
        }
    }
    UNROLL for (int r = 0; r < 2; r++) if (r < rows)
        UNROLL for (int q = 0; q < 4; q++) /* ADDP: each word's two halves */
            epilogue4(vpaddq_s32(acc[r][q][0], acc[r][q][1]), ascale[r], zp[r], wscale + 4 * q, wsum + 4 * q,
                      bias + 4 * q, z + r * ldz + 4 * q);
}

/* ---- NEON for int4 weights (codes within [-8, 7]: WL_CODES4) ----
 * A product of a 7-bit code and such a weight is at most 127 x 8 = 1,016 in magnitude, so an int16 lane
 * takes the products of SPAN4 = 16 groups of 4 inputs (one a group: SMLAL, SMLAL2), ADDP of a word pair's
 * low and high lanes adds two of those sums (<= 32,512) and SADALP widens them into int32 once a span:
 * 2 instructions per 16 multiply-adds where micro_neon takes 3 (its SADALP a pair of groups). The same
 * integers, so the same bits. */
#define SPAN4 16

/* rows (1 or 2) x the 16 words of one panel: a row's int16 sums lo (words 4q, 4q + 1: 4 inputs each)
 * and hi (4q + 2, 4q + 3) of the span and its int32 sums, one per word: 12 registers a row */
INLINE void micro4_neon(const uint8_t *u, int64_t k, const int8_t *panel, const int rows, const float *ascale,
                        const int32_t *zp, const float *wscale, const int32_t *wsum, const float *bias, float *z,
                        int64_t ldz) {
    int32x4_t acc[2][4];
    int16x8_t lo[2][4], hi[2][4];
    UNROLL for (int r = 0; r < 2; r++) if (r < rows)
        UNROLL for (int q = 0; q < 4; q++) acc[r][q] = vdupq_n_s32(0);
    int64_t groups = k / 4;
    for (int64_t g0 = 0; g0 < groups; g0 += SPAN4) {
        int64_t g1 = g0 + SPAN4 < groups ? g0 + SPAN4 : groups;
        UNROLL for (int r = 0; r < 2; r++) if (r < rows)
            UNROLL for (int q = 0; q < 4; q++) lo[r][q] = hi[r][q] = vdupq_n_s16(0);
        for (int64_t g = g0; g < g1; g++) {
            const int8_t *w = panel + g * 64;
            int8x16_t a[2];
            UNROLL for (int r = 0; r < 2; r++) if (r < rows) a[r] = broadcast4(u + r * k + g * 4);
            UNROLL for (int q = 0; q < 4; q++) {
                int8x16_t wq = vld1q_s8(w + 16 * q);
                UNROLL for (int r = 0; r < 2; r++) if (r < rows) {
                    lo[r][q] = vmlal_s8(lo[r][q], vget_low_s8(wq), vget_low_s8(a[r]));
                    hi[r][q] = vmlal_high_s8(hi[r][q], wq, a[r]);
                }
                STEP_BARRIER();
            }
        }
        /* ADDP: [w0 inputs 0-1, w0 2-3, w1 0-1, w1 2-3 | w2 .., w3 ..] of the span; SADALP: one lane a word */
        UNROLL for (int r = 0; r < 2; r++) if (r < rows)
            UNROLL for (int q = 0; q < 4; q++) acc[r][q] = vpadalq_s16(acc[r][q], vpaddq_s16(lo[r][q], hi[r][q]));
    }
    UNROLL for (int r = 0; r < 2; r++) if (r < rows)
        UNROLL for (int q = 0; q < 4; q++)
            epilogue4(acc[r][q], ascale[r], zp[r], wscale + 4 * q, wsum + 4 * q, bias + 4 * q, z + r * ldz + 4 * q);
}

/* panel by panel, rows two at a time, with micro_neon or (int4) micro4_neon */
INLINE void panels_neon(const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                        const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                        const float *bias, float *z, int64_t ldz, const int int4) {
    for (int64_t p = 0; p < panels; p++) {
        const int8_t *panel = wp + p * k * NR;
        int64_t n = p * NR, r = 0;
        for (; r < rows; r += 2) {
            const int pair = r + 2 <= rows;
            const uint8_t *ur = u + r * k;
            float *zr = z + r * ldz + n;
            if (int4 && pair) micro4_neon(ur, k, panel, 2, ascale + r, zp + r, wscale + n, wsum + n, bias + n, zr, ldz);
            else if (int4) micro4_neon(ur, k, panel, 1, ascale + r, zp + r, wscale + n, wsum + n, bias + n, zr, ldz);
            else if (pair) micro_neon(ur, k, panel, 2, ascale + r, zp + r, wscale + n, wsum + n, bias + n, zr, ldz);
            else micro_neon(ur, k, panel, 1, ascale + r, zp + r, wscale + n, wsum + n, bias + n, zr, ldz);
        }
    }
}

static void qgemm_neon(const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                       const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                       const float *bias, float *z, int64_t ldz) {
    panels_neon(u, rows, k, wp, panels, ascale, zp, wscale, wsum, bias, z, ldz, 0);
}

static void qgemm4_neon(const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                        const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                        const float *bias, float *z, int64_t ldz) {
    panels_neon(u, rows, k, wp, panels, ascale, zp, wscale, wsum, bias, z, ldz, 1);
}

/* exp for x <= 0 (a logit minus the running max): kernels_x86.c's Cephes range reduction and degree-6
 * polynomial (FMLA in the polynomial only), ~2 ulp; inputs below -87.3 give exp(-87.3) */
static inline float32x4_t exp_neon(float32x4_t x) {
    const float32x4_t c1 = vdupq_n_f32(0.693359375f), c2 = vdupq_n_f32(-2.12194440e-4f), one = vdupq_n_f32(1.f);
    x = vmaxq_f32(x, vdupq_n_f32(-87.3f));
    float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    float32x4_t r = vsubq_f32(vsubq_f32(x, vmulq_f32(n, c1)), vmulq_f32(n, c2));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, one), p, vmulq_f32(r, r));
    int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

/* 4 lanes, then the last len % 4 logits one by one */
static void lse_block_neon(lse_t *l, const float *z, int64_t len) {
    int64_t vec = len & ~(int64_t)3, i;
    float32x4_t vm = vdupq_n_f32(-INFINITY);
    for (i = 0; i < vec; i += 4) vm = vmaxq_f32(vm, vld1q_f32(z + i));
    float bmax = vmaxvq_f32(vm);
    for (i = vec; i < len; i++) bmax = z[i] > bmax ? z[i] : bmax;
    lse_raise_max(l, bmax);
    float32x4_t m = vdupq_n_f32(l->max), s0 = vdupq_n_f32(0.f), s1 = s0;
    for (i = 0; i + 8 <= vec; i += 8) { /* two chains */
        s0 = vaddq_f32(s0, exp_neon(vsubq_f32(vld1q_f32(z + i), m)));
        s1 = vaddq_f32(s1, exp_neon(vsubq_f32(vld1q_f32(z + i + 4), m)));
    }
    if (i < vec) s0 = vaddq_f32(s0, exp_neon(vsubq_f32(vld1q_f32(z + i), m)));
    double sum = (double)vaddvq_f32(vaddq_f32(s0, s1));
    for (i = vec; i < len; i++) sum += expf(z[i] - l->max);
    l->sum += sum;
}

static void quantize_rows_neon(const float *x, int64_t m, int64_t k, uint8_t *u, float *scale, int32_t *zp) {
    quantize_body(x, m, k, u, scale, zp);
}

static inline float32x4_t sigmoid_neon(float32x4_t x) { /* 1 / (1 + e^-x) from e = e^-|x| <= 1 */
    const float32x4_t one = vdupq_n_f32(1.f);
    float32x4_t e = exp_neon(vnegq_f32(vabsq_f32(x)));
    float32x4_t r = vdivq_f32(one, vaddq_f32(one, e));
    return vbslq_f32(vcgeq_f32(x, vdupq_n_f32(0.f)), r, vmulq_f32(e, r));
}

static inline float32x4_t tanh_neon(float32x4_t x) { /* sign(x) (1 - e) / (1 + e), e = e^-2|x| */
    const float32x4_t one = vdupq_n_f32(1.f);
    uint32x4_t sign = vandq_u32(vreinterpretq_u32_f32(x), vdupq_n_u32(0x80000000u));
    float32x4_t e = exp_neon(vmulq_f32(vabsq_f32(x), vdupq_n_f32(-2.f)));
    float32x4_t t = vdivq_f32(vsubq_f32(one, e), vaddq_f32(one, e));
    return vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(t), sign));
}

static void cell_neon(const float *g, int64_t hidden, float *h, float *c) {
    if (hidden % 4) {
        wl_cell_c(g, hidden, h, c);
        return;
    }
    for (int64_t j = 0; j < hidden; j += 4) {
        float32x4_t i = sigmoid_neon(vld1q_f32(g + j)), f = sigmoid_neon(vld1q_f32(g + hidden + j));
        float32x4_t gg = tanh_neon(vld1q_f32(g + 2 * hidden + j)), o = sigmoid_neon(vld1q_f32(g + 3 * hidden + j));
        float32x4_t cn = vaddq_f32(vmulq_f32(f, vld1q_f32(c + j)), vmulq_f32(i, gg));
        vst1q_f32(c + j, cn);
        vst1q_f32(h + j, vmulq_f32(o, tanh_neon(cn)));
    }
}

WL_PLAIN_KERNELS(neon, ) /* sample.h: unpacking and the sampler for Advanced SIMD; every ARM table shares them */

const wl_kernels wl_kernels_neon = {quantize_rows_neon, qgemm_neon,  lse_block_neon, cell_neon, qgemm4_neon,
                                    NULL,               unpack_neon, weights_neon,   max_neon};

/* ---- dot product (ARMv8.2 SDOT) ---- */

/* one group of 4 inputs (lane `lane` of each row's a[r]) against a panel's 64 bytes of them */
#define GROUP_DOT(lane)                                                                                             \
    do {                                                                                                            \
        const int8_t *w = panel + (k4 + lane) * 64;                                                                 \
        int8x16x4_t wq = vld1q_s8_x4(w); /* LD1 of 4 registers: the group's 64 bytes */                           \
        int8x16_t w0 = wq.val[0], w1 = wq.val[1], w2 = wq.val[2], w3 = wq.val[3];                                   \
        UNROLL for (int r = 0; r < MR; r++) if (r < rows) {                                                          \
            SDOT_LANE(acc[r][0], w0, a[r], lane);                                                                   \
            SDOT_LANE(acc[r][1], w1, a[r], lane);                                                                   \
            SDOT_LANE(acc[r][2], w2, a[r], lane);                                                                   \
            SDOT_LANE(acc[r][3], w3, a[r], lane);                                                                   \
        }                                                                                                           \
        STEP_BARRIER();                                                                                             \
    } while (0)

/* rows (<= MR) x the 16 words of one panel: one 16-byte load gives a row's 4 groups, each SDOT by
 * element multiplies one of them with 4 words (4 accumulators per row: 20 of 32 registers at 5 rows) */
INLINE DOTPROD void micro_dot(const uint8_t *u, int64_t k, const int8_t *panel, const int rows, const float *ascale,
                              const int32_t *zp, const float *wscale, const int32_t *wsum, const float *bias,
                              float *z, int64_t ldz) {
    int32x4_t acc[MR][4];
    int8x16_t a[MR];
    UNROLL for (int r = 0; r < MR; r++) if (r < rows)
        UNROLL for (int q = 0; q < 4; q++) acc[r][q] = vdupq_n_s32(0);
    int64_t k4 = 0, groups = k / 4;
    for (; k4 + 4 <= groups; k4 += 4) {
        UNROLL for (int r = 0; r < MR; r++) if (r < rows) a[r] = vreinterpretq_s8_u8(vld1q_u8(u + r * k + k4 * 4));
        GROUP_DOT(0);
        GROUP_DOT(1);
        GROUP_DOT(2);
        GROUP_DOT(3);
    }
    for (; k4 < groups; k4++) { /* the last 1 to 3 groups: each row's in lane 0 */
        UNROLL for (int r = 0; r < MR; r++) if (r < rows) a[r] = broadcast4(u + r * k + k4 * 4);
        GROUP_DOT(0);
    }
    UNROLL for (int r = 0; r < MR; r++) if (r < rows)
        UNROLL for (int q = 0; q < 4; q++)
            epilogue4(acc[r][q], ascale[r], zp[r], wscale + 4 * q, wsum + 4 * q, bias + 4 * q, z + r * ldz + 4 * q);
}

/* Compiler-specific blocking, from the generated code (objdump of GCC 12 and clang 14 and 16): clang
 * hoists the next group's weight loads above this group's SDOTs (it does not see into the inline
 * assembly), which at 5 rows (20 accumulators) or 4 panels (16) needs more than 32 registers, and it
 * then keeps accumulators in memory; GCC, with STEP_BARRIER, does not. So with clang 5 rows are 3 + 2
 * and the GEMV takes 2 panels at a time. */
#if defined(__clang__)
#define GEMV_PANELS 2
#define SPLIT_FIVE_ROWS 1
#else
#define GEMV_PANELS 4
#define SPLIT_FIVE_ROWS 0
#endif

/* one group of 4 inputs of one row against GEMV_PANELS panels (w: the first panel's group, stride apart) */
#define GEMV_GROUP(lane)                                                                                            \
    do {                                                                                                            \
        const int8_t *w = wg + (k4 + lane) * 64;                                                                    \
        UNROLL for (int j = 0; j < GEMV_PANELS; j++) {                                                              \
            int8x16x4_t wq = vld1q_s8_x4(w + j * stride);                                                           \
            UNROLL for (int q = 0; q < 4; q++) SDOT_LANE(acc[j][q], wq.val[q], a, lane);                            \
        }                                                                                                           \
    } while (0)

/* one row (the LSTM's recurrent step at batch 1, the decoder while generating): GEMV_PANELS panels at a
 * time, 16 (or 8) independent SDOT chains sharing each 16-byte load of the row's codes */
static DOTPROD void gemv_dot(const uint8_t *u, int64_t k, const int8_t *wp, int64_t panels, float ascale, int32_t zp,
                             const float *wscale, const int32_t *wsum, const float *bias, float *z) {
    int64_t p = 0, stride = k * NR, groups = k / 4;
    for (; p + GEMV_PANELS <= panels; p += GEMV_PANELS) {
        const int8_t *wg = wp + p * stride;
        int32x4_t acc[GEMV_PANELS][4];
        UNROLL for (int j = 0; j < GEMV_PANELS; j++)
            UNROLL for (int q = 0; q < 4; q++) acc[j][q] = vdupq_n_s32(0);
        int64_t k4 = 0;
        for (; k4 + 4 <= groups; k4 += 4) {
            int8x16_t a = vreinterpretq_s8_u8(vld1q_u8(u + k4 * 4));
            GEMV_GROUP(0);
            GEMV_GROUP(1);
            GEMV_GROUP(2);
            GEMV_GROUP(3);
        }
        for (; k4 < groups; k4++) {
            int8x16_t a = broadcast4(u + k4 * 4);
            GEMV_GROUP(0);
        }
        UNROLL for (int j = 0; j < GEMV_PANELS; j++)
            UNROLL for (int q = 0; q < 4; q++) {
                int64_t n = (p + j) * NR + 4 * q;
                epilogue4(acc[j][q], ascale, zp, wscale + n, wsum + n, bias + n, z + n);
            }
    }
    for (; p < panels; p++) {
        int64_t n = p * NR;
        micro_dot(u, k, wp + p * stride, 1, &ascale, &zp, wscale + n, wsum + n, bias + n, z + n, 0);
    }
}

static DOTPROD void qgemm_dot(const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                              const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                              const float *bias, float *z, int64_t ldz) {
    if (rows == 1) {
        gemv_dot(u, k, wp, panels, *ascale, *zp, wscale, wsum, bias, z);
        return;
    }
    for (int64_t p = 0; p < panels; p++) {
        const int8_t *panel = wp + p * k * NR;
        int64_t n = p * NR;
        switch (rows) { /* constant row counts: the accumulators live in registers */
        case 5:
            if (SPLIT_FIVE_ROWS) {
                micro_dot(u, k, panel, 3, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz);
                micro_dot(u + 3 * k, k, panel, 2, ascale + 3, zp + 3, wscale + n, wsum + n, bias + n,
                          z + 3 * ldz + n, ldz);
            } else {
                micro_dot(u, k, panel, 5, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz);
            }
            break;
        case 4: micro_dot(u, k, panel, 4, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz); break;
        case 3: micro_dot(u, k, panel, 3, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz); break;
        default: micro_dot(u, k, panel, 2, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz); break;
        }
    }
}

/* ---- one row against int4 codes two a byte (WL_NIBBLES: kernels.c), SDOT ----
 * Generation's decoder, half the bytes from memory: 64 bytes of a panel's nibbles hold a pair of groups
 * of 4 inputs for its 16 words, the first group's codes + 8 in the low nibbles, the second's in the high;
 * AND or a shift and a subtract give each group's codes, one SDOT per 16 bytes and group. Two panels at
 * a time (8 accumulators; the unpacking needs registers that 4 panels' 16 would leave short). */

/* pair `i` of groups of the np panels at wg (stride apart), the row's codes of its groups in lanes
 * lane0 and lane1 of a */
#define NIBBLE_PAIR(lane0, lane1, i)                                                                                \
    do {                                                                                                            \
        UNROLL for (int j = 0; j < 2; j++) if (j < np) {                                                             \
            uint8x16x4_t v = vld1q_u8_x4((const uint8_t *)wg + j * stride + (i) * 64);                              \
            UNROLL for (int q = 0; q < 4; q++) {                                                                    \
                int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v.val[q], mask)), eight);                      \
                int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v.val[q], 4)), eight);                       \
                SDOT_LANE(acc[j][q], lo, a, lane0);                                                                 \
                SDOT_LANE(acc[j][q], hi, a, lane1);                                                                 \
            }                                                                                                       \
        }                                                                                                           \
        STEP_BARRIER();                                                                                             \
    } while (0)

/* one row x np (1 or 2) panels of nibbles from wg -> z[0, np * 16) */
INLINE DOTPROD void gemv_nibble_panels_dot(const uint8_t *u, int64_t k, const int8_t *wg, int64_t stride, const int np,
                                           float ascale, int32_t zp, const float *wscale, const int32_t *wsum,
                                           const float *bias, float *z) {
    const uint8x16_t mask = vdupq_n_u8(15);
    const int8x16_t eight = vdupq_n_s8(8);
    int32x4_t acc[2][4];
    UNROLL for (int j = 0; j < 2; j++) if (j < np)
        UNROLL for (int q = 0; q < 4; q++) acc[j][q] = vdupq_n_s32(0);
    int64_t pairs = k / 8, i = 0;
    for (; i + 2 <= pairs; i += 2) { /* 16 bytes of the row: two pairs of groups */
        int8x16_t a = vreinterpretq_s8_u8(vld1q_u8(u + i * 8));
        NIBBLE_PAIR(0, 1, i);
        NIBBLE_PAIR(2, 3, i + 1);
    }
    if (i < pairs) { /* one pair left: its 8 bytes in lanes 0 and 1 */
        int64_t eight_bytes;
        memcpy(&eight_bytes, u + i * 8, 8);
        int8x16_t a = vreinterpretq_s8_s64(vdupq_n_s64(eight_bytes));
        NIBBLE_PAIR(0, 1, i);
    }
    if (k / 4 % 2) { /* an odd last group: the low nibbles of its pair (the high ones are padding) */
        int8x16_t a = broadcast4(u + pairs * 8);
        UNROLL for (int j = 0; j < 2; j++) if (j < np) {
            uint8x16x4_t v = vld1q_u8_x4((const uint8_t *)wg + j * stride + pairs * 64);
            UNROLL for (int q = 0; q < 4; q++)
                SDOT_LANE(acc[j][q], vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v.val[q], mask)), eight), a, 0);
        }
    }
    UNROLL for (int j = 0; j < 2; j++) if (j < np)
        UNROLL for (int q = 0; q < 4; q++)
            epilogue4(acc[j][q], ascale, zp, wscale + 16 * j + 4 * q, wsum + 16 * j + 4 * q, bias + 16 * j + 4 * q,
                      z + 16 * j + 4 * q);
}

static DOTPROD void gemv_nibbles_dot(const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                                     const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                                     const float *bias, float *z, int64_t ldz) {
    (void)rows, (void)ldz; /* one row */
    int64_t stride = wl_nibble_panel_bytes(k), p = 0;
    for (; p + 2 <= panels; p += 2)
        gemv_nibble_panels_dot(u, k, wp + p * stride, stride, 2, *ascale, *zp, wscale + p * NR, wsum + p * NR,
                               bias + p * NR, z + p * NR);
    if (p < panels)
        gemv_nibble_panels_dot(u, k, wp + p * stride, stride, 1, *ascale, *zp, wscale + p * NR, wsum + p * NR,
                               bias + p * NR, z + p * NR);
}

/* quantization, the log-sum-exp and the cell are NEON's: SDOT changes only the GEMM */
const wl_kernels wl_kernels_dotprod = {quantize_rows_neon, qgemm_dot,   lse_block_neon, cell_neon, NULL,
                                       gemv_nibbles_dot,   unpack_neon, weights_neon,   max_neon};

/* ---- I8MM (SMMLA) ---- */

#define I8MM_MAX_K 4096 /* the rows' interleaved codes live on the stack: 3 x 2 x K bytes (24 KiB) */

/* Rows in pairs: SMMLA multiplies a 2 x 8 block of codes (8 inputs of rows r, r + 1) by a 2 x 8 block
 * of weights (8 inputs of words n, n + 1) into the 2 x 2 block of their sums. The panel holds 4 inputs
 * of 16 words per 64 bytes, so ZIP1 / ZIP2 of a register of group g (words n .. n + 3) with the same
 * words' register of group g + 1 give words (n, n + 1) and (n + 2, n + 3), 8 inputs each. The rows'
 * codes are interleaved once per call, [pair][K/8][2 rows][8], so that one 16-byte load gives a pair's
 * block; an odd last row pairs with zeros. Half a panel (8 words) per pass: 4 accumulators per pair,
 * 12 for the 3 pairs of MR = 5 rows. */
/* step s (groups 2s and 2s + 1; g0: the half's bytes of group 2s) for every pair; `last_odd`: group
 * 2s + 1 is past K (its weights are zeros, not read) */
INLINE I8MM void step_mmla(const int8_t *ai, int64_t steps, int64_t s, const int8_t *g0, const int pairs,
                           const int last_odd, int32x4_t acc[3][4]) {
    int8x16_t b[4];
    UNROLL for (int q = 0; q < 2; q++) {
        int32x4_t lo = vreinterpretq_s32_s8(vld1q_s8(g0 + 16 * q));
        int32x4_t hi = last_odd ? vdupq_n_s32(0) : vreinterpretq_s32_s8(vld1q_s8(g0 + 64 + 16 * q));
        b[2 * q] = vreinterpretq_s8_s32(vzip1q_s32(lo, hi));     /* words n, n + 1: 8 inputs each */
        b[2 * q + 1] = vreinterpretq_s8_s32(vzip2q_s32(lo, hi)); /* words n + 2, n + 3 */
    }
    UNROLL for (int p = 0; p < 3; p++) if (p < pairs) {
        int8x16_t a = vld1q_s8(ai + (p * steps + s) * 16);
        SMMLA(acc[p][0], a, b[0]);
        SMMLA(acc[p][1], a, b[1]);
        SMMLA(acc[p][2], a, b[2]);
        SMMLA(acc[p][3], a, b[3]);
    }
}

/* pairs (1 to 3) of interleaved rows x one panel, in two halves of 8 words */
INLINE I8MM void micro_mmla(const int8_t *ai, int64_t k, const int8_t *panel, const int pairs, int64_t rows,
                            const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                            const float *bias, float *z, int64_t ldz) {
    const int64_t steps = (k + 4) / 8, odd_group = (k / 4) & 1, full = steps - odd_group;
    UNROLL for (int half = 0; half < 2; half++) {
        const int8_t *w = panel + 32 * half;
        int32x4_t acc[3][4];
        UNROLL for (int p = 0; p < 3; p++) if (p < pairs)
            UNROLL for (int j = 0; j < 4; j++) acc[p][j] = vdupq_n_s32(0);
        int64_t s = 0;
        for (; s + 2 <= full; s += 2) { /* two steps per iteration: 4 of 29 instructions were the loop's */
            step_mmla(ai, steps, s, w + s * 128, pairs, 0, acc);
            step_mmla(ai, steps, s + 1, w + s * 128 + 128, pairs, 0, acc);
        }
        if (s < full) step_mmla(ai, steps, s, w + s * 128, pairs, 0, acc);
        if (odd_group) step_mmla(ai, steps, full, w + full * 128, pairs, 1, acc);
        UNROLL for (int p = 0; p < 3; p++) if (p < pairs)
            UNROLL for (int q = 0; q < 2; q++) { /* acc[p][2q]: [r0 n, r0 n+1, r1 n, r1 n+1]; acc[p][2q+1]: n+2, n+3 */
                int64x2_t x = vreinterpretq_s64_s32(acc[p][2 * q]), y = vreinterpretq_s64_s32(acc[p][2 * q + 1]);
                int64_t c = 8 * half + 4 * q;
                UNROLL for (int e = 0; e < 2; e++) {
                    int64_t r = 2 * p + e;
                    if (r >= rows) break; /* the zeros paired with an odd last row */
                    int32x4_t row = vreinterpretq_s32_s64(e ? vzip2q_s64(x, y) : vzip1q_s64(x, y));
                    epilogue4(row, ascale[r], zp[r], wscale + c, wsum + c, bias + c, z + r * ldz + c);
                }
            }
    }
}

/* u's rows (<= 6) -> ai [pair][K/8][2][8]: each 8 inputs of rows 2p and 2p + 1 side by side, zeros for a
 * missing row and past K */
static I8MM void interleave_rows(const uint8_t *u, int64_t rows, int64_t k, int8_t *ai) {
    int64_t steps = (k + 4) / 8;
    for (int64_t p = 0; p < (rows + 1) / 2; p++)
        for (int64_t s = 0; s < steps; s++)
            for (int e = 0; e < 2; e++) {
                int8_t *dst = ai + ((p * steps + s) * 2 + e) * 8;
                int64_t r = 2 * p + e, len = k - 8 * s < 8 ? k - 8 * s : 8;
                memset(dst, 0, 8);
                if (r < rows) memcpy(dst, u + r * k + 8 * s, (size_t)len);
            }
}

static I8MM void qgemm_mmla(const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                            const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                            const float *bias, float *z, int64_t ldz) {
    if (rows < 4 || k > I8MM_MAX_K) { /* 1 to 3 rows: no fewer instructions than SDOT's (see above) */
        qgemm_dot(u, rows, k, wp, panels, ascale, zp, wscale, wsum, bias, z, ldz);
        return;
    }
    int8_t ai[3 * 2 * I8MM_MAX_K] __attribute__((aligned(16)));
    interleave_rows(u, rows, k, ai);
    for (int64_t p = 0; p < panels; p++) {
        const int8_t *panel = wp + p * k * NR;
        int64_t n = p * NR;
        if (rows == 4) /* constant pair counts: the accumulators live in registers */
            micro_mmla(ai, k, panel, 2, rows, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz);
        else
            micro_mmla(ai, k, panel, 3, rows, ascale, zp, wscale + n, wsum + n, bias + n, z + n, ldz);
    }
}

/* one row of nibbles: SDOT's (every I8MM CPU has it) */
const wl_kernels wl_kernels_i8mm = {quantize_rows_neon, qgemm_mmla,  lse_block_neon, cell_neon, NULL,
                                    gemv_nibbles_dot,   unpack_neon, weights_neon,   max_neon};

/* ---- which of them this CPU runs ---- */

#if defined(__linux__)
#ifndef AT_HWCAP2
#define AT_HWCAP2 26
#endif
#define WL_HWCAP_ASIMD (1ul << 1)    /* HWCAP_ASIMD */
#define WL_HWCAP_ASIMDDP (1ul << 20) /* HWCAP_ASIMDDP: SDOT, UDOT */
#define WL_HWCAP2_I8MM (1ul << 13)   /* HWCAP2_I8MM: SMMLA, UMMLA, USMMLA */
#elif defined(__APPLE__)
static int sysctl_flag(const char *name) {
    int v = 0;
    size_t len = sizeof(v);
    return sysctlbyname(name, &v, &len, NULL, 0) == 0 && v;
}
#endif

static int detect(void) {
#if defined(__linux__) /* Linux and Android: the kernel's word for what this CPU runs */
    unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    if (!(hw & WL_HWCAP_ASIMD)) return 0;
    if (!(hw & WL_HWCAP_ASIMDDP)) return 1;
    return hw2 & WL_HWCAP2_I8MM ? 3 : 2;
#elif defined(__APPLE__) /* macOS 12+: hw.optional.arm.FEAT_*; an older system answers neither */
    if (!sysctl_flag("hw.optional.arm.FEAT_DotProd")) return 1;
    return sysctl_flag("hw.optional.arm.FEAT_I8MM") ? 3 : 2;
#else /* elsewhere: Advanced SIMD, which every AArch64 system we know of has; no extension assumed */
    return 1;
#endif
}

int wl_arm_best_isa(void) {
    static atomic_int best = -1;
    int b = atomic_load_explicit(&best, memory_order_relaxed);
    if (b < 0) atomic_store_explicit(&best, b = detect(), memory_order_relaxed);
    return b;
}

#else
typedef int wl_no_arm_kernels; /* ISO C wants a translation unit to declare something */
#endif
