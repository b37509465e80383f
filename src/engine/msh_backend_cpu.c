/* The CPU backend: every producer thread computes its own pieces; the reference the other
 * backends are checked against. */
#include <stdlib.h>

#include "engine/msh_backend.h"
#include "kernels/msh_hash.h"

#define CPU_PIECE ((size_t)1 << 20)

/* Rows of `inner` elements touched by elements [e0, e0 + n). */
static int64_t rows_touched(int64_t e0, int64_t n, int64_t inner) {
    if (n <= 0)
        return 0;
    return (e0 + n - 1) / inner - e0 / inner + 1;
}

size_t msh_piece_out_cap(const msh_job *job, size_t n) {
    switch (job->op) {
    case MSH_OP_COPY: return n;
    case MSH_OP_F16:
    case MSH_OP_BF16: return n / 2;
    case MSH_OP_INT8: return n / 4;
    case MSH_OP_INT4: return (n / 4 + 1) / 2;
    case MSH_OP_Q4STATS: /* 8 bytes per block touched; blocks of a row view hold >= 1 element */
    case MSH_OP_Q4SEARCH:
        return (size_t)(msh_int4_block_of((int64_t)(n / 4) - 1, job->q4.cols, job->q4.block, 1) +
                        3) *
               8;
    case MSH_OP_DIGEST: return (n + MSH_HASH_CHUNK - 1) / MSH_HASH_CHUNK * 8;
    case MSH_OP_ABSMAX: {
        int64_t rows = (int64_t)(n / 4) / job->inner + 2;
        return (size_t)(rows < job->channels ? rows : job->channels) * 4;
    }
    }
    return n;
}

void msh_piece_compute_cpu(msh_piece *p, const msh_f16_bounds *b, const uint8_t *in, uint8_t *out) {
    const msh_job *j = p->job;
    size_t n = p->n;
    p->clamped = 0;
    p->row0 = 0;
    memset(&p->range, 0, sizeof p->range);
    switch (j->op) {
    case MSH_OP_COPY:
        memcpy(out, in, n);
        p->out_n = n;
        break;
    case MSH_OP_F16:
        p->clamped = msh_f32_to_f16_range_buf(in, out, n / 4, b, &p->range);
        p->out_n = n / 2;
        break;
    case MSH_OP_BF16:
        msh_f32_to_bf16_buf(in, out, n / 4);
        p->out_n = n / 2;
        break;
    case MSH_OP_INT8:
        msh_int8_quantize(in, out, n / 4, p->first / 4, j->inner, j->channels, j->scales);
        p->out_n = n / 4;
        break;
    case MSH_OP_INT4: {
        msh_int4_layout l = j->q4;
        l.scales = p->q4s;
        l.zps = p->q4z;
        msh_int4_quantize(in, out, n / 4, p->first / 4, &l);
    }
        p->out_n = (n / 4 + 1) / 2;
        break;
    case MSH_OP_Q4STATS: {
        int64_t e0 = p->first / 4;
        p->row0 = n >= 4 ? msh_int4_block_of(e0, j->q4.cols, j->q4.block, 1) : 0;
        p->out_n =
            (size_t)msh_int4_stats(in, n / 4, e0, j->q4.cols, j->q4.block, (float *)(void *)out) *
            8;
        break;
    }
    case MSH_OP_Q4SEARCH: {
        int64_t e0 = p->first / 4;
        p->row0 = n >= 4 ? msh_int4_block_of(e0, j->q4.cols, j->q4.block, 1) : 0;
        p->out_n = (size_t)msh_int4_search(in, n / 4, e0, j->q4.cols, j->q4.block, j->q4.asym,
                                           j->q4_store, (float *)(void *)out) *
                   8;
        break;
    }
    case MSH_OP_DIGEST: {
        size_t nc = (n + MSH_HASH_CHUNK - 1) / MSH_HASH_CHUNK;
        for (size_t c = 0; c < nc; c++) {
            size_t at = c * MSH_HASH_CHUNK;
            size_t len = n - at < MSH_HASH_CHUNK ? n - at : MSH_HASH_CHUNK;
            uint64_t d = msh_chunk_digest(in + at, len);
            memcpy(out + 8 * c, &d, 8);
        }
        p->out_n = nc * 8;
        break;
    }
    case MSH_OP_ABSMAX: {
        /* Maxima of the rows this piece touches, indexed from its first row: channel of entry k
         * is (row0 + k) % channels. Entries never wrap onto each other unless every channel is
         * touched, and then the mapping is the channel's own. */
        int64_t e0 = p->first / 4, ne = (int64_t)(n / 4);
        int64_t rows = rows_touched(e0, ne, j->inner);
        int64_t t = rows < j->channels ? rows : j->channels;
        p->row0 = e0 / j->inner;
        float *pm = (float *)(void *)out;
        for (int64_t k = 0; k < t; k++)
            pm[k] = 0.0f;
        if (t > 0)
            msh_int8_absmax(in, (size_t)ne, e0 - p->row0 * j->inner, j->inner, t, pm);
        p->out_n = (size_t)t * 4;
        break;
    }
    }
}

typedef struct cpu_be {
    uint8_t **in, **out;
    int slots;
} cpu_be;

static uint8_t *cpu_in(msh_backend *b, int slot) {
    return ((cpu_be *)b->impl)->in[slot];
}

static const uint8_t *cpu_out(msh_backend *b, int slot) {
    return ((cpu_be *)b->impl)->out[slot];
}

static msh_status cpu_submit(msh_backend *b, int slot, msh_piece *p, msh_error *e) {
    (void)e;
    cpu_be *c = b->impl;
    msh_piece_compute_cpu(p, &b->f16, c->in[slot], c->out[slot]);
    return MSH_OK;
}

static msh_status cpu_wait(msh_backend *b, int slot, msh_piece *p, msh_error *e) {
    (void)b, (void)slot, (void)p, (void)e;
    return MSH_OK;
}

static void cpu_close(msh_backend *b) {
    if (!b)
        return;
    cpu_be *c = b->impl;
    if (c) {
        for (int i = 0; i < c->slots; i++) {
            free(c->in ? c->in[i] : NULL);
            free(c->out ? c->out[i] : NULL);
        }
        free(c->in);
        free(c->out);
        free(c);
    }
    free(b);
}

msh_status msh_backend_cpu_open(int threads, const msh_f16_bounds *f16, msh_backend **out,
                                msh_error *e) {
    *out = NULL;
    msh_backend *b = calloc(1, sizeof *b);
    cpu_be *c = calloc(1, sizeof *c);
    if (!b || !c) {
        free(b);
        free(c);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    b->impl = c;
    b->name = "cpu";
    b->producers = threads < 1 ? 1 : threads;
    /* two pieces in flight per producer, and one each for the reader and the consumer */
    b->slots = 2 * b->producers + 2;
    b->piece_bytes = CPU_PIECE;
    b->f16 = *f16;
    b->in_buf = cpu_in;
    b->out_buf = cpu_out;
    b->submit = cpu_submit;
    b->wait = cpu_wait;
    b->close = cpu_close;
    c->slots = b->slots;
    c->in = calloc((size_t)c->slots, sizeof *c->in);
    c->out = calloc((size_t)c->slots, sizeof *c->out);
    int ok = c->in && c->out;
    for (int i = 0; ok && i < c->slots; i++)
        ok = (c->in[i] = malloc(CPU_PIECE)) && (c->out[i] = malloc(CPU_PIECE));
    if (!ok) {
        cpu_close(b);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory for the engine's buffers");
    }
    *out = b;
    return MSH_OK;
}
