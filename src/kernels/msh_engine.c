#include "kernels/msh_engine.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <xxhash.h>

#if defined(MSH_HAVE_CUDA)
#include "msh_cuda.h"

typedef struct run_ctx {
    const msh_engine *g;
    int kind;
    const msh_f16_bounds *b;
    const float *scales;
    int64_t inner, channels;
    msh_engine_read rd;
    msh_engine_write wr;
    void *ctx;
    const char *tensor;
    msh_error *e;
    msh_status st;
    uint8_t *cpu; /* verify: the CPU's bytes for one piece */
    size_t cpu_cap;
    uint64_t cpu_clamped;
    uint64_t *digests;
} run_ctx;

static int cpu_room(run_ctx *r, size_t n) {
    if (n <= r->cpu_cap)
        return 1;
    uint8_t *p = realloc(r->cpu, n);
    if (!p) {
        r->st = msh_fail(r->e, MSH_ERR_NOMEM, "out of memory");
        return 0;
    }
    r->cpu = p;
    r->cpu_cap = n;
    return 1;
}

static int rd_cb(void *arg, void *dst, size_t n, int64_t off) {
    run_ctx *r = arg;
    r->st = r->rd(r->ctx, dst, n, off, r->e);
    return r->st == MSH_OK ? 0 : 1;
}

static int mismatch(run_ctx *r, const uint8_t *gpu, size_t n, size_t width, int64_t first) {
    for (size_t i = 0; i < n; i += width)
        if (memcmp(gpu + i, r->cpu + i, width) != 0) {
            uint64_t a = 0, b = 0;
            memcpy(&a, gpu + i, width);
            memcpy(&b, r->cpu + i, width);
            r->st = msh_fail(r->e, MSH_ERR_VERIFY,
                             "--verify: tensor '%s': element %lld differs: GPU 0x%llx, CPU 0x%llx",
                             r->tensor, (long long)(first + (int64_t)(i / width)),
                             (unsigned long long)a, (unsigned long long)b);
            return 1;
        }
    return 0;
}

static int sink_cb(void *arg, const void *in, size_t in_n, const void *out, size_t out_n,
                   int64_t off) {
    run_ctx *r = arg;
    if (r->kind == MSH_CUDA_DIGEST) {
        size_t nc = out_n / 8;
        memcpy(r->digests + off / (int64_t)MSH_HASH_CHUNK, out, out_n);
        if (r->g->verify) {
            if (!cpu_room(r, out_n))
                return 1;
            for (size_t c = 0; c < nc; c++) {
                size_t at = c * MSH_HASH_CHUNK;
                size_t len = in_n - at < MSH_HASH_CHUNK ? in_n - at : MSH_HASH_CHUNK;
                uint64_t d = msh_chunk_hash_ref((const uint8_t *)in + at, len);
                msh_store_le64(r->cpu + 8 * c, d);
            }
            /* digests travel as native uint64: compare values, not bytes */
            for (size_t c = 0; c < nc; c++) {
                uint64_t gv, cv = msh_load_le64(r->cpu + 8 * c);
                memcpy(&gv, (const uint8_t *)out + 8 * c, 8);
                if (gv != cv) {
                    r->st = msh_fail(
                        r->e, MSH_ERR_VERIFY, "--verify: tensor '%s': digest of chunk %lld differs",
                        r->tensor, (long long)(off / (int64_t)MSH_HASH_CHUNK + (int64_t)c));
                    return 1;
                }
            }
        }
        return 0;
    }
    if (r->g->verify) {
        size_t width = r->kind == MSH_CUDA_INT8 ? 1 : 2;
        if (!cpu_room(r, out_n))
            return 1;
        if (r->kind == MSH_CUDA_FP16)
            r->cpu_clamped += msh_f32_to_f16_buf_ref(in, r->cpu, in_n / 4, r->b);
        else if (r->kind == MSH_CUDA_BF16)
            msh_f32_to_bf16_buf_ref(in, r->cpu, in_n / 4);
        else
            msh_int8_quantize(in, r->cpu, in_n / 4, off / 4, r->inner, r->channels, r->scales);
        if (mismatch(r, out, out_n, width, off / 4))
            return 1;
    }
    r->st = r->wr(r->ctx, out, out_n, r->e);
    return r->st == MSH_OK ? 0 : 1;
}

/* One engine (two streams, two staging buffers) serves the whole process: parallel models
 * take turns on it. */
static pthread_mutex_t g_engine_lock = PTHREAD_MUTEX_INITIALIZER;

static msh_status run(run_ctx *r, msh_cuda_job *job) {
    char err[256];
    r->st = MSH_OK;
    pthread_mutex_lock(&g_engine_lock);
    int rc = msh_cuda_run(r->g->handle, job, rd_cb, job->kind == MSH_CUDA_ABSMAX ? NULL : sink_cb,
                          r, err, sizeof err);
    pthread_mutex_unlock(&g_engine_lock);
    free(r->cpu);
    if (rc == -1)
        return msh_fail(r->e, MSH_ERR_CUDA, "tensor '%s': %s", r->tensor, err);
    return r->st;
}
#endif

msh_status msh_engine_convert(const msh_engine *g, int out_type, int64_t nbytes,
                              const msh_f16_bounds *b, const float *scales, int64_t inner,
                              int64_t channels, msh_engine_read rd, msh_engine_write wr, void *ctx,
                              uint64_t *clamped, const char *tensor, msh_error *e) {
#if defined(MSH_HAVE_CUDA)
    run_ctx r = {g,   out_type, b, scales, inner, channels, rd, wr,
                 ctx, tensor,   e, MSH_OK, NULL,  0,        0,  NULL};
    msh_cuda_job job;
    memset(&job, 0, sizeof job);
    job.kind = out_type;
    job.nbytes = nbytes;
    job.f16_min_abs = b ? b->min_abs : 0;
    job.f16_max_abs = b ? b->max_abs : 0;
    job.scales = scales;
    job.inner = inner;
    job.channels = channels;
    msh_status st = run(&r, &job);
    if (st == MSH_OK && g->verify && out_type == MSH_CUDA_FP16 && job.clamped != r.cpu_clamped)
        st = msh_fail(e, MSH_ERR_VERIFY,
                      "--verify: tensor '%s': %llu values clamped on the GPU, "
                      "%llu on the CPU",
                      tensor, (unsigned long long)job.clamped, (unsigned long long)r.cpu_clamped);
    if (st == MSH_OK && clamped)
        *clamped += job.clamped;
    return st;
#else
    (void)g, (void)out_type, (void)nbytes, (void)b, (void)scales, (void)inner, (void)channels;
    (void)rd, (void)wr, (void)ctx, (void)clamped;
    return msh_fail(e, MSH_ERR_CUDA, "tensor '%s': this build has no CUDA support", tensor);
#endif
}

msh_status msh_engine_absmax(const msh_engine *g, int64_t nbytes, int64_t inner, int64_t channels,
                             float *absmax, msh_engine_read rd, void *ctx, const char *tensor,
                             msh_error *e) {
#if defined(MSH_HAVE_CUDA)
    float *cpu = NULL;
    if (g->verify) {
        /* the CPU maxima, for the comparison below */
        cpu = malloc((size_t)channels * sizeof *cpu);
        uint8_t *buf = malloc((size_t)1 << 22);
        if (!cpu || !buf) {
            free(cpu);
            free(buf);
            return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        }
        memcpy(cpu, absmax, (size_t)channels * sizeof *cpu);
        msh_status st = MSH_OK;
        for (int64_t off = 0; st == MSH_OK && off < nbytes;) {
            size_t n = nbytes - off < ((int64_t)1 << 22) ? (size_t)(nbytes - off) : (size_t)1 << 22;
            st = rd(ctx, buf, n, off, e);
            if (st == MSH_OK)
                msh_int8_absmax(buf, n / 4, off / 4, inner, channels, cpu);
            off += (int64_t)n;
        }
        free(buf);
        if (st != MSH_OK) {
            free(cpu);
            return st;
        }
    }
    run_ctx r = {g,   MSH_CUDA_ABSMAX, NULL, NULL,   inner, channels, rd, NULL,
                 ctx, tensor,          e,    MSH_OK, NULL,  0,        0,  NULL};
    msh_cuda_job job;
    memset(&job, 0, sizeof job);
    job.kind = MSH_CUDA_ABSMAX;
    job.nbytes = nbytes;
    job.inner = inner;
    job.channels = channels;
    job.absmax = absmax;
    msh_status st = run(&r, &job);
    if (st == MSH_OK && cpu)
        for (int64_t c = 0; c < channels; c++)
            if (memcmp(&cpu[c], &absmax[c], 4) != 0) {
                st = msh_fail(e, MSH_ERR_VERIFY,
                              "--verify: tensor '%s': channel %lld maximum differs: GPU %.9g, "
                              "CPU %.9g",
                              tensor, (long long)c, (double)absmax[c], (double)cpu[c]);
                break;
            }
    free(cpu);
    return st;
#else
    (void)g, (void)nbytes, (void)inner, (void)channels, (void)absmax, (void)rd, (void)ctx;
    return msh_fail(e, MSH_ERR_CUDA, "tensor '%s': this build has no CUDA support", tensor);
#endif
}

msh_status msh_engine_digest(const msh_engine *g, int64_t nbytes, msh_engine_read rd, void *ctx,
                             uint64_t *digest, const char *tensor, msh_error *e) {
#if defined(MSH_HAVE_CUDA)
    size_t nc = (size_t)((nbytes + (int64_t)MSH_HASH_CHUNK - 1) / (int64_t)MSH_HASH_CHUNK);
    uint64_t *d = malloc((nc + 1) * sizeof *d);
    uint8_t *le = malloc(nc * 8 + 8);
    if (!d || !le) {
        free(d);
        free(le);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    run_ctx r = {g,   MSH_CUDA_DIGEST, NULL, NULL,   0,    0, rd, NULL,
                 ctx, tensor,          e,    MSH_OK, NULL, 0, 0,  d};
    msh_cuda_job job;
    memset(&job, 0, sizeof job);
    job.kind = MSH_CUDA_DIGEST;
    job.nbytes = nbytes;
    msh_status st = run(&r, &job);
    if (st == MSH_OK) {
        /* combine exactly as the CPU hasher does */
        for (size_t c = 0; c < nc; c++)
            msh_store_le64(le + 8 * c, d[c]);
        *digest = nbytes == 0 ? msh_chunk_hash_ref((const uint8_t *)"", 0)
                              : XXH64(le, nc * 8, (uint64_t)nbytes);
    }
    free(d);
    free(le);
    return st;
#else
    (void)g, (void)nbytes, (void)rd, (void)ctx, (void)digest;
    return msh_fail(e, MSH_ERR_CUDA, "tensor '%s': this build has no CUDA support", tensor);
#endif
}
