/*
 * A pickle reader that builds data and calls nothing.
 *
 * Accepts protocols 2 to 5 as torch.save writes them: the data opcodes (ints, floats, strings,
 * bytes, tuples, lists, dicts, sets, memo, frames), BINPERSID storage references, and REDUCE /
 * BUILD / NEWOBJ applied only to an allowlist of globals that are interpreted, not executed:
 * collections.OrderedDict, torch._utils._rebuild_tensor_v2 / _v3, _rebuild_parameter(_with_state),
 * torch storage classes, torch.Size, torch dtypes and _codecs.encode. Any other GLOBAL is
 * refused at once with a message naming it, so a malicious checkpoint is reported, never run.
 * Stack, memo, string lengths and nesting are bounded.
 */
#ifndef MSH_PICKLE_H
#define MSH_PICKLE_H

#include "common/msh_common.h"

typedef enum msh_pk_type {
    MSH_PK_NONE = 0,
    MSH_PK_BOOL,
    MSH_PK_INT,
    MSH_PK_FLOAT,
    MSH_PK_STR,
    MSH_PK_BYTES,
    MSH_PK_TUPLE,
    MSH_PK_LIST,
    MSH_PK_DICT, /* items: key, value, key, value, ... */
    MSH_PK_SET,
    MSH_PK_GLOBAL,  /* an allowed callable or class: `s` holds "module name" */
    MSH_PK_STORAGE, /* a persistent storage reference */
    MSH_PK_TENSOR,
    MSH_PK_DTYPE, /* a torch dtype: `i` is its ONNX element type */
    MSH_PK_MARK
} msh_pk_type;

typedef struct msh_pk msh_pk;
struct msh_pk {
    msh_pk_type type;
    int64_t i;  /* INT, BOOL; STORAGE: numel; DTYPE: element type */
    double f;   /* FLOAT */
    char *s;    /* STR, BYTES, GLOBAL; STORAGE: key */
    size_t len; /* STR, BYTES */
    msh_pk **items;
    size_t n, cap;
    /* STORAGE: element type (ONNX code); TENSOR: storage, offset, shape, stride, dtype */
    int32_t dtype;
    msh_pk *storage;
    int64_t offset;
    int64_t *shape, *stride;
    size_t ndim;
    int checked; /* the deepest level at which the nesting check passed (shared subtrees) */
};

typedef struct msh_pickle {
    msh_pk **all; /* every object, freed together */
    size_t n_all, cap_all;
    msh_pk *root;
} msh_pickle;

/* Interpret `len` bytes of pickle. On failure the message says what and where. */
msh_status msh_pickle_load(msh_pickle *p, const uint8_t *buf, size_t len, msh_error *e);
void msh_pickle_free(msh_pickle *p);

/* The value of `key` in a DICT, or NULL. */
msh_pk *msh_pk_dict_get(const msh_pk *d, const char *key);

#endif
