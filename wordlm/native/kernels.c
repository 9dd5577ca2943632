/* wordlm native kernels: int8 GEMMs for the recurrent layers (LSTM, GRU, RNN) and the decoder of
 * evaluation, with the loss fused.
 * This file: the arithmetic contract, the portable kernels, and the decoder's and recurrent stack's
 * drivers over any table of kernels (wl_decoder_run, wl_rnn_run); entry.c: the choice of kernels (ISA
 * dispatch) and the public entry points of wordlm.h; kernels_x86.c: the AVX2 and AVX-512 VNNI kernels;
 * kernels_arm.c: the ARM64 ones (NEON, dot product, I8MM); threads.c: the thread pool. The include
 * graph is a tree: entry.c knows every table, the tables know kernels.h, kernels.c knows no table.
 *
 * The decoder: logits[m, n] = x[m, :] . W[n, :] + b[n] for M rows of LSTM output x and N = 33,278
 * words, then the negative log-likelihood of one target per row (and/or the log-sum-exp of the row,
 * from which a caller gets log-probabilities as logits - lse). Each block of logits goes to a small
 * buffer that stays in L1 and is folded into a running log-sum-exp, so the M x N logits never reach
 * memory and no separate log-softmax pass reads them back (benchmarks/quant.md).
 * The recurrent layers: per layer, the input projection of every step is one GEMM, then per step the
 * recurrent GEMM of the batch's h and the cell (the LSTM's vectorised), and an LSTM's projection.
 *
 * Arithmetic (the numpy reference in wordlm/native/reference.py computes exactly the same GEMMs):
 * - weights: int8 codes q[n, k] in [-128, 127] with one float scale per row, packed by `pack_linear`
 *   into panels of 16 rows: [N/16][K/4][16][4] bytes;
 * - activations: per row, asymmetric 7-bit, u = clamp(rint(x * inv_s) + zp, 0, 127) with
 *   s = (max(x, 0) - min(x, 0)) / 127. Seven bits because the AVX2 int8 product (vpmaddubsw) adds
 *   pairs of u8 x s8 products in int16: 127 * 128 * 2 = 32,512 cannot saturate, where full u8
 *   activations could (the saturation ONNX Runtime documents for its AVX2 u8s8 kernels); the same
 *   bound lets ARMv8.0 NEON add two products per int16 lane (SMULL + SMLAL), and codes below 128 are
 *   also int8, which ARM's signed SDOT and SMMLA take as they are;
 * - acc = sum_k u * q - zp * sum_k q (exact, int32); y = (float)acc * (s * w_scale) + b, with no
 *   fused multiply-add (built with -ffp-contract=off), so every kernel and numpy agree bit for bit;
 * - int4 weights (codes within [-8, 7], a matrix's WL_CODES4 flag: wordlm.h) are the same arithmetic; a
 *   table may give them a GEMM of its own (qgemm4) that adds more products in int16 before widening
 *   (AVX2: 16 vpmaddubsw results per vpmaddwd, kernels_x86.c; ARMv8.0 NEON: 16 groups' products per
 *   int16 lane, kernels_arm.c), which gives the same integer sums;
 * - fine activations (a matrix's WL_FINE flag: the input projections and the decoder of a scheme that asks):
 *   each row's residual r = x - (float)(u - zp) * s is quantized the same way and its product, without
 *   the bias, is added: y = y(x) + y(r). Two 7-bit codes make ~14 bits (the residual's range is one step
 *   of x's) from the same kernels, for twice the GEMM: on the shipped model the 7-bit activations cost
 *   ~0.001 nats, nearly all at the input projections and the decoder (benchmarks/activations.md).
 *
 * Kernels by architecture, each a table of functions (kernels.h) as ggml chooses its own, numbered
 * from 0 (portable C) up (isa_names below): x86 AVX2 and AVX-512 VNNI, ARM64 NEON, dot product (SDOT)
 * and I8MM (SMMLA); the caller names one (wordlm.native resolves WORDLM_ISA and the CPU's best). The
 * GEMMs are identical; exp (in the log-sum-exp and the LSTM's sigmoid and tanh) is a polynomial in
 * the vector kernels and libm in C, ~1e-7 relative apart (the GRU's and RNN's cells are C in all).
 *
 * Threads (a pool started once, threads.c): the work is cut into a partition that does not depend on the
 * number of threads (chunks of the vocabulary; blocks of the recurrent layers' hidden units), and
 * whatever is summed across pieces is summed on the calling thread in the partition's order: every
 * thread count gives the same bits. The decoder's threads take chunks from a shared counter; the recurrent layers'
 * take blocks of units, computing those units' gates and cell, with one barrier per step (two with an
 * LSTM's projection).
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "wordlm.h"
#include "kernels.h"
#include "sample.h"
#include "threads.h"

#define CHUNK_WORDS (2 * NB) /* the decoder's unit of work: 33 chunks for the tutorial's vocabulary */

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

WL_PLAIN_KERNELS(c, )

const wl_kernels wl_kernels_portable = {quantize_rows_c, qgemm_c, lse_block_c, wl_cell_c, NULL,
                                        NULL,            unpack_c, weights_c,  max_c};

/* ---- fine activations ---- */

/* rows of a matrix's input as the GEMMs take them: 7-bit codes u [rows, k], scale s and zero point zp
 * per row (u NULL: none, e.g. no residual) */
typedef struct {
    uint8_t *u;
    float *s;
    int32_t *zp;
} codes_t;

static codes_t codes_from(codes_t a, int64_t row, int64_t k) {
    return a.u ? (codes_t){a.u + row * k, a.s + row, a.zp + row} : a;
}

/* x [m, k] -> its codes a, and where r.u is given its residual's codes r (res: [m, k] floats of scratch) */
static void quantize_fine(const wl_kernels *kern, const float *x, int64_t m, int64_t k, codes_t a, codes_t r,
                          float *res) {
    kern->quantize(x, m, k, a.u, a.s, a.zp);
    if (!r.u) return;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < k; j++)
            res[i * k + j] = x[i * k + j] - (float)((int32_t)a.u[i * k + j] - a.zp[i]) * a.s[i];
    kern->quantize(res, m, k, r.u, r.s, r.zp);
}

/* a table's GEMM (qgemm, or qgemm4 for int4 codes: wl_qgemm_for) of codes a, plus (r.u given) that of the
 * residual's codes r without the bias (zeros: as many zeros as bias has entries), summed into z; tmp:
 * [rows, panels * NR] floats */
static void qgemm_fine(wl_qgemm_fn qgemm, codes_t a, codes_t r, int64_t rows, int64_t k, const int8_t *wp,
                       int64_t panels, const float *wscale, const int32_t *wsum, const float *bias, const float *zeros,
                       float *z, int64_t ldz, float *tmp) {
    qgemm(a.u, rows, k, wp, panels, a.s, a.zp, wscale, wsum, bias, z, ldz);
    if (!r.u) return;
    int64_t width = panels * NR;
    qgemm(r.u, rows, k, wp, panels, r.s, r.zp, wscale, wsum, zeros, tmp, width);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < width; j++) z[i * ldz + j] += tmp[i * width + j];
}

/* ---- int4 weights as nibbles (WL_NIBBLES) ----
 * Generation reads every matrix once per word (8.5 MB of int8 codes for the tutorial's decoder, ~3 MB for its
 * LSTM): memory, not arithmetic, sets its pace, so int4 codes (or narrower) are kept two a byte. For each pair of
 * groups of 4 inputs (2i, 2i + 1) of a panel, 64 bytes: the low nibbles hold group 2i's 64 bytes of the int8
 * layout, the high nibbles group 2i + 1's, each as code + 8 (0..15); an odd last group's partner is code 0. A panel
 * is 64 * ceil(K / 8) bytes, half the int8 layout's. For one row (generation) a table's gemv_nibbles reads them as
 * they are; otherwise the decoder unpacks a block of NB words at a time into the int8 layout in a buffer of its
 * thread (L2-resident: 128 KiB at K = 256) for the table's GEMM, and the recurrent stack a block of units' gate rows
 * (panels_for), so every table reads them, and the same codes give the same bits either way. */

/* this thread's buffer of at least `bytes` (64-byte aligned), kept for its next calls; NULL: no memory */
static int8_t *thread_buffer(size_t bytes) {
    static _Thread_local int8_t *buf;
    static _Thread_local size_t size;
    if (size < bytes) {
        free(buf);
        size = (bytes + 63) / 64 * 64;
        buf = aligned_alloc(64, size);
        if (!buf) size = 0;
    }
    return buf;
}

/* The GEMM and the weights it reads for `panels` panels of w's rows from `row` (a multiple of NR) at
 * `rows` rows of input: the int8 layout as it is; nibbles as they are where the table reads them (one
 * row: gemv_nibbles); otherwise those panels unpacked into `buffer` (panels * k * NR bytes; NULL: none
 * to hand, and NULL comes back) for the table's int8 GEMM. *fn: that GEMM. */
static const int8_t *panels_for(const wl_kernels *kern, const int8_t *wp, int64_t flags, int64_t row, int64_t panels,
                                int64_t k, int64_t rows, int8_t *buffer, wl_qgemm_fn *fn) {
    *fn = wl_qgemm_for(kern, flags);
    if (!(flags & WL_NIBBLES)) return wp + row * k;
    const int8_t *nib = wp + row / NR * wl_nibble_panel_bytes(k);
    if (rows == 1 && kern->gemv_nibbles) {
        *fn = kern->gemv_nibbles;
        return nib;
    }
    if (buffer) kern->unpack(nib, panels, k, buffer);
    return buffer;
}

/* whether a call on `rows` rows of w reads its nibbles through an unpacked copy (panels_for) */
static int unpacks(const wl_kernels *kern, int64_t flags, int64_t rows) {
    return (flags & WL_NIBBLES) && !(rows == 1 && kern->gemv_nibbles);
}

/* ---- the decoder ---- */

typedef struct {
    const wl_kernels *kern;
    codes_t a, r; /* the rows' codes, and their residual's (fine) */
    int64_t m, k, n, n_pad;
    const int8_t *wp;
    const float *wscale;
    const int32_t *wsum;
    const float *bias, *zeros; /* zeros [n_pad]: the residual's bias */
    const int64_t *targets; /* [m] or NULL */
    float *logits;          /* [m, n] or NULL */
    float *target_logit;    /* [m]: written by the chunk that holds the target */
    lse_t *part;            /* [chunks][m]: each chunk's log-sum-exp of each row */
    int64_t flags;          /* the matrix's (wordlm.h) */
    atomic_int *failed;     /* set by a chunk that found no memory */
    int fold;               /* the log-sum-exp is asked for (lse or nll): a logits-only call skips its exps */
} decoder_job;

/* one chunk of the vocabulary for every row: blocks of NB words outside (a block of W, 128 KiB at
 * K = 256, stays in L2 while all rows pass), groups of MR rows inside */
static void decoder_chunk(const void *arg, int64_t chunk) {
    const decoder_job *d = arg;
    float z[MR * NB] __attribute__((aligned(64))), tmp[MR * NB] __attribute__((aligned(64)));
    lse_t *part = d->part + chunk * d->m;
    for (int64_t r = 0; r < d->m; r++) part[r] = (lse_t){-INFINITY, 0.0};
    int64_t start = chunk * CHUNK_WORDS, end = start + CHUNK_WORDS < d->n_pad ? start + CHUNK_WORDS : d->n_pad;
    int8_t *unpacked = unpacks(d->kern, d->flags, d->m) ? thread_buffer((size_t)(NB * d->k)) : NULL;
    if (unpacks(d->kern, d->flags, d->m) && !unpacked) {
        atomic_store(d->failed, 1);
        return;
    }
    for (int64_t n0 = start; n0 < end; n0 += NB) {
        int64_t width = end - n0 < NB ? end - n0 : NB, panels = width / NR;
        int64_t valid = d->n - n0 < width ? d->n - n0 : width; /* words past n are padding */
        wl_qgemm_fn qgemm;
        const int8_t *wp = panels_for(d->kern, d->wp, d->flags, n0, panels, d->k, d->m, unpacked, &qgemm);
        for (int64_t r0 = 0; r0 < d->m; r0 += MR) {
            int64_t rows = d->m - r0 < MR ? d->m - r0 : MR;
            qgemm_fine(qgemm, codes_from(d->a, r0, d->k), codes_from(d->r, r0, d->k), rows, d->k, wp, panels,
                       d->wscale + n0, d->wsum + n0, d->bias + n0, d->zeros ? d->zeros + n0 : NULL, z, width, tmp);
            for (int64_t r = r0; r < r0 + rows; r++) {
                const float *zr = z + (r - r0) * width;
                if (d->logits) memcpy(d->logits + r * d->n + n0, zr, sizeof(float) * (size_t)valid);
                if (d->targets && d->targets[r] >= n0 && d->targets[r] < n0 + valid)
                    d->target_logit[r] = zr[d->targets[r] - n0];
                if (d->fold) d->kern->lse_block(&part[r], zr, valid);
            }
        }
    }
}

/* fold one chunk's log-sum-exp into the running one of its row */
static void lse_merge(lse_t *into, const lse_t *part) {
    lse_raise_max(into, part->max);
    into->sum += part->sum * exp((double)part->max - (double)into->max);
}

/* ---- scratch: every buffer of a call carved from one block (the caller's, or one malloc) ---- */

/* a bump allocator over [base, base + cap): base NULL measures (take returns NULL, used grows) */
typedef struct {
    char *base;
    size_t used;
} arena_t;

static void *take(arena_t *a, size_t bytes) {
    size_t at = (a->used + 63) & ~(size_t)63; /* 64-byte aligned: the GEMMs' rows start on a cache line */
    a->used = at + bytes;
    return a->base ? a->base + at : NULL;
}

/* the call's scratch: the caller's when given (NULL if smaller than `need`), else a fresh block that
 * *owned receives (freed by the caller) */
static void *scratch_for(void *scratch, size_t bytes, size_t need, void **owned) {
    *owned = NULL;
    if (scratch) return bytes >= need ? scratch : NULL;
    return *owned = malloc(need ? need : 1);
}

/* The decoder's buffers: the rows' codes (and their residual's, fine), the target logits, each chunk's
 * log-sum-exp of each row */
typedef struct {
    codes_t a, r;
    float *res, *zeros, *target_logit;
    lse_t *part;
} decoder_scratch;

static decoder_scratch decoder_layout(arena_t *ar, int64_t m, int64_t k, int64_t n_pad, int fine) {
    size_t M = (size_t)m, K = (size_t)k;
    int64_t chunks = (n_pad + CHUNK_WORDS - 1) / CHUNK_WORDS;
    decoder_scratch d = {.a = {take(ar, M * K), take(ar, sizeof(float) * M), take(ar, sizeof(int32_t) * M)}};
    if (fine) {
        d.r = (codes_t){take(ar, M * K), take(ar, sizeof(float) * M), take(ar, sizeof(int32_t) * M)};
        d.res = take(ar, sizeof(float) * M * K);
        d.zeros = take(ar, sizeof(float) * (size_t)n_pad);
    }
    d.target_logit = take(ar, sizeof(float) * M);
    d.part = take(ar, sizeof(lse_t) * (size_t)chunks * M);
    return d;
}

size_t wl_decoder_scratch_size(int64_t m, int64_t k, int64_t n_pad, int flags) {
    arena_t ar = {NULL, 0};
    decoder_layout(&ar, m, k, n_pad, flags & WL_FINE);
    return ar.used + 64;
}

/* The decoder over m rows: any of the NLL of targets[m] (targets and nll given), the logits [m, n]
 * (logits given) and the log-sum-exp of each row's logits lse[m] (lse given). wp: packed weights
 * (n_pad = n rounded up to 16 rows, 64-byte aligned); wscale, wsum, bias: [n_pad] with zero padding;
 * flags: the matrix's (wordlm.h): WL_FINE, the rows as two codes (above); WL_CODES4, its codes within [-8, 7];
 * WL_NIBBLES (with WL_CODES4), wp holds them two a byte (above).
 * scratch: wl_decoder_scratch_size bytes of the caller's (no allocation), or NULL (one malloc); a thread's
 * first call on nibbles without a table's kernel for them allocates its buffer (kept for its next calls).
 * Returns 0, or -1 for a bad argument (a target outside [0, n), scratch too small) or no memory. */
int wl_decoder_run(const wl_kernels *kern, const float *x, int64_t m, int64_t k, const int8_t *wp, int64_t n,
                   int64_t n_pad, const float *wscale, const int32_t *wsum, const float *bias, int flags,
                   const int64_t *targets, float *nll, float *logits, float *lse, int threads, void *scratch,
                   size_t scratch_bytes) {
    if (!kern || threads < 1 || m < 1 || k < 4 || k % 4 || n < 1 || n_pad != (n + NR - 1) / NR * NR ||
        ((uintptr_t)wp & 63) || (targets && !nll) || ((flags & WL_NIBBLES) && !(flags & WL_CODES4)))
        return -1;
    for (int64_t r = 0; targets && r < m; r++)
        if (targets[r] < 0 || targets[r] >= n) return -1;
    int64_t chunks = (n_pad + CHUNK_WORDS - 1) / CHUNK_WORDS;
    int fine = flags & WL_FINE, passes = fine ? 2 : 1;
    void *owned, *block = scratch_for(scratch, scratch_bytes, wl_decoder_scratch_size(m, k, n_pad, flags), &owned);
    if (!block) return -1;
    arena_t ar = {(char *)(((uintptr_t)block + 63) & ~(uintptr_t)63), 0};
    decoder_scratch s = decoder_layout(&ar, m, k, n_pad, fine);
    if (fine) memset(s.zeros, 0, sizeof(float) * (size_t)n_pad);
    quantize_fine(kern, x, m, k, s.a, s.r, s.res);
    atomic_int failed = 0;
    decoder_job job = {kern,   s.a,     s.r,    m,  k, n, n_pad, wp, wscale, wsum, bias, s.zeros, targets,
                       logits, s.target_logit, s.part, flags, &failed, lse || targets};
    wl_parallel_for(threads, chunks, passes * m * k * n_pad, decoder_chunk, &job);
    int ok = !atomic_load(&failed);
    for (int64_t r = 0; ok && job.fold && r < m; r++) {
        lse_t all = {-INFINITY, 0.0};
        for (int64_t c = 0; c < chunks; c++) lse_merge(&all, &s.part[c * m + r]);
        double log_z = log(all.sum) + (double)all.max;
        if (lse) lse[r] = (float)log_z;
        if (targets) nll[r] = (float)(log_z - s.target_logit[r]);
    }
    free(owned);
    return ok ? 0 : -1;
}

/* ---- the recurrent stack: LSTM (with or without a projection), GRU, RNN ---- */

/* The unit of the recurrence's partition: blocks of UNIT_BLOCK hidden units (the last block of a
 * layer holds what remains, a multiple of 4). W_ih, W_hh and their biases come with their gates x H
 * rows in block order (wordlm.native.PackedRecurrent arranges them): block by block, the block's rows
 * of each gate in torch's order (LSTM i, f, g, o; GRU r, z, n; RNN its one), so that a block's gate
 * rows are whole panels (gates x 32 rows; the last block's rows end the matrix, whose padding fills
 * their last panel) and its gates are laid out as the cell reads those of a layer of that many units.
 * A block of a step (its gate rows, the cell of its units) is one item of a phase (above), the same
 * calls whatever thread takes it. 32 units rather than 16: the calls per block cost ~4% of the
 * one-thread LSTM at 16 (tutorial sizes), and 8 blocks still balance 2 to 4 threads. An LSTM's
 * projection (h = W_hr m, m = o * tanh(c)) is one more phase per step, in blocks of UNIT_BLOCK rows
 * of W_hr: it needs every unit's m. */
/* UNIT_BLOCK: kernels.h */
#define QUANT_ROWS 8 /* rows of a layer's input per item of quantization */

/* The cell of one batch row's block of `width` units: xp and g are the block's gate rows of the input
 * projection and of the recurrent GEMM, each with its bias (g is the cell's to overwrite); hprev the
 * units' h of the step before, h their new h (m, for a projected LSTM), c their LSTM cell state
 * (updated in place; unused by the others). The vector kernels' LSTM cell is the table's; the other
 * cells are portable C for every kernel (their GEMMs are where the time goes). */
typedef void (*cell_fn)(const wl_kernels *kern, const float *xp, float *g, int64_t width, const float *hprev,
                        float *h, float *c);

static void lstm_cell(const wl_kernels *kern, const float *xp, float *g, int64_t width, const float *hprev,
                      float *h, float *c) {
    (void)hprev;
    for (int64_t i = 0; i < 4 * width; i++) g[i] = xp[i] + g[i];
    kern->cell(g, width, h, c);
}

/* torch's GRU: the reset gate scales W_hn h + b_hn, the recurrent part with its bias, which is why
 * the input projection and the recurrent GEMM are kept apart until the cell */
static void gru_cell(const wl_kernels *kern, const float *xp, float *g, int64_t width, const float *hprev, float *h,
                     float *c) {
    (void)kern, (void)c;
    for (int64_t j = 0; j < width; j++) {
        float r = sigmoid_c(xp[j] + g[j]), z = sigmoid_c(xp[width + j] + g[width + j]);
        float n = tanhf(xp[2 * width + j] + r * g[2 * width + j]);
        h[j] = (1.f - z) * n + z * hprev[j];
    }
}

static void rnn_tanh_cell(const wl_kernels *kern, const float *xp, float *g, int64_t width, const float *hprev,
                          float *h, float *c) {
    (void)kern, (void)hprev, (void)c;
    for (int64_t j = 0; j < width; j++) h[j] = tanhf(xp[j] + g[j]);
}

static void rnn_relu_cell(const wl_kernels *kern, const float *xp, float *g, int64_t width, const float *hprev,
                          float *h, float *c) {
    (void)kern, (void)hprev, (void)c;
    for (int64_t j = 0; j < width; j++) {
        float a = xp[j] + g[j];
        h[j] = a > 0.f ? a : 0.f;
    }
}

/* The cells by number, and by name: wordlm/cells.py's registry names each entry's C step here (its
 * `kernel`) and wordlm.native checks the gates and the state against this table when it loads the
 * library (wl_cell_name, wl_cell_info). A new cell is a step function above and a row here. */
static const struct {
    const char *name;
    int64_t gates;
    int has_c, projection; /* a cell state c beside h; takes a projection W_hr (torch's proj_size) */
    cell_fn fn;
} cells[] = {{"lstm", 4, 1, 1, lstm_cell},
             {"gru", 3, 0, 0, gru_cell},
             {"rnn_tanh", 1, 0, 0, rnn_tanh_cell},
             {"rnn_relu", 1, 0, 0, rnn_relu_cell}};
#define CELL_COUNT ((int)(sizeof(cells) / sizeof(cells[0])))

enum { W_IH, W_HH, W_HR, MATRICES }; /* a layer's matrices, in wl_rnn's w[layers][MATRICES] */

typedef struct {
    const wl_kernels *kern;
    cell_fn cell;
    int64_t gates, steps, batch, in_dim, hidden, proj, layers;
    int64_t out_dim; /* the size of h: proj, or hidden */
    int64_t ldg;     /* the gate rows padded to whole panels (W_ih's and W_hh's n_pad) */
    int64_t ldp;     /* proj padded to whole panels */
    const float *x;
    const wl_packed *w; /* [layers][MATRICES] */
    float *h, *c, *y;
    float *buf;   /* [steps, batch, out_dim]: the output of the layers that do not write y */
    float *h0;    /* [layers, batch, out_dim]: the state h as it came in (h is written at the last step) */
    codes_t xa;   /* [steps * batch, widest]: the layer input's codes, */
    codes_t xr;   /* and its residual's where W_ih is fine (u NULL when no layer's is) */
    float *xres;  /* [steps * batch, widest]: the residual (fine) */
    float *zeros; /* [ldg]: the residual's bias (fine) */
    float *xproj; /* [steps * batch, ldg]: the input projection */
    float *grec;  /* [batch, ldg]: the recurrent GEMM of one step */
    float *m;     /* [batch, hidden]: a projected LSTM's o * tanh(c) of one step */
    float *pout;  /* [batch, ldp]: its projection */
    uint8_t *uh;  /* per thread [batch, out_dim]: the previous h, quantized (by each thread that needs it) */
    float *hs;    /* per thread [batch] */
    int32_t *hz;  /* per thread [batch] */
    uint8_t *um;  /* per thread [batch, hidden]: m quantized (projected LSTM) */
    float *ms;    /* per thread [batch] */
    int32_t *mz;  /* per thread [batch] */
    int8_t *unpacked; /* per thread [unpack_bytes]: a block's panels of nibbles unpacked (NULL: no nibbles) */
    int64_t unpack_bytes;
} rnn_job;

/* one thread's view: the layer and step it is at, and its quantized copies of the previous h and of m */
typedef struct {
    const rnn_job *j;
    const wl_packed *w; /* the layer's matrices */
    int64_t layer, step, k;
    const float *in; /* the layer's input [steps * batch, k] */
    float *out;      /* and output [steps, batch, out_dim] */
    uint8_t *uh, *um;
    float *hs, *ms;
    int32_t *hz, *mz;
    int64_t h_quantized, m_quantized; /* the step whose previous h uh holds, whose m um holds (-1: none) */
    int8_t *unpacked;                 /* this thread's unpacked panels: those of unpacked_from at unpacked_row */
    const wl_packed *unpacked_from;
    int64_t unpacked_row;
} rnn_thread;

/* rows [0, rows) of codes a (the batch; r: their residual's, fine, with zeros for its bias) x `panels`
 * panels of W's rows from `row` -> out[r * ldo + ...], in groups of MR rows. Nibbles that the table does
 * not read at this many rows are unpacked into the thread's buffer, once for as long as it asks for the
 * same panels (a layer's input projection: each block once for all its rows). */
static void qgemm_rows(rnn_thread *t, codes_t a, codes_t r, int64_t rows, int64_t k, const wl_packed *w, int64_t row,
                       int64_t panels, const float *zeros, float *out, int64_t ldo) {
    float tmp[MR * 4 * UNIT_BLOCK]; /* the most panels: a block's 4 gates of 32 units */
    const wl_kernels *kern = t->j->kern;
    int unpacked = unpacks(kern, w->flags, rows);
    wl_qgemm_fn qgemm = wl_qgemm_for(kern, w->flags);
    const int8_t *wp = t->unpacked; /* these panels, where this thread's last call unpacked them */
    if (!unpacked || t->unpacked_from != w || t->unpacked_row != row) {
        wp = panels_for(kern, w->panels, w->flags, row, panels, k, rows, t->unpacked, &qgemm);
        if (unpacked) t->unpacked_from = w, t->unpacked_row = row;
    }
    for (int64_t r0 = 0; r0 < rows; r0 += MR) {
        int64_t nr = rows - r0 < MR ? rows - r0 : MR;
        qgemm_fine(qgemm, codes_from(a, r0, k), codes_from(r, r0, k), nr, k, wp, panels, w->scale + row, w->sum + row,
                   w->bias + row, zeros ? zeros + row : NULL, out + r0 * ldo, ldo, tmp);
    }
}

/* the units of the block that starts at unit v, and the panels of the gate rows of `width` units */
static int64_t block_width(const rnn_job *j, int64_t v) {
    return j->hidden - v < UNIT_BLOCK ? j->hidden - v : UNIT_BLOCK;
}
static int64_t block_panels(const rnn_job *j, int64_t width) { return (j->gates * width + NR - 1) / NR; }

/* item: QUANT_ROWS rows of the layer's input -> their codes */
static void rnn_quantize_rows(void *arg, int64_t item) {
    rnn_thread *t = arg;
    const rnn_job *j = t->j;
    int64_t rows = j->steps * j->batch, r0 = item * QUANT_ROWS, nr = rows - r0 < QUANT_ROWS ? rows - r0 : QUANT_ROWS;
    codes_t none = {0}, r = t->w[W_IH].flags & WL_FINE ? codes_from(j->xr, r0, t->k) : none;
    quantize_fine(j->kern, t->in + r0 * t->k, nr, t->k, codes_from(j->xa, r0, t->k), r,
                  j->xres ? j->xres + r0 * t->k : NULL);
}

/* item: the input projection of one block of units for MR rows (steps x batch) of the layer's input:
 * items small enough (~5 us at the tutorial's sizes) that no thread waits long for another's last */
static void rnn_input_gemm(void *arg, int64_t item) {
    rnn_thread *t = arg;
    const rnn_job *j = t->j;
    int64_t rows = j->steps * j->batch, groups = (rows + MR - 1) / MR;
    int64_t v = item / groups * UNIT_BLOCK, r0 = item % groups * MR, nr = rows - r0 < MR ? rows - r0 : MR;
    codes_t none = {0}, r = t->w[W_IH].flags & WL_FINE ? codes_from(j->xr, r0, t->k) : none;
    qgemm_rows(t, codes_from(j->xa, r0, t->k), r, nr, t->k, &t->w[W_IH], j->gates * v,
               block_panels(j, block_width(j, v)), j->zeros, j->xproj + r0 * j->ldg + j->gates * v, j->ldg);
}

/* item: one block of units at one step; at the last step its units of the new h go to the state too
 * (a projected LSTM's h comes from rnn_project). Step t reads h_{t-1} from out[t - 1] (h0 at t = 0) and
 * writes out[t] (m): nothing is written that another item of the phase reads. */
static void rnn_block_step(void *arg, int64_t block) {
    rnn_thread *t = arg;
    const rnn_job *j = t->j;
    int64_t H = j->hidden, P = j->out_dim, B = j->batch, l = t->layer, s = t->step;
    int64_t v = block * UNIT_BLOCK, width = block_width(j, v), row = j->gates * v;
    const float *prev = s ? t->out + (s - 1) * B * P : j->h0 + l * B * P;
    if (t->h_quantized != s) {
        j->kern->quantize(prev, B, P, t->uh, t->hs, t->hz);
        t->h_quantized = s;
    }
    codes_t h = {t->uh, t->hs, t->hz}, none = {0};
    qgemm_rows(t, h, none, B, P, &t->w[W_HH], row, block_panels(j, width), NULL, j->grec + row, j->ldg);
    float *cur = j->proj ? j->m : t->out + s * B * H; /* rows of H units either way (P = H unprojected) */
    for (int64_t b = 0; b < B; b++) {
        j->cell(j->kern, j->xproj + (s * B + b) * j->ldg + row, j->grec + b * j->ldg + row, width, prev + b * P + v,
                cur + b * H + v, j->c ? j->c + (l * B + b) * H + v : NULL);
        if (!j->proj && s == j->steps - 1)
            memcpy(j->h + (l * B + b) * H + v, cur + b * H + v, sizeof(float) * (size_t)width);
    }
}

/* item: UNIT_BLOCK rows of a projected LSTM's W_hr at one step: m -> those units of h (out[t], and the
 * state at the last step), through pout, whose rows are whole panels */
static void rnn_project(void *arg, int64_t block) {
    rnn_thread *t = arg;
    const rnn_job *j = t->j;
    int64_t H = j->hidden, P = j->proj, B = j->batch, s = t->step, p0 = block * UNIT_BLOCK;
    int64_t width = P - p0 < UNIT_BLOCK ? P - p0 : UNIT_BLOCK;
    if (t->m_quantized != s) {
        j->kern->quantize(j->m, B, H, t->um, t->ms, t->mz);
        t->m_quantized = s;
    }
    codes_t m = {t->um, t->ms, t->mz}, none = {0};
    qgemm_rows(t, m, none, B, H, &t->w[W_HR], p0, (width + NR - 1) / NR, NULL, j->pout + p0, j->ldp);
    for (int64_t b = 0; b < B; b++) {
        memcpy(t->out + (s * B + b) * P + p0, j->pout + b * j->ldp + p0, sizeof(float) * (size_t)width);
        if (s == j->steps - 1)
            memcpy(j->h + (t->layer * B + b) * P + p0, j->pout + b * j->ldp + p0, sizeof(float) * (size_t)width);
    }
}

/* the stack on one thread of the team: per layer, a phase of quantizing its input, one of its input
 * projection, then per step one of its blocks of units (and one of the projection) */
static void rnn_region(void *arg, team_t *team) {
    const rnn_job *j = arg;
    int64_t B = j->batch, rows = j->steps * B, blocks = (j->hidden + UNIT_BLOCK - 1) / UNIT_BLOCK;
    int64_t proj_blocks = (j->proj + UNIT_BLOCK - 1) / UNIT_BLOCK;
    rnn_thread t = {.j = j, .in = j->x, .uh = j->uh + team->id * B * j->out_dim, .hs = j->hs + team->id * B,
                    .hz = j->hz + team->id * B, .unpacked_row = -1};
    if (j->unpacked) t.unpacked = j->unpacked + team->id * j->unpack_bytes;
    if (j->proj) t.um = j->um + team->id * B * j->hidden, t.ms = j->ms + team->id * B, t.mz = j->mz + team->id * B;
    for (t.layer = 0; t.layer < j->layers; t.layer++) {
        t.w = j->w + t.layer * MATRICES;
        t.k = t.layer ? j->out_dim : j->in_dim;
        t.out = (j->layers - 1 - t.layer) % 2 == 0 ? j->y : j->buf; /* alternate, so that the top layer writes y */
        wl_phase(team, (rows + QUANT_ROWS - 1) / QUANT_ROWS, rnn_quantize_rows, &t);
        wl_phase(team, blocks * ((rows + MR - 1) / MR), rnn_input_gemm, &t);
        t.h_quantized = t.m_quantized = -1;
        for (t.step = 0; t.step < j->steps; t.step++) {
            wl_phase(team, blocks, rnn_block_step, &t);
            if (j->proj) wl_phase(team, proj_blocks, rnn_project, &t);
        }
        t.in = t.out;
    }
}

/* the recurrent stack's buffers in `ar` (job's sizes and n threads set; base NULL: measure) */
static void rnn_layout(arena_t *ar, rnn_job *job, int64_t n, int fine, int nibbles) {
    size_t rows = (size_t)(job->steps * job->batch), B = (size_t)job->batch, P = (size_t)job->out_dim;
    size_t H = (size_t)job->hidden, L = (size_t)job->layers, N = (size_t)n, ldg = (size_t)job->ldg;
    size_t widest = (size_t)(job->in_dim > job->out_dim ? job->in_dim : job->out_dim);
    job->buf = L > 1 ? take(ar, sizeof(float) * rows * P) : NULL;
    job->h0 = take(ar, sizeof(float) * L * B * P);
    job->xa = (codes_t){take(ar, rows * widest), take(ar, sizeof(float) * rows), take(ar, sizeof(int32_t) * rows)};
    job->xr = (codes_t){0};
    job->xres = job->zeros = NULL;
    if (fine) {
        job->xr = (codes_t){take(ar, rows * widest), take(ar, sizeof(float) * rows), take(ar, sizeof(int32_t) * rows)};
        job->xres = take(ar, sizeof(float) * rows * widest);
        job->zeros = take(ar, sizeof(float) * ldg);
    }
    job->xproj = take(ar, sizeof(float) * rows * ldg);
    job->grec = take(ar, sizeof(float) * B * ldg);
    job->uh = take(ar, N * B * P);
    job->hs = take(ar, sizeof(float) * N * B);
    job->hz = take(ar, sizeof(int32_t) * N * B);
    job->m = job->pout = job->ms = NULL, job->um = NULL, job->mz = NULL;
    if (job->proj) {
        job->m = take(ar, sizeof(float) * B * H);
        job->pout = take(ar, sizeof(float) * B * (size_t)job->ldp);
        job->um = take(ar, N * B * H);
        job->ms = take(ar, sizeof(float) * N * B);
        job->mz = take(ar, sizeof(int32_t) * N * B);
    }
    /* the most panels of one call: a block's gate rows; k: the widest input (W_hr's is hidden) */
    int64_t k = (int64_t)(widest > H ? widest : H);
    job->unpack_bytes = nibbles ? (job->gates * UNIT_BLOCK + NR - 1) / NR * NR * k : 0;
    job->unpacked = nibbles ? take(ar, N * (size_t)job->unpack_bytes) : NULL;
}

/* the threads of a region over `hidden` units: one per block of units at most */
static int64_t rnn_threads(int threads, int64_t hidden) {
    int64_t blocks = (hidden + UNIT_BLOCK - 1) / UNIT_BLOCK, n = threads < blocks ? threads : blocks;
    return n > POOL_MAX ? POOL_MAX : n;
}

/* a job's sizes (no pointers) */
static rnn_job rnn_sizes(int cell, int64_t steps, int64_t batch, int64_t in_dim, int64_t hidden, int64_t proj,
                         int64_t layers) {
    int64_t gates = cells[cell].gates;
    return (rnn_job){.cell = cells[cell].fn, .gates = gates, .steps = steps, .batch = batch, .in_dim = in_dim,
                     .hidden = hidden, .proj = proj, .layers = layers, .out_dim = proj ? proj : hidden,
                     .ldg = (gates * hidden + NR - 1) / NR * NR, .ldp = (proj + NR - 1) / NR * NR};
}

size_t wl_rnn_scratch_size(int cell, int64_t steps, int64_t batch, int64_t in_dim, int64_t hidden, int64_t proj,
                           int64_t layers, int flags, int threads) {
    if (cell < 0 || cell >= CELL_COUNT || threads < 1) return 0;
    rnn_job job = rnn_sizes(cell, steps, batch, in_dim, hidden, proj, layers);
    arena_t ar = {NULL, 0};
    rnn_layout(&ar, &job, rnn_threads(threads, hidden), (flags & WL_FINE) != 0, (flags & WL_NIBBLES) != 0);
    return ar.used + 64;
}

/* A stack of recurrent layers of cell `cell` (a row of `cells`: wl_cell_name; torch's gate orders) over
 * x[steps, batch, in_dim]: y[steps, batch, P] of the top layer, and the state h [layers,
 * batch, P] and, for a cell with c (the LSTM), c [layers, batch, hidden] (read, then updated in place;
 * c NULL otherwise), where P = proj for a cell with a projection (proj > 0: h = W_hr (o * tanh(c))), else
 * hidden. w[layers][3]: W_ih [G, in] (in = in_dim for the first layer, P above) and W_hh [G, P], G =
 * gates x hidden, packed as for the decoder with their rows in UNIT_BLOCK order (above), their scales,
 * code sums and biases in the same order; W_hr [proj, hidden] in its own order (unused unprojected).
 * in_dim, hidden and proj multiples of 4. A W_ih may be fine (the input projection's rows as two codes);
 * W_hh and W_hr not (their inputs carry ~1% of the 7-bit activations' cost: benchmarks/activations.md).
 * Any of them may hold int4 codes as nibbles (WL_NIBBLES, as the decoder's): generation at batch 1 reads
 * every matrix once per word, and half the bytes is half the time where memory sets the pace.
 * threads: up to one per block of units; scratch: wl_rnn_scratch_size bytes of the caller's (no
 * allocation) or NULL (one malloc). Returns 0, or -1 for a bad argument or no memory. */
int wl_rnn_run(const wl_kernels *kern, int cell, const float *x, int64_t steps, int64_t batch, int64_t in_dim,
               int64_t hidden, int64_t proj, int64_t layers, const wl_packed *w, float *h, float *c, float *y,
               int threads, void *scratch, size_t scratch_bytes) {
    if (!kern || cell < 0 || cell >= CELL_COUNT || threads < 1 || steps < 1 || batch < 1 || layers < 1 ||
        in_dim < 4 || hidden < 4 || proj < 0 || in_dim % 4 || hidden % 4 || proj % 4 ||
        (proj && !cells[cell].projection) || (cells[cell].has_c && !c))
        return -1;
    int flags = 0; /* of all the matrices */
    for (int64_t l = 0; l < layers; l++) {
        for (int i = 0; i < (proj ? MATRICES : W_HR); i++) {
            int64_t f = w[l * MATRICES + i].flags;
            if (((uintptr_t)w[l * MATRICES + i].panels & 63) || ((f & WL_NIBBLES) && !(f & WL_CODES4))) return -1;
            flags |= (int)f;
        }
        if ((w[l * MATRICES + W_HH].flags & WL_FINE) || (proj && (w[l * MATRICES + W_HR].flags & WL_FINE))) return -1;
    }
    int fine = (flags & WL_FINE) != 0;
    size_t need = wl_rnn_scratch_size(cell, steps, batch, in_dim, hidden, proj, layers, flags, threads);
    void *owned, *block = scratch_for(scratch, scratch_bytes, need, &owned);
    if (!block) return -1;
    rnn_job job = rnn_sizes(cell, steps, batch, in_dim, hidden, proj, layers);
    job.kern = kern, job.x = x, job.w = w, job.h = h, job.c = cells[cell].has_c ? c : NULL, job.y = y;
    int64_t n = rnn_threads(threads, hidden);
    arena_t ar = {(char *)(((uintptr_t)block + 63) & ~(uintptr_t)63), 0};
    rnn_layout(&ar, &job, n, fine, (flags & WL_NIBBLES) != 0);
    if (fine) memset(job.zeros, 0, sizeof(float) * (size_t)job.ldg);
    memcpy(job.h0, h, sizeof(float) * (size_t)(layers * batch * job.out_dim));
    wl_run_region((int)n, rnn_region, &job);
    free(owned);
    return 0;
}

/* the cell table by number (wl_cell_name, wl_cell_info: wordlm.h) */
int wl_cell_count(void) { return CELL_COUNT; }

int wl_cell_row(int cell, const char **name, int64_t *gates, int *has_c, int *projection) {
    if (cell < 0 || cell >= CELL_COUNT) return -1;
    *name = cells[cell].name, *gates = cells[cell].gates, *has_c = cells[cell].has_c;
    *projection = cells[cell].projection;
    return 0;
}
