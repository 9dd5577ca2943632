/* Generation's loop through libwordlm, as an app runs it: per word, wl_eval (the word in, the logits
 * out) and wl_sample_next (temperature 1). Prints the median and 90th percentile microseconds per word.
 *   loop CKPT_DIR WORDS        (benchmarks/generation.py builds and runs it) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "wordlm.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 3 || atoi(argv[2]) < 1) return fprintf(stderr, "usage: %s CKPT_DIR WORDS\n", argv[0]), 2;
    int words = atoi(argv[2]), warmup = 50;
    wl_error err;
    wl_context *ctx = wl_init_from_dir(argv[1], 1, &err);
    if (!ctx) return fprintf(stderr, "%s\n", err.message), 1;
    float *state = calloc(wl_state_size(ctx), sizeof(float)), *logits = malloc(wl_logits_size(ctx) * sizeof(float));
    double *us = malloc(sizeof(double) * (size_t)words);
    wl_sampling s = {1.0, 0, 1.0};
    int32_t word = 0;
    if (!state || !logits || !us || wl_reserve(ctx, 1, 1)) return fprintf(stderr, "out of memory\n"), 1;
    for (int i = -warmup; i < words; i++) {
        double t = now(), u = (double)((uint32_t)(i + warmup) * 2654435761u) / 4294967296.0;
        if (wl_eval(ctx, &word, 1, state, state, logits) || (word = wl_sample_next(ctx, logits, &s, u)) < 0)
            return fprintf(stderr, "%s\n", wl_last_error(ctx)->message), 1;
        if (i >= 0) us[i] = (now() - t) * 1e6;
    }
    qsort(us, (size_t)words, sizeof(double), by_value);
    printf("%.1f %.1f\n", us[words / 2], us[words * 9 / 10]);
    wl_free(ctx);
    return 0;
}
