/* libwordlm: wordlm's runtime as a C library (rwkv.h's shape).
 *
 * A checkpoint directory (config.json, model.safetensors, vocab.txt: what `wordlm quantize` writes)
 * becomes an opaque wl_context; the recurrent state is the caller's: a flat float buffer per stream
 * of wl_state_size floats, so keeping, forking, saving or restoring a stream is a memcpy. Numbers are
 * the Python runtime's (wordlm.runtime.Runtime) bit for bit wherever it runs the native kernels: both
 * call the entry points at the end of this header, the same functions, on the same packed weights
 * (wl_init_from_dir says what runs in float32 instead).
 *
 * Two levels:
 *  - the context (wl_init_from_dir ... wl_free): load, eval, NLL, log-probs, top-k, sampling, the
 *    vocabulary, threads, errors. Every call after the first of its size allocates nothing (the
 *    context keeps a workspace: wl_reserve sizes it ahead).
 *  - the kernels' entry points (wl_decoder_nll, wl_rnn, wl_sample, ...): what the context is built
 *    on and what the Python package calls through ctypes (wordlm/native/__init__.py).
 *
 * Thread-safety: a wl_context is used by one thread at a time (its workspace and last error are
 * its own); calls marked [shared] only read it and may run on any number of threads at once, beside
 * each other but not beside a call that is not [shared]. Several contexts are independent (one per
 * thread is the way to run streams in parallel; the kernels' thread pool runs one region at a time
 * and a call that finds it busy runs on its own thread, with the same bits). The entry points are
 * reentrant.
 *
 * Errors: functions return WL_OK (0) or a wl_status code; wl_last_error(ctx) gives the last call's
 * code and message. wl_init_from_dir reports through its wl_error out-parameter (there is no
 * context yet).
 */
#ifndef WORDLM_H
#define WORDLM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define WL_API __declspec(dllexport)
#else
#define WL_API __attribute__((visibility("default")))
#endif

/* ---- errors ---- */

typedef enum {
    WL_OK = 0,
    WL_ERR_ARGUMENT = 1,    /* a bad argument: NULL, a size < 1, an id outside the vocabulary */
    WL_ERR_NOT_FOUND = 2,   /* no such directory, or a file of the checkpoint is missing */
    WL_ERR_IO = 3,          /* a file could not be read or mapped */
    WL_ERR_CONFIG = 4,      /* config.json: not JSON, nested too deeply, a bad model or quantization config */
    WL_ERR_WEIGHTS = 5,     /* model.safetensors: corrupt or truncated, or tensors that do not fit the config */
    WL_ERR_VOCAB = 6,       /* vocab.txt: not UTF-8, or not the vocabulary config.json names */
    WL_ERR_MEMORY = 7,      /* out of memory */
    WL_ERR_ISA = 8          /* WORDLM_ISA names no kernel, or one this CPU does not run */
} wl_status;

#define WL_MESSAGE_SIZE 512

/* a code and a one-line message ("" when WL_OK) */
typedef struct {
    int code;
    char message[WL_MESSAGE_SIZE];
} wl_error;

/* ---- the context ---- */

typedef struct wl_context wl_context;

/* Load a checkpoint directory and pack its weights for the kernels (as wordlm.runtime.weights.pack),
 * validated as wordlm.checkpoint.load_checkpoint validates (the same corrupt files are refused, each
 * with a code and a message). Every scheme the Python runtime runs: what it runs on the native kernels
 * runs on the same ones here, bit for bit; what it runs in numpy float32 (float checkpoints, float
 * recurrent weights, a decoder of several scales per row) runs in plain C float32 here, numpy's numbers
 * to ~1e-6 relative (BLAS adds in another order), not to the bit; wl_isa says which part runs how.
 * n_threads >= 1: threads of each call (any count gives the same bits).
 * The kernels: WORDLM_ISA's when set (portable, avx2, avx512-vnni; ARM64: portable, neon, dotprod,
 * i8mm), else the best this CPU runs. Returns NULL on failure, with *err (may be NULL) filled. */
WL_API wl_context *wl_init_from_dir(const char *path, int n_threads, wl_error *err);
WL_API void wl_free(wl_context *ctx);

/* [shared] the last call's code and message on this context (WL_OK and "" after a success) */
WL_API const wl_error *wl_last_error(const wl_context *ctx);

/* [shared] sizes, in floats, per stream: the state (h of every layer, then c of every layer for an
 * LSTM) and the logits (the vocabulary's size) */
WL_API size_t wl_state_size(const wl_context *ctx);
WL_API size_t wl_logits_size(const wl_context *ctx);

/* threads of each call (>= 1, at most 256); WL_ERR_ARGUMENT otherwise. [shared] wl_get_threads */
WL_API int wl_set_threads(wl_context *ctx, int n_threads);
WL_API int wl_get_threads(const wl_context *ctx);
/* [shared] what computes each part: "lstm native avx512-vnni, decoder native avx512-vnni", "lstm float32, ..." */
WL_API const char *wl_isa(const wl_context *ctx);

/* Grow the workspace for calls of up to `steps` tokens per stream and `batch` streams, so that those
 * calls allocate nothing (a call larger than the workspace grows it itself, once). */
WL_API int wl_reserve(wl_context *ctx, int steps, int batch);

/* Calls over a batch of B streams. tokens [steps][B] (time major, as the Python runtime's ids);
 * state_in [B][wl_state_size] (NULL: every stream at the zero state), state_out [B][wl_state_size]
 * (NULL: not wanted; it may be state_in itself). */

/* Feed one token per stream; logits_out [B][wl_logits_size] (NULL: not wanted). */
WL_API int wl_eval(wl_context *ctx, const int32_t *tokens, int batch, const float *state_in, float *state_out,
                   float *logits_out);
/* Feed `steps` tokens per stream; logits_out: those after the last token (Runtime.logits(ids)[-1]). */
WL_API int wl_eval_sequence(wl_context *ctx, const int32_t *tokens, int steps, int batch, const float *state_in,
                            float *state_out, float *logits_out);
/* Log-probabilities [B][wl_logits_size] of the word after the last token (Runtime.next_logprobs). */
WL_API int wl_next_logprobs(wl_context *ctx, const int32_t *tokens, int steps, int batch, const float *state_in,
                            float *state_out, float *logprobs_out);
/* NLL (nats) of targets [steps][B] given tokens [steps][B]: nll_out [steps][B] (NULL: not wanted)
 * (Runtime.token_nll) and *total (NULL: not wanted), their sum in float64 as Runtime.nll sums them
 * (numpy's pairwise order). The logits never reach memory. */
WL_API int wl_nll(wl_context *ctx, const int32_t *tokens, const int32_t *targets, int steps, int batch,
                  const float *state_in, float *state_out, float *nll_out, double *total);

/* [shared] The k most likely words of one stream's log-probs [wl_logits_size], best first: ids_out[k]
 * and values_out[k] (NULL: not wanted); k is capped at the vocabulary. Returns the count, or -1.
 * Ties: the lower id first (Runtime.top_k's order among equal log-probs is numpy's argpartition's). */
WL_API int wl_top_k(const wl_context *ctx, const float *logprobs, int k, int32_t *ids_out, float *values_out);

/* The runtime's sampling settings (wordlm.runtime.Sampling): temperature >= 0 (below float32's
 * smallest normal: greedy), top_k >= 0 (0: all), top_p in (0, 1] (1: all). */
typedef struct {
    double temperature;
    int top_k;
    double top_p;
} wl_sampling;

/* Draw the next word from one stream's logits [wl_logits_size] with uniform number u in [0, 1), as
 * Runtime.sample_next draws it from rng.random(): a temperature alone by wl_sample (the same word as
 * Python's, bit for bit), greedy by argmax, top-k / top-p as wordlm.runtime.sample (its weights by
 * libm's expf where numpy has its own exp: the same word unless u lands within ~1e-7 of a word's
 * edge). Returns the word id, or -1 (wl_last_error says why). */
WL_API int32_t wl_sample_next(wl_context *ctx, const float *logits, const wl_sampling *s, double u);

/* [shared] The vocabulary: its size, the word of an id (NULL outside), the id of a word (-1 if absent),
 * and a text as ids, read as `wordlm generate` reads a prompt (wordlm.tasks.generate.encode_prompt):
 * words split at whitespace (ASCII's and \x1c-\x1f, as Python's str.split for ASCII text), a line break
 * as <eos>, words outside the vocabulary as <unk> (an error where there is none); at most max_ids ids
 * are written. Returns the number of ids (which may exceed max_ids), or -1. generate also puts an <eos>
 * first (a text starts as after a line break: context_ids); that one is the caller's. */
WL_API int32_t wl_vocab_size(const wl_context *ctx);
WL_API const char *wl_word(const wl_context *ctx, int32_t id);
WL_API int32_t wl_word_id(const wl_context *ctx, const char *word);
WL_API int wl_encode(const wl_context *ctx, const char *text, int32_t *ids_out, int max_ids);

/* ---- the kernels' entry points (kernels.c says how they compute; the Python package calls these) ---- */

/* a matrix's flags (wl_packed.flags, wl_decoder_nll's flags): WL_FINE, its inputs as two 7-bit codes,
 * the code and its residual's (kernels.c); WL_CODES4, every code within [-8, 7] (int4 weights), which
 * lets a kernel add more products in int16 before widening (kernels_x86.c) with the same sums;
 * WL_NIBBLES (with WL_CODES4; the decoder's only): the panels hold two codes a byte (kernels.c) */
#define WL_FINE 1
#define WL_CODES4 2
#define WL_NIBBLES 4

/* one packed matrix as the kernels take it: codes in panels of 16 rows, [n_pad/16][k/4][16][4] bytes
 * (64-byte aligned), and per row [n_pad] the scale, code sum and bias, and its flags
 * (wordlm.native.PackedLinear) */
typedef struct {
    const int8_t *panels;
    const float *scale;
    const int32_t *sum;
    const float *bias;
    int64_t flags;
} wl_packed;

/* The decoder over x [m, k]: any of the NLL of targets [m], the logits [m, n], each row's log-sum-exp
 * [m] (NULL: not wanted). isa: a kernel by number (wl_isa_name); threads >= 1. scratch: NULL (the
 * call allocates its buffers, once) or wl_decoder_scratch_size(m, k, n_pad, flags) bytes of the
 * caller's (nothing allocated). Returns 0 or -1 (a bad argument, a kernel this CPU lacks, no memory). */
WL_API int wl_decoder_nll(const float *x, int64_t m, int64_t k, const int8_t *wp, int64_t n, int64_t n_pad,
                          const float *wscale, const int32_t *wsum, const float *bias, int flags,
                          const int64_t *targets, float *nll, float *logits, float *lse, int isa, int threads,
                          void *scratch, size_t scratch_bytes);
WL_API size_t wl_decoder_scratch_size(int64_t m, int64_t k, int64_t n_pad, int flags);

/* A stack of `layers` recurrent layers of cell `cell` (wl_cell_name) over x [steps, batch, in_dim]:
 * y [steps, batch, P], state h [layers, batch, P] and c [layers, batch, hidden] (an LSTM's; NULL
 * otherwise) read and updated in place; P = proj (an LSTM's projection) or hidden. w [layers][3]:
 * W_ih, W_hh, W_hr (kernels.c: their rows in blocks of wl_unit_block units). scratch as for the
 * decoder, wl_rnn_scratch_size bytes (flags: the matrices' flags or'ed together, where some W_ih is
 * WL_FINE or some matrix holds WL_NIBBLES; 0 or 1 as before). Returns 0 or -1. */
WL_API int wl_rnn(int cell, const float *x, int64_t steps, int64_t batch, int64_t in_dim, int64_t hidden,
                  int64_t proj, int64_t layers, const wl_packed *w, float *h, float *c, float *y, int isa, int threads,
                  void *scratch, size_t scratch_bytes);
WL_API size_t wl_rnn_scratch_size(int cell, int64_t steps, int64_t batch, int64_t in_dim, int64_t hidden, int64_t proj,
                                  int64_t layers, int flags, int threads);

/* A word from logits z [n] at 1 / inv_t by inverse CDF at u in [0, 1) (sample.c) on kernel `isa`;
 * zmax = max(z); w: n floats, sums: n / 256 + 1 doubles of scratch. Returns the word, or -1 for bad
 * arguments. */
WL_API int64_t wl_sample(const float *z, int64_t n, float zmax, float inv_t, double u, float *w, double *sums,
                         int isa);
/* Rows ids [n] of an embedding of codes of `bits` (2-8; embed.c: one bit stream per row, row_bytes
 * bytes) with float32 scales [vocab, groups] (groups dividing dim) -> out [n, dim] float32. Returns 0, or
 * -1 for a bad argument (an id outside [0, vocab)). */
WL_API int wl_embed(const uint8_t *codes, int64_t row_bytes, int bits, const float *scales, int64_t groups,
                    int64_t vocab, int64_t dim, const int64_t *ids, int64_t n, float *out);
/* max(z[0, n)) for n >= 1 (NaN-free logits), vectorized, on kernel `isa`; NaN for bad arguments */
WL_API float wl_max(const float *z, int64_t n, int isa);

WL_API int wl_unit_block(void);
/* the kernels: the best this CPU runs, and each one's name by number, lowest first (NULL past the last) */
WL_API int wl_best_isa(void);
WL_API const char *wl_isa_name(int isa);
/* the recurrent cells by number (wl_rnn's `cell`): the name wordlm/cells.py's registry gives as the
 * cell's `kernel`, NULL past the last; its gate rows per unit, whether it has c and takes a projection */
WL_API const char *wl_cell_name(int cell);
WL_API int wl_cell_info(int cell, int64_t *gates, int *has_c, int *projection);

#ifdef __cplusplus
}
#endif

#endif
