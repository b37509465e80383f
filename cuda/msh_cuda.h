/* Host-callable entry points of the CUDA back end (C linkage). Present only when built with
 * MSH_HAVE_CUDA; callers check msh_cuda_device_count() first. */
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

#ifdef __cplusplus
}
#endif
#endif
