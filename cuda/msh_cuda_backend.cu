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
/* max|w| per touched channel of one piece: entry k is channel (row0 + k) % channels. Maxima of
 * non-negative floats compare like their bit patterns as ints, so atomicMax on the bits is exact
 * and order-free. */
__global__ void msh_k_absmax(const float *in, size_t n, int64_t first, int64_t inner, int64_t row0,
                             int64_t t, int *part_bits) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float a = msh_absmax_step(0.0f, in[i]);
        if (a > 0.0f) {
            int64_t k = ((first + (int64_t)i) / inner - row0) % t;
            atomicMax(&part_bits[k], __float_as_int(a));
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

/* ---- the backend: two slots, each with its own stream and event ---- */

typedef struct cuda_slot {
    uint8_t *h_in, *h_out;
    uint8_t *d_in, *d_out;
    float *d_scales;
    size_t scales_cap;
    int *d_part;
    unsigned long long *d_clamped, *h_clamped;
    cudaStream_t st;
    cudaEvent_t done;
} cuda_slot;

struct msh_cuda_be {
    size_t staging;
    cuda_slot s[2];
    nvtxDomainHandle_t nvtx;
};

static void range_push(msh_cuda_be *b, const char *what) {
    nvtxEventAttributes_t a;
    memset(&a, 0, sizeof a);
    a.version = NVTX_VERSION;
    a.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    a.messageType = NVTX_MESSAGE_TYPE_ASCII;
    a.message.ascii = what;
    nvtxDomainRangePushEx(b->nvtx, &a);
}

static void range_pop(msh_cuda_be *b) {
    nvtxDomainRangePop(b->nvtx);
}

#define CUDA_TRY(call)                                                                             \
    do {                                                                                           \
        cudaError_t ce_ = (call);                                                                  \
        if (ce_ != cudaSuccess) {                                                                  \
            snprintf(err, err_cap, "CUDA: %s (%s)", cudaGetErrorString(ce_), #call);               \
            goto cuda_fail;                                                                        \
        }                                                                                          \
    } while (0)

extern "C" void msh_cuda_be_free(msh_cuda_be *b) {
    if (!b)
        return;
    for (int i = 0; i < 2; i++) {
        cuda_slot *s = &b->s[i];
        if (s->st)
            cudaStreamSynchronize(s->st);
        if (s->st)
            cudaStreamDestroy(s->st);
        if (s->done)
            cudaEventDestroy(s->done);
        cudaFreeHost(s->h_in);
        cudaFreeHost(s->h_out);
        cudaFreeHost(s->h_clamped);
        cudaFree(s->d_in);
        cudaFree(s->d_out);
        cudaFree(s->d_scales);
        cudaFree(s->d_part);
        cudaFree(s->d_clamped);
    }
    if (b->nvtx)
        nvtxDomainDestroy(b->nvtx);
    free(b);
}

extern "C" int msh_cuda_be_new(size_t staging, msh_cuda_be **out, char *err, size_t err_cap) {
    *out = NULL;
    staging = (staging + MSH_HASH_CHUNK - 1) / MSH_HASH_CHUNK * MSH_HASH_CHUNK;
    if (staging < MSH_HASH_CHUNK)
        staging = MSH_HASH_CHUNK;
    msh_cuda_be *b = (msh_cuda_be *)calloc(1, sizeof *b);
    if (!b) {
        snprintf(err, err_cap, "out of memory");
        return -1;
    }
    b->staging = staging;
    b->nvtx = nvtxDomainCreateA("modelshrink");
    for (int i = 0; i < 2; i++) {
        cuda_slot *s = &b->s[i];
        CUDA_TRY(cudaMallocHost((void **)&s->h_in, staging));
        CUDA_TRY(cudaMallocHost((void **)&s->h_out, staging));
        CUDA_TRY(cudaMallocHost((void **)&s->h_clamped, sizeof *s->h_clamped));
        CUDA_TRY(cudaMalloc((void **)&s->d_in, staging));
        CUDA_TRY(cudaMalloc((void **)&s->d_out, staging));
        CUDA_TRY(cudaMalloc((void **)&s->d_part, staging));
        CUDA_TRY(cudaMalloc((void **)&s->d_clamped, sizeof *s->d_clamped));
        CUDA_TRY(cudaStreamCreateWithFlags(&s->st, cudaStreamNonBlocking));
        CUDA_TRY(cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming));
    }
    *out = b;
    return 0;
cuda_fail:
    msh_cuda_be_free(b);
    return -1;
}

extern "C" size_t msh_cuda_be_staging(const msh_cuda_be *b) {
    return b->staging;
}

extern "C" uint8_t *msh_cuda_be_in(msh_cuda_be *b, int slot) {
    return b->s[slot].h_in;
}

extern "C" const uint8_t *msh_cuda_be_out(msh_cuda_be *b, int slot) {
    return b->s[slot].h_out;
}

extern "C" int msh_cuda_be_submit(msh_cuda_be *b, int slot, msh_cuda_piece *p, char *err,
                                  size_t err_cap) {
    cuda_slot *s = &b->s[slot];
    size_t cnt = p->n / 4;
    size_t ob = 0;
    range_push(b, "submit");
    CUDA_TRY(cudaMemcpyAsync(s->d_in, s->h_in, p->n, cudaMemcpyHostToDevice, s->st));
    switch (p->kind) {
    case MSH_CUDA_FP16:
        CUDA_TRY(cudaMemsetAsync(s->d_clamped, 0, sizeof *s->d_clamped, s->st));
        msh_k_f16<<<grid_for(cnt), MSH_THREADS, 0, s->st>>>(
            (const uint32_t *)s->d_in, (uint16_t *)s->d_out, cnt, p->f16_min_abs, p->f16_max_abs,
            s->d_clamped);
        CUDA_TRY(cudaGetLastError());
        CUDA_TRY(cudaMemcpyAsync(s->h_clamped, s->d_clamped, sizeof *s->d_clamped,
                                 cudaMemcpyDeviceToHost, s->st));
        ob = cnt * 2;
        break;
    case MSH_CUDA_BF16:
        msh_k_bf16<<<grid_for(cnt), MSH_THREADS, 0, s->st>>>((const uint32_t *)s->d_in,
                                                             (uint16_t *)s->d_out, cnt);
        CUDA_TRY(cudaGetLastError());
        ob = cnt * 2;
        break;
    case MSH_CUDA_INT8:
        if ((size_t)p->channels > s->scales_cap) {
            CUDA_TRY(cudaStreamSynchronize(s->st));
            cudaFree(s->d_scales);
            s->d_scales = NULL;
            s->scales_cap = 0;
            CUDA_TRY(cudaMalloc((void **)&s->d_scales, (size_t)p->channels * sizeof(float)));
            s->scales_cap = (size_t)p->channels;
        }
        /* on the slot's own stream: ordered before this piece's kernel, after the last one's */
        CUDA_TRY(cudaMemcpyAsync(s->d_scales, p->scales, (size_t)p->channels * sizeof(float),
                                 cudaMemcpyHostToDevice, s->st));
        msh_k_int8<<<grid_for(cnt), MSH_THREADS, 0, s->st>>>((const float *)s->d_in,
                                                             (int8_t *)s->d_out, cnt, p->first,
                                                             p->inner, p->channels, s->d_scales);
        CUDA_TRY(cudaGetLastError());
        ob = cnt;
        break;
    case MSH_CUDA_ABSMAX:
        CUDA_TRY(cudaMemsetAsync(s->d_part, 0, (size_t)p->t * sizeof(int), s->st));
        msh_k_absmax<<<grid_for(cnt), MSH_THREADS, 0, s->st>>>(
            (const float *)s->d_in, cnt, p->first, p->inner, p->row0, p->t, s->d_part);
        CUDA_TRY(cudaGetLastError());
        CUDA_TRY(cudaMemcpyAsync(s->h_out, s->d_part, (size_t)p->t * sizeof(int),
                                 cudaMemcpyDeviceToHost, s->st));
        p->out_n = (size_t)p->t * 4;
        break;
    default: {
        size_t nc = (p->n + MSH_HASH_CHUNK - 1) / MSH_HASH_CHUNK;
        msh_k_digest<<<grid_for(nc), MSH_THREADS, 0, s->st>>>(s->d_in, p->n, (uint64_t *)s->d_out,
                                                              nc);
        CUDA_TRY(cudaGetLastError());
        ob = nc * 8;
        break;
    }
    }
    if (ob) {
        CUDA_TRY(cudaMemcpyAsync(s->h_out, s->d_out, ob, cudaMemcpyDeviceToHost, s->st));
        p->out_n = ob;
    }
    CUDA_TRY(cudaEventRecord(s->done, s->st));
    range_pop(b);
    return 0;
cuda_fail:
    range_pop(b);
    return -1;
}

extern "C" int msh_cuda_be_wait(msh_cuda_be *b, int slot, msh_cuda_piece *p, char *err,
                                size_t err_cap) {
    cuda_slot *s = &b->s[slot];
    range_push(b, "wait");
    CUDA_TRY(cudaEventSynchronize(s->done));
    p->clamped = p->kind == MSH_CUDA_FP16 ? (uint64_t)*s->h_clamped : 0;
    range_pop(b);
    return 0;
cuda_fail:
    range_pop(b);
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
            msh_k_absmax<<<grid_for(n), MSH_THREADS>>>((const float *)d_in, n, 0, 1, 0, 768,
                                                       d_absmax);
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
