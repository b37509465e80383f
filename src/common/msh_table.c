/* The tensor table: roles, plans, and reading a tensor's bytes from wherever its reader said
 * they are. */
#include "common/msh_table.h"

#include <stdio.h>
#include <stdlib.h>

#include "common/msh_dtype.h"
#include "common/msh_io.h"

const char *msh_role_name(msh_role r) {
    switch (r) {
    case MSH_ROLE_WEIGHT: return "weight";
    case MSH_ROLE_BUFFER: return "buffer";
    case MSH_ROLE_OPTIMIZER: return "optimizer_state";
    case MSH_ROLE_TRAINING: return "training_state";
    case MSH_ROLE_OTHER: return "other";
    }
    return "other";
}

void msh_tentry_init(msh_tentry *t) {
    memset(t, 0, sizeof *t);
    t->storage = -1;
    t->dup_of = -1;
    t->origin = -1;
}

int64_t msh_tentry_out_bytes(const msh_tentry *t) {
    if (t->q4)
        return t->numel / 2 + (t->numel & 1);
    if (t->out_dtype == 0 || t->out_dtype == t->dtype)
        return t->nbytes;
    int64_t b = msh_dtype_bytes(t->out_dtype, t->numel);
    return b >= 0 ? b : t->nbytes;
}

/* A strided view is gathered into row-major order. Memory stays bounded: when the source
 * elements a request touches lie within a small span, that span is read once; otherwise each
 * contiguous run is read on its own. */
#define MSH_GATHER_SPAN ((int64_t)16 << 20)

static msh_status gather(const msh_src *s, int64_t off, uint8_t *dst, size_t n, msh_error *e) {
    const int64_t es = s->elem_size;
    if (es <= 0 || off % es || (int64_t)n % es || s->ndim > 64)
        return msh_fail(e, MSH_ERR_FORMAT, "internal error: unaligned read of a strided view");
    int64_t e0 = off / es, cnt = (int64_t)n / es;
    if (cnt == 0)
        return MSH_OK;
    int64_t idx[64];
    int64_t rem = e0;
    for (size_t d = s->ndim; d-- > 0;) {
        idx[d] = s->shape[d] ? rem % s->shape[d] : 0;
        rem = s->shape[d] ? rem / s->shape[d] : 0;
    }
    /* the span of source elements touched */
    int64_t lo = INT64_MAX, hi = -1;
    {
        int64_t k[64];
        memcpy(k, idx, s->ndim * sizeof *k);
        for (int64_t i = 0; i < cnt; i++) {
            int64_t at = s->elem_offset;
            for (size_t d = 0; d < s->ndim; d++)
                at += k[d] * s->stride[d];
            lo = at < lo ? at : lo;
            hi = at > hi ? at : hi;
            for (size_t d = s->ndim; d-- > 0;) {
                if (++k[d] < s->shape[d])
                    break;
                k[d] = 0;
            }
        }
    }
    int64_t span = (hi - lo + 1) * es;
    uint8_t *buf = span > 0 && span <= MSH_GATHER_SPAN ? malloc((size_t)span) : NULL;
    if (buf) {
        msh_status st = msh_pread_full(s->fd, buf, (size_t)span, s->offset + lo * es, e);
        for (int64_t i = 0; st == MSH_OK && i < cnt; i++) {
            int64_t at = s->elem_offset;
            for (size_t d = 0; d < s->ndim; d++)
                at += idx[d] * s->stride[d];
            memcpy(dst + i * es, buf + (at - lo) * es, (size_t)es);
            for (size_t d = s->ndim; d-- > 0;) {
                if (++idx[d] < s->shape[d])
                    break;
                idx[d] = 0;
            }
        }
        free(buf);
        return st;
    }
    /* wide span: one read per run of elements contiguous in the storage */
    for (int64_t i = 0; i < cnt;) {
        int64_t at = s->elem_offset;
        for (size_t d = 0; d < s->ndim; d++)
            at += idx[d] * s->stride[d];
        size_t last = s->ndim - 1;
        int64_t run = 1;
        if (s->ndim > 0 && s->stride[last] == 1)
            run = s->shape[last] - idx[last];
        if (run > cnt - i)
            run = cnt - i;
        MSH_FORWARD(
            msh_pread_full(s->fd, dst + i * es, (size_t)(run * es), s->offset + at * es, e));
        i += run;
        for (int64_t r = 0; r < run; r++)
            for (size_t d = s->ndim; d-- > 0;) {
                if (++idx[d] < s->shape[d])
                    break;
                idx[d] = 0;
            }
    }
    return MSH_OK;
}

msh_status msh_src_read(const msh_src *s, int64_t off, void *dst, size_t n, msh_error *e) {
    int64_t end;
    if (off < 0 || !msh_add_i64(off, (int64_t)n, &end) || end > s->length)
        return msh_fail(e, MSH_ERR_FORMAT, "internal error: read past the end of a tensor");
    if (n == 0)
        return MSH_OK;
    switch (s->kind) {
    case MSH_SRC_FILE: return msh_pread_full(s->fd, dst, n, s->offset + off, e);
    case MSH_SRC_MEMORY: memcpy(dst, s->mem + off, n); return MSH_OK;
    case MSH_SRC_CALLBACK: return s->read(s->ctx, off, dst, n, e);
    case MSH_SRC_STRIDED: return gather(s, off, dst, n, e);
    case MSH_SRC_NONE: break;
    }
    return msh_fail(e, MSH_ERR_FORMAT, "internal error: a tensor without bytes was read");
}
