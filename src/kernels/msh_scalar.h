/*
 * Element math shared by the CPU reference path and the CUDA kernels.
 *
 * Every function here is `MSH_HD static inline`: __host__ __device__ under nvcc, plain static
 * inline in C. CPU drivers, SIMD paths and CUDA kernels call these bodies; none of them
 * re-derives the math, so both back ends produce the same bits by construction.
 *
 * The tensor digest (used by dedup), defined so that a GPU keeps every thread busy with
 * aligned vector loads while the CPU computes the same value:
 *   - the tensor's bytes are cut into leaves of MSH_HASH_LEAF (256) bytes, and the leaves into
 *     chunks of MSH_HASH_CHUNK (64 KiB, 256 leaves); the last leaf and chunk may be shorter;
 *   - leaf k has digest l_k = XXH64(leaf_k, seed 0): one GPU thread per leaf;
 *   - chunk i has digest c_i = XXH64(LE64(l_first) || ... || LE64(l_last), seed = the chunk's
 *     byte length), over its own leaves;
 *   - the tensor digest is XXH64(LE64(c_0) || LE64(c_1) || ..., seed = the tensor's length).
 * Leaves and chunks are fixed by offset, so thread count, batch size, launch shape or where a
 * tensor was split for streaming (always at a chunk boundary) never change a digest. An empty
 * tensor has digest XXH64("", seed 0).
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

#define MSH_HASH_LEAF ((size_t)256)
#define MSH_HASH_CHUNK ((size_t)65536)
#define MSH_HASH_LEAVES (MSH_HASH_CHUNK / MSH_HASH_LEAF)

#if defined(__FAST_MATH__) || defined(__USE_FAST_MATH__)
#error "modelshrink's element math must not be built with fast-math: CPU and GPU must round alike"
#endif

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

/* XXH64 in three steps, so that a kernel can feed stripes it loaded with vector loads:
 * lanes initialised from the seed; one 32-byte stripe (four little-endian words) at a time;
 * then the merge of the lanes (when at least one stripe was fed), the tail and the avalanche. */
MSH_HD static inline void msh_xxh64_init(uint64_t v[4], uint64_t seed) {
    v[0] = seed + MSH_XXH_P1 + MSH_XXH_P2;
    v[1] = seed + MSH_XXH_P2;
    v[2] = seed;
    v[3] = seed - MSH_XXH_P1;
}

MSH_HD static inline void msh_xxh64_stripe(uint64_t v[4], uint64_t w0, uint64_t w1, uint64_t w2,
                                           uint64_t w3) {
    v[0] = msh_xxh64_round(v[0], w0);
    v[1] = msh_xxh64_round(v[1], w1);
    v[2] = msh_xxh64_round(v[2], w2);
    v[3] = msh_xxh64_round(v[3], w3);
}

/* `total`: all bytes hashed; `tail`: the last total % 32 of them (fewer than 32). */
MSH_HD static inline uint64_t msh_xxh64_finish(const uint64_t v[4], uint64_t seed,
                                               const uint8_t *tail, size_t total) {
    uint64_t h;
    if (total >= 32) {
        h = msh_rotl64(v[0], 1) + msh_rotl64(v[1], 7) + msh_rotl64(v[2], 12) + msh_rotl64(v[3], 18);
        h = msh_xxh64_merge(h, v[0]);
        h = msh_xxh64_merge(h, v[1]);
        h = msh_xxh64_merge(h, v[2]);
        h = msh_xxh64_merge(h, v[3]);
    } else {
        h = seed + MSH_XXH_P5;
    }
    h += (uint64_t)total;
    const uint8_t *p = tail, *end = tail + (total & 31u);
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

/* XXH64 of one buffer: the reference the CPU library (libxxhash) and the GPU must match. */
MSH_HD static inline uint64_t msh_xxh64_ref(const uint8_t *p, size_t len, uint64_t seed) {
    uint64_t v[4];
    msh_xxh64_init(v, seed);
    size_t k = 0;
    for (; k + 32 <= len; k += 32)
        msh_xxh64_stripe(v, msh_rd64(p + k), msh_rd64(p + k + 8), msh_rd64(p + k + 16),
                         msh_rd64(p + k + 24));
    return msh_xxh64_finish(v, seed, p + k, len);
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
#define MSH_F16_MIN_NORMAL_BITS 0x38800000u    /* 2^-14 as FP32 bits */
#define MSH_F16_MAX_BITS 0x477FE000u           /* 65504 as FP32 bits */

/* Where a FP32 value falls against FP16's range (the precision plan's range test): 0 for zero,
 * NaN and infinities (they convert exactly), 1 inside FP16's normal range, 2 below it (non-zero
 * with |x| < 2^-14: it becomes subnormal or zero, losing precision), 3 above it (finite with
 * |x| > 65504: not representable). */
MSH_HD static inline int msh_f16_range_class(uint32_t x) {
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax == 0 || ax >= 0x7F800000u)
        return 0;
    if (ax < MSH_F16_MIN_NORMAL_BITS)
        return 2;
    return ax > MSH_F16_MAX_BITS ? 3 : 1;
}

/* FP16 for model weights: a finite value whose magnitude is below `min_abs` (FP32 bits, not 0)
 * becomes ±min_abs, above `max_abs` becomes ±max_abs, then it is rounded; a finite non-zero
 * value never becomes 0 (smallest subnormal instead) nor infinity (±65504 instead). Returns 1
 * in *clamped when the value was too large (moved down to ±max_abs, or kept off infinity);
 * raising a tiny value is not counted here: the range test counts it among the values below
 * FP16's normal range (msh_f16_range_class). The defaults, min_abs = 2^-24 and
 * max_abs = 65504, keep every value that FP16 can represent; onnxconverter-common uses 1e-7 and
 * 1e4 (same comparisons: strictly below / strictly above). */
MSH_HD static inline uint16_t msh_f32_to_f16_ref(uint32_t x, uint32_t min_abs, uint32_t max_abs,
                                                 int *clamped) {
    uint32_t sign = x & 0x80000000u, ax = x & 0x7FFFFFFFu;
    int c = 0;
    if (ax < 0x7F800000u) {
        if (ax != 0 && ax < min_abs) {
            ax = min_abs;
        } else if (ax > max_abs) {
            ax = max_abs;
            c = 1;
        }
    }
    uint16_t h = msh_f32_to_f16_rne(sign | ax);
    if (ax < 0x7F800000u) {
        if ((h & 0x7FFFu) == 0 && ax != 0) {
            h = (uint16_t)((sign >> 16) | 0x0001u);
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

/* ---- INT4, blockwise ----
 * A weight is cut into blocks of `block` consecutive elements along its reduction axis (the last
 * block of a row may be shorter, or padded with zeros where the layout pads). Per block:
 *   lo = min(0, finite w), hi = max(0, finite w)      (NaN and +-inf take no part; order-free)
 * symmetric (INT4, [-8, 7]): m = hi when hi >= -lo, else lo (the value of largest magnitude;
 *   on a tie the positive one); scale d = m / -8 (so m itself maps to -8 exactly; d may be
 *   negative); a block whose d is 0 gets d = 1; q = clamp(rne(w / d), -8, 7);
 * asymmetric (UINT4, [0, 15]): d = (hi - lo) / 15, 1 when that is 0; zero point
 *   z = clamp(rne(-lo / d), 0, 15); q = clamp(rne(w / d) + z, 0, 15).
 * NaN quantizes to 0 (symmetric) or z (asymmetric); +-inf saturates. rne is round half to even.
 * Two 4-bit values share a byte, the first in the low nibble. */

/* The block of element i of a row-major [rows, cols] weight whose blocks run along axis 1
 * (block index row * ceil(cols / block) + col / block) or along axis 0 (index
 * (row / block) * cols + col). */
MSH_HD static inline int64_t msh_int4_block_of(int64_t i, int64_t cols, int64_t block, int axis) {
    int64_t r = i / cols, c = i - r * cols;
    if (axis == 1)
        return r * ((cols + block - 1) / block) + c / block;
    return (r / block) * cols + c;
}

/* One step of the block statistics: lo = min(lo, w), hi = max(hi, w) over finite w. */
MSH_HD static inline void msh_int4_stats_step(float *lo, float *hi, float w) {
    float a = w < 0.0f ? -w : w;
    if (!(a <= 3.4028234663852886e+38f))
        return;
    if (w < *lo)
        *lo = w;
    if (w > *hi)
        *hi = w;
}

MSH_HD static inline float msh_int4_sym_scale_ref(float lo, float hi) {
    float m = hi >= -lo ? hi : lo;
    float d = m / -8.0f;
    return d != 0.0f ? d : 1.0f;
}

MSH_HD static inline float msh_int4_asym_scale_ref(float lo, float hi) {
    float d = (hi - lo) / 15.0f;
    return d > 0.0f && d <= 3.4028234663852886e+38f ? d : 1.0f;
}

/* rne(x) clamped to [lo, hi] (small integers), NaN -> `nan`. */
MSH_HD static inline int msh_int4_round_clamp(float x, int lo, int hi, int nan) {
    if (x != x)
        return nan;
    if (x >= (float)hi)
        return hi;
    if (x <= (float)lo)
        return lo;
    return (int)msh_rne_f32(x);
}

MSH_HD static inline uint8_t msh_int4_zero_point_ref(float lo, float d) {
    return (uint8_t)msh_int4_round_clamp(-lo / d, 0, 15, 0);
}

/* The stored nibble of w: symmetric, q + offset (offset 0: INT4 two's complement nibble, as
 * DequantizeLinear reads it; 8: MatMulNBits' unsigned storage with its default zero point 8);
 * asymmetric, q (zp is the block's zero point). */
MSH_HD static inline uint8_t msh_int4_nibble_ref(float w, float d, int asym, int zp, int offset) {
    if (asym) {
        int q = msh_int4_round_clamp(w / d, -16, 16, 0);
        q = w != w ? zp : q + zp;
        return (uint8_t)(q < 0 ? 0 : q > 15 ? 15 : q);
    }
    return (uint8_t)((msh_int4_round_clamp(w / d, -8, 7, 0) + offset) & 0xF);
}

/* ---- INT4 clipping search (--int4-search) ----
 * Per block, MSH_INT4_SEARCH_STEPS candidates i = 0 .. 19 with ratio r_i = (100 - i) / 100
 * (IEEE single division, so r_0 = 1 exactly). Candidate i clips the block's range to
 * [r_i * lo, r_i * hi] (lo, hi as above: both ends move toward 0, which stays inside) and applies
 * the RTN rule to that range: scale d_i (rounded to FP16 / BF16 first when the scales are stored
 * so: msh_int4_scale_store_ref) and, asymmetric, zero point z_i. Its squared error is summed in
 * float, in element order, over the block's finite values (NaN and +-inf take no part):
 *   e = 0; for each w: t = w - deq(w), e = e + t * t
 * with deq(w) = q * d_i (symmetric, q the signed value of the nibble) or (q - z_i) * d_i
 * (asymmetric), q as msh_int4_nibble_ref stores it; no FMA (-ffp-contract=off, --fmad=false).
 * The lowest e wins; on equal e the lower i (the larger ratio). RTN is i = 0, so the choice is
 * never worse than RTN on the block's squared error. The result is the winner's clipped range,
 * which replaces the block's (lo, hi): scale and zero point follow from it by the RTN rule.
 * Zeros padding a block add exactly 0 to every e, so a padded and a ragged block choose alike. */
#define MSH_INT4_SEARCH_STEPS 20 /* a multiple of 4 (msh_int4_search_ref) */

MSH_HD static inline float msh_int4_search_ratio(int i) {
    return (float)(100 - i) / 100.0f;
}

/* The scale as it will be stored: `store` 10 (FP16) or 16 (BF16) rounds it to that type (the
 * float pass stores the scales in it), anything else keeps it. */
MSH_HD static inline float msh_int4_scale_store_ref(float d, int store) {
    union {
        float f;
        uint32_t u;
    } v;
    v.f = d;
    int clamped;
    if (store == 10)
        v.u = msh_f16_to_f32_ref(
            msh_f32_to_f16_ref(v.u, MSH_F16_MIN_SUBNORMAL_BITS, MSH_F16_MAX_BITS, &clamped));
    else if (store == 16)
        v.u = (uint32_t)msh_f32_to_bf16_ref(v.u) << 16;
    return v.f;
}

/* Candidate i of a block whose statistics are (lo, hi): its clipped range, scale, zero point. */
MSH_HD static inline void msh_int4_search_candidate(float lo, float hi, int i, int asym, int store,
                                                    float *lo_i, float *hi_i, float *d, int *z) {
    float r = msh_int4_search_ratio(i);
    *lo_i = r * lo;
    *hi_i = r * hi;
    float s = asym ? msh_int4_asym_scale_ref(*lo_i, *hi_i) : msh_int4_sym_scale_ref(*lo_i, *hi_i);
    *d = msh_int4_scale_store_ref(s, store);
    *z = asym ? (int)msh_int4_zero_point_ref(*lo_i, *d) : 0;
}

/* One value's term of a candidate's squared error: (w - deq(w))^2, and +0 for NaN and +-inf
 * (adding +0 leaves a sum as it is: they take no part). */
MSH_HD static inline float msh_int4_search_term(float x, float d, int asym, int z) {
    float a = x < 0.0f ? -x : x;
    if (!(a <= 3.4028234663852886e+38f))
        return 0.0f;
    int q = (int)msh_int4_nibble_ref(x, d, asym, z, 0);
    float deq = asym ? (float)(q - z) * d : (float)(q >= 8 ? q - 16 : q) * d;
    float t = x - deq;
    return t * t;
}

/* The squared error of n values with scale d (and zero point z), summed in element order. */
MSH_HD static inline float msh_int4_search_error(const float *w, int64_t n, float d, int asym,
                                                 int z) {
    float e = 0.0f;
    for (int64_t k = 0; k < n; k++)
        e = e + msh_int4_search_term(w[k], d, asym, z);
    return e;
}

/* 1 when candidate (e, i) beats (be, bi): lower error, then lower index. Order-free (a strict
 * total order on distinct i), so a warp may reduce it in any order. */
MSH_HD static inline int msh_int4_search_better(float e, int i, float be, int bi) {
    return e < be || (e == be && i < bi);
}

/* The search over one block of n values: writes the winner's clipped range, returns its i.
 * Four candidates share each pass over the values (four independent sums, each still in element
 * order: the same bits as msh_int4_search_error, with four times the work in flight). */
MSH_HD static inline int msh_int4_search_ref(const float *w, int64_t n, int asym, int store,
                                             float *lo_out, float *hi_out) {
    float lo = 0.0f, hi = 0.0f;
    for (int64_t k = 0; k < n; k++)
        msh_int4_stats_step(&lo, &hi, w[k]);
    float cl[MSH_INT4_SEARCH_STEPS], ch[MSH_INT4_SEARCH_STEPS], cd[MSH_INT4_SEARCH_STEPS];
    float ce[MSH_INT4_SEARCH_STEPS];
    int cz[MSH_INT4_SEARCH_STEPS];
    for (int i = 0; i < MSH_INT4_SEARCH_STEPS; i++)
        msh_int4_search_candidate(lo, hi, i, asym, store, &cl[i], &ch[i], &cd[i], &cz[i]);
    for (int i = 0; i < MSH_INT4_SEARCH_STEPS; i += 4) {
        float e0 = 0.0f, e1 = 0.0f, e2 = 0.0f, e3 = 0.0f;
        for (int64_t k = 0; k < n; k++) {
            float x = w[k];
            e0 = e0 + msh_int4_search_term(x, cd[i], asym, cz[i]);
            e1 = e1 + msh_int4_search_term(x, cd[i + 1], asym, cz[i + 1]);
            e2 = e2 + msh_int4_search_term(x, cd[i + 2], asym, cz[i + 2]);
            e3 = e3 + msh_int4_search_term(x, cd[i + 3], asym, cz[i + 3]);
        }
        ce[i] = e0;
        ce[i + 1] = e1;
        ce[i + 2] = e2;
        ce[i + 3] = e3;
    }
    int best = 0;
    for (int i = 1; i < MSH_INT4_SEARCH_STEPS; i++)
        if (msh_int4_search_better(ce[i], i, ce[best], best))
            best = i;
    *lo_out = cl[best];
    *hi_out = ch[best];
    return best;
}

/* Digest of one leaf (at most MSH_HASH_LEAF bytes). */
MSH_HD static inline uint64_t msh_leaf_hash_ref(const uint8_t *leaf, size_t len) {
    return msh_xxh64_ref(leaf, len, 0);
}

/* Digest of a chunk from its leaves' digests (`n` of them, for `len` bytes): XXH64 over their
 * little-endian bytes, seeded with the chunk's length. `le` holds 8 * n bytes. */
MSH_HD static inline uint64_t msh_chunk_combine_ref(const uint8_t *le, size_t n, size_t len) {
    return msh_xxh64_ref(le, 8 * n, (uint64_t)len);
}

/* Digest of one chunk (at most MSH_HASH_CHUNK bytes) from its bytes: independent of every
 * other chunk. */
MSH_HD static inline uint64_t msh_chunk_hash_ref(const uint8_t *chunk, size_t len) {
    uint8_t le[8 * MSH_HASH_LEAVES];
    size_t n = 0;
    for (size_t at = 0; at < len; at += MSH_HASH_LEAF, n++) {
        size_t k = len - at < MSH_HASH_LEAF ? len - at : MSH_HASH_LEAF;
        uint64_t d = msh_leaf_hash_ref(chunk + at, k);
        for (int b = 0; b < 8; b++)
            le[8 * n + (size_t)b] = (uint8_t)(d >> (8 * b));
    }
    return msh_chunk_combine_ref(le, n, len);
}

#endif
