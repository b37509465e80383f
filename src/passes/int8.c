#include "passes/int8.h"

#include <stdlib.h>

#include "common/msh_strmap.h"
#include "formats/onnx_build.h"
#include "kernels/msh_cpu.h"
#include "passes/names.h"

typedef struct quse {
    Onnx__NodeProto *node;
    size_t idx;
    int axis; /* -1: not an eligible use */
} quse;

typedef struct qcand {
    int64_t t; /* tensor index */
    quse *uses;
    size_t n, cap;
    int other; /* used somewhere it cannot be replaced (graph output) */
    /* the layout, once its uses are known */
    int axis;    /* -1: no eligible use */
    int fold;    /* the channels are dims [0 .. axis] together (recurrent W and R: per direction
                    and row) */
    int castmul; /* dequantized by Cast + Mul (opset < 13, or folded channels) */
    int64_t channels, inner;
    float *absmax; /* per channel, found by the engine */
} qcand;

/* Zero points are all zeros: one tensor per (graph, length) serves every weight. */
typedef struct zshare {
    int graph;
    int64_t channels;
    const char *name; /* owned by the name table */
} zshare;

typedef struct zcache {
    zshare *v;
    size_t n, cap;
} zcache;

static int is_dflt(const char *d) {
    return !d || !*d || strcmp(d, "ai.onnx") == 0;
}

static const Onnx__AttributeProto *attr(const Onnx__NodeProto *n, const char *name) {
    for (size_t i = 0; i < n->n_attribute; i++)
        if (n->attribute[i]->name && strcmp(n->attribute[i]->name, name) == 0)
            return n->attribute[i];
    return NULL;
}

/* Recurrent ops: W [directions, gates x hidden, input] and R [directions, gates x hidden,
 * hidden] are quantized per direction and row. */
static int is_recurrent(const char *op) {
    return strcmp(op, "LSTM") == 0 || strcmp(op, "GRU") == 0 || strcmp(op, "RNN") == 0;
}

int msh_int8_eligible_axis(const Onnx__NodeProto *n, size_t idx, size_t rank, int gather) {
    if (!is_dflt(n->domain) || !n->op_type)
        return -1;
    const char *op = n->op_type;
    if (is_recurrent(op) && (idx == 1 || idx == 2) && rank == 3)
        return 1;
    if (strcmp(op, "MatMul") == 0 && idx == 1 && rank >= 2)
        return (int)rank - 1;
    if (strcmp(op, "Gemm") == 0 && idx == 1 && rank == 2) {
        const Onnx__AttributeProto *a = attr(n, "transB");
        return a && a->has_i && a->i ? 0 : 1;
    }
    if (strcmp(op, "Conv") == 0 && idx == 1 && rank >= 3)
        return 0;
    if (strcmp(op, "ConvTranspose") == 0 && idx == 1 && rank >= 3)
        return 1;
    if (gather && strcmp(op, "Gather") == 0 && idx == 0 && rank >= 2) {
        const Onnx__AttributeProto *a = attr(n, "axis");
        return a && a->has_i && a->i != 0 ? -1 : 0; /* rows looked up along axis 0 */
    }
    return -1;
}

msh_status msh_quant_count_decls(const msh_onnx_model *m, msh_strmap *decl, msh_error *e) {
    for (size_t gi = 0; gi < m->n_graphs; gi++) {
        const Onnx__GraphProto *g = m->graphs[gi].g;
        int64_t *v;
        for (size_t i = 0; i < g->n_initializer; i++) {
            if (!g->initializer[i]->name ||
                !(v = msh_strmap_upsert(decl, g->initializer[i]->name, 0)))
                return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            (*v)++;
        }
        for (size_t i = 0; i < g->n_input; i++) {
            if (!g->input[i]->name || !(v = msh_strmap_upsert(decl, g->input[i]->name, 0)))
                return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            (*v)++;
        }
        for (size_t i = 0; i < g->n_node; i++)
            for (size_t k = 0; k < g->node[i]->n_output; k++) {
                if (!(v = msh_strmap_upsert(decl, g->node[i]->output[k], 0)))
                    return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
                (*v)++;
            }
    }
    return MSH_OK;
}

/* A new tensor whose bytes live in the skeleton (raw_data), registered in the tensor table. */
msh_status msh_quant_small_tensor(msh_onnx_model *m, const char *name, int32_t type,
                                  const int64_t *dims, size_t n_dims, void *bytes, size_t nbytes,
                                  int graph, Onnx__TensorProto **out, msh_error *e) {
    Onnx__TensorProto *tp = malloc(sizeof *tp);
    if (!tp) {
        free(bytes);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    onnx__tensor_proto__init(tp);
    tp->name = msh_strdup(name);
    tp->dims = malloc((n_dims + 1) * sizeof *tp->dims);
    tp->has_data_type = 1;
    tp->data_type = type;
    tp->has_raw_data = 1;
    tp->raw_data.data = bytes;
    tp->raw_data.len = nbytes;
    if (!tp->name || !tp->dims) {
        protobuf_c_message_free_unpacked(&tp->base, NULL);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    if (n_dims)
        memcpy(tp->dims, dims, n_dims * sizeof *dims);
    tp->n_dims = n_dims;
    msh_tensor t;
    memset(&t, 0, sizeof t);
    msh_tentry_init(&t.d);
    t.tp = tp;
    t.graph = graph;
    t.loc = MSH_LOC_INITIALIZER;
    t.payload = -1;
    t.d.dtype = type;
    t.d.numel = 1;
    for (size_t i = 0; i < n_dims; i++)
        t.d.numel *= dims[i];
    t.d.nbytes = (int64_t)nbytes;
    if (msh_onnx_add_tensor_entry(m, &t) < 0) {
        protobuf_c_message_free_unpacked(&tp->base, NULL);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    *out = tp;
    return MSH_OK;
}

/* Index of graph input `name` in `g`, or -1. */
ptrdiff_t msh_quant_graph_input_at(const Onnx__GraphProto *g, const char *name) {
    for (size_t i = 0; i < g->n_input; i++)
        if (g->input[i]->name && strcmp(g->input[i]->name, name) == 0)
            return (ptrdiff_t)i;
    return -1;
}

/* Before IR 4 an initializer must also be a graph input: declare one for `tp`. */
static msh_status add_input_for(Onnx__GraphProto *g, const Onnx__TensorProto *tp, msh_error *e) {
    Onnx__ValueInfoProto *vi = malloc(sizeof *vi);
    Onnx__TypeProto *ty = malloc(sizeof *ty);
    Onnx__TypeProto__Tensor *tt = malloc(sizeof *tt);
    Onnx__TensorShapeProto *sh = malloc(sizeof *sh);
    Onnx__TensorShapeProto__Dimension **dims = calloc(tp->n_dims + 1, sizeof *dims);
    Onnx__ValueInfoProto **arr = realloc(g->input, (g->n_input + 1) * sizeof *arr);
    if (arr)
        g->input = arr;
    if (!vi || !ty || !tt || !sh || !dims || !arr) {
        free(vi);
        free(ty);
        free(tt);
        free(sh);
        free(dims);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    onnx__value_info_proto__init(vi);
    onnx__type_proto__init(ty);
    onnx__type_proto__tensor__init(tt);
    onnx__tensor_shape_proto__init(sh);
    vi->type = ty;
    ty->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    ty->tensor_type = tt;
    tt->has_elem_type = 1;
    tt->elem_type = tp->data_type;
    tt->shape = sh;
    sh->dim = dims;
    arr[g->n_input++] = vi; /* owned by the graph from here: freed with it */
    vi->name = msh_strdup(tp->name);
    if (!vi->name)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < tp->n_dims; i++) {
        Onnx__TensorShapeProto__Dimension *d = malloc(sizeof *d);
        if (!d)
            return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        onnx__tensor_shape_proto__dimension__init(d);
        d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
        d->dim_value = tp->dims[i];
        dims[sh->n_dim++] = d;
    }
    return MSH_OK;
}

static msh_status msh_quant_add_initializer(Onnx__GraphProto *g, Onnx__TensorProto *tp,
                                            msh_error *e) {
    Onnx__TensorProto **arr = realloc(g->initializer, (g->n_initializer + 1) * sizeof *arr);
    if (!arr) {
        protobuf_c_message_free_unpacked(&tp->base, NULL);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    g->initializer = arr;
    arr[g->n_initializer++] = tp;
    return MSH_OK;
}

static Onnx__NodeProto *make_dql(const char *q, const char *s, const char *z, const char *out,
                                 const char *name, int axis) {
    const char *in[3] = {q, s, z};
    Onnx__NodeProto *n = msh_onnx_node_new("DequantizeLinear", name, in, 3, &out, 1);
    if (n && axis >= 0 && !msh_onnx_node_add_attr(n, msh_onnx_attr_int("axis", axis))) {
        protobuf_c_message_free_unpacked(&n->base, NULL);
        return NULL;
    }
    return n;
}

msh_status msh_quant_prepend_node(Onnx__GraphProto *g, Onnx__NodeProto *n, msh_error *e) {
    Onnx__NodeProto **arr = realloc(g->node, (g->n_node + 1) * sizeof *arr);
    if (!arr) {
        protobuf_c_message_free_unpacked(&n->base, NULL);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    memmove(arr + 1, arr, g->n_node * sizeof *arr);
    arr[0] = n;
    g->node = arr;
    g->n_node++;
    return MSH_OK;
}

msh_status msh_quant_set_input(Onnx__NodeProto *n, size_t i, const char *name, msh_error *e) {
    char *d = msh_strdup(name);
    if (!d)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    free(n->input[i]);
    n->input[i] = d;
    return MSH_OK;
}

/* The quantization layout of a candidate from its uses: the channel axis of its first eligible
 * use (others must agree), the channel count and run length, and how it is dequantized:
 * DequantizeLinear with `axis` from opset 13, else (and for recurrent weights, whose channels
 * span two dims) Cast to FLOAT and Mul by the scales shaped to broadcast. */
static void plan_layout(const msh_onnx_model *m, qcand *q, int64_t opset) {
    const msh_tensor *w = &m->tensors[q->t];
    const Onnx__TensorProto *tp = w->tp;
    q->axis = -1;
    for (size_t i = 0; i < q->n && q->axis < 0; i++)
        if (q->uses[i].axis >= 0) {
            q->axis = q->uses[i].axis;
            q->fold = is_recurrent(q->uses[i].node->op_type);
        }
    if (q->axis < 0 || tp->n_dims > 16)
        return;
    q->castmul = q->fold || opset < 13;
    q->channels = 1;
    for (int d = q->fold ? 0 : q->axis; d <= q->axis; d++)
        q->channels *= tp->dims[d];
    q->inner = 1;
    for (size_t d = (size_t)q->axis + 1; d < tp->n_dims; d++)
        q->inner *= tp->dims[d];
    if (q->channels <= 0 || q->inner <= 0)
        q->axis = -1;
}

/* Cast(q, to=FLOAT) -> Mul(., s). */
static Onnx__NodeProto *make_castmul(const char *q, const char *s, const char *out,
                                     const char *name, const char *cast_out, const char *cast_name,
                                     Onnx__NodeProto **mul) {
    Onnx__NodeProto *c = msh_onnx_node_new("Cast", cast_name, &q, 1, &cast_out, 1);
    if (!c || !msh_onnx_node_add_attr(c, msh_onnx_attr_int("to", 1))) {
        if (c)
            protobuf_c_message_free_unpacked(&c->base, NULL);
        return NULL;
    }
    const char *in[2] = {cast_out, s};
    *mul = msh_onnx_node_new("Mul", name, in, 2, &out, 1);
    if (!*mul) {
        protobuf_c_message_free_unpacked(&c->base, NULL);
        return NULL;
    }
    return c;
}

/* A new initializer of `g` (and, before IR 4, the graph input that must declare it). */
msh_status msh_quant_add_weight(const msh_onnx_model *m, Onnx__GraphProto *g, Onnx__TensorProto *tp,
                                msh_error *e) {
    MSH_FORWARD(msh_quant_add_initializer(g, tp, e));
    return m->mp->ir_version < 4 ? add_input_for(g, tp, e) : MSH_OK;
}

static msh_status quantize_one(msh_onnx_model *m, const msh_int8_opts *o, msh_int8_stats *st,
                               msh_names *nm, zcache *zc, qcand *q, msh_error *e) {
    msh_tensor *w = &m->tensors[q->t];
    Onnx__TensorProto *tp = w->tp;
    int axis = q->axis;
    if (axis < 0)
        return MSH_OK;
    int64_t channels = q->channels, inner = q->inner;
    float *scales = q->absmax; /* the maxima become the scales, in place */
    q->absmax = NULL;
    msh_status s = MSH_OK;
    /* The FP16/BF16 pass stores the scales in that type where the dequantizing op then runs in
     * it: DequantizeLinear-19 (its output type is the scale's), and the Mul of Cast + Mul. */
    int32_t round = q->castmul || st->opset >= 19 ? o->scale_round : 0;
    for (int64_t c = 0; c < channels; c++) {
        float sc = msh_int8_scale_ref(scales[c]);
        if (round == 10 || round == 16) {
            /* The FP16/BF16 pass will store the scale in that type: quantize with the value
             * that will be stored (exactly representable, so that pass converts it exactly). */
            uint32_t b;
            int clamped;
            memcpy(&b, &sc, 4);
            if (round == 10)
                b = msh_f16_to_f32_ref(
                    msh_f32_to_f16_ref(b, MSH_F16_MIN_SUBNORMAL_BITS, MSH_F16_MAX_BITS, &clamped));
            else
                b = (uint32_t)msh_f32_to_bf16_ref(b) << 16;
            memcpy(&sc, &b, 4);
        }
        scales[c] = sc;
    }
    int graph = w->graph;
    Onnx__GraphProto *g = m->graphs[graph].g;
    const char *qn = msh_names_fresh(nm, tp->name, "_quantized");
    const char *sn = msh_names_fresh(nm, tp->name, "_scale");
    const char *zn = NULL;
    int zero_new = !q->castmul;
    for (size_t i = 0; zero_new && i < zc->n; i++)
        if (zc->v[i].graph == w->graph && zc->v[i].channels == channels) {
            zn = zc->v[i].name;
            zero_new = 0;
        }
    if (!zn && !q->castmul)
        zn = msh_names_fresh(nm, tp->name, "_zero_point");
    const char *dn = msh_names_fresh(nm, tp->name, "_dequantized");
    const char *nn = msh_names_fresh(nm, tp->name, "_DequantizeLinear");
    const char *cn = q->castmul ? msh_names_fresh(nm, tp->name, "_int8_as_float") : "";
    const char *cnn = q->castmul ? msh_names_fresh(nm, tp->name, "_Cast") : "";
    if (!qn || !sn || (!zn && !q->castmul) || !dn || !nn || !cn || !cnn) {
        free(scales);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    /* scale and zero point: 1-D [C] for DequantizeLinear; for Cast + Mul the scales take the
     * weight's dims up to the channel axis and 1 after it, so that they broadcast */
    int64_t sshape[16];
    size_t sdims = 1;
    sshape[0] = channels;
    if (q->castmul) {
        sdims = 0;
        for (int d = q->fold ? 0 : axis; d <= axis; d++)
            sshape[sdims++] = tp->dims[d];
        for (size_t d = (size_t)axis + 1; d < tp->n_dims && sdims < 16; d++)
            sshape[sdims++] = 1;
    }
    int64_t cdim = channels;
    size_t sbytes = (size_t)channels * 4;
    uint8_t *sb = malloc(sbytes + 1), *zb = calloc((size_t)channels + 1, 1);
    if (!sb || !zb) {
        free(sb);
        free(zb);
        free(scales);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    memcpy(sb, scales, sbytes);
    Onnx__TensorProto *stp = NULL, *ztp = NULL;
    s = msh_quant_small_tensor(m, sn, 1, sshape, sdims, sb, sbytes, graph, &stp, e);
    if (s == MSH_OK)
        s = msh_quant_add_weight(m, g, stp, e);
    if (s == MSH_OK && zero_new) {
        s = msh_quant_small_tensor(m, zn, 3, &cdim, 1, zb, (size_t)channels, graph, &ztp, e);
        if (s == MSH_OK)
            s = msh_quant_add_weight(m, g, ztp, e);
        if (s == MSH_OK && msh_grow((void **)&zc->v, &zc->cap, zc->n, sizeof *zc->v))
            zc->v[zc->n++] = (zshare){graph, channels, zn};
    } else {
        free(zb);
    }
    if (s != MSH_OK) {
        free(scales);
        return s;
    }
    /* the INT8 weight: the FP32 tensor's bytes, quantized by the engine when written */
    Onnx__TensorProto *qtp = malloc(sizeof *qtp);
    if (!qtp) {
        free(scales);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    onnx__tensor_proto__init(qtp);
    qtp->name = msh_strdup(qn);
    qtp->dims = malloc((tp->n_dims + 1) * sizeof *qtp->dims);
    qtp->has_data_type = 1;
    qtp->data_type = 3;
    if (!qtp->name || !qtp->dims) {
        protobuf_c_message_free_unpacked(&qtp->base, NULL);
        free(scales);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    memcpy(qtp->dims, tp->dims, tp->n_dims * sizeof *tp->dims);
    qtp->n_dims = tp->n_dims;
    w = &m->tensors[q->t]; /* adding entries may have moved the table */
    msh_tensor qt = *w;
    qt.tp = qtp;
    qt.payload = -1; /* the bytes are the FP32 tensor's, reached through d.src */
    qt.external_in = 0;
    qt.d.dropped = 0;
    qt.d.out_dtype = 3;
    qt.d.qscales = scales;
    qt.d.qchannels = channels;
    qt.d.qinner = inner;
    if (msh_onnx_own(m, scales) != MSH_OK) {
        protobuf_c_message_free_unpacked(&qtp->base, NULL);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    if (msh_onnx_add_tensor_entry(m, &qt) < 0) {
        protobuf_c_message_free_unpacked(&qtp->base, NULL);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    MSH_FORWARD(msh_quant_add_weight(m, g, qtp, e));
    if (q->castmul) {
        Onnx__NodeProto *mul = NULL;
        Onnx__NodeProto *cast = make_castmul(qn, sn, dn, nn, cn, cnn, &mul);
        if (!cast)
            return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        msh_status s2 = msh_quant_prepend_node(g, mul, e);
        if (s2 != MSH_OK) {
            protobuf_c_message_free_unpacked(&cast->base, NULL);
            return s2;
        }
        MSH_FORWARD(msh_quant_prepend_node(g, cast, e));
    } else {
        Onnx__NodeProto *dq = make_dql(qn, sn, zn, dn, nn, axis);
        if (!dq)
            return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        MSH_FORWARD(msh_quant_prepend_node(g, dq, e));
    }
    size_t kept = 0;
    for (size_t i = 0; i < q->n; i++) {
        if (q->uses[i].axis == axis)
            MSH_FORWARD(msh_quant_set_input(q->uses[i].node, q->uses[i].idx, dn, e));
        else
            kept++;
    }
    w = &m->tensors[q->t];
    st->tensors++;
    st->castmul += q->castmul;
    st->bytes_before += w->d.nbytes;
    st->bytes_after += w->d.numel + (int64_t)sbytes + (zero_new ? channels : 0);
    if (kept == 0 && !q->other) {
        /* nothing reads the FP32 weight any more */
        w = &m->tensors[q->t];
        for (size_t i = 0; i < g->n_initializer; i++)
            if (g->initializer[i] == w->tp) {
                memmove(&g->initializer[i], &g->initializer[i + 1],
                        (g->n_initializer - i - 1) * sizeof *g->initializer);
                g->n_initializer--;
                ptrdiff_t in =
                    m->mp->ir_version < 4 ? msh_quant_graph_input_at(g, w->tp->name) : -1;
                if (in >= 0) { /* its declaration as a graph input goes with it */
                    protobuf_c_message_free_unpacked(&g->input[in]->base, NULL);
                    memmove(&g->input[in], &g->input[in + 1],
                            (g->n_input - (size_t)in - 1) * sizeof *g->input);
                    g->n_input--;
                }
                MSH_FORWARD(msh_onnx_adopt_orphan(m, w->tp) == MSH_OK
                                ? MSH_OK
                                : msh_fail(e, MSH_ERR_NOMEM, "out of memory"));
                w->d.dropped = 1;
                break;
            }
    }
    return MSH_OK;
}

msh_status msh_int8_apply(msh_onnx_model *m, const msh_int8_opts *o, msh_int8_stats *st,
                          msh_error *e) {
    memset(st, 0, sizeof *st);
    for (size_t i = 0; i < m->mp->n_opset_import; i++)
        if (is_dflt(m->mp->opset_import[i]->domain))
            st->opset = m->mp->opset_import[i]->version;
    /* Mul broadcasts numpy-style from opset 7; Mul-6's broadcast axis would be valid ONNX, but
     * onnxruntime runs no Mul below opset 7, so the output would not run where the input does */
    if (st->opset < 7) {
        st->skipped_opset = 1;
        return MSH_OK;
    }
    msh_strmap decl, idx;
    msh_strmap_init(&decl);
    msh_strmap_init(&idx);
    msh_names nm;
    memset(&nm, 0, sizeof nm);
    qcand *c = NULL;
    size_t nc = 0;
    msh_status s = msh_quant_count_decls(m, &decl, e);
    if (s == MSH_OK)
        s = msh_names_collect(&nm, m, e);
    if (s == MSH_OK && !(c = calloc(m->n_tensors + 1, sizeof *c)))
        s = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t i = 0; s == MSH_OK && i < m->n_tensors; i++) {
        const msh_tensor *t = &m->tensors[i];
        if (t->loc != MSH_LOC_INITIALIZER || t->d.dropped || t->graph < 0 || t->d.out_dtype ||
            t->tp->data_type != 1 || t->d.numel == 0 || !t->tp->name || t->tp->n_dims == 0)
            continue;
        int64_t *d = msh_strmap_get(&decl, t->tp->name);
        /* before IR 4 every initializer is also listed as an input of its graph: a weight */
        int64_t own = m->mp->ir_version < 4 &&
                      msh_quant_graph_input_at(m->graphs[t->graph].g, t->tp->name) >= 0;
        if (!d || *d != 1 + own)
            continue; /* a graph input, or a name declared again somewhere */
        c[nc].t = (int64_t)i;
        if (!msh_strmap_upsert(&idx, t->tp->name, (int64_t)nc))
            s = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        nc++;
    }
    /* every use of every candidate, in every graph */
    for (size_t gi = 0; s == MSH_OK && nc && gi < m->n_graphs; gi++) {
        Onnx__GraphProto *g = m->graphs[gi].g;
        for (size_t i = 0; s == MSH_OK && i < g->n_node; i++) {
            Onnx__NodeProto *n = g->node[i];
            for (size_t k = 0; k < n->n_input; k++) {
                int64_t *ci = msh_strmap_get(&idx, n->input[k]);
                if (!ci)
                    continue;
                qcand *q = &c[*ci];
                if (!msh_grow((void **)&q->uses, &q->cap, q->n, sizeof *q->uses)) {
                    s = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
                    break;
                }
                size_t rank = m->tensors[q->t].tp->n_dims;
                q->uses[q->n++] = (quse){n, k, msh_int8_eligible_axis(n, k, rank, o->gather)};
            }
        }
        for (size_t i = 0; i < g->n_output; i++) {
            int64_t *ci = g->output[i]->name ? msh_strmap_get(&idx, g->output[i]->name) : NULL;
            if (ci)
                c[*ci].other = 1;
        }
    }
    /* the channel maxima of every weight to quantize, in one engine scan */
    msh_job *jobs = s == MSH_OK ? calloc(nc + 1, sizeof *jobs) : NULL;
    size_t nj = 0;
    if (s == MSH_OK && !jobs)
        s = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t i = 0; s == MSH_OK && i < nc; i++) {
        plan_layout(m, &c[i], st->opset);
        if (c[i].axis < 0)
            continue;
        st->eligible++;
        int64_t numel = m->tensors[c[i].t].d.numel;
        if (numel < o->min_elements) {
            if (numel > st->largest_small)
                st->largest_small = numel;
            c[i].axis = -1;
            continue;
        }
        if (3 * numel <=
            4 * c[i].channels + MSH_INT8_NODE_BYTES * (m->mp->ir_version < 4 ? 2 : 1)) {
            st->no_gain++; /* its scales and nodes would cost what INT8 saves */
            c[i].axis = -1;
            continue;
        }
        if (!(c[i].absmax = calloc((size_t)c[i].channels, sizeof(float)))) {
            s = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            break;
        }
        const msh_tensor *w = &m->tensors[c[i].t];
        msh_job *j = &jobs[nj++];
        memset(j, 0, sizeof *j);
        j->src = &w->d.src;
        j->nbytes = w->d.nbytes;
        j->op = MSH_OP_ABSMAX;
        j->inner = c[i].inner;
        j->channels = c[i].channels;
        j->name = w->d.name;
        j->absmax = c[i].absmax;
    }
    if (s == MSH_OK)
        s = msh_engine_scan(o->engine, jobs, nj, e);
    free(jobs);
    zcache zc = {NULL, 0, 0};
    for (size_t i = 0; s == MSH_OK && i < nc; i++)
        s = quantize_one(m, o, st, &nm, &zc, &c[i], e);
    free(zc.v);
    for (size_t i = 0; c && i < nc; i++) {
        free(c[i].uses);
        free(c[i].absmax);
    }
    free(c);
    msh_names_free(&nm);
    msh_strmap_free(&decl);
    msh_strmap_free(&idx);
    return s;
}
