/* A small strict JSON parser (RFC 8259) for libwordlm's loader: config.json and safetensors headers.
 * A document becomes a tree of json_value (freed by json_free). Strict as Python's json module is for
 * what wordlm writes and stricter elsewhere: no NaN or Infinity literals, no trailing commas, no
 * control characters in strings, UTF-8 text only, and a depth limit (a config nested thousands deep is
 * refused, as Python's RecursionError refuses it). Internal to the library. */
#ifndef WORDLM_JSON_H
#define WORDLM_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h" /* WL_INTERNAL */

typedef enum { JSON_NULL, JSON_BOOL, JSON_INT, JSON_REAL, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_kind;

typedef struct json_value {
    json_kind kind;
    int boolean;              /* JSON_BOOL */
    int big;                  /* JSON_INT beyond int64: integer holds nothing, real an approximation */
    int64_t integer;          /* JSON_INT */
    double real;              /* JSON_REAL, and JSON_INT as a double */
    char *string;             /* JSON_STRING: UTF-8, NUL-terminated (may hold NULs: length) */
    size_t length;            /* JSON_STRING: bytes; JSON_ARRAY, JSON_OBJECT: items */
    struct json_value *items; /* JSON_ARRAY, JSON_OBJECT: the values */
    char **keys;              /* JSON_OBJECT: the keys, NUL-terminated */
} json_value;

enum { JSON_OK = 0, JSON_INVALID = 1, JSON_TOO_DEEP = 2, JSON_NO_MEMORY = 3 };

#define JSON_MAX_DEPTH 512

/* text [len] -> *out; JSON_OK, or an error with a message in err[err_size] (byte offset and why) */
WL_INTERNAL int json_parse(const char *text, size_t len, json_value *out, char *err, size_t err_size);
WL_INTERNAL void json_free(json_value *v);
/* the member `key` of an object (the last one, as Python's dict keeps), or NULL */
WL_INTERNAL const json_value *json_get(const json_value *obj, const char *key);
/* whether text [len] is valid UTF-8 (as Python's strict decoder: no overlongs, no surrogates) */
WL_INTERNAL int utf8_valid(const unsigned char *text, size_t len);
/* v as Python's repr would print the value json.loads gives (for messages: 'abc', None, True, 1.5) */
WL_INTERNAL void json_repr(const json_value *v, char *out, size_t size);

#endif
