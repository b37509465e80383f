/* INT8 math: the rules on edge values, and channel scales that do not depend on how the tensor
 * was split into chunks. */
#include <math.h>
#include <stdlib.h>

#include "kernels/msh_cpu.h"
#include "test_check.h"

static float bitsf(uint32_t b) {
    float f;
    memcpy(&f, &b, 4);
    return f;
}

int main(void) {
    /* scale: absmax / 127, and 1 for an all-zero channel */
    CHECK(msh_int8_scale_ref(0.0f) == 1.0f, "zero channel gets scale 1");
    CHECK(msh_int8_scale_ref(127.0f) == 1.0f, "127 -> 1");
    CHECK(msh_int8_scale_ref(bitsf(0x00000001u)) == 1.0f, "a scale that underflows becomes 1");
    float s = msh_int8_scale_ref(2.54f);
    CHECK(msh_int8_quant_ref(2.54f, s) == 127 && msh_int8_quant_ref(-2.54f, s) == -127,
          "the channel maximum maps to +-127");
    CHECK(msh_int8_quant_ref(0.0f, s) == 0 && msh_int8_quant_ref(-0.0f, s) == 0, "+-0");
    CHECK(msh_int8_quant_ref(bitsf(0x00000010u), s) == 0, "denormal -> 0");
    CHECK(msh_int8_quant_ref(INFINITY, s) == 127 && msh_int8_quant_ref(-INFINITY, s) == -127,
          "inf saturates");
    CHECK(msh_int8_quant_ref(NAN, s) == 0, "NaN -> 0");
    CHECK(msh_int8_quant_ref(1e30f, 1.0f) == 127 && msh_int8_quant_ref(-1e30f, 1.0f) == -127,
          "saturating values clamp to +-127, never -128");
    /* ties to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2 */
    CHECK(msh_int8_quant_ref(0.5f, 1.0f) == 0 && msh_int8_quant_ref(1.5f, 1.0f) == 2 &&
              msh_int8_quant_ref(2.5f, 1.0f) == 2 && msh_int8_quant_ref(-2.5f, 1.0f) == -2 &&
              msh_int8_quant_ref(-3.5f, 1.0f) == -4,
          "round half to even");
    /* absmax ignores NaN and inf */
    float m = 0.0f;
    m = msh_absmax_step(m, NAN);
    m = msh_absmax_step(m, -INFINITY);
    m = msh_absmax_step(m, -3.0f);
    m = msh_absmax_step(m, 2.0f);
    CHECK(m == 3.0f, "absmax over finite values only");
    /* channel scales are the same however the tensor is split */
    enum { C = 7, INNER = 13, N = 5 * C * INNER };
    float *w = malloc(N * sizeof *w);
    uint32_t r = 12345;
    for (int i = 0; i < N; i++) {
        r = r * 1103515245u + 12345u;
        w[i] = ((float)(r >> 8) / 16777216.0f - 0.5f) * (float)(1 + i % 9);
    }
    for (int i = 0; i < INNER; i++)
        w[3 * INNER + i] = 0.0f; /* channel 3 of the first block is all zero ... */
    float whole[C] = {0}, split[C] = {0};
    msh_int8_absmax((const uint8_t *)w, N, 0, INNER, C, whole);
    for (int off = 0; off < N;) {
        int n = 1 + (int)((r = r * 1103515245u + 12345u) >> 27);
        if (n > N - off)
            n = N - off;
        msh_int8_absmax((const uint8_t *)(w + off), (size_t)n, off, INNER, C, split);
        off += n;
    }
    CHECK(memcmp(whole, split, sizeof whole) == 0, "absmax depends on the split");
    float scales[C];
    for (int c = 0; c < C; c++)
        scales[c] = msh_int8_scale_ref(whole[c]);
    uint8_t *q1 = malloc(N), *q2 = malloc(N);
    msh_int8_quantize((const uint8_t *)w, q1, N, 0, INNER, C, scales);
    for (int off = 0; off < N; off += 37) {
        int n = N - off < 37 ? N - off : 37;
        msh_int8_quantize((const uint8_t *)(w + off), q2 + off, (size_t)n, off, INNER, C, scales);
    }
    CHECK(memcmp(q1, q2, N) == 0, "quantized bytes depend on the split");
    for (int i = 0; i < N; i++) {
        int c = (i / INNER) % C;
        CHECK((int8_t)q1[i] == msh_int8_quant_ref(w[i], scales[c]), "element %d", i);
        if (fails > 5)
            break;
    }
    /* inner == 1 (MatMul weights: the channel changes at every element), against plain steps */
    enum { RC = 37, RN = RC * 11 + 5 };
    float rows[RC] = {0}, ref[RC] = {0};
    msh_int8_absmax((const uint8_t *)w, RN, 3, 1, RC, rows);
    for (int i = 0; i < RN; i++)
        ref[(3 + i) % RC] = msh_absmax_step(ref[(3 + i) % RC], w[i]);
    CHECK(memcmp(rows, ref, sizeof rows) == 0, "row-wise absmax differs from the reference");
    for (int c = 0; c < RC; c++)
        ref[c] = msh_int8_scale_ref(ref[c]);
    msh_int8_quantize((const uint8_t *)w, q1, RN, 3, 1, RC, ref);
    for (int i = 0; i < RN; i++)
        CHECK((int8_t)q1[i] == msh_int8_quant_ref(w[i], ref[(3 + i) % RC]), "row element %d", i);
    free(w);
    free(q1);
    free(q2);
    printf("%s\n", fails ? "FAILED" : "ok");
    return fails != 0;
}
