/* The fast division of the CUDA kernels' index arithmetic equals real division, for divisors and
 * numerators at every edge (1, powers of two and their neighbours, 2^32 - 1) and at random. */
#include <stdio.h>

#include "kernels/msh_index.h"
#include "test_check.h"

static uint64_t state = 0x9E3779B97F4A7C15ULL;
static uint32_t rnd(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (uint32_t)(state >> 16);
}

int main(void) {
    uint32_t ds[400], ns[400];
    size_t nd = 0, nn = 0;
    for (uint32_t k = 0; k < 32; k++) {
        uint32_t p = (uint32_t)1 << k;
        ds[nd++] = p;
        ds[nd++] = p + 1;
        if (p > 2)
            ds[nd++] = p - 1;
        ns[nn++] = p;
        ns[nn++] = p - 1;
        ns[nn++] = p + 1;
    }
    ds[nd++] = 0xFFFFFFFFu;
    ds[nd++] = 3;
    ds[nd++] = 768;
    ds[nd++] = 3072;
    ds[nd++] = 30522;
    ns[nn++] = 0;
    ns[nn++] = 0xFFFFFFFFu;
    ns[nn++] = 0xFFFFFFFEu;
    while (nd < 300)
        ds[nd++] = (rnd() >> (rnd() % 32)) | 1u;
    while (nn < 300)
        ns[nn++] = rnd() >> (rnd() % 32);
    long checks = 0;
    for (size_t i = 0; i < nd; i++) {
        msh_fastdiv f = msh_fastdiv_make(ds[i]);
        for (size_t j = 0; j < nn; j++) {
            uint32_t q = msh_fastdiv_div(ns[j], f), r = msh_fastdiv_mod(ns[j], f);
            CHECK(q == ns[j] / ds[i] && r == ns[j] % ds[i], "%u / %u: got %u rem %u", ns[j], ds[i],
                  q, r);
            checks++;
        }
        for (int k = 0; k < 2000; k++) {
            uint32_t n = rnd();
            CHECK(msh_fastdiv_div(n, f) == n / ds[i], "%u / %u", n, ds[i]);
            checks++;
        }
    }
    printf("%s: %ld divisions checked\n", fails ? "FAILED" : "ok", checks);
    return fails != 0 || checks == 0;
}
