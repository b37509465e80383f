#include "common/msh_common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

msh_status msh_fail(msh_error *e, msh_status s, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        for (char *p = e->msg; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
        e->status = s;
    }
    return s;
}

void msh_error_prefix(msh_error *e, const char *what) {
    if (!e)
        return;
    char tmp[sizeof e->msg];
    size_t w = strlen(what);
    if (w > sizeof tmp - 3)
        w = sizeof tmp - 3;
    memcpy(tmp, what, w);
    tmp[w] = ':';
    tmp[w + 1] = ' ';
    size_t rest = strlen(e->msg);
    if (rest > sizeof tmp - w - 3)
        rest = sizeof tmp - w - 3;
    memcpy(tmp + w + 2, e->msg, rest);
    tmp[w + 2 + rest] = 0;
    memcpy(e->msg, tmp, sizeof tmp);
}

const char *msh_status_name(msh_status s) {
    switch (s) {
    case MSH_OK: return "MSH_OK";
    case MSH_ERR_IO: return "MSH_ERR_IO";
    case MSH_ERR_FORMAT: return "MSH_ERR_FORMAT";
    case MSH_ERR_LIMIT: return "MSH_ERR_LIMIT";
    case MSH_ERR_UNSAFE: return "MSH_ERR_UNSAFE";
    case MSH_ERR_NOMEM: return "MSH_ERR_NOMEM";
    case MSH_ERR_USAGE: return "MSH_ERR_USAGE";
    case MSH_ERR_UNSUPPORTED: return "MSH_ERR_UNSUPPORTED";
    case MSH_ERR_CUDA: return "MSH_ERR_CUDA";
    case MSH_ERR_VERIFY: return "MSH_ERR_VERIFY";
    case MSH_ERR_CANCELLED: return "MSH_ERR_CANCELLED";
    }
    return "MSH_ERR_UNKNOWN";
}

/* The version's one home is include/modelshrink.h: CMake reads the same three macros for the
 * project version, the SONAME, modelshrink.pc and the package version file. */
#define MSH_STR_(x) #x
#define MSH_STR(x) MSH_STR_(x)

const char *msh_version(void) {
    return MSH_STR(MSH_VERSION_MAJOR) "." MSH_STR(MSH_VERSION_MINOR) "." MSH_STR(MSH_VERSION_PATCH);
}

void msh_free(void *p) {
    free(p);
}

int msh_grow(void **arr, size_t *cap, size_t n, size_t elem) {
    if (n < *cap)
        return 1;
    size_t nc = *cap ? 2 * *cap : 16;
    if (nc > SIZE_MAX / elem)
        return 0;
    void *p = realloc(*arr, nc * elem);
    if (!p)
        return 0;
    *arr = p;
    *cap = nc;
    return 1;
}

void *msh_xmalloc(size_t n) {
    return malloc(n ? n : 1);
}

void *msh_xrealloc(void *p, size_t n) {
    return realloc(p, n ? n : 1);
}

char *msh_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

void msh_format_bytes(int64_t n, char *buf, size_t cap) {
    const char *units[] = {"B", "kB", "MB", "GB", "TB"};
    double v = (double)n;
    int u = 0;
    while (v >= 1000.0 && u < 4) {
        v /= 1000.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, cap, "%lld B", (long long)n);
    else
        snprintf(buf, cap, "%.1f %s", v, units[u]);
}

const char *msh_fmt_bytes(int64_t n, char *buf, size_t cap) {
    static const char *const u[] = {"B", "kB", "MB", "GB", "TB", "PB"};
    double v = (double)n;
    int i = 0;
    /* the unit steps up where one decimal would round to 1000 (as the CLI's tables do) */
    while (i < 5 && (i == 0 ? v >= 1000.0 : v >= 999.95)) {
        v /= 1000.0;
        i++;
    }
    if (i == 0)
        snprintf(buf, cap, "%lld B", (long long)n);
    else
        snprintf(buf, cap, "%.1f %s", v, u[i]);
    return buf;
}
