/*
 * The engine's backend interface (internal to src/engine/).
 *
 * A backend owns `slots` pairs of buffers (input, output) of `piece_bytes` input bytes each.
 * The driver reads piece j into in_buf(j % slots), calls submit, and later wait on the same
 * slot; only then may it read out_buf and reuse the slot. submit may return before the work is
 * done (cuda: copies and kernel queued on the slot's stream); wait returns when the results are
 * in out_buf and the piece's counters. `producers` is how many threads the driver should read
 * and submit with (cpu: one per core, each computing its own pieces; cuda: one).
 */
#ifndef MSH_BACKEND_H
#define MSH_BACKEND_H

#include "engine/msh_engine.h"

typedef struct msh_piece {
    const msh_job *job;
    int64_t first; /* byte offset of the piece in its job's input */
    size_t n;      /* input bytes */
    /* results */
    size_t out_n;        /* output bytes (converted bytes, chunk digests, or channel maxima) */
    uint64_t clamped;    /* F16 */
    msh_f16_range range; /* F16: the range test of the piece's input */
    int64_t row0; /* ABSMAX: out holds out_n / 4 maxima, for channels (row0 + k) % channels */
    /* INT4: the scales (and zero points) this piece quantizes with; q4held: taken from the
     * job's lazy maker, handed back when the piece is done */
    const float *q4s;
    const uint8_t *q4z;
    int q4held;
} msh_piece;

typedef struct msh_backend msh_backend;
struct msh_backend {
    const char *name;
    int slots;
    int producers;
    size_t piece_bytes; /* a multiple of MSH_HASH_CHUNK */
    msh_f16_bounds f16;
    void *impl;
    uint8_t *(*in_buf)(msh_backend *b, int slot);
    const uint8_t *(*out_buf)(msh_backend *b, int slot);
    msh_status (*submit)(msh_backend *b, int slot, msh_piece *p, msh_error *e);
    msh_status (*wait)(msh_backend *b, int slot, msh_piece *p, msh_error *e);
    void (*close)(msh_backend *b);
};

/* The CPU computation of one piece: `in` (p->n bytes) into `out`. The reference every other
 * backend is checked against. `out` holds at least msh_piece_out_cap(p) bytes. */
void msh_piece_compute_cpu(msh_piece *p, const msh_f16_bounds *b, const uint8_t *in, uint8_t *out);
size_t msh_piece_out_cap(const msh_job *job, size_t n);

msh_status msh_backend_cpu_open(int threads, const msh_f16_bounds *b, msh_backend **out,
                                msh_error *e);
/* MSH_ERR_CUDA when this build has no CUDA or the device cannot be used. */
msh_status msh_backend_cuda_open(size_t staging, const msh_f16_bounds *b, msh_backend **out,
                                 msh_error *e);

/* The test device (msh_backend_test.c): 1 when MSH_TEST_DEVICE switches it on. */
int msh_test_device_on(void);
msh_status msh_backend_test_open(size_t staging, const msh_f16_bounds *b, msh_backend **out,
                                 msh_error *e);

#endif
