#include "passes/lift.h"

#include <stdio.h>
#include <stdlib.h>

#include "common/msh_strmap.h"
#include "passes/dedup.h"
#include "passes/int4.h"
#include "passes/int8.h"

static int is_dflt(const char *d) {
    return !d || !*d || strcmp(d, "ai.onnx") == 0;
}

/* The tensor of a liftable Constant node, or NULL. */
static Onnx__AttributeProto *const_value(const Onnx__NodeProto *n) {
    if (!is_dflt(n->domain) || !n->op_type || strcmp(n->op_type, "Constant") != 0 ||
        n->n_output != 1 || !n->output[0][0] || n->n_attribute != 1)
        return NULL;
    Onnx__AttributeProto *a = n->attribute[0];
    return a->name && strcmp(a->name, "value") == 0 && a->t ? a : NULL;
}

/* "type:d0,d1,..." of a tensor: dedup only merges tensors that agree on it. */
static void shape_key(const Onnx__TensorProto *tp, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "%d:", (int)tp->data_type);
    for (size_t i = 0; i < tp->n_dims && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%lld,", (long long)tp->dims[i]);
}

static msh_status count(msh_strmap *m, const char *name, msh_error *e) {
    int64_t *v = name ? msh_strmap_upsert(m, name, 0) : NULL;
    if (name && !v)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    if (v)
        (*v)++;
    return MSH_OK;
}

typedef struct want_ctx {
    const msh_onnx_model *m;
    msh_strmap *want;
} want_ctx;

/* A class of identical tensors: its Constants are wanted as initializers (by output name). */
static msh_status on_class(void *arg, const msh_dedup_cand *const *cls, size_t n, msh_error *e) {
    want_ctx *w = arg;
    for (size_t i = 0; i < n; i++) {
        const msh_tensor *t = &w->m->tensors[cls[i]->t];
        if (t->loc != MSH_LOC_CONSTANT)
            continue;
        for (size_t gi = 0; gi < w->m->n_graphs; gi++) {
            const Onnx__GraphProto *g = w->m->graphs[gi].g;
            for (size_t k = 0; k < g->n_node; k++) {
                const Onnx__AttributeProto *a = const_value(g->node[k]);
                if (a && a->t == t->tp && !msh_strmap_upsert(w->want, g->node[k]->output[0], 1))
                    return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            }
        }
    }
    return MSH_OK;
}

msh_status msh_lift_constants(msh_onnx_model *m, const msh_lift_opts *o, int64_t *lifted,
                              msh_error *e) {
    *lifted = 0;
    if (m->mp->ir_version < 4 || (!o->dedup && !o->int8 && !o->int4))
        return MSH_OK;
    msh_strmap decl, outs, shapes, want;
    msh_strmap_init(&decl);
    msh_strmap_init(&outs);
    msh_strmap_init(&shapes);
    msh_strmap_init(&want);
    msh_status st = MSH_OK;
    char key[1024];
    /* names declared, graph outputs, and how many tensors have each type and shape */
    for (size_t gi = 0; st == MSH_OK && gi < m->n_graphs; gi++) {
        const Onnx__GraphProto *g = m->graphs[gi].g;
        for (size_t i = 0; st == MSH_OK && i < g->n_initializer; i++) {
            st = count(&decl, g->initializer[i]->name, e);
            shape_key(g->initializer[i], key, sizeof key);
            if (st == MSH_OK)
                st = count(&shapes, key, e);
        }
        for (size_t i = 0; st == MSH_OK && i < g->n_input; i++)
            st = count(&decl, g->input[i]->name, e);
        for (size_t i = 0; st == MSH_OK && i < g->n_output; i++)
            st = count(&outs, g->output[i]->name, e);
        for (size_t i = 0; st == MSH_OK && i < g->n_node; i++) {
            const Onnx__NodeProto *n = g->node[i];
            for (size_t k = 0; st == MSH_OK && k < n->n_output; k++)
                if (n->output[k][0])
                    st = count(&decl, n->output[k], e);
            const Onnx__AttributeProto *a = const_value(n);
            if (st == MSH_OK && a) {
                shape_key(a->t, key, sizeof key);
                st = count(&shapes, key, e);
            }
        }
    }
    /* dedup: Constants identical to another Constant or initializer (found as dedup finds
     * initializers: same type and shape, then digests, then bytes) */
    msh_dedup_cand *cand = NULL;
    size_t nc = 0, n_const = 0;
    if (st == MSH_OK && o->dedup && !(cand = calloc(m->n_tensors + 1, sizeof *cand)))
        st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t gi = 0; cand && st == MSH_OK && gi < m->n_graphs; gi++) {
        const Onnx__GraphProto *g = m->graphs[gi].g;
        for (size_t i = 0; i < g->n_node; i++) {
            const Onnx__AttributeProto *a = const_value(g->node[i]);
            const char *out = a ? g->node[i]->output[0] : NULL;
            int64_t ti = a ? msh_onnx_find_tensor(m, a->t) : -1;
            int64_t *d = out ? msh_strmap_get(&decl, out) : NULL;
            if (ti < 0 || !d || *d != 1 || msh_strmap_get(&outs, out) ||
                m->tensors[ti].d.nbytes < MSH_LIFT_DEDUP_MIN_BYTES)
                continue;
            shape_key(a->t, key, sizeof key);
            int64_t *same = msh_strmap_get(&shapes, key);
            if (same && *same >= 2) {
                cand[nc++] = (msh_dedup_cand){ti, 1, 0};
                n_const++;
            }
        }
    }
    for (size_t i = 0; n_const && i < m->n_tensors; i++) {
        const msh_tensor *t = &m->tensors[i];
        if (t->loc == MSH_LOC_INITIALIZER && !t->d.dropped && t->graph >= 0 &&
            t->d.nbytes >= MSH_LIFT_DEDUP_MIN_BYTES)
            cand[nc++] = (msh_dedup_cand){(int64_t)i, 1, 0};
    }
    if (st == MSH_OK && n_const && nc >= 2) {
        msh_table tab = msh_onnx_table(m);
        want_ctx wc = {m, &want};
        st = msh_dedup_classes(&tab, cand, nc, o->engine, on_class, &wc, e);
    }
    free(cand);
    /* INT8: Constant outputs by name (declared once, so one per name), then their readers */
    msh_strmap cmap;
    msh_strmap_init(&cmap);
    const Onnx__TensorProto **ctp = NULL;
    size_t nct = 0;
    for (size_t gi = 0; st == MSH_OK && (o->int8 || o->int4) && gi < m->n_graphs; gi++) {
        const Onnx__GraphProto *g = m->graphs[gi].g;
        for (size_t i = 0; st == MSH_OK && i < g->n_node; i++) {
            const Onnx__AttributeProto *a = const_value(g->node[i]);
            if (!a || a->t->data_type != 1)
                continue;
            const Onnx__TensorProto **v = realloc(ctp, (nct + 1) * sizeof *v);
            if (!v || !msh_strmap_upsert(&cmap, g->node[i]->output[0], (int64_t)nct)) {
                if (v)
                    ctp = v;
                st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
                break;
            }
            ctp = v;
            ctp[nct++] = a->t;
        }
    }
    for (size_t gi = 0; st == MSH_OK && (o->int8 || o->int4) && nct && gi < m->n_graphs; gi++) {
        const Onnx__GraphProto *g = m->graphs[gi].g;
        for (size_t i = 0; st == MSH_OK && i < g->n_node; i++) {
            const Onnx__NodeProto *n = g->node[i];
            for (size_t k = 0; st == MSH_OK && k < n->n_input; k++) {
                int64_t *c = n->input[k][0] ? msh_strmap_get(&cmap, n->input[k]) : NULL;
                if (!c)
                    continue;
                const Onnx__TensorProto *tp = ctp[*c];
                int64_t ti = msh_onnx_find_tensor(m, tp);
                int64_t numel = ti >= 0 ? m->tensors[ti].d.numel : 0;
                int w8 = o->int8 && numel >= o->int8_min_elements &&
                         msh_int8_eligible_axis(n, k, tp->n_dims, o->int8_gather) >= 0;
                int r4 = o->int4 ? msh_int4_reads_weight(n, k, tp->n_dims, o->int4_gather) : 0;
                int w4 = r4 == 2 || (r4 == 1 && numel >= o->int4_min_elements);
                if (ti >= 0 && (w8 || w4) && !msh_strmap_upsert(&want, n->input[k], 1))
                    st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            }
        }
    }
    free(ctp);
    msh_strmap_free(&cmap);
    /* lift: the node's tensor moves into its graph's initializers, under the output's name */
    for (size_t gi = 0; st == MSH_OK && gi < m->n_graphs; gi++) {
        Onnx__GraphProto *g = m->graphs[gi].g;
        size_t kept = 0;
        for (size_t i = 0; i < g->n_node; i++) {
            Onnx__NodeProto *n = g->node[i];
            Onnx__AttributeProto *a = const_value(n);
            int64_t *w = a ? msh_strmap_get(&decl, n->output[0]) : NULL;
            int64_t ti = a ? msh_onnx_find_tensor(m, a->t) : -1;
            char *name = NULL;
            Onnx__TensorProto **arr = NULL;
            if (st == MSH_OK && w && *w == 1 && ti >= 0 && msh_strmap_get(&want, n->output[0])) {
                name = msh_strdup(n->output[0]);
                arr = name ? realloc(g->initializer, (g->n_initializer + 1) * sizeof *arr) : NULL;
                if (!arr) {
                    free(name);
                    st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
                }
            }
            if (!arr) {
                g->node[kept++] = n;
                continue;
            }
            Onnx__TensorProto *tp = a->t;
            a->t = NULL; /* the node goes; its tensor stays */
            free(tp->name);
            tp->name = name;
            if (n->doc_string && *n->doc_string && (!tp->doc_string || !*tp->doc_string)) {
                free(tp->doc_string); /* the node's documentation stays with its value */
                tp->doc_string = n->doc_string;
                n->doc_string = NULL;
            }
            g->initializer = arr;
            arr[g->n_initializer++] = tp;
            msh_tensor *t = &m->tensors[ti];
            t->loc = MSH_LOC_INITIALIZER;
            t->d.name = tp->name;
            protobuf_c_message_free_unpacked(&n->base, NULL);
            (*lifted)++;
        }
        g->n_node = kept;
    }
    msh_strmap_free(&decl);
    msh_strmap_free(&outs);
    msh_strmap_free(&shapes);
    msh_strmap_free(&want);
    return st;
}

/* Whether a node of a graph other than `gi` reads `name` (from an enclosing scope). */
static int read_elsewhere(const msh_onnx_model *m, size_t gi, const char *name) {
    for (size_t h = 0; h < m->n_graphs; h++) {
        const Onnx__GraphProto *g = m->graphs[h].g;
        for (size_t i = 0; h != gi && i < g->n_node; i++)
            for (size_t k = 0; k < g->node[i]->n_input; k++)
                if (strcmp(g->node[i]->input[k], name) == 0)
                    return 1;
    }
    return 0;
}

msh_status msh_fold_identities(msh_onnx_model *m, int64_t *folded, msh_error *e) {
    *folded = 0;
    msh_strmap outs, decl, inits, alias;
    msh_strmap_init(&outs);
    msh_strmap_init(&decl);
    msh_strmap_init(&inits);
    msh_strmap_init(&alias);
    msh_status st = MSH_OK;
    /* the removed nodes are freed at the end: the maps borrow their output names; target[k]: the
     * initializer that alias k (an Identity's output) stands for */
    size_t total = 0, n_gone = 0;
    for (size_t gi = 0; gi < m->n_graphs; gi++)
        total += m->graphs[gi].g->n_node;
    Onnx__NodeProto **gone = malloc((total + 1) * sizeof *gone);
    const char **target = malloc((total + 1) * sizeof *target);
    if (!gone || !target)
        st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t gi = 0; st == MSH_OK && gi < m->n_graphs; gi++) {
        const Onnx__GraphProto *g = m->graphs[gi].g;
        for (size_t i = 0; st == MSH_OK && i < g->n_output; i++)
            st = count(&outs, g->output[i]->name, e);
        for (size_t i = 0; st == MSH_OK && i < g->n_node; i++)
            for (size_t k = 0; st == MSH_OK && k < g->node[i]->n_output; k++)
                if (g->node[i]->output[k][0])
                    st = count(&decl, g->node[i]->output[k], e);
    }
    for (size_t gi = 0; st == MSH_OK && gi < m->n_graphs; gi++) {
        Onnx__GraphProto *g = m->graphs[gi].g;
        msh_strmap_free(&inits);
        msh_strmap_init(&inits);
        msh_strmap_free(&alias);
        msh_strmap_init(&alias);
        size_t n_alias = 0;
        for (size_t i = 0; st == MSH_OK && i < g->n_initializer; i++)
            st = count(&inits, g->initializer[i]->name, e);
        /* the Identities of an initializer (through earlier ones: a chain), in node order */
        size_t kept = 0;
        for (size_t i = 0; i < g->n_node; i++) {
            Onnx__NodeProto *n = g->node[i];
            const char *src = NULL;
            if (st == MSH_OK && is_dflt(n->domain) && n->op_type &&
                strcmp(n->op_type, "Identity") == 0 && n->n_input == 1 && n->n_output == 1 &&
                n->input[0][0] && n->output[0][0]) {
                int64_t *a = msh_strmap_get(&alias, n->input[0]);
                src = a ? target[*a] : msh_strmap_get(&inits, n->input[0]) ? n->input[0] : NULL;
            }
            int64_t *d = src ? msh_strmap_get(&decl, n->output[0]) : NULL;
            int64_t *a = NULL;
            if (d && *d == 1 && !msh_strmap_get(&outs, n->output[0]) &&
                !read_elsewhere(m, gi, n->output[0]) &&
                !(a = msh_strmap_upsert(&alias, n->output[0], (int64_t)n_alias)))
                st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            if (!a) {
                g->node[kept++] = n;
                continue;
            }
            target[n_alias++] = src;
            size_t kv = 0; /* its value_info goes with it */
            for (size_t v = 0; v < g->n_value_info; v++) {
                if (g->value_info[v]->name && strcmp(g->value_info[v]->name, n->output[0]) == 0)
                    protobuf_c_message_free_unpacked(&g->value_info[v]->base, NULL);
                else
                    g->value_info[kv++] = g->value_info[v];
            }
            g->n_value_info = kv;
            gone[n_gone++] = n;
            (*folded)++;
        }
        g->n_node = kept;
        /* their readers read the initializer instead */
        for (size_t i = 0; st == MSH_OK && n_alias && i < g->n_node; i++) {
            Onnx__NodeProto *r = g->node[i];
            for (size_t k = 0; st == MSH_OK && k < r->n_input; k++) {
                int64_t *a = r->input[k][0] ? msh_strmap_get(&alias, r->input[k]) : NULL;
                char *name = a ? msh_strdup(target[*a]) : NULL;
                if (a && !name)
                    st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
                if (name) {
                    free(r->input[k]);
                    r->input[k] = name;
                }
            }
        }
    }
    msh_strmap_free(&outs);
    msh_strmap_free(&decl);
    msh_strmap_free(&inits);
    msh_strmap_free(&alias);
    for (size_t i = 0; i < n_gone; i++)
        protobuf_c_message_free_unpacked(&gone[i]->base, NULL);
    free(gone);
    free(target);
    return st;
}
