/* The INT4 clipping search (--int4-search, msh_scalar.h): hand-made blocks whose winner is worked
 * out here (an exact RTN grid, an outlier that a 0.96 clip fits exactly, an all-zero tie), and a
 * second, independent implementation of the README's rule written with the C library's rintf
 * (not the shared functions' rounding) that must pick the same candidate on random blocks, sym
 * and asym, with FP16 / BF16 stored scales; never worse than RTN; the CPU driver's blocks equal
 * the per-block function, padded and ragged blocks choose alike. */
#include <fenv.h>
#include <math.h>
#include <stdlib.h>

#include "kernels/msh_cpu.h"
#include "test_check.h"

static uint32_t rnd(uint32_t *r) {
    *r = *r * 1103515245u + 12345u;
    return *r >> 8;
}

static float bits_f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* The rule again, from the README's words: candidate i's scale and zero point, its error. */
static float rule_error(const float *w, int n, int i, int asym, int store, float *lo_i,
                        float *hi_i) {
    float lo = 0.0f, hi = 0.0f;
    for (int k = 0; k < n; k++)
        if (isfinite(w[k])) {
            lo = w[k] < lo ? w[k] : lo;
            hi = w[k] > hi ? w[k] : hi;
        }
    float r = (float)(100 - i) / 100.0f;
    float l = r * lo, h = r * hi, d;
    if (asym) {
        d = (h - l) / 15.0f;
        if (!(d > 0.0f && isfinite(d)))
            d = 1.0f;
    } else {
        d = (h >= -l ? h : l) / -8.0f;
        if (d == 0.0f)
            d = 1.0f;
    }
    if (store == 10) { /* FP16: 11 significant bits, or multiples of 2^-24 below 2^-14 */
        float a = fabsf(d);
        if (a < 0x1p-14f) {
            a = rintf(a * 0x1p24f) * 0x1p-24f;
            if (a == 0.0f)
                a = 0x1p-24f; /* the weights' FP16 never makes a non-zero value 0 */
        } else {
            int ex;
            float m = frexpf(a, &ex);
            a = ldexpf(rintf(m * 2048.0f), ex - 11);
            a = a > 65504.0f ? 65504.0f : a;
        }
        d = copysignf(a, d);
    } else if (store == 16) {
        uint32_t u;
        memcpy(&u, &d, 4);
        u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
        memcpy(&d, &u, 4);
    }
    float z = 0.0f;
    if (asym) {
        z = rintf(-l / d);
        z = z < 0.0f ? 0.0f : z > 15.0f ? 15.0f : z;
    }
    float e = 0.0f;
    for (int k = 0; k < n; k++) {
        if (!isfinite(w[k]))
            continue;
        float q = rintf(w[k] / d);
        float x;
        if (asym) {
            q = q + z;
            q = q < 0.0f ? 0.0f : q > 15.0f ? 15.0f : q;
            x = (q - z) * d;
        } else {
            q = q < -8.0f ? -8.0f : q > 7.0f ? 7.0f : q;
            x = q * d;
        }
        float t = w[k] - x;
        e = e + t * t;
    }
    *lo_i = l;
    *hi_i = h;
    return e;
}

static int rule_best(const float *w, int n, int asym, int store, float *lo, float *hi,
                     float *best_e, float *rtn_e) {
    int best = 0;
    float be = 0.0f;
    for (int i = 0; i < 20; i++) {
        float l, h;
        float e = rule_error(w, n, i, asym, store, &l, &h);
        if (i == 0)
            *rtn_e = e;
        if (i == 0 || e < be) {
            best = i;
            be = e;
            *lo = l;
            *hi = h;
        }
    }
    *best_e = be;
    return best;
}

int main(void) {
    fesetround(FE_TONEAREST);
    float lo, hi;
    /* 1. values exactly on RTN's grid: error 0 at i = 0, and every clip moves -4 off it */
    float g[16];
    for (int i = 0; i < 16; i++)
        g[i] = 0.5f * (float)(i - 8);
    int i0 = msh_int4_search_ref(g, 16, 0, 0, &lo, &hi);
    CHECK(i0 == 0 && lo == -4.0f && hi == 3.5f, "RTN's exact grid keeps ratio 1 (got i %d)", i0);
    /* 2. one outlier: 31 values on the grid of ratio 0.96 (i = 4, scale 9.6 / -8), and 10.
     * At i = 4 only the outlier errs: 10 -> 9.6, error 0.16; RTN (scale -1.25) misses the grid
     * values by up to 0.6 each; the neighbours i = 3, 5 fit neither (0.185 and 0.345) */
    float o[32];
    const float d4 = ((float)96 / 100.0f * 10.0f) / -8.0f;
    static const int ks[31] = {-7, 6,  -6, 5,  -5, 7, 4,  -4, 3,  -3, 2,  -2, 1,  -1, 0, -7,
                               6,  -6, 5,  -5, 7,  4, -4, 3,  -3, 2,  -2, 1,  -1, 0,  -7};
    for (int i = 0; i < 31; i++)
        o[i] = (float)ks[i] * d4;
    o[31] = 10.0f;
    int i4 = msh_int4_search_ref(o, 32, 0, 0, &lo, &hi);
    CHECK(i4 == 4, "an outlier 10 over the 0.96 grid: i = 4 (got %d)", i4);
    const float r4 = (float)96 / 100.0f;
    CHECK(hi == r4 * 10.0f && lo == r4 * (7.0f * d4), "the clipped range is 0.96 * (%g, %g)",
          (double)lo, (double)hi);
    float rl = 0.0f, rh = 0.0f, be = 0.0f, re = 0.0f;
    CHECK(rule_best(o, 32, 0, 0, &rl, &rh, &be, &re) == 4 && be < re,
          "the independent rule agrees, and beats RTN");
    /* 3. ties: an all-zero block errs 0 everywhere: the lowest i (ratio 1) */
    float zz[32] = {0};
    CHECK(msh_int4_search_ref(zz, 32, 0, 0, &lo, &hi) == 0 && lo == 0.0f && hi == 0.0f,
          "all zero: a 20-way tie, ratio 1");
    CHECK(msh_int4_search_ref(zz, 32, 1, 0, &lo, &hi) == 0, "all zero, asym: ratio 1");
    /* one value: RTN maps it to -8 exactly (error 0), a clip cannot */
    float one[32] = {0};
    one[5] = 1.0f;
    CHECK(msh_int4_search_ref(one, 32, 0, 0, &lo, &hi) == 0, "a single value: RTN");
    CHECK(msh_int4_search_better(1.0f, 3, 1.0f, 5) && !msh_int4_search_better(1.0f, 5, 1.0f, 3) &&
              msh_int4_search_better(0.5f, 9, 1.0f, 0),
          "tie-break: lower error, then lower i");
    /* NaN and inf take no part: the outlier block with them added chooses the same */
    float on[34];
    memcpy(on, o, sizeof o);
    on[32] = NAN;
    on[33] = -INFINITY;
    CHECK(msh_int4_search_ref(on, 34, 0, 0, &lo, &hi) == 4, "NaN and -inf change nothing");
    /* 4. random blocks (normal-ish with outliers), sym / asym, FP32 / FP16 / BF16 scales */
    uint32_t r = 12345;
    int clipped = 0, total = 0;
    for (int t = 0; t < 3000; t++) {
        int n = t % 3 == 0 ? 32 : t % 3 == 1 ? 64 : 128;
        float w[128];
        float amp = t % 7 == 0 ? 1e-6f : t % 11 == 0 ? 300.0f : 0.02f;
        for (int k = 0; k < n; k++) {
            float u = 0.0f;
            for (int s = 0; s < 4; s++)
                u += (float)(rnd(&r) & 0xFFFF) / 65536.0f - 0.5f;
            w[k] = u * amp;
            if (rnd(&r) % 53 == 0)
                w[k] *= 6.0f; /* outliers */
        }
        if (t % 97 == 0)
            w[t % n] = bits_f(0x7FC00000u);
        int asym = (t / 3) % 2, store = t % 5 == 0 ? 10 : t % 5 == 1 ? 16 : 0;
        float l1, h1, l2, h2, e2, e0;
        int a = msh_int4_search_ref(w, n, asym, store, &l1, &h1);
        int b = rule_best(w, n, asym, store, &l2, &h2, &e2, &e0);
        CHECK(a == b && l1 == l2 && h1 == h2, "block %d (n %d, asym %d, store %d): %d vs rule %d",
              t, n, asym, store, a, b);
        CHECK(e2 <= e0, "block %d: the search's error %g is above RTN's %g", t, (double)e2,
              (double)e0);
        clipped += a != 0;
        total++;
    }
    CHECK(clipped > total / 10 && clipped < total, "random blocks: %d of %d clipped", clipped,
          total);
    /* 5. the CPU driver: rows of 3 blocks of 32 plus a ragged 20, padded to 128 or not */
    enum { ROWS = 9, K = 116, KP = 128 };
    float ragged[ROWS * K], padded[ROWS * KP];
    for (int i = 0; i < ROWS * K; i++)
        ragged[i] = ((float)(rnd(&r) % 2001) - 1000.0f) / 997.0f * (i % 29 == 0 ? 5.0f : 1.0f);
    for (int i = 0; i < ROWS; i++)
        for (int k = 0; k < KP; k++)
            padded[i * KP + k] = k < K ? ragged[i * K + k] : 0.0f;
    float outr[2 * ROWS * 4], outp[2 * ROWS * 4];
    CHECK(msh_int4_search((const uint8_t *)ragged, ROWS * K, 0, K, 32, 0, 0, outr) == ROWS * 4,
          "ragged: 4 blocks a row");
    CHECK(msh_int4_search((const uint8_t *)padded, ROWS * KP, 0, KP, 32, 0, 0, outp) == ROWS * 4,
          "padded: 4 blocks a row");
    CHECK(memcmp(outr, outp, sizeof outr) == 0, "padding zeros change no choice");
    int ok = 1;
    for (int b = 0; b < ROWS * 4; b++) {
        float l, h;
        msh_int4_search_ref(padded + b * 32, 32, 0, 0, &l, &h);
        ok &= l == outp[2 * b] && h == outp[2 * b + 1];
    }
    CHECK(ok, "the driver's blocks are the per-block search's");
    /* from a later block boundary (a piece of the engine) */
    float part[2 * ROWS * 4];
    CHECK(msh_int4_search((const uint8_t *)(padded + 3 * KP + 64), (ROWS - 3) * KP - 64,
                          3 * KP + 64, KP, 32, 1, 16, part) == (ROWS - 3) * 4 - 2,
          "a piece from block 14");
    float full[2 * ROWS * 4];
    msh_int4_search((const uint8_t *)padded, ROWS * KP, 0, KP, 32, 1, 16, full);
    CHECK(memcmp(part, full + 2 * 14, sizeof(float) * 2 * ((ROWS - 3) * 4 - 2)) == 0,
          "a piece's blocks equal the whole tensor's");
    printf("%s\n", fails ? "FAILED" : "ok");
    return fails != 0;
}
