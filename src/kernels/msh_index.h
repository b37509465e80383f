/*
 * Index arithmetic shared by the CPU tests and the CUDA kernels: division of 32-bit numbers by a
 * divisor fixed for a whole launch, with one multiply-high and a shift instead of a division
 * (Granlund and Montgomery, "Division by invariant integers using multiplication", 1994).
 * A kernel that finds each element's channel would otherwise pay a 64-bit division and modulo
 * per element. tests/unit/test_index.c checks the result against real division.
 */
#ifndef MSH_INDEX_H
#define MSH_INDEX_H

#include <stdint.h>

#include "kernels/msh_scalar.h"

typedef struct msh_fastdiv {
    uint32_t d; /* the divisor, >= 1 */
    uint32_t m; /* magic multiplier */
    uint32_t l; /* ceil(log2(d)) */
} msh_fastdiv;

static inline msh_fastdiv msh_fastdiv_make(uint32_t d) {
    msh_fastdiv f;
    uint32_t l = 0;
    while (l < 32 && ((uint64_t)1 << l) < d)
        l++;
    f.d = d;
    f.l = l;
    f.m = (uint32_t)((((uint64_t)1 << 32) * (((uint64_t)1 << l) - d)) / d + 1);
    return f;
}

MSH_HD static inline uint32_t msh_mulhi32(uint32_t a, uint32_t b) {
    return (uint32_t)(((uint64_t)a * b) >> 32);
}

/* n / f.d for every 32-bit n. */
MSH_HD static inline uint32_t msh_fastdiv_div(uint32_t n, msh_fastdiv f) {
    if (f.l == 0)
        return n; /* d == 1 */
    uint32_t t = msh_mulhi32(n, f.m);
    return (t + ((n - t) >> 1)) >> (f.l - 1);
}

MSH_HD static inline uint32_t msh_fastdiv_mod(uint32_t n, msh_fastdiv f) {
    return n - msh_fastdiv_div(n, f) * f.d;
}

#endif
