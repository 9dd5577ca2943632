/* tests/test_libwordlm.py's C side: a program with no Python in it that loads a checkpoint through
 * libwordlm and writes what it computes, for the test to hold to the Python runtime bit for bit.
 *   wl_check load CKPT                  -> "ok KERNELS", or "error CODE MESSAGE" (exit status CODE)
 *   wl_check run CKPT IN OUT THREADS    -> OUT: every number of the calls below on IN's tokens
 *   wl_check encode CKPT TEXT           -> wl_encode's ids
 * IN: int32 steps, batch, n_u; int32 tokens [steps][batch], targets [steps][batch]; double u [n_u].
 * OUT: int64 S, V; logits of each step fed one at a time [steps][batch][V]; wl_eval_sequence's
 * logits [batch][V] and state [batch][S]; wl_next_logprobs [batch][V]; wl_nll [steps][batch] and its
 * total (double); wl_top_k of stream 0 (10 ids, 10 values); wl_sample_next's words [SETTINGS][n_u]
 * from stream 0's logits; int64 allocations counted over a second round of every call.
 * Allocations are counted by this program's own malloc family (glibc's __libc_ functions underneath):
 * the library's calls resolve to them. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wordlm.h"

#ifndef WL_NO_COUNT
extern void *__libc_malloc(size_t), *__libc_calloc(size_t, size_t), *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);
static volatile long allocations;
void *malloc(size_t n) { return allocations++, __libc_malloc(n); }
void *calloc(size_t n, size_t m) { return allocations++, __libc_calloc(n, m); }
void *realloc(void *p, size_t n) { return allocations++, __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
int posix_memalign(void **p, size_t align, size_t n) { return allocations++, (*p = __libc_memalign(align, n)) ? 0 : 12; }
void *aligned_alloc(size_t align, size_t n) { return allocations++, __libc_memalign(align, n); }
void *memalign(size_t align, size_t n) { return allocations++, __libc_memalign(align, n); }
#else
static long allocations;
#endif

static const wl_sampling SETTINGS[] = {{1.0, 0, 1.0}, {0.7, 0, 1.0}, {0.0, 0, 1.0}, {1.0, 5, 1.0},
                                       {0.9, 0, 0.9}, {1.3, 50, 0.8}, {0.5, 1, 1.0}};
#define N_SETTINGS ((int)(sizeof SETTINGS / sizeof SETTINGS[0]))

static void put(FILE *f, const void *p, size_t bytes) {
    if (fwrite(p, 1, bytes, f) != bytes) exit(3);
}

static int fail(wl_context *ctx, const char *what) {
    fprintf(stderr, "%s: error %d: %s\n", what, wl_last_error(ctx)->code, wl_last_error(ctx)->message);
    return 1;
}

/* every call on the tokens; out NULL: the same calls, written nowhere (the counted round) */
static int round_of_calls(wl_context *ctx, int steps, int batch, const int32_t *tok, const int32_t *tgt, int n_u,
                          const double *u, float *buf, FILE *out) {
    size_t S = wl_state_size(ctx), V = wl_logits_size(ctx), B = (size_t)batch;
    float *state = buf, *logits = state + B * S, *lp = logits + B * V, *nll = lp + B * V;
    double total;
    int32_t ids[10], words[64];
    float values[10];
    for (int t = 0; t < steps; t++) { /* one token at a time, the state carried in place */
        if (wl_eval(ctx, tok + t * batch, batch, t ? state : NULL, state, logits)) return fail(ctx, "wl_eval");
        if (out) put(out, logits, sizeof(float) * B * V);
    }
    if (wl_eval_sequence(ctx, tok, steps, batch, NULL, state, logits)) return fail(ctx, "wl_eval_sequence");
    if (out) put(out, logits, sizeof(float) * B * V), put(out, state, sizeof(float) * B * S);
    if (wl_next_logprobs(ctx, tok, steps, batch, NULL, NULL, lp)) return fail(ctx, "wl_next_logprobs");
    if (out) put(out, lp, sizeof(float) * B * V);
    if (wl_nll(ctx, tok, tgt, steps, batch, NULL, NULL, nll, &total)) return fail(ctx, "wl_nll");
    if (out) put(out, nll, sizeof(float) * (size_t)steps * B), put(out, &total, sizeof total);
    int k = wl_top_k(ctx, lp, 10, ids, values);
    for (int i = k; i < 10; i++) ids[i] = -1, values[i] = 0.f;
    if (out) put(out, ids, sizeof ids), put(out, values, sizeof values);
    for (int s = 0; s < N_SETTINGS; s++) {
        for (int i = 0; i < n_u && i < 64; i++)
            if ((words[i] = wl_sample_next(ctx, logits, &SETTINGS[s], u[i])) < 0) return fail(ctx, "wl_sample_next");
        if (out) put(out, words, sizeof(int32_t) * (size_t)(n_u < 64 ? n_u : 64));
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "load")) {
        wl_error err;
        wl_context *ctx = wl_init_from_dir(argv[2], 1, &err);
        if (!ctx) return printf("error %d %s\n", err.code, err.message), err.code;
        printf("ok %s\n", wl_isa(ctx));
        wl_free(ctx);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "encode")) { /* the ids of a text, one line */
        wl_error err;
        wl_context *ctx = wl_init_from_dir(argv[2], 1, &err);
        int32_t ids[256];
        int n = ctx ? wl_encode(ctx, argv[3], ids, 256) : -1;
        for (int i = 0; i < n && i < 256; i++) printf("%s%d", i ? " " : "", ids[i]);
        printf("\n");
        wl_free(ctx);
        return n < 0;
    }
    if (argc != 6 || strcmp(argv[1], "run")) return fprintf(stderr, "usage: see wl_check.c\n"), 2;
    wl_error err;
    wl_context *ctx = wl_init_from_dir(argv[2], atoi(argv[5]), &err);
    if (!ctx) return fprintf(stderr, "error %d %s\n", err.code, err.message), 1;
    FILE *in = fopen(argv[3], "rb"), *out = fopen(argv[4], "wb");
    int32_t head[3];
    if (!in || !out || fread(head, 4, 3, in) != 3) return 2;
    int steps = head[0], batch = head[1], n_u = head[2];
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)(2 * steps * batch));
    double *u = malloc(sizeof(double) * (size_t)(n_u + 1));
    if (fread(tok, 4, (size_t)(2 * steps * batch), in) != (size_t)(2 * steps * batch) ||
        fread(u, 8, (size_t)n_u, in) != (size_t)n_u)
        return 2;
    int64_t sizes[2] = {(int64_t)wl_state_size(ctx), (int64_t)wl_logits_size(ctx)};
    put(out, sizes, sizeof sizes);
    float *buf = malloc(sizeof(float) * (size_t)(batch * (sizes[0] + 2 * sizes[1]) + steps * batch));
    if (round_of_calls(ctx, steps, batch, tok, tok + steps * batch, n_u, u, buf, out)) return 1;
    long before = allocations; /* the second round: the workspace has its size, the threads have started */
    if (round_of_calls(ctx, steps, batch, tok, tok + steps * batch, n_u, u, buf, NULL)) return 1;
    int64_t counted = allocations - before;
    put(out, &counted, sizeof counted);
    fclose(out), fclose(in);
    free(buf), free(tok), free(u);
    wl_free(ctx);
    return 0;
}
