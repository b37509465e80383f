#include "formats/pickle_write.h"

#include <stdlib.h>

#include "common/msh_dtype.h"

typedef struct pbuf {
    uint8_t *b;
    size_t n, cap;
    int oom;
} pbuf;

static void put(pbuf *p, const void *d, size_t n) {
    if (p->oom)
        return;
    if (p->n + n > p->cap) {
        size_t cap = p->cap ? p->cap : 4096;
        while (cap < p->n + n)
            cap *= 2;
        uint8_t *nb = realloc(p->b, cap);
        if (!nb) {
            p->oom = 1;
            return;
        }
        p->b = nb;
        p->cap = cap;
    }
    memcpy(p->b + p->n, d, n);
    p->n += n;
}

static void put_op(pbuf *p, uint8_t op) {
    put(p, &op, 1);
}

static void put_str(pbuf *p, const char *s) { /* BINUNICODE */
    uint32_t n = (uint32_t)strlen(s);
    uint8_t h[5] = {'X', (uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
    put(p, h, 5);
    put(p, s, n);
}

static void put_int(pbuf *p, int64_t v) { /* LONG1, 8 bytes: any int64 */
    uint8_t h[10] = {0x8a, 8};
    for (int i = 0; i < 8; i++)
        h[2 + i] = (uint8_t)((uint64_t)v >> (8 * i));
    put(p, h, 10);
}

static void put_global(pbuf *p, const char *mod, const char *name) {
    put_op(p, 'c');
    put(p, mod, strlen(mod));
    put_op(p, '\n');
    put(p, name, strlen(name));
    put_op(p, '\n');
}

msh_status msh_pkw_state_dict(const msh_pkw_entry *t, size_t n, uint8_t **out, size_t *out_n,
                              msh_error *e) {
    *out = NULL;
    *out_n = 0;
    pbuf pk = {0};
    put(&pk, "\x80\x02", 2);
    put_global(&pk, "collections", "OrderedDict");
    put_op(&pk, ')');
    put_op(&pk, 'R');
    put_op(&pk, '(');
    for (size_t i = 0; i < n; i++) {
        const char *cls = msh_dtype_torch_storage(t[i].dtype);
        if (!cls) {
            free(pk.b);
            return msh_fail(e, MSH_ERR_UNSUPPORTED, "tensor '%.200s': element type %s", t[i].key,
                            msh_dtype_name(t[i].dtype));
        }
        if (t[i].ndim > 64) {
            free(pk.b);
            return msh_fail(e, MSH_ERR_LIMIT, "tensor '%.200s' has %zu dims", t[i].key, t[i].ndim);
        }
        put_str(&pk, t[i].key);
        put_global(&pk, "torch._utils", "_rebuild_tensor_v2");
        put_op(&pk, '(');
        put_op(&pk, '(');
        put_str(&pk, "storage");
        put_global(&pk, "torch", cls);
        put_str(&pk, t[i].storage_key);
        put_str(&pk, "cpu");
        put_int(&pk, t[i].storage_numel);
        put_op(&pk, 't');
        put_op(&pk, 'Q'); /* BINPERSID */
        put_int(&pk, t[i].offset);
        put_op(&pk, '(');
        for (size_t d = 0; d < t[i].ndim; d++)
            put_int(&pk, t[i].shape[d]);
        put_op(&pk, 't');
        put_op(&pk, '(');
        int64_t stride = 1, strides[64];
        for (size_t d = t[i].ndim; d-- > 0;) {
            strides[d] = stride;
            stride *= t[i].shape[d];
        }
        for (size_t d = 0; d < t[i].ndim; d++)
            put_int(&pk, strides[d]);
        put_op(&pk, 't');
        put_op(&pk, 0x89); /* requires_grad: NEWFALSE */
        put_global(&pk, "collections", "OrderedDict");
        put_op(&pk, ')');
        put_op(&pk, 'R');
        put_op(&pk, 't');
        put_op(&pk, 'R');
    }
    put_op(&pk, 'u');
    put_op(&pk, '.');
    if (pk.oom) {
        free(pk.b);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    *out = pk.b;
    *out_n = pk.n;
    return MSH_OK;
}
