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

/* Digest of chunk `index` of a tensor: independent of every other chunk. */
MSH_HD static inline uint64_t msh_chunk_hash_ref(const uint8_t *chunk, size_t len) {
    return msh_xxh64_ref(chunk, len, 0);
}

#endif
