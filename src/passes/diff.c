#include "passes/diff.h"

#include <math.h>
#include <stdlib.h>

#include "common/msh_dtype.h"
#include "common/msh_strmap.h"
#include "kernels/msh_scalar.h"

#define DIFF_CHUNK ((size_t)1 << 20)

/* Element i of a buffer of type `dt`, as a double; 0 when not numeric. */
static double value(const uint8_t *p, int32_t dt, size_t i) {
    switch (dt) {
    case MSH_DT_FLOAT: {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    case MSH_DT_DOUBLE: {
        double d;
        memcpy(&d, p + 8 * i, 8);
        return d;
    }
    case MSH_DT_FLOAT16:
    case MSH_DT_BFLOAT16: {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        uint32_t b = dt == MSH_DT_FLOAT16 ? msh_f16_to_f32_ref(h) : (uint32_t)h << 16;
        float f;
        memcpy(&f, &b, 4);
        return f;
    }
    case MSH_DT_INT8: return (int8_t)p[i];
    case MSH_DT_UINT8:
    case MSH_DT_BOOL: return p[i];
    case MSH_DT_INT16: {
        int16_t v;
        memcpy(&v, p + 2 * i, 2);
        return v;
    }
    case MSH_DT_UINT16: {
        uint16_t v;
        memcpy(&v, p + 2 * i, 2);
        return v;
    }
    case MSH_DT_INT32: {
        int32_t v;
        memcpy(&v, p + 4 * i, 4);
        return v;
    }
    case MSH_DT_UINT32: {
        uint32_t v;
        memcpy(&v, p + 4 * i, 4);
        return v;
    }
    case MSH_DT_INT64: {
        int64_t v;
        memcpy(&v, p + 8 * i, 8);
        return (double)v;
    }
    case MSH_DT_UINT64: {
        uint64_t v;
        memcpy(&v, p + 8 * i, 8);
        return (double)v;
    }
    }
    return 0.0;
}

static int numeric(int32_t dt) {
    switch (dt) {
    case MSH_DT_FLOAT:
    case MSH_DT_DOUBLE:
    case MSH_DT_FLOAT16:
    case MSH_DT_BFLOAT16:
    case MSH_DT_INT8:
    case MSH_DT_UINT8:
    case MSH_DT_BOOL:
    case MSH_DT_INT16:
    case MSH_DT_UINT16:
    case MSH_DT_INT32:
    case MSH_DT_UINT32:
    case MSH_DT_INT64:
    case MSH_DT_UINT64: return 1;
    }
    return 0;
}

/* A float's bits mapped so that adjacent representable values differ by 1 (sign-magnitude to
 * an ordered integer); `bits` is the type's width. */
static int64_t ordered(uint64_t v, int bits) {
    uint64_t sign = (uint64_t)1 << (bits - 1);
    int64_t mag = (int64_t)(v & (sign - 1));
    return v & sign ? -mag : mag;
}

static int float_bits(int32_t dt) {
    return dt == MSH_DT_FLOAT      ? 32
           : dt == MSH_DT_DOUBLE   ? 64
           : dt == MSH_DT_FLOAT16  ? 16
           : dt == MSH_DT_BFLOAT16 ? 16
                                   : 0;
}

typedef struct stats {
    double max_abs, max_rel, dot, na, nb;
    uint64_t max_ulp;
    int ulp_ok, nan_mismatch;
    int64_t differ; /* elements whose values differ */
} stats;

static void accumulate(stats *s, const uint8_t *x, const uint8_t *y, int32_t ta, int32_t tb,
                       size_t n) {
    int fb = ta == tb ? float_bits(ta) : 0;
    for (size_t i = 0; i < n; i++) {
        double a = value(x, ta, i), b = value(y, tb, i);
        if (isnan(a) || isnan(b)) {
            if (isnan(a) != isnan(b)) {
                s->nan_mismatch = 1;
                s->differ++;
            }
            continue;
        }
        double d = fabs(a - b);
        if (d > 0)
            s->differ++;
        if (d > s->max_abs)
            s->max_abs = d;
        double r = d / (fabs(a) > 0 ? fabs(a) : 1.0);
        if (d > 0 && r > s->max_rel)
            s->max_rel = r;
        s->dot += a * b;
        s->na += a * a;
        s->nb += b * b;
        if (fb) {
            uint64_t ua = 0, ub = 0;
            memcpy(&ua, x + (size_t)(fb / 8) * i, (size_t)fb / 8);
            memcpy(&ub, y + (size_t)(fb / 8) * i, (size_t)fb / 8);
            int64_t oa = ordered(ua, fb), ob = ordered(ub, fb);
            uint64_t u = oa > ob ? (uint64_t)(oa - ob) : (uint64_t)(ob - oa);
            if (u > s->max_ulp)
                s->max_ulp = u;
        }
    }
    s->ulp_ok = fb != 0;
}

static cJSON *shape_json(const msh_tentry *t) {
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < t->ndim; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)t->shape[i]));
    return a;
}

static int same_shape(const msh_tentry *a, const msh_tentry *b) {
    return a->ndim == b->ndim &&
           (a->ndim == 0 || memcmp(a->shape, b->shape, a->ndim * sizeof *a->shape) == 0);
}

/* One pair: fills `o`; returns 1 in *same when type, shape and bytes are equal. */
static msh_status compare(const msh_tentry *a, const msh_tentry *b, cJSON *o, int *same, uint8_t *x,
                          uint8_t *y, msh_error *e) {
    *same = 0;
    int shape_eq = same_shape(a, b);
    if (!shape_eq && a->numel != b->numel) {
        cJSON_AddStringToObject(o, "status", "shape");
        return MSH_OK;
    }
    if (a->dtype == b->dtype && shape_eq && a->nbytes >= 0 && a->nbytes == b->nbytes) {
        int eq = 1;
        for (int64_t off = 0; eq && off < a->nbytes;) {
            size_t n =
                a->nbytes - off < (int64_t)DIFF_CHUNK ? (size_t)(a->nbytes - off) : DIFF_CHUNK;
            MSH_FORWARD(msh_src_read(&a->src, off, x, n, e));
            MSH_FORWARD(msh_src_read(&b->src, off, y, n, e));
            eq = memcmp(x, y, n) == 0;
            off += (int64_t)n;
        }
        if (eq) {
            cJSON_AddStringToObject(o, "status", "identical");
            *same = 1;
            return MSH_OK;
        }
    }
    const char *status = a->dtype != b->dtype ? "dtype" : shape_eq ? "different" : "shape";
    cJSON_AddStringToObject(o, "status", status);
    if (!numeric(a->dtype) || !numeric(b->dtype) || a->numel != b->numel)
        return MSH_OK;
    int ea = msh_dtype_size(a->dtype), eb = msh_dtype_size(b->dtype);
    size_t per = DIFF_CHUNK / (size_t)(ea > eb ? ea : eb);
    stats s;
    memset(&s, 0, sizeof s);
    for (int64_t at = 0; at < a->numel;) {
        size_t n = a->numel - at < (int64_t)per ? (size_t)(a->numel - at) : per;
        MSH_FORWARD(msh_src_read(&a->src, at * ea, x, n * (size_t)ea, e));
        MSH_FORWARD(msh_src_read(&b->src, at * eb, y, n * (size_t)eb, e));
        accumulate(&s, x, y, a->dtype, b->dtype, n);
        at += (int64_t)n;
    }
    cJSON_AddNumberToObject(o, "elements_differ", (double)s.differ);
    cJSON_AddNumberToObject(o, "max_abs", s.max_abs);
    cJSON_AddNumberToObject(o, "max_rel", s.max_rel);
    if (s.ulp_ok)
        cJSON_AddNumberToObject(o, "max_ulp", (double)s.max_ulp);
    else
        cJSON_AddNullToObject(o, "max_ulp");
    double cos = s.na > 0 && s.nb > 0 ? s.dot / sqrt(s.na * s.nb) : (s.na == s.nb ? 1.0 : 0.0);
    cJSON_AddNumberToObject(o, "cosine", cos);
    cJSON_AddBoolToObject(o, "nan_mismatch", s.nan_mismatch);
    return MSH_OK;
}

msh_status msh_diff_tables(const msh_table *a, const msh_table *b, cJSON *out, int *identical,
                           msh_error *e) {
    *identical = 0;
    msh_strmap bi;
    msh_strmap_init(&bi);
    msh_status st = MSH_OK;
    /* names of b; a name twice (rare: shadowed subgraph names) keeps its first tensor */
    for (size_t i = 0; i < b->n && st == MSH_OK; i++) {
        const msh_tentry *t = msh_table_at(b, i);
        if (t->name && *t->name && !msh_strmap_get(&bi, t->name) &&
            !msh_strmap_upsert(&bi, t->name, (int64_t)i))
            st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    uint8_t *x = malloc(DIFF_CHUNK), *y = malloc(DIFF_CHUNK), *used = calloc(b->n + 1, 1);
    if (st == MSH_OK && (!x || !y || !used))
        st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    cJSON_AddNumberToObject(out, "schema_version", MSH_DIFF_SCHEMA_VERSION);
    cJSON *list = cJSON_AddArrayToObject(out, "tensors");
    int64_t n_same = 0, n_diff = 0, n_missing = 0, n_extra = 0, n_changed = 0;
    double worst_cos = 1.0, worst_abs = 0.0;
    msh_strmap seen;
    msh_strmap_init(&seen);
    for (size_t i = 0; i < a->n && st == MSH_OK; i++) {
        const msh_tentry *t = msh_table_at(a, i);
        if (!t->name || !*t->name || msh_strmap_get(&seen, t->name))
            continue;
        if (!msh_strmap_upsert(&seen, t->name, 1)) {
            st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            break;
        }
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", t->name);
        cJSON_AddStringToObject(o, "dtype_a", msh_dtype_name(t->dtype));
        cJSON_AddItemToObject(o, "shape_a", shape_json(t));
        int64_t *k = msh_strmap_get(&bi, t->name);
        if (!k) {
            cJSON_AddStringToObject(o, "status", "missing");
            n_missing++;
        } else {
            const msh_tentry *u = msh_table_at(b, (size_t)*k);
            used[*k] = 1;
            cJSON_AddStringToObject(o, "dtype_b", msh_dtype_name(u->dtype));
            cJSON_AddItemToObject(o, "shape_b", shape_json(u));
            int same;
            st = compare(t, u, o, &same, x, y, e);
            if (same) {
                n_same++;
            } else {
                n_diff++;
                if (t->dtype != u->dtype || !same_shape(t, u))
                    n_changed++;
                const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "cosine");
                const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "max_abs");
                if (c && c->valuedouble < worst_cos)
                    worst_cos = c->valuedouble;
                if (m && m->valuedouble > worst_abs)
                    worst_abs = m->valuedouble;
            }
        }
        cJSON_AddItemToArray(list, o);
    }
    for (size_t i = 0; i < b->n && st == MSH_OK; i++) {
        const msh_tentry *u = msh_table_at(b, i);
        if (used[i] || !u->name || !*u->name || msh_strmap_get(&seen, u->name))
            continue;
        if (!msh_strmap_upsert(&seen, u->name, 1)) {
            st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            break;
        }
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", u->name);
        cJSON_AddStringToObject(o, "dtype_b", msh_dtype_name(u->dtype));
        cJSON_AddItemToObject(o, "shape_b", shape_json(u));
        cJSON_AddStringToObject(o, "status", "extra");
        n_extra++;
        cJSON_AddItemToArray(list, o);
    }
    cJSON *sum = cJSON_AddObjectToObject(out, "summary");
    cJSON_AddNumberToObject(sum, "identical", (double)n_same);
    cJSON_AddNumberToObject(sum, "different", (double)n_diff);
    cJSON_AddNumberToObject(sum, "type_or_shape_changed", (double)n_changed);
    cJSON_AddNumberToObject(sum, "missing", (double)n_missing);
    cJSON_AddNumberToObject(sum, "extra", (double)n_extra);
    cJSON_AddNumberToObject(sum, "max_abs", worst_abs);
    cJSON_AddNumberToObject(sum, "min_cosine", worst_cos);
    *identical = st == MSH_OK && n_diff == 0 && n_missing == 0 && n_extra == 0;
    cJSON_AddBoolToObject(out, "identical", *identical);
    msh_strmap_free(&bi);
    msh_strmap_free(&seen);
    free(x);
    free(y);
    free(used);
    return st;
}
