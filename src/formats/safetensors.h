/*
 * safetensors: an 8-byte little-endian header length N, N bytes of JSON, then the data.
 *
 * Reading is strict: N <= 100,000,000 and 8 + N within the file; the header is a JSON object
 * whose entries (other than "__metadata__", an object of strings) each have a known "dtype", a
 * "shape" of non-negative integers and "data_offsets" [begin, end] with end - begin equal to the
 * shape's byte size (checked for overflow); sorted by begin, the tensors cover the data area
 * exactly, with no gap and no overlap, and the data area ends at the end of the file.
 *
 * Writing (safetensors_write.c) only serializes: the header is computed from the sizes, padded
 * with spaces to a multiple of 8, then each tensor's bytes, which the engine makes, are placed in
 * header order.
 */
#ifndef MSH_SAFETENSORS_H
#define MSH_SAFETENSORS_H

#include "common/msh_io.h"
#include "common/msh_table.h"

typedef struct msh_st_tensor {
    msh_tentry d; /* first: msh_table views these; d.src is the file span */
    char *name;
    int64_t shape[64];
    int64_t offset; /* absolute file offset of the data */
} msh_st_tensor;

typedef struct msh_st_file {
    int fd;
    int64_t file_size, header_bytes;
    msh_st_tensor *t; /* in file order */
    size_t n;
    char *metadata; /* the "__metadata__" object as JSON, or NULL */
} msh_st_file;

/* 1 when the first bytes look like safetensors (length, then '{'). */
int msh_st_sniff(const uint8_t *head, size_t n, int64_t file_size);
msh_status msh_st_open(msh_st_file *f, const char *path, msh_error *e);
void msh_st_free(msh_st_file *f);
msh_table msh_st_table(const msh_st_file *f);

/* ---- the writer (safetensors_write.c) ---- */

/* One tensor to write, in header order; its bytes come from the caller's msh_bytes_fn. */
typedef struct msh_st_out {
    const char *name;
    int32_t dtype; /* as written */
    const int64_t *shape;
    size_t ndim;
    int64_t nbytes; /* as written */
    size_t index;   /* passed to the bytes function */
} msh_st_out;

/* `metadata`: a JSON object for "__metadata__" (NULL: {"format": "pt"}). Writes a temporary file,
 * then renames it. */
msh_status msh_st_write(const char *out_path, const char *metadata, const msh_st_out *items,
                        size_t n, msh_bytes_fn bytes, void *ctx, int64_t *bytes_out, msh_error *e);

#endif
