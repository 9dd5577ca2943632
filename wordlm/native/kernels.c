/* wordlm native kernels: int8 GEMMs for the LSTM and the decoder of evaluation, with the loss fused.
 * This file: the arithmetic contract, the portable kernels, the choice of kernels, the threads and the
 * entry points called through ctypes; kernels_x86.c: the AVX2 and AVX-512 VNNI kernels.
 *
 * The decoder: logits[m, n] = x[m, :] . W[n, :] + b[n] for M rows of LSTM output x and N = 33,278
 * words, then the negative log-likelihood of one target per row (and/or the log-sum-exp of the row,
 * from which a caller gets log-probabilities as logits - lse). Each block of logits goes to a small
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
 * Three kernels, each a table of functions (kernels.h) as ggml chooses its own: AVX-512 VNNI, AVX2,
 * portable C; the caller names one (wordlm.native resolves WORDLM_ISA and the CPU's best). The GEMMs
 * are identical; exp (in the log-sum-exp and the LSTM's sigmoid and tanh) is a polynomial in the
 * vector kernels and libm in C, ~1e-7 relative apart.
 *
 * Threads: the work is cut into a partition that does not depend on the number of threads (chunks
 * of the vocabulary, groups of panels), threads take its pieces from a shared counter, and whatever
 * is summed across pieces is summed on the calling thread in the partition's order: every thread
 * count gives the same bits.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define CHUNK_WORDS (4 * NB) /* the decoder's unit of work: 33 chunks for the tutorial's vocabulary */
#define PROJ_PANELS 16       /* the LSTM input projection's unit of work: 256 gates */
#define MIN_WORK (1 << 22)   /* multiply-adds worth a thread: ~80 us of AVX2 kernel; starting one: ~55 us */

/* ---- portable kernels ---- */

static void quantize_rows_c(const float *x, int64_t m, int64_t k, uint8_t *u, float *scale, int32_t *zp) {
    quantize_body(x, m, k, u, scale, zp);
}

static void lse_block_c(lse_t *l, const float *z, int64_t len) {
    float bmax = -INFINITY;
    for (int64_t i = 0; i < len; i++) bmax = z[i] > bmax ? z[i] : bmax;
    lse_raise_max(l, bmax);
    double s = 0.0;
    for (int64_t i = 0; i < len; i++) s += expf(z[i] - l->max);
    l->sum += s;
}

static void qgemm_c(const uint8_t *u, int64_t rows, int64_t k, const int8_t *wp, int64_t panels,
                    const float *ascale, const int32_t *zp, const float *wscale, const int32_t *wsum,
                    const float *bias, float *z, int64_t ldz) {
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
                z[r * ldz + n] = (float)acc * (ascale[r] * wscale[n]) + bias[n];
            }
        }
    }
}

static float sigmoid_c(float x) { return 1.f / (1.f + expf(-x)); }

void wl_cell_c(const float *g, int64_t hidden, float *h, float *c) {
    for (int64_t j = 0; j < hidden; j++) {
        float i = sigmoid_c(g[j]), f = sigmoid_c(g[hidden + j]), gg = tanhf(g[2 * hidden + j]);
        float o = sigmoid_c(g[3 * hidden + j]);
        c[j] = f * c[j] + i * gg;
        h[j] = o * tanhf(c[j]);
    }
}

const wl_kernels wl_kernels_portable = {quantize_rows_c, qgemm_c, lse_block_c, wl_cell_c};

/* ---- the kernels by number: 0 portable C, 1 AVX2, 2 AVX-512 VNNI ---- */

static int best_isa(void) {
#ifdef WL_X86
    return wl_x86_best_isa();
#else
    return 0;
#endif
}

/* the table of kernel `isa`, or NULL when this CPU cannot run it: never a silent substitute */
static const wl_kernels *kernels_for(int isa) {
    if (isa < 0 || isa > best_isa()) return NULL;
#ifdef WL_X86
    if (isa == 2) return &wl_kernels_avx512_vnni;
    if (isa == 1) return &wl_kernels_avx2;
#endif
    return &wl_kernels_portable;
}

/* ---- threads ---- */

typedef void (*task_fn)(const void *job, int64_t item);

typedef struct {
    task_fn fn;
    const void *job;
    int64_t items;
    atomic_llong next; /* the next item nobody has taken */
} pool_t;

static void *take_items(void *arg) {
    pool_t *p = arg;
    for (int64_t i; (i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed)) < p->items;) p->fn(p->job, i);
    return NULL;
}

/* fn(job, i) for every i < items on up to `threads` threads, the caller's included; fewer where the
 * items or the work (multiply-adds) are too few to pay for a thread, or where one cannot start (the
 * caller then takes more items). One thread: a plain loop, no thread started. */
static void parallel_for(int threads, int64_t items, int64_t work, task_fn fn, const void *job) {
    int64_t n = threads;
    if (n > items) n = items;
    if (n > 1 + work / MIN_WORK) n = 1 + work / MIN_WORK;
    pthread_t *tid = n > 1 ? malloc(sizeof(pthread_t) * (size_t)(n - 1)) : NULL;
    if (!tid) {
        for (int64_t i = 0; i < items; i++) fn(job, i);
        return;
    }
    pool_t pool = {.fn = fn, .job = job, .items = items};
    atomic_init(&pool.next, 0);
    int64_t started = 0;
    while (started < n - 1 && pthread_create(&tid[started], NULL, take_items, &pool) == 0) started++;
    take_items(&pool);
    for (int64_t t = 0; t < started; t++) pthread_join(tid[t], NULL);
    free(tid);
}

/* ---- the decoder ---- */

typedef struct {
    const wl_kernels *kern;
    const uint8_t *u;
    const float *ascale;
    const int32_t *zp;
    int64_t m, k, n, n_pad;
    const int8_t *wp;
    const float *wscale;
    const int32_t *wsum;
    const float *bias;
    const int64_t *targets; /* [m] or NULL */
    float *logits;          /* [m, n] or NULL */
    float *target_logit;    /* [m]: written by the chunk that holds the target */
    lse_t *part;            /* [chunks][m]: each chunk's log-sum-exp of each row */
} decoder_job;

/* one chunk of the vocabulary for every row: blocks of NB words outside (a block of W, 64 KiB at
 * K = 256, stays in L2 while all rows pass), groups of MR rows inside */
static void decoder_chunk(const void *arg, int64_t chunk) {
    const decoder_job *d = arg;
    float z[MR * NB] __attribute__((aligned(64)));
    lse_t *part = d->part + chunk * d->m;
    for (int64_t r = 0; r < d->m; r++) part[r] = (lse_t){-INFINITY, 0.0};
    int64_t start = chunk * CHUNK_WORDS, end = start + CHUNK_WORDS < d->n_pad ? start + CHUNK_WORDS : d->n_pad;
    for (int64_t n0 = start; n0 < end; n0 += NB) {
        int64_t width = end - n0 < NB ? end - n0 : NB, panels = width / NR;
        int64_t valid = d->n - n0 < width ? d->n - n0 : width; /* words past n are padding */
        for (int64_t r0 = 0; r0 < d->m; r0 += MR) {
            int64_t rows = d->m - r0 < MR ? d->m - r0 : MR;
            d->kern->qgemm(d->u + r0 * d->k, rows, d->k, d->wp + n0 * d->k, panels, d->ascale + r0, d->zp + r0,
                           d->wscale + n0, d->wsum + n0, d->bias + n0, z, width);
            for (int64_t r = r0; r < r0 + rows; r++) {
                const float *zr = z + (r - r0) * width;
                if (d->logits) memcpy(d->logits + r * d->n + n0, zr, sizeof(float) * (size_t)valid);
                if (d->targets && d->targets[r] >= n0 && d->targets[r] < n0 + valid)
                    d->target_logit[r] = zr[d->targets[r] - n0];
                d->kern->lse_block(&part[r], zr, valid);
            }
        }
    }
}

/* fold one chunk's log-sum-exp into the running one of its row */
static void lse_merge(lse_t *into, const lse_t *part) {
    lse_raise_max(into, part->max);
    into->sum += part->sum * exp((double)part->max - (double)into->max);
}

/* The decoder over m rows: any of the NLL of targets[m] (targets and nll given), the logits [m, n]
 * (logits given) and the log-sum-exp of each row's logits lse[m] (lse given). wp: packed weights
 * (n_pad = n rounded up to 16 rows, 64-byte aligned); wscale, wsum, bias: [n_pad] with zero padding.
 * isa: the kernel (0 portable, 1 AVX2, 2 AVX-512 VNNI; see wl_best_isa); threads >= 1.
 * Returns 0, or -1 for a bad argument (a target outside [0, n), a kernel this CPU lacks) or no memory. */
int wl_decoder_nll(const float *x, int64_t m, int64_t k, const int8_t *wp, int64_t n, int64_t n_pad,
                   const float *wscale, const int32_t *wsum, const float *bias, const int64_t *targets, float *nll,
                   float *logits, float *lse, int isa, int threads) {
    const wl_kernels *kern = kernels_for(isa);
    if (!kern || threads < 1 || m < 1 || k < 4 || k % 4 || n < 1 || n_pad != (n + NR - 1) / NR * NR ||
        ((uintptr_t)wp & 63) || (targets && !nll))
        return -1;
    for (int64_t r = 0; targets && r < m; r++)
        if (targets[r] < 0 || targets[r] >= n) return -1;
    int64_t chunks = (n_pad + CHUNK_WORDS - 1) / CHUNK_WORDS;
    uint8_t *u = malloc((size_t)(m * k));
    float *ascale = malloc(sizeof(float) * (size_t)m), *target_logit = malloc(sizeof(float) * (size_t)m);
    int32_t *zp = malloc(sizeof(int32_t) * (size_t)m);
    lse_t *part = malloc(sizeof(lse_t) * (size_t)(chunks * m));
    int ok = u && ascale && target_logit && zp && part;
    if (ok) {
        kern->quantize(x, m, k, u, ascale, zp);
        decoder_job job = {kern,   u,    ascale, zp,      m,      k,      n,           n_pad, wp,
                           wscale, wsum, bias,   targets, logits, target_logit, part};
        parallel_for(threads, chunks, m * k * n_pad, decoder_chunk, &job);
        for (int64_t r = 0; r < m; r++) {
            lse_t all = {-INFINITY, 0.0};
            for (int64_t c = 0; c < chunks; c++) lse_merge(&all, &part[c * m + r]);
            double log_z = log(all.sum) + (double)all.max;
            if (lse) lse[r] = (float)log_z;
            if (targets) nll[r] = (float)(log_z - target_logit[r]);
        }
    }
    free(u), free(ascale), free(target_logit), free(zp), free(part);
    return ok ? 0 : -1;
}

/* ---- the LSTM ---- */

typedef struct {
    const wl_kernels *kern;
    const uint8_t *u;
    const float *ascale;
    const int32_t *zp;
    int64_t rows, k, n;
    const int8_t *wp;
    const float *wscale;
    const int32_t *wsum;
    const float *bias;
    float *out; /* [rows, n] */
} linear_job;

/* PROJ_PANELS panels of W for every row: each output is computed once, by one thread */
static void linear_panels(const void *arg, int64_t item) {
    const linear_job *j = arg;
    int64_t p0 = item * PROJ_PANELS, panels = j->n / NR - p0 < PROJ_PANELS ? j->n / NR - p0 : PROJ_PANELS;
    int64_t n0 = p0 * NR;
    for (int64_t r0 = 0; r0 < j->rows; r0 += MR) {
        int64_t rows = j->rows - r0 < MR ? j->rows - r0 : MR;
        j->kern->qgemm(j->u + r0 * j->k, rows, j->k, j->wp + n0 * j->k, panels, j->ascale + r0, j->zp + r0,
                       j->wscale + n0, j->wsum + n0, j->bias + n0, j->out + r0 * j->n + n0, j->n);
    }
}

/* out[m, n] = x[m, k] (quantized per row) . W^T + b, n a multiple of 16 (no padding); u, ascale, zp:
 * scratch for m rows */
static void qlinear(const wl_kernels *kern, int threads, const float *x, int64_t m, int64_t k, const int8_t *wp,
                    int64_t n, const float *wscale, const int32_t *wsum, const float *bias, float *out, uint8_t *u,
                    float *ascale, int32_t *zp) {
    kern->quantize(x, m, k, u, ascale, zp);
    linear_job job = {kern, u, ascale, zp, m, k, n, wp, wscale, wsum, bias, out};
    parallel_for(threads, (n / NR + PROJ_PANELS - 1) / PROJ_PANELS, m * k * n, linear_panels, &job);
}

/* One LSTM layer over steps x batch inputs x[steps, batch, in_dim]: y[steps, batch, hidden] and the
 * state h, c [batch, hidden] (read, then updated in place). The input projection of all steps is one
 * GEMM on `threads` threads; the recurrence, one step after the other, on the calling thread. */
static int lstm_layer(const wl_kernels *kern, int threads, const float *x, int64_t steps, int64_t batch,
                      int64_t in_dim, int64_t hidden, const int8_t *wih, const float *wih_scale,
                      const int32_t *wih_sum, const float *b_ih, const int8_t *whh, const float *whh_scale,
                      const int32_t *whh_sum, const float *b_hh, float *h, float *c, float *y) {
    int64_t g4 = 4 * hidden, rows = steps * batch, widest = in_dim > hidden ? in_dim : hidden;
    float *xproj = malloc(sizeof(float) * (size_t)(rows * g4)), *gates = malloc(sizeof(float) * (size_t)(batch * g4));
    uint8_t *u = malloc((size_t)(rows * widest));
    float *ascale = malloc(sizeof(float) * (size_t)rows);
    int32_t *zp = malloc(sizeof(int32_t) * (size_t)rows);
    int ok = xproj && gates && u && ascale && zp;
    if (ok) {
        qlinear(kern, threads, x, rows, in_dim, wih, g4, wih_scale, wih_sum, b_ih, xproj, u, ascale, zp);
        for (int64_t t = 0; t < steps; t++) {
            qlinear(kern, 1, h, batch, hidden, whh, g4, whh_scale, whh_sum, b_hh, gates, u, ascale, zp);
            const float *xp = xproj + t * batch * g4;
            for (int64_t i = 0; i < batch * g4; i++) gates[i] = xp[i] + gates[i];
            for (int64_t b = 0; b < batch; b++) kern->cell(gates + b * g4, hidden, h + b * hidden, c + b * hidden);
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
 * isa, threads: as for wl_decoder_nll. Returns 0, or -1 for a bad argument or no memory. */
int wl_lstm(const float *x, int64_t steps, int64_t batch, int64_t in_dim, int64_t hidden, int64_t layers,
            const int8_t *const *wih, const float *const *wih_scale, const int32_t *const *wih_sum,
            const float *const *b_ih, const int8_t *const *whh, const float *const *whh_scale,
            const int32_t *const *whh_sum, const float *const *b_hh, float *h, float *c, float *y, int isa,
            int threads) {
    const wl_kernels *kern = kernels_for(isa);
    if (!kern || threads < 1 || steps < 1 || batch < 1 || layers < 1 || in_dim % 4 || hidden % 4 ||
        (4 * hidden) % NR)
        return -1;
    for (int64_t l = 0; l < layers; l++)
        if (((uintptr_t)wih[l] & 63) || ((uintptr_t)whh[l] & 63)) return -1;
    float *buf = layers > 1 ? malloc(sizeof(float) * (size_t)(steps * batch * hidden)) : NULL;
    if (layers > 1 && !buf) return -1;
    const float *in = x;
    int rc = 0;
    for (int64_t l = 0; l < layers && rc == 0; l++) {
        float *out = (layers - 1 - l) % 2 == 0 ? y : buf; /* alternate, so that the top layer writes y */
        rc = lstm_layer(kern, threads, in, steps, batch, l ? hidden : in_dim, hidden, wih[l], wih_scale[l],
                        wih_sum[l], b_ih[l], whh[l], whh_scale[l], whh_sum[l], b_hh[l], h + l * batch * hidden,
                        c + l * batch * hidden, out);
        in = out;
    }
    free(buf);
    return rc;
}

/* the best kernel this CPU runs: 2 AVX-512 VNNI, 1 AVX2, 0 portable C */
int wl_best_isa(void) { return best_isa(); }

/* A Python module only so that the library is built and found like any extension; the functions
 * above are called through ctypes (wordlm/native/__init__.py). */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_kernels", .m_doc = "wordlm's native kernels",
                                    .m_size = -1};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
