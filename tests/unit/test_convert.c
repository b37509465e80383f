/* FP32 -> FP16 / BF16 and the FP16 range test: the SIMD path equals the scalar reference on
 * every one of the 2^32 FP32 bit patterns (a 1-in-61 sample under sanitizers, where the full
 * sweep is too slow), for the default bounds and onnxconverter-common's; plus the rules
 * themselves on chosen values. Without AVX2/F16C the sweep cannot run: exit 77 (skipped). */
#include <stdlib.h>

#include "kernels/msh_cpu.h"
#include "test_check.h"

static uint16_t f16(float v, const msh_f16_bounds *b, int *c) {
    uint32_t x;
    memcpy(&x, &v, 4);
    return msh_f32_to_f16_ref(x, b->min_abs, b->max_abs, c);
}

static uint32_t bits(float v) {
    uint32_t x;
    memcpy(&x, &v, 4);
    return x;
}

int main(void) {
    msh_f16_bounds def, occ;
    msh_f16_bounds_default(&def);
    occ.min_abs = bits(1e-7f);
    occ.max_abs = bits(1e4f);
    int c;
    /* exact values */
    CHECK(f16(1.0f, &def, &c) == 0x3C00 && !c, "1.0");
    CHECK(f16(-2.0f, &def, &c) == 0xC000, "-2.0");
    CHECK(f16(65504.0f, &def, &c) == 0x7BFF && !c, "65504 exact");
    CHECK(f16(1e5f, &def, &c) == 0x7BFF && c, "1e5 saturates to 65504");
    CHECK(f16(-1e30f, &def, &c) == 0xFBFF && c, "-1e30 saturates to -65504");
    /* raising a tiny value is not a clamp (the range test counts it as below FP16's range) */
    CHECK(f16(1e-12f, &def, &c) == 0x0001 && !c, "1e-12 becomes the smallest subnormal");
    CHECK(f16(-1e-12f, &def, &c) == 0x8001 && !c, "-1e-12 keeps its sign");
    CHECK(f16(0.0f, &def, &c) == 0x0000 && !c, "+0");
    CHECK(f16(-0.0f, &def, &c) == 0x8000 && !c, "-0");
    CHECK(msh_f32_to_f16_ref(0x7F800000u, def.min_abs, def.max_abs, &c) == 0x7C00 && !c, "+inf");
    CHECK(msh_f32_to_f16_ref(0xFF800000u, def.min_abs, def.max_abs, &c) == 0xFC00, "-inf");
    CHECK((msh_f32_to_f16_ref(0x7FC00000u, def.min_abs, def.max_abs, &c) & 0x7C00) == 0x7C00 &&
              (msh_f32_to_f16_ref(0x7F800001u, def.min_abs, def.max_abs, &c) & 0x3FF) != 0,
          "NaN stays NaN (signalling ones too)");
    CHECK(f16(5.9604645e-08f, &def, &c) == 0x0001, "2^-24");
    CHECK(f16(6.1035156e-05f, &def, &c) == 0x0400, "smallest normal");
    /* ties to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10 */
    CHECK(f16(1.00048828125f, &def, &c) == 0x3C00, "tie to even (down)");
    CHECK(f16(1.00146484375f, &def, &c) == 0x3C02, "tie to even (up)");
    CHECK(f16(1e5f, &occ, &c) == 0x70E2 && c, "onnxconverter-common max 1e4");
    CHECK(f16(1e-9f, &occ, &c) == 0x0002 && !c, "onnxconverter-common min 1e-7 -> rounds to 2 ulp");
    CHECK(msh_f32_to_bf16_ref(bits(1.0f)) == 0x3F80, "bf16 1.0");
    CHECK(msh_f32_to_bf16_ref(0x3F808000u) == 0x3F80, "bf16 tie to even down");
    CHECK(msh_f32_to_bf16_ref(0x3F818000u) == 0x3F82, "bf16 tie to even up");
    CHECK(msh_f32_to_bf16_ref(0x7F800001u) == 0x7FC0, "bf16 signalling NaN becomes quiet");

    /* the range test on chosen values */
    {
        float v[] = {0.0f,  -0.0f,          1.0f,     65504.0f, 65505.0f,
                     -1e8f, 6.1035156e-05f, 6.1e-05f, -1e-30f};
        msh_f16_range r;
        memset(&r, 0, sizeof r);
        msh_f16_range_buf((const uint8_t *)v, 9, &r);
        CHECK(r.nonzero == 7 && r.above == 2 && r.below == 2 && r.max_bits == bits(1e8f),
              "range test: %llu non-zero, %llu above, %llu below, max 0x%x",
              (unsigned long long)r.nonzero, (unsigned long long)r.above,
              (unsigned long long)r.below, r.max_bits);
    }
    if (!msh_cpu_has_simd()) {
        printf("SKIP: no AVX2/F16C on this CPU, the SIMD sweep cannot run (the reference checks "
               "%s)\n",
               fails ? "FAILED" : "passed");
        return fails ? 1 : 77;
    }
#if defined(__SANITIZE_ADDRESS__)
    const uint64_t step = 61;
#else
    const uint64_t step = 1;
#endif
    enum { N = 1 << 16 };
    uint8_t *src = malloc(4 * N), *a = malloc(2 * N), *b = malloc(2 * N);
    const msh_f16_bounds *bounds[2] = {&def, &occ};
    uint64_t done = 0;
    for (uint64_t base = 0; base < ((uint64_t)1 << 32) && fails < 20; base += (uint64_t)N * step) {
        for (uint32_t i = 0; i < N; i++) {
            uint32_t x = (uint32_t)(base + (uint64_t)i * step);
            memcpy(src + 4 * i, &x, 4);
        }
        for (int k = 0; k < 2; k++) {
            uint64_t ca = msh_f32_to_f16_buf_ref(src, a, N, bounds[k]);
            uint64_t cb = msh_f32_to_f16_buf_simd(src, b, N, bounds[k]);
            if (memcmp(a, b, 2 * N) != 0 || ca != cb) {
                for (uint32_t i = 0; i < N; i++)
                    if (memcmp(a + 2 * i, b + 2 * i, 2) != 0) {
                        uint32_t x;
                        memcpy(&x, src + 4 * i, 4);
                        CHECK(0, "fp16 bounds %d: 0x%08x ref %02x%02x simd %02x%02x", k, x,
                              a[2 * i + 1], a[2 * i], b[2 * i + 1], b[2 * i]);
                        break;
                    }
                CHECK(ca == cb, "clamp counts differ: %llu vs %llu", (unsigned long long)ca,
                      (unsigned long long)cb);
            }
        }
        msh_f16_range ra, rb;
        memset(&ra, 0, sizeof ra);
        memset(&rb, 0, sizeof rb);
        for (uint32_t i = 0; i < N; i++) {
            uint32_t x;
            memcpy(&x, src + 4 * i, 4);
            int rc = msh_f16_range_class(x);
            ra.nonzero += rc != 0;
            ra.below += rc == 2;
            ra.above += rc == 3;
            if (rc && (x & 0x7FFFFFFFu) > ra.max_bits)
                ra.max_bits = x & 0x7FFFFFFFu;
        }
        msh_f16_range_buf(src, N, &rb);
        CHECK(ra.nonzero == rb.nonzero && ra.below == rb.below && ra.above == rb.above &&
                  ra.max_bits == rb.max_bits,
              "range test differs near 0x%08llx", (unsigned long long)base);
        /* the fused pass (what the engine runs): the same bytes, clamps and range test */
        msh_f16_range rc;
        memset(&rc, 0, sizeof rc);
        uint64_t cf = msh_f32_to_f16_range_buf(src, b, N, &def, &rc);
        uint64_t cr = msh_f32_to_f16_buf_ref(src, a, N, &def);
        CHECK(memcmp(a, b, 2 * N) == 0 && cf == cr && rc.nonzero == ra.nonzero &&
                  rc.below == ra.below && rc.above == ra.above && rc.max_bits == ra.max_bits,
              "fused conversion + range test differs near 0x%08llx", (unsigned long long)base);
        msh_f32_to_bf16_buf_ref(src, a, N);
        msh_f32_to_bf16_buf_simd(src, b, N);
        CHECK(memcmp(a, b, 2 * N) == 0, "bf16 differs near 0x%08llx", (unsigned long long)base);
        done += N;
    }
    printf("%s: %llu FP32 patterns compared (step %llu)\n", fails ? "FAILED" : "ok",
           (unsigned long long)done, (unsigned long long)step);
    free(src);
    free(a);
    free(b);
    return fails != 0;
}
