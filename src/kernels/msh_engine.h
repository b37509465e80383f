/* Where the element work of one model runs: the CPU reference path, or the CUDA streaming
 * driver (cuda/msh_cuda_engine.cu). With `verify`, every GPU piece is recomputed on the CPU and
 * compared byte for byte; a difference is MSH_ERR_VERIFY naming the tensor and element. A CUDA
 * failure is MSH_ERR_CUDA: the caller redoes the model on the CPU. */
#ifndef MSH_ENGINE_H
#define MSH_ENGINE_H

#include "kernels/msh_convert.h"

typedef struct msh_engine {
    int cuda;     /* 1: run on the GPU */
    int verify;   /* 1: also on the CPU, compare bytes */
    void *handle; /* msh_cuda_engine */
} msh_engine;

typedef msh_status (*msh_engine_read)(void *ctx, void *dst, size_t n, int64_t off, msh_error *e);
typedef msh_status (*msh_engine_write)(void *ctx, const void *p, size_t n, msh_error *e);

/* out_type 10 (FP16, bounds b), 16 (BF16) or 3 (INT8 with scales/inner/channels) of `nbytes`
 * FP32 bytes read through `rd`, written through `wr` in order. */
msh_status msh_engine_convert(const msh_engine *g, int out_type, int64_t nbytes,
                              const msh_f16_bounds *b, const float *scales, int64_t inner,
                              int64_t channels, msh_engine_read rd, msh_engine_write wr, void *ctx,
                              uint64_t *clamped, const char *tensor, msh_error *e);
/* Per-channel max |w| (updates absmax). */
msh_status msh_engine_absmax(const msh_engine *g, int64_t nbytes, int64_t inner, int64_t channels,
                             float *absmax, msh_engine_read rd, void *ctx, const char *tensor,
                             msh_error *e);
/* The tensor digest of msh_scalar.h over `nbytes` bytes. */
msh_status msh_engine_digest(const msh_engine *g, int64_t nbytes, msh_engine_read rd, void *ctx,
                             uint64_t *digest, const char *tensor, msh_error *e);

/* Process-wide device state (src/msh_device.c). */
msh_status msh_device_engine(int device, size_t staging, int64_t work_bytes, msh_engine *g,
                             msh_error *e);
void msh_device_disable_cuda(void);

#endif
