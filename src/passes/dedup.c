#include "passes/dedup.h"

#include <stdlib.h>

#include "common/msh_strmap.h"
#include "kernels/msh_engine.h"
#include "kernels/msh_hash.h"

#define MSH_CMP_CHUNK ((size_t)1 << 20)

typedef struct cand {
    int64_t t;
    uint64_t digest;
    int removable;
} cand;

static int key_cmp(const msh_onnx_model *m, int64_t a, int64_t b) {
    const Onnx__TensorProto *x = m->tensors[a].tp, *y = m->tensors[b].tp;
    if (x->data_type != y->data_type)
        return x->data_type < y->data_type ? -1 : 1;
    if (x->n_dims != y->n_dims)
        return x->n_dims < y->n_dims ? -1 : 1;
    for (size_t i = 0; i < x->n_dims; i++)
        if (x->dims[i] != y->dims[i])
            return x->dims[i] < y->dims[i] ? -1 : 1;
    return 0;
}

static int cand_prefix_cmp(const void *pa, const void *pb) {
    const cand *a = pa, *b = pb;
    if (a->digest != b->digest)
        return a->digest < b->digest ? -1 : 1;
    return a->t < b->t ? -1 : a->t > b->t;
}

/* qsort has no context argument in C11; thread-local keeps parallel conversions apart. */
static _Thread_local const msh_onnx_model *g_model;

static int cand_key_cmp(const void *pa, const void *pb) {
    const cand *a = pa, *b = pb;
    int c = key_cmp(g_model, a->t, b->t);
    if (c)
        return c;
    return a->t < b->t ? -1 : a->t > b->t;
}

static int has_data(const msh_tensor *t) {
    const Onnx__TensorProto *tp = t->tp;
    if (t->payload >= 0 || t->numel == 0)
        return 1;
    return tp->n_float_data || tp->n_int32_data || tp->n_int64_data || tp->n_double_data ||
           tp->n_uint64_data;
}

/* Count declarations of each name: initializers, graph inputs, node outputs, in every graph.
 * An initializer listed as an input of its own graph counts once when such merges are allowed,
 * twice otherwise (which keeps it out of dedup). */
static msh_status count_decls(const msh_onnx_model *m, int allow_graph_inputs, msh_strmap *decl,
                              msh_strmap *outputs, msh_strmap *inputs, msh_error *e) {
    for (size_t gi = 0; gi < m->n_graphs; gi++) {
        const Onnx__GraphProto *g = m->graphs[gi].g;
        msh_strmap inits;
        msh_strmap_init(&inits);
        for (size_t i = 0; i < g->n_initializer; i++) {
            const char *nm = g->initializer[i]->name ? g->initializer[i]->name : "";
            int64_t *v = msh_strmap_upsert(decl, nm, 0);
            if (!v || !msh_strmap_upsert(&inits, nm, 0)) {
                msh_strmap_free(&inits);
                return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            }
            (*v)++;
        }
        for (size_t i = 0; i < g->n_input; i++) {
            const char *nm = g->input[i]->name ? g->input[i]->name : "";
            if (!msh_strmap_upsert(inputs, nm, 1)) {
                msh_strmap_free(&inits);
                return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            }
            if (allow_graph_inputs && msh_strmap_get(&inits, nm))
                continue;
            int64_t *v = msh_strmap_upsert(decl, nm, 0);
            if (!v) {
                msh_strmap_free(&inits);
                return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            }
            (*v)++;
        }
        msh_strmap_free(&inits);
        for (size_t i = 0; i < g->n_node; i++)
            for (size_t k = 0; k < g->node[i]->n_output; k++) {
                int64_t *v = msh_strmap_upsert(decl, g->node[i]->output[k], 0);
                if (!v)
                    return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
                (*v)++;
            }
        for (size_t i = 0; i < g->n_output; i++)
            if (g->output[i]->name && !msh_strmap_upsert(outputs, g->output[i]->name, 1))
                return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    return MSH_OK;
}

static int graph_root(const msh_onnx_model *m, int g) {
    while (m->graphs[g].parent >= 0)
        g = m->graphs[g].parent;
    return g;
}

static int is_ancestor_or_self(const msh_onnx_model *m, int anc, int g) {
    for (; g >= 0; g = m->graphs[g].parent)
        if (g == anc)
            return 1;
    return 0;
}

static int common_ancestor(const msh_onnx_model *m, int a, int b) {
    for (int x = a; x >= 0; x = m->graphs[x].parent)
        if (is_ancestor_or_self(m, x, b))
            return x;
    return -1;
}

static msh_status add_group(msh_dedup_plan *plan, const msh_onnx_model *m, int64_t keeper,
                            const int64_t *members, size_t n, msh_error *e) {
    /* members excludes the keeper; decide scope and hoisting. */
    const msh_tensor *k = &m->tensors[keeper];
    int root = graph_root(m, k->graph);
    int target = k->graph;
    int64_t *rem = malloc((n ? n : 1) * sizeof *rem);
    if (!rem)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    size_t nr = 0;
    for (size_t i = 0; i < n; i++) {
        int g = m->tensors[members[i]].graph;
        if (graph_root(m, g) != root)
            continue;
        rem[nr++] = members[i];
        target = common_ancestor(m, target, g);
    }
    if (nr == 0) {
        free(rem);
        return MSH_OK;
    }
    msh_dup_group *gs = realloc(plan->groups, (plan->n_groups + 1) * sizeof *gs);
    if (!gs) {
        free(rem);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    plan->groups = gs;
    gs[plan->n_groups++] = (msh_dup_group){keeper, rem, nr, target != k->graph ? target : -1};
    plan->merged += (int64_t)nr;
    plan->saved_bytes += (int64_t)nr * k->nbytes;
    return MSH_OK;
}

/* One class of identical tensors (cls[0] is the first met): pick the keeper and record it.
 * An interface tensor (graph output, allowed graph input) is never removed; the first one met
 * becomes the keeper and stays where it is; a second one stays on its own. */
static msh_status emit_class(const msh_onnx_model *m, msh_dedup_plan *plan, const cand *const *cls,
                             size_t n, msh_error *e) {
    int64_t *members = malloc(n * sizeof *members);
    if (!members)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    size_t nm = 0;
    int64_t keeper = -1;
    for (size_t i = 0; i < n; i++)
        if (!cls[i]->removable) {
            keeper = cls[i]->t;
            break;
        }
    int keeper_fixed = keeper >= 0;
    if (!keeper_fixed)
        keeper = cls[0]->t;
    for (size_t i = 0; i < n; i++)
        if (cls[i]->t != keeper && cls[i]->removable)
            members[nm++] = cls[i]->t;
    if (keeper_fixed) {
        /* A fixed keeper cannot move: merge only copies that can already see it. */
        size_t w = 0;
        for (size_t k = 0; k < nm; k++)
            if (is_ancestor_or_self(m, m->tensors[keeper].graph, m->tensors[members[k]].graph))
                members[w++] = members[k];
        nm = w;
    }
    msh_status st = nm ? add_group(plan, m, keeper, members, nm, e) : MSH_OK;
    free(members);
    return st;
}

#define MSH_LOCKSTEP_BUDGET ((size_t)64 << 20)

/* Read the tensors of `c` side by side, chunk by chunk, each exactly once: compare every one
 * with c[0] (same[k] = 1 when identical) and, when `hash`, compute every digest on the way.
 * Buffers stay within MSH_LOCKSTEP_BUDGET: a large group is done in batches that re-read c[0]. */
static msh_status lockstep(const msh_onnx_model *m, cand **c, size_t n, int hash, uint8_t *same,
                           msh_error *e) {
    int64_t nbytes = m->tensors[c[0]->t].nbytes;
    size_t chunk = MSH_CMP_CHUNK;
    if ((int64_t)chunk > nbytes)
        chunk = nbytes > 0 ? (size_t)nbytes : 1;
    size_t per_batch = MSH_LOCKSTEP_BUDGET / chunk;
    if (per_batch < 2)
        per_batch = 2;
    if (per_batch > n)
        per_batch = n;
    uint8_t *head = malloc(chunk), *buf = malloc(chunk);
    msh_hasher **hs = calloc(per_batch, sizeof *hs);
    msh_status st = MSH_OK;
    if (!head || !buf || !hs)
        st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t k = 0; k < n; k++)
        same[k] = 1;
    /* batch b holds members [from, to); c[0] is read with every batch */
    for (size_t from = 1; st == MSH_OK && (from < n || (n == 1 && from == 1));) {
        size_t to = from + per_batch - 1 < n ? from + per_batch - 1 : n;
        int first = from == 1;
        for (size_t k = 0; hash && k <= to - from && st == MSH_OK; k++) {
            if (!hs[k] && !(hs[k] = msh_hasher_new()))
                st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            else
                msh_hasher_reset(hs[k]);
        }
        for (int64_t off = 0; st == MSH_OK && off < nbytes;) {
            size_t len = nbytes - off < (int64_t)chunk ? (size_t)(nbytes - off) : chunk;
            st = msh_onnx_tensor_read(m, &m->tensors[c[0]->t], off, head, len, e);
            if (st == MSH_OK && hash && first)
                msh_hasher_update(hs[0], head, len);
            for (size_t k = from; k < to && st == MSH_OK; k++) {
                if (!hash && !same[k])
                    continue; /* already known to differ and no digest wanted */
                st = msh_onnx_tensor_read(m, &m->tensors[c[k]->t], off, buf, len, e);
                if (st != MSH_OK)
                    break;
                if (hash)
                    msh_hasher_update(hs[k - from + 1], buf, len);
                if (same[k] && memcmp(head, buf, len) != 0)
                    same[k] = 0;
            }
            off += (int64_t)len;
        }
        for (size_t k = 0; hash && st == MSH_OK && k <= to - from; k++) {
            if (k == 0 && !first)
                continue;
            cand *x = k == 0 ? c[0] : c[from + k - 1];
            x->digest = msh_hasher_digest(hs[k]);
            if (msh_hasher_failed(hs[k]))
                st = msh_fail(e, MSH_ERR_NOMEM, "out of memory hashing a tensor");
        }
        if (n == 1)
            break;
        from = to;
    }
    for (size_t k = 0; k < per_batch && hs; k++)
        msh_hasher_free(hs[k]);
    free(hs);
    free(head);
    free(buf);
    return st;
}

static int candp_digest_cmp(const void *pa, const void *pb) {
    const cand *a = *(cand *const *)pa, *b = *(cand *const *)pb;
    if (a->digest != b->digest)
        return a->digest < b->digest ? -1 : 1;
    return a->t < b->t ? -1 : a->t > b->t;
}

static msh_status read_cand(void *arg, void *dst, size_t n, int64_t off, msh_error *e) {
    const msh_onnx_model *m = ((const void **)arg)[0];
    const msh_tensor *t = ((const void **)arg)[1];
    return msh_onnx_tensor_read(m, t, off, dst, n, e);
}

/* Candidates that may be identical: one pass hashes them and compares them with the first;
 * the rest are split by digest and each run of equal digests is confirmed the same way. */
static msh_status resolve_group(const msh_onnx_model *m, cand *g, size_t n, msh_dedup_plan *plan,
                                const msh_engine *eng, msh_error *e) {
    cand **ptr = malloc(n * sizeof *ptr);
    cand **cls = malloc(n * sizeof *cls);
    uint8_t *same = malloc(n);
    msh_status st = MSH_OK;
    if (!ptr || !cls || !same) {
        st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        ptr[i] = &g[i];
    if (eng && eng->cuda) {
        /* digests on the GPU, then one compare pass against the first */
        for (size_t i = 0; i < n && st == MSH_OK; i++) {
            const msh_tensor *t = &m->tensors[g[i].t];
            const void *rctx[2] = {m, t};
            if (t->payload >= 0)
                st = msh_engine_digest(eng, t->nbytes, read_cand, (void *)rctx, &g[i].digest,
                                       t->tp->name, e);
        }
        if (st == MSH_OK)
            st = lockstep(m, ptr, n, 0, same, e);
    } else {
        st = lockstep(m, ptr, n, 1, same, e);
    }
    size_t rest = 0, nc = 0;
    for (size_t i = 0; st == MSH_OK && i < n; i++) {
        if (same[i])
            cls[nc++] = ptr[i];
        else
            ptr[rest++] = ptr[i];
    }
    if (st == MSH_OK && nc >= 2)
        st = emit_class(m, plan, (const cand *const *)cls, nc, e);
    if (st != MSH_OK)
        goto done;
    qsort(ptr, rest, sizeof *ptr, candp_digest_cmp);
    for (size_t a = 0; a < rest && st == MSH_OK;) {
        size_t b = a + 1;
        while (b < rest && ptr[b]->digest == ptr[a]->digest)
            b++;
        /* Confirm the run byte for byte; what differs from its first (a digest collision)
         * is confirmed again among itself. */
        size_t lo = a, hi = b;
        while (hi - lo >= 2 && st == MSH_OK) {
            st = lockstep(m, ptr + lo, hi - lo, 0, same, e);
            size_t w = lo;
            nc = 0;
            for (size_t i = lo; st == MSH_OK && i < hi; i++) {
                if (same[i - lo])
                    cls[nc++] = ptr[i];
                else
                    ptr[w++] = ptr[i];
            }
            if (st == MSH_OK && nc >= 2)
                st = emit_class(m, plan, (const cand *const *)cls, nc, e);
            hi = w;
        }
        a = b;
    }
done:
    free(ptr);
    free(cls);
    free(same);
    return st;
}

/* All candidates of one (type, shape). Identical tensors have identical first chunks, so a
 * digest of the first MSH_HASH_CHUNK bytes splits the group first: distinct weights of the
 * same shape (every layer of BERT) are then told apart after one small read each. */
static msh_status resolve_key_group(const msh_onnx_model *m, cand *g, size_t n,
                                    msh_dedup_plan *plan, const msh_engine *eng, msh_error *e) {
    int64_t nbytes = m->tensors[g[0].t].nbytes;
    if (nbytes <= (int64_t)MSH_HASH_CHUNK || n < 2)
        return resolve_group(m, g, n, plan, eng, e);
    uint8_t *buf = malloc(MSH_HASH_CHUNK);
    if (!buf)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    msh_status st = MSH_OK;
    for (size_t i = 0; i < n && st == MSH_OK; i++) {
        st = msh_onnx_tensor_read(m, &m->tensors[g[i].t], 0, buf, MSH_HASH_CHUNK, e);
        if (st == MSH_OK)
            g[i].digest = msh_chunk_hash_ref(buf, MSH_HASH_CHUNK);
    }
    free(buf);
    if (st != MSH_OK)
        return st;
    qsort(g, n, sizeof *g, cand_prefix_cmp);
    for (size_t a = 0; a < n && st == MSH_OK;) {
        size_t b = a + 1;
        while (b < n && g[b].digest == g[a].digest)
            b++;
        if (b - a >= 2)
            st = resolve_group(m, g + a, b - a, plan, eng, e);
        a = b;
    }
    return st;
}

msh_status msh_dedup_find(const msh_onnx_model *m, int allow_graph_inputs,
                          const struct msh_engine *engine, msh_dedup_plan *plan, msh_error *e) {
    memset(plan, 0, sizeof *plan);
    const msh_engine *eng = engine;
    msh_strmap decl, outputs, inputs;
    msh_strmap_init(&decl);
    msh_strmap_init(&outputs);
    msh_strmap_init(&inputs);
    cand *c = NULL;
    msh_status st = count_decls(m, allow_graph_inputs, &decl, &outputs, &inputs, e);
    if (st != MSH_OK)
        goto done;
    c = malloc((m->n_tensors + 1) * sizeof *c);
    if (!c) {
        st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        goto done;
    }
    size_t nc = 0;
    for (size_t i = 0; i < m->n_tensors; i++) {
        const msh_tensor *t = &m->tensors[i];
        if (t->loc != MSH_LOC_INITIALIZER || t->removed || t->graph < 0 || t->nbytes < 0 ||
            t->tp->data_type == 8 || !t->tp->name || !*t->tp->name || !has_data(t))
            continue;
        int64_t *d = msh_strmap_get(&decl, t->tp->name);
        if (!d || *d != 1)
            continue; /* a graph input, or a name declared again somewhere */
        /* Graph outputs and (allowed) graph inputs keep their initializer: others may point at
         * them, they are never removed, so the interface and its defaults stay intact. */
        int removable =
            !msh_strmap_get(&outputs, t->tp->name) && !msh_strmap_get(&inputs, t->tp->name);
        c[nc++] = (cand){(int64_t)i, 0, removable};
    }
    g_model = m;
    qsort(c, nc, sizeof *c, cand_key_cmp);
    for (size_t i = 0; i < nc && st == MSH_OK;) {
        size_t j = i + 1;
        while (j < nc && key_cmp(m, c[i].t, c[j].t) == 0)
            j++;
        if (j - i >= 2)
            st = resolve_key_group(m, c + i, j - i, plan, eng, e);
        i = j;
    }
done:
    msh_strmap_free(&decl);
    msh_strmap_free(&outputs);
    msh_strmap_free(&inputs);
    free(c);
    return st;
}

static msh_status detach_initializer(msh_onnx_model *m, int graph, Onnx__TensorProto *tp,
                                     msh_error *e) {
    Onnx__GraphProto *g = m->graphs[graph].g;
    for (size_t i = 0; i < g->n_initializer; i++) {
        if (g->initializer[i] != tp)
            continue;
        memmove(&g->initializer[i], &g->initializer[i + 1],
                (g->n_initializer - i - 1) * sizeof *g->initializer);
        g->n_initializer--;
        return MSH_OK;
    }
    return msh_fail(e, MSH_ERR_FORMAT, "internal error: initializer '%s' not in its graph",
                    tp->name);
}

static msh_status rename_inputs(msh_onnx_model *m, const msh_strmap *ren, const char **newnames,
                                msh_error *e) {
    for (size_t gi = 0; gi < m->n_graphs; gi++) {
        Onnx__GraphProto *g = m->graphs[gi].g;
        for (size_t i = 0; i < g->n_node; i++) {
            Onnx__NodeProto *nd = g->node[i];
            for (size_t k = 0; k < nd->n_input; k++) {
                int64_t *v = msh_strmap_get(ren, nd->input[k]);
                if (!v)
                    continue;
                char *nn = msh_strdup(newnames[*v]);
                if (!nn)
                    return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
                free(nd->input[k]);
                nd->input[k] = nn;
            }
        }
        size_t w = 0;
        for (size_t i = 0; i < g->n_value_info; i++) {
            Onnx__ValueInfoProto *vi = g->value_info[i];
            if (vi->name && msh_strmap_get(ren, vi->name)) {
                protobuf_c_message_free_unpacked(&vi->base, NULL);
                continue;
            }
            g->value_info[w++] = vi;
        }
        g->n_value_info = w;
    }
    return MSH_OK;
}

msh_status msh_dedup_apply(msh_onnx_model *m, const msh_dedup_plan *plan, msh_error *e) {
    if (plan->n_groups == 0)
        return MSH_OK;
    msh_strmap ren;
    msh_strmap_init(&ren);
    const char **newnames = malloc(plan->n_groups * sizeof *newnames);
    msh_status st = MSH_OK;
    if (!newnames) {
        st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (size_t gi = 0; gi < plan->n_groups && st == MSH_OK; gi++) {
        const msh_dup_group *g = &plan->groups[gi];
        msh_tensor *k = &m->tensors[g->keeper];
        newnames[gi] = k->tp->name;
        if (g->hoist_to >= 0) {
            st = detach_initializer(m, k->graph, k->tp, e);
            if (st != MSH_OK)
                break;
            Onnx__GraphProto *to = m->graphs[g->hoist_to].g;
            Onnx__TensorProto **arr =
                realloc(to->initializer, (to->n_initializer + 1) * sizeof *arr);
            if (!arr) {
                st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
                break;
            }
            arr[to->n_initializer++] = k->tp;
            to->initializer = arr;
            k->graph = g->hoist_to;
        }
        for (size_t r = 0; r < g->n_removed && st == MSH_OK; r++) {
            msh_tensor *t = &m->tensors[g->removed[r]];
            st = detach_initializer(m, t->graph, t->tp, e);
            if (st != MSH_OK)
                break;
            if (msh_onnx_adopt_orphan(m, t->tp) != MSH_OK) {
                /* still attached nowhere: free it now rather than leak */
                protobuf_c_message_free_unpacked(&t->tp->base, NULL);
                t->tp = NULL;
                st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
                break;
            }
            t->removed = 1;
            if (!msh_strmap_upsert(&ren, t->tp->name, (int64_t)gi))
                st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        }
    }
    if (st == MSH_OK)
        st = rename_inputs(m, &ren, newnames, e);
done:
    msh_strmap_free(&ren);
    free(newnames);
    return st;
}

void msh_dedup_plan_free(msh_dedup_plan *plan) {
    for (size_t i = 0; i < plan->n_groups; i++)
        free(plan->groups[i].removed);
    free(plan->groups);
    memset(plan, 0, sizeof *plan);
}
