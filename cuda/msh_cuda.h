/* Host-callable entry points of the CUDA backend (C linkage). Present only when built with
 * MSH_HAVE_CUDA; src/engine/msh_backend_cuda.c adapts them to the engine's backend interface.
 *
 * The backend owns two slots, each a pinned input buffer, a pinned output buffer, device
 * buffers and its own non-blocking stream and event. submit queues, on the slot's stream only:
 * the copy in, the kernel, the copy out and the event; wait synchronises on that event alone
 * (never on the device, so a program embedding the library keeps its own streams running).
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
    MSH_CUDA_INT8 = 3,      /* FP32 -> INT8 with per-channel scales */
    MSH_CUDA_INT4 = 4,      /* FP32 -> 4-bit blockwise, two per byte */
    MSH_CUDA_FP16 = 10,     /* FP32 -> FP16 with bounds */
    MSH_CUDA_BF16 = 16,     /* FP32 -> BF16 */
    MSH_CUDA_ABSMAX = 100,  /* per-channel max |w| of FP32 */
    MSH_CUDA_DIGEST = 101,  /* chunk digests of raw bytes */
    MSH_CUDA_Q4STATS = 102, /* per-block min(0, w), max(0, w), blocks along rows */
    MSH_CUDA_Q4SEARCH = 103 /* per-block clipped (lo, hi) of the INT4 clipping search */
};

typedef struct msh_cuda_piece {
    int kind;
    size_t n;                          /* input bytes in the slot's input buffer */
    int64_t first;                     /* element index of the piece's first element */
    uint32_t f16_min_abs, f16_max_abs; /* FP16 */
    const float *scales;               /* INT8: host, `channels` values */
    int64_t inner, channels;           /* INT8, ABSMAX */
    int64_t row0, t;                   /* ABSMAX: t maxima for channels (row0 + k) % channels */
    /* INT4, Q4STATS: blocks b0 .. b0 + nb - 1 are touched by the piece; INT4's scales and zps
     * (host) hold their nb values */
    int64_t q4_cols, q4_block, b0, nb;
    int q4_axis, q4_asym, q4_offset;
    int q4_store; /* Q4SEARCH: 10 / 16 when the scales are stored FP16 / BF16 */
    const uint8_t *zps;
    /* results (after wait) */
    size_t out_n;
    uint64_t clamped;
    uint64_t range[4]; /* FP16: non-zero, below FP16's normal range, above it, max |x| bits */
} msh_cuda_piece;

typedef struct msh_cuda_be msh_cuda_be;

/* Two slots of `staging` bytes (rounded to 64 KiB). 0 on success, -1 with a message. */
int msh_cuda_be_new(size_t staging, msh_cuda_be **out, char *err, size_t err_cap);
void msh_cuda_be_free(msh_cuda_be *b);
size_t msh_cuda_be_staging(const msh_cuda_be *b);
uint8_t *msh_cuda_be_in(msh_cuda_be *b, int slot);
const uint8_t *msh_cuda_be_out(msh_cuda_be *b, int slot);
/* Queue a piece on a slot. 0 on success, -1 on a CUDA error (message in err). */
int msh_cuda_be_submit(msh_cuda_be *b, int slot, msh_cuda_piece *p, char *err, size_t err_cap);
/* Wait for a slot's piece; fills out_n and clamped. 0 on success, -1 on a CUDA error. */
int msh_cuda_be_wait(msh_cuda_be *b, int slot, msh_cuda_piece *p, char *err, size_t err_cap);

/* Benchmark: milliseconds one launch of `kind`'s kernel takes on `bytes` of device-resident
 * input (median of 5), INT8 and ABSMAX with the channel layout (inner, channels); a negative
 * value on any CUDA error. Q4SEARCH: blocks of `inner` values along rows (symmetric). */
float msh_cuda_time_kernel(int kind, size_t bytes, int64_t inner, int64_t channels);

#ifdef __cplusplus
}
#endif
#endif
