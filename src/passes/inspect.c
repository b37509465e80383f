#include "passes/inspect.h"

#include "common/msh_strmap.h"
#include "passes/ckpt.h"
#include "passes/prune.h"

#include <stdio.h>
#include <stdlib.h>

#include "common/msh_dtype.h"

#define MSH_TOP_N MSH_INSPECT_LARGEST /* msh_inspect_info.largest holds them all */

void msh_json_by_dtype(cJSON *report, const int64_t count[32], const int64_t bytes[32]) {
    cJSON *bd = cJSON_AddArrayToObject(report, "by_dtype");
    for (int d = 0; d < 32; d++) {
        if (!count[d])
            continue;
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "dtype", msh_dtype_name(d == 31 ? -1 : d));
        cJSON_AddNumberToObject(x, "count", (double)count[d]);
        cJSON_AddNumberToObject(x, "bytes", (double)bytes[d]);
        cJSON_AddItemToArray(bd, x);
    }
}

static cJSON *shape_json(const Onnx__TensorProto *tp) {
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < tp->n_dims; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)tp->dims[i]));
    return a;
}

/* One entry of "tensors" (msh_inspect_file_ex with MSH_INSPECT_TENSOR_LIST): a tensor's own bytes
 * in the file (a checkpoint: a storage, under its first tensor's name), its role and, when dedup
 * would drop it, the tensor it duplicates. */
static int add_tensor_item(cJSON *list, const char *name, int32_t dtype, int64_t bytes,
                           const char *role, const char *dup_of) {
    cJSON *x = cJSON_CreateObject();
    if (!x || !cJSON_AddItemToArray(list, x))
        return (cJSON_Delete(x), 0);
    return cJSON_AddStringToObject(x, "name", name ? name : "") &&
           cJSON_AddStringToObject(x, "dtype", msh_dtype_name(dtype)) &&
           cJSON_AddNumberToObject(x, "bytes", (double)(bytes > 0 ? bytes : 0)) &&
           cJSON_AddStringToObject(x, "role", role) &&
           (!dup_of || cJSON_AddStringToObject(x, "dup_of", dup_of));
}

static _Thread_local const msh_dedup_plan *g_plan;
static _Thread_local const msh_onnx_model *g_pm;
static int group_saved_desc(const void *a, const void *b) {
    const msh_dup_group *x = &g_plan->groups[*(const size_t *)a];
    const msh_dup_group *y = &g_plan->groups[*(const size_t *)b];
    int64_t sx = (int64_t)x->n_removed * g_pm->tensors[x->keeper].d.nbytes;
    int64_t sy = (int64_t)y->n_removed * g_pm->tensors[y->keeper].d.nbytes;
    if (sx != sy)
        return sx > sy ? -1 : 1;
    return *(const size_t *)a < *(const size_t *)b ? -1 : 1;
}

static void graph_label(const msh_onnx_model *m, int g, char *buf, size_t cap) {
    if (g < 0)
        snprintf(buf, cap, "function");
    else if (g == 0)
        snprintf(buf, cap, "main");
    else if (m->graphs[g].g->name && *m->graphs[g].g->name)
        snprintf(buf, cap, "%s", m->graphs[g].g->name);
    else
        snprintf(buf, cap, "graph#%d", g);
}

static _Thread_local const msh_onnx_model *g_m; /* qsort has no context argument */
static int by_size_desc(const void *a, const void *b) {
    int64_t x = g_m->tensors[*(const size_t *)a].d.nbytes,
            y = g_m->tensors[*(const size_t *)b].d.nbytes;
    if (x != y)
        return x > y ? -1 : 1;
    return *(const size_t *)a < *(const size_t *)b ? -1 : 1;
}

/* "tensors" of an ONNX model: every tensor, a merged duplicate naming its keeper. */
static msh_status onnx_tensor_list(const msh_onnx_model *m, const msh_dedup_plan *plan, cJSON *o,
                                   msh_error *e) {
    const char **dup = (const char **)calloc(m->n_tensors + 1, sizeof *dup);
    cJSON *list = cJSON_AddArrayToObject(o, "tensors");
    int ok = dup && list;
    for (size_t g = 0; ok && g < plan->n_groups; g++)
        for (size_t r = 0; r < plan->groups[g].n_removed; r++)
            dup[plan->groups[g].removed[r]] = m->tensors[plan->groups[g].keeper].tp->name;
    for (size_t i = 0; ok && i < m->n_tensors; i++) {
        const msh_tensor *t = &m->tensors[i];
        ok = add_tensor_item(list, t->tp->name, t->tp->data_type, t->d.nbytes, "weight", dup[i]);
    }
    free(dup);
    return ok ? MSH_OK : msh_fail(e, MSH_ERR_NOMEM, "out of memory");
}

msh_status msh_inspect_onnx(const msh_onnx_model *m, const msh_dedup_plan *plan, int list, cJSON *o,
                            msh_error *e) {
    int64_t total = 0, inline_bytes = 0;
    int64_t dt_count[32] = {0}, dt_bytes[32] = {0};
    for (size_t i = 0; i < m->n_tensors; i++) {
        const msh_tensor *t = &m->tensors[i];
        int64_t b = t->d.nbytes > 0 ? t->d.nbytes : 0;
        total += b;
        if (!t->external_in)
            inline_bytes += b;
        int d = t->tp->data_type >= 0 && t->tp->data_type < 31 ? t->tp->data_type : 31;
        dt_count[d]++;
        dt_bytes[d] += b;
    }
    cJSON_AddStringToObject(o, "format", "onnx");
    cJSON_AddNumberToObject(o, "file_bytes", (double)m->file_size);
    cJSON_AddNumberToObject(o, "external_bytes", (double)m->external_bytes);
    cJSON_AddNumberToObject(o, "tensor_bytes", (double)total);
    cJSON_AddNumberToObject(o, "tensor_count", (double)m->n_tensors);
    int64_t overhead = m->file_size - inline_bytes;
    cJSON_AddNumberToObject(o, "overhead_bytes", (double)(overhead > 0 ? overhead : 0));
    cJSON_AddNumberToObject(o, "ir_version", (double)m->mp->ir_version);
    cJSON *ops = cJSON_AddArrayToObject(o, "opsets");
    for (size_t i = 0; i < m->mp->n_opset_import; i++) {
        cJSON *x = cJSON_CreateObject();
        const Onnx__OperatorSetIdProto *op = m->mp->opset_import[i];
        cJSON_AddStringToObject(x, "domain", op->domain ? op->domain : "");
        cJSON_AddNumberToObject(x, "version", (double)op->version);
        cJSON_AddItemToArray(ops, x);
    }
    msh_json_by_dtype(o, dt_count, dt_bytes);
    cJSON *dup = cJSON_AddObjectToObject(o, "duplicates");
    cJSON_AddNumberToObject(dup, "groups", (double)plan->n_groups);
    cJSON_AddNumberToObject(dup, "tensors", (double)plan->merged);
    cJSON_AddNumberToObject(dup, "saved_bytes", (double)plan->saved_bytes);
    cJSON *dl = cJSON_AddArrayToObject(dup, "list");
    size_t *order = malloc((plan->n_groups + 1) * sizeof *order);
    if (!order)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < plan->n_groups; i++)
        order[i] = i;
    g_plan = plan;
    g_pm = m;
    qsort(order, plan->n_groups, sizeof *order, group_saved_desc); /* biggest savings first */
    for (size_t oi = 0; oi < plan->n_groups; oi++) {
        const msh_dup_group *g = &plan->groups[order[oi]];
        const msh_tensor *k = &m->tensors[g->keeper];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "dtype", msh_dtype_name(k->tp->data_type));
        cJSON_AddItemToObject(x, "shape", shape_json(k->tp));
        cJSON_AddNumberToObject(x, "bytes_each", (double)k->d.nbytes);
        cJSON *mem = cJSON_AddArrayToObject(x, "members");
        cJSON_AddItemToArray(mem, cJSON_CreateString(k->tp->name));
        for (size_t r = 0; r < g->n_removed; r++)
            cJSON_AddItemToArray(mem, cJSON_CreateString(m->tensors[g->removed[r]].tp->name));
        cJSON_AddItemToArray(dl, x);
    }
    free(order);
    if (list) /* before the clean-up below marks what it would remove */
        MSH_FORWARD(onnx_tensor_list(m, plan, o, e));
    size_t *idx = malloc((m->n_tensors + 1) * sizeof *idx);
    if (!idx)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < m->n_tensors; i++)
        idx[i] = i;
    g_m = m;
    qsort(idx, m->n_tensors, sizeof *idx, by_size_desc);
    cJSON *lg = cJSON_AddArrayToObject(o, "largest");
    for (size_t i = 0; i < m->n_tensors && i < MSH_TOP_N; i++) {
        const msh_tensor *t = &m->tensors[idx[i]];
        cJSON *x = cJSON_CreateObject();
        char gl[128];
        graph_label(m, t->graph, gl, sizeof gl);
        cJSON_AddStringToObject(x, "name", t->tp->name ? t->tp->name : "");
        cJSON_AddStringToObject(x, "dtype", msh_dtype_name(t->tp->data_type));
        cJSON_AddItemToObject(x, "shape", shape_json(t->tp));
        cJSON_AddNumberToObject(x, "bytes", (double)(t->d.nbytes > 0 ? t->d.nbytes : 0));
        cJSON_AddStringToObject(x, "location", msh_onnx_loc_name(t->loc));
        cJSON_AddStringToObject(x, "graph", gl);
        cJSON_AddNumberToObject(x, "users", (double)t->d.users);
        cJSON_AddItemToArray(lg, x);
    }
    free(idx);
    /* Quantized weights: INT8/UINT8 initializers read by DequantizeLinear nodes... */
    msh_strmap inits;
    msh_strmap_init(&inits);
    for (size_t i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].loc == MSH_LOC_INITIALIZER && !m->tensors[i].d.dropped &&
            m->tensors[i].tp->name &&
            !msh_strmap_upsert(&inits, m->tensors[i].tp->name, (int64_t)i)) {
            msh_strmap_free(&inits);
            return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        }
    int64_t qn = 0, qbytes = 0, qscale = 0, qzero = 0;
    for (size_t gi = 0; gi < m->n_graphs; gi++) {
        const Onnx__GraphProto *g = m->graphs[gi].g;
        for (size_t k = 0; k < g->n_node; k++) {
            const Onnx__NodeProto *n = g->node[k];
            if (!n->op_type || strcmp(n->op_type, "DequantizeLinear") != 0 || n->n_input < 2 ||
                (n->domain && *n->domain))
                continue;
            int64_t *x = msh_strmap_get(&inits, n->input[0]);
            if (!x || *x < 0 ||
                (m->tensors[*x].tp->data_type != 3 && m->tensors[*x].tp->data_type != 2))
                continue;
            qn++;
            qbytes += m->tensors[*x].d.nbytes;
            int64_t *sc = msh_strmap_get(&inits, n->input[1]);
            if (sc && *sc >= 0)
                qscale += m->tensors[*sc].d.nbytes;
            int64_t *zp = n->n_input > 2 ? msh_strmap_get(&inits, n->input[2]) : NULL;
            if (zp && *zp >= 0) {
                qzero += m->tensors[*zp].d.nbytes;
                *zp = -1; /* a zero point shared by several weights is counted once */
            }
        }
    }
    /* ... and INT8 initializers widened by Cast(to=FLOAT) and scaled by a Mul with a FLOAT
     * initializer (modelshrink's per-channel form below opset 13 and for recurrent weights) */
    msh_strmap casts;
    msh_strmap_init(&casts);
    for (size_t gi = 0; gi < m->n_graphs; gi++) {
        const Onnx__GraphProto *g = m->graphs[gi].g;
        for (size_t k = 0; k < g->n_node; k++) {
            const Onnx__NodeProto *n = g->node[k];
            if (!n->op_type || strcmp(n->op_type, "Cast") != 0 || n->n_input != 1 ||
                n->n_output != 1 || (n->domain && *n->domain))
                continue;
            int to = 0;
            for (size_t a = 0; a < n->n_attribute; a++)
                if (n->attribute[a]->name && strcmp(n->attribute[a]->name, "to") == 0)
                    to = (int)n->attribute[a]->i;
            int64_t *x = msh_strmap_get(&inits, n->input[0]);
            if (to != 1 || !x || *x < 0 ||
                (m->tensors[*x].tp->data_type != 3 && m->tensors[*x].tp->data_type != 2))
                continue;
            if (!msh_strmap_upsert(&casts, n->output[0], *x)) {
                msh_strmap_free(&casts);
                msh_strmap_free(&inits);
                return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            }
        }
    }
    for (size_t gi = 0; casts.n && gi < m->n_graphs; gi++) {
        const Onnx__GraphProto *g = m->graphs[gi].g;
        for (size_t k = 0; k < g->n_node; k++) {
            const Onnx__NodeProto *n = g->node[k];
            if (!n->op_type || strcmp(n->op_type, "Mul") != 0 || n->n_input != 2 ||
                (n->domain && *n->domain))
                continue;
            for (int side = 0; side < 2; side++) {
                int64_t *x = msh_strmap_get(&casts, n->input[side]);
                int64_t *sc = msh_strmap_get(&inits, n->input[1 - side]);
                if (!x || *x < 0 || !sc || *sc < 0 || m->tensors[*sc].tp->data_type != 1)
                    continue;
                qn++;
                qbytes += m->tensors[*x].d.nbytes;
                qscale += m->tensors[*sc].d.nbytes;
                *x = -1; /* one weight, one count */
                break;
            }
        }
    }
    msh_strmap_free(&casts);
    /* INT4 weights: INT4/UINT4 initializers read by DequantizeLinear (blockwise, opset 21), and
     * the packed UINT8 B of com.microsoft.MatMulNBits (input 1; scales 2, zero points 3) and
     * GatherBlockQuantized (input 0; scales 2, zero points 3). Each tensor counts once however
     * many nodes read it. */
    int64_t q4[6] = {0}; /* tensors, bytes, scale bytes, zero-point bytes, dql, com.microsoft */
    for (size_t gi = 0; gi < m->n_graphs; gi++) {
        const Onnx__GraphProto *g = m->graphs[gi].g;
        for (size_t k = 0; k < g->n_node; k++) {
            const Onnx__NodeProto *n = g->node[k];
            if (!n->op_type)
                continue;
            int dql = strcmp(n->op_type, "DequantizeLinear") == 0 && (!n->domain || !*n->domain);
            int ms = n->domain && strcmp(n->domain, "com.microsoft") == 0;
            size_t wi = 0;
            if (ms && strcmp(n->op_type, "MatMulNBits") == 0)
                wi = 1;
            else if (ms && strcmp(n->op_type, "GatherBlockQuantized") == 0)
                wi = 0;
            else if (!dql)
                continue;
            if (n->n_input < 3 - (size_t)dql || n->n_input <= wi)
                continue;
            int64_t *x = msh_strmap_get(&inits, n->input[wi]);
            int32_t xt = x && *x >= 0 ? m->tensors[*x].tp->data_type : 0;
            if (dql ? xt != 21 && xt != 22 : xt != 2 && xt != 21 && xt != 22)
                continue;
            q4[0]++;
            q4[dql ? 4 : 5]++;
            q4[1] += m->tensors[*x].d.nbytes;
            *x = -1;
            size_t si = dql ? 1 : 2;
            int64_t *sc = msh_strmap_get(&inits, n->input[si]);
            if (sc && *sc >= 0) {
                q4[2] += m->tensors[*sc].d.nbytes;
                *sc = -1;
            }
            int64_t *zp = n->n_input > si + 1 && n->input[si + 1][0]
                              ? msh_strmap_get(&inits, n->input[si + 1])
                              : NULL;
            if (zp && *zp >= 0) {
                q4[3] += m->tensors[*zp].d.nbytes;
                *zp = -1;
            }
        }
    }
    msh_strmap_free(&inits);
    {
        /* what the always-on clean-up of convert would remove */
        msh_prune_stats ps;
        msh_status pst = msh_prune_apply((msh_onnx_model *)m, NULL, 0, &ps, e);
        if (pst != MSH_OK)
            return pst;
        cJSON *un = cJSON_AddObjectToObject(o, "unused");
        cJSON_AddNumberToObject(un, "initializers", (double)ps.tensors);
        cJSON_AddNumberToObject(un, "bytes", (double)ps.bytes);
        cJSON_AddNumberToObject(un, "nodes", (double)ps.nodes);
    }
    cJSON *qo = cJSON_AddObjectToObject(o, "quantized");
    cJSON_AddNumberToObject(qo, "tensors", (double)qn);
    cJSON_AddNumberToObject(qo, "bytes", (double)qbytes);
    cJSON_AddNumberToObject(qo, "scale_bytes", (double)qscale);
    cJSON_AddNumberToObject(qo, "zero_point_bytes", (double)qzero);
    cJSON *q4o = cJSON_AddObjectToObject(qo, "int4");
    cJSON_AddNumberToObject(q4o, "tensors", (double)q4[0]);
    cJSON_AddNumberToObject(q4o, "bytes", (double)q4[1]);
    cJSON_AddNumberToObject(q4o, "scale_bytes", (double)q4[2]);
    cJSON_AddNumberToObject(q4o, "zero_point_bytes", (double)q4[3]);
    cJSON_AddNumberToObject(q4o, "dequantize_linear", (double)q4[4]);
    cJSON_AddNumberToObject(q4o, "com_microsoft", (double)q4[5]);
    cJSON *ex = cJSON_AddArrayToObject(o, "external");
    for (size_t f = 0; f < m->n_ext; f++) {
        int64_t cnt = 0, bytes = 0;
        for (size_t i = 0; i < m->n_tensors; i++) {
            const msh_tensor *t = &m->tensors[i];
            if (t->external_in && m->payloads[t->payload].src == (int)f + 1) {
                cnt++;
                bytes += t->d.nbytes;
            }
        }
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "location", m->ext[f].location);
        cJSON_AddNumberToObject(x, "tensors", (double)cnt);
        cJSON_AddNumberToObject(x, "bytes", (double)bytes);
        cJSON_AddItemToArray(ex, x);
    }
    return MSH_OK;
}

/* ---- checkpoints ---- */

static cJSON *tentry_shape(const msh_tentry *t) {
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < t->ndim; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)t->shape[i]));
    return a;
}

typedef struct dup_json {
    const msh_table *tab;
    cJSON *list;
    int64_t groups, tensors, saved;
    int64_t *dup_of; /* NULL, or per table entry: the keeper it duplicates, else -1 */
} dup_json;

static msh_status dup_class(void *arg, const msh_dedup_cand *const *cls, size_t n, msh_error *e) {
    dup_json *d = arg;
    (void)e;
    const msh_tentry *k = msh_table_at(d->tab, (size_t)cls[0]->t);
    cJSON *g = cJSON_CreateObject();
    cJSON_AddStringToObject(g, "dtype", msh_dtype_name(k->dtype));
    cJSON_AddItemToObject(g, "shape", tentry_shape(k));
    cJSON_AddNumberToObject(g, "bytes_each", (double)k->nbytes);
    cJSON *members = cJSON_AddArrayToObject(g, "members");
    for (size_t i = 0; i < n; i++) {
        cJSON_AddItemToArray(members,
                             cJSON_CreateString(msh_table_at(d->tab, (size_t)cls[i]->t)->name));
        if (d->dup_of && i > 0)
            d->dup_of[cls[i]->t] = cls[0]->t;
    }
    cJSON_AddItemToArray(d->list, g);
    d->groups++;
    d->tensors += (int64_t)n - 1;
    d->saved += ((int64_t)n - 1) * k->nbytes;
    return MSH_OK;
}

/* "duplicates": groups of tensors among `sel` (one per storage view) with identical bytes. */
static msh_status dup_report(const msh_table *tab, msh_dedup_cand *c, size_t nc, msh_engine *eng,
                             cJSON *o, int64_t *dup_of, msh_error *e) {
    cJSON *dup = cJSON_AddObjectToObject(o, "duplicates");
    dup_json d = {tab, NULL, 0, 0, 0, dup_of};
    d.list = cJSON_CreateArray();
    msh_status st = nc >= 2 ? msh_dedup_classes(tab, c, nc, eng, dup_class, &d, e) : MSH_OK;
    cJSON_AddNumberToObject(dup, "groups", (double)d.groups);
    cJSON_AddNumberToObject(dup, "tensors", (double)d.tensors);
    cJSON_AddNumberToObject(dup, "saved_bytes", (double)d.saved);
    cJSON_AddItemToObject(dup, "list", d.list);
    return st;
}

static int dt_index(int32_t dtype) {
    return dtype >= 0 && dtype < 31 ? dtype : 31;
}

/* "by_dtype" of checkpoint tensors: per element type, the tensors, the storages they view and
 * those storages' bytes, each storage counted once (tied weights and views share one). */
static void json_by_dtype_storages(cJSON *o, const int64_t count[32], const int64_t storages[32],
                                   const int64_t bytes[32]) {
    cJSON *bd = cJSON_AddArrayToObject(o, "by_dtype");
    for (int d = 0; d < 32; d++) {
        if (!count[d] && !storages[d])
            continue;
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "dtype", msh_dtype_name(d == 31 ? -1 : d));
        cJSON_AddNumberToObject(x, "count", (double)count[d]);
        cJSON_AddNumberToObject(x, "storages", (double)storages[d]);
        cJSON_AddNumberToObject(x, "bytes", (double)bytes[d]);
        cJSON_AddItemToArray(bd, x);
    }
}

static _Thread_local const msh_table *g_tab;
static int entry_size_desc(const void *a, const void *b) {
    size_t i = *(const size_t *)a, k = *(const size_t *)b;
    int64_t x = msh_table_at(g_tab, i)->nbytes, y = msh_table_at(g_tab, k)->nbytes;
    if (x != y)
        return x > y ? -1 : 1;
    return i < k ? -1 : 1;
}

/* "largest": the MSH_TOP_N largest of the `n` table entries `idx` (sorted in place), by their
 * own bytes; `views`, when given, adds how many tensors view each one's storage. */
static msh_status json_largest(cJSON *o, const msh_table *tab, size_t *idx, size_t n,
                               const msh_pth *views, msh_error *e) {
    cJSON *lg = cJSON_AddArrayToObject(o, "largest");
    if (!lg)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    g_tab = tab;
    if (n)
        qsort(idx, n, sizeof *idx, entry_size_desc);
    for (size_t i = 0; i < n && i < MSH_TOP_N; i++) {
        const msh_tentry *t = msh_table_at(tab, idx[i]);
        cJSON *x = cJSON_CreateObject();
        /* a checkpoint's tensor by its path from the root ("optimizer.state.0.exp_avg") */
        const char *name = views ? views->t[idx[i]].name : t->name;
        cJSON_AddStringToObject(x, "name", name ? name : "");
        cJSON_AddStringToObject(x, "dtype", msh_dtype_name(t->dtype));
        cJSON_AddItemToObject(x, "shape", tentry_shape(t));
        cJSON_AddNumberToObject(x, "bytes", (double)(t->nbytes > 0 ? t->nbytes : 0));
        cJSON_AddStringToObject(x, "role", msh_role_name(t->role));
        if (views) {
            const msh_pth_tensor *pt = &views->t[idx[i]];
            cJSON_AddBoolToObject(x, "state_dict", pt->key != NULL);
            cJSON_AddNumberToObject(x, "storage_views", (double)views->s[pt->storage].users);
        }
        cJSON_AddItemToArray(lg, x);
    }
    return MSH_OK;
}

/* A table of -1s, one per entry of `n` (dup_report fills in the keepers); NULL when `list` is 0. */
static msh_status dup_of_make(int list, size_t n, int64_t **out, msh_error *e) {
    *out = NULL;
    if (!list)
        return MSH_OK;
    *out = malloc((n + 1) * sizeof **out);
    if (!*out)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        (*out)[i] = -1;
    return MSH_OK;
}

/* "tensors" of a checkpoint: one entry per storage (the file holds each once), named by the
 * first tensor of the storage's category, with that tensor's role. */
static msh_status pth_tensor_list(const msh_pth *p, const int64_t *dup_of, cJSON *o, msh_error *e) {
    int64_t *rep = malloc((p->ns + 1) * sizeof *rep), *dup = malloc((p->ns + 1) * sizeof *dup);
    cJSON *list = cJSON_AddArrayToObject(o, "tensors");
    int ok = rep && dup && list;
    for (size_t s = 0; ok && s < p->ns; s++)
        rep[s] = dup[s] = -1;
    for (size_t i = 0; ok && i < p->nt; i++) {
        size_t s = p->t[i].storage;
        if (rep[s] < 0 || (p->t[rep[s]].cat != p->s[s].cat && p->t[i].cat == p->s[s].cat))
            rep[s] = (int64_t)i;
        if (dup_of[i] >= 0)
            dup[s] = dup_of[i];
    }
    for (size_t s = 0; ok && s < p->ns; s++) {
        const msh_pth_tensor *t = rep[s] >= 0 ? &p->t[rep[s]] : NULL;
        ok = add_tensor_item(list, t ? t->name : p->s[s].key, t ? t->d.dtype : p->s[s].dtype,
                             p->s[s].nbytes,
                             t ? msh_role_name(t->d.role)
                               : (p->s[s].cat == MSH_PTH_OPTIM ? "optimizer_state" : "other"),
                             dup[s] >= 0 ? p->t[dup[s]].name : NULL);
    }
    free(rep);
    free(dup);
    return ok ? MSH_OK : msh_fail(e, MSH_ERR_NOMEM, "out of memory");
}

/* "tensors" of the table entries `idx` (safetensors, model folders). */
static msh_status table_tensor_list(const msh_table *tab, const size_t *idx, size_t n,
                                    const int64_t *dup_of, cJSON *o, msh_error *e) {
    cJSON *list = cJSON_AddArrayToObject(o, "tensors");
    int ok = list != NULL;
    for (size_t k = 0; ok && k < n; k++) {
        const msh_tentry *t = msh_table_at(tab, idx[k]);
        ok = add_tensor_item(list, t->name, t->dtype, t->nbytes, msh_role_name(t->role),
                             dup_of[idx[k]] >= 0 ? msh_table_at(tab, (size_t)dup_of[idx[k]])->name
                                                 : NULL);
    }
    return ok ? MSH_OK : msh_fail(e, MSH_ERR_NOMEM, "out of memory");
}

msh_status msh_inspect_pth(const msh_pth *p, msh_engine *eng, int list, cJSON *o, msh_error *e) {
    int64_t cat_bytes[3] = {0, 0, 0}, total = 0;
    /* the whole file, and the state dict; a storage's bytes once, under its element type */
    int64_t dt_count[32] = {0}, dt_st[32] = {0}, dt_bytes[32] = {0};
    int64_t sd_count[32] = {0}, sd_st[32] = {0}, sd_bytes[32] = {0};
    int64_t sd_tensors = 0, sd_storages = 0, sd_total = 0;
    uint8_t *in_sd = calloc(p->ns + 1, 1);
    int32_t *sdt = malloc((p->ns + 1) * sizeof *sdt);
    if (!in_sd || !sdt) {
        free(in_sd);
        free(sdt);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    /* a storage counts under the type of its first tensor (an UntypedStorage says bytes) */
    for (size_t i = 0; i < p->ns; i++)
        sdt[i] = -1;
    for (size_t i = 0; i < p->nt; i++)
        if (sdt[p->t[i].storage] < 0)
            sdt[p->t[i].storage] = p->t[i].d.dtype;
    for (size_t i = 0; i < p->ns; i++) {
        int d = dt_index(sdt[i] >= 0 ? sdt[i] : p->s[i].dtype);
        cat_bytes[p->s[i].cat] += p->s[i].nbytes;
        total += p->s[i].nbytes;
        dt_st[d]++;
        dt_bytes[d] += p->s[i].nbytes;
    }
    for (size_t i = 0; i < p->nt; i++) {
        const msh_pth_tensor *t = &p->t[i];
        dt_count[dt_index(t->d.dtype)]++;
        if (!t->key)
            continue;
        sd_tensors++;
        sd_count[dt_index(t->d.dtype)]++;
        if (in_sd[t->storage])
            continue;
        in_sd[t->storage] = 1;
        sd_storages++;
        sd_total += p->s[t->storage].nbytes;
        sd_st[dt_index(sdt[t->storage])]++;
        sd_bytes[dt_index(sdt[t->storage])] += p->s[t->storage].nbytes;
    }
    free(in_sd);
    free(sdt);
    cJSON_AddStringToObject(o, "format", "pth");
    cJSON_AddNumberToObject(o, "file_bytes", (double)p->file_size);
    cJSON_AddNumberToObject(o, "tensor_bytes", (double)total);
    cJSON_AddNumberToObject(o, "tensor_count", (double)p->nt);
    cJSON_AddStringToObject(o, "state_dict_key", p->sd_key ? p->sd_key : "");
    cJSON_AddBoolToObject(o, "state_dict_found", p->sd_key != NULL);
    cJSON_AddStringToObject(o, "container", msh_pth_kind_name(p->kind));
    if (p->root_class)
        cJSON_AddStringToObject(o, "module_class", p->root_class);
    else
        cJSON_AddNullToObject(o, "module_class");
    cJSON *cands = cJSON_AddArrayToObject(o, "state_dict_candidates");
    for (size_t i = 0; i < p->n_cand; i++) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "key", p->cand[i].key);
        cJSON_AddNumberToObject(x, "tensors", (double)p->cand[i].tensors);
        cJSON_AddNumberToObject(x, "bytes", (double)p->cand[i].bytes);
        cJSON_AddNumberToObject(x, "storages", (double)p->cand[i].storages);
        cJSON_AddNumberToObject(x, "storage_bytes", (double)p->cand[i].storage_bytes);
        cJSON_AddBoolToObject(x, "chosen", p->cand[i].chosen);
        cJSON_AddItemToArray(cands, x);
    }
    cJSON *objs = cJSON_AddArrayToObject(o, "objects");
    for (size_t i = 0; i < p->n_classes; i++) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "class", p->classes[i]);
        cJSON_AddNumberToObject(x, "count", (double)p->class_count[i]);
        cJSON_AddItemToArray(objs, x);
    }
    cJSON *b = cJSON_AddObjectToObject(o, "breakdown");
    cJSON_AddNumberToObject(b, "weights", (double)cat_bytes[MSH_PTH_WEIGHTS]);
    cJSON_AddNumberToObject(b, "optimizer_state", (double)cat_bytes[MSH_PTH_OPTIM]);
    cJSON_AddNumberToObject(b, "other_tensors", (double)cat_bytes[MSH_PTH_OTHER]);
    cJSON_AddNumberToObject(b, "metadata", (double)(p->file_size - total));
    cJSON_AddNumberToObject(o, "storage_count", (double)p->ns);
    json_by_dtype_storages(o, dt_count, dt_st, dt_bytes);
    if (p->sd_key) {
        cJSON *sd = cJSON_AddObjectToObject(o, "state_dict");
        cJSON_AddStringToObject(sd, "key", p->sd_key);
        cJSON_AddNumberToObject(sd, "tensors", (double)sd_tensors);
        cJSON_AddNumberToObject(sd, "storages", (double)sd_storages);
        cJSON_AddNumberToObject(sd, "bytes", (double)sd_total);
        json_by_dtype_storages(sd, sd_count, sd_st, sd_bytes);
    } else {
        cJSON_AddNullToObject(o, "state_dict");
    }
    cJSON *sh = cJSON_AddArrayToObject(o, "shared_storage");
    for (size_t i = 0; i < p->ns; i++) {
        if (p->s[i].users < 2)
            continue;
        cJSON *x = cJSON_CreateObject();
        cJSON *names = cJSON_AddArrayToObject(x, "tensors");
        for (size_t k = 0; k < p->nt; k++)
            if (p->t[k].storage == i)
                cJSON_AddItemToArray(names, cJSON_CreateString(p->t[k].name));
        cJSON_AddNumberToObject(x, "bytes", (double)p->s[i].nbytes);
        cJSON_AddItemToArray(sh, x);
    }
    /* state-dict tensors in separate storages with the same bytes: one per storage */
    msh_table tab = msh_pth_table(p);
    msh_dedup_cand *c = malloc((p->nt + 1) * sizeof *c);
    uint8_t *seen = calloc(p->ns + 1, 1);
    size_t *idx = malloc((p->nt + 1) * sizeof *idx);
    if (!c || !seen || !idx) {
        free(c);
        free(seen);
        free(idx);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < p->nt; i++)
        idx[i] = i;
    msh_status lst = json_largest(o, &tab, idx, p->nt, p, e);
    free(idx);
    if (lst != MSH_OK) {
        free(c);
        free(seen);
        return lst;
    }
    size_t nc = 0;
    for (size_t i = 0; i < p->nt; i++) {
        const msh_pth_tensor *t = &p->t[i];
        if (t->cat != MSH_PTH_WEIGHTS || !t->key || t->d.nbytes <= 0 || seen[t->storage] ||
            msh_dtype_size(t->d.dtype) <= 0)
            continue;
        seen[t->storage] = 1;
        c[nc++] = (msh_dedup_cand){(int64_t)i, 1, 0};
    }
    int64_t *dup_of;
    msh_status st = dup_of_make(list, p->nt, &dup_of, e);
    if (st == MSH_OK)
        st = dup_report(&tab, c, nc, eng, o, dup_of, e);
    free(c);
    free(seen);
    if (st == MSH_OK && list)
        st = pth_tensor_list(p, dup_of, o, e);
    free(dup_of);
    return st;
}

msh_status msh_inspect_st(const msh_st_file *f, msh_engine *eng, int list, cJSON *o, msh_error *e) {
    int64_t total = 0, dt_count[32] = {0}, dt_bytes[32] = {0};
    for (size_t i = 0; i < f->n; i++) {
        int d = f->t[i].d.dtype < 31 ? f->t[i].d.dtype : 31;
        dt_count[d]++;
        dt_bytes[d] += f->t[i].d.nbytes;
        total += f->t[i].d.nbytes;
    }
    cJSON_AddStringToObject(o, "format", "safetensors");
    cJSON_AddNumberToObject(o, "file_bytes", (double)f->file_size);
    cJSON_AddNumberToObject(o, "header_bytes", (double)f->header_bytes);
    cJSON_AddNumberToObject(o, "tensor_bytes", (double)total);
    cJSON_AddNumberToObject(o, "tensor_count", (double)f->n);
    msh_json_by_dtype(o, dt_count, dt_bytes);
    msh_table tab = msh_st_table(f);
    msh_dedup_cand *c = malloc((f->n + 1) * sizeof *c);
    size_t *idx = malloc((f->n + 1) * sizeof *idx);
    if (!c || !idx) {
        free(c);
        free(idx);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < f->n; i++)
        idx[i] = i;
    msh_status lst = json_largest(o, &tab, idx, f->n, NULL, e);
    free(idx);
    if (lst != MSH_OK) {
        free(c);
        return lst;
    }
    size_t nc = 0;
    for (size_t i = 0; i < f->n; i++)
        if (msh_dtype_size(f->t[i].d.dtype) > 0)
            c[nc++] = (msh_dedup_cand){(int64_t)i, 1, 0};
    int64_t *dup_of;
    msh_status st = dup_of_make(list, f->n, &dup_of, e);
    if (st == MSH_OK)
        st = dup_report(&tab, c, nc, eng, o, dup_of, e);
    free(c);
    if (st == MSH_OK && list) {
        size_t *all = malloc((f->n + 1) * sizeof *all);
        for (size_t i = 0; all && i < f->n; i++)
            all[i] = i;
        st = all ? table_tensor_list(&tab, all, f->n, dup_of, o, e)
                 : msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        free(all);
    }
    free(dup_of);
    return st;
}

msh_status msh_inspect_hf(msh_hf *h, msh_engine *eng, int list, cJSON *o, msh_error *e) {
    msh_table tab = msh_hf_table(h);
    msh_ckpt_plan plan;
    msh_ckpt_opts co;
    memset(&co, 0, sizeof co);
    co.tie = 1;
    MSH_FORWARD(msh_ckpt_plan_make(&tab, &co, eng, &plan, e));
    int64_t total = 0, dt_count[32] = {0}, dt_bytes[32] = {0};
    cJSON_AddStringToObject(o, "format", "hf");
    cJSON_AddStringToObject(o, "weights",
                            h->weights == MSH_FORMAT_SAFETENSORS ? "safetensors" : "pth");
    if (h->index)
        cJSON_AddStringToObject(o, "index", h->index);
    else
        cJSON_AddNullToObject(o, "index");
    cJSON_AddNumberToObject(o, "file_bytes", (double)h->bytes_in);
    cJSON *tied = cJSON_CreateArray();
    msh_dedup_cand *c = malloc((plan.n + 1) * sizeof *c);
    size_t *idx = malloc((plan.n + 1) * sizeof *idx);
    if (!c || !idx) {
        cJSON_Delete(tied);
        free(c);
        free(idx);
        msh_ckpt_plan_free(&plan);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    size_t nc = 0, ni = 0;
    for (size_t k = 0; k < plan.n; k++) {
        const msh_tentry *t = msh_table_at(&tab, plan.sel[k]);
        if (plan.tied_to[k] != MSH_CKPT_UNTIED) {
            cJSON *x = cJSON_CreateObject();
            cJSON_AddStringToObject(x, "key", t->name);
            cJSON_AddStringToObject(x, "to", msh_table_at(&tab, plan.sel[plan.tied_to[k]])->name);
            cJSON_AddNumberToObject(x, "bytes", (double)t->nbytes);
            cJSON_AddItemToArray(tied, x);
            continue;
        }
        int d = t->dtype >= 0 && t->dtype < 31 ? t->dtype : 31;
        dt_count[d]++;
        dt_bytes[d] += t->nbytes > 0 ? t->nbytes : 0;
        total += t->nbytes > 0 ? t->nbytes : 0;
        idx[ni++] = plan.sel[k];
        if (t->nbytes > 0 && msh_dtype_size(t->dtype) > 0)
            c[nc++] = (msh_dedup_cand){(int64_t)plan.sel[k], 1, 0};
    }
    msh_status lst = json_largest(o, &tab, idx, ni, NULL, e); /* a tied key's bytes once */
    free(idx);
    if (lst != MSH_OK) {
        cJSON_Delete(tied);
        free(c);
        msh_ckpt_plan_free(&plan);
        return lst;
    }
    cJSON_AddNumberToObject(o, "tensor_bytes", (double)total);
    cJSON_AddNumberToObject(o, "tensor_count", (double)plan.n);
    cJSON_AddNumberToObject(o, "shard_count", (double)h->n_shards);
    cJSON *sh = cJSON_AddArrayToObject(o, "shards");
    for (size_t i = 0; i < h->n_shards; i++) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "file", h->shards[i].file);
        cJSON_AddNumberToObject(x, "bytes", (double)h->shards[i].size);
        cJSON_AddNumberToObject(x, "tensors", (double)h->shards[i].count);
        cJSON_AddItemToArray(sh, x);
    }
    msh_json_by_dtype(o, dt_count, dt_bytes);
    cJSON_AddItemToObject(o, "tied", tied);
    size_t files = 0;
    for (size_t i = 0; i < h->n_files; i++)
        files += !h->files[i].is_dir;
    cJSON_AddNumberToObject(o, "other_files", (double)files);
    if (h->note[0])
        cJSON_AddStringToObject(o, "note", h->note);
    int64_t *dup_of;
    msh_status st = dup_of_make(list, tab.n, &dup_of, e);
    if (st == MSH_OK)
        st = dup_report(&tab, c, nc, eng, o, dup_of, e);
    free(c);
    if (st == MSH_OK && list) { /* a tied key's bytes once, under the first key */
        size_t *sel = malloc((plan.n + 1) * sizeof *sel), n = 0;
        for (size_t k = 0; sel && k < plan.n; k++)
            if (plan.tied_to[k] == MSH_CKPT_UNTIED)
                sel[n++] = plan.sel[k];
        st = sel ? table_tensor_list(&tab, sel, n, dup_of, o, e)
                 : msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        free(sel);
    }
    free(dup_of);
    msh_ckpt_plan_free(&plan);
    return st;
}
