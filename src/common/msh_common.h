/* Shared internals: statuses with messages, checked arithmetic, little-endian access. */
#ifndef MSH_COMMON_H
#define MSH_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "modelshrink.h"

#if defined(__GNUC__)
#define MSH_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MSH_PRINTF(a, b)
#endif

/* Record a failure in `e` (may be NULL) and return `s`. The message is one line. */
msh_status msh_fail(msh_error *e, msh_status s, const char *fmt, ...) MSH_PRINTF(3, 4);

/* Prefix an existing message with "what: " (used to add the file name once, at the top). */
void msh_error_prefix(msh_error *e, const char *what);

/* A byte count as the CLI shows it: "512 B", "46.8 kB", "1.2 GB" (powers of 1000, one decimal),
 * into buf. Returns buf. */
const char *msh_fmt_bytes(int64_t n, char *buf, size_t cap);
/* `one` when n == 1, else `many` (messages say "1 tensor", "2 tensors"). */
static inline const char *msh_plural(int64_t n, const char *one, const char *many) {
    return n == 1 ? one : many;
}

#define MSH_FORWARD(expr)                                                                          \
    do {                                                                                           \
        msh_status msh_fwd_s_ = (expr);                                                            \
        if (msh_fwd_s_ != MSH_OK)                                                                  \
            return msh_fwd_s_;                                                                     \
    } while (0)

/* Checked arithmetic on non-negative int64 values; return 0 on overflow. */
static inline int msh_mul_i64(int64_t a, int64_t b, int64_t *out) {
    if (a < 0 || b < 0)
        return 0;
    if (a != 0 && b > INT64_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}
static inline int msh_add_i64(int64_t a, int64_t b, int64_t *out) {
    if (a < 0 || b < 0 || a > INT64_MAX - b)
        return 0;
    *out = a + b;
    return 1;
}

static inline uint64_t msh_load_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static inline void msh_store_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Make room for one more element in a growable array (doubling); 0 when out of memory. */
int msh_grow(void **arr, size_t *cap, size_t n, size_t elem);

void *msh_xmalloc(size_t n);           /* malloc that never returns NULL for n == 0 */
void *msh_xrealloc(void *p, size_t n); /* returns NULL on failure, leaving p valid */
char *msh_strdup(const char *s);

/* Human-readable byte counts ("345.2 MB", decimal units). */
void msh_format_bytes(int64_t n, char *buf, size_t cap);

#endif
