/* Chunk-digest kernel: one thread per MSH_HASH_CHUNK chunk, calling the shared scalar body.
 * The streaming driver with pinned double buffers arrives with the GPU issue; this is the
 * kernel it will launch. */
#include <cuda_runtime.h>
#include <stdio.h>

#include "kernels/msh_scalar.h"
#include "msh_cuda.h"

__global__ void msh_chunk_digest_kernel(const uint8_t *data, size_t n, uint64_t *digests,
                                        size_t n_chunks) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_chunks)
        return;
    size_t off = i * MSH_HASH_CHUNK;
    size_t len = n - off < MSH_HASH_CHUNK ? n - off : MSH_HASH_CHUNK;
    digests[i] = msh_chunk_hash_ref(data + off, len);
}

extern "C" int msh_cuda_chunk_digests(const uint8_t *host, size_t n, uint64_t *digests, char *err,
                                      size_t err_cap) {
    size_t n_chunks = (n + MSH_HASH_CHUNK - 1) / MSH_HASH_CHUNK;
    uint8_t *d_data = NULL;
    uint64_t *d_dig = NULL;
    cudaError_t ce = cudaMalloc(&d_data, n ? n : 1);
    if (ce == cudaSuccess)
        ce = cudaMalloc(&d_dig, (n_chunks ? n_chunks : 1) * sizeof(uint64_t));
    if (ce == cudaSuccess)
        ce = cudaMemcpy(d_data, host, n, cudaMemcpyHostToDevice);
    if (ce == cudaSuccess && n_chunks) {
        unsigned threads = 128;
        unsigned blocks = (unsigned)((n_chunks + threads - 1) / threads);
        msh_chunk_digest_kernel<<<blocks, threads>>>(d_data, n, d_dig, n_chunks);
        ce = cudaGetLastError();
        if (ce == cudaSuccess)
            ce = cudaMemcpy(digests, d_dig, n_chunks * sizeof(uint64_t), cudaMemcpyDeviceToHost);
    }
    cudaFree(d_data);
    cudaFree(d_dig);
    if (ce != cudaSuccess) {
        snprintf(err, err_cap, "CUDA: %s", cudaGetErrorString(ce));
        return -1;
    }
    return 0;
}
