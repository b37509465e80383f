/*
 * safetensors: an 8-byte little-endian header length N, N bytes of JSON, then the data.
 *
 * Reading is strict: N <= 100,000,000 and 8 + N within the file; the header is a JSON object
 * whose entries (other than "__metadata__", an object of strings) each have a known "dtype", a
 * "shape" of non-negative integers and "data_offsets" [begin, end] with end - begin equal to the
 * shape's byte size (checked for overflow); sorted by begin, the tensors cover the data area
 * exactly, with no gap and no overlap, and the data area ends at the end of the file.
 *
 * Writing streams: the header is computed from the sizes, padded with spaces to a multiple of
 * 8, then each tensor's bytes are copied (or converted FP32 -> FP16/BF16, or gathered from a
 * strided view) in header order.
 */
#ifndef MSH_SAFETENSORS_H
#define MSH_SAFETENSORS_H

#include <cjson/cJSON.h>

#include "common/msh_common.h"

typedef struct msh_st_tensor {
    char *name;
    int32_t dtype; /* ONNX element type */
    int64_t shape[64];
    size_t ndim;
    int64_t offset; /* absolute file offset of the data */
    int64_t nbytes;
    int64_t numel;
} msh_st_tensor;

typedef struct msh_st_file {
    int fd;
    int64_t file_size, header_bytes;
    msh_st_tensor *t;
    size_t n;
    char *metadata; /* the "__metadata__" object as JSON, or NULL */
} msh_st_file;

/* 1 when the first bytes look like safetensors (length, then '{'). */
int msh_st_sniff(const uint8_t *head, size_t n, int64_t file_size);
msh_status msh_st_open(msh_st_file *f, const char *path, msh_error *e);
void msh_st_free(msh_st_file *f);
msh_status msh_st_inspect(const msh_st_file *f, cJSON *o, msh_error *e);

/* One tensor to write. Its bytes come from `fd` at `offset` (contiguous), or from `gather`. */
typedef struct msh_st_item {
    const char *name;
    int32_t dtype_in, dtype_out; /* dtype_out differs only for FLOAT -> FLOAT16/BFLOAT16 */
    const int64_t *shape;
    size_t ndim;
    int64_t numel;
    int fd;
    int64_t offset;
    msh_status (*gather)(void *ctx, uint8_t *dst, msh_error *e); /* or NULL */
    void *ctx;
} msh_st_item;

const char *msh_st_dtype_name(int32_t onnx_type);

/* `metadata`: a JSON object for "__metadata__" (NULL: {"format": "pt"}). */
msh_status msh_st_write(const char *out_path, const char *metadata, const msh_st_item *items,
                        size_t n, uint32_t f16_min_abs, uint32_t f16_max_abs, int64_t *bytes_out,
                        uint64_t *clamped, msh_error *e);

#endif
