/* The native kernels against a plain C reference, without Python: every kernel this CPU runs (or the one
 * WORDLM_ISA names), threads 1 to 3. Built by tests/arm/run.sh (`make test-arm`) for aarch64 and run
 * under user-mode QEMU with several CPUs, and natively on the host.
 *
 * The reference is written here from wordlm/native/reference.py (quantize_activations, reference_linear,
 * cell_step, reference_recurrent), not from kernels.c: 7-bit codes per row, int64 sums, (float)acc *
 * (s * w_scale) + b in float32 with no fused multiply-add (built with -ffp-contract=off), the cells with
 * libm's expf and tanhf. The logits, and the recurrent stacks whose cells are C in every kernel (GRU,
 * RNN; the LSTM's in the portable kernel), must equal it bit for bit; the NLL and log-sum-exp (exp is a
 * polynomial in the vector kernels) and the vector kernels' LSTM within the tolerances of
 * tests/test_native.py; every thread count gives the bits of one thread.
 *
 * usage: test_kernels [--expect-best NAME] [-v]   (WORDLM_ISA=NAME: that kernel only) */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../wordlm/native/wordlm.h"

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
    int flags;           /* wordlm.h's: WL_CODES4 where every code is within [-8, 7] (bits 4) */
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
    linear_t l = {.n = n, .k = k, .flags = bits == 4 ? WL_CODES4 : 0};
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
        int rc = wl_decoder_nll(x, m, k, l->panels, n, l->n_pad, l->pscale, l->psum, l->pbias, l->flags, targets, nll,
                                logits, lse, isa, threads, NULL, 0);
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
            rc = wl_decoder_nll(x, m, k, l->panels, n, l->n_pad, l->pscale, l->psum, l->pbias, l->flags, targets, nll_only,
                                NULL, NULL, isa, 1, NULL, 0);
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
    /* int4 codes (WL_CODES4: x86's AVX2 adds 16 groups in int16): spans of 16 groups and their tails */
    {1, 100, 36, 4},  {1, 4100, 260, 4}, {2, 70, 68, 4},   {3, 33, 4, 4},     {4, 48, 128, 4},   {5, 300, 256, 4},
    {25, 513, 516, 4},
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
 * an int16 lane (NEON's SMULL + SMLAL) reach -32,512 and 32,258. bits 4: weights of -8 and 7 over 1,028
 * inputs (WL_CODES4), where AVX2's 16 groups in an int16 lane reach -32,512 */
static void test_extreme_codes(int64_t m, int isa, int bits) {
    int64_t n = 67, k = bits == 8 ? 516 : 1028, lo = bits == 8 ? -128 : -8, hi = bits == 8 ? 127 : 7;
    rng = 5 + (uint64_t)m;
    linear_t l = {.n = n, .k = k, .flags = bits == 4 ? WL_CODES4 : 0};
    l.q = xmalloc((size_t)(n * k));
    l.scale = xmalloc(sizeof(float) * (size_t)n);
    l.bias = calloc((size_t)n, sizeof(float));
    for (int64_t i = 0; i < n * k; i++) l.q[i] = (int8_t)(next_u64() & 1 ? hi : lo);
    for (int64_t i = 0; i < k; i++) l.q[i] = (int8_t)lo, l.q[k + i] = (int8_t)hi;
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
    CHECK(zp == 0 && u[0] == 127 && ref_acc(u, zp, l.q, k) == lo * 127 * k && ref_acc(u, zp, l.q + k, k) == hi * 127 * k,
          "row 0 does not reach the extreme sums");
    if (m > 1) {
        ref_quantize(x + k, k, u, &s, &zp);
        CHECK(zp == 127 && u[0] == 0 && ref_acc(u, zp, l.q, k) == -lo * 127 * k, "row 1 does not reach the extremes");
    }
    check_decoder(x, m, &l, targets, isa, 2e-5);
    end("extreme_codes[%s-m%d-bits%d]", wl_isa_name(isa), (int)m, bits);
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

/* ---- the recurrent stacks: LSTM (with and without a projection), GRU, RNN tanh and ReLU ---- */

typedef struct {
    int cell; /* kernels.c's number: 0 LSTM, 1 GRU, 2 RNN tanh, 3 RNN ReLU */
    int64_t steps, batch, in_dim, hidden, proj, layers;
} rnn_case;

/* the cells this harness has a C reference for (ref_cell), by kernels.c's number: check_cell_table holds
 * them to the library's table (wl_cell_name, wl_cell_info), so a renumbered or changed cell fails here */
static const char *const cell_names[] = {"lstm", "gru", "rnn_tanh", "rnn_relu"};
static const int64_t cell_gates[] = {4, 3, 1, 1};
#define REF_CELLS ((int)(sizeof(cell_names) / sizeof(cell_names[0])))

static void check_cell_table(void) {
    int n = 0;
    for (; wl_cell_name(n); n++) {
        int64_t gates;
        int has_c, proj;
        CHECK(!wl_cell_info(n, &gates, &has_c, &proj), "wl_cell_info(%d) refused", n);
        if (n < REF_CELLS)
            CHECK(!strcmp(wl_cell_name(n), cell_names[n]) && gates == cell_gates[n] && has_c == (n == 0),
                  "kernels.c's cell %d is %s with %d gates; this harness's reference is %s", n, wl_cell_name(n),
                  (int)gates, cell_names[n]);
        else
            printf("cell %s: no C reference here (tests/test_native.py checks it against numpy)\n", wl_cell_name(n));
    }
    CHECK(n >= REF_CELLS, "kernels.c has %d cells, this harness's reference %d", n, REF_CELLS);
}

static const rnn_case rnn_cases[] = {
    {0, 1, 1, 8, 4, 0, 1},    {0, 9, 3, 20, 12, 0, 3},  {0, 7, 1, 20, 40, 0, 3},  {0, 7, 3, 20, 100, 0, 2},
    {0, 5, 2, 36, 64, 0, 2},  {0, 25, 1, 128, 256, 0, 2}, {0, 4, 5, 28, 36, 0, 1}, {0, 3, 6, 16, 32, 0, 2},
    {0, 6, 4, 12, 8, 0, 2},   {0, 7, 3, 20, 40, 12, 2}, {0, 5, 1, 16, 100, 36, 3}, {0, 4, 2, 8, 4, 4, 1},
    {1, 1, 1, 8, 4, 0, 1},    {1, 9, 3, 20, 36, 0, 3},  {1, 7, 1, 20, 100, 0, 2}, {1, 25, 1, 128, 256, 0, 2},
    {2, 1, 1, 8, 4, 0, 1},    {2, 9, 3, 20, 36, 0, 3},  {2, 7, 2, 20, 100, 0, 2}, {3, 1, 1, 8, 4, 0, 1},
    {3, 9, 3, 20, 36, 0, 3},  {3, 7, 2, 20, 100, 0, 2},
};

static float sigmoid_ref(float x) { return 1.f / (1.f + expf(-x)); }

/* cell_step (wordlm/native/reference.py) of one batch row: xp, g [gates x H] (g overwritten), the
 * previous h [H] -> h [H] (in place of hprev allowed), c [H] (LSTM) */
static void ref_cell(int cell, const float *xp, float *g, int64_t H, const float *hprev, float *h, float *c) {
    for (int64_t j = 0; j < H; j++) {
        if (cell == 0) {
            float i = sigmoid_ref(xp[j] + g[j]), f = sigmoid_ref(xp[H + j] + g[H + j]);
            float gg = tanhf(xp[2 * H + j] + g[2 * H + j]), o = sigmoid_ref(xp[3 * H + j] + g[3 * H + j]);
            c[j] = f * c[j] + i * gg;
            h[j] = o * tanhf(c[j]);
        } else if (cell == 1) {
            float r = sigmoid_ref(xp[j] + g[j]), z = sigmoid_ref(xp[H + j] + g[H + j]);
            float n = tanhf(xp[2 * H + j] + r * g[2 * H + j]);
            h[j] = (1.f - z) * n + z * hprev[j];
        } else {
            float a = xp[j] + g[j];
            h[j] = cell == 2 ? tanhf(a) : a > 0.f ? a : 0.f;
        }
    }
}

/* reference_recurrent: x [steps, batch, in] -> y [steps, batch, P], h [layers, batch, P] and c [layers,
 * batch, hidden] (LSTM) updated in place; P = proj or hidden; w[l]: W_ih, W_hh, W_hr; m_last (or NULL):
 * a projected LSTM's last m = o * tanh(c) [batch, hidden] */
static void ref_rnn(const rnn_case *rc, const float *x, linear_t (*w)[3], float *h, float *c, float *y,
                    float *m_last) {
    int64_t S = rc->steps, B = rc->batch, H = rc->hidden, P = rc->proj ? rc->proj : H, G = cell_gates[rc->cell] * H;
    float *in = xmalloc(sizeof(float) * (size_t)(S * B * (rc->in_dim > P ? rc->in_dim : P)));
    float *xproj = xmalloc(sizeof(float) * (size_t)(S * B * G)), *g = xmalloc(sizeof(float) * (size_t)(B * G));
    float *m = xmalloc(sizeof(float) * (size_t)(B * H));
    memcpy(in, x, sizeof(float) * (size_t)(S * B * rc->in_dim));
    for (int64_t l = 0; l < rc->layers; l++) {
        float *hl = h + l * B * P, *cl = rc->cell == 0 ? c + l * B * H : NULL;
        ref_linear(in, S * B, &w[l][0], xproj);
        for (int64_t t = 0; t < S; t++) {
            ref_linear(hl, B, &w[l][1], g);
            for (int64_t b = 0; b < B; b++)
                ref_cell(rc->cell, xproj + (t * B + b) * G, g + b * G, H, hl + b * P, rc->proj ? m + b * H : hl + b * H,
                         cl ? cl + b * H : NULL);
            if (rc->proj) ref_linear(m, B, &w[l][2], hl);
            memcpy(y + t * B * P, hl, sizeof(float) * (size_t)(B * P));
        }
        memcpy(in, y, sizeof(float) * (size_t)(S * B * P));
    }
    if (m_last && rc->proj) memcpy(m_last, m, sizeof(float) * (size_t)(B * H));
    free(in), free(xproj), free(g), free(m);
}

/* W's rows in the kernels' order (wordlm.native._unit_block_order): blocks of wl_unit_block() units,
 * each block's rows of every gate in turn */
static linear_t block_ordered(const linear_t *src, int64_t hidden, int64_t gates) {
    int64_t k = src->k, block = wl_unit_block(), dst = 0;
    linear_t l = {.n = src->n, .k = k};
    l.q = xmalloc((size_t)(l.n * k));
    l.scale = xmalloc(sizeof(float) * (size_t)l.n);
    l.bias = xmalloc(sizeof(float) * (size_t)l.n);
    for (int64_t u0 = 0; u0 < hidden; u0 += block)
        for (int64_t gate = 0; gate < gates; gate++)
            for (int64_t u = u0; u < u0 + block && u < hidden; u++, dst++) {
                int64_t row = gate * hidden + u;
                memcpy(l.q + dst * k, src->q + row * k, (size_t)k);
                l.scale[dst] = src->scale[row], l.bias[dst] = src->bias[row];
            }
    pack(&l);
    return l;
}

static wl_packed packed_of(const linear_t *l) { return (wl_packed){l->panels, l->pscale, l->psum, l->pbias, 0}; }

static double max_error(const float *a, const float *b, int64_t n, double *mean) {
    double top = 0, sum = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        top = e > top ? e : top;
        sum += e;
    }
    if (mean) *mean = sum / (double)n;
    return top;
}

/* |a - b| <= 2e-6 + 1e-5 |b| (+ slack[r] * wmax[j] at [r, j] of rows of `cols`, where slack is given)
 * everywhere: numpy's allclose, as tests/test_native.py */
static int allclose(const float *a, const float *b, int64_t n, int64_t cols, const float *slack, const float *wmax) {
    for (int64_t i = 0; i < n; i++) {
        double tol = 2e-6 + 1e-5 * fabs((double)b[i]) + (slack ? 1.01 * slack[i / cols] * wmax[i % cols] : 0);
        if (!(fabs((double)a[i] - b[i]) <= tol)) return 0;
    }
    return 1;
}

/* A vector LSTM cell's exp differs from libm's by ~1 ulp, which can move a 7-bit code of h by one and
 * the run away from the reference's; so, as tests/test_native.py: layer by layer and step by step from
 * the kernel's own input and state, the kernel (one layer, one step) and the reference agree within
 * exp's last bits, and chained they give the whole run's bits (y, h, c). With a projection, one code
 * of m may move by one (seldom): h may move by m's scale x the largest |code| x scale of W_hr's row. */
static void check_stepwise(const rnn_case *rc, const float *x, linear_t (*w)[3], const wl_packed *mats,
                           const float *h0, const float *c0, const float *y, const float *h, const float *c,
                           int isa) {
    int64_t S = rc->steps, B = rc->batch, H = rc->hidden, P = rc->proj ? rc->proj : H;
    int64_t widest = rc->in_dim > P ? rc->in_dim : P;
    float *in = xmalloc(sizeof(float) * (size_t)(S * B * widest)), *out = xmalloc(sizeof(float) * (size_t)(S * B * P));
    float *kh = xmalloc(sizeof(float) * (size_t)(B * P)), *kc = xmalloc(sizeof(float) * (size_t)(B * H));
    float *rh = xmalloc(sizeof(float) * (size_t)(B * P)), *rcs = xmalloc(sizeof(float) * (size_t)(B * H));
    float *ky = xmalloc(sizeof(float) * (size_t)(B * P)), *ry = xmalloc(sizeof(float) * (size_t)(B * P));
    float *m = xmalloc(sizeof(float) * (size_t)(B * H)), *slack = xmalloc(sizeof(float) * (size_t)B);
    float *wmax = xmalloc(sizeof(float) * (size_t)P);
    uint8_t *u = xmalloc((size_t)H);
    memcpy(in, x, sizeof(float) * (size_t)(S * B * rc->in_dim));
    for (int64_t l = 0; l < rc->layers; l++) {
        int64_t k = l ? P : rc->in_dim;
        rnn_case one = {rc->cell, 1, B, k, H, rc->proj, 1};
        for (int64_t j = 0; rc->proj && j < P; j++) {
            int top = 0;
            for (int64_t i = 0; i < H; i++) top = abs(w[l][2].q[j * H + i]) > top ? abs(w[l][2].q[j * H + i]) : top;
            wmax[j] = (float)top * w[l][2].scale[j];
        }
        memcpy(kh, h0 + l * B * P, sizeof(float) * (size_t)(B * P));
        memcpy(kc, c0 + l * B * H, sizeof(float) * (size_t)(B * H));
        for (int64_t t = 0; t < S; t++) {
            memcpy(rh, kh, sizeof(float) * (size_t)(B * P)), memcpy(rcs, kc, sizeof(float) * (size_t)(B * H));
            ref_rnn(&one, in + t * B * k, &w[l], rh, rcs, ry, m);
            for (int64_t b = 0; rc->proj && b < B; b++) {
                int32_t zp;
                ref_quantize(m + b * H, H, u, &slack[b], &zp);
            }
            const float *sl = rc->proj ? slack : NULL;
            int rcode = wl_rnn(rc->cell, in + t * B * k, 1, B, k, H, rc->proj, 1, mats + 3 * l, kh, kc, ky, isa, 1, NULL, 0);
            CHECK(rcode == 0 && allclose(ky, ry, B * P, P, sl, wmax) && allclose(kh, rh, B * P, P, sl, wmax) &&
                      allclose(kc, rcs, B * H, H, NULL, NULL),
                  "layer %d, step %d: max |error| y %.3g, c %.3g", (int)l, (int)t, max_error(ky, ry, B * P, NULL),
                  max_error(kc, rcs, B * H, NULL));
            memcpy(out + t * B * P, ky, sizeof(float) * (size_t)(B * P));
        }
        CHECK(!memcmp(kh, h + l * B * P, sizeof(float) * (size_t)(B * P)) &&
                  !memcmp(kc, c + l * B * H, sizeof(float) * (size_t)(B * H)),
              "layer %d: the steps chained end in another state than the whole run's", (int)l);
        memcpy(in, out, sizeof(float) * (size_t)(S * B * P));
    }
    CHECK(!memcmp(out, y, sizeof(float) * (size_t)(S * B * P)), "the layers chained give another y than the whole run");
    free(in), free(out), free(kh), free(kc), free(rh), free(rcs), free(ky), free(ry), free(m), free(slack), free(wmax);
    free(u);
}

/* The kernels' GEMMs are exact and the GRU's and RNN's cells (and the portable LSTM's) are the same C
 * as the reference's: those equal it bit for bit; the vector LSTM cells: check_stepwise. */
static void test_rnn_case(const rnn_case *rc, int isa) {
    int64_t S = rc->steps, B = rc->batch, H = rc->hidden, L = rc->layers, P = rc->proj ? rc->proj : H;
    int64_t gates = cell_gates[rc->cell], hstate = L * B * P, cstate = L * B * H, out = S * B * P;
    int exact = rc->cell != 0 || isa == 0;
    rng = (uint64_t)(S * 7919 + B * 104729 + H * 31 + L + rc->cell * 17 + P * 3);
    linear_t(*w)[3] = xmalloc(sizeof(linear_t[3]) * (size_t)L), (*packed)[2] = xmalloc(sizeof(linear_t[2]) * (size_t)L);
    wl_packed *mats = xmalloc(sizeof(wl_packed) * (size_t)(3 * L));
    for (int64_t l = 0; l < L; l++) {
        for (int j = 0; j < 2; j++) {
            w[l][j] = random_linear(gates * H, j == 0 && l == 0 ? rc->in_dim : P, 8, 1e-3f, 0.01f);
            packed[l][j] = block_ordered(&w[l][j], H, gates);
            mats[l * 3 + j] = packed_of(&packed[l][j]);
        }
        mats[l * 3 + 2] = (wl_packed){0};
        if (rc->proj) {
            w[l][2] = random_linear(P, H, 8, 1e-3f, 0.01f);
            memset(w[l][2].bias, 0, sizeof(float) * (size_t)P); /* torch's W_hr has no bias */
            pack(&w[l][2]); /* in its own row order: the reference reads q, the kernels the panels */
            mats[l * 3 + 2] = packed_of(&w[l][2]);
        }
    }
    float *x = xmalloc(sizeof(float) * (size_t)(S * B * rc->in_dim));
    float *h0 = xmalloc(sizeof(float) * (size_t)hstate), *c0 = xmalloc(sizeof(float) * (size_t)cstate);
    for (int64_t i = 0; i < S * B * rc->in_dim; i++) x[i] = (float)normal();
    for (int64_t i = 0; i < hstate; i++) h0[i] = (float)tanh(normal());
    for (int64_t i = 0; i < cstate; i++) c0[i] = (float)normal();
    float *rh = xmalloc(sizeof(float) * (size_t)hstate), *rcs = xmalloc(sizeof(float) * (size_t)cstate);
    float *ry = xmalloc(sizeof(float) * (size_t)out);
    memcpy(rh, h0, sizeof(float) * (size_t)hstate), memcpy(rcs, c0, sizeof(float) * (size_t)cstate);
    ref_rnn(rc, x, w, rh, rcs, ry, NULL);

    float *h = xmalloc(sizeof(float) * (size_t)hstate), *c = xmalloc(sizeof(float) * (size_t)cstate);
    float *y = xmalloc(sizeof(float) * (size_t)out), *y1 = xmalloc(sizeof(float) * (size_t)out);
    float *h1 = xmalloc(sizeof(float) * (size_t)hstate), *c1 = xmalloc(sizeof(float) * (size_t)cstate);
    begin();
    for (int threads = 1; threads <= 3; threads++) {
        memcpy(h, h0, sizeof(float) * (size_t)hstate), memcpy(c, c0, sizeof(float) * (size_t)cstate);
        int rcode = wl_rnn(rc->cell, x, S, B, rc->in_dim, H, rc->proj, L, mats, h, rc->cell == 0 ? c : NULL, y, isa,
                           threads, NULL, 0);
        CHECK(rcode == 0, "wl_rnn returned %d (threads %d)", rcode, threads);
        if (rcode) break;
        if (threads == 1) {
            if (exact) {
                double ymax = max_error(y, ry, out, NULL), hmax = max_error(h, rh, hstate, NULL);
                double cmax = rc->cell == 0 ? max_error(c, rcs, cstate, NULL) : 0;
                CHECK(ymax == 0 && hmax == 0 && cmax == 0, "not bit for bit: max |error| y %.3g, h %.3g, c %.3g", ymax,
                      hmax, cmax);
            } else {
                check_stepwise(rc, x, w, mats, h0, c0, y, h, c, isa);
            }
            CHECK(!memcmp(h + (L - 1) * B * P, y + (S - 1) * B * P, sizeof(float) * (size_t)(B * P)),
                  "the top layer's h is not y's last step");
            memcpy(y1, y, sizeof(float) * (size_t)out), memcpy(h1, h, sizeof(float) * (size_t)hstate);
            memcpy(c1, c, sizeof(float) * (size_t)cstate);
        } else {
            CHECK(!memcmp(y, y1, sizeof(float) * (size_t)out) && !memcmp(h, h1, sizeof(float) * (size_t)hstate) &&
                      !memcmp(c, c1, sizeof(float) * (size_t)cstate),
                  "%d threads differ from one", threads);
        }
    }
    end("%s[%s-s%d-b%d-in%d-h%d-p%d-l%d]", cell_names[rc->cell], wl_isa_name(isa), (int)S, (int)B, (int)rc->in_dim,
        (int)H, (int)rc->proj, (int)L);
    for (int64_t l = 0; l < L; l++) {
        for (int j = 0; j < 2; j++) free_linear(&w[l][j]), free_linear(&packed[l][j]);
        if (rc->proj) free_linear(&w[l][2]);
    }
    free(w), free(packed), free(mats), free(x), free(h0), free(c0), free(rh), free(rcs), free(ry), free(h), free(c);
    free(y), free(y1), free(h1), free(c1);
}

/* ---- kernels this CPU does not run are refused, never substituted ---- */

static void test_refusal(int count, int best) {
    linear_t l = random_linear(16, 4, 8, 1e-3f, 0.f);
    pack(&l);
    float x[4] = {1, 2, 3, 4}, nll[1], h[4] = {0}, c[4] = {0}, y[4];
    int64_t target = 0;
    begin();
    for (int isa = best + 1; isa <= count; isa++)
        CHECK(wl_decoder_nll(x, 1, 4, l.panels, 16, 16, l.pscale, l.psum, l.pbias, 0, &target, nll, NULL, NULL, isa, 1, NULL, 0) ==
                  -1,
              "kernel %d was not refused", isa);
    CHECK(wl_decoder_nll(x, 1, 4, l.panels, 16, 16, l.pscale, l.psum, l.pbias, 0, &target, nll, NULL, NULL, -1, 1, NULL, 0) == -1,
          "kernel -1 was not refused");
    wl_packed mats[3] = {{l.panels, l.pscale, l.psum, l.pbias, 0}, {l.panels, l.pscale, l.psum, l.pbias, 0}, {0}};
    CHECK(wl_rnn(0, x, 1, 1, 4, 4, 0, 1, mats, h, c, y, best + 1, 1, NULL, 0) == -1, "the LSTM ran kernel %d", best + 1);
    CHECK(wl_rnn(0, x, 1, 1, 4, 4, 0, 1, mats, h, c, y, best, 1, NULL, 0) == 0, "the LSTM refused the best");
    CHECK(wl_rnn(4, x, 1, 1, 4, 4, 0, 1, mats, h, c, y, best, 1, NULL, 0) == -1, "cell 4 was not refused");
    CHECK(wl_rnn(1, x, 1, 1, 4, 4, 4, 1, mats, h, c, y, best, 1, NULL, 0) == -1, "a GRU with a projection was not refused");
    end("unavailable_kernels_are_refused");
    free_linear(&l);
}

/* ---- the sampler (sample.c): the word whose cumulative weight brackets u * total ---- */

/* the sampler on table `isa` against a float64 inverse CDF, the same word as the portable table's, and wl_max
 * against a plain loop */
static void test_sample(int isa) {
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
            int64_t i = wl_sample(z, n, zmax, (float)(1.0 / temps[t]), us[j], w, sums, isa);
            double target = us[j] * acc, slack = 1e-5 * acc;
            CHECK(i >= 0 && i < n && (i == 0 || cdf[i - 1] <= target + slack) && cdf[i] >= target - slack,
                  "T %g, u %g: word %d outside the reference's bracket", temps[t], us[j], (int)i);
            CHECK(i == wl_sample(z, n, zmax, (float)(1.0 / temps[t]), us[j], w, sums, 0),
                  "T %g, u %g: not the portable table's word", temps[t], us[j]);
        }
    }
    CHECK(wl_sample(z, n, zmax, 1000.f, 0.5, w, sums, isa) == top, "a tiny temperature does not give the argmax");
    for (int64_t len = 1; len <= 70; len++) CHECK(wl_max(z, len, isa) == wl_max(z, len, 0), "wl_max of %d", (int)len);
    CHECK(wl_max(z, n, isa) == zmax, "wl_max is not the max");
    CHECK(wl_sample(z, n, zmax, 1.f, 1.0, w, sums, isa) == -1 && wl_sample(z, 0, zmax, 1.f, 0.5, w, sums, isa) == -1,
          "bad arguments were not refused");
    end("sample[%s]", wl_isa_name(isa));
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
    check_cell_table();
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
    for (int isa = lo; isa <= hi; isa++) {
        test_sample(isa);
        for (size_t i = 0; i < sizeof decoder_cases / sizeof decoder_cases[0]; i++) test_decoder_case(&decoder_cases[i], isa);
        for (int64_t m = 1; m <= 7; m++) test_extreme_codes(m, isa, 8), test_extreme_codes(m, isa, 4);
        test_wide_logits(isa);
        for (size_t i = 0; i < sizeof rnn_cases / sizeof rnn_cases[0]; i++) test_rnn_case(&rnn_cases[i], isa);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (failed)
        printf("==== %d failed, %d passed in %.2fs ====\n", failed, passed, secs);
    else
        printf("==== %d passed in %.2fs ====\n", passed, secs);
    return failed ? 1 : 0;
}
