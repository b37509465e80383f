#include "passes/storage.h"

#include <stdlib.h>

#include "formats/onnx_build.h"
#include "passes/names.h"

#define T_FLOAT 1

typedef struct sctx {
    msh_onnx_model *m;
    const msh_fp16_opts *o;
    msh_fp16_stats *st;
    msh_names names;
    int64_t opset;
    msh_error *e;
} sctx;

static msh_status nomem(sctx *c) {
    return msh_fail(c->e, MSH_ERR_NOMEM, "out of memory");
}

static const Onnx__AttributeProto *find_attr(const Onnx__NodeProto *n, const char *name) {
    for (size_t i = 0; i < n->n_attribute; i++)
        if (n->attribute[i]->name && strcmp(n->attribute[i]->name, name) == 0)
            return n->attribute[i];
    return NULL;
}

static int is_default_domain(const char *d) {
    return !d || !*d || strcmp(d, "ai.onnx") == 0;
}

/* Cast(to=FLOAT) from `in` to `out`. */
static Onnx__NodeProto *widen(sctx *c, const char *in, const char *out) {
    const char *nm = msh_names_fresh(&c->names, out, "__msh_widen");
    Onnx__NodeProto *n = nm ? msh_onnx_node_new("Cast", nm, &in, 1, &out, 1) : NULL;
    /* Cast-1 names the type as a string */
    if (n && !msh_onnx_node_add_attr(n, c->opset > 0 && c->opset < 6
                                            ? msh_onnx_attr_string("to", "FLOAT")
                                            : msh_onnx_attr_int("to", T_FLOAT))) {
        protobuf_c_message_free_unpacked(&n->base, NULL);
        return NULL;
    }
    return n;
}

/* Insert `n` into `g`'s node list at `pos`. */
static msh_status insert_node(sctx *c, Onnx__GraphProto *g, size_t pos, Onnx__NodeProto *n) {
    Onnx__NodeProto **arr = realloc(g->node, (g->n_node + 1) * sizeof *arr);
    if (!arr) {
        protobuf_c_message_free_unpacked(&n->base, NULL);
        return nomem(c);
    }
    memmove(arr + pos + 1, arr + pos, (g->n_node - pos) * sizeof *arr);
    arr[pos] = n;
    g->node = arr;
    g->n_node++;
    return MSH_OK;
}

/* Whether tensor `ti` (FLOAT, `name` in its graph) is stored in the half type; counts the kept. */
static int wanted(sctx *c, int64_t ti, const char *name) {
    const msh_tensor *t = &c->m->tensors[ti];
    if (t->d.dropped || t->d.out_dtype || t->d.origin < 0 || t->d.numel < MSH_STORAGE_MIN_ELEMENTS)
        return 0;
    c->st->candidates++;
    int why = msh_fp16_kept(c->o, t, name);
    if (why == MSH_FP16_KEPT_RANGE)
        c->st->kept_range++;
    else if (why == MSH_FP16_KEPT_USER)
        c->st->kept_user++;
    return why == 0;
}

static void plan(sctx *c, int64_t ti) {
    msh_tensor *t = &c->m->tensors[ti];
    t->d.out_dtype = c->o->target;
    t->tp->data_type = c->o->target;
    c->st->tensors++;
    c->st->bytes_saved += t->d.numel * 2;
    c->st->casts++;
}

static int is_graph_input(const Onnx__GraphProto *g, const char *name, size_t *at) {
    for (size_t i = 0; i < g->n_input; i++)
        if (g->input[i]->name && strcmp(g->input[i]->name, name) == 0) {
            *at = i;
            return 1;
        }
    return 0;
}

static msh_status set_str(sctx *c, char **dst, const char *v) {
    char *d = msh_strdup(v);
    if (!d)
        return nomem(c);
    free(*dst);
    *dst = d;
    return MSH_OK;
}

static msh_status do_graph(sctx *c, Onnx__GraphProto *g) {
    int old_ir = c->m->mp->ir_version < 4;
    const char *tag = c->o->target == 10 ? "__msh_fp16" : "__msh_bf16";
    size_t head = 0; /* Casts of initializers go first, in initializer order */
    for (size_t i = 0; i < g->n_initializer; i++) {
        Onnx__TensorProto *tp = g->initializer[i];
        int64_t ti = msh_onnx_find_tensor(c->m, tp);
        size_t in_at = 0;
        if (ti < 0 || tp->data_type != T_FLOAT || !tp->name || !*tp->name)
            continue;
        int as_input = is_graph_input(g, tp->name, &in_at);
        if (as_input && !old_ir)
            continue; /* an overridable default: its name and type are an interface */
        if (!wanted(c, ti, tp->name))
            continue;
        const char *half = msh_names_fresh(&c->names, tp->name, tag);
        Onnx__NodeProto *n = half ? widen(c, half, tp->name) : NULL;
        if (!n)
            return nomem(c);
        MSH_FORWARD(insert_node(c, g, head++, n));
        if (as_input) { /* before IR 4 the weight is declared as a graph input too */
            Onnx__ValueInfoProto *vi = g->input[in_at];
            MSH_FORWARD(set_str(c, &vi->name, half));
            if (vi->type && vi->type->tensor_type)
                vi->type->tensor_type->elem_type = c->o->target;
        }
        MSH_FORWARD(set_str(c, &tp->name, half));
        c->m->tensors[ti].d.name = tp->name;
        plan(c, ti);
    }
    for (size_t i = 0; i < g->n_node; i++) {
        Onnx__NodeProto *n = g->node[i];
        if (!is_default_domain(n->domain) || !n->op_type || strcmp(n->op_type, "Constant") != 0 ||
            n->n_output != 1 || !n->output[0][0])
            continue;
        const Onnx__AttributeProto *a = find_attr(n, "value");
        int64_t ti = a && a->t ? msh_onnx_find_tensor(c->m, a->t) : -1;
        if (ti < 0 || a->t->data_type != T_FLOAT || !wanted(c, ti, n->output[0]))
            continue;
        const char *out = n->output[0];
        const char *half = msh_names_fresh(&c->names, out, tag);
        Onnx__NodeProto *w = half ? widen(c, half, out) : NULL;
        if (!w)
            return nomem(c);
        MSH_FORWARD(insert_node(c, g, i + 1, w));
        MSH_FORWARD(set_str(c, &n->output[0], half));
        plan(c, ti);
        i++; /* past the Cast */
    }
    return MSH_OK;
}

msh_status msh_storage_apply(msh_onnx_model *m, const msh_fp16_opts *o, msh_fp16_stats *st,
                             msh_error *e) {
    memset(st, 0, sizeof *st);
    if (o->target != 10 && o->target != 16)
        return msh_fail(e, MSH_ERR_USAGE, "storage type must be FLOAT16 or BFLOAT16");
    sctx c;
    memset(&c, 0, sizeof c);
    c.m = m;
    c.o = o;
    c.st = st;
    c.e = e;
    for (size_t i = 0; i < m->mp->n_opset_import; i++)
        if (is_default_domain(m->mp->opset_import[i]->domain))
            c.opset = m->mp->opset_import[i]->version;
    msh_status s = msh_names_collect(&c.names, m, e);
    for (size_t gi = 0; s == MSH_OK && gi < m->n_graphs; gi++)
        s = do_graph(&c, m->graphs[gi].g);
    msh_names_free(&c.names);
    return s;
}
