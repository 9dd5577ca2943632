/* json.h's parser: recursive descent over a byte buffer, with a depth limit (so the recursion is
 * bounded) and every allocation checked. */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const unsigned char *p, *end, *start;
    int depth, status;
    char *err;
    size_t err_size;
} parser;

static int fail(parser *ps, int status, const char *why) {
    if (!ps->status) {
        ps->status = status;
        snprintf(ps->err, ps->err_size, "%s at byte %zu", why, (size_t)(ps->p - ps->start));
    }
    return ps->status;
}

static void skip_space(parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int literal(parser *ps, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n)) return fail(ps, JSON_INVALID, "unexpected character");
    ps->p += n;
    return 0;
}

/* a growable byte buffer for strings */
typedef struct {
    char *data;
    size_t len, cap;
} buffer;

static int put(buffer *b, const char *bytes, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 32;
        while (cap < b->len + n + 1) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) return -1;
        b->data = grown, b->cap = cap;
    }
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

static int hex4(parser *ps, unsigned *out) {
    if (ps->end - ps->p < 4) return fail(ps, JSON_INVALID, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = ps->p[i];
        unsigned d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : 16;
        if (d == 16) return fail(ps, JSON_INVALID, "bad \\u escape");
        v = v * 16 + d;
    }
    ps->p += 4;
    *out = v;
    return 0;
}

/* a code point as UTF-8 (a lone surrogate as its 3-byte form, as Python keeps it in a str) */
static int put_code_point(buffer *b, unsigned cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) u[0] = (char)cp, n = 1;
    else if (cp < 0x800) u[0] = (char)(0xC0 | cp >> 6), u[1] = (char)(0x80 | (cp & 63)), n = 2;
    else if (cp < 0x10000)
        u[0] = (char)(0xE0 | cp >> 12), u[1] = (char)(0x80 | (cp >> 6 & 63)), u[2] = (char)(0x80 | (cp & 63)), n = 3;
    else
        u[0] = (char)(0xF0 | cp >> 18), u[1] = (char)(0x80 | (cp >> 12 & 63)), u[2] = (char)(0x80 | (cp >> 6 & 63)),
        u[3] = (char)(0x80 | (cp & 63)), n = 4;
    return put(b, u, n);
}

static int parse_string(parser *ps, char **out, size_t *len) {
    buffer b = {0};
    ps->p++; /* the opening quote */
    for (;;) {
        if (ps->p >= ps->end) {
            free(b.data);
            return fail(ps, JSON_INVALID, "unterminated string");
        }
        unsigned char c = *ps->p;
        if (c == '"') break;
        if (c < 0x20) {
            free(b.data);
            return fail(ps, JSON_INVALID, "control character in a string");
        }
        const unsigned char *run = ps->p;
        if (c != '\\') {
            while (ps->p < ps->end && *ps->p != '"' && *ps->p != '\\' && *ps->p >= 0x20) ps->p++;
            if (put(&b, (const char *)run, (size_t)(ps->p - run))) goto no_memory;
            continue;
        }
        if (++ps->p >= ps->end) {
            free(b.data);
            return fail(ps, JSON_INVALID, "unterminated string");
        }
        char e = (char)*ps->p++, one;
        switch (e) {
        case '"': case '\\': case '/': one = e; break;
        case 'b': one = '\b'; break;
        case 'f': one = '\f'; break;
        case 'n': one = '\n'; break;
        case 'r': one = '\r'; break;
        case 't': one = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (hex4(ps, &cp)) {
                free(b.data);
                return ps->status;
            }
            /* a high surrogate followed by a low one is one code point */
            if (cp >= 0xD800 && cp < 0xDC00 && ps->end - ps->p >= 6 && ps->p[0] == '\\' && ps->p[1] == 'u') {
                const unsigned char *back = ps->p;
                ps->p += 2;
                if (hex4(ps, &lo)) {
                    free(b.data);
                    return ps->status;
                }
                if (lo >= 0xDC00 && lo < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                else ps->p = back;
            }
            if (put_code_point(&b, cp)) goto no_memory;
            continue;
        }
        default:
            free(b.data);
            return fail(ps, JSON_INVALID, "bad escape");
        }
        if (put(&b, &one, 1)) goto no_memory;
    }
    ps->p++;
    if (!b.data && put(&b, "", 0)) goto no_memory;
    *out = b.data, *len = b.len;
    return 0;
no_memory:
    free(b.data);
    return fail(ps, JSON_NO_MEMORY, "out of memory");
}

static int parse_number(parser *ps, json_value *v) {
    const unsigned char *s = ps->p;
    int is_int = 1;
    if (ps->p < ps->end && *ps->p == '-') ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return fail(ps, JSON_INVALID, "bad number");
    if (*ps->p == '0') ps->p++;
    else
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    if (ps->p < ps->end && *ps->p == '.') {
        is_int = 0, ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return fail(ps, JSON_INVALID, "bad number");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        is_int = 0, ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return fail(ps, JSON_INVALID, "bad number");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    char tmp[64];
    size_t n = (size_t)(ps->p - s);
    if (n >= sizeof tmp) { /* a very long number: only its magnitude matters to a config */
        v->kind = is_int ? JSON_INT : JSON_REAL, v->big = is_int, v->real = *s == '-' ? -HUGE_VAL : HUGE_VAL;
        return 0;
    }
    memcpy(tmp, s, n);
    tmp[n] = 0;
    v->real = strtod(tmp, NULL);
    if (is_int) {
        errno = 0;
        long long i = strtoll(tmp, NULL, 10);
        v->kind = JSON_INT, v->integer = i, v->big = errno == ERANGE;
    } else {
        v->kind = JSON_REAL;
    }
    return 0;
}

static int parse_value(parser *ps, json_value *v);

/* the items of an array or object, grown as they come */
static int append(parser *ps, json_value *v, size_t *cap, int object) {
    if (v->length == *cap) {
        size_t c = *cap ? *cap * 2 : 4;
        json_value *items = realloc(v->items, c * sizeof *items);
        if (!items) return fail(ps, JSON_NO_MEMORY, "out of memory");
        v->items = items;
        if (object) {
            char **keys = realloc(v->keys, c * sizeof *keys);
            if (!keys) return fail(ps, JSON_NO_MEMORY, "out of memory");
            v->keys = keys;
        }
        *cap = c;
    }
    memset(&v->items[v->length], 0, sizeof v->items[0]);
    return 0;
}

static int parse_container(parser *ps, json_value *v, int object) {
    if (++ps->depth > JSON_MAX_DEPTH) return fail(ps, JSON_TOO_DEEP, "nested too deeply");
    v->kind = object ? JSON_OBJECT : JSON_ARRAY;
    size_t cap = 0;
    char close = object ? '}' : ']';
    ps->p++;
    skip_space(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++, ps->depth--;
        return 0;
    }
    for (;;) {
        skip_space(ps);
        if (append(ps, v, &cap, object)) return ps->status;
        if (object) {
            size_t klen;
            if (ps->p >= ps->end || *ps->p != '"') return fail(ps, JSON_INVALID, "expected a key");
            if (parse_string(ps, &v->keys[v->length], &klen)) return ps->status;
            v->length++; /* counted now, so that json_free frees the key if its value fails */
            skip_space(ps);
            if (ps->p >= ps->end || *ps->p != ':') return fail(ps, JSON_INVALID, "expected ':'");
            ps->p++;
            if (parse_value(ps, &v->items[v->length - 1])) return ps->status;
        } else {
            v->length++;
            if (parse_value(ps, &v->items[v->length - 1])) return ps->status;
        }
        skip_space(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++, ps->depth--;
            return 0;
        }
        return fail(ps, JSON_INVALID, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int parse_value(parser *ps, json_value *v) {
    memset(v, 0, sizeof *v);
    skip_space(ps);
    if (ps->p >= ps->end) return fail(ps, JSON_INVALID, "unexpected end");
    switch (*ps->p) {
    case '{': return parse_container(ps, v, 1);
    case '[': return parse_container(ps, v, 0);
    case '"': v->kind = JSON_STRING; return parse_string(ps, &v->string, &v->length);
    case 't': v->kind = JSON_BOOL, v->boolean = 1; return literal(ps, "true");
    case 'f': v->kind = JSON_BOOL; return literal(ps, "false");
    case 'n': v->kind = JSON_NULL; return literal(ps, "null");
    default: return parse_number(ps, v);
    }
}

int utf8_valid(const unsigned char *s, size_t len) {
    for (size_t i = 0; i < len;) {
        unsigned char c = s[i];
        size_t n;
        unsigned cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c < 0xE0) n = 1, cp = c & 31;
        else if (c >= 0xE0 && c < 0xF0) n = 2, cp = c & 15;
        else if (c >= 0xF0 && c < 0xF5) n = 3, cp = c & 7;
        else return 0;
        for (size_t j = 1; j <= n; j++) {
            if (i + j >= len || (s[i + j] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + j] & 63);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp < 0xE000))) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += n + 1;
    }
    return 1;
}

int json_parse(const char *text, size_t len, json_value *out, char *err, size_t err_size) {
    parser ps = {(const unsigned char *)text, (const unsigned char *)text + len, (const unsigned char *)text, 0, 0,
                 err, err_size};
    memset(out, 0, sizeof *out);
    if (!utf8_valid(ps.p, len)) {
        snprintf(err, err_size, "not UTF-8 text");
        return JSON_INVALID;
    }
    if (!parse_value(&ps, out)) {
        skip_space(&ps);
        if (ps.p != ps.end) fail(&ps, JSON_INVALID, "extra data");
    }
    if (ps.status) json_free(out);
    return ps.status;
}

void json_free(json_value *v) {
    if (v->kind == JSON_STRING) free(v->string);
    if (v->kind == JSON_ARRAY || v->kind == JSON_OBJECT) {
        for (size_t i = 0; i < v->length; i++) {
            json_free(&v->items[i]);
            if (v->keys) free(v->keys[i]);
        }
        free(v->items), free(v->keys);
    }
    memset(v, 0, sizeof *v);
}

const json_value *json_get(const json_value *obj, const char *key) {
    if (!obj || obj->kind != JSON_OBJECT) return NULL;
    for (size_t i = obj->length; i-- > 0;)
        if (!strcmp(obj->keys[i], key)) return &obj->items[i];
    return NULL;
}

void json_repr(const json_value *v, char *out, size_t size) {
    if (!v) snprintf(out, size, "None");
    else if (v->kind == JSON_NULL) snprintf(out, size, "None");
    else if (v->kind == JSON_BOOL) snprintf(out, size, v->boolean ? "True" : "False");
    else if (v->kind == JSON_INT && !v->big) snprintf(out, size, "%lld", (long long)v->integer);
    else if (v->kind == JSON_INT || v->kind == JSON_REAL) snprintf(out, size, "%.17g", v->real);
    else if (v->kind == JSON_STRING) snprintf(out, size, "'%.*s'", (int)(size > 8 ? size - 8 : 0), v->string);
    else snprintf(out, size, v->kind == JSON_ARRAY ? "[...]" : "{...}");
}
