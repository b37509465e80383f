/* The engine on the CUDA backend gives the CPU backend's bytes for every job kind, whatever the
 * staging size (so however tensors are split into pieces), with and without verification.
 * Exit 77 (skip) without a device. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "engine/msh_engine.h"
#include "kernels/msh_hash.h"
#include "modelshrink.h"
#include "test_check.h"

static msh_job mk(const msh_src *src, int64_t n, msh_op op, const float *scales, int64_t inner,
                  int64_t channels, const char *name, float *absmax) {
    msh_job j;
    memset(&j, 0, sizeof j);
    j.src = src;
    j.nbytes = n;
    j.op = op;
    j.scales = scales;
    j.inner = inner;
    j.channels = channels;
    j.name = name;
    j.absmax = absmax;
    return j;
}

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)len + 1);
    *n = fread(b, 1, (size_t)len, f);
    fclose(f);
    return b;
}

/* Convert `n` FP32 values with the jobs' ops on one engine: outputs concatenated into `out`,
 * clamp counts and channel maxima into the jobs. */
static int run_all(msh_engine *g, msh_job *jobs, size_t nj, const char *path, uint8_t **out,
                   size_t *out_n) {
    msh_error e;
    msh_run *r;
    msh_sink s;
    if (msh_sink_open(&s, path, &e) != MSH_OK || msh_run_start(g, jobs, nj, &r, &e) != MSH_OK) {
        printf("FAIL: %s\n", e.msg);
        return 0;
    }
    msh_status st = MSH_OK;
    for (size_t k = 0; k < nj && st == MSH_OK; k++)
        st = msh_run_take(r, k, &s, &e);
    msh_run_end(r, NULL);
    if (st == MSH_OK)
        st = msh_sink_finish(&s, &e);
    if (st == MSH_OK)
        st = msh_sink_rename(&s, &e);
    msh_sink_abort(&s);
    if (st != MSH_OK) {
        printf("FAIL: %s\n", e.msg);
        return 0;
    }
    *out = slurp(path, out_n);
    return *out != NULL;
}

int main(void) {
    if (msh_cuda_device_count() == 0) {
        printf("no CUDA device (or built without CUDA): skipped\n");
        return 77;
    }
    const size_t n = (size_t)3 * 65536 * 5 + 4 * 37; /* FP32 values, not a multiple of anything */
    uint32_t *w = malloc(4 * n);
    uint32_t r = 7;
    for (size_t i = 0; i < n; i++) {
        r = r * 1664525u + 1013904223u;
        w[i] = (i % 97 == 0) ? 0x7FC00000u : (i % 89 == 0) ? 0x477FF800u : r; /* NaN, 65528 */
    }
    msh_src src;
    memset(&src, 0, sizeof src);
    src.kind = MSH_SRC_MEMORY;
    src.mem = (const uint8_t *)w;
    src.length = (int64_t)(4 * n);
    float scales[640];
    for (int i = 0; i < 640; i++)
        scales[i] = 0.001f * (float)(i + 1);
    size_t stagings[] = {65536, 3 * 65536, (size_t)64 << 20};
    char path[64];
    snprintf(path, sizeof path, "/tmp/msh-gpu-engine-%ld.bin", (long)getpid());
    for (size_t si = 0; si < 3; si++)
        for (int verify = 0; verify < 2; verify++) {
            msh_engine_opts o;
            memset(&o, 0, sizeof o);
            msh_f16_bounds_default(&o.f16);
            o.staging = stagings[si];
            o.verify = verify;
            msh_engine *cpu, *gpu;
            msh_error e;
            o.backend = MSH_BACKEND_CPU;
            CHECK(msh_engine_open(&o, &cpu, &e) == MSH_OK, "cpu engine: %s", e.msg);
            o.backend = MSH_BACKEND_CUDA;
            CHECK(msh_engine_open(&o, &gpu, &e) == MSH_OK, "cuda engine: %s", e.msg);
            float am_c[2][640], am_g[2][640];
            memset(am_c, 0, sizeof am_c);
            memset(am_g, 0, sizeof am_g);
            msh_job base[] = {
                mk(&src, (int64_t)(4 * n), MSH_OP_F16, NULL, 0, 0, "f16", NULL),
                mk(&src, (int64_t)(4 * n), MSH_OP_BF16, NULL, 0, 0, "bf16", NULL),
                mk(&src, (int64_t)(4 * n), MSH_OP_INT8, scales, 1, 640, "int8 rows", NULL),
                mk(&src, (int64_t)(4 * n), MSH_OP_INT8, scales, 517, 9, "int8 conv", NULL),
                mk(&src, (int64_t)(4 * n), MSH_OP_COPY, NULL, 0, 0, "copy", NULL),
            };
            size_t nb = sizeof base / sizeof base[0];
            msh_job jc[5], jg[5];
            memcpy(jc, base, sizeof base);
            memcpy(jg, base, sizeof base);
            uint8_t *oc = NULL, *og = NULL;
            size_t nc = 0, ng = 0;
            CHECK(run_all(cpu, jc, nb, path, &oc, &nc), "cpu run");
            CHECK(run_all(gpu, jg, nb, path, &og, &ng), "gpu run (staging %zu)", stagings[si]);
            CHECK(oc && og && nc == ng && memcmp(oc, og, nc) == 0,
                  "converted bytes differ (staging %zu, verify %d)", stagings[si], verify);
            CHECK(jc[0].clamped == jg[0].clamped, "clamp counts differ");
            CHECK(jc[0].range.nonzero == jg[0].range.nonzero &&
                      jc[0].range.below == jg[0].range.below &&
                      jc[0].range.above == jg[0].range.above &&
                      jc[0].range.max_bits == jg[0].range.max_bits && jc[0].range.above > 0,
                  "range tests differ (or found nothing above 65504)");
            free(oc);
            free(og);
            /* scans: channel maxima for two layouts, and the digest */
            msh_job sc[] = {
                mk(&src, (int64_t)(4 * n), MSH_OP_ABSMAX, NULL, 1, 640, "am", am_c[0]),
                mk(&src, (int64_t)(4 * n), MSH_OP_ABSMAX, NULL, 517, 9, "am9", am_c[1]),
                mk(&src, (int64_t)(4 * n), MSH_OP_DIGEST, NULL, 0, 0, "digest", NULL),
            };
            msh_job sg[3];
            memcpy(sg, sc, sizeof sc);
            sg[0].absmax = am_g[0];
            sg[1].absmax = am_g[1];
            CHECK(msh_engine_scan(cpu, sc, 3, &e) == MSH_OK, "cpu scan: %s", e.msg);
            CHECK(msh_engine_scan(gpu, sg, 3, &e) == MSH_OK, "gpu scan: %s", e.msg);
            CHECK(memcmp(am_c, am_g, sizeof am_c) == 0, "channel maxima differ");
            CHECK(sc[2].digest == sg[2].digest, "digests differ");
            uint64_t ref;
            CHECK(msh_tensor_digest_ref(w, 4 * n, &ref) == MSH_OK && ref == sg[2].digest,
                  "the GPU digest is not the reference digest");
            msh_engine_close(cpu);
            msh_engine_close(gpu);
        }
    unlink(path);
    free(w);
    printf("%s\n", fails ? "FAILED" : "ok: the CUDA backend equals the CPU backend");
    return fails != 0;
}
