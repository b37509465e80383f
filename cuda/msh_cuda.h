/* Host-callable entry points of the CUDA back end (C linkage). Present only when built with
 * MSH_HAVE_CUDA; callers check msh_cuda_device_count() first.
 *
 * The streaming driver (msh_cuda_run) moves one tensor's bytes through the GPU in pieces of the
 * staging size: piece i is read into pinned buffer i % 2 by the host while piece i - 1 is copied
 * in, processed and copied out on stream (i - 1) % 2; outputs are handed back in order. Pieces
 * are multiples of 64 KiB, so chunk digests and per-channel maxima never depend on the split.
 * Every kernel's per-element body is a function of src/kernels/msh_scalar.h. */
#ifndef MSH_CUDA_H
#define MSH_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int msh_cuda_probe_count(void);

/* Chunk digests (msh_chunk_hash_ref over MSH_HASH_CHUNK-byte chunks) of `n` bytes at `host`,
 * computed on device 0. Returns 0 on success; on failure writes a message to `err`. */
int msh_cuda_chunk_digests(const uint8_t *host, size_t n, uint64_t *digests, char *err,
                           size_t err_cap);

enum {
    MSH_CUDA_INT8 = 3,     /* FP32 -> INT8 with per-channel scales */
    MSH_CUDA_FP16 = 10,    /* FP32 -> FP16 with bounds */
    MSH_CUDA_BF16 = 16,    /* FP32 -> BF16 */
    MSH_CUDA_ABSMAX = 100, /* per-channel max |w| of FP32 */
    MSH_CUDA_DIGEST = 101  /* chunk digests of raw bytes */
};

typedef struct msh_cuda_job {
    int kind;
    int64_t nbytes;                    /* input bytes */
    uint32_t f16_min_abs, f16_max_abs; /* FP16 */
    const float *scales;               /* INT8: host, `channels` values */
    int64_t inner, channels;           /* INT8, ABSMAX: channel of element i = (i/inner)%channels */
    float *absmax;                     /* ABSMAX: host, `channels` values, updated (max) */
    uint64_t *digests;                 /* DIGEST: host, one per 64 KiB chunk */
    uint64_t clamped;                  /* FP16: values clamped (out) */
} msh_cuda_job;

/* read: fill `dst` with `n` input bytes at offset `off`; 0 on success.
 * sink: one processed piece, in order: its input and output bytes and its input offset; 0 on
 * success (a non-zero return stops the job). NULL for ABSMAX. */
typedef int (*msh_cuda_read_fn)(void *ctx, void *dst, size_t n, int64_t off);
typedef int (*msh_cuda_sink_fn)(void *ctx, const void *in, size_t in_n, const void *out,
                                size_t out_n, int64_t off);

typedef struct msh_cuda_engine msh_cuda_engine;

/* Two pinned staging buffers of `staging` bytes (rounded to 64 KiB), two streams. */
int msh_cuda_engine_new(size_t staging, msh_cuda_engine **out, char *err, size_t err_cap);
void msh_cuda_engine_free(msh_cuda_engine *e);
/* 0 on success; -1 on a CUDA error (message in err: the caller falls back to the CPU); -2 when
 * read or sink failed (their own error stands). */
int msh_cuda_run(msh_cuda_engine *e, msh_cuda_job *job, msh_cuda_read_fn rd, msh_cuda_sink_fn sk,
                 void *ctx, char *err, size_t err_cap);

/* Benchmark: milliseconds one launch of `kind`'s kernel takes on `bytes` of device-resident
 * input (median of 5), or a negative value on a CUDA error. */
float msh_cuda_time_kernel(int kind, size_t bytes);

#ifdef __cplusplus
}
#endif
#endif
