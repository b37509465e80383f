/*
 * Weights-only torch.save archives: "archive/data.pkl" (pickle_write.c), one STORED entry
 * "archive/data/<k>" per output storage, "archive/version" ("3\n"), in that order (zip_write.c,
 * ZIP64 past 4 GiB). torch.load(weights_only=True) reads them, and tensors that the plan gave one
 * storage (tied weights, duplicates) load sharing it. Storage bytes come from the caller.
 */
#ifndef MSH_PTH_WRITE_H
#define MSH_PTH_WRITE_H

#include "common/msh_io.h"

typedef struct msh_pthw_tensor {
    const char *key;
    size_t storage; /* index into the storages */
    const int64_t *shape;
    size_t ndim;
} msh_pthw_tensor;

typedef struct msh_pthw_storage {
    int32_t dtype;
    int64_t numel;
    int64_t nbytes;
    size_t index; /* passed to the bytes function */
} msh_pthw_storage;

msh_status msh_pth_write(const char *out_path, const msh_pthw_tensor *t, size_t nt,
                         const msh_pthw_storage *s, size_t ns, msh_bytes_fn bytes, void *ctx,
                         int64_t *bytes_out, msh_error *e);

#endif
