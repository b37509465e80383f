#include "passes/dedup.h"

#include <stdlib.h>

#include "common/msh_strmap.h"
#include "kernels/msh_hash.h"

/* ---- format-neutral finding ---- */

typedef struct finder {
    const msh_table *tab;
    msh_engine *eng;
    msh_dedup_class_fn fn;
    void *ctx;
    msh_error *e;
} finder;

static int key_cmp(const msh_table *tab, int64_t a, int64_t b) {
    const msh_tentry *x = msh_table_at(tab, (size_t)a), *y = msh_table_at(tab, (size_t)b);
    if (x->dtype != y->dtype)
        return x->dtype < y->dtype ? -1 : 1;
    if (x->ndim != y->ndim)
        return x->ndim < y->ndim ? -1 : 1;
    for (size_t i = 0; i < x->ndim; i++)
        if (x->shape[i] != y->shape[i])
            return x->shape[i] < y->shape[i] ? -1 : 1;
    return 0;
}

/* qsort has no context argument in C11; thread-local keeps parallel conversions apart. */
static _Thread_local const msh_table *g_tab;

static int cand_key_cmp(const void *pa, const void *pb) {
    const msh_dedup_cand *a = pa, *b = pb;
    int c = key_cmp(g_tab, a->t, b->t);
    if (c)
        return c;
    return a->t < b->t ? -1 : a->t > b->t;
}

static int cand_digest_cmp(const void *pa, const void *pb) {
    const msh_dedup_cand *a = pa, *b = pb;
    if (a->digest != b->digest)
        return a->digest < b->digest ? -1 : 1;
    return a->t < b->t ? -1 : a->t > b->t;
}

static int candp_digest_cmp(const void *pa, const void *pb) {
    return cand_digest_cmp(*(const msh_dedup_cand *const *)pa, *(const msh_dedup_cand *const *)pb);
}

/* Digests of the first `limit` bytes (or all) of each candidate, on the engine. */
static msh_status digests(finder *f, msh_dedup_cand *c, size_t n, int64_t limit) {
    msh_job *jobs = calloc(n + 1, sizeof *jobs);
    if (!jobs)
        return msh_fail(f->e, MSH_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const msh_tentry *t = msh_table_at(f->tab, (size_t)c[i].t);
        jobs[i].src = &t->src;
        jobs[i].nbytes = limit >= 0 && t->nbytes > limit ? limit : t->nbytes;
        jobs[i].op = MSH_OP_DIGEST;
        jobs[i].name = t->name;
    }
    msh_status st = msh_engine_scan(f->eng, jobs, n, f->e);
    for (size_t i = 0; st == MSH_OK && i < n; i++)
        c[i].digest = jobs[i].digest;
    free(jobs);
    return st;
}

/* Which of ptr[1..n) have ptr[0]'s bytes (same[k] for ptr[k]; same[0] = 1). */
static msh_status confirm(finder *f, msh_dedup_cand **ptr, size_t n, uint8_t *same) {
    const msh_tentry *ref = msh_table_at(f->tab, (size_t)ptr[0]->t);
    const msh_src **srcs = malloc(n * sizeof *srcs);
    if (!srcs)
        return msh_fail(f->e, MSH_ERR_NOMEM, "out of memory");
    size_t k = 0;
    for (size_t i = 1; i < n; i++)
        srcs[k++] = &msh_table_at(f->tab, (size_t)ptr[i]->t)->src;
    same[0] = 1;
    msh_status st = msh_engine_same(f->eng, &ref->src, srcs, k, ref->nbytes, same + 1, f->e);
    free(srcs);
    return st;
}

/* Candidates that may be identical (one type and shape, maybe one prefix digest), ordered by
 * table index, with their full digests: those equal to the first make the first class; the rest
 * are split by digest and each run of equal digests is confirmed against its first, again and
 * again. */
static msh_status resolve_group(finder *f, msh_dedup_cand *g, size_t n) {
    msh_dedup_cand **first = malloc(n * sizeof *first); /* those with g[0]'s digest */
    msh_dedup_cand **ptr = malloc(n * sizeof *ptr);     /* the rest */
    msh_dedup_cand **cls = malloc(n * sizeof *cls);
    uint8_t *same = malloc(n);
    msh_status st = MSH_OK;
    if (!first || !ptr || !cls || !same) {
        st = msh_fail(f->e, MSH_ERR_NOMEM, "out of memory");
        goto done;
    }
    size_t nf = 0, rest = 0, nc = 0;
    for (size_t i = 0; i < n; i++)
        if (i == 0 || g[i].digest == g[0].digest)
            first[nf++] = &g[i];
    st = confirm(f, first, nf, same);
    if (st != MSH_OK)
        goto done;
    for (size_t i = 0, k = 0; i < n; i++) {
        if (k < nf && first[k] == &g[i]) {
            if (same[k])
                cls[nc++] = &g[i];
            else
                ptr[rest++] = &g[i];
            k++;
        } else {
            ptr[rest++] = &g[i];
        }
    }
    if (nc >= 2)
        st = f->fn(f->ctx, (const msh_dedup_cand *const *)cls, nc, f->e);
    if (st != MSH_OK)
        goto done;
    qsort(ptr, rest, sizeof *ptr, candp_digest_cmp);
    for (size_t a = 0; a < rest && st == MSH_OK;) {
        size_t b = a + 1;
        while (b < rest && ptr[b]->digest == ptr[a]->digest)
            b++;
        /* confirm the run byte for byte; what differs from its first (a digest collision) is
         * confirmed again among itself */
        size_t lo = a, hi = b;
        while (hi - lo >= 2 && st == MSH_OK) {
            st = confirm(f, ptr + lo, hi - lo, same);
            size_t w = lo;
            nc = 0;
            for (size_t i = lo; st == MSH_OK && i < hi; i++) {
                if (same[i - lo])
                    cls[nc++] = ptr[i];
                else
                    ptr[w++] = ptr[i];
            }
            if (st == MSH_OK && nc >= 2)
                st = f->fn(f->ctx, (const msh_dedup_cand *const *)cls, nc, f->e);
            hi = w;
        }
        a = b;
    }
done:
    free(first);
    free(ptr);
    free(cls);
    free(same);
    return st;
}

/* A run of candidates that may be identical: [at, at + n) of the sorted candidates. */
typedef struct span {
    size_t at, n;
} span;

static msh_status add_span(span **v, size_t *n, size_t *cap, size_t at, size_t len, msh_error *e) {
    if (!msh_grow((void **)v, cap, *n, sizeof **v))
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    (*v)[(*n)++] = (span){at, len};
    return MSH_OK;
}

/* Identical tensors have identical first chunks, so a digest of the first MSH_HASH_CHUNK bytes
 * splits a (type, shape) group of large tensors first: distinct weights of the same shape (every
 * layer of BERT) are then told apart after one small read each. All digests of a step are
 * computed in one engine scan. */
msh_status msh_dedup_classes(const msh_table *tab, msh_dedup_cand *c, size_t n, msh_engine *eng,
                             msh_dedup_class_fn fn, void *ctx, msh_error *e) {
    finder f = {tab, eng, fn, ctx, e};
    g_tab = tab;
    qsort(c, n, sizeof *c, cand_key_cmp);
    span *keys = NULL, *groups = NULL;
    size_t nk = 0, capk = 0, ng = 0, capg = 0;
    msh_dedup_cand *big = NULL;
    msh_status st = MSH_OK;
    /* (type, shape) groups of two or more */
    for (size_t i = 0; i < n && st == MSH_OK;) {
        size_t j = i + 1;
        while (j < n && key_cmp(tab, c[i].t, c[j].t) == 0)
            j++;
        if (j - i >= 2)
            st = add_span(&keys, &nk, &capk, i, j - i, e);
        i = j;
    }
    /* prefix digests of the large ones, in one scan */
    size_t nbig = 0;
    for (size_t k = 0; k < nk; k++)
        if (msh_table_at(tab, (size_t)c[keys[k].at].t)->nbytes > (int64_t)MSH_HASH_CHUNK)
            nbig += keys[k].n;
    if (st == MSH_OK && nbig) {
        big = malloc(nbig * sizeof *big);
        if (!big)
            st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        size_t w = 0;
        for (size_t k = 0; st == MSH_OK && k < nk; k++)
            if (msh_table_at(tab, (size_t)c[keys[k].at].t)->nbytes > (int64_t)MSH_HASH_CHUNK) {
                memcpy(big + w, c + keys[k].at, keys[k].n * sizeof *big);
                w += keys[k].n;
            }
        if (st == MSH_OK)
            st = digests(&f, big, nbig, (int64_t)MSH_HASH_CHUNK);
        w = 0;
        for (size_t k = 0; st == MSH_OK && k < nk; k++)
            if (msh_table_at(tab, (size_t)c[keys[k].at].t)->nbytes > (int64_t)MSH_HASH_CHUNK) {
                memcpy(c + keys[k].at, big + w, keys[k].n * sizeof *big);
                w += keys[k].n;
            }
    }
    /* the groups to resolve: small (type, shape) groups whole, large ones by prefix digest */
    for (size_t k = 0; st == MSH_OK && k < nk; k++) {
        msh_dedup_cand *g = c + keys[k].at;
        size_t gn = keys[k].n;
        if (msh_table_at(tab, (size_t)g[0].t)->nbytes <= (int64_t)MSH_HASH_CHUNK) {
            st = add_span(&groups, &ng, &capg, keys[k].at, gn, e);
            continue;
        }
        qsort(g, gn, sizeof *g, cand_digest_cmp);
        for (size_t a = 0; a < gn && st == MSH_OK;) {
            size_t b = a + 1;
            while (b < gn && g[b].digest == g[a].digest)
                b++;
            if (b - a >= 2)
                st = add_span(&groups, &ng, &capg, keys[k].at + a, b - a, e);
            a = b;
        }
    }
    /* full digests of every member of every group, in one scan */
    size_t nall = 0;
    for (size_t k = 0; k < ng; k++)
        nall += groups[k].n;
    free(big);
    big = NULL;
    if (st == MSH_OK && nall) {
        big = malloc(nall * sizeof *big);
        if (!big)
            st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        size_t w = 0;
        for (size_t k = 0; st == MSH_OK && k < ng; k++) {
            memcpy(big + w, c + groups[k].at, groups[k].n * sizeof *big);
            w += groups[k].n;
        }
        if (st == MSH_OK)
            st = digests(&f, big, nall, -1);
        w = 0;
        for (size_t k = 0; st == MSH_OK && k < ng; k++) {
            memcpy(c + groups[k].at, big + w, groups[k].n * sizeof *big);
            w += groups[k].n;
        }
    }
    for (size_t k = 0; st == MSH_OK && k < ng; k++)
        st = resolve_group(&f, c + groups[k].at, groups[k].n);
    free(big);
    free(keys);
    free(groups);
    return st;
}

/* ---- ONNX ---- */

static int has_data(const msh_tensor *t) {
    const Onnx__TensorProto *tp = t->tp;
    if (t->payload >= 0 || t->d.numel == 0)
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
    plan->saved_bytes += (int64_t)nr * k->d.nbytes;
    return MSH_OK;
}

/* One class of identical tensors (cls[0] is the first met): pick the keeper and record it.
 * An interface tensor (graph output, allowed graph input) is never removed; the first one met
 * becomes the keeper and stays where it is; a second one stays on its own. */
typedef struct onnx_find {
    const msh_onnx_model *m;
    msh_dedup_plan *plan;
} onnx_find;

static msh_status emit_class(void *arg, const msh_dedup_cand *const *cls, size_t n, msh_error *e) {
    const msh_onnx_model *m = ((onnx_find *)arg)->m;
    msh_dedup_plan *plan = ((onnx_find *)arg)->plan;
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

msh_status msh_dedup_find(const msh_onnx_model *m, int allow_graph_inputs, msh_engine *engine,
                          msh_dedup_plan *plan, msh_error *e) {
    memset(plan, 0, sizeof *plan);
    msh_strmap decl, outputs, inputs;
    msh_strmap_init(&decl);
    msh_strmap_init(&outputs);
    msh_strmap_init(&inputs);
    msh_dedup_cand *c = NULL;
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
        if (t->loc != MSH_LOC_INITIALIZER || t->d.dropped || t->graph < 0 || t->d.nbytes < 0 ||
            t->tp->data_type == 8 || !t->tp->name || !*t->tp->name || !has_data(t))
            continue;
        int64_t *d = msh_strmap_get(&decl, t->tp->name);
        if (!d || *d != 1)
            continue; /* a graph input, or a name declared again somewhere */
        /* Graph outputs and (allowed) graph inputs keep their initializer: others may point at
         * them, they are never removed, so the interface and its defaults stay intact. */
        int removable =
            !msh_strmap_get(&outputs, t->tp->name) && !msh_strmap_get(&inputs, t->tp->name);
        c[nc++] = (msh_dedup_cand){(int64_t)i, removable, 0};
    }
    msh_table tab = msh_onnx_table(m);
    onnx_find of = {m, plan};
    st = msh_dedup_classes(&tab, c, nc, engine, emit_class, &of, e);
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
            t->d.dropped = 1;
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
