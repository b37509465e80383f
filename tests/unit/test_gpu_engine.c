/* The CUDA streaming driver gives the CPU reference's bytes for every job kind, whatever the
 * staging size (so however tensors are split into pieces). Exit 77 (skip) without a device. */
#include <stdio.h>
#include <stdlib.h>

#include "kernels/msh_convert.h"
#include "kernels/msh_hash.h"
#include "modelshrink.h"
#include "test_check.h"
#if defined(MSH_HAVE_CUDA)
#include "msh_cuda.h"

typedef struct mem {
    const uint8_t *src;
    uint8_t *out;
    size_t out_at;
} mem;

static int rd(void *ctx, void *dst, size_t n, int64_t off) {
    memcpy(dst, ((mem *)ctx)->src + off, n);
    return 0;
}

static int sk(void *ctx, const void *in, size_t in_n, const void *out, size_t out_n, int64_t off) {
    mem *m = ctx;
    (void)in, (void)in_n, (void)off;
    memcpy(m->out + m->out_at, out, out_n);
    m->out_at += out_n;
    return 0;
}
#endif

int main(void) {
    (void)fails;
    if (msh_cuda_device_count() == 0) {
        printf("no CUDA device (or built without CUDA): skipped\n");
        return 77;
    }
#if defined(MSH_HAVE_CUDA)
    const size_t n = (size_t)3 * 65536 * 5 + 4 * 37; /* FP32 values, not a multiple of anything */
    uint32_t *w = malloc(4 * n);
    uint32_t r = 7;
    for (size_t i = 0; i < n; i++) {
        r = r * 1664525u + 1013904223u;
        w[i] = (i % 97 == 0) ? 0x7FC00000u : (i % 89 == 0) ? 0x477FF800u : r; /* NaN, 65528 */
    }
    uint8_t *gpu = malloc(4 * n), *cpu = malloc(4 * n);
    size_t stagings[] = {65536, 3 * 65536, (size_t)64 << 20};
    msh_f16_bounds b;
    msh_f16_bounds_default(&b);
    for (size_t si = 0; si < 3; si++) {
        char err[256];
        msh_cuda_engine *e;
        if (msh_cuda_engine_new(stagings[si], &e, err, sizeof err) != 0) {
            printf("FAIL: %s\n", err);
            return 1;
        }
        int kinds[3] = {MSH_CUDA_FP16, MSH_CUDA_BF16, MSH_CUDA_INT8};
        int64_t inner_of[2] = {1, 517}, channels_of[2] = {640, 9};
        for (int k = 0; k < 3; k++) {
            for (int layout = 0; layout < (kinds[k] == MSH_CUDA_INT8 ? 2 : 1); layout++) {
                int64_t inner = inner_of[layout], channels = channels_of[layout];
                float *absmax = calloc((size_t)channels, sizeof *absmax);
                float *ref = calloc((size_t)channels, sizeof *ref);
                msh_cuda_job job;
                memset(&job, 0, sizeof job);
                mem m = {(const uint8_t *)w, gpu, 0};
                if (kinds[k] == MSH_CUDA_INT8) {
                    job.kind = MSH_CUDA_ABSMAX;
                    job.nbytes = (int64_t)(4 * n);
                    job.inner = inner;
                    job.channels = channels;
                    job.absmax = absmax;
                    CHECK(msh_cuda_run(e, &job, rd, NULL, &m, err, sizeof err) == 0, "%s", err);
                    msh_int8_absmax((const uint8_t *)w, n, 0, inner, channels, ref);
                    CHECK(memcmp(absmax, ref, (size_t)channels * 4) == 0,
                          "absmax differs (staging %zu, inner %lld)", stagings[si],
                          (long long)inner);
                    for (int64_t c = 0; c < channels; c++)
                        ref[c] = msh_int8_scale_ref(ref[c]);
                }
                memset(&job, 0, sizeof job);
                job.kind = kinds[k];
                job.nbytes = (int64_t)(4 * n);
                job.f16_min_abs = b.min_abs;
                job.f16_max_abs = b.max_abs;
                job.scales = ref;
                job.inner = inner;
                job.channels = channels;
                CHECK(msh_cuda_run(e, &job, rd, sk, &m, err, sizeof err) == 0, "%s", err);
                size_t ob = kinds[k] == MSH_CUDA_INT8 ? n : 2 * n;
                uint64_t clamped = 0;
                if (kinds[k] == MSH_CUDA_FP16)
                    clamped = msh_f32_to_f16_buf_ref((const uint8_t *)w, cpu, n, &b);
                else if (kinds[k] == MSH_CUDA_BF16)
                    msh_f32_to_bf16_buf_ref((const uint8_t *)w, cpu, n);
                else
                    msh_int8_quantize((const uint8_t *)w, cpu, n, 0, inner, channels, ref);
                CHECK(m.out_at == ob && memcmp(gpu, cpu, ob) == 0,
                      "kind %d differs (staging %zu, layout %d)", kinds[k], stagings[si], layout);
                CHECK(kinds[k] != MSH_CUDA_FP16 || job.clamped == clamped, "clamp counts differ");
                free(absmax);
                free(ref);
            }
        }
        /* chunk digests */
        msh_cuda_job job;
        memset(&job, 0, sizeof job);
        job.kind = MSH_CUDA_DIGEST;
        job.nbytes = (int64_t)(4 * n);
        mem m = {(const uint8_t *)w, gpu, 0};
        CHECK(msh_cuda_run(e, &job, rd, sk, &m, err, sizeof err) == 0, "%s", err);
        for (size_t c = 0; c * 65536 < 4 * n; c++) {
            size_t len = 4 * n - c * 65536 < 65536 ? 4 * n - c * 65536 : 65536;
            uint64_t d;
            memcpy(&d, gpu + 8 * c, 8);
            CHECK(d == msh_chunk_hash_ref((const uint8_t *)w + c * 65536, len),
                  "digest of chunk %zu differs", c);
        }
        msh_cuda_engine_free(e);
    }
    free(w);
    free(gpu);
    free(cpu);
    printf("%s\n", fails ? "FAILED" : "ok: the CUDA driver equals the CPU reference");
    return fails != 0;
#else
    return 77;
#endif
}
