/* The CUDA backend: the engine's piece interface over cuda/msh_cuda_backend.cu. */
#include <stdio.h>
#include <stdlib.h>

#include "engine/msh_backend.h"

#if defined(MSH_HAVE_CUDA)
#include "msh_cuda.h"

typedef struct cuda_glue {
    msh_cuda_be *be;
    msh_cuda_piece cp[2];
} cuda_glue;

static uint8_t *gpu_in(msh_backend *b, int slot) {
    return msh_cuda_be_in(((cuda_glue *)b->impl)->be, slot);
}

static const uint8_t *gpu_out(msh_backend *b, int slot) {
    return msh_cuda_be_out(((cuda_glue *)b->impl)->be, slot);
}

static int cuda_kind(msh_op op) {
    switch (op) {
    case MSH_OP_F16: return MSH_CUDA_FP16;
    case MSH_OP_BF16: return MSH_CUDA_BF16;
    case MSH_OP_INT8: return MSH_CUDA_INT8;
    case MSH_OP_ABSMAX: return MSH_CUDA_ABSMAX;
    case MSH_OP_DIGEST: return MSH_CUDA_DIGEST;
    case MSH_OP_INT4: return MSH_CUDA_INT4;
    case MSH_OP_Q4STATS: return MSH_CUDA_Q4STATS;
    case MSH_OP_Q4SEARCH: return MSH_CUDA_Q4SEARCH;
    case MSH_OP_COPY: break;
    }
    return -1;
}

static msh_status gpu_submit(msh_backend *b, int slot, msh_piece *p, msh_error *e) {
    cuda_glue *g = b->impl;
    const msh_job *j = p->job;
    msh_cuda_piece *c = &g->cp[slot];
    memset(c, 0, sizeof *c);
    c->kind = cuda_kind(j->op);
    c->n = p->n;
    c->first = p->first / 4;
    c->f16_min_abs = b->f16.min_abs;
    c->f16_max_abs = b->f16.max_abs;
    c->scales = j->scales;
    c->inner = j->inner;
    c->channels = j->channels;
    if (j->op == MSH_OP_INT4 || j->op == MSH_OP_Q4STATS || j->op == MSH_OP_Q4SEARCH) {
        int64_t e0 = p->first / 4, ne = (int64_t)(p->n / 4);
        int axis = j->op == MSH_OP_INT4 ? j->q4.axis : 1;
        c->q4_cols = j->q4.cols;
        c->q4_block = j->q4.block;
        c->q4_axis = axis;
        c->q4_asym = j->q4.asym;
        c->q4_offset = j->q4.offset;
        c->q4_store = j->q4_store;
        c->b0 = ne > 0 ? msh_int4_block_of(e0, j->q4.cols, j->q4.block, axis) : 0;
        c->nb =
            ne > 0 ? msh_int4_block_of(e0 + ne - 1, j->q4.cols, j->q4.block, axis) - c->b0 + 1 : 0;
        if (j->op == MSH_OP_INT4) {
            c->scales = p->q4s + c->b0;
            c->zps = j->q4.asym ? p->q4z + c->b0 : NULL;
        }
        p->row0 = j->op == MSH_OP_Q4STATS || j->op == MSH_OP_Q4SEARCH ? c->b0 : 0;
        if (ne == 0) {
            p->out_n = 0;
            c->kind = -1;
            return MSH_OK;
        }
    }
    if (j->op == MSH_OP_ABSMAX) {
        int64_t e0 = p->first / 4, ne = (int64_t)(p->n / 4);
        int64_t rows = ne > 0 ? (e0 + ne - 1) / j->inner - e0 / j->inner + 1 : 0;
        c->row0 = e0 / j->inner;
        c->t = rows < j->channels ? rows : j->channels;
        p->row0 = c->row0;
        if (c->t == 0) {
            p->out_n = 0;
            c->kind = -1;
            return MSH_OK;
        }
    }
    char err[256];
    if (msh_cuda_be_submit(g->be, slot, c, err, sizeof err) != 0)
        return msh_fail(e, MSH_ERR_CUDA, "tensor '%s': %s", j->name, err);
    p->out_n = c->out_n;
    return MSH_OK;
}

static msh_status gpu_wait(msh_backend *b, int slot, msh_piece *p, msh_error *e) {
    cuda_glue *g = b->impl;
    msh_cuda_piece *c = &g->cp[slot];
    if (c->kind < 0)
        return MSH_OK;
    char err[256];
    if (msh_cuda_be_wait(g->be, slot, c, err, sizeof err) != 0)
        return msh_fail(e, MSH_ERR_CUDA, "tensor '%s': %s", p->job->name, err);
    p->clamped = c->clamped;
    memset(&p->range, 0, sizeof p->range);
    p->range.nonzero = c->range[0];
    p->range.below = c->range[1];
    p->range.above = c->range[2];
    p->range.max_bits = (uint32_t)c->range[3];
    return MSH_OK;
}

static void gpu_close(msh_backend *b) {
    if (!b)
        return;
    cuda_glue *g = b->impl;
    if (g)
        msh_cuda_be_free(g->be);
    free(g);
    free(b);
}

msh_status msh_backend_cuda_open(size_t staging, const msh_f16_bounds *f16, msh_backend **out,
                                 msh_error *e) {
    *out = NULL;
    if (msh_test_device_on())
        return msh_backend_test_open(staging, f16, out, e);
    msh_backend *b = calloc(1, sizeof *b);
    cuda_glue *g = calloc(1, sizeof *g);
    if (!b || !g) {
        free(b);
        free(g);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    char err[256];
    if (msh_cuda_be_new(staging, &g->be, err, sizeof err) != 0) {
        free(b);
        free(g);
        return msh_fail(e, MSH_ERR_CUDA, "%s", err);
    }
    b->impl = g;
    b->name = "cuda";
    b->slots = 2;
    b->producers = 1;
    b->piece_bytes = msh_cuda_be_staging(g->be);
    b->f16 = *f16;
    b->in_buf = gpu_in;
    b->out_buf = gpu_out;
    b->submit = gpu_submit;
    b->wait = gpu_wait;
    b->close = gpu_close;
    *out = b;
    return MSH_OK;
}

#else

msh_status msh_backend_cuda_open(size_t staging, const msh_f16_bounds *f16, msh_backend **out,
                                 msh_error *e) {
    *out = NULL;
    if (msh_test_device_on())
        return msh_backend_test_open(staging, f16, out, e);
    return msh_fail(e, MSH_ERR_CUDA, "this build has no CUDA support");
}

#endif
