/* The INT4 clipping search through the engine: the CUDA backend (or, with MSH_TEST_DEVICE, the
 * test device that stands in for it) writes the CPU backend's (lo, hi) for every block, bit for
 * bit, for blocks of 32, 64 and 128, symmetric and asymmetric, FP32 / FP16 / BF16 stored scales,
 * whatever the staging size, with and without verification; and the CPU engine's blocks are the
 * per-block function's. Exit 77 (skip) without a device. */
#include <stdio.h>
#include <stdlib.h>

#include "engine/msh_engine.h"
#include "modelshrink.h"
#include "test_check.h"

int main(void) {
    if (msh_cuda_device_count() == 0) {
        printf("no CUDA device (or built without CUDA): skipped\n");
        return 77;
    }
    const int64_t rows = 601, cols = 384; /* 230784 values: not a multiple of any staging */
    const size_t n = (size_t)(rows * cols);
    float *w = malloc(4 * n);
    uint32_t r = 11;
    for (size_t i = 0; i < n; i++) {
        r = r * 1664525u + 1013904223u;
        float u = ((float)(r >> 8) / 16777216.0f - 0.5f) * 0.04f;
        if (i % 61 == 0)
            u *= 9.0f; /* outliers: clipping wins there */
        if (i % 997 == 0)
            u = (i / 997) % 2 ? __builtin_nanf("") : __builtin_inff();
        if ((i / 128) % 50 == 7)
            u = 0.0f; /* all-zero blocks */
        w[i] = u;
    }
    msh_src src;
    memset(&src, 0, sizeof src);
    src.kind = MSH_SRC_MEMORY;
    src.mem = (const uint8_t *)w;
    src.length = (int64_t)(4 * n);
    size_t stagings[] = {65536, 3 * 65536, (size_t)64 << 20};
    static const int blocks[3] = {32, 64, 128}, stores[3] = {0, 10, 16};
    int64_t clipped = 0, seen = 0;
    for (size_t si = 0; si < 3; si++)
        for (int verify = 0; verify < 2; verify++) {
            msh_engine_opts o;
            memset(&o, 0, sizeof o);
            msh_f16_bounds_default(&o.f16);
            o.staging = stagings[si];
            o.verify = verify;
            msh_engine *cpu = NULL, *gpu = NULL;
            msh_error e;
            o.backend = MSH_BACKEND_CPU;
            CHECK(msh_engine_open(&o, &cpu, &e) == MSH_OK, "cpu engine: %s", e.msg);
            o.backend = MSH_BACKEND_CUDA;
            CHECK(msh_engine_open(&o, &gpu, &e) == MSH_OK, "cuda engine: %s", e.msg);
            if (!cpu || !gpu)
                return 1;
            msh_job jc[18], jg[18];
            float *oc[18], *og[18];
            int64_t nbk[18];
            memset(jc, 0, sizeof jc);
            for (int k = 0; k < 18; k++) {
                int B = blocks[k % 3];
                nbk[k] = rows * (cols / B);
                oc[k] = calloc((size_t)(2 * nbk[k]), sizeof(float));
                og[k] = calloc((size_t)(2 * nbk[k]), sizeof(float));
                jc[k].src = &src;
                jc[k].nbytes = (int64_t)(4 * n);
                jc[k].op = MSH_OP_Q4SEARCH;
                jc[k].q4.cols = cols;
                jc[k].q4.block = B;
                jc[k].q4.axis = 1;
                jc[k].q4.asym = (k / 3) % 2;
                jc[k].q4_store = stores[k / 6];
                jc[k].name = "w";
                jg[k] = jc[k];
                jc[k].q4_stats = oc[k];
                jg[k].q4_stats = og[k];
            }
            CHECK(msh_engine_scan(cpu, jc, 18, &e) == MSH_OK, "cpu scan: %s", e.msg);
            CHECK(msh_engine_scan(gpu, jg, 18, &e) == MSH_OK, "gpu scan (staging %zu): %s",
                  stagings[si], e.msg);
            for (int k = 0; k < 18; k++) {
                size_t bytes = (size_t)(2 * nbk[k]) * sizeof(float);
                CHECK(memcmp(oc[k], og[k], bytes) == 0,
                      "job %d (block %d, asym %d, store %d, staging %zu, verify %d): the device's "
                      "blocks differ",
                      k, blocks[k % 3], (k / 3) % 2, stores[k / 6], stagings[si], verify);
                if (si == 0 && verify == 0) {
                    int B = blocks[k % 3], ok = 1;
                    for (int64_t b = 0; b < nbk[k]; b++) {
                        float l, h;
                        int i =
                            msh_int4_search_ref(w + b * B, B, (k / 3) % 2, stores[k / 6], &l, &h);
                        ok &= l == oc[k][2 * b] && h == oc[k][2 * b + 1];
                        clipped += i != 0;
                        seen++;
                    }
                    CHECK(ok, "job %d: the CPU engine's blocks are not the per-block search's", k);
                }
                free(oc[k]);
                free(og[k]);
            }
            msh_engine_close(cpu);
            msh_engine_close(gpu);
        }
    CHECK(clipped > seen / 20 && clipped < seen, "%lld of %lld blocks clipped", (long long)clipped,
          (long long)seen);
    free(w);
    printf("%s\n", fails ? "FAILED" : "ok: the device's search equals the CPU's");
    return fails != 0;
}
