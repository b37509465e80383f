/* Every name a model uses (values, initializers, nodes, in all graphs), and fresh ones. */
#ifndef MSH_NAMES_H
#define MSH_NAMES_H

#include "common/msh_strmap.h"
#include "formats/onnx_model.h"

typedef struct msh_names {
    msh_strmap map; /* name -> index in strs */
    char **strs;    /* owned copies */
    size_t n, cap;
    uint64_t counter;
} msh_names;

msh_status msh_names_collect(msh_names *nm, const msh_onnx_model *m, msh_error *e);
/* "<base><suffix>", or with "_<n>" appended until unused; owned by `nm`. NULL: out of memory. */
const char *msh_names_fresh(msh_names *nm, const char *base, const char *suffix);
void msh_names_free(msh_names *nm);

#endif
