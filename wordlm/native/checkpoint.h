/* A checkpoint directory read without Python (checkpoint.c): config.json, model.safetensors (mapped),
 * vocab.txt, validated as wordlm/checkpoint/format.py validates them, each refusal a wl_error with
 * the code of wordlm.h and a message that says what the Python loader's says. Internal to the library:
 * context.c packs what this reads. */
#ifndef WORDLM_CHECKPOINT_H
#define WORDLM_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h" /* WL_INTERNAL */
#include "wordlm.h"

/* safetensors dtypes this reader knows (tensorfile.py's DTYPES) */
enum { DT_F64, DT_F32, DT_F16, DT_I64, DT_I32, DT_I16, DT_I8, DT_U8, DT_BOOL, DT_BF16, DT_COUNT };

typedef struct {
    char *name;
    int dtype;      /* DT_*: BF16 is widened to a float32 copy on load (data then points at it) */
    int ndim;
    int64_t shape[8];
    const uint8_t *data; /* into the mapped file (or the widened copy); may be unaligned */
    size_t begin, end;   /* byte offsets in the data section */
} ck_tensor;

/* how one weight is stored: bits 0 keeps it float; group 0 is one scale per row (wordlm.quant.QSpec) */
typedef struct {
    int bits, group;
} ck_qspec;

typedef struct {
    char *name;
    ck_qspec spec;
} ck_plan_entry;

typedef struct {
    /* the model (wordlm.config.ModelConfig) */
    int64_t vocab_size, emb_dim, hidden_dim, num_layers, proj_size;
    int cell, tied; /* cell: kernels.c's number (wl_cell_name) */
    int64_t gates, out_dim;
    /* the quantization scheme (wordlm.quant.Scheme), quantized 0 for a float checkpoint */
    int quantized, version, float16, fine; /* fine: 0 none, 1 inputs (W_ih), 2 all (W_ih and the decoder) */
    char scheme[16];
    ck_qspec encoder, rnn, decoder;
    ck_plan_entry *plan;
    int n_plan;
    /* the vocabulary: words in id order (duplicates dropped, as wordlm.data.Vocab drops them) */
    char *vocab_text; /* vocab.txt, its newlines made NULs */
    char **words;
    int32_t n_words;
    int32_t *table; /* open addressing: word -> id, -1 empty */
    size_t table_size;
    /* the tensors */
    void *map;
    size_t map_size;
    ck_tensor *tensors;
    int n_tensors;
} ck_checkpoint;

/* read and validate `path` into *ck (zeroed first); WL_OK, or a code with err's message */
WL_INTERNAL int ck_load(const char *path, ck_checkpoint *ck, wl_error *err);
WL_INTERNAL void ck_free(ck_checkpoint *ck);
WL_INTERNAL const ck_tensor *ck_tensor_get(const ck_checkpoint *ck, const char *name);
/* a weight's spec (Scheme.spec_for): its plan entry, else its part's; bits 0 where it stays float */
WL_INTERNAL ck_qspec ck_spec_for(const ck_checkpoint *ck, const char *name);
/* a word's id, or -1 */
WL_INTERNAL int32_t ck_word_id(const ck_checkpoint *ck, const char *word, size_t len);
/* float16 bits -> float32, exactly (subnormals, infinities and NaN included) */
WL_INTERNAL float ck_half(uint16_t h);
/* element i of a float tensor (F32, F16 or widened BF16) as float32, exactly */
WL_INTERNAL float ck_float_at(const ck_tensor *t, size_t i);
/* printf into err with a code; returns the code */
WL_INTERNAL int ck_fail(wl_error *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
