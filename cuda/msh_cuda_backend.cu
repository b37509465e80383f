/* The streaming CUDA driver and its kernels. Kernels compute indices and call the MSH_HD scalar
 * functions of msh_scalar.h; they never re-derive the math. Built with --fmad=false. */
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>
#include <stdio.h>
#include <string.h>

#include "kernels/msh_index.h"
#include "kernels/msh_scalar.h"
#include "msh_cuda.h"

#define MSH_THREADS 256
#define MSH_MAX_BLOCKS 4096

/* ---- kernels ---- */

/* FP16 conversion, and the counts the precision plan reads: stats[0] values clamped, [1]
 * non-zero finite, [2] below FP16's normal range, [3] above its largest value, [4] the largest
 * finite magnitude's bits. Counts are summed per thread, then per warp, then one atomic each. */
__global__ void msh_k_f16(const uint32_t *in, uint16_t *out, size_t n, uint32_t mn, uint32_t mx,
                          unsigned long long *stats) {
    unsigned c = 0, nz = 0, lo = 0, hi = 0, big = 0;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t rounds = (n + stride - 1) / stride;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (size_t r = 0; r < rounds; r++, i += stride) {
        if (i >= n)
            continue;
        int k;
        uint32_t x = in[i];
        out[i] = msh_f32_to_f16_ref(x, mn, mx, &k);
        c += (unsigned)k;
        int rc = msh_f16_range_class(x);
        nz += rc != 0;
        lo += rc == 2;
        hi += rc == 3;
        if (rc != 0 && (x & 0x7FFFFFFFu) > big)
            big = x & 0x7FFFFFFFu;
    }
    c = __reduce_add_sync(0xFFFFFFFFu, c);
    nz = __reduce_add_sync(0xFFFFFFFFu, nz);
    lo = __reduce_add_sync(0xFFFFFFFFu, lo);
    hi = __reduce_add_sync(0xFFFFFFFFu, hi);
    big = __reduce_max_sync(0xFFFFFFFFu, big);
    if ((threadIdx.x & 31u) == 0) {
        if (c)
            atomicAdd(&stats[0], (unsigned long long)c);
        if (nz)
            atomicAdd(&stats[1], (unsigned long long)nz);
        if (lo)
            atomicAdd(&stats[2], (unsigned long long)lo);
        if (hi)
            atomicAdd(&stats[3], (unsigned long long)hi);
        if (big)
            atomicMax(&stats[4], (unsigned long long)big);
    }
}

__global__ void msh_k_bf16(const uint32_t *in, uint16_t *out, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = msh_f32_to_bf16_ref(in[i]);
}

/* The channel of element i of a piece: (row0 + (off0 + i) / inner) % channels, where row0 and off0
 * place the piece's first element. With 32-bit arguments (every tensor but the very largest) the
 * two divisions are multiply-highs by launch-fixed magic numbers; otherwise plain 64-bit
 * division. */
typedef struct chan_map {
    int fast;
    uint32_t off0, row0;
    msh_fastdiv inner, channels;
    int64_t first, inner64, channels64;
} chan_map;

static chan_map chan_map_make(int64_t first, int64_t inner, int64_t channels, size_t n) {
    chan_map c;
    memset(&c, 0, sizeof c);
    c.first = first;
    c.inner64 = inner;
    c.channels64 = channels;
    int64_t off0 = first % inner, row0 = (first / inner) % channels;
    c.fast = inner < ((int64_t)1 << 31) && channels < ((int64_t)1 << 31) &&
             off0 + (int64_t)n < ((int64_t)1 << 32) &&
             row0 + (off0 + (int64_t)n) / inner < ((int64_t)1 << 32);
    if (c.fast) {
        c.off0 = (uint32_t)off0;
        c.row0 = (uint32_t)row0;
        c.inner = msh_fastdiv_make((uint32_t)inner);
        c.channels = msh_fastdiv_make((uint32_t)channels);
    }
    return c;
}

__device__ static inline uint32_t chan_of(const chan_map &c, size_t i) {
    if (c.fast)
        return msh_fastdiv_mod(c.row0 + msh_fastdiv_div(c.off0 + (uint32_t)i, c.inner), c.channels);
    return (uint32_t)(((c.first + (int64_t)i) / c.inner64) % c.channels64);
}

__global__ void msh_k_int8(const float *in, int8_t *out, size_t n, chan_map cm,
                           const float *scales) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = msh_int8_quant_ref(in[i], scales[chan_of(cm, i)]);
}

/* 4-bit blockwise: one thread per output byte (two values); block indices are relative to b0,
 * the first block of the piece. */
__global__ void msh_k_int4(const float *in, uint8_t *out, size_t n, int64_t first, int64_t cols,
                           int64_t block, int axis, int asym, int offset, const float *scales,
                           const uint8_t *zps, int64_t b0) {
    size_t nbytes = (n + 1) / 2;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < nbytes;
         i += (size_t)gridDim.x * blockDim.x) {
        unsigned byte = 0;
        for (int h = 0; h < 2 && 2 * i + (size_t)h < n; h++) {
            size_t e = 2 * i + (size_t)h;
            int64_t b = msh_int4_block_of(first + (int64_t)e, cols, block, axis) - b0;
            byte |= (unsigned)msh_int4_nibble_ref(in[e], scales[b], asym, asym ? zps[b] : 0, offset)
                    << (4 * h);
        }
        out[i] = (uint8_t)byte;
    }
}

/* Block statistics: one thread per touched block, over its values in this piece in index order
 * (min and max are order-free anyway: no atomics, no float reduction order). */
__global__ void msh_k_q4stats(const float *in, size_t n, int64_t first, int64_t cols, int64_t block,
                              int64_t b0, int64_t nb, float *out) {
    int64_t kb = (cols + block - 1) / block;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < nb;
         k += (int64_t)gridDim.x * blockDim.x) {
        int64_t b = b0 + k, r = b / kb, j = b - r * kb;
        int64_t s = r * cols + j * block, e = s + block;
        if (e > r * cols + cols)
            e = r * cols + cols;
        if (s < first)
            s = first;
        if (e > first + (int64_t)n)
            e = first + (int64_t)n;
        float lo = 0.0f, hi = 0.0f;
        for (int64_t x = s; x < e; x++)
            msh_int4_stats_step(&lo, &hi, in[x - first]);
        out[2 * k] = lo;
        out[2 * k + 1] = hi;
    }
}

/* The INT4 clipping search: one warp per block (MSH_THREADS / 32 blocks per thread block at a
 * time). The warp loads the block into shared memory with coalesced loads; lane i < 20 sums
 * candidate i's squared error in element order (msh_int4_search_error: the terms and order of
 * the CPU's sums); the warp then reduces (error, i) with
 * msh_int4_search_better, a strict total order, so the shuffle order cannot change the winner.
 * Blocks hold at most 128 values and lie inside the piece (the engine's contract). */
#define MSH_SEARCH_WARPS (MSH_THREADS / 32)
__global__ void msh_k_q4search(const float *in, size_t n, int64_t first, int64_t cols,
                               int64_t block, int64_t b0, int64_t nb, int asym, int store,
                               float *out) {
    __shared__ float sh[MSH_SEARCH_WARPS][128];
    const int lane = (int)(threadIdx.x & 31u), wi = (int)(threadIdx.x >> 5);
    float *w = sh[wi];
    int64_t kb = (cols + block - 1) / block;
    for (int64_t k = (int64_t)blockIdx.x * MSH_SEARCH_WARPS + wi; k < nb;
         k += (int64_t)gridDim.x * MSH_SEARCH_WARPS) {
        int64_t b = b0 + k, r = b / kb, j = b - r * kb;
        int64_t s = r * cols + j * block, e = s + block;
        if (e > r * cols + cols)
            e = r * cols + cols;
        if (s < first)
            s = first;
        if (e > first + (int64_t)n)
            e = first + (int64_t)n;
        int len = (int)(e - s);
        if (len > 128)
            len = 128;
        for (int x = lane; x < len; x += 32)
            w[x] = in[s - first + x];
        __syncwarp();
        float lo = 0.0f, hi = 0.0f;
        for (int x = 0; x < len; x++)
            msh_int4_stats_step(&lo, &hi, w[x]);
        float err = __int_as_float(0x7f800000), lc = lo, hc = hi;
        int idx = lane; /* lanes past the candidates lose to every candidate (inf, higher i) */
        if (lane < MSH_INT4_SEARCH_STEPS) {
            float d;
            int z;
            msh_int4_search_candidate(lo, hi, lane, asym, store, &lc, &hc, &d, &z);
            err = msh_int4_search_error(w, len, d, asym, z);
        }
        for (int off = 16; off > 0; off >>= 1) {
            float oe = __shfl_xor_sync(0xffffffffu, err, off);
            int oi = __shfl_xor_sync(0xffffffffu, idx, off);
            float ol = __shfl_xor_sync(0xffffffffu, lc, off);
            float oh = __shfl_xor_sync(0xffffffffu, hc, off);
            if (msh_int4_search_better(oe, oi, err, idx)) {
                err = oe;
                idx = oi;
                lc = ol;
                hc = oh;
            }
        }
        if (lane == 0) {
            out[2 * k] = lc;
            out[2 * k + 1] = hc;
        }
        __syncwarp(); /* the next block reuses w */
    }
}

/* max|w| per touched channel of one piece: entry k is channel (row0 + k) % channels, k being the
 * element's row counted from the piece's first row, modulo t. Maxima of non-negative floats
 * compare like their bit patterns as ints, so atomicMax on the bits is exact and order-free. The
 * lanes of a warp that share an entry (all of them, for a Conv weight's long rows) reduce first,
 * so one atomic per entry and warp reaches memory. */
__global__ void msh_k_absmax(const float *in, size_t n, chan_map rows, int64_t t,
                             unsigned *part_bits) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t rounds = (n + stride - 1) / stride; /* every lane of a warp runs every round */
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (size_t r = 0; r < rounds; r++, i += stride) {
        unsigned bits = 0, k = 0xFFFFFFFFu;
        if (i < n) {
            float a = msh_absmax_step(0.0f, in[i]);
            bits = (unsigned)__float_as_int(a);
            k = chan_of(rows, i); /* rows' "channels" are t: entries wrap after t rows */
        }
        unsigned peers = __match_any_sync(0xFFFFFFFFu, k);
        unsigned mx = __reduce_max_sync(peers, bits);
        if (k != 0xFFFFFFFFu && mx && (threadIdx.x & 31u) == (unsigned)(__ffs(peers) - 1))
            atomicMax(&part_bits[k], mx);
    }
    (void)t;
}

/* Leaf digests: one thread per 256-byte leaf, loading it as 16-byte vectors (a leaf starts at a
 * multiple of 256 of a cudaMalloc'd buffer, so the loads are aligned; adjacent threads read
 * adjacent leaves). A short last leaf takes the byte-wise path. */
__global__ void msh_k_leaves(const uint8_t *in, size_t n, uint64_t *leaf, size_t n_leaves) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_leaves;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t off = i * MSH_HASH_LEAF;
        size_t len = n - off < MSH_HASH_LEAF ? n - off : MSH_HASH_LEAF;
        if (len < MSH_HASH_LEAF) {
            leaf[i] = msh_leaf_hash_ref(in + off, len);
            continue;
        }
        const ulonglong2 *q = (const ulonglong2 *)(in + off);
        uint64_t v[4];
        msh_xxh64_init(v, 0);
#pragma unroll
        for (int s = 0; s < (int)(MSH_HASH_LEAF / 32); s++) {
            ulonglong2 a = q[2 * s], b = q[2 * s + 1];
            msh_xxh64_stripe(v, a.x, a.y, b.x, b.y);
        }
        leaf[i] = msh_xxh64_finish(v, 0, in + off + MSH_HASH_LEAF, MSH_HASH_LEAF);
    }
}

/* Chunk digests from the leaf digests (little-endian in device memory): one thread per chunk. */
__global__ void msh_k_chunks(const uint64_t *leaf, size_t n, uint64_t *digests, size_t n_chunks) {
    for (size_t c = (size_t)blockIdx.x * blockDim.x + threadIdx.x; c < n_chunks;
         c += (size_t)gridDim.x * blockDim.x) {
        size_t off = c * MSH_HASH_CHUNK;
        size_t len = n - off < MSH_HASH_CHUNK ? n - off : MSH_HASH_CHUNK;
        size_t nl = (len + MSH_HASH_LEAF - 1) / MSH_HASH_LEAF;
        digests[c] = msh_chunk_combine_ref((const uint8_t *)(leaf + c * MSH_HASH_LEAVES), nl, len);
    }
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
    size_t n_leaves = (n + MSH_HASH_LEAF - 1) / MSH_HASH_LEAF;
    uint8_t *d_data = NULL;
    uint64_t *d_dig = NULL, *d_leaf = NULL;
    cudaError_t ce = cudaMalloc(&d_data, n ? n : 1);
    if (ce == cudaSuccess)
        ce = cudaMalloc(&d_dig, (n_chunks ? n_chunks : 1) * sizeof(uint64_t));
    if (ce == cudaSuccess)
        ce = cudaMalloc(&d_leaf, (n_chunks ? n_chunks : 1) * MSH_HASH_LEAVES * sizeof(uint64_t));
    if (ce == cudaSuccess)
        ce = cudaMemcpy(d_data, host, n, cudaMemcpyHostToDevice);
    if (ce == cudaSuccess && n_chunks) {
        msh_k_leaves<<<grid_for(n_leaves), MSH_THREADS>>>(d_data, n, d_leaf, n_leaves);
        ce = cudaGetLastError();
        if (ce == cudaSuccess) {
            msh_k_chunks<<<grid_for(n_chunks), MSH_THREADS>>>(d_leaf, n, d_dig, n_chunks);
            ce = cudaGetLastError();
        }
        if (ce == cudaSuccess)
            ce = cudaMemcpy(digests, d_dig, n_chunks * sizeof(uint64_t), cudaMemcpyDeviceToHost);
    }
    cudaFree(d_data);
    cudaFree(d_dig);
    cudaFree(d_leaf);
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
    uint8_t *d_zps;
    size_t zps_cap;
    int *d_part;
    unsigned long long *d_clamped, *h_clamped; /* FP16: 5 counters (msh_k_f16) */
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
        cudaFree(s->d_zps);
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
        CUDA_TRY(cudaMallocHost((void **)&s->h_clamped, 5 * sizeof *s->h_clamped));
        CUDA_TRY(cudaMalloc((void **)&s->d_in, staging));
        CUDA_TRY(cudaMalloc((void **)&s->d_out, staging));
        CUDA_TRY(cudaMalloc((void **)&s->d_part, staging));
        CUDA_TRY(cudaMalloc((void **)&s->d_clamped, 5 * sizeof *s->d_clamped));
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
        CUDA_TRY(cudaMemsetAsync(s->d_clamped, 0, 5 * sizeof *s->d_clamped, s->st));
        msh_k_f16<<<grid_for(cnt), MSH_THREADS, 0, s->st>>>(
            (const uint32_t *)s->d_in, (uint16_t *)s->d_out, cnt, p->f16_min_abs, p->f16_max_abs,
            s->d_clamped);
        CUDA_TRY(cudaGetLastError());
        CUDA_TRY(cudaMemcpyAsync(s->h_clamped, s->d_clamped, 5 * sizeof *s->d_clamped,
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
        msh_k_int8<<<grid_for(cnt), MSH_THREADS, 0, s->st>>>(
            (const float *)s->d_in, (int8_t *)s->d_out, cnt,
            chan_map_make(p->first, p->inner, p->channels, cnt), s->d_scales);
        CUDA_TRY(cudaGetLastError());
        ob = cnt;
        break;
    case MSH_CUDA_INT4:
        if ((size_t)p->nb > s->scales_cap) {
            CUDA_TRY(cudaStreamSynchronize(s->st));
            cudaFree(s->d_scales);
            s->d_scales = NULL;
            s->scales_cap = 0;
            CUDA_TRY(cudaMalloc((void **)&s->d_scales, (size_t)p->nb * sizeof(float)));
            s->scales_cap = (size_t)p->nb;
        }
        CUDA_TRY(cudaMemcpyAsync(s->d_scales, p->scales, (size_t)p->nb * sizeof(float),
                                 cudaMemcpyHostToDevice, s->st));
        if (p->q4_asym) {
            if ((size_t)p->nb > s->zps_cap) {
                CUDA_TRY(cudaStreamSynchronize(s->st));
                cudaFree(s->d_zps);
                s->d_zps = NULL;
                s->zps_cap = 0;
                CUDA_TRY(cudaMalloc((void **)&s->d_zps, (size_t)p->nb));
                s->zps_cap = (size_t)p->nb;
            }
            CUDA_TRY(
                cudaMemcpyAsync(s->d_zps, p->zps, (size_t)p->nb, cudaMemcpyHostToDevice, s->st));
        }
        msh_k_int4<<<grid_for((cnt + 1) / 2), MSH_THREADS, 0, s->st>>>(
            (const float *)s->d_in, s->d_out, cnt, p->first, p->q4_cols, p->q4_block, p->q4_axis,
            p->q4_asym, p->q4_offset, s->d_scales, s->d_zps, p->b0);
        CUDA_TRY(cudaGetLastError());
        ob = (cnt + 1) / 2;
        break;
    case MSH_CUDA_Q4STATS:
        msh_k_q4stats<<<grid_for((size_t)p->nb), MSH_THREADS, 0, s->st>>>(
            (const float *)s->d_in, cnt, p->first, p->q4_cols, p->q4_block, p->b0, p->nb,
            (float *)s->d_out);
        CUDA_TRY(cudaGetLastError());
        ob = (size_t)p->nb * 8;
        break;
    case MSH_CUDA_Q4SEARCH:
        msh_k_q4search<<<grid_for((size_t)p->nb * 32), MSH_THREADS, 0, s->st>>>(
            (const float *)s->d_in, cnt, p->first, p->q4_cols, p->q4_block, p->b0, p->nb,
            p->q4_asym, p->q4_store, (float *)s->d_out);
        CUDA_TRY(cudaGetLastError());
        ob = (size_t)p->nb * 8;
        break;
    case MSH_CUDA_ABSMAX:
        CUDA_TRY(cudaMemsetAsync(s->d_part, 0, (size_t)p->t * sizeof(int), s->st));
        /* entry of element i: (first + i) / inner - row0, modulo t (the touched rows) */
        msh_k_absmax<<<grid_for(cnt), MSH_THREADS, 0, s->st>>>(
            (const float *)s->d_in, cnt,
            chan_map_make(p->first - p->row0 * p->inner, p->inner, p->t, cnt), p->t,
            (unsigned *)s->d_part);
        CUDA_TRY(cudaGetLastError());
        CUDA_TRY(cudaMemcpyAsync(s->h_out, s->d_part, (size_t)p->t * sizeof(int),
                                 cudaMemcpyDeviceToHost, s->st));
        p->out_n = (size_t)p->t * 4;
        break;
    default: {
        /* leaf digests into d_part (a piece of P bytes has P / 256 leaves, 8 bytes each: fits),
         * then chunk digests into d_out */
        size_t nc = (p->n + MSH_HASH_CHUNK - 1) / MSH_HASH_CHUNK;
        size_t nl = (p->n + MSH_HASH_LEAF - 1) / MSH_HASH_LEAF;
        msh_k_leaves<<<grid_for(nl), MSH_THREADS, 0, s->st>>>(s->d_in, p->n, (uint64_t *)s->d_part,
                                                              nl);
        CUDA_TRY(cudaGetLastError());
        msh_k_chunks<<<grid_for(nc), MSH_THREADS, 0, s->st>>>((const uint64_t *)s->d_part, p->n,
                                                              (uint64_t *)s->d_out, nc);
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
    p->clamped = 0;
    memset(p->range, 0, sizeof p->range);
    if (p->kind == MSH_CUDA_FP16) {
        p->clamped = (uint64_t)s->h_clamped[0];
        for (int k = 0; k < 4; k++)
            p->range[k] = (uint64_t)s->h_clamped[1 + k];
    }
    range_pop(b);
    return 0;
cuda_fail:
    range_pop(b);
    return -1;
}

#define TIME_TRY(call)                                                                             \
    do {                                                                                           \
        if ((call) != cudaSuccess)                                                                 \
            goto done;                                                                             \
    } while (0)

extern "C" float msh_cuda_time_kernel(int kind, size_t bytes, int64_t inner, int64_t channels) {
    uint8_t *d_in = NULL, *d_out = NULL;
    float *d_scales = NULL;
    unsigned long long *d_c = NULL;
    float best[5];
    cudaEvent_t t0 = NULL, t1 = NULL;
    float r = -1.0f;
    size_t n = bytes / 4;
    if (inner < 1 || channels < 1)
        return -1.0f;
    TIME_TRY(cudaMalloc(&d_in, bytes));
    TIME_TRY(cudaMalloc(&d_out, bytes));
    TIME_TRY(cudaMalloc(&d_scales, (size_t)channels * sizeof(float)));
    TIME_TRY(cudaMalloc(&d_c, 5 * sizeof *d_c));
    TIME_TRY(cudaEventCreate(&t0));
    TIME_TRY(cudaEventCreate(&t1));
    TIME_TRY(cudaMemset(d_in, 0x3c, bytes));
    TIME_TRY(cudaMemset(d_scales, 0x3c, (size_t)channels * sizeof(float)));
    TIME_TRY(cudaMemset(d_out, 0, bytes));
    TIME_TRY(cudaMemset(d_c, 0, 5 * sizeof *d_c));
    for (int it = 0; it < 5; it++) {
        TIME_TRY(cudaEventRecord(t0));
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
            msh_k_int8<<<grid_for(n), MSH_THREADS>>>((const float *)d_in, (int8_t *)d_out, n,
                                                     chan_map_make(0, inner, channels, n),
                                                     d_scales);
            break;
        case MSH_CUDA_Q4SEARCH: /* blocks of `inner` values (32, 64 or 128) along rows */
            msh_k_q4search<<<grid_for(n / (size_t)inner * 32), MSH_THREADS>>>(
                (const float *)d_in, n, 0, inner, inner, 0, (int64_t)n / inner, 0, 0,
                (float *)d_out);
            break;
        case MSH_CUDA_ABSMAX:
            msh_k_absmax<<<grid_for(n), MSH_THREADS>>>((const float *)d_in, n,
                                                       chan_map_make(0, inner, channels, n),
                                                       channels, (unsigned *)d_out);
            break;
        default: {
            size_t nc = (bytes + MSH_HASH_CHUNK - 1) / MSH_HASH_CHUNK;
            size_t nl = (bytes + MSH_HASH_LEAF - 1) / MSH_HASH_LEAF;
            msh_k_leaves<<<grid_for(nl), MSH_THREADS>>>(d_in, bytes, (uint64_t *)d_out, nl);
            TIME_TRY(cudaGetLastError());
            msh_k_chunks<<<grid_for(nc), MSH_THREADS>>>((const uint64_t *)d_out, bytes,
                                                        (uint64_t *)d_out + nl, nc);
        }
        }
        TIME_TRY(cudaGetLastError());
        TIME_TRY(cudaEventRecord(t1));
        TIME_TRY(cudaEventSynchronize(t1));
        TIME_TRY(cudaEventElapsedTime(&best[it], t0, t1));
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
    cudaFree(d_c);
    if (t0)
        cudaEventDestroy(t0);
    if (t1)
        cudaEventDestroy(t1);
    return r;
}
