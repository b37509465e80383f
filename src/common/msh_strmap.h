/* A string -> int64 map (open addressing). Keys are borrowed, not copied. */
#ifndef MSH_STRMAP_H
#define MSH_STRMAP_H

#include "common/msh_common.h"

typedef struct msh_strmap {
    const char **keys;
    int64_t *vals;
    size_t cap, n;
} msh_strmap;

void msh_strmap_init(msh_strmap *m);
void msh_strmap_free(msh_strmap *m);
/* Pointer to the value of `key`, inserted with `init` when absent; NULL when out of memory. */
int64_t *msh_strmap_upsert(msh_strmap *m, const char *key, int64_t init);
/* Pointer to the value of `key`, or NULL when absent. */
int64_t *msh_strmap_get(const msh_strmap *m, const char *key);

#endif
