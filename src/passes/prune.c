#include "passes/prune.h"

#include <stdio.h>
#include <stdlib.h>

#include "common/msh_strmap.h"

typedef struct pctx {
    msh_onnx_model *m;
    int apply;
    int keep_inputs;
    msh_prune_stats *st;
    msh_error *e;
    int changed; /* a node or tensor was removed: the tensor table must be rebuilt */
} pctx;

static msh_status nomem(pctx *c) {
    return msh_fail(c->e, MSH_ERR_NOMEM, "out of memory");
}

static int64_t tensor_bytes(pctx *c, const Onnx__TensorProto *tp) {
    int64_t i = msh_onnx_find_tensor(c->m, tp);
    return i >= 0 && c->m->tensors[i].d.nbytes > 0 ? c->m->tensors[i].d.nbytes : 0;
}

/* The names g declares (inputs, initializers, sparse initializers, node outputs) into `d`. */
static int collect_declared(const Onnx__GraphProto *g, msh_strmap *d) {
    for (size_t i = 0; i < g->n_input; i++)
        if (g->input[i]->name && !msh_strmap_upsert(d, g->input[i]->name, 1))
            return 0;
    for (size_t i = 0; i < g->n_initializer; i++)
        if (g->initializer[i]->name && !msh_strmap_upsert(d, g->initializer[i]->name, 1))
            return 0;
    for (size_t i = 0; i < g->n_sparse_initializer; i++) {
        const Onnx__TensorProto *v = g->sparse_initializer[i]->values;
        if (v && v->name && !msh_strmap_upsert(d, v->name, 1))
            return 0;
    }
    for (size_t i = 0; i < g->n_node; i++)
        for (size_t k = 0; k < g->node[i]->n_output; k++)
            if (!msh_strmap_upsert(d, g->node[i]->output[k], 1))
                return 0;
    return 1;
}

static msh_status need(pctx *c, msh_strmap *live, const char *name) {
    if (name && *name && !msh_strmap_upsert(live, name, 1))
        return nomem(c);
    return MSH_OK;
}

static msh_status prune_graph(pctx *c, Onnx__GraphProto *g, msh_strmap *captures, int is_main);

/* Names a subgraph reads from its enclosing scopes. */
static msh_status sub_captures(pctx *c, Onnx__GraphProto *sg, msh_strmap *live) {
    msh_strmap cap;
    msh_strmap_init(&cap);
    msh_status st = prune_graph(c, sg, &cap, 0);
    for (size_t i = 0; st == MSH_OK && i < cap.cap; i++)
        if (cap.keys[i])
            st = need(c, live, cap.keys[i]);
    msh_strmap_free(&cap);
    return st;
}

/* Mark what g's outputs need, drop the rest (when applying); names g reads from outside go to
 * `captures`. The names in the maps point into the tree, which outlives them. */
static msh_status prune_graph(pctx *c, Onnx__GraphProto *g, msh_strmap *captures, int is_main) {
    msh_strmap live;
    msh_strmap_init(&live);
    msh_status st = MSH_OK;
    for (size_t i = 0; st == MSH_OK && i < g->n_output; i++)
        st = need(c, &live, g->output[i]->name);
    char *dead = calloc(g->n_node + 1, 1);
    if (!dead)
        st = nomem(c);
    for (size_t i = g->n_node; st == MSH_OK && i-- > 0;) {
        Onnx__NodeProto *n = g->node[i];
        int used = 0;
        for (size_t k = 0; k < n->n_output && !used; k++)
            used = n->output[k][0] && msh_strmap_get(&live, n->output[k]) != NULL;
        if (!used) {
            dead[i] = 1;
            continue;
        }
        for (size_t k = 0; st == MSH_OK && k < n->n_input; k++)
            st = need(c, &live, n->input[k]);
        for (size_t a = 0; st == MSH_OK && a < n->n_attribute; a++) {
            Onnx__AttributeProto *at = n->attribute[a];
            if (at->g)
                st = sub_captures(c, at->g, &live);
            for (size_t k = 0; st == MSH_OK && k < at->n_graphs; k++)
                st = sub_captures(c, at->graphs[k], &live);
        }
    }
    /* what this graph reads but does not declare comes from outside */
    if (st == MSH_OK && captures) {
        msh_strmap decl;
        msh_strmap_init(&decl);
        if (!collect_declared(g, &decl))
            st = nomem(c);
        for (size_t i = 0; st == MSH_OK && i < live.cap; i++)
            if (live.keys[i] && !msh_strmap_get(&decl, live.keys[i]) &&
                !msh_strmap_upsert(captures, live.keys[i], 1))
                st = nomem(c);
        msh_strmap_free(&decl);
    }
    /* graph inputs: a subgraph's are positional, the main graph's may go */
    char *drop_in = calloc(g->n_input + 1, 1);
    if (!drop_in && st == MSH_OK)
        st = nomem(c);
    for (size_t i = 0; st == MSH_OK && is_main && !c->keep_inputs && i < g->n_input; i++)
        if (g->input[i]->name && !msh_strmap_get(&live, g->input[i]->name))
            drop_in[i] = 1;
    /* initializers: unused ones go; one that is a graph input stays while the input does */
    char *drop_init = calloc(g->n_initializer + 1, 1);
    if (!drop_init && st == MSH_OK)
        st = nomem(c);
    for (size_t i = 0; st == MSH_OK && i < g->n_initializer; i++) {
        const char *nm = g->initializer[i]->name;
        if (nm && msh_strmap_get(&live, nm))
            continue;
        int is_input = 0;
        for (size_t k = 0; k < g->n_input; k++)
            if (g->input[k]->name && nm && strcmp(g->input[k]->name, nm) == 0 && !drop_in[k])
                is_input = 1;
        if (is_input)
            continue;
        drop_init[i] = 1;
        c->st->tensors++;
        c->st->bytes += tensor_bytes(c, g->initializer[i]);
    }
    for (size_t i = 0; i < g->n_node; i++)
        c->st->nodes += dead[i];
    if (st == MSH_OK && c->apply) {
        size_t w = 0;
        for (size_t i = 0; i < g->n_node; i++) {
            if (dead[i])
                protobuf_c_message_free_unpacked(&g->node[i]->base, NULL);
            else
                g->node[w++] = g->node[i];
        }
        g->n_node = w;
        w = 0;
        for (size_t i = 0; i < g->n_initializer; i++) {
            if (drop_init[i])
                protobuf_c_message_free_unpacked(&g->initializer[i]->base, NULL);
            else
                g->initializer[w++] = g->initializer[i];
        }
        g->n_initializer = w;
        w = 0;
        for (size_t i = 0; i < g->n_input; i++) {
            if (drop_in[i]) {
                protobuf_c_message_free_unpacked(&g->input[i]->base, NULL);
                c->st->inputs++;
            } else {
                g->input[w++] = g->input[i];
            }
        }
        g->n_input = w;
        w = 0;
        for (size_t i = 0; i < g->n_sparse_initializer; i++) {
            const Onnx__TensorProto *v = g->sparse_initializer[i]->values;
            if (v && v->name && !msh_strmap_get(&live, v->name)) {
                protobuf_c_message_free_unpacked(&g->sparse_initializer[i]->base, NULL);
                c->changed = 1;
            } else
                g->sparse_initializer[w++] = g->sparse_initializer[i];
        }
        g->n_sparse_initializer = w;
        /* value_info of names that no longer exist (declared again after the removals) */
        msh_strmap decl;
        msh_strmap_init(&decl);
        if (g->n_value_info && !collect_declared(g, &decl))
            st = nomem(c);
        w = 0;
        for (size_t i = 0; st == MSH_OK && i < g->n_value_info; i++) {
            if (g->value_info[i]->name && !msh_strmap_get(&decl, g->value_info[i]->name))
                protobuf_c_message_free_unpacked(&g->value_info[i]->base, NULL);
            else
                g->value_info[w++] = g->value_info[i];
        }
        if (st == MSH_OK)
            g->n_value_info = w;
        msh_strmap_free(&decl);
    }
    free(dead);
    free(drop_in);
    free(drop_init);
    msh_strmap_free(&live);
    return st;
}

static int domain_used_in(const Onnx__NodeProto *const *nodes, size_t n, const char *dom);

static int graph_uses(const Onnx__GraphProto *g, const char *dom) {
    return domain_used_in((const Onnx__NodeProto *const *)g->node, g->n_node, dom);
}

static int domain_used_in(const Onnx__NodeProto *const *nodes, size_t n, const char *dom) {
    for (size_t i = 0; i < n; i++) {
        const Onnx__NodeProto *nd = nodes[i];
        const char *d = nd->domain ? nd->domain : "";
        if (strcmp(d, dom) == 0)
            return 1;
        for (size_t a = 0; a < nd->n_attribute; a++) {
            const Onnx__AttributeProto *at = nd->attribute[a];
            if (at->g && graph_uses(at->g, dom))
                return 1;
            for (size_t k = 0; k < at->n_graphs; k++)
                if (graph_uses(at->graphs[k], dom))
                    return 1;
        }
    }
    return 0;
}

static msh_status select_outputs(pctx *c, const msh_prune_opts *o) {
    Onnx__GraphProto *g = c->m->mp->graph;
    const char *lists[2] = {o->keep_outputs, o->drop_outputs};
    char *mark = calloc(g->n_output + 1, 1);
    if (!mark)
        return nomem(c);
    for (int li = 0; li < 2; li++) {
        const char *p = lists[li];
        if (!p)
            continue;
        while (*p) {
            const char *q = strchr(p, ',');
            size_t len = q ? (size_t)(q - p) : strlen(p);
            int found = 0;
            for (size_t i = 0; len && i < g->n_output; i++)
                if (g->output[i]->name && strlen(g->output[i]->name) == len &&
                    strncmp(g->output[i]->name, p, len) == 0) {
                    mark[i] |= (char)(1 << li);
                    found = 1;
                }
            if (len && !found) {
                char outs[600] = "";
                for (size_t i = 0; i < g->n_output && strlen(outs) < 500; i++)
                    snprintf(outs + strlen(outs), sizeof outs - strlen(outs), "%s%s", i ? ", " : "",
                             g->output[i]->name ? g->output[i]->name : "");
                free(mark);
                return msh_fail(c->e, MSH_ERR_USAGE,
                                "no graph output named '%.*s'; the model's "
                                "outputs are: %s",
                                (int)len, p, outs);
            }
            p = q ? q + 1 : p + len;
        }
    }
    size_t w = 0;
    for (size_t i = 0; i < g->n_output; i++) {
        int keep = o->keep_outputs ? (mark[i] & 1) != 0 : 1;
        if (mark[i] & 2)
            keep = 0;
        if (keep)
            g->output[w++] = g->output[i];
        else
            protobuf_c_message_free_unpacked(&g->output[i]->base, NULL);
    }
    free(mark);
    if (w == 0)
        return msh_fail(c->e, MSH_ERR_USAGE, "no graph output would be left");
    c->st->outputs = (int64_t)(g->n_output - w);
    g->n_output = w;
    return MSH_OK;
}

msh_status msh_prune_apply(msh_onnx_model *m, const msh_prune_opts *o, int apply,
                           msh_prune_stats *st, msh_error *e) {
    memset(st, 0, sizeof *st);
    /* graph inputs go only when outputs were chosen: plain clean-up keeps the interface */
    int choosing = o && (o->keep_outputs || o->drop_outputs);
    pctx c = {m, apply, !choosing || o->keep_inputs, st, e, 0};
    if (apply && o && (o->keep_outputs || o->drop_outputs))
        MSH_FORWARD(select_outputs(&c, o));
    MSH_FORWARD(prune_graph(&c, m->mp->graph, NULL, 1));
    if (!apply)
        return MSH_OK;
    /* opset imports of domains that no node uses any more (the default domain stays) */
    size_t w = 0;
    for (size_t i = 0; i < m->mp->n_opset_import; i++) {
        Onnx__OperatorSetIdProto *op = m->mp->opset_import[i];
        const char *d = op->domain ? op->domain : "";
        int keep = !*d || strcmp(d, "ai.onnx") == 0 || graph_uses(m->mp->graph, d);
        for (size_t f = 0; !keep && f < m->mp->n_functions; f++)
            keep = domain_used_in((const Onnx__NodeProto *const *)m->mp->functions[f]->node,
                                  m->mp->functions[f]->n_node, d) ||
                   (m->mp->functions[f]->domain && strcmp(m->mp->functions[f]->domain, d) == 0);
        for (size_t t = 0; !keep && t < m->mp->n_training_info; t++) {
            const Onnx__TrainingInfoProto *ti = m->mp->training_info[t];
            keep = (ti->initialization && graph_uses(ti->initialization, d)) ||
                   (ti->algorithm && graph_uses(ti->algorithm, d));
        }
        if (keep) {
            m->mp->opset_import[w++] = op;
        } else {
            protobuf_c_message_free_unpacked(&op->base, NULL);
            st->opsets++;
        }
    }
    m->mp->n_opset_import = w;
    /* the tensor table points at removed tensors only when something went */
    if (c.changed || st->nodes || st->tensors || st->inputs || st->outputs)
        return msh_onnx_reindex(m, e);
    return MSH_OK;
}
