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
    int axis; /* -1: no eligible use */
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

/* The channel axis when input `idx` of `n` is a weight we quantize, else -1. */
static int eligible_axis(const Onnx__NodeProto *n, size_t idx, size_t rank, int gather) {
    if (!is_dflt(n->domain) || !n->op_type)
        return -1;
    const char *op = n->op_type;
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

static msh_status count_decls(const msh_onnx_model *m, msh_strmap *decl, msh_error *e) {
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
static msh_status small_tensor(msh_onnx_model *m, const char *name, int32_t type,
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

static msh_status add_initializer(Onnx__GraphProto *g, Onnx__TensorProto *tp, msh_error *e) {
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

static msh_status prepend_node(Onnx__GraphProto *g, Onnx__NodeProto *n, msh_error *e) {
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

static msh_status set_input(Onnx__NodeProto *n, size_t i, const char *name, msh_error *e) {
    char *d = msh_strdup(name);
    if (!d)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    free(n->input[i]);
    n->input[i] = d;
    return MSH_OK;
}

/* The quantization layout of a candidate from its uses: the channel axis of its first eligible
 * use (others must agree), and the channel count and run length. */
static void plan_layout(const msh_onnx_model *m, qcand *q, int per_channel) {
    const msh_tensor *w = &m->tensors[q->t];
    const Onnx__TensorProto *tp = w->tp;
    q->axis = -1;
    for (size_t i = 0; i < q->n && q->axis < 0; i++)
        q->axis = q->uses[i].axis;
    if (q->axis < 0)
        return;
    q->channels = per_channel ? tp->dims[q->axis] : 1;
    q->inner = 1;
    if (per_channel)
        for (size_t d = (size_t)q->axis + 1; d < tp->n_dims; d++)
            q->inner *= tp->dims[d];
    else
        q->inner = w->d.numel > 0 ? w->d.numel : 1;
    if (q->channels <= 0 || q->inner <= 0)
        q->axis = -1;
}

static msh_status quantize_one(msh_onnx_model *m, const msh_int8_opts *o, msh_int8_stats *st,
                               msh_names *nm, zcache *zc, qcand *q, int per_channel, msh_error *e) {
    msh_tensor *w = &m->tensors[q->t];
    Onnx__TensorProto *tp = w->tp;
    int axis = q->axis;
    if (axis < 0)
        return MSH_OK;
    int64_t channels = q->channels, inner = q->inner;
    float *scales = q->absmax; /* the maxima become the scales, in place */
    q->absmax = NULL;
    msh_status s = MSH_OK;
    for (int64_t c = 0; c < channels; c++) {
        float sc = msh_int8_scale_ref(scales[c]);
        if (o->scale_round == 10 || o->scale_round == 16) {
            /* The FP16/BF16 pass will store the scale in that type: quantize with the value
             * that will be stored (exactly representable, so that pass converts it exactly). */
            uint32_t b;
            int clamped;
            memcpy(&b, &sc, 4);
            if (o->scale_round == 10)
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
    int zero_new = 1;
    for (size_t i = 0; i < zc->n; i++)
        if (zc->v[i].graph == w->graph && zc->v[i].channels == (per_channel ? tp->dims[axis] : 1)) {
            zn = zc->v[i].name;
            zero_new = 0;
        }
    if (!zn)
        zn = msh_names_fresh(nm, tp->name, "_zero_point");
    const char *dn = msh_names_fresh(nm, tp->name, "_dequantized");
    const char *nn = msh_names_fresh(nm, tp->name, "_DequantizeLinear");
    if (!qn || !sn || !zn || !dn || !nn) {
        free(scales);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    /* scale and zero point: 1-D [C], or scalars per tensor */
    int64_t cdim = channels;
    size_t sdims = per_channel ? 1 : 0;
    size_t sbytes = (size_t)channels * 4;
    uint8_t *sb = malloc(sbytes + 1), *zb = calloc((size_t)channels + 1, 1);
    if (!sb || !zb) {
        free(sb);
        free(zb);
        free(scales);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    memcpy(sb, scales, sbytes);
    Onnx__TensorProto *stp, *ztp;
    s = small_tensor(m, sn, 1, &cdim, sdims, sb, sbytes, graph, &stp, e);
    if (s == MSH_OK)
        s = add_initializer(g, stp, e);
    if (s == MSH_OK && zero_new) {
        s = small_tensor(m, zn, 3, &cdim, sdims, zb, (size_t)channels, graph, &ztp, e);
        if (s == MSH_OK)
            s = add_initializer(g, ztp, e);
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
    MSH_FORWARD(add_initializer(g, qtp, e));
    Onnx__NodeProto *dq = make_dql(qn, sn, zn, dn, nn, per_channel ? axis : -1);
    if (!dq)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    MSH_FORWARD(prepend_node(g, dq, e));
    size_t kept = 0;
    for (size_t i = 0; i < q->n; i++) {
        if (q->uses[i].axis == axis)
            MSH_FORWARD(set_input(q->uses[i].node, q->uses[i].idx, dn, e));
        else
            kept++;
    }
    w = &m->tensors[q->t];
    st->tensors++;
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
    if (st->opset < 10) {
        st->skipped_opset = 1;
        return MSH_OK;
    }
    int per_channel = st->opset >= 13;
    st->per_tensor = !per_channel;
    msh_strmap decl, idx;
    msh_strmap_init(&decl);
    msh_strmap_init(&idx);
    msh_names nm;
    memset(&nm, 0, sizeof nm);
    qcand *c = NULL;
    size_t nc = 0;
    msh_status s = count_decls(m, &decl, e);
    if (s == MSH_OK)
        s = msh_names_collect(&nm, m, e);
    if (s == MSH_OK && !(c = calloc(m->n_tensors + 1, sizeof *c)))
        s = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t i = 0; s == MSH_OK && i < m->n_tensors; i++) {
        const msh_tensor *t = &m->tensors[i];
        if (t->loc != MSH_LOC_INITIALIZER || t->d.dropped || t->graph < 0 || t->d.out_dtype ||
            t->tp->data_type != 1 || t->d.numel < o->min_elements || t->d.numel == 0 ||
            !t->tp->name || t->tp->n_dims == 0)
            continue;
        int64_t *d = msh_strmap_get(&decl, t->tp->name);
        if (!d || *d != 1)
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
                q->uses[q->n++] = (quse){n, k, eligible_axis(n, k, rank, o->gather)};
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
        plan_layout(m, &c[i], per_channel);
        if (c[i].axis < 0)
            continue;
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
        s = quantize_one(m, o, st, &nm, &zc, &c[i], per_channel, e);
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
