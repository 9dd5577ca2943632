/* The embedding's lookup: rows of a table of codes of any width (2-8 bits) as float32, each code times
 * its group's scale. The Python runtime (wordlm.runtime.weights.Embedding) and libwordlm's context both
 * call it: generation looks up one row per word, and a row unpacked in numpy took ~10 numpy calls (~35 us
 * once the decoder has streamed the caches out) where this takes ~1 us (an eval chunk's 25 rows: ~2 us;
 * 35 us while it divided per code to find the code's group).
 *
 * The layout is wordlm.quant.primitives.pack_bits': per row, one little-endian bit stream of offset-binary
 * codes (code + 2^(bits - 1)), `row_bytes` bytes; 8 bits: the int8 codes themselves. The product is one
 * float32 multiply, as numpy's (code as float32) * scale.
 */
#include <stdint.h>

#include "wordlm.h"

/* code j of a row of packed codes */
static inline int code_at(const uint8_t *row, int64_t row_bytes, int bits, int64_t j) {
    if (bits == 8) return (int8_t)row[j];
    int64_t bit = j * bits, byte = bit >> 3;
    unsigned v = row[byte];
    if (byte + 1 < row_bytes) v |= (unsigned)row[byte + 1] << 8;
    return (int)(v >> (bit & 7) & ((1u << bits) - 1)) - (1 << (bits - 1));
}

int wl_embed(const uint8_t *codes, int64_t row_bytes, int bits, const float *scales, int64_t groups,
             int64_t vocab, int64_t dim, const int64_t *ids, int64_t n, float *out) {
    if (!codes || !scales || !ids || !out || bits < 2 || bits > 8 || groups < 1 || dim < 1 || dim % groups ||
        row_bytes * 8 < dim * bits)
        return -1;
    for (int64_t r = 0; r < n; r++)
        if (ids[r] < 0 || ids[r] >= vocab) return -1;
    int64_t group = dim / groups;
    for (int64_t r = 0; r < n; r++) {
        const uint8_t *row = codes + ids[r] * row_bytes;
        const float *s = scales + ids[r] * groups;
        float *o = out + r * dim;
        for (int64_t g = 0, j = 0; g < groups; g++) { /* a group at a time: no division per code */
            int64_t end = j + group;
            if (bits == 8) /* a loop the compiler vectorizes */
                for (; j < end; j++) o[j] = (float)(int8_t)row[j] * s[g];
            else
                for (; j < end; j++) o[j] = (float)code_at(row, row_bytes, bits, j) * s[g];
        }
    }
    return 0;
}
