/* libwordlm's context (wordlm.h): a checkpoint read by checkpoint.c, packed for the kernels as
 * wordlm/runtime/weights.py packs it, and the runtime's operations (wordlm/runtime/model.py) on the
 * entry points of entry.c, the functions the Python package calls: the same packed bytes through the
 * same functions give the same bits.
 *
 * Memory: the packed weights (allocated once, at load); the embedding table stays in the mapped file,
 * as the Python runtime keeps it; a workspace that every call carves its buffers from (the kernels
 * take it as their scratch), grown when a call is larger than any before (wl_reserve grows it ahead),
 * so that a steady stream of calls allocates nothing. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "kernels.h"
#include "wordlm.h"

#define PANEL 16 /* rows per packed panel (kernels.h: NR) */
#define SAMPLE_BLOCK 256 /* wordlm.runtime.sampling.inverse_cdf's block */

enum { W_IH, W_HH, W_HR, MATRICES }; /* wl_rnn's w[layers][MATRICES] */

struct wl_context {
    ck_checkpoint ck;
    int isa, threads;
    char kernels[256];
    wl_error last;
    /* the embedding: the table of floats or codes (bits 0: floats) and its scales [V, groups] */
    const ck_tensor *emb;
    int emb_bits;
    const float *emb_scales; /* [V, emb_groups] as float32 (wl_embed's) */
    int64_t emb_groups;
    /* the packed matrices: [layers][MATRICES], then the decoder; each one's block to free */
    wl_packed *w, dec;
    void **blocks;
    int n_blocks;
    int64_t dec_n_pad;
    int fine_inputs;
    int rnn_flags; /* the recurrent matrices' flags or'ed together (wl_rnn_scratch_size) */
    /* the float forms (weights.py's FloatLinear, Recurrent), where the parts are not native: float32
     * weights [n, k] (as stored, or dequantized) and biases, torch's row order */
    int rnn_native, dec_native;
    const float **fw, **fb; /* [layers][MATRICES] */
    const float *dec_w, *dec_b;
    /* the workspace */
    char *ws;
    size_t ws_size;
    /* sampling's scratch: weights, block sums, a row of p, an order and its merge buffer */
    float *s_w, *s_p, *s_tmp;
    double *s_sums, *s_sorted;
    int32_t *s_order, *s_merge;
};

/* ---- errors ---- */

static int ok(wl_context *ctx) {
    ctx->last.code = WL_OK, ctx->last.message[0] = 0;
    return WL_OK;
}

#define FAIL(ctx, code, ...) ck_fail(&(ctx)->last, code, __VA_ARGS__)

const wl_error *wl_last_error(const wl_context *ctx) { return &ctx->last; }

/* ---- packing (weights.py: native.pack_linear of the stored codes, per-row scales and the bias) ---- */

/* an aligned block owned by the context */
static void *own(wl_context *ctx, size_t bytes) {
    void *p = NULL, **grown = realloc(ctx->blocks, sizeof *grown * (size_t)(ctx->n_blocks + 1));
    if (!grown) return NULL;
    ctx->blocks = grown;
    if (posix_memalign(&p, 64, bytes ? bytes : 64)) return NULL;
    memset(p, 0, bytes);
    return ctx->blocks[ctx->n_blocks++] = p;
}

/* row r of a weight's codes as int8 (quant/primitives.py's unpack_bits: offset-binary codes of `bits`
 * in one little-endian bit stream per row; 8 bits: the int8 codes themselves) */
static void unpack_row(const ck_tensor *q, int bits, int64_t r, int64_t k, int8_t *out) {
    const uint8_t *row = q->data + (size_t)(r * q->shape[1]);
    if (bits == 8) {
        memcpy(out, row, (size_t)k);
        return;
    }
    int offset = 1 << (bits - 1), mask = (1 << bits) - 1;
    for (int64_t j = 0; j < k; j++) {
        int64_t bit = j * bits, byte = bit >> 3;
        unsigned v = row[byte];
        if (byte + 1 < q->shape[1]) v |= (unsigned)row[byte + 1] << 8;
        out[j] = (int8_t)((int)(v >> (bit & 7) & (unsigned)mask) - offset);
    }
}

/* a weight the kernels take: codes of one scale per row, rows of a multiple of 4 inputs (weights.py's
 * native_ok) */
static int native_ok(const wl_context *ctx, const char *name) {
    char key[96];
    ck_qspec s = ck_spec_for(&ctx->ck, name);
    if (!s.bits) return 0;
    snprintf(key, sizeof key, "%s.scales", name);
    const ck_tensor *scales = ck_tensor_get(&ctx->ck, key);
    snprintf(key, sizeof key, "%s.qweight", name);
    const ck_tensor *q = ck_tensor_get(&ctx->ck, key);
    return scales->shape[1] == 1 && (q->shape[1] * 8 / s.bits) % 4 == 0;
}

/* int8 panels [P][K/4][16][4] of int4 codes -> kernels.c's nibbles (native._nibbles): per pair of groups
 * of 4 inputs of a panel, 64 bytes, the first group's codes + 8 in the low nibbles, the second's in the
 * high (code 0 past an odd last group); the int8 panels' block is given back */
static int8_t *to_nibbles(wl_context *ctx, int8_t *panels, int64_t P, int64_t k) {
    int64_t groups = k / 4, pairs = (groups + 1) / 2;
    uint8_t *nib = own(ctx, (size_t)(P * wl_nibble_panel_bytes(k)));
    if (!nib) return NULL;
    for (int64_t p = 0; p < P; p++)
        for (int64_t g = 0; g < groups; g += 2)
            for (int i = 0; i < 64; i++) {
                unsigned low = (unsigned)(panels[(p * groups + g) * 64 + i] + 8) & 15;
                unsigned high = g + 1 < groups ? (unsigned)(panels[(p * groups + g + 1) * 64 + i] + 8) & 15 : 8;
                nib[(p * pairs + g / 2) * 64 + i] = (uint8_t)(low | high << 4);
            }
    for (int b = ctx->n_blocks; b-- > 0;) /* the int8 panels, own()'s block: not needed any more */
        if (ctx->blocks[b] == panels) {
            free(panels);
            ctx->blocks[b] = NULL;
            break;
        }
    return (int8_t *)nib;
}

/* weight `name` packed into panels, its rows in `order` (NULL: as stored), with bias[n] read from the
 * tensor `bias` (NULL: zeros) in the same order (native.pack_linear and _rows_reordered) */
static int pack(wl_context *ctx, const char *name, const char *bias, const int64_t *order, int fine, int nibbles,
                wl_packed *out, int64_t *n_pad_out) {
    char key[96];
    ck_qspec s = ck_spec_for(&ctx->ck, name);
    snprintf(key, sizeof key, "%s.qweight", name);
    const ck_tensor *q = ck_tensor_get(&ctx->ck, key);
    snprintf(key, sizeof key, "%s.scales", name);
    const ck_tensor *sc = ck_tensor_get(&ctx->ck, key);
    const ck_tensor *b = bias ? ck_tensor_get(&ctx->ck, bias) : NULL;
    int64_t n = q->shape[0], k = q->shape[1] * 8 / s.bits, n_pad = (n + PANEL - 1) / PANEL * PANEL;
    int8_t *panels = own(ctx, (size_t)(n_pad * k)), *row = malloc((size_t)k);
    float *scale = own(ctx, sizeof(float) * (size_t)n_pad), *bvec = own(ctx, sizeof(float) * (size_t)n_pad);
    int32_t *sum = own(ctx, sizeof(int32_t) * (size_t)n_pad);
    if (!panels || !row || !scale || !bvec || !sum) {
        free(row);
        return FAIL(ctx, WL_ERR_MEMORY, "out of memory packing %s", name);
    }
    int lo = 0, hi = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t src = order ? order[i] : i, p = i / PANEL, c = i % PANEL;
        unpack_row(q, s.bits, src, k, row);
        int32_t total = 0;
        for (int64_t j = 0; j < k; j++) {
            /* [N/16][K/4][16][4]: each 64 bytes hold 4 inputs of 16 rows */
            panels[((p * (k / 4) + j / 4) * PANEL + c) * 4 + j % 4] = row[j];
            total += row[j];
            lo = row[j] < lo ? row[j] : lo, hi = row[j] > hi ? row[j] : hi;
        }
        scale[i] = ck_float_at(sc, (size_t)src), sum[i] = total, bvec[i] = b ? ck_float_at(b, (size_t)src) : 0.f;
    }
    free(row);
    int codes4 = n > 0 && lo >= -8 && hi <= 7; /* int4 weights, as stored or quantized (pack_linear) */
    if (nibbles && codes4 && !(panels = to_nibbles(ctx, panels, n_pad / PANEL, k)))
        return FAIL(ctx, WL_ERR_MEMORY, "out of memory packing %s", name);
    int flags = (fine ? WL_FINE : 0) | (codes4 ? WL_CODES4 : 0) | (nibbles && codes4 ? WL_NIBBLES : 0);
    *out = (wl_packed){panels, scale, sum, bvec, flags};
    if (n_pad_out) *n_pad_out = n_pad;
    return WL_OK;
}

/* int4 codes (or fewer bits) two a byte (weights.py): half the memory, which generation reads per word */
static int nibbles_for(const wl_context *ctx, const char *name) {
    int bits = ck_spec_for(&ctx->ck, name).bits;
    return bits > 0 && bits <= 4;
}

/* the gates x H rows in blocks of UNIT_BLOCK units, each block's rows of every gate in turn
 * (native._unit_block_order) */
static int64_t *unit_block_order(int64_t hidden, int64_t gates) {
    int64_t *order = malloc(sizeof *order * (size_t)(hidden * gates)), n = 0;
    if (!order) return NULL;
    for (int64_t u = 0; u < hidden; u += UNIT_BLOCK)
        for (int64_t g = 0; g < gates; g++)
            for (int64_t r = g * hidden + u; r < g * hidden + (u + UNIT_BLOCK < hidden ? u + UNIT_BLOCK : hidden); r++)
                order[n++] = r;
    return order;
}

/* the recurrent stack for wl_rnn: W_ih and W_hh in blocks of units, W_hr as stored */
static int pack_rnn(wl_context *ctx) {
    const ck_checkpoint *ck = &ctx->ck;
    char name[64], bias[64];
    ctx->w = own(ctx, sizeof *ctx->w * (size_t)(ck->num_layers * MATRICES));
    int64_t *order = unit_block_order(ck->hidden_dim, ck->gates);
    if (!ctx->w || !order) {
        free(order);
        return FAIL(ctx, WL_ERR_MEMORY, "out of memory");
    }
    int rc = WL_OK;
    for (int64_t l = 0; l < ck->num_layers && !rc; l++) {
        wl_packed *w = ctx->w + l * MATRICES;
        snprintf(name, sizeof name, "rnn.weight_ih_l%lld", (long long)l);
        snprintf(bias, sizeof bias, "rnn.bias_ih_l%lld", (long long)l);
        rc = pack(ctx, name, bias, order, ctx->fine_inputs, nibbles_for(ctx, name), &w[W_IH], NULL);
        snprintf(name, sizeof name, "rnn.weight_hh_l%lld", (long long)l);
        snprintf(bias, sizeof bias, "rnn.bias_hh_l%lld", (long long)l);
        if (!rc) rc = pack(ctx, name, bias, order, 0, nibbles_for(ctx, name), &w[W_HH], NULL);
        snprintf(name, sizeof name, "rnn.weight_hr_l%lld", (long long)l);
        if (!rc && ck->proj_size) /* torch's W_hr: no bias */
            rc = pack(ctx, name, NULL, NULL, 0, nibbles_for(ctx, name), &w[W_HR], NULL);
        for (int i = 0; i < MATRICES; i++) ctx->rnn_flags |= (int)w[i].flags;
    }
    free(order);
    return rc;
}

/* a tensor's first n numbers as float32 [n] (a bias, scales; NULL name: zeros, torch's W_hr has no bias) */
static const float *float_vector(wl_context *ctx, const char *name, int64_t n) {
    const ck_tensor *t = name ? ck_tensor_get(&ctx->ck, name) : NULL;
    float *b = own(ctx, sizeof(float) * (size_t)n);
    for (int64_t i = 0; b && t && i < n; i++) b[i] = ck_float_at(t, (size_t)i);
    return b;
}

/* a weight as float32 [n, k]: as stored, or its codes times their group's scale (weights.py's weight():
 * dequantize, one float32 multiply each) */
static const float *float_weight(wl_context *ctx, const char *name) {
    char key[96];
    ck_qspec s = ck_spec_for(&ctx->ck, name);
    if (!s.bits) {
        const ck_tensor *t = ck_tensor_get(&ctx->ck, name);
        size_t count = (size_t)(t->shape[0] * t->shape[1]);
        float *w = own(ctx, sizeof(float) * count);
        for (size_t i = 0; w && i < count; i++) w[i] = ck_float_at(t, i);
        return w;
    }
    snprintf(key, sizeof key, "%s.qweight", name);
    const ck_tensor *q = ck_tensor_get(&ctx->ck, key);
    snprintf(key, sizeof key, "%s.scales", name);
    const ck_tensor *sc = ck_tensor_get(&ctx->ck, key);
    int64_t n = q->shape[0], k = q->shape[1] * 8 / s.bits, groups = sc->shape[1];
    float *w = own(ctx, sizeof(float) * (size_t)(n * k));
    const float *scales = float_vector(ctx, key, n * groups); /* [n, groups] */
    for (int64_t r = 0; w && scales && r < n; r++) /* each row an embedding's row: the same arithmetic */
        wl_embed(q->data, q->shape[1], s.bits, scales, groups, n, k, &r, 1, w + r * k);
    return scales ? w : NULL;
}

/* the recurrent stack's float forms, torch's row order (weights.py's Recurrent) */
static int float_rnn_weights(wl_context *ctx) {
    const ck_checkpoint *ck = &ctx->ck;
    char name[64], bias[64];
    const char *kinds[3] = {"ih", "hh", "hr"};
    ctx->fw = own(ctx, sizeof *ctx->fw * (size_t)(ck->num_layers * MATRICES));
    ctx->fb = own(ctx, sizeof *ctx->fb * (size_t)(ck->num_layers * MATRICES));
    if (!ctx->fw || !ctx->fb) return FAIL(ctx, WL_ERR_MEMORY, "out of memory");
    for (int64_t l = 0; l < ck->num_layers; l++)
        for (int i = 0; i < (ck->proj_size ? 3 : 2); i++) {
            snprintf(name, sizeof name, "rnn.weight_%s_l%lld", kinds[i], (long long)l);
            snprintf(bias, sizeof bias, "rnn.bias_%s_l%lld", kinds[i], (long long)l);
            int64_t n = i == W_HR ? ck->proj_size : ck->gates * ck->hidden_dim;
            ctx->fw[l * MATRICES + i] = float_weight(ctx, name);
            ctx->fb[l * MATRICES + i] = float_vector(ctx, i == W_HR ? NULL : bias, n);
            if (!ctx->fw[l * MATRICES + i] || !ctx->fb[l * MATRICES + i]) return FAIL(ctx, WL_ERR_MEMORY, "out of memory");
        }
    return WL_OK;
}

/* every part as weights.py's pack() computes it: native where it packs it, else the float form */
static int pack_model(wl_context *ctx) {
    const ck_checkpoint *ck = &ctx->ck;
    char name[64];
    ctx->emb = ck_tensor_get(ck, "encoder.weight");
    ctx->emb_bits = ck_spec_for(ck, "encoder.weight").bits;
    if (ctx->emb_bits) {
        ctx->emb = ck_tensor_get(ck, "encoder.weight.qweight");
        ctx->emb_groups = ck_tensor_get(ck, "encoder.weight.scales")->shape[1];
        ctx->emb_scales = float_vector(ctx, "encoder.weight.scales", ck->vocab_size * ctx->emb_groups);
        if (!ctx->emb_scales) return FAIL(ctx, WL_ERR_MEMORY, "out of memory");
    }
    int quantized = 1;
    for (int64_t l = 0; l < ck->num_layers; l++) {
        const char *kinds[3] = {"ih", "hh", "hr"};
        for (int i = 0; i < (ck->proj_size ? 3 : 2); i++) {
            snprintf(name, sizeof name, "rnn.weight_%s_l%lld", kinds[i], (long long)l);
            quantized &= native_ok(ctx, name);
        }
    }
    const char *dec_name = ck->tied ? "encoder.weight" : "decoder.weight";
    ctx->rnn_native = quantized, ctx->dec_native = native_ok(ctx, dec_name);
    ctx->fine_inputs = ck->fine >= 1 && quantized;
    int rc = quantized ? pack_rnn(ctx) : float_rnn_weights(ctx);
    if (!rc && ctx->dec_native)
        rc = pack(ctx, dec_name, "decoder.bias", NULL, ck->fine == 2, nibbles_for(ctx, dec_name), &ctx->dec,
                  &ctx->dec_n_pad);
    if (!rc && !ctx->dec_native) {
        ctx->dec_w = float_weight(ctx, dec_name), ctx->dec_b = float_vector(ctx, "decoder.bias", ck->vocab_size);
        if (!ctx->dec_w || !ctx->dec_b) rc = FAIL(ctx, WL_ERR_MEMORY, "out of memory");
    }
    if (rc) return rc;
    const char *isa = wl_isa_name(ctx->isa), *cell = wl_cell_name(ck->cell);
    int fine = (ck->fine && quantized) || (ck->fine == 2 && ctx->dec_native);
    snprintf(ctx->kernels, sizeof ctx->kernels, "%s %s%s, decoder %s%s%s%s%s", cell, quantized ? "native " : "float32",
             quantized ? isa : "", ctx->dec_native ? "native " : "float32", ctx->dec_native ? isa : "",
             fine ? ", fine activations (" : "", fine ? (ck->fine == 2 ? "all" : "inputs") : "", fine ? ")" : "");
    return WL_OK;
}

/* ---- the context ---- */

/* WORDLM_ISA's kernel when set (checked as wordlm.native checks it), else the best */
static int choose_isa(wl_error *err, int *isa) {
    const char *forced = getenv("WORDLM_ISA");
    *isa = wl_best_isa();
    if (!forced || !*forced) return WL_OK;
    for (int i = 0; wl_isa_name(i); i++)
        if (!strcmp(wl_isa_name(i), forced)) {
            if (i > *isa)
                return ck_fail(err, WL_ERR_ISA, "WORDLM_ISA='%s': this CPU does not run it", forced);
            *isa = i;
            return WL_OK;
        }
    return ck_fail(err, WL_ERR_ISA, "WORDLM_ISA='%s' is not a kernel of this build", forced);
}

wl_context *wl_init_from_dir(const char *path, int n_threads, wl_error *err) {
    wl_error local;
    if (!err) err = &local;
    err->code = WL_OK, err->message[0] = 0;
    if (n_threads < 1 || n_threads > 256) {
        ck_fail(err, WL_ERR_ARGUMENT, "threads must be between 1 and 256, got %d", n_threads);
        return NULL;
    }
    int isa;
    if (choose_isa(err, &isa)) return NULL;
    wl_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        ck_fail(err, WL_ERR_MEMORY, "out of memory");
        return NULL;
    }
    ctx->isa = isa, ctx->threads = n_threads;
    if (ck_load(path, &ctx->ck, err)) {
        free(ctx);
        return NULL;
    }
    int64_t V = ctx->ck.vocab_size, blocks = V / SAMPLE_BLOCK + 1;
    int rc = pack_model(ctx);
    if (!rc) {
        ctx->s_w = own(ctx, sizeof(float) * (size_t)V), ctx->s_p = own(ctx, sizeof(float) * (size_t)V);
        ctx->s_tmp = own(ctx, sizeof(float) * (size_t)V), ctx->s_sums = own(ctx, sizeof(double) * (size_t)blocks);
        ctx->s_sorted = own(ctx, sizeof(double) * (size_t)V), ctx->s_order = own(ctx, sizeof(int32_t) * (size_t)V);
        ctx->s_merge = own(ctx, sizeof(int32_t) * (size_t)V);
        if (!ctx->s_w || !ctx->s_p || !ctx->s_tmp || !ctx->s_sums || !ctx->s_sorted || !ctx->s_order || !ctx->s_merge)
            rc = FAIL(ctx, WL_ERR_MEMORY, "out of memory");
    }
    if (!rc) rc = wl_reserve(ctx, 1, 1);
    if (rc) {
        *err = ctx->last;
        wl_free(ctx);
        return NULL;
    }
    ok(ctx);
    return ctx;
}

void wl_free(wl_context *ctx) {
    if (!ctx) return;
    for (int i = 0; i < ctx->n_blocks; i++) free(ctx->blocks[i]);
    free(ctx->blocks), free(ctx->ws);
    ck_free(&ctx->ck);
    free(ctx);
}

size_t wl_state_size(const wl_context *ctx) {
    const ck_checkpoint *ck = &ctx->ck;
    int64_t gates;
    int has_c, projection;
    wl_cell_info(ck->cell, &gates, &has_c, &projection);
    return (size_t)(ck->num_layers * (ck->out_dim + (has_c ? ck->hidden_dim : 0)));
}

size_t wl_logits_size(const wl_context *ctx) { return (size_t)ctx->ck.vocab_size; }
int wl_get_threads(const wl_context *ctx) { return ctx->threads; }
const char *wl_isa(const wl_context *ctx) { return ctx->kernels; }

int wl_set_threads(wl_context *ctx, int n_threads) {
    if (n_threads < 1 || n_threads > 256)
        return FAIL(ctx, WL_ERR_ARGUMENT, "threads must be between 1 and 256, got %d", n_threads);
    ctx->threads = n_threads;
    return ok(ctx);
}

/* ---- the workspace ---- */

typedef struct {
    float *x, *h, *c, *y, *nll, *lse;
    float *buf, *xproj, *hp, *m, *z; /* the float forms': a layer's output, input projection, recurrent GEMM,
                                      * cell output (before a projection), a row of logits */
    double *lse64;                   /* the float decoder's log-sum-exp per row (float64, as numpy's) */
    int64_t *targets;
    void *rnn, *dec;
    size_t rnn_bytes, dec_bytes;
} work_t;

static void *carve(char *base, size_t *used, size_t bytes) {
    size_t at = (*used + 63) & ~(size_t)63;
    *used = at + bytes;
    return base ? base + at : NULL;
}

/* the buffers of a call of `steps` x `batch` tokens in ws (NULL: measure); returns the bytes */
static size_t layout(const wl_context *ctx, int64_t steps, int64_t batch, char *ws, work_t *w) {
    const ck_checkpoint *ck = &ctx->ck;
    int64_t rows = steps * batch, L = ck->num_layers, P = ck->out_dim, H = ck->hidden_dim;
    size_t used = 0;
    w->x = carve(ws, &used, sizeof(float) * (size_t)(rows * ck->emb_dim));
    w->h = carve(ws, &used, sizeof(float) * (size_t)(L * batch * P));
    w->c = carve(ws, &used, sizeof(float) * (size_t)(L * batch * H));
    w->y = carve(ws, &used, sizeof(float) * (size_t)(rows * P));
    w->nll = carve(ws, &used, sizeof(float) * (size_t)rows);
    w->lse = carve(ws, &used, sizeof(float) * (size_t)batch);
    w->targets = carve(ws, &used, sizeof(int64_t) * (size_t)rows);
    int64_t G = ck->gates * H, V = ck->vocab_size, floats = !ctx->rnn_native;
    w->buf = carve(ws, &used, sizeof(float) * (size_t)(floats * rows * P));
    w->xproj = carve(ws, &used, sizeof(float) * (size_t)(floats * rows * G));
    w->hp = carve(ws, &used, sizeof(float) * (size_t)(floats * batch * G));
    w->m = carve(ws, &used, sizeof(float) * (size_t)(floats * batch * H));
    w->z = carve(ws, &used, sizeof(float) * (size_t)(!ctx->dec_native * V));
    w->lse64 = carve(ws, &used, sizeof(double) * (size_t)batch);
    w->rnn_bytes = !ctx->rnn_native ? 0 : wl_rnn_scratch_size(ck->cell, steps, batch, ck->emb_dim, H, ck->proj_size, L, ctx->rnn_flags,
                                       ctx->threads);
    w->rnn = carve(ws, &used, w->rnn_bytes);
    w->dec_bytes = !ctx->dec_native ? 0 : wl_decoder_scratch_size(rows, P, ctx->dec_n_pad, (int)ctx->dec.flags);
    w->dec = carve(ws, &used, w->dec_bytes);
    return used + 64;
}

/* the workspace of a call, grown if this call is the largest yet */
static int workspace(wl_context *ctx, int64_t steps, int64_t batch, work_t *w) {
    size_t need = layout(ctx, steps, batch, NULL, w);
    if (need > ctx->ws_size) {
        free(ctx->ws);
        ctx->ws_size = 0;
        if (posix_memalign((void **)&ctx->ws, 64, need)) {
            ctx->ws = NULL;
            return FAIL(ctx, WL_ERR_MEMORY, "out of memory for a workspace of %zu bytes", need);
        }
        ctx->ws_size = need;
    }
    layout(ctx, steps, batch, ctx->ws, w);
    return WL_OK;
}

int wl_reserve(wl_context *ctx, int steps, int batch) {
    if (steps < 1 || batch < 1) return FAIL(ctx, WL_ERR_ARGUMENT, "steps and batch must be >= 1");
    work_t w;
    return workspace(ctx, steps, batch, &w) ? ctx->last.code : ok(ctx);
}

/* ---- the forward pass: embedding, the recurrent stack, the state in and out ---- */

/* embedding rows of tokens (weights.py's Embedding: floats, or each code times its group's scale, one
 * float32 multiply as numpy's) */
static void embed(const wl_context *ctx, const int32_t *tokens, int64_t rows, float *x) {
    int64_t E = ctx->ck.emb_dim;
    for (int64_t r = 0; r < rows; r++) {
        float *out = x + r * E;
        if (!ctx->emb_bits) {
            for (int64_t j = 0; j < E; j++) out[j] = ck_float_at(ctx->emb, (size_t)(tokens[r] * E + j));
            continue;
        }
        int64_t id = tokens[r]; /* checked by the caller */
        wl_embed(ctx->emb->data, ctx->emb->shape[1], ctx->emb_bits, ctx->emb_scales, ctx->emb_groups,
                 ctx->ck.vocab_size, E, &id, 1, out);
    }
}

/* numpy's pairwise summation (its float64 add.reduce over a contiguous run: 8 accumulators up to 128
 * values, halves above), so that a sum here is numpy's to the bit */
static double pairwise(const double *a, const float *f, int64_t n) {
#define AT(i) (a ? a[i] : (double)f[i])
    if (n < 8) {
        double r = 0.;
        for (int64_t i = 0; i < n; i++) r += AT(i);
        return r;
    }
    if (n <= 128) {
        double r[8];
        int64_t i;
        for (int j = 0; j < 8; j++) r[j] = AT(j);
        for (i = 8; i < n - n % 8; i += 8)
            for (int j = 0; j < 8; j++) r[j] += AT(i + j);
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += AT(i);
        return res;
    }
    int64_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise(a, f, n2) + pairwise(a ? a + n2 : NULL, f ? f + n2 : NULL, n - n2);
#undef AT
}

/* numpy's sum(dtype=float64) of float32 values: cast in buffers of 8192, each summed pairwise */
static double sum_f32(const float *f, int64_t n) {
    double total = 0.;
    for (int64_t i = 0; i < n; i += 8192) total += pairwise(NULL, f + i, n - i < 8192 ? n - i : 8192);
    return total;
}

/* ---- the float forms: numpy float32's arithmetic in plain C (weights.py's FloatLinear and Recurrent;
 * numpy's GEMMs are BLAS's, whose order of additions differs: ~1e-6 relative, not bits) ---- */

/* y [m, n] = x [m, k] W^T + b, W [n, k] */
static void float_linear(const float *x, int64_t m, int64_t k, const float *w, int64_t n, const float *b, float *y) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            float acc = 0.f;
            for (int64_t t = 0; t < k; t++) acc += x[i * k + t] * w[j * k + t];
            y[i * n + j] = acc + b[j];
        }
}

static float sigmoid(float x) { return 0.5f * (tanhf(0.5f * x) + 1.f); } /* cells.py's: no overflow */

/* one step of the cell for a batch (cells.py's steps): xp, hp [B, G] -> m [B, H] (an LSTM's h before
 * any projection), c [B, H] in place; hprev [B, H]: the h before (the GRU's) */
static void float_cell(int cell, const float *xp, const float *hp, const float *hprev, int64_t B, int64_t H, float *m,
                       float *c) {
    const char *name = wl_cell_name(cell);
    enum { LSTM, GRU, TANH, RELU } kind = !strcmp(name, "lstm") ? LSTM : !strcmp(name, "gru") ? GRU
                                         : !strcmp(name, "rnn_tanh") ? TANH : RELU;
    int64_t G = (kind == LSTM ? 4 : kind == GRU ? 3 : 1) * H;
    for (int64_t b = 0; b < B; b++) {
        const float *x = xp + b * G, *r = hp + b * G;
        for (int64_t j = 0; j < H; j++) {
            float *out = m + b * H + j;
            if (kind == LSTM) {
                float i = sigmoid(x[j] + r[j]), f = sigmoid(x[H + j] + r[H + j]), g = tanhf(x[2 * H + j] + r[2 * H + j]);
                float *cc = c + b * H + j;
                *cc = f * *cc + i * g;
                *out = sigmoid(x[3 * H + j] + r[3 * H + j]) * tanhf(*cc);
            } else if (kind == GRU) {
                float rr = sigmoid(x[j] + r[j]), z = sigmoid(x[H + j] + r[H + j]);
                *out = (1.f - z) * tanhf(x[2 * H + j] + rr * r[2 * H + j]) + z * hprev[b * H + j];
            } else if (kind == TANH) {
                *out = tanhf(x[j] + r[j]);
            } else {
                float a = x[j] + r[j];
                *out = a > 0.f ? a : 0.f;
            }
        }
    }
}

/* the stack in float32 over w->x [steps, B, E]: w->y, and the state w->h, w->c updated (Recurrent) */
static void float_rnn(const wl_context *ctx, int64_t steps, int64_t B, work_t *w) {
    const ck_checkpoint *ck = &ctx->ck;
    int64_t L = ck->num_layers, H = ck->hidden_dim, P = ck->out_dim, G = ck->gates * H, rows = steps * B;
    const float *in = w->x;
    for (int64_t l = 0; l < L; l++) {
        const float **fw = ctx->fw + l * MATRICES, **fb = ctx->fb + l * MATRICES;
        float *out = (L - 1 - l) % 2 == 0 ? w->y : w->buf, *h = w->h + l * B * P, *c = w->c + l * B * H;
        float_linear(in, rows, l ? P : ck->emb_dim, fw[W_IH], G, fb[W_IH], w->xproj); /* every step at once */
        for (int64_t t = 0; t < steps; t++) {
            float_linear(h, B, P, fw[W_HH], G, fb[W_HH], w->hp);
            float_cell(ck->cell, w->xproj + t * B * G, w->hp, h, B, H, ck->proj_size ? w->m : h, c);
            if (ck->proj_size) float_linear(w->m, B, H, fw[W_HR], P, fb[W_HR], h);
            memcpy(out + t * B * P, h, sizeof(float) * (size_t)(B * P));
        }
        in = out;
    }
}

/* log sum exp of a row in float64 (weights.py's logsumexp: the max out first, numpy's pairwise sum) */
static double float_lse(const float *z, int64_t n, double *tmp) {
    double m = z[0];
    for (int64_t i = 1; i < n; i++) m = z[i] > m ? z[i] : m;
    for (int64_t i = 0; i < n; i++) tmp[i] = exp((double)z[i] - m);
    return m + log(pairwise(tmp, NULL, n));
}

static int check_tokens(wl_context *ctx, const int32_t *tokens, int64_t n, const char *what) {
    if (!tokens) return FAIL(ctx, WL_ERR_ARGUMENT, "%s is NULL", what);
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= ctx->ck.vocab_size)
            return FAIL(ctx, WL_ERR_ARGUMENT, "%s must lie in [0, %lld), got %d at %lld", what,
                        (long long)ctx->ck.vocab_size, tokens[i], (long long)i);
    return WL_OK;
}

/* tokens [steps][batch] through the stack: w->y [steps][batch][P]; the state in and out per stream */
static int forward(wl_context *ctx, const int32_t *tokens, int steps, int batch, const float *state_in,
                   float *state_out, work_t *w) {
    const ck_checkpoint *ck = &ctx->ck;
    if (steps < 1 || batch < 1) return FAIL(ctx, WL_ERR_ARGUMENT, "steps and batch must be >= 1, got %d, %d", steps, batch);
    int64_t rows = (int64_t)steps * batch, L = ck->num_layers, P = ck->out_dim, H = ck->hidden_dim, B = batch;
    if (check_tokens(ctx, tokens, rows, "tokens") || workspace(ctx, steps, batch, w)) return ctx->last.code;
    int64_t gates;
    int has_c, projection;
    wl_cell_info(ck->cell, &gates, &has_c, &projection);
    size_t S = wl_state_size(ctx);
    /* the caller's per-stream state [B][h of every layer, c of every layer] -> the kernels' [L][B][.] */
    for (int64_t b = 0; b < B; b++)
        for (int64_t l = 0; l < L; l++) {
            float *h = w->h + (l * B + b) * P, *c = w->c + (l * B + b) * H;
            if (!state_in) {
                memset(h, 0, sizeof(float) * (size_t)P);
                if (has_c) memset(c, 0, sizeof(float) * (size_t)H);
                continue;
            }
            memcpy(h, state_in + b * S + l * P, sizeof(float) * (size_t)P);
            if (has_c) memcpy(c, state_in + b * S + L * P + l * H, sizeof(float) * (size_t)H);
        }
    embed(ctx, tokens, rows, w->x);
    if (!ctx->rnn_native) float_rnn(ctx, steps, B, w);
    else if (wl_rnn(ck->cell, w->x, steps, B, ck->emb_dim, H, ck->proj_size, L, ctx->w, w->h, has_c ? w->c : NULL, w->y,
               ctx->isa, ctx->threads, w->rnn, w->rnn_bytes))
        return FAIL(ctx, WL_ERR_ARGUMENT, "the recurrent kernels refused their arguments");
    for (int64_t b = 0; state_out && b < B; b++)
        for (int64_t l = 0; l < L; l++) {
            memcpy(state_out + b * S + l * P, w->h + (l * B + b) * P, sizeof(float) * (size_t)P);
            if (has_c) memcpy(state_out + b * S + L * P + l * H, w->c + (l * B + b) * H, sizeof(float) * (size_t)H);
        }
    return WL_OK;
}

/* the decoder over rows x [m][P]: native.decoder_nll, or the float form (weights.py's Decoder.dense:
 * float32 logits, their log-sum-exp in float64 into w->lse64) */
static int decode(wl_context *ctx, const float *x, int64_t m, const int64_t *targets, float *nll, float *logits,
                  float *lse, work_t *w) {
    const wl_packed *d = &ctx->dec;
    int64_t V = ctx->ck.vocab_size, P = ctx->ck.out_dim;
    if (!ctx->dec_native) {
        for (int64_t r = 0; r < m; r++) {
            float *z = logits ? logits + r * V : w->z;
            float_linear(x + r * P, 1, P, ctx->dec_w, V, ctx->dec_b, z);
            if (!lse && !targets) continue;
            double l = float_lse(z, V, ctx->s_sorted);
            if (lse) w->lse64[r] = l;
            if (targets) nll[r] = (float)(l - (double)z[targets[r]]);
        }
        return WL_OK;
    }
    if (wl_decoder_nll(x, m, P, d->panels, V, ctx->dec_n_pad, d->scale, d->sum, d->bias, (int)d->flags, targets, nll,
                       logits, lse, ctx->isa, ctx->threads, w->dec, w->dec_bytes))
        return FAIL(ctx, WL_ERR_ARGUMENT, "the decoder refused its arguments");
    return WL_OK;
}

int wl_eval_sequence(wl_context *ctx, const int32_t *tokens, int steps, int batch, const float *state_in,
                     float *state_out, float *logits_out) {
    work_t w;
    if (!ctx) return WL_ERR_ARGUMENT;
    if (forward(ctx, tokens, steps, batch, state_in, state_out, &w)) return ctx->last.code;
    const float *last = w.y + (int64_t)(steps - 1) * batch * ctx->ck.out_dim;
    if (logits_out && decode(ctx, last, batch, NULL, NULL, logits_out, NULL, &w)) return ctx->last.code;
    return ok(ctx);
}

int wl_eval(wl_context *ctx, const int32_t *tokens, int batch, const float *state_in, float *state_out,
            float *logits_out) {
    return wl_eval_sequence(ctx, tokens, 1, batch, state_in, state_out, logits_out);
}

int wl_next_logprobs(wl_context *ctx, const int32_t *tokens, int steps, int batch, const float *state_in,
                     float *state_out, float *logprobs_out) {
    work_t w;
    if (!ctx) return WL_ERR_ARGUMENT;
    if (!logprobs_out) return FAIL(ctx, WL_ERR_ARGUMENT, "logprobs_out is NULL");
    if (forward(ctx, tokens, steps, batch, state_in, state_out, &w)) return ctx->last.code;
    const float *last = w.y + (int64_t)(steps - 1) * batch * ctx->ck.out_dim;
    if (decode(ctx, last, batch, NULL, NULL, logprobs_out, w.lse, &w)) return ctx->last.code;
    int64_t V = ctx->ck.vocab_size;
    for (int64_t b = 0; b < batch; b++) /* Decoder.logprobs: logits - lse in float32 (native), float64 (float) */
        for (int64_t i = 0; i < V; i++) {
            float *lp = &logprobs_out[b * V + i];
            *lp = ctx->dec_native ? *lp - w.lse[b] : (float)((double)*lp - w.lse64[b]);
        }
    return ok(ctx);
}

int wl_nll(wl_context *ctx, const int32_t *tokens, const int32_t *targets, int steps, int batch,
           const float *state_in, float *state_out, float *nll_out, double *total) {
    work_t w;
    if (!ctx) return WL_ERR_ARGUMENT;
    if (!targets) return FAIL(ctx, WL_ERR_ARGUMENT, "targets is NULL");
    int64_t rows = (int64_t)steps * batch;
    if (steps >= 1 && batch >= 1 && check_tokens(ctx, targets, rows, "targets")) return ctx->last.code;
    if (forward(ctx, tokens, steps, batch, state_in, state_out, &w)) return ctx->last.code;
    for (int64_t i = 0; i < rows; i++) w.targets[i] = targets[i];
    float *nll = nll_out ? nll_out : w.nll;
    if (decode(ctx, w.y, rows, w.targets, nll, NULL, NULL, &w)) return ctx->last.code;
    if (total) *total = sum_f32(nll, rows);
    return ok(ctx);
}

/* ---- top-k ---- */

/* a before b: the higher log-prob, then the lower id */
static int better(const float *lp, int32_t a, int32_t b) { return lp[a] > lp[b] || (lp[a] == lp[b] && a < b); }

/* the heap of the k best so far in ids[0..n), the worst at the root */
static void sift_down(const float *lp, int32_t *ids, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, worst = i;
        if (l < n && better(lp, ids[worst], ids[l])) worst = l;
        if (r < n && better(lp, ids[worst], ids[r])) worst = r;
        if (worst == i) return;
        int32_t t = ids[i];
        ids[i] = ids[worst], ids[worst] = t, i = worst;
    }
}

int wl_top_k(const wl_context *ctx, const float *logprobs, int k, int32_t *ids_out, float *values_out) {
    int V = (int)ctx->ck.vocab_size;
    if (!logprobs || !ids_out || k < 1) return -1;
    k = k < V ? k : V;
    for (int i = 0; i < k; i++) ids_out[i] = i;
    for (int i = k / 2; i-- > 0;) sift_down(logprobs, ids_out, k, i);
    for (int i = k; i < V; i++)
        if (better(logprobs, i, ids_out[0])) ids_out[0] = i, sift_down(logprobs, ids_out, k, 0);
    for (int n = k; n > 1; n--) { /* heapsort: the worst to the end, best first */
        int32_t t = ids_out[0];
        ids_out[0] = ids_out[n - 1], ids_out[n - 1] = t;
        sift_down(logprobs, ids_out, n - 1, 0);
    }
    for (int i = 0; values_out && i < k; i++) values_out[i] = logprobs[ids_out[i]];
    return k;
}

/* ---- sampling (wordlm/runtime/sampling.py) ---- */

/* order[0..n) sorted by p descending, ties by index (np.argsort(-p, kind="stable")): a merge sort */
static void sort_desc(const float *p, int32_t *order, int32_t *tmp, int64_t n) {
    for (int64_t i = 0; i < n; i++) order[i] = (int32_t)i;
    for (int64_t width = 1; width < n; width *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * width) {
            int64_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            int64_t i = lo, j = mid, o = lo;
            while (i < mid && j < hi) tmp[o++] = p[order[j]] > p[order[i]] ? order[j++] : order[i++];
            while (i < mid) tmp[o++] = order[i++];
            while (j < hi) tmp[o++] = order[j++];
        }
        memcpy(order, tmp, sizeof *order * (size_t)n);
    }
}

/* the k-th largest of p[n] (np.partition(p, n - k)[n - k]): quickselect on a copy */
static float kth_largest(const float *p, float *a, int64_t n, int64_t k) {
    memcpy(a, p, sizeof *a * (size_t)n);
    int64_t lo = 0, hi = n - 1, want = n - k; /* the index it has in ascending order */
    while (lo < hi) {
        float pivot = a[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) {
                float t = a[i];
                a[i++] = a[j], a[j--] = t;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
    return a[want];
}

/* sampling.inverse_cdf: block sums (pairwise, as numpy sums a row), their running sum, then the block */
static int32_t inverse_cdf(const float *p, int64_t n, double u, double *sums) {
    int64_t full = n / SAMPLE_BLOCK * SAMPLE_BLOCK, blocks = full / SAMPLE_BLOCK + 1;
    for (int64_t b = 0; b < blocks; b++) {
        int64_t start = b * SAMPLE_BLOCK, len = b < blocks - 1 ? SAMPLE_BLOCK : n - full;
        sums[b] = sum_f32(p + start, len);
    }
    double cum_last = 0.;
    for (int64_t b = 0; b < blocks; b++) cum_last += sums[b];
    double target = u * cum_last, cum = 0., before = 0.;
    int64_t r = 0;
    for (cum = sums[0]; r < blocks - 1 && cum <= target;) before = cum, cum += sums[++r]; /* searchsorted right */
    while (sums[r] == 0 && r > 0) { /* u * total on the edge of an empty tail */
        r--;
        before = 0.;
        for (int64_t b = 0; b < r; b++) before += sums[b];
    }
    double local = target - (r ? before : 0.), acc = 0.;
    int64_t start = r * SAMPLE_BLOCK, end = start + SAMPLE_BLOCK < n ? start + SAMPLE_BLOCK : n, j = 0;
    for (j = 0; start + j < end; j++) {
        acc += (double)p[start + j];
        if (acc > local) break;
    }
    int64_t i = start + j < n - 1 ? start + j : n - 1;
    while (p[i] == 0 && i > 0) i--; /* never a word of probability 0 */
    return (int32_t)i;
}

int32_t wl_sample_next(wl_context *ctx, const float *z, const wl_sampling *s, double u) {
    int64_t V = ctx->ck.vocab_size;
    if (!z || !s) return FAIL(ctx, WL_ERR_ARGUMENT, "logits or settings are NULL"), -1;
    if (!(s->temperature >= 0) || s->top_k < 0 || !(s->top_p > 0 && s->top_p <= 1) || !(u >= 0 && u < 1))
        return FAIL(ctx, WL_ERR_ARGUMENT, "sampling: temperature >= 0, top_k >= 0, top_p in (0, 1], u in [0, 1)"), -1;
    int greedy = s->temperature < FLT_MIN || s->top_k == 1, plain = !greedy && !s->top_k && s->top_p >= 1;
    float zmax = wl_max(z, V, ctx->isa);
    ok(ctx);
    if (greedy) { /* the first word at the max */
        int32_t arg = 0;
        while (z[arg] != zmax) arg++;
        return arg;
    }
    if (plain)
        return (int32_t)wl_sample(z, V, zmax, (float)(1.0 / s->temperature), u, ctx->s_w, ctx->s_sums, ctx->isa);
    float *p = ctx->s_p, t = (float)s->temperature;
    for (int64_t i = 0; i < V; i++) p[i] = expf((z[i] - zmax) / t); /* in [0, 1], the mode's exactly 1 */
    if (s->top_k && s->top_k < V) {
        float kth = kth_largest(p, ctx->s_tmp, V, s->top_k);
        for (int64_t i = 0; i < V; i++) p[i] = p[i] >= kth ? p[i] : 0.f;
    }
    if (s->top_p < 1) {
        sort_desc(p, ctx->s_order, ctx->s_merge, V);
        for (int64_t i = 0; i < V; i++) ctx->s_sorted[i] = p[ctx->s_order[i]];
        double limit = s->top_p * pairwise(ctx->s_sorted, NULL, V), cum = 0.;
        for (int64_t i = 0; i < V; i++) { /* drop a word once the mass strictly before it reaches top_p */
            cum += ctx->s_sorted[i];
            if (i > 0 && cum - ctx->s_sorted[i] >= limit) p[ctx->s_order[i]] = 0.f;
        }
    }
    return inverse_cdf(p, V, u, ctx->s_sums);
}

/* ---- the vocabulary ---- */

int32_t wl_vocab_size(const wl_context *ctx) { return (int32_t)ctx->ck.vocab_size; }

const char *wl_word(const wl_context *ctx, int32_t id) {
    return id >= 0 && id < ctx->ck.n_words ? ctx->ck.words[id] : NULL;
}

int32_t wl_word_id(const wl_context *ctx, const char *word) {
    return word ? ck_word_id(&ctx->ck, word, strlen(word)) : -1;
}

static int is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); }

int wl_encode(const wl_context *ctx, const char *text, int32_t *ids_out, int max_ids) {
    if (!text || (max_ids > 0 && !ids_out)) return -1;
    int32_t unk = ck_word_id(&ctx->ck, "<unk>", 5);
    int n = 0;
    for (const char *p = text; *p;) {
        const char *start = p;
        size_t len = 5;
        if (*p == '\n') { /* a line break is <eos>, as wordlm.tasks.generate.encode_prompt reads a prompt */
            start = "<eos>", p++;
        } else if (is_space((unsigned char)*p)) {
            p++;
            continue;
        } else {
            while (*p && !is_space((unsigned char)*p)) p++;
            len = (size_t)(p - start);
        }
        int32_t id = ck_word_id(&ctx->ck, start, len);
        if (id < 0) id = unk;
        if (id < 0) return -1; /* a word outside a vocabulary without <unk> */
        if (n < max_ids) ids_out[n] = id;
        n++;
    }
    return n;
}
