/*
 * Element math shared by the CPU reference path and the CUDA kernels.
 *
 * Every function here is `MSH_HD static inline`: __host__ __device__ under nvcc, plain static
 * inline in C. CPU drivers, SIMD paths and CUDA kernels call these bodies; none of them
 * re-derives the math, so both back ends produce the same bits by construction.
 *
 * The tensor digest (used by dedup):
 *   - the tensor's bytes are cut into chunks of MSH_HASH_CHUNK bytes (the last may be shorter);
 *   - chunk i has digest d_i = XXH64(chunk_i, seed 0);
 *   - the tensor digest is XXH64(LE64(d_0) || LE64(d_1) || ..., seed = byte length).
 * Chunks are fixed by offset, so thread count, batch size, launch shape or where a tensor was
 * split for streaming never change a digest. An empty tensor has digest XXH64("", seed 0).
 */
#ifndef MSH_SCALAR_H
#define MSH_SCALAR_H

#include <stddef.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define MSH_HD __host__ __device__
#else
#define MSH_HD
#endif

#define MSH_HASH_CHUNK ((size_t)65536)

#define MSH_XXH_P1 0x9E3779B185EBCA87ULL
#define MSH_XXH_P2 0xC2B2AE3D27D4EB4FULL
#define MSH_XXH_P3 0x165667B19E3779F9ULL
#define MSH_XXH_P4 0x85EBCA77C2B2AE63ULL
#define MSH_XXH_P5 0x27D4EB2F165667C5ULL

MSH_HD static inline uint64_t msh_rotl64(uint64_t x, int r) {
    return (x << r) | (x >> (64 - r));
}

MSH_HD static inline uint64_t msh_rd64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

MSH_HD static inline uint32_t msh_rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

MSH_HD static inline uint64_t msh_xxh64_round(uint64_t acc, uint64_t input) {
    acc += input * MSH_XXH_P2;
    acc = msh_rotl64(acc, 31);
    return acc * MSH_XXH_P1;
}

MSH_HD static inline uint64_t msh_xxh64_merge(uint64_t acc, uint64_t val) {
    acc ^= msh_xxh64_round(0, val);
    return acc * MSH_XXH_P1 + MSH_XXH_P4;
}

/* XXH64 of one buffer: the reference the CPU library (libxxhash) and the GPU must match. */
MSH_HD static inline uint64_t msh_xxh64_ref(const uint8_t *p, size_t len, uint64_t seed) {
    const uint8_t *end = p + len;
    uint64_t h;
    if (len >= 32) {
        uint64_t v1 = seed + MSH_XXH_P1 + MSH_XXH_P2, v2 = seed + MSH_XXH_P2, v3 = seed,
                 v4 = seed - MSH_XXH_P1;
        const uint8_t *limit = end - 32;
        do {
            v1 = msh_xxh64_round(v1, msh_rd64(p));
            v2 = msh_xxh64_round(v2, msh_rd64(p + 8));
            v3 = msh_xxh64_round(v3, msh_rd64(p + 16));
            v4 = msh_xxh64_round(v4, msh_rd64(p + 24));
            p += 32;
        } while (p <= limit);
        h = msh_rotl64(v1, 1) + msh_rotl64(v2, 7) + msh_rotl64(v3, 12) + msh_rotl64(v4, 18);
        h = msh_xxh64_merge(h, v1);
        h = msh_xxh64_merge(h, v2);
        h = msh_xxh64_merge(h, v3);
        h = msh_xxh64_merge(h, v4);
    } else {
        h = seed + MSH_XXH_P5;
    }
    h += (uint64_t)len;
    while (p + 8 <= end) {
        h ^= msh_xxh64_round(0, msh_rd64(p));
        h = msh_rotl64(h, 27) * MSH_XXH_P1 + MSH_XXH_P4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= (uint64_t)msh_rd32(p) * MSH_XXH_P1;
        h = msh_rotl64(h, 23) * MSH_XXH_P2 + MSH_XXH_P3;
        p += 4;
    }
    while (p < end) {
        h ^= (uint64_t)(*p) * MSH_XXH_P5;
        h = msh_rotl64(h, 11) * MSH_XXH_P1;
        p++;
    }
    h ^= h >> 33;
    h *= MSH_XXH_P2;
    h ^= h >> 29;
    h *= MSH_XXH_P3;
    h ^= h >> 32;
    return h;
}

/* ---- FP32 -> FP16 / BF16 ----
 * Round to nearest, ties to even, on the bit patterns (no FPU state, no flush-to-zero).
 * NaN stays NaN: quiet bit set, payload truncated (what x86 F16C does, so SIMD matches).
 * ±inf stays ±inf. */

/* Plain IEEE conversion: overflow gives ±inf, underflow gives ±0. */
MSH_HD static inline uint16_t msh_f32_to_f16_rne(uint32_t x) {
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) {
        if (ax > 0x7F800000u)
            return (uint16_t)(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
        return (uint16_t)(sign | 0x7C00u);
    }
    if (ax >= 0x477FF000u) /* >= 65520: rounds to infinity */
        return (uint16_t)(sign | 0x7C00u);
    if (ax >= 0x38800000u) /* normal in FP16: rebias 127 -> 15, round the 13 dropped bits */
        return (uint16_t)(sign | ((ax - 0x38000000u + 0x0FFFu + ((ax >> 13) & 1u)) >> 13));
    if (ax < 0x33000000u) /* <= 2^-25 rounds to zero (2^-25 itself ties to even 0) */
        return sign;
    /* subnormal in FP16: the value in units of 2^-24, rounded half to even */
    uint32_t e = ax >> 23, m = (ax & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126u - e; /* 14..24 */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return (uint16_t)(sign | q);
}

#define MSH_F16_MIN_SUBNORMAL_BITS 0x33800000u /* 2^-24 as FP32 bits */
#define MSH_F16_MAX_BITS 0x477FE000u           /* 65504 as FP32 bits */

/* FP16 for model weights: a finite value whose magnitude is below `min_abs` (FP32 bits, not 0)
 * becomes ±min_abs, above `max_abs` becomes ±max_abs, then it is rounded; a finite non-zero
 * value never becomes 0 (smallest subnormal instead) nor infinity (±65504 instead). Returns 1
 * in *clamped when any of these rules changed the value. The defaults, min_abs = 2^-24 and
 * max_abs = 65504, keep every value that FP16 can represent; onnxconverter-common uses 1e-7 and
 * 1e4 (same comparisons: strictly below / strictly above). */
MSH_HD static inline uint16_t msh_f32_to_f16_ref(uint32_t x, uint32_t min_abs, uint32_t max_abs,
                                                 int *clamped) {
    uint32_t sign = x & 0x80000000u, ax = x & 0x7FFFFFFFu;
    int c = 0;
    if (ax < 0x7F800000u) {
        if (ax != 0 && ax < min_abs) {
            ax = min_abs;
            c = 1;
        } else if (ax > max_abs) {
            ax = max_abs;
            c = 1;
        }
    }
    uint16_t h = msh_f32_to_f16_rne(sign | ax);
    if (ax < 0x7F800000u) {
        if ((h & 0x7FFFu) == 0 && ax != 0) {
            h = (uint16_t)((sign >> 16) | 0x0001u);
            c = 1;
        } else if ((h & 0x7FFFu) == 0x7C00u) {
            h = (uint16_t)((sign >> 16) | 0x7BFFu);
            c = 1;
        }
    }
    *clamped = c;
    return h;
}

/* BF16: the upper 16 bits, rounded half to even; overflow rounds to ±inf as IEEE does. */
MSH_HD static inline uint16_t msh_f32_to_bf16_ref(uint32_t x) {
    if ((x & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)((x >> 16) | 0x0040u);
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

/* FP16 bits -> FP32 bits (exact). */
MSH_HD static inline uint32_t msh_f16_to_f32_ref(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0x1Fu)
        return sign | 0x7F800000u | (m << 13);
    if (e == 0) {
        if (m == 0)
            return sign;
        e = 113; /* normalise the subnormal */
        while (!(m & 0x400u)) {
            m <<= 1;
            e--;
        }
        return sign | (e << 23) | ((m & 0x3FFu) << 13);
    }
    return sign | ((e + 112u) << 23) | (m << 13);
}

/* ---- INT8, symmetric per channel ----
 * scale = max|w| / 127 over the channel (IEEE single division), an all-zero channel (or one
 * whose scale underflows to 0) gets scale 1; q = round-half-to-even(w / scale) clamped to
 * [-127, 127]. Non-finite weights: NaN takes no part in the maximum and quantizes to 0, ±inf
 * takes no part in it either and quantizes to ±127. The maximum is order-free, so threads,
 * blocks and split points never change a scale. */

/* max(m, |w|) over finite w; NaN and ±inf leave m unchanged. */
MSH_HD static inline float msh_absmax_step(float m, float w) {
    float a = w < 0.0f ? -w : w;
    return (a <= 3.4028234663852886e+38f && a > m) ? a : m;
}

MSH_HD static inline float msh_int8_scale_ref(float absmax) {
    float s = absmax / 127.0f;
    return s > 0.0f ? s : 1.0f;
}

/* Round half to even for |x| < 2^22 with one add and one subtract (exact in the default
 * rounding mode, no FMA: build with -ffp-contract=off / --fmad=false). */
MSH_HD static inline float msh_rne_f32(float x) {
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    return x >= 0.0f ? (x + magic) - magic : -((-x + magic) - magic);
}

MSH_HD static inline int8_t msh_int8_quant_ref(float w, float scale) {
    if (w != w)
        return 0;
    float x = w / scale;
    if (x >= 127.0f)
        return 127;
    if (x <= -127.0f)
        return -127;
    return (int8_t)msh_rne_f32(x);
}

/* Digest of chunk `index` of a tensor: independent of every other chunk. */
MSH_HD static inline uint64_t msh_chunk_hash_ref(const uint8_t *chunk, size_t len) {
    return msh_xxh64_ref(chunk, len, 0);
}

#endif
