#include "passes/names.h"

#include <stdio.h>
#include <stdlib.h>

static int note(msh_names *nm, const char *s) {
    if (!s || msh_strmap_get(&nm->map, s))
        return 1;
    char *d = msh_strdup(s);
    if (!d || !msh_grow((void **)&nm->strs, &nm->cap, nm->n, sizeof *nm->strs)) {
        free(d);
        return 0;
    }
    nm->strs[nm->n++] = d;
    return msh_strmap_upsert(&nm->map, d, (int64_t)nm->n - 1) != NULL;
}

msh_status msh_names_collect(msh_names *nm, const msh_onnx_model *m, msh_error *e) {
    memset(nm, 0, sizeof *nm);
    int ok = 1;
    for (size_t gi = 0; ok && gi < m->n_graphs; gi++) {
        const Onnx__GraphProto *g = m->graphs[gi].g;
        for (size_t i = 0; ok && i < g->n_input; i++)
            ok = note(nm, g->input[i]->name);
        for (size_t i = 0; ok && i < g->n_output; i++)
            ok = note(nm, g->output[i]->name);
        for (size_t i = 0; ok && i < g->n_initializer; i++)
            ok = note(nm, g->initializer[i]->name);
        for (size_t i = 0; ok && i < g->n_node; i++) {
            const Onnx__NodeProto *n = g->node[i];
            ok = note(nm, n->name);
            for (size_t k = 0; ok && k < n->n_output; k++)
                ok = note(nm, n->output[k]);
            for (size_t k = 0; ok && k < n->n_input; k++)
                ok = note(nm, n->input[k]);
        }
    }
    return ok ? MSH_OK : msh_fail(e, MSH_ERR_NOMEM, "out of memory");
}

const char *msh_names_fresh(msh_names *nm, const char *base, const char *suffix) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s%s", base, suffix);
    while (msh_strmap_get(&nm->map, buf))
        snprintf(buf, sizeof buf, "%s%s_%llu", base, suffix, (unsigned long long)++nm->counter);
    if (!note(nm, buf))
        return NULL;
    return nm->strs[nm->n - 1];
}

void msh_names_free(msh_names *nm) {
    for (size_t i = 0; i < nm->n; i++)
        free(nm->strs[i]);
    free(nm->strs);
    msh_strmap_free(&nm->map);
    memset(nm, 0, sizeof *nm);
}
