/* modelshrink-gpubench: the GPU figures of BENCHMARKS.md.
 *   - device-to-device cudaMemcpy bandwidth (the kernels' ceiling) and pinned host-to-device
 *     bandwidth (the end-to-end ceiling), measured here;
 *   - each kernel's throughput in input bytes/s on a device-resident buffer, as a fraction of the
 *     D2D bandwidth (read + write traffic is what a copy moves too);
 *   - the streaming driver end to end (host memory -> GPU -> host memory), as a fraction of the
 *     pinned H2D bandwidth.
 * Usage: modelshrink-gpubench [MiB] (default 1024). Exits 77 without a device. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/msh_scalar.h"
#include "msh_cuda.h"

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "CUDA: %s (%s)\n", cudaGetErrorString(e_), #x);                        \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

int main(int argc, char **argv) {
    if (msh_cuda_probe_count() == 0) {
        printf("no CUDA device\n");
        return 77;
    }
    size_t mib = argc > 1 ? (size_t)atoll(argv[1]) : 1024;
    size_t bytes = mib << 20;
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs, %.1f GiB\n", prop.name, prop.multiProcessorCount,
           (double)prop.totalGlobalMem / (1 << 30));
    void *d_a, *d_b, *h;
    CK(cudaMalloc(&d_a, bytes));
    CK(cudaMalloc(&d_b, bytes));
    CK(cudaMallocHost(&h, bytes));
    memset(h, 0x3c, bytes);
    cudaEvent_t t0, t1;
    CK(cudaEventCreate(&t0));
    CK(cudaEventCreate(&t1));
    float ms;
    CK(cudaMemcpy(d_a, h, bytes, cudaMemcpyHostToDevice));
    CK(cudaEventRecord(t0));
    for (int i = 0; i < 5; i++)
        CK(cudaMemcpy(d_b, d_a, bytes, cudaMemcpyDeviceToDevice));
    CK(cudaEventRecord(t1));
    CK(cudaEventSynchronize(t1));
    CK(cudaEventElapsedTime(&ms, t0, t1));
    double d2d = 5.0 * bytes / (ms / 1e3); /* bytes copied per second (each read and written) */
    CK(cudaEventRecord(t0));
    for (int i = 0; i < 5; i++)
        CK(cudaMemcpy(d_a, h, bytes, cudaMemcpyHostToDevice));
    CK(cudaEventRecord(t1));
    CK(cudaEventSynchronize(t1));
    CK(cudaEventElapsedTime(&ms, t0, t1));
    double h2d = 5.0 * bytes / (ms / 1e3);
    printf("d2d copy: %.1f GB/s; pinned h2d: %.1f GB/s\n", d2d / 1e9, h2d / 1e9);
    /* each kernel alone on device memory: input bytes per second against the copy's rate; INT8
     * and the channel maxima in a MatMul layout (a channel per element, 3072 of them) and a Conv
     * layout (a channel per 2304-element row, 256 of them: every lane of a warp on one channel) */
    {
        int ks[8] = {MSH_CUDA_FP16,   MSH_CUDA_BF16,   MSH_CUDA_INT8,   MSH_CUDA_INT8,
                     MSH_CUDA_ABSMAX, MSH_CUDA_ABSMAX, MSH_CUDA_DIGEST, MSH_CUDA_Q4SEARCH};
        const char *kn[8] = {"fp16",          "bf16",        "int8 matmul", "int8 conv",
                             "absmax matmul", "absmax conv", "digest",      "int4 search"};
        int64_t inner[8] = {1, 1, 1, 2304, 1, 2304, 1, 32},
                chans[8] = {1, 1, 3072, 256, 3072, 256, 1, 1};
        for (int k = 0; k < 8; k++) {
            float kms = msh_cuda_time_kernel(ks[k], bytes, inner[k], chans[k]);
            if (kms <= 0) {
                fprintf(stderr, "kernel %s failed\n", kn[k]);
                return 1;
            }
            double bps = bytes / (kms / 1e3);
            printf("kernel %-13s: %.1f GB/s = %.0f%% of d2d copy\n", kn[k], bps / 1e9,
                   100.0 * bps / d2d);
        }
    }
    /* end to end through the backend's two slots, for each kind (input bytes per second):
     * host memory -> pinned slot -> GPU -> pinned slot, pieces overlapping as the engine runs
     * them */
    msh_cuda_be *be;
    char err[256];
    if (msh_cuda_be_new((size_t)64 << 20, &be, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    size_t P = msh_cuda_be_staging(be);
    int kinds[5] = {MSH_CUDA_FP16, MSH_CUDA_BF16, MSH_CUDA_INT8, MSH_CUDA_ABSMAX, MSH_CUDA_DIGEST};
    const char *names[5] = {"fp16", "bf16", "int8", "absmax", "digest"};
    float *scales = (float *)calloc(768, sizeof(float));
    for (int i = 0; i < 768; i++)
        scales[i] = 0.01f;
    for (int k = 0; k < 5; k++) {
        msh_cuda_piece pc[2];
        size_t pieces = (bytes + P - 1) / P;
        CK(cudaEventRecord(t0));
        for (size_t i = 0; i < pieces + 2; i++) {
            int s = (int)(i & 1);
            if (i >= 2 && msh_cuda_be_wait(be, s, &pc[s], err, sizeof err) != 0) {
                fprintf(stderr, "%s\n", err);
                return 1;
            }
            if (i >= pieces)
                continue;
            size_t n = bytes - i * P < P ? bytes - i * P : P;
            memcpy(msh_cuda_be_in(be, s), (const char *)h + i * P, n);
            memset(&pc[s], 0, sizeof pc[s]);
            pc[s].kind = kinds[k];
            pc[s].n = n;
            pc[s].first = (int64_t)(i * P / 4);
            pc[s].f16_min_abs = MSH_F16_MIN_SUBNORMAL_BITS;
            pc[s].f16_max_abs = MSH_F16_MAX_BITS;
            pc[s].scales = scales;
            pc[s].inner = 1;
            pc[s].channels = 768;
            pc[s].row0 = pc[s].first;
            pc[s].t = 768;
            if (msh_cuda_be_submit(be, s, &pc[s], err, sizeof err) != 0) {
                fprintf(stderr, "%s\n", err);
                return 1;
            }
        }
        CK(cudaEventRecord(t1));
        CK(cudaEventSynchronize(t1));
        CK(cudaEventElapsedTime(&ms, t0, t1));
        double bps = bytes / (ms / 1e3);
        printf("end to end %-6s: %.1f GB/s = %.0f%% of pinned h2d\n", names[k], bps / 1e9,
               100.0 * bps / h2d);
    }
    msh_cuda_be_free(be);
    return 0;
}
