/* checkpoint.h's reader: the checks of wordlm/checkpoint/format.py (load_checkpoint), tensorfile.py
 * (read_tensors), wordlm/config.py (ModelConfig) and wordlm/quant (Scheme), in the same order, so that
 * a broken checkpoint gets the refusal the Python loader gives it (tests/test_libwordlm.py feeds both
 * the corrupt files of tests/test_checkpoint.py). */
#include "checkpoint.h"

#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"

#define MAX_HEADER (100u << 20) /* safetensors' own limit on its JSON header */

int ck_fail(wl_error *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

float ck_half(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = h >> 10 & 31, man = h & 1023, bits;
    if (exp == 31) bits = sign | 0x7F800000u | man << 13; /* inf, NaN */
    else if (exp) bits = sign | (exp + 112) << 23 | man << 13;
    else if (!man) bits = sign;
    else { /* subnormal: normalise */
        int e = -1;
        do man <<= 1, e++;
        while (!(man & 1024));
        bits = sign | (uint32_t)(112 - e) << 23 | (man & 1023) << 13;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float ck_float_at(const ck_tensor *t, size_t i) {
    if (t->dtype == DT_F16) {
        uint16_t h;
        memcpy(&h, t->data + 2 * i, 2);
        return ck_half(h);
    }
    float f;
    memcpy(&f, t->data + 4 * i, 4);
    return f;
}

/* ---- SHA-256 (FIPS 180-4): the vocabulary's identity, as wordlm.data.Vocab.sha256 ---- */

typedef struct {
    uint32_t h[8];
    uint64_t bytes;
    unsigned char block[64];
    size_t fill;
} sha256_t;

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

static uint32_t ror(uint32_t x, int n) { return x >> n | x << (32 - n); }

static void sha256_block(sha256_t *s, const unsigned char *p) {
    uint32_t w[64], a[8];
    for (int i = 0; i < 16; i++) w[i] = (uint32_t)p[4 * i] << 24 | p[4 * i + 1] << 16 | p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ w[i - 15] >> 3;
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ w[i - 2] >> 10;
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    memcpy(a, s->h, sizeof a);
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = a[7] + (ror(a[4], 6) ^ ror(a[4], 11) ^ ror(a[4], 25)) + ((a[4] & a[5]) ^ (~a[4] & a[6])) + K256[i] + w[i];
        uint32_t t2 = (ror(a[0], 2) ^ ror(a[0], 13) ^ ror(a[0], 22)) + ((a[0] & a[1]) ^ (a[0] & a[2]) ^ (a[1] & a[2]));
        memmove(a + 1, a, 7 * sizeof a[0]);
        a[4] += t1, a[0] = t1 + t2;
    }
    for (int i = 0; i < 8; i++) s->h[i] += a[i];
}

static void sha256_init(sha256_t *s) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->bytes = 0, s->fill = 0;
}

static void sha256_add(sha256_t *s, const void *data, size_t n) {
    const unsigned char *p = data;
    s->bytes += n;
    while (n) {
        size_t take = 64 - s->fill < n ? 64 - s->fill : n;
        memcpy(s->block + s->fill, p, take);
        s->fill += take, p += take, n -= take;
        if (s->fill == 64) sha256_block(s, s->block), s->fill = 0;
    }
}

static void sha256_hex(sha256_t *s, char out[65]) {
    uint64_t bits = s->bytes * 8;
    unsigned char pad[72] = {0x80}, len[8];
    size_t padn = (s->fill < 56 ? 56 : 120) - s->fill;
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_add(s, pad, padn);
    sha256_add(s, len, 8);
    for (int i = 0; i < 8; i++) snprintf(out + 8 * i, 9, "%08x", s->h[i]);
}

/* ---- files ---- */

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* a whole file, NUL-terminated; NULL on failure */
static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *data = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 65536;
            char *grown = realloc(data, cap);
            if (!grown) {
                free(data), fclose(f);
                return NULL;
            }
            data = grown;
        }
        size_t got = fread(data + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(data);
        return NULL;
    }
    data[n] = 0;
    *len = n;
    return data;
}

/* ---- config.json ---- */

static int is_int(const json_value *v) { return v && v->kind == JSON_INT; }

/* a positive integer field of the model config (not a bool: JSON's true is not 1 here) */
static int positive(const json_value *model, const char *key, int64_t *out, const char *where, wl_error *err) {
    const json_value *v = json_get(model, key);
    if (!is_int(v) || v->big || v->integer < 1) {
        char r[64];
        json_repr(v, r, sizeof r);
        return ck_fail(err, WL_ERR_CONFIG, "%s: model config: %s must be a positive integer, got %s", where, key, r);
    }
    *out = v->integer;
    return 0;
}

static const char *const MODEL_KEYS[] = {"vocab_size", "emb_dim", "hidden_dim", "num_layers", "dropout", "cell",
                                         "tied", "proj_size"};
#define MODEL_REQUIRED 5 /* the first five; the others are optional (config.py's OPTIONAL) */

static int parse_model(const json_value *m, ck_checkpoint *ck, const char *where, wl_error *err) {
    if (!m || m->kind != JSON_OBJECT)
        return ck_fail(err, WL_ERR_CONFIG, "%s: model config must be an object", where);
    for (size_t i = 0; i < m->length; i++) {
        int known = 0;
        for (size_t j = 0; j < sizeof MODEL_KEYS / sizeof *MODEL_KEYS; j++) known |= !strcmp(m->keys[i], MODEL_KEYS[j]);
        if (!known) return ck_fail(err, WL_ERR_CONFIG, "%s: model config: unknown keys ['%s']", where, m->keys[i]);
    }
    for (int j = 0; j < MODEL_REQUIRED; j++)
        if (!json_get(m, MODEL_KEYS[j]))
            return ck_fail(err, WL_ERR_CONFIG, "%s: model config: missing keys ['%s']", where, MODEL_KEYS[j]);
    if (positive(m, "vocab_size", &ck->vocab_size, where, err) || positive(m, "emb_dim", &ck->emb_dim, where, err) ||
        positive(m, "hidden_dim", &ck->hidden_dim, where, err) || positive(m, "num_layers", &ck->num_layers, where, err))
        return err->code;
    const json_value *d = json_get(m, "dropout");
    double dv = d && (d->kind == JSON_INT || d->kind == JSON_REAL) ? d->real : NAN;
    if (!(dv >= 0 && dv < 1)) {
        char r[64];
        json_repr(d, r, sizeof r);
        return ck_fail(err, WL_ERR_CONFIG, "%s: model config: dropout must be a number in [0, 1), got %s", where, r);
    }
    const json_value *cell = json_get(m, "cell");
    ck->cell = cell ? -1 : 0; /* the default: lstm, kernels.c's first */
    for (int c = 0; cell && cell->kind == JSON_STRING && wl_cell_name(c); c++)
        if (!strcmp(cell->string, wl_cell_name(c))) ck->cell = c;
    if (ck->cell < 0) {
        char r[64];
        json_repr(cell, r, sizeof r);
        char names[128] = "";
        for (int c = 0; wl_cell_name(c); c++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", c ? ", " : "", wl_cell_name(c));
        return ck_fail(err, WL_ERR_CONFIG, "%s: model config: cell must be one of %s, got %s", where, names, r);
    }
    int has_c, projection;
    wl_cell_info(ck->cell, &ck->gates, &has_c, &projection);
    const json_value *tied = json_get(m, "tied"), *proj = json_get(m, "proj_size");
    if (tied && tied->kind != JSON_BOOL)
        return ck_fail(err, WL_ERR_CONFIG, "%s: model config: tied must be true or false", where);
    ck->tied = tied ? tied->boolean : 0;
    if (proj && (!is_int(proj) || proj->big || proj->integer < 0))
        return ck_fail(err, WL_ERR_CONFIG, "%s: model config: proj_size must be an integer >= 0", where);
    ck->proj_size = proj ? proj->integer : 0;
    if (ck->proj_size && !projection)
        return ck_fail(err, WL_ERR_CONFIG, "%s: model config: proj_size applies to LSTM cells only", where);
    if (ck->proj_size >= ck->hidden_dim)
        return ck_fail(err, WL_ERR_CONFIG, "%s: model config: proj_size (%lld) must be smaller than hidden_dim (%lld)",
                       where, (long long)ck->proj_size, (long long)ck->hidden_dim);
    ck->out_dim = ck->proj_size ? ck->proj_size : ck->hidden_dim;
    if (ck->tied && ck->out_dim != ck->emb_dim)
        return ck_fail(err, WL_ERR_CONFIG, "%s: model config: tying the embedding and the decoder needs emb_dim (%lld) "
                       "equal to the size of h (%lld)", where, (long long)ck->emb_dim, (long long)ck->out_dim);
    return 0;
}

static const int WIDTHS[] = {2, 3, 4, 5, 6, 8};

/* a QSpec object: {"bits": 2..8 or null, "group_size": a power of two >= 16 or null}, defaults 8 and null */
static int parse_qspec(const json_value *v, ck_qspec *out, const char *what, const char *where, wl_error *err) {
    if (!v || v->kind != JSON_OBJECT)
        return ck_fail(err, WL_ERR_CONFIG, "%s: malformed quantization config (%s is not an object)", where, what);
    for (size_t i = 0; i < v->length; i++)
        if (strcmp(v->keys[i], "bits") && strcmp(v->keys[i], "group_size"))
            return ck_fail(err, WL_ERR_CONFIG, "%s: malformed quantization config (%s: unexpected key '%s')", where,
                           what, v->keys[i]);
    const json_value *bits = json_get(v, "bits"), *group = json_get(v, "group_size");
    out->bits = 8, out->group = 0;
    if (bits && bits->kind != JSON_NULL) {
        int ok = 0;
        for (int i = 0; i < 6; i++) ok |= is_int(bits) && bits->integer == WIDTHS[i];
        if (!ok) return ck_fail(err, WL_ERR_CONFIG, "%s: scheme, %s: bits must be one of 2, 3, 4, 5, 6, 8 or null", where, what);
        out->bits = (int)bits->integer;
    } else if (bits) {
        out->bits = 0;
    }
    if (group && group->kind != JSON_NULL) {
        if (!is_int(group) || group->big || group->integer < 16 || group->integer > (1 << 30) ||
            (group->integer & (group->integer - 1)))
            return ck_fail(err, WL_ERR_CONFIG, "%s: scheme, %s: group size must be a power of two >= 16", where, what);
        out->group = (int)group->integer;
    }
    return 0;
}

static const struct {
    const char *name;
    int newest;
} SCHEMES[] = {{"int8", 2}, {"int4", 2}, {"mixed", 2}};

static int parse_quant(const json_value *q, ck_checkpoint *ck, const char *where, wl_error *err) {
    const json_value *name = json_get(q, "scheme"), *version = json_get(q, "version"), *params = json_get(q, "params");
    if (!name || !version || !params || params->kind != JSON_OBJECT || !json_get(params, "float_dtype"))
        return ck_fail(err, WL_ERR_CONFIG, "%s: malformed quantization config (scheme, version, params and "
                       "params.float_dtype are required)", where);
    const char *parts[3] = {"encoder", "rnn", "decoder"};
    ck_qspec *specs[3] = {&ck->encoder, &ck->rnn, &ck->decoder};
    for (int i = 0; i < 3; i++)
        if (parse_qspec(json_get(params, parts[i]), specs[i], parts[i], where, err)) return err->code;
    const json_value *plan = json_get(params, "plan"), *fine = json_get(params, "fine_activations");
    if (plan && plan->kind != JSON_OBJECT)
        return ck_fail(err, WL_ERR_CONFIG, "%s: a quantization plan must be an object of weight name -> spec", where);
    if (plan && plan->length) {
        ck->plan = calloc(plan->length, sizeof *ck->plan);
        if (!ck->plan) return ck_fail(err, WL_ERR_MEMORY, "out of memory");
        for (size_t i = 0; i < plan->length; i++) {
            ck->plan[i].name = strdup(plan->keys[i]);
            ck->n_plan++;
            if (!ck->plan[i].name) return ck_fail(err, WL_ERR_MEMORY, "out of memory");
            if (parse_qspec(&plan->items[i], &ck->plan[i].spec, plan->keys[i], where, err)) return err->code;
        }
    }
    int known = -1;
    for (int i = 0; i < 3; i++)
        if (name->kind == JSON_STRING && !strcmp(name->string, SCHEMES[i].name)) known = i;
    if (known < 0) {
        char r[64];
        json_repr(name, r, sizeof r);
        return ck_fail(err, WL_ERR_CONFIG, "%s: unknown quantization scheme %s", where, r);
    }
    snprintf(ck->scheme, sizeof ck->scheme, "%s", name->string);
    if (!is_int(version) || version->integer < 1 || version->integer > SCHEMES[known].newest) {
        char r[64];
        json_repr(version, r, sizeof r);
        return ck_fail(err, WL_ERR_CONFIG, "%s: scheme %s version %s; this wordlm reads versions 1 to %d", where,
                       ck->scheme, r, SCHEMES[known].newest);
    }
    ck->version = (int)version->integer;
    ck->fine = -1;
    const char *fines[3] = {"none", "inputs", "all"};
    for (int i = 0; i < 3; i++)
        if (!fine || (fine->kind == JSON_STRING && !strcmp(fine->string, fines[i]))) ck->fine = fine ? i : 0;
    if (ck->fine < 0)
        return ck_fail(err, WL_ERR_CONFIG, "%s: scheme %s: fine_activations must be one of none, inputs, all", where,
                       ck->scheme);
    const json_value *fd = json_get(params, "float_dtype");
    if (fd->kind != JSON_STRING || (strcmp(fd->string, "float32") && strcmp(fd->string, "float16")))
        return ck_fail(err, WL_ERR_CONFIG, "%s: scheme %s: float_dtype must be float32 or float16", where, ck->scheme);
    ck->float16 = !strcmp(fd->string, "float16");
    int rnn_grouped = ck->rnn.group != 0, widths_v1 = 1;
    for (int i = 0; i < ck->n_plan; i++) {
        if (!strncmp(ck->plan[i].name, "rnn.", 4) && ck->plan[i].spec.group) rnn_grouped = 1;
        widths_v1 &= ck->plan[i].spec.bits == 0 || ck->plan[i].spec.bits == 4 || ck->plan[i].spec.bits == 8;
    }
    if (rnn_grouped)
        return ck_fail(err, WL_ERR_CONFIG, "%s: scheme %s: recurrent weights take one scale per row (group_size null)",
                       where, ck->scheme);
    for (int i = 0; i < 3; i += 2) widths_v1 &= specs[i]->bits == 0 || specs[i]->bits == 4 || specs[i]->bits == 8;
    if (ck->version == 1 && (ck->n_plan || !widths_v1 || (ck->rnn.bits != 0 && ck->rnn.bits != 8)))
        return ck_fail(err, WL_ERR_CONFIG, "%s: scheme %s version 1 has no plan and only 4- or 8-bit parts (int8 LSTM)",
                       where, ck->scheme);
    ck->quantized = 1;
    return 0;
}

ck_qspec ck_spec_for(const ck_checkpoint *ck, const char *name) {
    ck_qspec none = {0, 0};
    if (!ck->quantized) return none;
    for (int i = 0; i < ck->n_plan; i++)
        if (!strcmp(ck->plan[i].name, name)) return ck->plan[i].spec;
    if (!strcmp(name, "encoder.weight")) return ck->encoder;
    if (!strncmp(name, "rnn.weight_", 11)) return ck->rnn;
    if (!strcmp(name, "decoder.weight")) return ck->decoder;
    return none;
}

/* ---- vocab.txt ---- */

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

int32_t ck_word_id(const ck_checkpoint *ck, const char *word, size_t len) {
    if (!ck->table) return -1;
    for (size_t i = fnv1a(word, len) & (ck->table_size - 1);; i = (i + 1) & (ck->table_size - 1)) {
        int32_t id = ck->table[i];
        if (id < 0) return -1;
        if (strlen(ck->words[id]) == len && !memcmp(ck->words[id], word, len)) return id;
    }
}

/* the words of vocab.txt in id order: split at '\n', a last empty line dropped, duplicates dropped
 * (Vocab.from_text); *sha: sha256 of the words joined by '\n' (Vocab.sha256) */
static int read_vocab(const char *path, ck_checkpoint *ck, char sha[65], wl_error *err) {
    size_t len;
    ck->vocab_text = read_all(path, &len);
    if (!ck->vocab_text) return ck_fail(err, WL_ERR_IO, "%s: cannot be read", path);
    if (!utf8_valid((const unsigned char *)ck->vocab_text, len)) return ck_fail(err, WL_ERR_VOCAB, "%s: not UTF-8 text", path);
    if (memchr(ck->vocab_text, 0, len)) return ck_fail(err, WL_ERR_VOCAB, "%s: holds a NUL byte", path);
    /* universal newlines, as Python's read_text: "\r\n" and a lone "\r" end a line too */
    size_t w = 0;
    for (size_t i = 0; i < len; i++) {
        char c = ck->vocab_text[i];
        if (c == '\r') c = '\n', i += i + 1 < len && ck->vocab_text[i + 1] == '\n';
        ck->vocab_text[w++] = c;
    }
    ck->vocab_text[len = w] = 0;
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += ck->vocab_text[i] == '\n';
    if (len && ck->vocab_text[len - 1] == '\n') lines--; /* the last line's newline ends it */
    if (len == 0) lines = 1;                                /* "" is one empty word, as "".split("\n") */
    if (lines > INT32_MAX / 2) return ck_fail(err, WL_ERR_VOCAB, "%s: too many words", path);
    ck->words = malloc(sizeof *ck->words * lines);
    for (ck->table_size = 16; ck->table_size < 2 * lines;) ck->table_size *= 2;
    ck->table = malloc(sizeof *ck->table * ck->table_size);
    if (!ck->words || !ck->table) return ck_fail(err, WL_ERR_MEMORY, "out of memory");
    memset(ck->table, 0xff, sizeof *ck->table * ck->table_size);
    sha256_t s;
    sha256_init(&s);
    char *p = ck->vocab_text;
    for (size_t line = 0; line < lines; line++) {
        char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        p[n] = 0;
        if (ck_word_id(ck, p, n) < 0) {
            size_t i = fnv1a(p, n) & (ck->table_size - 1);
            while (ck->table[i] >= 0) i = (i + 1) & (ck->table_size - 1);
            ck->table[i] = ck->n_words;
            if (ck->n_words) sha256_add(&s, "\n", 1);
            sha256_add(&s, p, n);
            ck->words[ck->n_words++] = p;
        }
        p += n + 1;
    }
    sha256_hex(&s, sha);
    return 0;
}

/* ---- model.safetensors (tensorfile.py's read_tensors) ---- */

static const struct {
    const char *name;
    size_t size;
} DTYPES[DT_COUNT] = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"I64", 8}, {"I32", 4},
                      {"I16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"BF16", 2}};

static int by_span(const void *a, const void *b) {
    const ck_tensor *x = *(ck_tensor *const *)a, *y = *(ck_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int read_tensors(const char *path, ck_checkpoint *ck, wl_error *err) {
#define BAD(...) (snprintf(why, sizeof why, __VA_ARGS__), \
                  ck_fail(err, WL_ERR_WEIGHTS, "%s: corrupt or truncated safetensors file (%s)", path, why))
    char why[320];
    int fd = open(path, O_RDONLY);
    if (fd < 0) return ck_fail(err, WL_ERR_IO, "%s: cannot be opened", path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return ck_fail(err, WL_ERR_IO, "%s: cannot be read", path);
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        close(fd);
        return BAD("shorter than its 8-byte header length");
    }
    /* mapped read-only and private: the tensors are views into it, as numpy's memmap */
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return ck_fail(err, WL_ERR_IO, "%s: cannot be mapped", path);
    ck->map = map, ck->map_size = size;
    const uint8_t *bytes = map;
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= (uint64_t)bytes[i] << (8 * i);
    if (n > MAX_HEADER || 8 + n > size) return BAD("header of %llu bytes in a file of %zu", (unsigned long long)n, size);
    json_value header;
    char jerr[128];
    if (json_parse((const char *)bytes + 8, (size_t)n, &header, jerr, sizeof jerr)) return BAD("header is not JSON: %s", jerr);
    int rc = 0;
    size_t data_size = size - 8 - (size_t)n;
    const uint8_t *data = bytes + 8 + n;
    if (header.kind != JSON_OBJECT) {
        rc = BAD("header is not an object");
        goto done;
    }
    ck->tensors = calloc(header.length ? header.length : 1, sizeof *ck->tensors);
    if (!ck->tensors) {
        rc = ck_fail(err, WL_ERR_MEMORY, "out of memory");
        goto done;
    }
    for (size_t e = 0; e < header.length; e++) {
        const char *name = header.keys[e];
        const json_value *entry = &header.items[e];
        if (!strcmp(name, "__metadata__")) continue;
        const json_value *dt = json_get(entry, "dtype"), *shape = json_get(entry, "shape");
        const json_value *offs = json_get(entry, "data_offsets");
        int dtype = -1;
        for (int d = 0; dt && dt->kind == JSON_STRING && d < DT_COUNT; d++)
            if (!strcmp(dt->string, DTYPES[d].name)) dtype = d;
        if (dtype < 0 || !shape || shape->kind != JSON_ARRAY || shape->length > 8 || !offs || offs->kind != JSON_ARRAY ||
            offs->length != 2) {
            rc = BAD("entry '%s': a dtype of the format, a shape and two data_offsets are required", name);
            goto done;
        }
        ck_tensor *t = &ck->tensors[ck->n_tensors++];
        t->name = strdup(name);
        if (!t->name) {
            rc = ck_fail(err, WL_ERR_MEMORY, "out of memory");
            goto done;
        }
        t->dtype = dtype, t->ndim = (int)shape->length;
        unsigned __int128 count = 1;
        int ok = 1;
        for (int d = 0; d < t->ndim; d++) {
            const json_value *s = &shape->items[d];
            ok &= is_int(s) && !s->big && s->integer >= 0;
            t->shape[d] = ok ? s->integer : 0;
            count *= (unsigned __int128)(ok ? s->integer : 0);
        }
        for (int i = 0; i < 2; i++) ok &= is_int(&offs->items[i]) && !offs->items[i].big && offs->items[i].integer >= 0;
        if (!ok) {
            rc = BAD("entry '%s': shape and offsets must be non-negative integers", name);
            goto done;
        }
        uint64_t begin = (uint64_t)offs->items[0].integer, end = (uint64_t)offs->items[1].integer;
        if (!(begin <= end && end <= data_size) || (unsigned __int128)(end - begin) != count * DTYPES[dtype].size) {
            rc = BAD("%s: bytes %llu..%llu do not hold %s [%d dims]", name, (unsigned long long)begin,
                     (unsigned long long)end, DTYPES[dtype].name, t->ndim);
            goto done;
        }
        t->begin = (size_t)begin, t->end = (size_t)end, t->data = data + begin;
    }
    ck_tensor **order = malloc(sizeof *order * (size_t)(ck->n_tensors ? ck->n_tensors : 1));
    if (!order) {
        rc = ck_fail(err, WL_ERR_MEMORY, "out of memory");
        goto done;
    }
    for (int i = 0; i < ck->n_tensors; i++) order[i] = &ck->tensors[i];
    qsort(order, (size_t)ck->n_tensors, sizeof *order, by_span);
    for (int i = 1; i < ck->n_tensors && !rc; i++)
        if (order[i]->begin < order[i - 1]->end) rc = BAD("%s and %s overlap", order[i - 1]->name, order[i]->name);
    free(order);
    /* bfloat16 widened to float32 exactly: its bits are the top half of a float32's */
    for (int i = 0; i < ck->n_tensors && !rc; i++) {
        ck_tensor *t = &ck->tensors[i];
        if (t->dtype != DT_BF16) continue;
        size_t count = (t->end - t->begin) / 2;
        uint32_t *wide = malloc(4 * (count ? count : 1));
        if (!wide) {
            rc = ck_fail(err, WL_ERR_MEMORY, "out of memory");
            break;
        }
        for (size_t j = 0; j < count; j++) {
            uint16_t b;
            memcpy(&b, t->data + 2 * j, 2);
            wide[j] = (uint32_t)b << 16;
        }
        t->data = (const uint8_t *)wide, t->dtype = DT_F32;
        t->begin = SIZE_MAX; /* marks the copy, freed by ck_free */
    }
done:
    json_free(&header);
    return rc;
#undef BAD
}

const ck_tensor *ck_tensor_get(const ck_checkpoint *ck, const char *name) {
    for (int i = ck->n_tensors; i-- > 0;)
        if (!strcmp(ck->tensors[i].name, name)) return &ck->tensors[i];
    return NULL;
}

/* ---- what the tensors must be (format.py's tensor_spec and validate_tensors) ---- */

typedef struct {
    char name[64];
    int64_t shape[2];
    int ndim;
    int dtypes; /* a bit per DT_ allowed */
} expected_t;

#define FLOATS ((1 << DT_F32) | (1 << DT_F16)) /* BF16 reads as F32 */

/* every tensor name, shape and dtype of the model (config.py's expected_shapes, then Scheme.tensor_spec) */
static int expected_tensors(const ck_checkpoint *ck, expected_t **out, int *count, wl_error *err) {
    int64_t g = ck->gates * ck->hidden_dim, cap = 8 + 10 * ck->num_layers;
    expected_t *e = calloc((size_t)cap, sizeof *e), shapes[8];
    if (!e) return ck_fail(err, WL_ERR_MEMORY, "out of memory");
    int n = 0;
    for (int64_t item = -1; item <= ck->num_layers; item++) {
        int m = 0;
#define SHAPE(fmt, arg, a, b, nd) \
    (snprintf(shapes[m].name, 64, fmt, arg), shapes[m].shape[0] = a, shapes[m].shape[1] = b, shapes[m++].ndim = nd)
        if (item < 0) {
            SHAPE("encoder.weight%s", "", ck->vocab_size, ck->emb_dim, 2);
        } else if (item < ck->num_layers) {
            long long l = item;
            SHAPE("rnn.weight_ih_l%lld", l, g, l ? ck->out_dim : ck->emb_dim, 2);
            SHAPE("rnn.weight_hh_l%lld", l, g, ck->out_dim, 2);
            SHAPE("rnn.bias_ih_l%lld", l, g, 0, 1);
            SHAPE("rnn.bias_hh_l%lld", l, g, 0, 1);
            if (ck->proj_size) SHAPE("rnn.weight_hr_l%lld", l, ck->proj_size, ck->hidden_dim, 2);
        } else {
            if (!ck->tied) SHAPE("decoder.weight%s", "", ck->vocab_size, ck->out_dim, 2);
            SHAPE("decoder.bias%s", "", ck->vocab_size, 0, 1);
        }
#undef SHAPE
        for (int i = 0; i < m; i++) {
            ck_qspec s = ck_spec_for(ck, shapes[i].name);
            if (!s.bits) {
                e[n] = shapes[i];
                e[n++].dtypes = !ck->quantized ? FLOATS : ck->float16 ? 1 << DT_F16 : 1 << DT_F32;
                continue;
            }
            int64_t rows = shapes[i].shape[0], k = shapes[i].shape[1], group = s.group && s.group < k ? s.group : k;
            int unit = s.bits == 8 || s.bits == 4 || s.bits == 2 ? (s.bits == 8 ? 1 : 8 / s.bits) : 8;
            if (k % group) {
                free(e);
                return ck_fail(err, WL_ERR_CONFIG, "scheme %s: group size %lld does not divide %s's %lld columns",
                               ck->scheme, (long long)group, shapes[i].name, (long long)k);
            }
            if (k % unit) {
                free(e);
                return ck_fail(err, WL_ERR_CONFIG, "scheme %s: %d-bit rows of %s need a multiple of %d columns, it has %lld",
                               ck->scheme, s.bits, shapes[i].name, unit, (long long)k);
            }
            e[n] = shapes[i];
            snprintf(e[n].name, 64, "%.48s.qweight", shapes[i].name);
            e[n].shape[1] = k * s.bits / 8, e[n++].dtypes = 1 << (s.bits == 8 ? DT_I8 : DT_U8);
            e[n] = shapes[i];
            snprintf(e[n].name, 64, "%.48s.scales", shapes[i].name);
            e[n].shape[0] = rows, e[n].shape[1] = k / group, e[n++].dtypes = 1 << DT_F16;
        }
    }
    /* every plan entry names a weight of the model (Scheme.check_names) */
    for (int p = 0; p < ck->n_plan; p++) {
        int found = 0;
        for (int i = 0; i < n; i++) {
            size_t len = strlen(ck->plan[p].name);
            found |= !strncmp(e[i].name, ck->plan[p].name, len) && (!e[i].name[len] || e[i].name[len] == '.') &&
                     strstr(ck->plan[p].name, "weight");
        }
        if (!found) {
            free(e);
            return ck_fail(err, WL_ERR_CONFIG, "scheme %s: the plan names ['%s'], not weights of this model", ck->scheme,
                           ck->plan[p].name);
        }
    }
    *out = e, *count = n;
    return 0;
}

static int all_finite(const ck_tensor *t) {
    size_t count = (t->end == t->begin) ? 0 : 1;
    for (int d = 0; d < t->ndim; d++) count *= (size_t)t->shape[d];
    if (t->ndim == 0) count = 1;
    for (size_t i = 0; i < count; i++)
        if (!isfinite(ck_float_at(t, i))) return 0;
    return 1;
}

static int validate_tensors(const ck_checkpoint *ck, const char *where, wl_error *err) {
    expected_t *e = NULL;
    int n = 0;
    if (expected_tensors(ck, &e, &n, err)) return err->code;
    int rc = 0;
    for (int i = 0; i < n && !rc; i++)
        if (!ck_tensor_get(ck, e[i].name)) rc = ck_fail(err, WL_ERR_WEIGHTS, "%s: missing tensors ['%s']", where, e[i].name);
    for (int t = 0; t < ck->n_tensors && !rc; t++) {
        int known = 0;
        for (int i = 0; i < n; i++) known |= !strcmp(ck->tensors[t].name, e[i].name);
        if (!known) rc = ck_fail(err, WL_ERR_WEIGHTS, "%s: unexpected tensors ['%s']", where, ck->tensors[t].name);
    }
    for (int i = 0; i < n && !rc; i++) {
        const ck_tensor *t = ck_tensor_get(ck, e[i].name);
        int same = t->ndim == e[i].ndim;
        for (int d = 0; same && d < t->ndim; d++) same = t->shape[d] == e[i].shape[d];
        if (!same) {
            char got[96] = "(";
            for (int d = 0; d < t->ndim; d++)
                snprintf(got + strlen(got), sizeof got - strlen(got), "%lld%s", (long long)t->shape[d],
                         t->ndim == 1 ? "," : d + 1 < t->ndim ? ", " : "");
            char want[48];
            if (e[i].ndim == 1) snprintf(want, sizeof want, "(%lld,)", (long long)e[i].shape[0]);
            else snprintf(want, sizeof want, "(%lld, %lld)", (long long)e[i].shape[0], (long long)e[i].shape[1]);
            rc = ck_fail(err, WL_ERR_WEIGHTS, "%s: %s has shape %s), expected %s", where, e[i].name, got, want);
        } else if (!(e[i].dtypes >> t->dtype & 1)) {
            rc = ck_fail(err, WL_ERR_WEIGHTS, "%s: %s has dtype %s, not the one expected", where, e[i].name,
                         DTYPES[t->dtype].name);
        } else if ((t->dtype == DT_F32 || t->dtype == DT_F16) && !all_finite(t)) {
            rc = ck_fail(err, WL_ERR_WEIGHTS, "%s: %s holds NaN or infinite values; the model cannot be run", where,
                         e[i].name);
        }
    }
    free(e);
    return rc;
}

/* ---- the directory ---- */

int ck_load(const char *path, ck_checkpoint *ck, wl_error *err) {
    memset(ck, 0, sizeof *ck);
    char file[4096], where[4200];
    if (!path || !is_dir(path)) return ck_fail(err, WL_ERR_NOT_FOUND, "%s: no such checkpoint directory", path ? path : "(null)");
    const char *names[3] = {"config.json", "model.safetensors", "vocab.txt"};
    for (int i = 0; i < 3; i++) {
        snprintf(file, sizeof file, "%s/%s", path, names[i]);
        if (!is_file(file)) return ck_fail(err, WL_ERR_NOT_FOUND, "%s: not a wordlm checkpoint (no %s)", path, names[i]);
    }
    snprintf(where, sizeof where, "%s/config.json", path);
    size_t len;
    char *text = read_all(where, &len), jerr[160];
    if (!text) return ck_fail(err, WL_ERR_IO, "%s: cannot be read", where);
    json_value cfg;
    int jrc = json_parse(text, len, &cfg, jerr, sizeof jerr);
    free(text);
    if (jrc == JSON_TOO_DEEP) return ck_fail(err, WL_ERR_CONFIG, "%s: nested too deeply to be a wordlm config", where);
    if (jrc == JSON_NO_MEMORY) return ck_fail(err, WL_ERR_MEMORY, "%s: out of memory", where);
    if (jrc) return ck_fail(err, WL_ERR_CONFIG, "%s: not valid JSON (%s)", where, jerr);
    int rc = 0;
    char sha[65], r[64];
    const json_value *version = json_get(&cfg, "format_version"), *vocab, *quant;
    if (!is_int(version) || version->big || version->integer != 1) {
        json_repr(version, r, sizeof r);
        rc = ck_fail(err, WL_ERR_CONFIG, "%s: format_version %s, this wordlm reads 1", where, r);
        goto done;
    }
    if (!json_get(&cfg, "model")) {
        rc = ck_fail(err, WL_ERR_CONFIG, "%s: malformed ('model')", where);
        goto done;
    }
    if ((rc = parse_model(json_get(&cfg, "model"), ck, where, err))) goto done;
    vocab = json_get(&cfg, "vocab"), quant = json_get(&cfg, "quantization");
    if (!vocab || !quant || vocab->kind != JSON_OBJECT || (quant->kind != JSON_OBJECT && quant->kind != JSON_NULL)) {
        rc = ck_fail(err, WL_ERR_CONFIG, "%s: malformed (vocab must be an object, quantization an object or null)", where);
        goto done;
    }
    snprintf(file, sizeof file, "%s/vocab.txt", path);
    if ((rc = read_vocab(file, ck, sha, err))) goto done;
    const json_value *size = json_get(vocab, "size"), *hash = json_get(vocab, "sha256");
    int size_ok = size && (size->kind == JSON_INT || size->kind == JSON_REAL) && size->real == (double)ck->n_words;
    if (!size_ok) {
        json_repr(size, r, sizeof r);
        rc = ck_fail(err, WL_ERR_VOCAB, "%s: vocabulary mismatch (%d words, config says %s; sha256 differs)", file,
                     ck->n_words, r);
        goto done;
    }
    if (!hash || hash->kind != JSON_STRING || strcmp(hash->string, sha)) {
        rc = ck_fail(err, WL_ERR_VOCAB, "%s: vocabulary mismatch (sha256 differs from config.json)", file);
        goto done;
    }
    if (ck->n_words != ck->vocab_size) {
        rc = ck_fail(err, WL_ERR_VOCAB, "%s: vocab has %d words, model expects %lld", path, ck->n_words,
                     (long long)ck->vocab_size);
        goto done;
    }
    if (quant->kind == JSON_OBJECT && (rc = parse_quant(quant, ck, where, err))) goto done;
    snprintf(file, sizeof file, "%s/model.safetensors", path);
    if ((rc = read_tensors(file, ck, err))) goto done;
    rc = validate_tensors(ck, file, err);
done:
    json_free(&cfg);
    if (rc) ck_free(ck);
    return rc;
}

void ck_free(ck_checkpoint *ck) {
    for (int i = 0; i < ck->n_plan; i++) free(ck->plan[i].name);
    for (int i = 0; i < ck->n_tensors; i++) {
        free(ck->tensors[i].name);
        if (ck->tensors[i].begin == SIZE_MAX) free((void *)ck->tensors[i].data);
    }
    if (ck->map) munmap(ck->map, ck->map_size);
    free(ck->plan), free(ck->tensors), free(ck->vocab_text), free(ck->words), free(ck->table);
    memset(ck, 0, sizeof *ck);
}
