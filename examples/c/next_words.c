/* next_words: the most likely next words after a sentence, and a sampled continuation, with libwordlm.
 *   examples/c/next_words CKPT_DIR "a sentence" [temperature]
 * The state is the caller's flat buffer: saving and restoring a stream is a memcpy (shown below). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wordlm.h"

#define WORDS 12 /* words of the continuation */

static double uniform(uint64_t *s) { /* splitmix64: the test feeds Python the same numbers */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull, z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}

/* feed `first` then sample WORDS words, each fed back; words_out[WORDS] */
static void continue_from(wl_context *ctx, float *state, float *logits, const wl_sampling *s, int32_t *words_out) {
    uint64_t seed = 0;
    for (int i = 0; i < WORDS; i++) {
        words_out[i] = wl_sample_next(ctx, logits, s, uniform(&seed));
        wl_eval(ctx, &words_out[i], 1, state, state, logits);
    }
}

int main(int argc, char **argv) {
    if (argc < 3) return fprintf(stderr, "usage: %s CKPT_DIR \"a sentence\" [temperature]\n", argv[0]), 2;
    wl_error err;
    wl_context *ctx = wl_init_from_dir(argv[1], 1, &err);
    if (!ctx) return fprintf(stderr, "error %d: %s\n", err.code, err.message), 1;
    int32_t ids[256], top[10], words[WORDS], again[WORDS];
    int eos = wl_word_id(ctx, "<eos>"), first = eos >= 0; /* a text starts after a line break, as in generate */
    ids[0] = eos;
    int n = wl_encode(ctx, argv[2], ids + first, 256 - first) + first;
    if (n < 1 || n > 256) return fprintf(stderr, "error: no words, too many, or one unknown without <unk>\n"), 1;
    size_t S = wl_state_size(ctx), V = wl_logits_size(ctx);
    float *state = malloc(S * sizeof(float)), *saved = malloc(S * sizeof(float)), *lp = malloc(V * sizeof(float));
    float *logits = malloc(V * sizeof(float)), *saved_logits = malloc(V * sizeof(float)), values[10];
    if (wl_next_logprobs(ctx, ids, n, 1, NULL, state, lp))
        return fprintf(stderr, "error: %s\n", wl_last_error(ctx)->message), 1;
    int k = wl_top_k(ctx, lp, 10, top, values);
    printf("kernels: %s\nnext words after \"%s\":\n", wl_isa(ctx), argv[2]);
    for (int i = 0; i < k; i++) printf("  %-16s %.4f  %a\n", wl_word(ctx, top[i]), exp(values[i]), values[i]);
    wl_eval_sequence(ctx, ids, n, 1, NULL, state, logits); /* the logits the sampler draws from */
    memcpy(saved, state, S * sizeof(float)), memcpy(saved_logits, logits, V * sizeof(float)); /* save */
    wl_sampling s = {argc > 3 ? atof(argv[3]) : 0.8, 0, 1.0};
    continue_from(ctx, state, logits, &s, words);
    printf("continuation (temperature %g):", s.temperature);
    for (int i = 0; i < WORDS; i++) printf(" %s", wl_word(ctx, words[i]));
    memcpy(state, saved, S * sizeof(float)), memcpy(logits, saved_logits, V * sizeof(float)); /* restore */
    continue_from(ctx, state, logits, &s, again);
    printf("\nids:");
    for (int i = 0; i < WORDS; i++) printf(" %d", words[i]);
    printf("\nrestored state gives the same continuation: %s\n", memcmp(words, again, sizeof words) ? "no" : "yes");
    free(state), free(saved), free(lp), free(logits), free(saved_logits);
    wl_free(ctx);
    return memcmp(words, again, sizeof words) != 0;
}
