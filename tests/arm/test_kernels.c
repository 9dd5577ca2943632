/* The native kernels against a plain C reference, without Python: every kernel this CPU runs (or the one
 * WORDLM_ISA names), threads 1 to 3. Built by tests/arm/run.sh (`make test-arm`) for aarch64 and run
 * under user-mode QEMU with several CPUs, and natively on the host.
 *
 * The reference is written here from wordlm/native/__init__.py (quantize_activations, reference_linear,
 * reference_lstm), not from kernels.c: 7-bit codes per row, int64 sums, (float)acc * (s * w_scale) + b
 * in float32 with no fused multiply-add (built with -ffp-contract=off). The logits must equal it bit for
 * bit; the NLL and log-sum-exp (exp is a polynomial in the vector kernels) and the LSTM's outputs within
 * the tolerances of tests/test_native.py; every thread count gives the bits of one thread.
 *
 * usage: test_kernels [--expect-best NAME] [-v]   (WORDLM_ISA=NAME: that kernel only) */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int wl_decoder_nll(const float *x, int64_t m, int64_t k, const int8_t *wp, int64_t n, int64_t n_pad,
                   const float *wscale, const int32_t *wsum, const float *bias, const int64_t *targets, float *nll,
                   float *logits, float *lse, int isa, int threads);
int wl_lstm(const float *x, int64_t steps, int64_t batch, int64_t in_dim, int64_t hidden, int64_t layers,
            const int8_t *const *wih, const float *const *wih_scale, const int32_t *const *wih_sum,
            const float *const *b_ih, const int8_t *const *whh, const float *const *whh_scale,
            const int32_t *const *whh_sum, const float *const *b_hh, float *h, float *c, float *y, int isa,
            int threads);
int wl_lstm_block(void);
int wl_best_isa(void);
const char *wl_isa_name(int isa);
int64_t wl_sample(const float *z, int64_t n, float zmax, float inv_t, double u, float *w, double *sums);

#define PANEL 16
#define MAX_ISAS 8

/* ---- the harness: named tests, a pytest-style summary ---- */

static int passed, failed, verbose;
static char failure[512];

static void fail(const char *fmt, ...) {
    if (failure[0]) return; /* the first failure of a test says what went wrong */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(failure, sizeof failure, fmt, ap);
    va_end(ap);
}
#define CHECK(cond, ...) ((cond) ? (void)0 : fail(__VA_ARGS__))

static void begin(void) { failure[0] = 0; }

static void end(const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (failure[0]) {
        printf("FAILED %s: %s\n", name, failure);
        failed++;
    } else {
        if (verbose) printf("PASSED %s\n", name);
        passed++;
    }
    fflush(stdout);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(3);
    }
    return p;
}

/* ---- random inputs (a fixed seed per case) ---- */

static uint64_t rng;
static uint64_t next_u64(void) { /* splitmix64 */
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double uniform(void) { return (double)(next_u64() >> 11) * 0x1.0p-53; }
static double normal(void) { return sqrt(-2.0 * log(1.0 - uniform())) * cos(6.283185307179586 * uniform()); }
static int8_t code(int bits) { /* uniform over [-128, 127] (bits 8, extremes included) or [-8, 7] */
    return bits == 8 ? (int8_t)(next_u64() & 0xff) : (int8_t)((int)(next_u64() % 16) - 8);
}

/* ---- weights as wordlm.native.pack_linear packs them ---- */

typedef struct {
    int64_t n, k, n_pad;
    int8_t *q;           /* [n, k] */
    float *scale, *bias; /* [n] */
    int8_t *panels;      /* [n_pad / 16][k / 4][16][4], 64-byte aligned */
    float *pscale, *pbias;
    int32_t *psum; /* [n_pad]: sum_k q */
} linear_t;

static void pack(linear_t *l) {
    int64_t n = l->n, k = l->k, n_pad = (n + PANEL - 1) / PANEL * PANEL;
    size_t bytes = (size_t)(n_pad * k + 63) / 64 * 64;
    l->n_pad = n_pad;
    l->panels = aligned_alloc(64, bytes);
    l->pscale = calloc((size_t)n_pad, sizeof(float));
    l->pbias = calloc((size_t)n_pad, sizeof(float));
    l->psum = calloc((size_t)n_pad, sizeof(int32_t));
    if (!l->panels || !l->pscale || !l->pbias || !l->psum) exit(3);
    memset(l->panels, 0, bytes);
    for (int64_t r = 0; r < n; r++) {
        int64_t p = r / PANEL, c = r % PANEL;
        for (int64_t i = 0; i < k; i++) {
            l->panels[((p * (k / 4) + i / 4) * PANEL + c) * 4 + i % 4] = l->q[r * k + i];
            l->psum[r] += l->q[r * k + i];
        }
        l->pscale[r] = l->scale[r];
        l->pbias[r] = l->bias[r];
    }
}

static linear_t random_linear(int64_t n, int64_t k, int bits, float scale_lo, float scale_span) {
    linear_t l = {.n = n, .k = k};
    l.q = xmalloc((size_t)(n * k));
    l.scale = xmalloc(sizeof(float) * (size_t)n);
    l.bias = xmalloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n * k; i++) l.q[i] = code(bits);
    for (int64_t i = 0; i < n; i++) l.scale[i] = (float)(uniform() * scale_span + scale_lo);
    for (int64_t i = 0; i < n; i++) l.bias[i] = (float)normal();
    return l;
}

static void free_linear(linear_t *l) {
    free(l->q), free(l->scale), free(l->bias), free(l->panels), free(l->pscale), free(l->pbias), free(l->psum);
}

/* ---- the reference (wordlm/native/__init__.py) ---- */

/* quantize_activations, one row: 7-bit codes, scale, zero point (float32 arithmetic, rint) */
static void ref_quantize(const float *x, int64_t k, uint8_t *u, float *scale, int32_t *zp) {
    float lo = 0.f, hi = 0.f;
    for (int64_t i = 0; i < k; i++) lo = x[i] < lo ? x[i] : lo, hi = x[i] > hi ? x[i] : hi;
    float s = (hi - lo) / 127.f;
    if (!(s > 0.f)) s = 1.f;
    float inv = 1.f / s, z = rintf(-lo * inv);
    int32_t zpi = (int32_t)(z < 0.f ? 0.f : z > 127.f ? 127.f : z);
    for (int64_t i = 0; i < k; i++) {
        float v = rintf(x[i] * inv) + (float)zpi;
        u[i] = (uint8_t)(v < 0.f ? 0.f : v > 127.f ? 127.f : v);
    }
    *scale = s, *zp = zpi;
}

/* the exact integer sum of row r of x's codes with word j: sum u q - zp sum q */
static int64_t ref_acc(const uint8_t *u, int32_t zp, const int8_t *q, int64_t k) {
    int64_t acc = 0, sum = 0;
    for (int64_t i = 0; i < k; i++) acc += (int64_t)u[i] * q[i], sum += q[i];
    return acc - (int64_t)zp * sum;
}

/* reference_linear: y [m, n] of x [m, k] */
static void ref_linear(const float *x, int64_t m, const linear_t *l, float *y) {
    uint8_t *u = xmalloc((size_t)l->k);
    for (int64_t r = 0; r < m; r++) {
        float s;
        int32_t zp;
        ref_quantize(x + r * l->k, l->k, u, &s, &zp);
        for (int64_t j = 0; j < l->n; j++) {
            float sc = s * l->scale[j];
            y[r * l->n + j] = (float)ref_acc(u, zp, l->q + j * l->k, l->k) * sc + l->bias[j];
        }
    }
    free(u);
}

/* log sum_j exp(z_j), in double */
static double ref_lse(const float *z, int64_t n) {
    double top = -INFINITY, s = 0.0;
    for (int64_t j = 0; j < n; j++) top = z[j] > top ? z[j] : top;
    for (int64_t j = 0; j < n; j++) s += exp((double)z[j] - top);
    return top + log(s);
}

/* ---- the decoder: logits bit for bit, NLL and log-sum-exp close, every thread count the same ---- */

static int first_difference(const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (memcmp(a + i, b + i, sizeof(float))) return (int)i;
    return -1;
}

/* wl_decoder_nll on x [m, k] with `l`, isa, threads 1, 2, 3: the checks above; tol: absolute tolerance
 * of NLL and log-sum-exp (plus 1e-6 relative) */
static void check_decoder(const float *x, int64_t m, const linear_t *l, const int64_t *targets, int isa, double tol) {
    int64_t n = l->n, k = l->k;
    float *ref = xmalloc(sizeof(float) * (size_t)(m * n)), *logits = xmalloc(sizeof(float) * (size_t)(m * n));
    float *first = xmalloc(sizeof(float) * (size_t)(m * n));
    float nll[64], lse[64], nll1[64], lse1[64], nll_only[64];
    ref_linear(x, m, l, ref);
    for (int threads = 1; threads <= 3; threads++) {
        memset(logits, 0xff, sizeof(float) * (size_t)(m * n)); /* NaNs where nothing was written */
        int rc = wl_decoder_nll(x, m, k, l->panels, n, l->n_pad, l->pscale, l->psum, l->pbias, targets, nll, logits,
                                lse, isa, threads);
        CHECK(rc == 0, "wl_decoder_nll returned %d (threads %d)", rc, threads);
        if (rc) break;
        if (threads == 1) {
            int d = first_difference(logits, ref, m * n);
            CHECK(d < 0, "logit [%d, %d] is %.9g, the reference %.9g", d < 0 ? 0 : d / (int)n, d < 0 ? 0 : d % (int)n,
                  d < 0 ? 0.0 : logits[d], d < 0 ? 0.0 : ref[d]);
            for (int64_t r = 0; r < m; r++) {
                double want_lse = ref_lse(ref + r * n, n), want_nll = want_lse - ref[r * n + targets[r]];
                CHECK(fabs(lse[r] - want_lse) <= tol + 1e-6 * fabs(want_lse), "row %d: lse %.9g, reference %.9g",
                      (int)r, lse[r], want_lse);
                CHECK(fabs(nll[r] - want_nll) <= tol + 1e-6 * fabs(want_nll), "row %d: nll %.9g, reference %.9g",
                      (int)r, nll[r], want_nll);
            }
            memcpy(first, logits, sizeof(float) * (size_t)(m * n));
            memcpy(nll1, nll, sizeof(float) * (size_t)m), memcpy(lse1, lse, sizeof(float) * (size_t)m);
            /* the NLL alone (no logits, no lse): the same bits */
            rc = wl_decoder_nll(x, m, k, l->panels, n, l->n_pad, l->pscale, l->psum, l->pbias, targets, nll_only, NULL,
                                NULL, isa, 1);
            CHECK(rc == 0 && !memcmp(nll_only, nll1, sizeof(float) * (size_t)m), "the NLL alone differs");
        } else {
            CHECK(first_difference(logits, first, m * n) < 0 && !memcmp(nll, nll1, sizeof(float) * (size_t)m) &&
                      !memcmp(lse, lse1, sizeof(float) * (size_t)m),
                  "%d threads differ from one", threads);
        }
    }
    free(ref), free(logits), free(first);
}

typedef struct {
    int64_t m, n, k;
    int bits;
} decoder_case;

/* odd sizes: K / 4 odd and even, K % 16 of 4, 8 and 12 (the tails of 4-group and 2-group steps), 1 to 25
 * rows (MR = 5: 5 + 5 + 1 ...), 1 to 5 panels and 257 (the one-row GEMV's 4 at a time and 1 alone),
 * one word (15 rows of padding), vocabularies past a chunk of 1024 words (threads) */
static const decoder_case decoder_cases[] = {
    {1, 16, 4, 8},    {7, 37, 12, 8},   {25, 300, 256, 8}, {1, 1, 4, 8},      {3, 1025, 20, 8},  {11, 2049, 36, 8},
    {1, 4100, 256, 8}, {1, 100, 36, 8}, {5, 70, 28, 8},    {2, 33, 8, 8},     {4, 19, 44, 8},    {6, 130, 60, 8},
    {9, 500, 132, 8}, {13, 77, 100, 8}, {3, 64, 16, 8},    {2, 48, 24, 8},    {1, 64, 12, 8},    {5, 1100, 516, 8},
    {26, 513, 64, 4}, {9, 5000, 64, 8}, {1, 80, 4, 8},     {5, 16, 4, 8},     {4, 50, 8, 8},     {3, 90, 12, 8},
};

static float *random_x(int64_t m, int64_t k) {
    float *x = xmalloc(sizeof(float) * (size_t)(m * k));
    for (int64_t i = 0; i < m * k; i++) x[i] = (float)tanh(normal() * 2);
    for (int64_t i = 0; i < k / 2; i++) x[i] = fabsf(x[i]); /* one row with an asymmetric range */
    return x;
}

static void test_decoder_case(const decoder_case *dc, int isa) {
    rng = (uint64_t)(dc->m * 1000003 + dc->n * 101 + dc->k);
    linear_t l = random_linear(dc->n, dc->k, dc->bits, 1e-3f, 0.05f);
    pack(&l);
    float *x = random_x(dc->m, dc->k);
    int64_t targets[64];
    for (int64_t r = 0; r < dc->m; r++) targets[r] = (int64_t)(next_u64() % (uint64_t)dc->n);
    begin();
    check_decoder(x, dc->m, &l, targets, isa, 2e-5);
    end("decoder[%s-m%d-n%d-k%d-bits%d]", wl_isa_name(isa), (int)dc->m, (int)dc->n, (int)dc->k, dc->bits);
    free(x), free_linear(&l);
}

/* weights of -128 and 127 against codes of 127 and 0 (rows all positive: zero point 0, every code 127;
 * all negative: zero point 127, every code 0; and both): the largest products, where two products in
 * an int16 lane (NEON's SMULL + SMLAL) reach -32,512 and 32,258 */
static void test_extreme_codes(int64_t m, int isa) {
    int64_t n = 67, k = 516;
    rng = 5 + (uint64_t)m;
    linear_t l = {.n = n, .k = k};
    l.q = xmalloc((size_t)(n * k));
    l.scale = xmalloc(sizeof(float) * (size_t)n);
    l.bias = calloc((size_t)n, sizeof(float));
    for (int64_t i = 0; i < n * k; i++) l.q[i] = next_u64() & 1 ? 127 : -128;
    for (int64_t i = 0; i < k; i++) l.q[i] = -128, l.q[k + i] = 127;
    for (int64_t i = 0; i < n; i++) l.scale[i] = 1e-3f;
    pack(&l);
    float *x = xmalloc(sizeof(float) * (size_t)(m * k));
    for (int64_t i = 0; i < m * k; i++) x[i] = next_u64() & 1 ? 1.f : -1.f;
    for (int64_t i = 0; i < k; i++) x[i] = 1.f;
    if (m > 1)
        for (int64_t i = 0; i < k; i++) x[k + i] = -1.f;
    int64_t targets[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    begin();
    uint8_t *u = xmalloc((size_t)k);
    float s;
    int32_t zp;
    ref_quantize(x, k, u, &s, &zp); /* the extremes are reached */
    CHECK(zp == 0 && u[0] == 127 && ref_acc(u, zp, l.q, k) == -128 * 127 * k && ref_acc(u, zp, l.q + k, k) == 127 * 127 * k,
          "row 0 does not reach the extreme sums");
    if (m > 1) {
        ref_quantize(x + k, k, u, &s, &zp);
        CHECK(zp == 127 && u[0] == 0 && ref_acc(u, zp, l.q, k) == 127 * 128 * k, "row 1 does not reach the extremes");
    }
    check_decoder(x, m, &l, targets, isa, 2e-5);
    end("extreme_codes[%s-m%d]", wl_isa_name(isa), (int)m);
    free(u), free(x), free_linear(&l);
}

/* logits from -200 to 200 (the max in the last block): the running log-sum-exp rescales, exp underflows
 * to 0 and not NaN */
static void test_wide_logits(int isa) {
    int64_t m = 5, n = 2000, k = 32;
    rng = 2;
    linear_t l = random_linear(n, k, 8, 1e-3f, 0.05f);
    for (int64_t j = 0; j < n; j++) l.bias[j] = (float)(-200.0 + 400.0 * (double)j / (double)(n - 1));
    pack(&l);
    float *x = random_x(m, k);
    int64_t targets[5] = {0, 1999, 1000, 1500, 7};
    begin();
    check_decoder(x, m, &l, targets, isa, 1e-4);
    end("wide_logits[%s]", wl_isa_name(isa));
    free(x), free_linear(&l);
}

/* ---- the LSTM stack ---- */

typedef struct {
    int64_t steps, batch, in_dim, hidden, layers;
} lstm_case;

static const lstm_case lstm_cases[] = {
    {1, 1, 8, 4, 1}, {9, 3, 20, 12, 3}, {7, 1, 20, 40, 3}, {7, 3, 20, 100, 2}, {5, 2, 36, 64, 2},
    {25, 1, 128, 256, 2}, {4, 5, 28, 36, 1}, {3, 6, 16, 32, 2}, {6, 4, 12, 8, 2},
};

static float sigmoid_ref(float x) { return 1.f / (1.f + expf(-x)); }

/* reference_lstm: x [steps, batch, in] -> y, h, c (h, c [layers, batch, hidden] updated in place) */
static void ref_lstm(const lstm_case *lc, const float *x, linear_t (*w)[2], float *h, float *c, float *y) {
    int64_t S = lc->steps, B = lc->batch, H = lc->hidden;
    float *in = xmalloc(sizeof(float) * (size_t)(S * B * (lc->in_dim > H ? lc->in_dim : H)));
    float *xproj = xmalloc(sizeof(float) * (size_t)(S * B * 4 * H)), *g = xmalloc(sizeof(float) * (size_t)(B * 4 * H));
    memcpy(in, x, sizeof(float) * (size_t)(S * B * lc->in_dim));
    for (int64_t l = 0; l < lc->layers; l++) {
        float *hl = h + l * B * H, *cl = c + l * B * H;
        ref_linear(in, S * B, &w[l][0], xproj);
        for (int64_t t = 0; t < S; t++) {
            ref_linear(hl, B, &w[l][1], g);
            for (int64_t b = 0; b < B; b++) {
                const float *xp = xproj + (t * B + b) * 4 * H;
                float *gb = g + b * 4 * H;
                for (int64_t j = 0; j < 4 * H; j++) gb[j] = xp[j] + gb[j];
                for (int64_t j = 0; j < H; j++) {
                    float i = sigmoid_ref(gb[j]), f = sigmoid_ref(gb[H + j]), gg = tanhf(gb[2 * H + j]);
                    float o = sigmoid_ref(gb[3 * H + j]);
                    cl[b * H + j] = f * cl[b * H + j] + i * gg;
                    hl[b * H + j] = o * tanhf(cl[b * H + j]);
                    y[(t * B + b) * H + j] = hl[b * H + j];
                }
            }
        }
        memcpy(in, y, sizeof(float) * (size_t)(S * B * H));
    }
    free(in), free(xproj), free(g);
}

/* W's rows in the kernels' order (wordlm.native._unit_block_order): blocks of wl_lstm_block() units,
 * each block's rows of gate i, then f, g, o */
static linear_t block_ordered(const linear_t *src, int64_t hidden) {
    int64_t k = src->k, block = wl_lstm_block(), dst = 0;
    linear_t l = {.n = src->n, .k = k};
    l.q = xmalloc((size_t)(l.n * k));
    l.scale = xmalloc(sizeof(float) * (size_t)l.n);
    l.bias = xmalloc(sizeof(float) * (size_t)l.n);
    for (int64_t u0 = 0; u0 < hidden; u0 += block)
        for (int64_t gate = 0; gate < 4; gate++)
            for (int64_t u = u0; u < u0 + block && u < hidden; u++, dst++) {
                int64_t row = gate * hidden + u;
                memcpy(l.q + dst * k, src->q + row * k, (size_t)k);
                l.scale[dst] = src->scale[row], l.bias[dst] = src->bias[row];
            }
    pack(&l);
    return l;
}

static void test_lstm_case(const lstm_case *lc, int isa) {
    int64_t S = lc->steps, B = lc->batch, H = lc->hidden, L = lc->layers, state = L * B * H, out = S * B * H;
    rng = (uint64_t)(S * 7919 + B * 104729 + H * 31 + L);
    linear_t(*w)[2] = xmalloc(sizeof(linear_t[2]) * (size_t)L), (*packed)[2] = xmalloc(sizeof(linear_t[2]) * (size_t)L);
    for (int64_t l = 0; l < L; l++)
        for (int j = 0; j < 2; j++) {
            w[l][j] = random_linear(4 * H, j == 0 && l == 0 ? lc->in_dim : H, 8, 1e-3f, 0.01f);
            packed[l][j] = block_ordered(&w[l][j], H);
        }
    float *x = xmalloc(sizeof(float) * (size_t)(S * B * lc->in_dim));
    float *h0 = xmalloc(sizeof(float) * (size_t)state), *c0 = xmalloc(sizeof(float) * (size_t)state);
    for (int64_t i = 0; i < S * B * lc->in_dim; i++) x[i] = (float)normal();
    for (int64_t i = 0; i < state; i++) h0[i] = (float)tanh(normal());
    for (int64_t i = 0; i < state; i++) c0[i] = (float)normal();
    float *rh = xmalloc(sizeof(float) * (size_t)state), *rc = xmalloc(sizeof(float) * (size_t)state);
    float *ry = xmalloc(sizeof(float) * (size_t)out);
    memcpy(rh, h0, sizeof(float) * (size_t)state), memcpy(rc, c0, sizeof(float) * (size_t)state);
    ref_lstm(lc, x, w, rh, rc, ry);

    const int8_t **wih = xmalloc(sizeof(void *) * (size_t)L), **whh = xmalloc(sizeof(void *) * (size_t)L);
    const float **sih = xmalloc(sizeof(void *) * (size_t)L), **shh = xmalloc(sizeof(void *) * (size_t)L);
    const float **bih = xmalloc(sizeof(void *) * (size_t)L), **bhh = xmalloc(sizeof(void *) * (size_t)L);
    const int32_t **qih = xmalloc(sizeof(void *) * (size_t)L), **qhh = xmalloc(sizeof(void *) * (size_t)L);
    for (int64_t l = 0; l < L; l++) {
        wih[l] = packed[l][0].panels, sih[l] = packed[l][0].pscale, bih[l] = packed[l][0].pbias, qih[l] = packed[l][0].psum;
        whh[l] = packed[l][1].panels, shh[l] = packed[l][1].pscale, bhh[l] = packed[l][1].pbias, qhh[l] = packed[l][1].psum;
    }
    float *h = xmalloc(sizeof(float) * (size_t)state), *c = xmalloc(sizeof(float) * (size_t)state);
    float *y = xmalloc(sizeof(float) * (size_t)out), *y1 = xmalloc(sizeof(float) * (size_t)out);
    float *h1 = xmalloc(sizeof(float) * (size_t)state), *c1 = xmalloc(sizeof(float) * (size_t)state);
    begin();
    for (int threads = 1; threads <= 3; threads++) {
        memcpy(h, h0, sizeof(float) * (size_t)state), memcpy(c, c0, sizeof(float) * (size_t)state);
        int rcode = wl_lstm(x, S, B, lc->in_dim, H, L, wih, sih, qih, bih, whh, shh, qhh, bhh, h, c, y, isa, threads);
        CHECK(rcode == 0, "wl_lstm returned %d (threads %d)", rcode, threads);
        if (rcode) break;
        if (threads == 1) {
            /* the GEMMs are exact; exp differs by ~1 ulp, which can move a 7-bit code of h by one */
            double ymax = 0, ysum = 0, hmax = 0, cmax = 0;
            for (int64_t i = 0; i < out; i++) {
                double e = fabs((double)y[i] - ry[i]);
                ymax = e > ymax ? e : ymax;
                ysum += e;
            }
            for (int64_t i = 0; i < state; i++) {
                double eh = fabs((double)h[i] - rh[i]), ec = fabs((double)c[i] - rc[i]);
                hmax = eh > hmax ? eh : hmax;
                cmax = ec > cmax ? ec : cmax;
            }
            CHECK(ymax < 2e-3 && ysum / (double)out < 1e-5, "y: max |error| %.3g, mean %.3g", ymax, ysum / (double)out);
            CHECK(hmax < 2e-3 && cmax < 2e-2, "state: max |error| h %.3g, c %.3g", hmax, cmax);
            CHECK(!memcmp(h + (L - 1) * B * H, y + (S - 1) * B * H, sizeof(float) * (size_t)(B * H)),
                  "the top layer's h is not y's last step");
            memcpy(y1, y, sizeof(float) * (size_t)out), memcpy(h1, h, sizeof(float) * (size_t)state);
            memcpy(c1, c, sizeof(float) * (size_t)state);
        } else {
            CHECK(!memcmp(y, y1, sizeof(float) * (size_t)out) && !memcmp(h, h1, sizeof(float) * (size_t)state) &&
                      !memcmp(c, c1, sizeof(float) * (size_t)state),
                  "%d threads differ from one", threads);
        }
    }
    end("lstm[%s-s%d-b%d-in%d-h%d-l%d]", wl_isa_name(isa), (int)S, (int)B, (int)lc->in_dim, (int)H, (int)L);
    for (int64_t l = 0; l < L; l++)
        for (int j = 0; j < 2; j++) free_linear(&w[l][j]), free_linear(&packed[l][j]);
    free(w), free(packed), free(x), free(h0), free(c0), free(rh), free(rc), free(ry), free(h), free(c), free(y), free(y1);
    free(h1), free(c1), free(wih), free(whh), free(sih), free(shh), free(bih), free(bhh), free(qih), free(qhh);
}

/* ---- kernels this CPU does not run are refused, never substituted ---- */

static void test_refusal(int count, int best) {
    linear_t l = random_linear(16, 4, 8, 1e-3f, 0.f);
    pack(&l);
    float x[4] = {1, 2, 3, 4}, nll[1], h[4] = {0}, c[4] = {0}, y[4];
    int64_t target = 0;
    begin();
    for (int isa = best + 1; isa <= count; isa++)
        CHECK(wl_decoder_nll(x, 1, 4, l.panels, 16, 16, l.pscale, l.psum, l.pbias, &target, nll, NULL, NULL, isa, 1) ==
                  -1,
              "kernel %d was not refused", isa);
    CHECK(wl_decoder_nll(x, 1, 4, l.panels, 16, 16, l.pscale, l.psum, l.pbias, &target, nll, NULL, NULL, -1, 1) == -1,
          "kernel -1 was not refused");
    const int8_t *wp[1] = {l.panels};
    const float *sc[1] = {l.pscale}, *bi[1] = {l.pbias};
    const int32_t *su[1] = {l.psum};
    CHECK(wl_lstm(x, 1, 1, 4, 4, 1, wp, sc, su, bi, wp, sc, su, bi, h, c, y, best + 1, 1) == -1,
          "the LSTM ran kernel %d", best + 1);
    CHECK(wl_lstm(x, 1, 1, 4, 4, 1, wp, sc, su, bi, wp, sc, su, bi, h, c, y, best, 1) == 0, "the LSTM refused the best");
    end("unavailable_kernels_are_refused");
    free_linear(&l);
}

/* ---- the sampler (sample.c): the word whose cumulative weight brackets u * total ---- */

static void test_sample(void) {
    int64_t n = 3001;
    rng = 17;
    float *z = xmalloc(sizeof(float) * (size_t)n), *w = xmalloc(sizeof(float) * (size_t)n);
    double *sums = xmalloc(sizeof(double) * (size_t)(n / 256 + 1)), *cdf = xmalloc(sizeof(double) * (size_t)n);
    float zmax = -INFINITY;
    int64_t top = 0;
    for (int64_t i = 0; i < n; i++) {
        z[i] = (float)(normal() * 3);
        if (z[i] > zmax) zmax = z[i], top = i;
    }
    begin();
    const double temps[] = {1.0, 0.5, 2.0}, us[] = {0.0, 0.1, 0.25, 0.5, 0.75, 0.999};
    for (int t = 0; t < 3; t++) {
        double acc = 0.0;
        for (int64_t i = 0; i < n; i++) cdf[i] = acc += exp(((double)z[i] - zmax) / temps[t]);
        for (int j = 0; j < 6; j++) {
            int64_t i = wl_sample(z, n, zmax, (float)(1.0 / temps[t]), us[j], w, sums);
            double target = us[j] * acc, slack = 1e-5 * acc;
            CHECK(i >= 0 && i < n && (i == 0 || cdf[i - 1] <= target + slack) && cdf[i] >= target - slack,
                  "T %g, u %g: word %d outside the reference's bracket", temps[t], us[j], (int)i);
        }
    }
    CHECK(wl_sample(z, n, zmax, 1000.f, 0.5, w, sums) == top, "a tiny temperature does not give the argmax");
    CHECK(wl_sample(z, n, zmax, 1.f, 1.0, w, sums) == -1 && wl_sample(z, 0, zmax, 1.f, 0.5, w, sums) == -1,
          "bad arguments were not refused");
    end("sample");
    free(z), free(w), free(sums), free(cdf);
}

int main(int argc, char **argv) {
    const char *expect = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--expect-best") && i + 1 < argc)
            expect = argv[++i];
        else if (!strcmp(argv[i], "-v"))
            verbose = 1;
        else {
            fprintf(stderr, "usage: %s [--expect-best NAME] [-v]\n", argv[0]);
            return 2;
        }
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int count = 0, best = wl_best_isa();
    char names[256] = "";
    for (; wl_isa_name(count) && count < MAX_ISAS; count++) {
        strcat(names, count ? ", " : "");
        strcat(names, wl_isa_name(count));
    }
    int lo = 0, hi = best;
    const char *forced = getenv("WORDLM_ISA");
    if (forced && *forced) { /* as wordlm.native: a name of this architecture that this CPU runs */
        int isa = 0;
        while (isa < count && strcmp(wl_isa_name(isa), forced)) isa++;
        if (isa == count) {
            printf("WORDLM_ISA='%s' is not a kernel; choose one of %s\n", forced, names);
            return 2;
        }
        if (isa > best) {
            printf("WORDLM_ISA='%s': this CPU does not run it (its best: %s)\n", forced, wl_isa_name(best));
            return 2;
        }
        lo = hi = isa;
    }
    printf("kernels of this build: %s; this CPU's best: %s; testing: %s", names, wl_isa_name(best), wl_isa_name(lo));
    for (int isa = lo + 1; isa <= hi; isa++) printf(", %s", wl_isa_name(isa));
    printf("\n");
    fflush(stdout);

    if (expect) {
        begin();
        CHECK(!strcmp(wl_isa_name(best), expect), "the best kernel is %s, not %s", wl_isa_name(best), expect);
        end("dispatch_picks[%s]", expect);
    }
    test_refusal(count, best);
    test_sample();
    for (int isa = lo; isa <= hi; isa++) {
        for (size_t i = 0; i < sizeof decoder_cases / sizeof decoder_cases[0]; i++) test_decoder_case(&decoder_cases[i], isa);
        for (int64_t m = 1; m <= 7; m++) test_extreme_codes(m, isa);
        test_wide_logits(isa);
        for (size_t i = 0; i < sizeof lstm_cases / sizeof lstm_cases[0]; i++) test_lstm_case(&lstm_cases[i], isa);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (failed)
        printf("==== %d failed, %d passed in %.2fs ====\n", failed, passed, secs);
    else
        printf("==== %d passed in %.2fs ====\n", passed, secs);
    return failed ? 1 : 0;
}
