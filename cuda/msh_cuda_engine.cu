/* The streaming CUDA driver and its kernels. Kernels compute indices and call the MSH_HD scalar
 * functions of msh_scalar.h; they never re-derive the math. Built with --fmad=false. */
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>
#include <stdio.h>
#include <string.h>

#include "kernels/msh_scalar.h"
#include "msh_cuda.h"

#define MSH_THREADS 256
#define MSH_MAX_BLOCKS 4096

/* ---- kernels ---- */

__global__ void msh_k_f16(const uint32_t *in, uint16_t *out, size_t n, uint32_t mn, uint32_t mx,
                          unsigned long long *clamped) {
    unsigned long long c = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        int k;
        out[i] = msh_f32_to_f16_ref(in[i], mn, mx, &k);
        c += (unsigned long long)k;
    }
    if (c)
        atomicAdd(clamped, c);
}

__global__ void msh_k_bf16(const uint32_t *in, uint16_t *out, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = msh_f32_to_bf16_ref(in[i]);
}

__global__ void msh_k_int8(const float *in, int8_t *out, size_t n, int64_t first, int64_t inner,
                           int64_t channels, const float *scales) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        int64_t ch = ((first + (int64_t)i) / inner) % channels;
        out[i] = msh_int8_quant_ref(in[i], scales[ch]);
    }
}

/* max|w| per channel: maxima of non-negative floats compare like their bit patterns as ints,
 * so atomicMax on the bits is exact and order-free. */
__global__ void msh_k_absmax(const float *in, size_t n, int64_t first, int64_t inner,
                             int64_t channels, int *absmax_bits) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float a = msh_absmax_step(0.0f, in[i]);
        if (a > 0.0f) {
            int64_t ch = ((first + (int64_t)i) / inner) % channels;
            atomicMax(&absmax_bits[ch], __float_as_int(a));
        }
    }
}

__global__ void msh_k_digest(const uint8_t *in, size_t n, uint64_t *digests, size_t n_chunks) {
    size_t c = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n_chunks)
        return;
    size_t off = c * MSH_HASH_CHUNK;
    size_t len = n - off < MSH_HASH_CHUNK ? n - off : MSH_HASH_CHUNK;
    digests[c] = msh_chunk_hash_ref(in + off, len);
}

static unsigned grid_for(size_t n) {
    size_t b = (n + MSH_THREADS - 1) / MSH_THREADS;
    if (b < 1)
        b = 1;
    return (unsigned)(b > MSH_MAX_BLOCKS ? MSH_MAX_BLOCKS : b);
}

/* ---- the probe and one-shot digests (tests) ---- */

extern "C" int msh_cuda_probe_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess)
        return 0;
    return n;
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
        msh_k_digest<<<grid_for(n_chunks), MSH_THREADS>>>(d_data, n, d_dig, n_chunks);
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

/* ---- the streaming engine ---- */

struct msh_cuda_engine {
    size_t staging;
    uint8_t *h_in[2], *h_out[2];
    uint8_t *d_in[2], *d_out[2];
    cudaStream_t st[2];
    unsigned long long *d_clamped;
    nvtxDomainHandle_t nvtx;
};

static void range_push(msh_cuda_engine *e, const char *what) {
    nvtxEventAttributes_t a;
    memset(&a, 0, sizeof a);
    a.version = NVTX_VERSION;
    a.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    a.messageType = NVTX_MESSAGE_TYPE_ASCII;
    a.message.ascii = what;
    nvtxDomainRangePushEx(e->nvtx, &a);
}

static void range_pop(msh_cuda_engine *e) {
    nvtxDomainRangePop(e->nvtx);
}

#define CUDA_TRY(call)                                                                             \
    do {                                                                                           \
        cudaError_t ce_ = (call);                                                                  \
        if (ce_ != cudaSuccess) {                                                                  \
            snprintf(err, err_cap, "CUDA: %s (%s)", cudaGetErrorString(ce_), #call);               \
            goto cuda_fail;                                                                        \
        }                                                                                          \
    } while (0)

extern "C" void msh_cuda_engine_free(msh_cuda_engine *e) {
    if (!e)
        return;
    for (int i = 0; i < 2; i++) {
        if (e->st[i])
            cudaStreamDestroy(e->st[i]);
        cudaFreeHost(e->h_in[i]);
        cudaFreeHost(e->h_out[i]);
        cudaFree(e->d_in[i]);
        cudaFree(e->d_out[i]);
    }
    cudaFree(e->d_clamped);
    if (e->nvtx)
        nvtxDomainDestroy(e->nvtx);
    free(e);
}

extern "C" int msh_cuda_engine_new(size_t staging, msh_cuda_engine **out, char *err,
                                   size_t err_cap) {
    *out = NULL;
    staging = (staging + MSH_HASH_CHUNK - 1) / MSH_HASH_CHUNK * MSH_HASH_CHUNK;
    if (staging < MSH_HASH_CHUNK)
        staging = MSH_HASH_CHUNK;
    msh_cuda_engine *e = (msh_cuda_engine *)calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, err_cap, "out of memory");
        return -1;
    }
    e->staging = staging;
    e->nvtx = nvtxDomainCreateA("modelshrink");
    for (int i = 0; i < 2; i++) {
        CUDA_TRY(cudaMallocHost((void **)&e->h_in[i], staging));
        CUDA_TRY(cudaMallocHost((void **)&e->h_out[i], staging));
        CUDA_TRY(cudaMalloc((void **)&e->d_in[i], staging));
        CUDA_TRY(cudaMalloc((void **)&e->d_out[i], staging));
        CUDA_TRY(cudaStreamCreateWithFlags(&e->st[i], cudaStreamNonBlocking));
    }
    CUDA_TRY(cudaMalloc((void **)&e->d_clamped, sizeof(unsigned long long)));
    *out = e;
    return 0;
cuda_fail:
    msh_cuda_engine_free(e);
    return -1;
}

static size_t out_bytes(int kind, size_t in) {
    switch (kind) {
    case MSH_CUDA_FP16:
    case MSH_CUDA_BF16: return in / 2;
    case MSH_CUDA_INT8: return in / 4;
    case MSH_CUDA_DIGEST: return (in + MSH_HASH_CHUNK - 1) / MSH_HASH_CHUNK * 8;
    default: return 0;
    }
}

extern "C" int msh_cuda_run(msh_cuda_engine *e, msh_cuda_job *job, msh_cuda_read_fn rd,
                            msh_cuda_sink_fn sk, void *ctx, char *err, size_t err_cap) {
    const size_t P = e->staging;
    const int64_t n = job->nbytes;
    const int64_t pieces = n > 0 ? (n + (int64_t)P - 1) / (int64_t)P : 0;
    float *d_scales = NULL;
    int *d_absmax = NULL;
    int rc = 0;
    size_t len[2] = {0, 0};
    int64_t at[2] = {0, 0};
    CUDA_TRY(cudaMemset(e->d_clamped, 0, sizeof(unsigned long long)));
    if (job->kind == MSH_CUDA_INT8) {
        CUDA_TRY(cudaMalloc((void **)&d_scales, (size_t)job->channels * sizeof(float)));
        CUDA_TRY(cudaMemcpy(d_scales, job->scales, (size_t)job->channels * sizeof(float),
                            cudaMemcpyHostToDevice));
    }
    if (job->kind == MSH_CUDA_ABSMAX) {
        CUDA_TRY(cudaMalloc((void **)&d_absmax, (size_t)job->channels * sizeof(int)));
        CUDA_TRY(cudaMemcpy(d_absmax, job->absmax, (size_t)job->channels * sizeof(int),
                            cudaMemcpyHostToDevice));
    }
    /* piece i uses buffers and stream i % 2; piece i - 2 is finished before i is read */
    for (int64_t i = 0; i <= pieces + 1; i++) {
        int s = (int)(i & 1);
        if (i >= 2) {
            /* finish piece i - 2: wait for its copy out, hand it over in order */
            CUDA_TRY(cudaStreamSynchronize(e->st[s]));
            if (sk) {
                range_push(e, "write");
                int r =
                    sk(ctx, e->h_in[s], len[s], e->h_out[s], out_bytes(job->kind, len[s]), at[s]);
                range_pop(e);
                if (r != 0) {
                    rc = -2;
                    break;
                }
            }
        }
        if (i >= pieces)
            continue;
        at[s] = i * (int64_t)P;
        len[s] = n - at[s] < (int64_t)P ? (size_t)(n - at[s]) : P;
        range_push(e, "read");
        int r = rd(ctx, e->h_in[s], len[s], at[s]);
        range_pop(e);
        if (r != 0) {
            rc = -2;
            break;
        }
        range_push(e, "copy in");
        CUDA_TRY(cudaMemcpyAsync(e->d_in[s], e->h_in[s], len[s], cudaMemcpyHostToDevice, e->st[s]));
        range_pop(e);
        size_t cnt = len[s] / 4;
        int64_t first = at[s] / 4;
        switch (job->kind) {
        case MSH_CUDA_FP16:
            range_push(e, "kernel fp16");
            msh_k_f16<<<grid_for(cnt), MSH_THREADS, 0, e->st[s]>>>(
                (const uint32_t *)e->d_in[s], (uint16_t *)e->d_out[s], cnt, job->f16_min_abs,
                job->f16_max_abs, e->d_clamped);
            break;
        case MSH_CUDA_BF16:
            range_push(e, "kernel bf16");
            msh_k_bf16<<<grid_for(cnt), MSH_THREADS, 0, e->st[s]>>>((const uint32_t *)e->d_in[s],
                                                                    (uint16_t *)e->d_out[s], cnt);
            break;
        case MSH_CUDA_INT8:
            range_push(e, "kernel int8");
            msh_k_int8<<<grid_for(cnt), MSH_THREADS, 0, e->st[s]>>>(
                (const float *)e->d_in[s], (int8_t *)e->d_out[s], cnt, first, job->inner,
                job->channels, d_scales);
            break;
        case MSH_CUDA_ABSMAX:
            range_push(e, "kernel absmax");
            msh_k_absmax<<<grid_for(cnt), MSH_THREADS, 0, e->st[s]>>>(
                (const float *)e->d_in[s], cnt, first, job->inner, job->channels, d_absmax);
            break;
        default: {
            range_push(e, "kernel digest");
            size_t nc = (len[s] + MSH_HASH_CHUNK - 1) / MSH_HASH_CHUNK;
            msh_k_digest<<<grid_for(nc), MSH_THREADS, 0, e->st[s]>>>(e->d_in[s], len[s],
                                                                     (uint64_t *)e->d_out[s], nc);
            break;
        }
        }
        range_pop(e);
        CUDA_TRY(cudaGetLastError());
        size_t ob = out_bytes(job->kind, len[s]);
        if (ob) {
            range_push(e, "copy out");
            CUDA_TRY(
                cudaMemcpyAsync(e->h_out[s], e->d_out[s], ob, cudaMemcpyDeviceToHost, e->st[s]));
            range_pop(e);
        }
    }
    if (rc == 0) {
        CUDA_TRY(cudaDeviceSynchronize());
        if (job->kind == MSH_CUDA_FP16) {
            unsigned long long c = 0;
            CUDA_TRY(cudaMemcpy(&c, e->d_clamped, sizeof c, cudaMemcpyDeviceToHost));
            job->clamped = c;
        }
        if (job->kind == MSH_CUDA_ABSMAX)
            CUDA_TRY(cudaMemcpy(job->absmax, d_absmax, (size_t)job->channels * sizeof(int),
                                cudaMemcpyDeviceToHost));
    } else {
        cudaStreamSynchronize(e->st[0]);
        cudaStreamSynchronize(e->st[1]);
    }
    cudaFree(d_scales);
    cudaFree(d_absmax);
    return rc;
cuda_fail:
    cudaStreamSynchronize(e->st[0]);
    cudaStreamSynchronize(e->st[1]);
    cudaFree(d_scales);
    cudaFree(d_absmax);
    return -1;
}

extern "C" float msh_cuda_time_kernel(int kind, size_t bytes) {
    uint8_t *d_in = NULL, *d_out = NULL;
    float *d_scales = NULL;
    int *d_absmax = NULL;
    unsigned long long *d_c = NULL;
    float best[5];
    cudaEvent_t t0 = NULL, t1 = NULL;
    float r = -1.0f;
    size_t n = bytes / 4;
    if (cudaMalloc(&d_in, bytes) != cudaSuccess || cudaMalloc(&d_out, bytes) != cudaSuccess ||
        cudaMalloc(&d_scales, 768 * sizeof(float)) != cudaSuccess ||
        cudaMalloc(&d_absmax, 768 * sizeof(int)) != cudaSuccess ||
        cudaMalloc(&d_c, sizeof *d_c) != cudaSuccess || cudaEventCreate(&t0) != cudaSuccess ||
        cudaEventCreate(&t1) != cudaSuccess)
        goto done;
    cudaMemset(d_in, 0x3c, bytes);
    cudaMemset(d_scales, 0x3c, 768 * sizeof(float));
    cudaMemset(d_absmax, 0, 768 * sizeof(int));
    for (int it = 0; it < 5; it++) {
        cudaEventRecord(t0);
        switch (kind) {
        case MSH_CUDA_FP16:
            msh_k_f16<<<grid_for(n), MSH_THREADS>>>((const uint32_t *)d_in, (uint16_t *)d_out, n,
                                                    MSH_F16_MIN_SUBNORMAL_BITS, MSH_F16_MAX_BITS,
                                                    d_c);
            break;
        case MSH_CUDA_BF16:
            msh_k_bf16<<<grid_for(n), MSH_THREADS>>>((const uint32_t *)d_in, (uint16_t *)d_out, n);
            break;
        case MSH_CUDA_INT8:
            msh_k_int8<<<grid_for(n), MSH_THREADS>>>((const float *)d_in, (int8_t *)d_out, n, 0, 1,
                                                     768, d_scales);
            break;
        case MSH_CUDA_ABSMAX:
            msh_k_absmax<<<grid_for(n), MSH_THREADS>>>((const float *)d_in, n, 0, 1, 768, d_absmax);
            break;
        default: {
            size_t nc = (bytes + MSH_HASH_CHUNK - 1) / MSH_HASH_CHUNK;
            msh_k_digest<<<grid_for(nc), MSH_THREADS>>>(d_in, bytes, (uint64_t *)d_out, nc);
        }
        }
        cudaEventRecord(t1);
        if (cudaEventSynchronize(t1) != cudaSuccess)
            goto done;
        cudaEventElapsedTime(&best[it], t0, t1);
    }
    for (int i = 1; i < 5; i++) /* insertion sort: the median of five */
        for (int j = i; j > 0 && best[j] < best[j - 1]; j--) {
            float t = best[j];
            best[j] = best[j - 1];
            best[j - 1] = t;
        }
    r = best[2];
done:
    cudaFree(d_in);
    cudaFree(d_out);
    cudaFree(d_scales);
    cudaFree(d_absmax);
    cudaFree(d_c);
    if (t0)
        cudaEventDestroy(t0);
    if (t1)
        cudaEventDestroy(t1);
    return r;
}
