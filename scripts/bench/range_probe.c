/* What the FP16 range test costs the conversion kernel: msh_f32_to_f16_buf alone against
 * msh_f32_to_f16_range_buf (conversion and range test in one pass), on 1 MiB pieces in cache,
 * the engine's piece size. Prints "convert GB/s, convert+range GB/s, extra %", per round.
 * Built and run by scripts/bench/cases_traps.py (case range-cost). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/msh_cpu.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 3000;
    size_t n = (size_t)1 << 18; /* 1 MiB of FP32 */
    float *src = malloc(n * 4);
    uint16_t *dst = malloc(n * 2);
    if (!src || !dst)
        return 1;
    srand(1);
    for (size_t i = 0; i < n; i++) /* trained-weight scale, a few values beyond FP16 */
        src[i] = (i % 4096 == 0) ? 1e5f : ((float)rand() / (float)RAND_MAX - 0.5f) * 0.1f;
    msh_f16_bounds b;
    msh_f16_bounds_default(&b);
    msh_f16_range r;
    uint64_t sink = 0;
    for (int round = 0; round < 3; round++) {
        double t0 = now();
        for (int i = 0; i < reps; i++)
            sink += msh_f32_to_f16_buf((const uint8_t *)src, (uint8_t *)dst, n, &b);
        double t1 = now();
        for (int i = 0; i < reps; i++) {
            memset(&r, 0, sizeof r);
            sink += msh_f32_to_f16_range_buf((const uint8_t *)src, (uint8_t *)dst, n, &b, &r);
        }
        double t2 = now();
        double bytes = (double)reps * (double)n * 4.0;
        printf("%.2f %.2f %.1f\n", bytes / (t1 - t0) / 1e9, bytes / (t2 - t1) / 1e9,
               100.0 * ((t2 - t1) / (t1 - t0) - 1.0));
    }
    return (int)(sink & 0) + (r.above == 0);
}
