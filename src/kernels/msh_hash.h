/* CPU driver of the tensor digest defined in msh_scalar.h, fed in pieces of any size. */
#ifndef MSH_HASH_H
#define MSH_HASH_H

#include "common/msh_common.h"
#include "kernels/msh_scalar.h"

typedef struct msh_hasher msh_hasher;

msh_hasher *msh_hasher_new(void);
void msh_hasher_reset(msh_hasher *h);
void msh_hasher_update(msh_hasher *h, const void *p, size_t n);
uint64_t msh_hasher_digest(msh_hasher *h);
void msh_hasher_free(msh_hasher *h);
/* Nonzero when memory ran out during updates: the digest is then not valid. */
int msh_hasher_failed(const msh_hasher *h);

/* The digest of one chunk (at most MSH_HASH_CHUNK bytes). */
uint64_t msh_chunk_digest(const uint8_t *p, size_t n);
/* The tensor digest from its `n` chunk digests, for `total` bytes; `scratch` holds 8 * n bytes. */
uint64_t msh_digest_combine(const uint64_t *chunks, size_t n, int64_t total, uint8_t *scratch);

/* One-shot digest of an in-memory buffer, computed with the scalar reference only. */
msh_status msh_tensor_digest_ref(const void *p, size_t n, uint64_t *out);
/* One-shot digest through the CPU driver (libxxhash unless MSH_FORCE_SCALAR). */
msh_status msh_tensor_digest(const void *p, size_t n, uint64_t *out);

#endif
