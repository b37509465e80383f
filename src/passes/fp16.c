#include "passes/fp16.h"

#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/msh_strmap.h"
#include "formats/onnx_build.h"
#include "kernels/msh_cpu.h"
#include "passes/names.h"
#include "passes/op_schemas.h"

#define T_FLOAT 1
#define T_INT64 7
#define T_STRING 8

enum { VAL_PLAIN = 0, VAL_INIT, VAL_CONST };

typedef struct use {
    Onnx__NodeProto *node; /* NULL: a graph output or a forced demand */
    size_t idx;
    int32_t want;
} use;

typedef struct val {
    const char *name; /* owned by the context */
    int32_t type;     /* element type as read; 0 unknown */
    int32_t cur;      /* element type in the output */
    int kind;
    int64_t tensor;         /* VAL_INIT / VAL_CONST: tensor index */
    Onnx__NodeProto *cnode; /* VAL_CONST: the Constant node */
    int keep;               /* a kept FP32 tensor, or a value that only moves one */
    use *uses;
    size_t n_uses, cap_uses;
} val;

typedef struct scope {
    struct scope *parent;
    Onnx__GraphProto *g;
    int graph;
    int is_main;
    msh_strmap names; /* name -> index in ctx.vals */
    msh_strmap casts; /* "name\x01type" -> index in ctx.strs */
    Onnx__NodeProto **out;
    size_t n_out, cap_out;
    Onnx__NodeProto **made; /* nodes this pass created for `out`: the graph owns them only
                               once `out` replaces its node list, so a failure frees them */
    size_t n_made, cap_made;
    size_t first_val; /* vals declared in this scope are [first_val, ...) at its end */
    size_t *own;      /* indices of vals declared here */
    size_t n_own, cap_own;
} scope;

typedef struct ctx {
    msh_onnx_model *m;
    const msh_fp16_opts *o;
    msh_fp16_stats *st;
    msh_error *e;
    val *vals;
    size_t n_vals, cap_vals;
    char **strs; /* every string the context owns */
    size_t n_strs, cap_strs;
    msh_names names; /* every name in the model, and fresh ones */
    int64_t opset_default, opset_ml, opset_training;
    msh_strmap block_ops, block_nodes;
    uint64_t counter;
} ctx;

/* ---- small helpers ---- */

static msh_status nomem(ctx *c) {
    return msh_fail(c->e, MSH_ERR_NOMEM, "out of memory");
}

static const char *own_str(ctx *c, const char *s) {
    char *d = msh_strdup(s);
    if (!d || !msh_grow((void **)&c->strs, &c->cap_strs, c->n_strs, sizeof *c->strs)) {
        free(d);
        return NULL;
    }
    c->strs[c->n_strs++] = d;
    return d;
}

static const char *type_tag(int32_t t) {
    return t == 10 ? "fp16" : t == 16 ? "bf16" : t == T_FLOAT ? "fp32" : "t";
}

/* A name used nowhere in the model: base + "__msh_" + tag (+ a counter when taken). */
static const char *fresh(ctx *c, const char *base, const char *tag) {
    char suffix[64];
    snprintf(suffix, sizeof suffix, "__msh_%s", tag);
    return msh_names_fresh(&c->names, base, suffix);
}

/* Index in c->names.strs of a name returned by fresh(). */
static int64_t fresh_index(ctx *c, const char *name) {
    int64_t *k = msh_strmap_get(&c->names.map, name);
    return k ? *k : -1;
}

static int list_has(const msh_strmap *m, const char *s) {
    return s && msh_strmap_get(m, s) != NULL;
}

int msh_fp16_kept(const msh_fp16_opts *o, const msh_tensor *t, const char *name) {
    int64_t org = t->d.origin;
    if (o->keep && org >= 0 && (size_t)org < o->n_keep && o->keep[org])
        return MSH_FP16_KEPT_RANGE;
    for (size_t i = 0; i < o->n_keep_globs; i++)
        if ((name && fnmatch(o->keep_globs[i], name, 0) == 0) ||
            (t->tp->name && fnmatch(o->keep_globs[i], t->tp->name, 0) == 0))
            return MSH_FP16_KEPT_USER;
    return 0;
}

/* Tensor `ti` (FLOAT), known in the graph as `name`, stays FP32: counted once per tensor. */
static int tensor_kept(ctx *c, int64_t ti, const char *name) {
    int why = msh_fp16_kept(c->o, &c->m->tensors[ti], name);
    if (why == MSH_FP16_KEPT_RANGE)
        c->st->kept_range++;
    else if (why == MSH_FP16_KEPT_USER)
        c->st->kept_user++;
    return why != 0;
}

/* Ops that only move, select or copy values: a kept FP32 value stays FP32 through them, so that
 * their readers are kept too (a Reshape in front of a BatchNormalization's variance). */
static int moves_values(const char *op) {
    static const char *const ops[] = {"Identity",       "Reshape", "Transpose", "Squeeze",
                                      "Unsqueeze",      "Flatten", "Expand",    "Gather",
                                      "GatherElements", "Slice",   "Concat",    "Split",
                                      "Tile",           "Cast",    "CastLike"};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (strcmp(op, ops[i]) == 0)
            return 1;
    return 0;
}

static msh_status parse_list(ctx *c, const char *csv, msh_strmap *into) {
    if (!csv)
        return MSH_OK;
    const char *p = csv;
    while (*p) {
        const char *q = strchr(p, ',');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n > 0) {
            char buf[512];
            if (n >= sizeof buf)
                n = sizeof buf - 1;
            memcpy(buf, p, n);
            buf[n] = 0;
            const char *s = own_str(c, buf);
            if (!s || !msh_strmap_upsert(into, s, 1))
                return nomem(c);
        }
        p = q ? q + 1 : p + n;
    }
    return MSH_OK;
}

static int is_default_domain(const char *d) {
    return !d || !*d || strcmp(d, "ai.onnx") == 0;
}

static int64_t opset_of(const ctx *c, const char *domain) {
    if (is_default_domain(domain))
        return c->opset_default;
    if (strcmp(domain, "ai.onnx.ml") == 0)
        return c->opset_ml;
    if (strcmp(domain, "ai.onnx.preview.training") == 0)
        return c->opset_training;
    return 0;
}

/* onnxruntime's contrib ops that INT4 writes, as the generated table would describe them (it
 * holds only onnx's own schemas). MatMulNBits: A, scales, bias and Y share T1; its type set is
 * narrowed to what onnxruntime's CPU kernels run (float, float16), so --bf16 leaves it FP32. */
#define MS_T1 (MSH_OP_TYPE_BIT(1) | MSH_OP_TYPE_BIT(10))
static const msh_op_param ms_matmulnbits_in[] = {
    {0, MSH_OP_SINGLE, 1, MS_T1},                                      /* A */
    {-1, MSH_OP_SINGLE, 1, MSH_OP_TYPE_BIT(2) | MSH_OP_TYPE_BIT(6)},   /* B: uint8, int32 */
    {0, MSH_OP_SINGLE, 1, MS_T1},                                      /* scales */
    {-1, MSH_OP_OPTIONAL, 1, MSH_OP_TYPE_BIT(2) | MSH_OP_TYPE_BIT(6)}, /* zero_points */
    {-1, MSH_OP_OPTIONAL, 1, MSH_OP_TYPE_BIT(6)},                      /* g_idx */
    {0, MSH_OP_OPTIONAL, 1, MS_T1},                                    /* bias */
};
static const msh_op_param ms_matmulnbits_out[] = {{0, MSH_OP_SINGLE, 1, MS_T1}};
static const uint32_t ms_t1[] = {MS_T1};
static const char *const ms_t1_name[] = {"T1"};
static const msh_op_schema ms_matmulnbits = {
    "com.microsoft",   "MatMulNBits",      1,     6,         1, 1,
    ms_matmulnbits_in, ms_matmulnbits_out, ms_t1, ms_t1_name};

/* GatherBlockQuantized: scales and output share T2 (float, float16: the CPU kernel's; no bf16);
 * data and zero points are the 4-bit or packed UINT8 storage, indices INT32 / INT64. */
#define MS_Q4 (MSH_OP_TYPE_BIT(2) | MSH_OP_TYPE_BIT(21) | MSH_OP_TYPE_BIT(22))
static const msh_op_param ms_gbq_in[] = {
    {-1, MSH_OP_SINGLE, 1, MS_Q4},                                   /* data */
    {-1, MSH_OP_SINGLE, 1, MSH_OP_TYPE_BIT(6) | MSH_OP_TYPE_BIT(7)}, /* indices */
    {0, MSH_OP_SINGLE, 1, MS_T1},                                    /* scales */
    {-1, MSH_OP_OPTIONAL, 1, MS_Q4},                                 /* zero_points */
};
static const char *const ms_t2_name[] = {"T2"};
static const msh_op_schema ms_gbq = {
    "com.microsoft", "GatherBlockQuantized", 1,     4,         1, 1,
    ms_gbq_in,       ms_matmulnbits_out,     ms_t1, ms_t2_name};

static const msh_op_schema *ms_schema(const char *domain, const char *op) {
    if (!domain || strcmp(domain, "com.microsoft") != 0)
        return NULL;
    if (strcmp(op, "MatMulNBits") == 0)
        return &ms_matmulnbits;
    if (strcmp(op, "GatherBlockQuantized") == 0)
        return &ms_gbq;
    return NULL;
}

static int32_t vi_elem_type(const Onnx__ValueInfoProto *vi) {
    if (vi && vi->type && vi->type->value_case == ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE &&
        vi->type->tensor_type && vi->type->tensor_type->has_elem_type)
        return vi->type->tensor_type->elem_type;
    return 0;
}

static void vi_set_elem_type(Onnx__ValueInfoProto *vi, int32_t t) {
    if (vi && vi->type && vi->type->value_case == ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE &&
        vi->type->tensor_type && vi->type->tensor_type->has_elem_type)
        vi->type->tensor_type->elem_type = t;
}

static int single_type(uint32_t mask) {
    if (mask & MSH_OP_NONTENSOR)
        return 0;
    if (mask == 0 || (mask & (mask - 1)) != 0)
        return 0;
    int t = 0;
    while (!(mask & 1u)) {
        mask >>= 1;
        t++;
    }
    return t;
}

static int32_t type_from_name(const ProtobufCBinaryData *s) {
    static const char *names[] = {"UNDEFINED",  "FLOAT",   "UINT8",  "INT8",   "UINT16",
                                  "INT16",      "INT32",   "INT64",  "STRING", "BOOL",
                                  "FLOAT16",    "DOUBLE",  "UINT32", "UINT64", "COMPLEX64",
                                  "COMPLEX128", "BFLOAT16"};
    for (int t = 1; t < (int)(sizeof names / sizeof names[0]); t++)
        if (s->len == strlen(names[t]) && memcmp(s->data, names[t], s->len) == 0)
            return t;
    return 0;
}

static Onnx__AttributeProto *find_attr(const Onnx__NodeProto *n, const char *name) {
    for (size_t i = 0; i < n->n_attribute; i++)
        if (n->attribute[i]->name && strcmp(n->attribute[i]->name, name) == 0)
            return n->attribute[i];
    return NULL;
}

static Onnx__ValueInfoProto *make_vi(const char *name, int32_t elem, const int64_t *dims,
                                     ptrdiff_t n_dims);
static msh_status append_vi(ctx *c, Onnx__ValueInfoProto ***arr, size_t *n,
                            Onnx__ValueInfoProto *vi);

/* ---- values and scopes ---- */

static val *lookup(ctx *c, scope *s, const char *name) {
    for (; s; s = s->parent) {
        int64_t *v = msh_strmap_get(&s->names, name);
        if (v)
            return &c->vals[*v];
    }
    return NULL;
}

static msh_status declare(ctx *c, scope *s, const char *name, int32_t type, int32_t cur, int kind,
                          int64_t tensor, Onnx__NodeProto *cnode) {
    if (!name || !*name)
        return MSH_OK;
    const char *key = own_str(c, name);
    if (!key || !msh_grow((void **)&c->vals, &c->cap_vals, c->n_vals, sizeof *c->vals) ||
        !msh_grow((void **)&s->own, &s->cap_own, s->n_own, sizeof *s->own))
        return nomem(c);
    size_t idx = c->n_vals++;
    c->vals[idx] = (val){key, type, cur, kind, tensor, cnode, 0, NULL, 0, 0};
    int64_t *slot = msh_strmap_upsert(&s->names, key, (int64_t)idx);
    if (!slot)
        return nomem(c);
    *slot = (int64_t)idx; /* a later declaration of the same name wins, as in the graph */
    s->own[s->n_own++] = idx;
    return MSH_OK;
}

static msh_status add_use(ctx *c, val *v, Onnx__NodeProto *n, size_t idx, int32_t want) {
    if (!msh_grow((void **)&v->uses, &v->cap_uses, v->n_uses, sizeof *v->uses))
        return nomem(c);
    v->uses[v->n_uses++] = (use){n, idx, want};
    return MSH_OK;
}

static msh_status push_node(ctx *c, scope *s, Onnx__NodeProto *n) {
    if (!msh_grow((void **)&s->out, &s->cap_out, s->n_out, sizeof *s->out))
        return nomem(c);
    s->out[s->n_out++] = n;
    return MSH_OK;
}

/* push_node for a node this pass created: freed by scope_free unless the graph took it. */
static msh_status push_new_node(ctx *c, scope *s, Onnx__NodeProto *n) {
    if (!msh_grow((void **)&s->made, &s->cap_made, s->n_made, sizeof *s->made)) {
        protobuf_c_message_free_unpacked(&n->base, NULL);
        return nomem(c);
    }
    s->made[s->n_made++] = n;
    return push_node(c, s, n);
}

static msh_status set_input(ctx *c, Onnx__NodeProto *n, size_t i, const char *name) {
    char *d = msh_strdup(name);
    if (!d)
        return nomem(c);
    free(n->input[i]);
    n->input[i] = d;
    return MSH_OK;
}

/* A new Cast node `in` -> `out` (to = `to`), owned by the model tree once pushed. */
static Onnx__NodeProto *make_cast(ctx *c, const char *in, const char *out, int32_t to) {
    const char *nm = fresh(c, out, "cast");
    Onnx__NodeProto *n = nm ? msh_onnx_node_new("Cast", nm, &in, 1, &out, 1) : NULL;
    if (!n)
        return NULL;
    Onnx__AttributeProto *a;
    if (c->opset_default > 0 && c->opset_default < 6) /* Cast-1 names the type as a string */
        a = msh_onnx_attr_string("to", to == 10 ? "FLOAT16" : to == 16 ? "BFLOAT16" : "FLOAT");
    else
        a = msh_onnx_attr_int("to", to);
    if (!msh_onnx_node_add_attr(n, a)) {
        protobuf_c_message_free_unpacked(&n->base, NULL);
        return NULL;
    }
    return n;
}

/* The name of `v` converted to `want`, visible in scope `s` (a Cast is added when needed). */
static msh_status cast_of(ctx *c, scope *s, val *v, int32_t want, const char **out) {
    char key[1100];
    snprintf(key, sizeof key, "%s\x01%d", v->name, (int)want);
    for (scope *p = s; p; p = p->parent) {
        int64_t *k = msh_strmap_get(&p->casts, key);
        if (k) {
            *out = c->names.strs[*k];
            return MSH_OK;
        }
    }
    const char *name = fresh(c, v->name, type_tag(want));
    if (!name)
        return nomem(c);
    Onnx__NodeProto *n = make_cast(c, v->name, name, want);
    if (!n)
        return nomem(c);
    MSH_FORWARD(push_new_node(c, s, n));
    if (c->opset_default > 0 && c->opset_default < 6) /* Cast-1 infers no output type */
        MSH_FORWARD(
            append_vi(c, &s->g->value_info, &s->g->n_value_info, make_vi(name, want, NULL, -1)));
    int64_t ni = fresh_index(c, name);
    const char *k2 = own_str(c, key);
    if (ni < 0 || !k2 || !msh_strmap_upsert(&s->casts, k2, ni))
        return nomem(c);
    c->st->casts++;
    *out = name;
    return MSH_OK;
}

/* Input `i` of node `n` reads `v`; the node needs it as `want`. */
static msh_status need(ctx *c, scope *s, val *v, Onnx__NodeProto *n, size_t i, int32_t want) {
    if (!v || v->type == 0 || want == 0)
        return MSH_OK;
    if (v->kind != VAL_PLAIN && v->type == T_FLOAT)
        return add_use(c, v, n, i, want); /* decided when its graph is done */
    if (v->cur == want)
        return MSH_OK;
    const char *name;
    MSH_FORWARD(cast_of(c, s, v, want, &name));
    return set_input(c, n, i, name);
}

/* ---- tensors ---- */

/* Plan tensor `ti` to be written in the target type: the TensorProto is retyped now, its bytes
 * are converted by the engine when the writer asks for them. */
static msh_status convert_tensor(ctx *c, int64_t ti) {
    msh_tensor *t = &c->m->tensors[ti];
    Onnx__TensorProto *tp = t->tp;
    int32_t target = c->o->target;
    if (tp->data_type != T_FLOAT)
        return MSH_OK;
    t->d.out_dtype = target;
    tp->data_type = target;
    c->st->tensors++;
    c->st->bytes_saved += t->d.numel * 2;
    return MSH_OK;
}

/* A converted copy of tensor `ti` named `name`, registered in the tensor table: a TensorProto
 * without data whose bytes are the original's, converted. */
static msh_status clone_converted(ctx *c, int64_t ti, const char *name, Onnx__TensorProto **out) {
    const msh_tensor *src = &c->m->tensors[ti];
    Onnx__TensorProto *tp = malloc(sizeof *tp);
    if (!tp)
        return nomem(c);
    onnx__tensor_proto__init(tp);
    tp->name = msh_strdup(name);
    tp->dims = malloc((src->tp->n_dims + 1) * sizeof *tp->dims);
    if (!tp->name || !tp->dims) {
        protobuf_c_message_free_unpacked(&tp->base, NULL);
        return nomem(c);
    }
    if (src->tp->n_dims) /* a scalar has no dims array */
        memcpy(tp->dims, src->tp->dims, src->tp->n_dims * sizeof *tp->dims);
    tp->n_dims = src->tp->n_dims;
    tp->has_data_type = 1;
    tp->data_type = T_FLOAT;
    msh_tensor t = *src;
    t.tp = tp;
    t.payload = -1; /* the bytes are the source's, reached through d.src */
    t.external_in = 0;
    t.d.out_dtype = 0;
    int64_t ni = msh_onnx_add_tensor_entry(c->m, &t);
    if (ni < 0) {
        protobuf_c_message_free_unpacked(&tp->base, NULL);
        return nomem(c);
    }
    *out = tp;
    return convert_tensor(c, ni);
}

/* ---- graph walk ---- */

static msh_status process_graph(ctx *c, scope *s);

static int graph_index(const msh_onnx_model *m, const Onnx__GraphProto *g) {
    for (size_t i = 0; i < m->n_graphs; i++)
        if (m->graphs[i].g == g)
            return (int)i;
    return -1;
}

static void scope_free(scope *s) {
    msh_strmap_free(&s->names);
    msh_strmap_free(&s->casts);
    free(s->own);
    free(s->out);
    for (size_t i = 0; i < s->n_made; i++) /* left only when the graph failed */
        protobuf_c_message_free_unpacked(&s->made[i]->base, NULL);
    free(s->made);
}

static msh_status run_subgraph(ctx *c, scope *parent, Onnx__GraphProto *g) {
    scope child;
    memset(&child, 0, sizeof child);
    child.parent = parent;
    child.g = g;
    child.graph = graph_index(c->m, g);
    msh_status st = process_graph(c, &child);
    scope_free(&child);
    return st;
}

static int32_t subgraph_output_type(const Onnx__NodeProto *n, size_t j) {
    const char *op = n->op_type;
    const Onnx__AttributeProto *a = NULL;
    size_t skip = 0;
    if (strcmp(op, "If") == 0)
        a = find_attr(n, "then_branch");
    else if (strcmp(op, "Loop") == 0) {
        a = find_attr(n, "body");
        skip = 1; /* body outputs: cond, then carried values and scan outputs */
    } else if (strcmp(op, "Scan") == 0)
        a = find_attr(n, "body");
    if (!a || !a->g || j + skip >= a->g->n_output)
        return 0;
    return vi_elem_type(a->g->output[j + skip]);
}

static int32_t value_info_type(scope *s, const char *name) {
    for (; s; s = s->parent) {
        const Onnx__GraphProto *g = s->g;
        for (size_t i = 0; i < g->n_value_info; i++)
            if (g->value_info[i]->name && strcmp(g->value_info[i]->name, name) == 0)
                return vi_elem_type(g->value_info[i]);
        for (size_t i = 0; i < g->n_output; i++)
            if (g->output[i]->name && strcmp(g->output[i]->name, name) == 0)
                return vi_elem_type(g->output[i]);
    }
    return 0;
}

static msh_status process_constant(ctx *c, scope *s, Onnx__NodeProto *n, int blocked) {
    const char *out = n->n_output ? n->output[0] : NULL;
    int32_t type = 0;
    Onnx__AttributeProto *a;
    if ((a = find_attr(n, "value")) && a->t) {
        int64_t ti = msh_onnx_find_tensor(c->m, a->t);
        type = a->t->data_type;
        if (type == T_FLOAT && ti >= 0)
            c->st->candidates++;
        if (type == T_FLOAT && ti >= 0 && tensor_kept(c, ti, out)) {
            MSH_FORWARD(push_node(c, s, n));
            MSH_FORWARD(declare(c, s, out, T_FLOAT, T_FLOAT, VAL_PLAIN, -1, NULL));
            val *v = out && *out ? lookup(c, s, out) : NULL;
            if (v)
                v->keep = 1;
            return MSH_OK;
        }
        if (type == T_FLOAT && ti >= 0 && !blocked) {
            MSH_FORWARD(push_node(c, s, n));
            return declare(c, s, out, T_FLOAT, T_FLOAT, VAL_CONST, ti, n);
        }
    } else if ((a = find_attr(n, "value_float")) || (a = find_attr(n, "value_floats"))) {
        type = T_FLOAT;
    } else if ((a = find_attr(n, "value_int")) || (a = find_attr(n, "value_ints"))) {
        type = T_INT64;
    } else if ((a = find_attr(n, "value_string")) || (a = find_attr(n, "value_strings"))) {
        type = T_STRING;
    } else if ((a = find_attr(n, "sparse_value")) && a->sparse_tensor && a->sparse_tensor->values) {
        type = a->sparse_tensor->values->data_type;
    }
    MSH_FORWARD(push_node(c, s, n));
    return declare(c, s, out, type, type, VAL_PLAIN, -1, NULL);
}

static msh_status process_node(ctx *c, scope *s, Onnx__NodeProto *n) {
    const char *op = n->op_type ? n->op_type : "";
    int dflt = is_default_domain(n->domain);
    int blocked = list_has(&c->block_ops, op) || list_has(&c->block_nodes, n->name);
    int32_t target = c->o->target;
    if (dflt && strcmp(op, "Constant") == 0)
        return process_constant(c, s, n, blocked);
    int reads_kept = 0;
    for (size_t i = 0; i < n->n_input; i++) {
        val *v = n->input[i][0] ? lookup(c, s, n->input[i]) : NULL;
        if (v && v->keep)
            reads_kept = 1;
    }
    blocked |= reads_kept;

    int control =
        dflt && (strcmp(op, "If") == 0 || strcmp(op, "Loop") == 0 || strcmp(op, "Scan") == 0);
    const msh_op_schema *sc =
        control ? NULL : msh_op_schema_find(n->domain ? n->domain : "", op, opset_of(c, n->domain));
    if (!sc && !control)
        sc = ms_schema(n->domain, op);
    int32_t bound[64];
    int conv[64];
    memset(bound, 0, sizeof bound);
    memset(conv, 0, sizeof conv);
    int any_float_in = 0, any_conv = 0;
    if (sc && sc->n_vars > 64)
        sc = NULL;
    if (sc && !blocked) {
        for (size_t i = 0; i < n->n_input; i++) {
            const msh_op_param *p = msh_op_input(sc, i);
            if (!p || p->var < 0 || !n->input[i][0])
                continue;
            val *v = lookup(c, s, n->input[i]);
            int32_t t = v ? v->type : 0;
            int k = p->var;
            if (t == 0)
                bound[k] = -1;
            else if (bound[k] == 0)
                bound[k] = t;
            else if (bound[k] != t)
                bound[k] = -1;
        }
        /* The output types must follow from the inputs: no sequence/optional/map variables
         * (their element types are not tracked) and no present output whose variable no
         * input binds (Bernoulli's T2, RandomNormalLike's T2: set by attributes). */
        int ok = !msh_op_function_unsafe(sc, target);
        for (int k = 0; k < sc->n_vars; k++)
            if (sc->var_types[k] & MSH_OP_NONTENSOR)
                ok = 0;
        for (size_t j = 0; ok && j < n->n_output; j++) {
            const msh_op_param *q = msh_op_output(sc, j);
            if (q && q->var >= 0 && n->output[j][0] && bound[q->var] == 0 &&
                !single_type(sc->var_types[q->var]))
                ok = 0;
        }
        for (int k = 0; ok && k < sc->n_vars; k++) {
            conv[k] = bound[k] == T_FLOAT && (sc->var_types[k] & MSH_OP_TYPE_BIT(target));
            any_conv |= conv[k];
        }
    } else if (sc) {
        for (size_t i = 0; i < n->n_input; i++) {
            const msh_op_param *p = msh_op_input(sc, i);
            if (!p || p->var < 0 || !n->input[i][0])
                continue;
            val *v = lookup(c, s, n->input[i]);
            int k = p->var;
            int32_t t = v ? v->type : 0;
            bound[k] = t == 0 ? -1 : bound[k] == 0 ? t : bound[k] != t ? -1 : t;
        }
    }
    int is_cast = dflt && strcmp(op, "Cast") == 0;
    /* inputs: what each one needs */
    for (size_t i = 0; i < n->n_input; i++) {
        if (!n->input[i][0])
            continue;
        val *v = lookup(c, s, n->input[i]);
        if (!v || v->type == 0)
            continue;
        if (v->type == T_FLOAT)
            any_float_in = 1;
        int32_t want = v->type;
        const msh_op_param *p = sc ? msh_op_input(sc, i) : NULL;
        if (is_cast && p) {
            /* Cast accepts any numeric input: take the value as it is when allowed */
            uint32_t mask = p->var >= 0 ? sc->var_types[p->var] : p->types;
            if (v->kind == VAL_PLAIN && (mask & MSH_OP_TYPE_BIT(v->cur)))
                want = v->cur;
        } else if (p && p->var >= 0 && conv[p->var] && v->type == T_FLOAT) {
            want = target;
        }
        MSH_FORWARD(need(c, s, v, n, i, want));
    }
    /* subgraphs: converted inside, their borders keep their types */
    if (control) {
        for (size_t a = 0; a < n->n_attribute; a++) {
            Onnx__AttributeProto *at = n->attribute[a];
            if (at->g)
                MSH_FORWARD(run_subgraph(c, s, at->g));
            for (size_t k = 0; k < at->n_graphs; k++)
                MSH_FORWARD(run_subgraph(c, s, at->graphs[k]));
        }
    }
    /* outputs */
    int converted_here = any_conv;
    for (size_t j = 0; j < n->n_output; j++) {
        const char *name = n->output[j];
        if (!name || !*name)
            continue;
        const msh_op_param *q = sc ? msh_op_output(sc, j) : NULL;
        int32_t type = 0, cur;
        Onnx__AttributeProto *a;
        if (is_cast && (a = find_attr(n, "to")) && (a->has_i || a->has_s)) {
            type = a->has_i ? (int32_t)a->i : type_from_name(&a->s);
        } else if (dflt && strcmp(op, "ConstantOfShape") == 0) {
            a = find_attr(n, "value");
            type = a && a->t ? a->t->data_type : T_FLOAT;
        } else if (control) {
            type = subgraph_output_type(n, j);
        } else if (q && q->var >= 0 && bound[q->var] > 0) {
            type = bound[q->var];
        } else if (q) {
            type = single_type(q->var >= 0 ? sc->var_types[q->var] : q->types);
        }
        if (type == 0)
            type = value_info_type(s, name);
        cur = type;
        if (q && !blocked && type == T_FLOAT) {
            uint32_t mask = q->var >= 0 ? sc->var_types[q->var] : q->types;
            int allows = (mask & MSH_OP_TYPE_BIT(target)) != 0;
            if (is_cast && allows && (a = find_attr(n, "to")) && (a->has_i || a->has_s)) {
                /* Cast(to=FLOAT) in a converted region (a Cast without 'to' is left alone) */
                if (a->has_i) {
                    a->i = target;
                } else {
                    const char *tn = target == 10 ? "FLOAT16" : "BFLOAT16";
                    char *d = msh_strdup(tn);
                    if (!d)
                        return nomem(c);
                    free(a->s.data);
                    a->s.data = (uint8_t *)d;
                    a->s.len = strlen(tn);
                }
                cur = target;
                converted_here = 1;
            } else if (dflt && strcmp(op, "ConstantOfShape") == 0 && allows) {
                a = find_attr(n, "value");
                int64_t ti = a && a->t ? msh_onnx_find_tensor(c->m, a->t) : -1;
                if (ti >= 0) {
                    MSH_FORWARD(convert_tensor(c, ti));
                    cur = target;
                    converted_here = 1;
                }
            } else if (q->var >= 0 && conv[q->var]) {
                cur = target;
            }
        }
        MSH_FORWARD(declare(c, s, name, type, cur, VAL_PLAIN, -1, NULL));
        if (reads_kept && dflt && moves_values(op)) {
            val *v = lookup(c, s, name);
            if (v)
                v->keep = 1;
        }
    }
    if (converted_here)
        c->st->nodes++;
    else if (any_float_in)
        c->st->nodes_kept++;
    return push_node(c, s, n);
}

/* Rename every node input `old` to `nw` in `nodes` and in subgraphs that do not declare `old`. */
static int graph_declares(const Onnx__GraphProto *g, const char *name) {
    for (size_t i = 0; i < g->n_input; i++)
        if (g->input[i]->name && strcmp(g->input[i]->name, name) == 0)
            return 1;
    for (size_t i = 0; i < g->n_initializer; i++)
        if (g->initializer[i]->name && strcmp(g->initializer[i]->name, name) == 0)
            return 1;
    for (size_t i = 0; i < g->n_node; i++)
        for (size_t k = 0; k < g->node[i]->n_output; k++)
            if (strcmp(g->node[i]->output[k], name) == 0)
                return 1;
    return 0;
}

static msh_status rename_refs(ctx *c, Onnx__NodeProto **nodes, size_t n, const char *old,
                              const char *nw) {
    for (size_t i = 0; i < n; i++) {
        Onnx__NodeProto *nd = nodes[i];
        for (size_t k = 0; k < nd->n_input; k++)
            if (strcmp(nd->input[k], old) == 0)
                MSH_FORWARD(set_input(c, nd, k, nw));
        for (size_t a = 0; a < nd->n_attribute; a++) {
            Onnx__AttributeProto *at = nd->attribute[a];
            Onnx__GraphProto *gs[1] = {at->g};
            for (size_t k = 0; k < at->n_graphs + 1; k++) {
                Onnx__GraphProto *g = k == 0 ? gs[0] : at->graphs[k - 1];
                if (!g || graph_declares(g, old))
                    continue;
                MSH_FORWARD(rename_refs(c, g->node, g->n_node, old, nw));
                for (size_t o = 0; o < g->n_output; o++)
                    if (g->output[o]->name && strcmp(g->output[o]->name, old) == 0) {
                        char *d = msh_strdup(nw);
                        if (!d)
                            return nomem(c);
                        free(g->output[o]->name);
                        g->output[o]->name = d;
                    }
            }
        }
    }
    return MSH_OK;
}

static msh_status fix_outputs(ctx *c, scope *s) {
    Onnx__GraphProto *g = s->g;
    int free_io = s->is_main && !c->o->keep_io;
    for (size_t i = 0; i < g->n_output; i++) {
        Onnx__ValueInfoProto *vo = g->output[i];
        if (!vo->name)
            continue;
        val *v = lookup(c, s, vo->name);
        if (!v || v->type == 0)
            continue;
        int32_t want = free_io && v->type == T_FLOAT ? c->o->target : v->type;
        if (v->kind != VAL_PLAIN && v->type == T_FLOAT) {
            if (!free_io)
                MSH_FORWARD(add_use(c, v, NULL, 0, want)); /* its type is fixed later */
            continue;
        }
        if (v->cur == want) {
            if (free_io)
                vi_set_elem_type(vo, want);
            continue;
        }
        int produced_here = 0;
        for (size_t k = 0; s->is_main && k < s->n_out && !produced_here; k++)
            for (size_t o = 0; o < s->out[k]->n_output; o++)
                if (strcmp(s->out[k]->output[o], vo->name) == 0) {
                    const char *tmp = fresh(c, vo->name, type_tag(v->cur));
                    char *d = tmp ? msh_strdup(tmp) : NULL;
                    if (!d)
                        return nomem(c);
                    free(s->out[k]->output[o]);
                    s->out[k]->output[o] = d;
                    MSH_FORWARD(rename_refs(c, s->out, s->n_out, vo->name, tmp));
                    if (c->opset_default > 0 && c->opset_default < 6)
                        MSH_FORWARD(append_vi(c, &g->value_info, &g->n_value_info,
                                              make_vi(tmp, v->cur, NULL, -1)));
                    Onnx__NodeProto *cast = make_cast(c, tmp, vo->name, want);
                    if (!cast)
                        return nomem(c);
                    MSH_FORWARD(push_new_node(c, s, cast));
                    c->st->casts++;
                    produced_here = 1;
                    break;
                }
        if (!produced_here && !s->is_main) {
            /* a subgraph's outputs are positional: cast and name the output after the cast */
            const char *name;
            MSH_FORWARD(cast_of(c, s, v, want, &name));
            char *d = msh_strdup(name);
            if (!d)
                return nomem(c);
            free(vo->name);
            vo->name = d;
        }
        if (free_io)
            vi_set_elem_type(vo, want);
    }
    return MSH_OK;
}

/* A ValueInfoProto declaring `name` as a tensor of `elem` (shape `dims` when n_dims >= 0). */
static Onnx__ValueInfoProto *make_vi(const char *name, int32_t elem, const int64_t *dims,
                                     ptrdiff_t n_dims) {
    Onnx__ValueInfoProto *vi = malloc(sizeof *vi);
    Onnx__TypeProto *ty = malloc(sizeof *ty);
    Onnx__TypeProto__Tensor *tt = malloc(sizeof *tt);
    if (!vi || !ty || !tt) {
        free(vi);
        free(ty);
        free(tt);
        return NULL;
    }
    onnx__value_info_proto__init(vi);
    onnx__type_proto__init(ty);
    onnx__type_proto__tensor__init(tt);
    tt->has_elem_type = 1;
    tt->elem_type = elem;
    ty->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    ty->tensor_type = tt;
    vi->type = ty;
    vi->name = msh_strdup(name);
    int ok = vi->name != NULL;
    if (ok && n_dims >= 0) {
        Onnx__TensorShapeProto *sh = malloc(sizeof *sh);
        Onnx__TensorShapeProto__Dimension **dv = malloc(((size_t)n_dims + 1) * sizeof *dv);
        if (sh)
            onnx__tensor_shape_proto__init(sh);
        tt->shape = sh;
        if (sh && dv) {
            sh->dim = dv;
            for (ptrdiff_t i = 0; i < n_dims; i++) {
                Onnx__TensorShapeProto__Dimension *d = malloc(sizeof *d);
                if (!d)
                    break;
                onnx__tensor_shape_proto__dimension__init(d);
                d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
                d->dim_value = dims[i];
                dv[sh->n_dim++] = d;
            }
        } else {
            free(dv);
        }
        ok = sh && dv && sh->n_dim == (size_t)n_dims;
    }
    if (!ok) {
        protobuf_c_message_free_unpacked(&vi->base, NULL);
        return NULL;
    }
    return vi;
}

static msh_status append_vi(ctx *c, Onnx__ValueInfoProto ***arr, size_t *n,
                            Onnx__ValueInfoProto *vi) {
    Onnx__ValueInfoProto **p = vi ? realloc(*arr, (*n + 1) * sizeof *p) : NULL;
    if (!p) {
        if (vi)
            protobuf_c_message_free_unpacked(&vi->base, NULL);
        return nomem(c);
    }
    p[(*n)++] = vi;
    *arr = p;
    return MSH_OK;
}

/* Before IR 4 an initializer must also be a graph input: declare one for `tp`. */
static msh_status add_input_for(ctx *c, Onnx__GraphProto *g, const Onnx__TensorProto *tp) {
    return append_vi(c, &g->input, &g->n_input,
                     make_vi(tp->name, tp->data_type, tp->dims, (ptrdiff_t)tp->n_dims));
}

static msh_status decide_deferred(ctx *c, scope *s) {
    int32_t target = c->o->target;
    for (size_t k = 0; k < s->n_own; k++) {
        val *v = &c->vals[s->own[k]];
        if (v->kind == VAL_PLAIN || v->type != T_FLOAT)
            continue;
        int has16 = 0, has32 = 0;
        for (size_t u = 0; u < v->n_uses; u++) {
            if (v->uses[u].want == target)
                has16 = 1;
            else
                has32 = 1;
        }
        if (!has32) {
            MSH_FORWARD(convert_tensor(c, v->tensor));
            v->cur = target;
            continue;
        }
        if (!has16)
            continue;
        /* Wanted in both types: keep the FP32 tensor, add a converted copy for the rest. */
        const char *name = fresh(c, v->name, type_tag(target));
        if (!name)
            return nomem(c);
        Onnx__TensorProto *copy = NULL;
        MSH_FORWARD(clone_converted(c, v->tensor, name, &copy));
        c->st->bytes_saved -= c->m->tensors[v->tensor].d.numel * 4; /* a copy, not a saving */
        if (v->kind == VAL_INIT) {
            Onnx__GraphProto *g = s->g;
            Onnx__TensorProto **arr = realloc(g->initializer, (g->n_initializer + 1) * sizeof *arr);
            if (!arr) {
                protobuf_c_message_free_unpacked(&copy->base, NULL);
                return nomem(c);
            }
            g->initializer = arr;
            arr[g->n_initializer++] = copy;
            c->m->tensors[c->m->n_tensors - 1].graph = s->graph;
            if (c->m->mp->ir_version < 4)
                MSH_FORWARD(add_input_for(c, g, copy));
        } else {
            const char *nn = fresh(c, name, "const");
            Onnx__NodeProto *cn = nn ? msh_onnx_node_new("Constant", nn, NULL, 0, &name, 1) : NULL;
            if (!cn || !msh_onnx_node_add_attr(cn, msh_onnx_attr_tensor("value", copy))) {
                if (cn)
                    protobuf_c_message_free_unpacked(&cn->base, NULL);
                else
                    protobuf_c_message_free_unpacked(&copy->base, NULL);
                return nomem(c);
            }
            /* right after the original Constant */
            size_t pos = 0;
            while (pos < s->n_out && s->out[pos] != v->cnode)
                pos++;
            MSH_FORWARD(push_new_node(c, s, cn));
            memmove(&s->out[pos + 2], &s->out[pos + 1], (s->n_out - pos - 2) * sizeof *s->out);
            s->out[pos + 1] = cn;
        }
        for (size_t u = 0; u < v->n_uses; u++)
            if (v->uses[u].want == target && v->uses[u].node)
                MSH_FORWARD(set_input(c, v->uses[u].node, v->uses[u].idx, name));
    }
    return MSH_OK;
}

static msh_status process_graph(ctx *c, scope *s) {
    Onnx__GraphProto *g = s->g;
    int free_io = s->is_main && !c->o->keep_io;
    int32_t target = c->o->target;
    for (size_t i = 0; i < g->n_input; i++) {
        Onnx__ValueInfoProto *vi = g->input[i];
        int32_t t = vi_elem_type(vi);
        int32_t cur = t;
        if (free_io && t == T_FLOAT) {
            vi_set_elem_type(vi, target);
            cur = target;
        }
        MSH_FORWARD(declare(c, s, vi->name, t, cur, VAL_PLAIN, -1, NULL));
    }
    for (size_t i = 0; i < g->n_initializer; i++) {
        Onnx__TensorProto *tp = g->initializer[i];
        int64_t ti = msh_onnx_find_tensor(c->m, tp);
        if (ti >= 0 && tp->data_type == T_FLOAT) {
            c->st->candidates++;
            if (tensor_kept(c, ti, tp->name)) {
                /* stays FP32, and its readers run in FP32 */
                int64_t *own = tp->name ? msh_strmap_get(&s->names, tp->name) : NULL;
                if (own) {
                    val *v = &c->vals[*own];
                    v->kind = VAL_PLAIN;
                    v->cur = v->type;
                    v->keep = 1;
                    for (size_t k = 0; k < g->n_input; k++) /* undo --no-keep-io-types */
                        if (g->input[k]->name && strcmp(g->input[k]->name, tp->name) == 0)
                            vi_set_elem_type(g->input[k], v->type);
                    continue;
                }
                MSH_FORWARD(declare(c, s, tp->name, T_FLOAT, T_FLOAT, VAL_PLAIN, -1, NULL));
                val *v = tp->name && *tp->name ? lookup(c, s, tp->name) : NULL;
                if (v)
                    v->keep = 1;
                continue;
            }
        }
        val *as_input = NULL;
        int64_t *own = tp->name ? msh_strmap_get(&s->names, tp->name) : NULL;
        if (own)
            as_input = &c->vals[*own];
        if (as_input && c->m->mp->ir_version < 4) {
            /* Before IR 4 every initializer had to be listed as a graph input: these are
             * weights, not an interface. Convert them; the input's type follows below. */
            as_input->kind = VAL_INIT;
            as_input->tensor = ti;
            as_input->cur = as_input->type;
            continue;
        }
        if (as_input) {
            /* A default for a graph input: it must keep the input's declared type. */
            as_input->kind = VAL_INIT;
            as_input->tensor = ti;
            if (tp->data_type == T_FLOAT)
                MSH_FORWARD(add_use(c, as_input, NULL, 0, as_input->cur));
            as_input->cur = as_input->type;
            continue;
        }
        MSH_FORWARD(declare(c, s, tp->name, tp->data_type, tp->data_type,
                            ti >= 0 ? VAL_INIT : VAL_PLAIN, ti, NULL));
    }
    for (size_t i = 0; i < g->n_sparse_initializer; i++) {
        const Onnx__SparseTensorProto *sp = g->sparse_initializer[i];
        if (sp->values && sp->values->name)
            MSH_FORWARD(declare(c, s, sp->values->name, sp->values->data_type,
                                sp->values->data_type, VAL_PLAIN, -1, NULL));
    }
    for (size_t i = 0; i < g->n_node; i++)
        MSH_FORWARD(process_node(c, s, g->node[i]));
    MSH_FORWARD(fix_outputs(c, s));
    MSH_FORWARD(decide_deferred(c, s));
    if (c->m->mp->ir_version < 4) {
        for (size_t i = 0; i < g->n_input; i++) {
            int64_t *k = g->input[i]->name ? msh_strmap_get(&s->names, g->input[i]->name) : NULL;
            if (k && c->vals[*k].kind == VAL_INIT)
                vi_set_elem_type(g->input[i], c->vals[*k].cur);
        }
    }
    if (free_io) {
        /* initializers that are graph outputs follow their final type */
        for (size_t i = 0; i < g->n_output; i++) {
            val *v = g->output[i]->name ? lookup(c, s, g->output[i]->name) : NULL;
            if (v && v->kind != VAL_PLAIN)
                vi_set_elem_type(g->output[i], v->cur);
        }
    }
    for (size_t i = 0; i < g->n_value_info; i++) {
        Onnx__ValueInfoProto *vi = g->value_info[i];
        int64_t *k = vi->name ? msh_strmap_get(&s->names, vi->name) : NULL;
        if (k && c->vals[*k].type != 0 && vi_elem_type(vi) == c->vals[*k].type)
            vi_set_elem_type(vi, c->vals[*k].cur);
    }
    free(g->node);
    g->node = s->out;
    g->n_node = s->n_out;
    s->out = NULL;
    s->n_out = s->cap_out = 0;
    s->n_made = 0; /* the graph owns them now */
    return MSH_OK;
}

msh_status msh_fp16_apply(msh_onnx_model *m, const msh_fp16_opts *o, msh_fp16_stats *st,
                          msh_error *e) {
    memset(st, 0, sizeof *st);
    if (o->target != 10 && o->target != 16)
        return msh_fail(e, MSH_ERR_USAGE, "float conversion target must be FLOAT16 or BFLOAT16");
    ctx c;
    memset(&c, 0, sizeof c);
    c.m = m;
    c.o = o;
    c.st = st;
    c.e = e;
    for (size_t i = 0; i < m->mp->n_opset_import; i++) {
        const Onnx__OperatorSetIdProto *op = m->mp->opset_import[i];
        const char *d = op->domain ? op->domain : "";
        if (is_default_domain(d))
            c.opset_default = op->version;
        else if (strcmp(d, "ai.onnx.ml") == 0)
            c.opset_ml = op->version;
        else if (strcmp(d, "ai.onnx.preview.training") == 0)
            c.opset_training = op->version;
    }
    msh_status s = msh_names_collect(&c.names, m, e);
    if (s == MSH_OK)
        s = parse_list(&c, o->block_ops, &c.block_ops);
    if (s == MSH_OK)
        s = parse_list(&c, o->block_nodes, &c.block_nodes);
    if (s == MSH_OK) {
        scope main;
        memset(&main, 0, sizeof main);
        main.g = m->mp->graph;
        main.graph = 0;
        main.is_main = 1;
        s = process_graph(&c, &main);
        scope_free(&main);
    }
    for (size_t i = 0; i < c.n_vals; i++)
        free(c.vals[i].uses);
    free(c.vals);
    for (size_t i = 0; i < c.n_strs; i++)
        free(c.strs[i]);
    free(c.strs);
    msh_names_free(&c.names);
    msh_strmap_free(&c.block_ops);
    msh_strmap_free(&c.block_nodes);
    return s;
}
