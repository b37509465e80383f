#include "common/msh_strmap.h"

#include <stdlib.h>

static uint64_t str_hash(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a: keys are short names */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
    return h;
}

void msh_strmap_init(msh_strmap *m) {
    memset(m, 0, sizeof *m);
}

void msh_strmap_free(msh_strmap *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static int grow(msh_strmap *m) {
    size_t cap = m->cap ? 2 * m->cap : 64;
    const char **keys = calloc(cap, sizeof *keys);
    int64_t *vals = calloc(cap, sizeof *vals);
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return 0;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i])
            continue;
        size_t h = str_hash(m->keys[i]) & (cap - 1);
        while (keys[h])
            h = (h + 1) & (cap - 1);
        keys[h] = m->keys[i];
        vals[h] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return 1;
}

int64_t *msh_strmap_get(const msh_strmap *m, const char *key) {
    if (!m->cap)
        return NULL;
    size_t h = str_hash(key) & (m->cap - 1);
    while (m->keys[h]) {
        if (strcmp(m->keys[h], key) == 0)
            return &m->vals[h];
        h = (h + 1) & (m->cap - 1);
    }
    return NULL;
}

int64_t *msh_strmap_upsert(msh_strmap *m, const char *key, int64_t init) {
    int64_t *v = msh_strmap_get(m, key);
    if (v)
        return v;
    if ((m->n + 1) * 2 > m->cap && !grow(m))
        return NULL;
    size_t h = str_hash(key) & (m->cap - 1);
    while (m->keys[h])
        h = (h + 1) & (m->cap - 1);
    m->keys[h] = key;
    m->vals[h] = init;
    m->n++;
    return &m->vals[h];
}
