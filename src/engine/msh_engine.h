/*
 * The engine: one host driver that turns planned tensors into bytes, for every format.
 *
 * A job is one tensor's work: its source (msh_table.h), how many bytes of it to read, and one
 * operation: copy, FP32 -> FP16 / BF16, FP32 -> INT8 per channel, or a scan (the dedup digest,
 * per-channel maxima). The driver cuts jobs into pieces and streams them through a backend:
 *
 *   producer threads: read piece j from its source into slot j % S, submit it to the backend
 *   backend:          cpu (computes in the producer thread) or cuda (copies in, runs the
 *                     kernel, copies out on the slot's stream, records an event)
 *   consumer:         the caller's thread takes pieces in order, waits for their slot, checks
 *                     them against the CPU when verifying, and hands the bytes to a sink
 *
 * Conversions run in output order: the caller starts a run over the jobs in the order its writer
 * will place them, then takes each job's bytes into the writer's sink (msh_run_take). Copies of
 * file spans go from file to file (copy_file_range) without passing through the pieces.
 *
 * Element math comes from kernels/msh_scalar.h on both backends, so cpu and cuda write the same
 * bytes; with `verify` every piece the GPU makes is recomputed on the CPU and compared (bytes,
 * clamp counts, chunk digests, channel maxima). A CUDA failure is MSH_ERR_CUDA: the caller redoes
 * the model on the CPU.
 */
#ifndef MSH_ENGINE_H
#define MSH_ENGINE_H

#include "common/msh_io.h"
#include "common/msh_table.h"
#include "kernels/msh_cpu.h"

typedef enum msh_op {
    MSH_OP_COPY = 0, /* the bytes as they are */
    MSH_OP_F16,      /* FLOAT -> FLOAT16 within the engine's bounds */
    MSH_OP_BF16,     /* FLOAT -> BFLOAT16 */
    MSH_OP_INT8,     /* FLOAT -> INT8 with per-channel scales */
    MSH_OP_DIGEST,   /* scan: the tensor digest of msh_scalar.h */
    MSH_OP_ABSMAX,   /* scan: per-channel max |w| of FLOAT */
    MSH_OP_INT4,     /* FLOAT -> 4-bit blockwise, two per byte (msh_int4_layout) */
    MSH_OP_Q4STATS,  /* scan: per-block min(0, w), max(0, w) of FLOAT, blocks along rows */
    MSH_OP_Q4SEARCH  /* scan: per-block clipped (lo, hi) of the INT4 clipping search, blocks
                        along rows, every block inside one piece (q4.cols a multiple of q4.block) */
} msh_op;

typedef struct msh_job {
    const msh_src *src;
    int64_t nbytes; /* input bytes, from the start of the source */
    msh_op op;
    const float *scales;     /* INT8: one per channel */
    int64_t inner, channels; /* INT8, ABSMAX: channel of element i is (i / inner) % channels */
    const char *name;        /* for messages */
    /* results */
    uint64_t digest;     /* DIGEST */
    float *absmax;       /* ABSMAX: `channels` values, raised to the maxima found */
    uint64_t clamped;    /* F16: values clamped */
    msh_f16_range range; /* F16: the range test of the input (the precision plan reads it) */
    /* INT4 (q4.scales, q4.zps, or q4.lazy: per piece) and Q4STATS (q4.cols, q4.block; axis 1) */
    msh_int4_layout q4;
    float *q4_stats; /* Q4STATS: 2 per block (min, max), lowered / raised to what is found;
                        Q4SEARCH: 2 per block (clipped lo, hi), written */
    int q4_store;    /* Q4SEARCH (q4.asym too): 10 / 16 when the scales are stored FP16 / BF16 */
} msh_job;

/* Output bytes of a job's operation on `nbytes` input bytes (0 for scans). */
int64_t msh_job_out_bytes(msh_op op, int64_t nbytes);

/* The operation that turns `in` elements into `out` (0 or equal: COPY); -1 when none does. */
int msh_op_for(int32_t in, int32_t out);

enum { MSH_BACKEND_CPU = 0, MSH_BACKEND_CUDA = 1 };

typedef struct msh_engine_opts {
    int backend;        /* MSH_BACKEND_CPU or MSH_BACKEND_CUDA */
    int threads;        /* CPU producer threads (0: one per core) */
    int verify;         /* recompute every non-CPU piece on the CPU and compare */
    msh_f16_bounds f16; /* FP16 clamping bounds */
    size_t staging;     /* CUDA staging buffer bytes */
    /* runs report to `progress` (NULL: nobody) on the consumer's thread, and stop with
     * MSH_ERR_CANCELLED before a piece once `cancel` or msh_cancel_request says so */
    msh_progress_fn progress;
    void *progress_user;
    const char *progress_path;
    const msh_cancel_token *cancel;
} msh_engine_opts;

typedef struct msh_engine msh_engine;

/* MSH_ERR_CUDA when the CUDA backend cannot be had (the message says why). */
msh_status msh_engine_open(const msh_engine_opts *o, msh_engine **out, msh_error *e);
void msh_engine_close(msh_engine *g);
/* "cpu" or "cuda". */
const char *msh_engine_device(const msh_engine *g);

/* Run scan jobs (DIGEST, ABSMAX) to completion; results go into the jobs. */
msh_status msh_engine_scan(msh_engine *g, msh_job *jobs, size_t n, msh_error *e);

/* Compare the first `nbytes` of each of `n` sources with `ref`'s: same[k] = 1 when identical.
 * `ref` is read once. */
msh_status msh_engine_same(msh_engine *g, const msh_src *ref, const msh_src *const *srcs, size_t n,
                           int64_t nbytes, uint8_t *same, msh_error *e);

/* Conversion runs. Start one over the jobs in output order; take each job's bytes, in order,
 * into a sink; end it (always, also after a failure: it joins the threads). `jobs` must stay
 * valid until msh_run_end; clamp counts are written into them as pieces are taken.
 *
 * A run is one phase of the conversion's progress (MSH_PHASE_WRITE; msh_engine_scan's runs and
 * msh_engine_same's comparisons MSH_PHASE_SCAN, when they read at least MSH_PROGRESS_STEP
 * bytes): reported when it starts, before a piece could take it more than MSH_PROGRESS_STEP
 * input bytes past the last report, and when its last job is taken. Cancellation is checked
 * before every piece (file-to-file copies are cut into pieces of at most MSH_PROGRESS_STEP for
 * it) and fails the run with MSH_ERR_CANCELLED. */
#define MSH_PROGRESS_STEP ((int64_t)16 << 20)
typedef struct msh_run msh_run;
msh_status msh_run_start(msh_engine *g, msh_job *jobs, size_t n, msh_run **out, msh_error *e);
msh_status msh_run_take(msh_run *r, size_t job, msh_sink *dst, msh_error *e);
msh_status msh_run_end(msh_run *r, msh_error *e);

/* ---- process-wide device state (msh_device.c) ---- */

/* The backend to use for a model with `work_bytes` of tensor data under `device`
 * (MSH_DEVICE_*): MSH_BACKEND_CUDA or MSH_BACKEND_CPU; MSH_ERR_CUDA when CUDA is asked for and
 * cannot be had. */
msh_status msh_device_choose(int device, int verify, int64_t work_bytes, int *backend,
                             msh_error *e);
/* After a CUDA error: the rest of the process uses the CPU. */
void msh_device_disable_cuda(void);

#endif
