/* The CPU driver of the INT4 clipping search (msh_int4_search, msh_cpu.c: AVX2 when the CPU has
 * it and MSH_FORCE_SCALAR is unset, the scalar reference otherwise) against
 * msh_int4_search_ref, bit for bit: each block's clipped (lo, hi) from the driver; and the same
 * block through the driver's per-block search (msh_int4_search_block_test): its index, (lo, hi)
 * and all 20 candidates' squared errors against msh_int4_search_error's (a choice seldom shows
 * a last-bit difference in an error; the errors do). Random tensors with blocks of 32, 64 and 128
 * and ragged rows (every block length 1 .. 128), symmetric and asymmetric, scales kept, FP16 or
 * BF16 stored; values of every magnitude, +-0, subnormals, NaN, +-inf, 1e30, FLT_MAX, and grids
 * whose quotients x / d are exact .5 ties. ctest runs it with and without MSH_FORCE_SCALAR=1. */
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "kernels/msh_cpu.h"
#include "test_check.h"

static uint32_t rs = 2463534242u;
static uint32_t rnd(void) { /* xorshift32 */
    rs ^= rs << 13;
    rs ^= rs >> 17;
    rs ^= rs << 5;
    return rs;
}

static float bits_f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float special(void) {
    static const uint32_t s[] = {0x00000000u, 0x80000000u, 0x7FC00000u, 0xFFC00001u,
                                 0x7F800001u, 0x7F800000u, 0xFF800000u, 0x7F7FFFFFu,
                                 0xFF7FFFFFu, 0x00000001u, 0x807FFFFFu, 0x00400000u};
    uint32_t k = rnd() % 14;
    if (k == 12)
        return rnd() & 1 ? 1e30f : -1e30f;
    if (k == 13) /* a random subnormal */
        return bits_f((rnd() & 0x807FFFFFu) | 1u);
    return bits_f(s[k]);
}

/* One value of a tensor in mode `mode` with exponent `e`. */
static float value(int mode, int e) {
    if (rnd() % 40 == 0)
        return special();
    switch (mode) {
    case 0: { /* any finite magnitude, subnormal to huge */
        int ex = (int)(rnd() % 254) - 126 - 23 + 23 * (int)(rnd() % 2);
        return ldexpf((float)(rnd() % 65536) / 65536.0f - 0.5f, ex > 120 ? 120 : ex);
    }
    case 1: /* halves of a power of two: exact .5 ties of x / d for d = +-2^e */
        return ldexpf((float)((int)(rnd() % 33) - 16) * 0.5f, e);
    case 2: /* subnormals only: BF16-stored scales round to 0 */ return bits_f(rnd() & 0x800000FFu);
    case 3: /* Gaussian-like weights with outliers */
    {
        float u = 0.0f;
        for (int s = 0; s < 4; s++)
            u += (float)(rnd() & 0xFFFF) / 65536.0f - 0.5f;
        return ldexpf(u, e) * (rnd() % 50 == 0 ? 7.0f : 1.0f);
    }
    default: /* every value special */ return special();
    }
}

int main(void) {
    printf("msh_int4_search: %s\n", msh_cpu_has_simd() ? "AVX2" : "scalar");
    static float w[4 * 3 * 128];
    float out[2 * 4 * 3 * 2];
    long blocks = 0, named = 0, zero_d = 0, ties = 0, clipped = 0, bad = 0;
    int seen[129] = {0};
    for (int t = 0; blocks < 150000 || t < 3 * 128 * 6; t++) {
        int B, cols, rows;
        if (t < 3 * 128 * 6) { /* every length 1 .. 128 of each block size: one ragged block */
            B = 32 << (t / (128 * 6));
            cols = 1 + (t / 6) % 128;
            if (cols > B)
                cols = B - (t % 3);
            rows = 1;
        } else {
            B = 32 << (rnd() % 3);
            cols = 1 + (int)(rnd() % (unsigned)(3 * B));
            rows = 1 + (int)(rnd() % 4);
            if ((long)rows * cols > 4 * 3 * 128)
                rows = 1;
        }
        int asym = t % 2, store = (t / 2) % 3 == 0 ? 0 : (t / 2) % 3 == 1 ? 10 : 16;
        int mode = (int)(rnd() % 5), e = (int)(rnd() % 60) - 30;
        size_t n = (size_t)rows * (size_t)cols;
        for (size_t k = 0; k < n; k++)
            w[k] = value(mode, e);
        if (mode == 1 && rnd() % 2) /* a block maximum of 8 * 2^e: d_0 = -+2^e */
            w[rnd() % n] = ldexpf(rnd() % 2 ? 8.0f : -8.0f, e);
        int64_t nb = msh_int4_search((const uint8_t *)w, n, 0, cols, B, asym, store, out);
        int64_t b = 0;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c += B, b++) {
                int len = cols - c < B ? cols - c : B;
                const float *x = w + (size_t)r * (size_t)cols + (size_t)c;
                float lo, hi, cl[20], ch[20], cd[20], slo = 0.0f, shi = 0.0f;
                int cz[20];
                int i = msh_int4_search_ref(x, len, asym, store, &lo, &hi);
                int same = b < nb && memcmp(&out[2 * b], &lo, 4) == 0 &&
                           memcmp(&out[2 * b + 1], &hi, 4) == 0;
                for (int k = 0; k < len; k++)
                    msh_int4_stats_step(&slo, &shi, x[k]);
                int j = -1, distinct = 1;
                for (int s = 0; s < 20; s++) {
                    msh_int4_search_candidate(slo, shi, s, asym, store, &cl[s], &ch[s], &cd[s],
                                              &cz[s]);
                    zero_d += cd[s] == 0.0f;
                    if (j < 0 && b < nb && memcmp(&cl[s], &out[2 * b], 4) == 0 &&
                        memcmp(&ch[s], &out[2 * b + 1], 4) == 0)
                        j = s;
                    for (int u = 0; u < s; u++)
                        distinct &=
                            memcmp(&cl[s], &cl[u], 4) != 0 || memcmp(&ch[s], &ch[u], 4) != 0;
                }
                for (int k = 0; k < len; k++) {
                    float q = x[k] / cd[0];
                    ties += isfinite(q) && q - floorf(q) == 0.5f;
                }
                float bl, bh, be[20];
                int bi = msh_int4_search_block_test(x, len, asym, store, &bl, &bh, be);
                same &= bi == i && memcmp(&bl, &lo, 4) == 0 && memcmp(&bh, &hi, 4) == 0;
                for (int s = 0; s < 20; s++) {
                    float es = msh_int4_search_error(x, len, cd[s], asym, cz[s]);
                    same &= memcmp(&es, &be[s], 4) == 0;
                }
                if (distinct) {
                    named++;
                    same &= j == i;
                }
                if (!same && bad++ < 10)
                    CHECK(0,
                          "t %d block %d (B %d, len %d, asym %d, store %d, mode %d): "
                          "ref %d [%a, %a], driver %d [%a, %a], block %d",
                          t, (int)b, B, len, asym, store, mode, i, (double)lo, (double)hi, j,
                          b < nb ? (double)out[2 * b] : 0.0, b < nb ? (double)out[2 * b + 1] : 0.0,
                          bi);
                seen[len] = 1;
                clipped += i != 0;
                blocks++;
            }
        CHECK(nb == b, "t %d: %d blocks, expected %d", t, (int)nb, (int)b);
    }
    CHECK(bad == 0, "%ld of %ld blocks differ", bad, blocks);
    int lens = 0;
    for (int k = 1; k <= 128; k++)
        lens += seen[k];
    CHECK(lens == 128, "block lengths seen: %d of 128", lens);
    CHECK(zero_d > 0 && ties > 1000 && clipped > blocks / 10, "coverage: %ld zero scales, %ld ties",
          zero_d, ties);
    printf("%ld blocks (%ld with distinct candidates, %ld clipped), %ld zero scales, %ld .5 ties: "
           "%s\n",
           blocks, named, clipped, zero_d, ties, fails ? "FAILED" : "ok");
    return fails != 0;
}
