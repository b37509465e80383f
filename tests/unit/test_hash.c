/* The shared scalar XXH64 equals libxxhash, and the tensor digest never depends on how the
 * bytes were fed (piece sizes), only on the bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <xxhash.h>

#include "kernels/msh_hash.h"
#include "test_check.h"

static uint64_t rng = 88172645463325252ULL;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

int main(void) {
    /* Published vectors. */
    CHECK(msh_xxh64_ref((const uint8_t *)"", 0, 0) == 0xEF46DB3751D8E999ULL, "empty");
    CHECK(msh_xxh64_ref((const uint8_t *)"abc", 3, 0) == 0x44BC2CF5AD770999ULL, "abc");

    size_t big = (size_t)5 * MSH_HASH_CHUNK + 12345;
    uint8_t *buf = malloc(big);
    for (size_t i = 0; i < big; i++)
        buf[i] = (uint8_t)next();
    for (size_t n = 0; n < 300; n++)
        for (uint64_t seed = 0; seed < 3; seed++)
            CHECK(msh_xxh64_ref(buf + (n % 7), n, seed) == XXH64(buf + (n % 7), n, seed),
                  "xxh64 len %zu seed %llu", n, (unsigned long long)seed);
    CHECK(msh_xxh64_ref(buf, big, 42) == XXH64(buf, big, 42), "xxh64 big");

    size_t lens[] = {
        0, 1, 100, MSH_HASH_CHUNK - 1, MSH_HASH_CHUNK, MSH_HASH_CHUNK + 1, 3 * MSH_HASH_CHUNK, big};
    msh_hasher *h = msh_hasher_new();
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        size_t n = lens[li];
        uint64_t ref, one;
        CHECK(msh_tensor_digest_ref(buf, n, &ref) == MSH_OK, "ref");
        CHECK(msh_tensor_digest(buf, n, &one) == MSH_OK, "one");
        CHECK(ref == one, "driver vs reference at %zu bytes", n);
        for (int trial = 0; trial < 5; trial++) {
            msh_hasher_reset(h);
            size_t off = 0;
            while (off < n) {
                size_t k = (size_t)(next() % (2 * MSH_HASH_CHUNK + 3)) + 1;
                if (trial == 0)
                    k = 1 + (size_t)(next() % 17); /* tiny pieces */
                if (k > n - off)
                    k = n - off;
                msh_hasher_update(h, buf + off, k);
                off += k;
            }
            CHECK(msh_hasher_digest(h) == ref, "split feeding changes digest at %zu bytes", n);
        }
    }
    /* A one-byte change changes the digest; equal prefixes of different lengths differ. */
    uint64_t a, b, c;
    msh_tensor_digest(buf, big, &a);
    buf[big / 2] ^= 1;
    msh_tensor_digest(buf, big, &b);
    msh_tensor_digest(buf, big - 1, &c);
    CHECK(a != b && b != c, "digest must depend on content and length");
    msh_hasher_free(h);
    free(buf);
    printf("%s\n", fails ? "FAILED" : "ok");
    return fails != 0;
}
