/* INT4 blockwise: packing and scales against hand-made vectors (the bytes below were worked out
 * by hand from the README's rules, not produced by the code), edge values, block indices with a
 * ragged last block, and the CPU driver's results independent of how a tensor is split. */
#include <math.h>
#include <stdlib.h>

#include "kernels/msh_cpu.h"
#include "test_check.h"

static uint32_t rnd(uint32_t *r) {
    *r = *r * 1103515245u + 12345u;
    return *r >> 8;
}

int main(void) {
    /* symmetric, the largest magnitude negative: -4 -> d = 0.5, q = w / 0.5 */
    float w[16];
    for (int i = 0; i < 16; i++)
        w[i] = 0.5f * (float)(i - 8); /* -4 .. 3.5: q = -8 .. 7 */
    float lo = 0.0f, hi = 0.0f;
    for (int i = 0; i < 16; i++)
        msh_int4_stats_step(&lo, &hi, w[i]);
    CHECK(lo == -4.0f && hi == 3.5f, "block min and max");
    float d = msh_int4_sym_scale_ref(lo, hi);
    CHECK(d == 0.5f, "scale = m / -8 with m = -4: 0.5 (got %g)", (double)d);
    static const uint8_t qdq[8] = {0x98, 0xBA, 0xDC, 0xFE, 0x10, 0x32, 0x54, 0x76};
    static const uint8_t nbits[8] = {0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE};
    float sc[1] = {d};
    msh_int4_layout l = {16, 16, 1, 0, 0, sc, NULL, NULL};
    uint8_t out[8];
    msh_int4_quantize((const uint8_t *)w, out, 16, 0, &l);
    CHECK(memcmp(out, qdq, 8) == 0, "INT4 bytes, low nibble first, two's complement nibbles");
    l.offset = 8;
    msh_int4_quantize((const uint8_t *)w, out, 16, 0, &l);
    CHECK(memcmp(out, nbits, 8) == 0, "MatMulNBits bytes: q + 8");
    /* the largest magnitude positive: d negative, that value -> -8 exactly */
    d = msh_int4_sym_scale_ref(-3.5f, 4.0f);
    CHECK(d == -0.5f, "scale = 4 / -8 = -0.5 (got %g)", (double)d);
    CHECK(msh_int4_nibble_ref(4.0f, d, 0, 0, 0) == 0x8 &&
              msh_int4_nibble_ref(-3.5f, d, 0, 0, 0) == 0x7 &&
              msh_int4_nibble_ref(0.5f, d, 0, 0, 0) == 0xF,
          "4 -> -8, -3.5 -> 7, 0.5 -> -1");
    CHECK(msh_int4_sym_scale_ref(-2.0f, 2.0f) == -0.25f, "equal magnitudes: the positive one");
    CHECK(msh_int4_sym_scale_ref(0.0f, 0.0f) == 1.0f, "an all-zero block gets scale 1");
    /* round half to even, clamping, NaN, inf */
    CHECK(msh_int4_nibble_ref(0.5f, 1.0f, 0, 0, 0) == 0 &&
              msh_int4_nibble_ref(1.5f, 1.0f, 0, 0, 0) == 2 &&
              msh_int4_nibble_ref(-2.5f, 1.0f, 0, 0, 0) == 0xE,
          "ties to even: 0.5 -> 0, 1.5 -> 2, -2.5 -> -2");
    CHECK(msh_int4_nibble_ref(100.0f, 1.0f, 0, 0, 0) == 0x7 &&
              msh_int4_nibble_ref(-100.0f, 1.0f, 0, 0, 0) == 0x8,
          "saturation to 7 / -8");
    CHECK(msh_int4_nibble_ref(NAN, 1.0f, 0, 0, 0) == 0 &&
              msh_int4_nibble_ref(NAN, 1.0f, 0, 0, 8) == 8 &&
              msh_int4_nibble_ref(INFINITY, 1.0f, 0, 0, 0) == 7 &&
              msh_int4_nibble_ref(-INFINITY, 1.0f, 0, 0, 0) == 8,
          "NaN -> 0 (stored 8 with offset 8), +-inf saturate");
    lo = hi = 0.0f;
    msh_int4_stats_step(&lo, &hi, NAN);
    msh_int4_stats_step(&lo, &hi, INFINITY);
    msh_int4_stats_step(&lo, &hi, 2.0f);
    CHECK(lo == 0.0f && hi == 2.0f, "statistics over finite values, 0 included");
    /* asymmetric: lo -1, hi 2: d = 3 / 15 = 0.2, zero point rne(1 / 0.2) = 5 */
    d = msh_int4_asym_scale_ref(-1.0f, 2.0f);
    CHECK(d == 3.0f / 15.0f, "asym scale (hi - lo) / 15");
    uint8_t z = msh_int4_zero_point_ref(-1.0f, d);
    CHECK(z == 5, "zero point 5 (got %d)", z);
    CHECK(msh_int4_nibble_ref(2.0f, d, 1, z, 0) == 15 &&
              msh_int4_nibble_ref(-1.0f, d, 1, z, 0) == 0 &&
              msh_int4_nibble_ref(0.0f, d, 1, z, 0) == 5 &&
              msh_int4_nibble_ref(NAN, d, 1, z, 0) == 5,
          "asym: 2 -> 15, -1 -> 0, 0 -> zero point, NaN -> zero point");
    CHECK(msh_int4_asym_scale_ref(0.0f, 0.0f) == 1.0f, "an all-zero block gets scale 1");
    /* block indices: a [rows, 40] weight in blocks of 32 along rows (the last one ragged: 8);
     * a [rows, 3] weight in blocks of 2 along the columns */
    CHECK(msh_int4_block_of(31, 40, 32, 1) == 0 && msh_int4_block_of(32, 40, 32, 1) == 1 &&
              msh_int4_block_of(39, 40, 32, 1) == 1 && msh_int4_block_of(40, 40, 32, 1) == 2 &&
              msh_int4_block_of(79, 40, 32, 1) == 3,
          "blocks along rows, ragged last block");
    CHECK(msh_int4_block_of(2, 3, 2, 0) == 2 && msh_int4_block_of(3, 3, 2, 0) == 0 &&
              msh_int4_block_of(5, 3, 2, 0) == 2 && msh_int4_block_of(6, 3, 2, 0) == 3,
          "blocks along columns");
    /* the driver against an element-by-element reference, and split anywhere (even offsets) */
    enum { R = 37, COLS = 45, N = R * COLS };
    float *x = malloc(N * sizeof *x);
    uint32_t r = 7;
    for (int i = 0; i < N; i++)
        x[i] = ((float)rnd(&r) / 16777216.0f - 0.5f) * (float)(1 + i % 5);
    x[5] = NAN;
    x[77] = -INFINITY;
    for (int axis = 0; axis < 2; axis++)
        for (int asym = 0; asym < 2; asym++) {
            const int64_t B = 4;
            int64_t nb = axis ? R * ((COLS + B - 1) / B) : ((R + B - 1) / B) * COLS;
            float *s = malloc((size_t)nb * sizeof *s);
            uint8_t *zp = malloc((size_t)nb);
            for (int64_t b = 0; b < nb; b++) {
                s[b] = 0.01f + (float)(rnd(&r) % 100) / 400.0f;
                zp[b] = (uint8_t)(rnd(&r) % 16);
            }
            msh_int4_layout L = {COLS, B, axis, asym, asym ? 0 : 8, s, zp, NULL};
            uint8_t ref[(N + 1) / 2], got[(N + 1) / 2];
            memset(ref, 0, sizeof ref);
            for (int i = 0; i < N; i++) {
                int64_t b = msh_int4_block_of(i, COLS, B, axis);
                ref[i / 2] |= (uint8_t)(msh_int4_nibble_ref(x[i], s[b], asym, zp[b], L.offset)
                                        << (4 * (i & 1)));
            }
            memset(got, 0xAA, sizeof got);
            for (int off = 0; off < N;) {
                int n = 2 * (1 + (int)(rnd(&r) % 90));
                if (n > N - off)
                    n = N - off;
                msh_int4_quantize((const uint8_t *)(x + off), got + off / 2, (size_t)n, off, &L);
                off += n;
            }
            CHECK(memcmp(ref, got, sizeof ref) == 0, "quantize split (axis %d, asym %d)", axis,
                  asym);
            free(s);
            free(zp);
        }
    /* long runs (the SIMD path, where the CPU has one): rows of 300 in blocks of 32, split
     * into pieces of up to 1200 values */
    {
        enum { R2 = 9, C2 = 300, N2 = R2 * C2 };
        float *y = malloc(N2 * sizeof *y);
        for (int i = 0; i < N2; i++)
            y[i] = ((float)rnd(&r) / 16777216.0f - 0.5f) * (float)(1 + i % 7);
        y[3] = NAN;
        y[40] = INFINITY;
        y[41] = -INFINITY;
        y[42] = -0.0f;
        y[43] = 1e30f;
        for (int axis = 0; axis < 2; axis++)
            for (int asym = 0; asym < 2; asym++)
                for (int offset = 0; offset <= 8; offset += 8) {
                    const int64_t B = 32;
                    int64_t nb = axis ? R2 * ((C2 + B - 1) / B) : ((R2 + B - 1) / B) * C2;
                    float *s = malloc((size_t)nb * sizeof *s);
                    uint8_t *zp = malloc((size_t)nb);
                    for (int64_t b = 0; b < nb; b++) {
                        s[b] = (rnd(&r) % 2 ? 1.0f : -1.0f) *
                               (0.01f + (float)(rnd(&r) % 100) / 400.0f);
                        zp[b] = (uint8_t)(rnd(&r) % 16);
                    }
                    msh_int4_layout L = {C2, B, axis, asym, asym ? 0 : offset, s, zp, NULL};
                    uint8_t ref[(N2 + 1) / 2], got[(N2 + 1) / 2];
                    memset(ref, 0, sizeof ref);
                    for (int i = 0; i < N2; i++) {
                        int64_t b = msh_int4_block_of(i, C2, B, axis);
                        ref[i / 2] |=
                            (uint8_t)(msh_int4_nibble_ref(y[i], s[b], asym, zp[b], L.offset)
                                      << (4 * (i & 1)));
                    }
                    memset(got, 0xAA, sizeof got);
                    for (int off = 0; off < N2;) {
                        int n = 2 * (1 + (int)(rnd(&r) % 600));
                        if (n > N2 - off)
                            n = N2 - off;
                        msh_int4_quantize((const uint8_t *)(y + off), got + off / 2, (size_t)n, off,
                                          &L);
                        off += n;
                    }
                    CHECK(memcmp(ref, got, sizeof ref) == 0,
                          "quantize long runs (axis %d, asym %d, offset %d)", axis, asym, offset);
                    free(s);
                    free(zp);
                }
        free(y);
    }
    /* statistics: whole vs split at any element, merged by min / max */
    {
        const int64_t B = 8, kb = (COLS + B - 1) / B;
        float *whole = calloc((size_t)(2 * R * kb), sizeof(float));
        float *split = calloc((size_t)(2 * R * kb), sizeof(float));
        float *tmp = malloc((size_t)(2 * (N + 2)) * sizeof(float));
        int64_t got = msh_int4_stats((const uint8_t *)x, N, 0, COLS, B, whole);
        CHECK(got == R * kb, "every block touched");
        for (int off = 0; off < N;) {
            int n = 1 + (int)(rnd(&r) % 70);
            if (n > N - off)
                n = N - off;
            int64_t b0 = msh_int4_block_of(off, COLS, B, 1);
            int64_t k = msh_int4_stats((const uint8_t *)(x + off), (size_t)n, off, COLS, B, tmp);
            for (int64_t q = 0; q < k; q++) {
                float *e = split + 2 * (b0 + q);
                e[0] = tmp[2 * q] < e[0] ? tmp[2 * q] : e[0];
                e[1] = tmp[2 * q + 1] > e[1] ? tmp[2 * q + 1] : e[1];
            }
            off += n;
        }
        CHECK(memcmp(whole, split, (size_t)(2 * R * kb) * sizeof(float)) == 0,
              "block statistics do not depend on the split");
        /* and against a direct computation of one ragged block: row 2, block 5 (cols 40..44) */
        float l2 = 0.0f, h2 = 0.0f;
        for (int c = 40; c < 45; c++)
            msh_int4_stats_step(&l2, &h2, x[2 * COLS + c]);
        CHECK(whole[2 * (2 * kb + 5)] == l2 && whole[2 * (2 * kb + 5) + 1] == h2,
              "ragged block statistics");
        free(whole);
        free(split);
        free(tmp);
    }
    /* column statistics (blocks along the columns of [K, N]): msh_int4_colstats (AVX2 where the
     * CPU has it) equals msh_int4_stats_step applied row by row, with non-finite values, signed
     * zeros and widths that are not multiples of 8 */
    for (int cols = 1; cols <= 37; cols += 4) {
        const int rows = 9;
        float cw[9 * 37], clo[37], chi[37], rlo[37], rhi[37];
        for (int i = 0; i < rows * cols; i++) {
            uint32_t u = rnd(&r);
            float v = (float)(int32_t)(u % 2001u - 1000u) / 64.0f;
            cw[i] = u % 11 == 0 ? NAN : u % 13 == 0 ? -INFINITY : u % 17 == 0 ? -0.0f : v;
            if (i % cols == cols / 2) /* one column of -0 only: both bounds stay +0 */
                cw[i] = -0.0f;
        }
        for (int c = 0; c < cols; c++)
            clo[c] = chi[c] = rlo[c] = rhi[c] = 0.0f;
        msh_int4_colstats(cw, 4, cols, clo, chi); /* two calls: state carried in lo, hi */
        msh_int4_colstats(cw + 4 * cols, rows - 4, cols, clo, chi);
        for (int k = 0; k < rows; k++)
            for (int c = 0; c < cols; c++)
                msh_int4_stats_step(&rlo[c], &rhi[c], cw[k * cols + c]);
        CHECK(memcmp(clo, rlo, (size_t)cols * 4) == 0 && memcmp(chi, rhi, (size_t)cols * 4) == 0,
              "column statistics equal the scalar steps (%d columns)", cols);
        /* and the row blocks of the same values (blocks of 8 along the rows; row 0 all -0) */
        for (int c = 0; c < cols; c++)
            cw[c] = -0.0f;
        float bs[2 * 9 * 5], rs[2 * 9 * 5];
        int64_t kb8 = (cols + 7) / 8;
        msh_int4_stats((const uint8_t *)cw, (size_t)(rows * cols), 0, cols, 8, bs);
        for (int k = 0; k < rows; k++)
            for (int64_t b = 0; b < kb8; b++) {
                float bl = 0.0f, bh = 0.0f;
                for (int64_t c = 8 * b; c < 8 * b + 8 && c < cols; c++)
                    msh_int4_stats_step(&bl, &bh, cw[k * cols + c]);
                rs[2 * (k * kb8 + b)] = bl;
                rs[2 * (k * kb8 + b) + 1] = bh;
            }
        CHECK(memcmp(bs, rs, (size_t)(2 * rows * kb8) * 4) == 0,
              "row block statistics equal the scalar steps (%d columns)", cols);
    }
    free(x);
    if (fails)
        printf("%d failure(s)\n", fails);
    else
        printf("test_int4: all checks passed\n");
    return fails ? 1 : 0;
}
