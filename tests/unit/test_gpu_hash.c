/* GPU chunk digests equal the CPU reference bit for bit. Exit 77 (skip) without a device. */
#include <stdio.h>
#include <stdlib.h>

#include "kernels/msh_hash.h"
#include "modelshrink.h"
#if defined(MSH_HAVE_CUDA)
#include "msh_cuda.h"
#endif

int main(void) {
    if (msh_cuda_device_count() == 0) {
        printf("no CUDA device (or built without CUDA): skipped\n");
        return 77;
    }
#if defined(MSH_HAVE_CUDA)
    size_t sizes[] = {0, 1, 31, 32, 65535, 65536, 65537, 3 * 65536 + 17, (size_t)9 << 20};
    int fails = 0;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        uint8_t *buf = malloc(n ? n : 1);
        for (size_t i = 0; i < n; i++)
            buf[i] = (uint8_t)(i * 2654435761u >> 13);
        size_t nc = (n + MSH_HASH_CHUNK - 1) / MSH_HASH_CHUNK;
        uint64_t *gpu = calloc(nc ? nc : 1, 8);
        char err[256];
        if (msh_cuda_chunk_digests(buf, n, gpu, err, sizeof err) != 0) {
            printf("FAIL: %s\n", err);
            return 1;
        }
        for (size_t c = 0; c < nc; c++) {
            size_t off = c * MSH_HASH_CHUNK;
            size_t len = n - off < MSH_HASH_CHUNK ? n - off : MSH_HASH_CHUNK;
            if (gpu[c] != msh_chunk_hash_ref(buf + off, len)) {
                printf("FAIL: size %zu chunk %zu differs\n", n, c);
                fails++;
            }
        }
        free(gpu);
        free(buf);
    }
    printf("%s\n", fails ? "FAILED" : "ok: GPU chunk digests match the CPU reference");
    return fails ? 1 : 0;
#else
    return 77;
#endif
}
