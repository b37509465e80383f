#include "kernels/msh_hash.h"

#include <stdlib.h>
#include <xxhash.h>

struct msh_hasher {
    XXH64_state_t *outer; /* XXH64 over the chunk digests, seeded with the total length */
    uint8_t *digests;     /* the chunk digests so far, little-endian */
    size_t n_digests, cap_digests;
    uint8_t *partial;  /* an incomplete chunk */
    size_t plen, pcap; /* partial is allocated to the size first needed */
    int64_t total;
    int oom; /* a digest could not be stored: the result is invalid */
};

uint64_t msh_chunk_digest(const uint8_t *p, size_t n) {
#if defined(MSH_FORCE_SCALAR)
    return msh_chunk_hash_ref(p, n);
#else
    /* msh_chunk_hash_ref with libxxhash for the leaves and the combine (the same bits; tested
     * in tests/unit) */
    uint8_t le[8 * MSH_HASH_LEAVES];
    size_t nl = 0;
    for (size_t at = 0; at < n; at += MSH_HASH_LEAF, nl++)
        msh_store_le64(le + 8 * nl,
                       XXH64(p + at, n - at < MSH_HASH_LEAF ? n - at : MSH_HASH_LEAF, 0));
    return XXH64(le, 8 * nl, (uint64_t)n);
#endif
}

msh_hasher *msh_hasher_new(void) {
    return calloc(1, sizeof(msh_hasher));
}

void msh_hasher_reset(msh_hasher *h) {
    h->n_digests = 0;
    h->plen = 0;
    h->total = 0;
    h->oom = 0;
}

static void msh_push_digest(msh_hasher *h, uint64_t d) {
    if (h->n_digests == h->cap_digests) {
        size_t cap = h->cap_digests ? 2 * h->cap_digests : 64;
        uint8_t *nd = realloc(h->digests, cap * 8);
        if (!nd) {
            h->oom = 1;
            return;
        }
        h->digests = nd;
        h->cap_digests = cap;
    }
    msh_store_le64(h->digests + 8 * h->n_digests++, d);
}

void msh_hasher_update(msh_hasher *h, const void *p, size_t n) {
    const uint8_t *src = p;
    h->total += (int64_t)n;
    if (h->plen || (n > 0 && n < MSH_HASH_CHUNK)) {
        size_t k = MSH_HASH_CHUNK - h->plen;
        if (k > n)
            k = n;
        if (h->plen + k > h->pcap) {
            /* Lazily sized: many small tensors hashed side by side stay small. */
            size_t cap = h->plen + k;
            uint8_t *p2 = realloc(h->partial, cap);
            if (!p2) {
                h->oom = 1;
                return;
            }
            h->partial = p2;
            h->pcap = cap;
        }
        memcpy(h->partial + h->plen, src, k);
        h->plen += k;
        src += k;
        n -= k;
        if (h->plen == MSH_HASH_CHUNK) {
            msh_push_digest(h, msh_chunk_digest(h->partial, MSH_HASH_CHUNK));
            h->plen = 0;
        }
    }
    while (n >= MSH_HASH_CHUNK) {
        msh_push_digest(h, msh_chunk_digest(src, MSH_HASH_CHUNK));
        src += MSH_HASH_CHUNK;
        n -= MSH_HASH_CHUNK;
    }
    if (n)
        msh_hasher_update(h, src, n); /* a tail shorter than a chunk: into `partial` */
    h->total -= (int64_t)n;           /* counted by the call above */
}

uint64_t msh_hasher_digest(msh_hasher *h) {
    if (h->plen) {
        msh_push_digest(h, msh_chunk_digest(h->partial, h->plen));
        h->plen = 0;
    }
    if (h->total == 0)
        return msh_chunk_digest((const uint8_t *)"", 0);
#if defined(MSH_FORCE_SCALAR)
    return msh_xxh64_ref(h->digests, 8 * h->n_digests, (uint64_t)h->total);
#else
    return XXH64(h->digests, 8 * h->n_digests, (uint64_t)h->total);
#endif
}

void msh_hasher_free(msh_hasher *h) {
    if (!h)
        return;
    free(h->digests);
    free(h->partial);
    free(h);
}

int msh_hasher_failed(const msh_hasher *h) {
    return h->oom;
}

msh_status msh_tensor_digest_ref(const void *p, size_t n, uint64_t *out) {
    const uint8_t *b = p;
    if (n == 0) {
        *out = msh_chunk_hash_ref(b, 0);
        return MSH_OK;
    }
    size_t nchunks = (n + MSH_HASH_CHUNK - 1) / MSH_HASH_CHUNK;
    uint8_t *d = malloc(nchunks * 8);
    if (!d)
        return MSH_ERR_NOMEM;
    for (size_t i = 0; i < nchunks; i++) {
        size_t off = i * MSH_HASH_CHUNK;
        size_t len = n - off < MSH_HASH_CHUNK ? n - off : MSH_HASH_CHUNK;
        msh_store_le64(d + 8 * i, msh_chunk_hash_ref(b + off, len));
    }
    *out = msh_xxh64_ref(d, nchunks * 8, (uint64_t)n);
    free(d);
    return MSH_OK;
}

msh_status msh_tensor_digest(const void *p, size_t n, uint64_t *out) {
    msh_hasher *h = msh_hasher_new();
    if (!h)
        return MSH_ERR_NOMEM;
    msh_hasher_update(h, p, n);
    *out = msh_hasher_digest(h);
    msh_status st = msh_hasher_failed(h) ? MSH_ERR_NOMEM : MSH_OK;
    msh_hasher_free(h);
    return st;
}

uint64_t msh_digest_combine(const uint64_t *chunks, size_t n, int64_t total, uint8_t *scratch) {
    if (total == 0)
        return msh_chunk_digest((const uint8_t *)"", 0);
    for (size_t i = 0; i < n; i++)
        msh_store_le64(scratch + 8 * i, chunks[i]);
#if defined(MSH_FORCE_SCALAR)
    return msh_xxh64_ref(scratch, 8 * n, (uint64_t)total);
#else
    return XXH64(scratch, 8 * n, (uint64_t)total);
#endif
}
