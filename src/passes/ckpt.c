#include "passes/ckpt.h"

#include <fnmatch.h>
#include <stdlib.h>

#include "common/msh_dtype.h"
#include "passes/dedup.h"

static int same_view(const msh_tentry *a, const msh_tentry *b) {
    /* storages are numbered per file: a table over several files (a sharded model) holds equal
     * numbers in different files */
    if (a->storage < 0 || a->storage != b->storage || a->dtype != b->dtype || a->ndim != b->ndim ||
        a->src.kind != b->src.kind || a->src.fd != b->src.fd || a->src.offset != b->src.offset)
        return 0;
    if (a->ndim && memcmp(a->shape, b->shape, a->ndim * sizeof *a->shape) != 0)
        return 0;
    if (a->src.kind == MSH_SRC_STRIDED &&
        (a->src.elem_offset != b->src.elem_offset ||
         memcmp(a->src.stride, b->src.stride, a->ndim * sizeof *a->src.stride) != 0))
        return 0;
    return 1;
}

typedef struct dup_ctx {
    const msh_table *tab;
    int64_t *keeper_of; /* per selected position: the position whose bytes it takes, or -1 */
    const size_t *pos_of_cand;
    msh_ckpt_plan *p;
} dup_ctx;

static msh_status on_class(void *arg, const msh_dedup_cand *const *cls, size_t n, msh_error *e) {
    (void)e;
    dup_ctx *c = arg;
    /* the first met is kept; the candidates are in table order within a class */
    const msh_dedup_cand *k = cls[0];
    for (size_t i = 1; i < n; i++)
        if (cls[i]->t < k->t)
            k = cls[i];
    for (size_t i = 0; i < n; i++) {
        if (cls[i] == k)
            continue;
        msh_tentry *t = msh_table_at(c->tab, (size_t)cls[i]->t);
        t->dup_of = k->t;
        c->p->dup_tensors++;
        c->p->dup_bytes += t->nbytes;
    }
    return MSH_OK;
}

enum { KEEP_USER = 1, KEEP_RANGE = 2 };

/* Why a FLOAT tensor stays FP32: KEEP_RANGE, KEEP_USER or 0. */
static int keep_reason(const msh_ckpt_opts *o, const msh_tentry *t) {
    if (o->keep && t->origin >= 0 && (size_t)t->origin < o->n_keep && o->keep[t->origin])
        return KEEP_RANGE;
    for (size_t i = 0; i < o->n_keep_globs; i++)
        if (t->name && fnmatch(o->keep_globs[i], t->name, 0) == 0)
            return KEEP_USER;
    return 0;
}

msh_status msh_ckpt_plan_make(const msh_table *tab, const msh_ckpt_opts *o, msh_engine *eng,
                              msh_ckpt_plan *p, msh_error *e) {
    memset(p, 0, sizeof *p);
    size_t n = tab->n;
    p->sel = malloc((n + 1) * sizeof *p->sel);
    p->storage_of = malloc((n + 1) * sizeof *p->storage_of);
    p->rep = malloc((n + 1) * sizeof *p->rep);
    p->tied_to = malloc((n + 1) * sizeof *p->tied_to);
    size_t *view = malloc((n + 1) * sizeof *view); /* per selected: the first selected same view */
    msh_dedup_cand *c = malloc((n + 1) * sizeof *c);
    if (!p->sel || !p->storage_of || !p->rep || !p->tied_to || !view || !c) {
        free(view);
        free(c);
        msh_ckpt_plan_free(p);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    /* strip: the state dict */
    for (size_t i = 0; i < n; i++) {
        msh_tentry *t = msh_table_at(tab, i);
        t->dup_of = -1;
        t->out_dtype = 0;
        t->dropped = !(t->role == MSH_ROLE_WEIGHT || t->role == MSH_ROLE_BUFFER);
        if (!t->dropped)
            p->sel[p->n++] = i;
    }
    /* views of one storage, then identical bytes among the distinct views */
    size_t nc = 0;
    int views = o->share || o->tie;
    for (size_t k = 0; k < p->n; k++) {
        const msh_tentry *t = msh_table_at(tab, p->sel[k]);
        view[k] = k;
        p->tied_to[k] = MSH_CKPT_UNTIED;
        for (size_t j = 0; views && j < k; j++)
            if (view[j] == j && same_view(msh_table_at(tab, p->sel[j]), t)) {
                view[k] = j;
                break;
            }
        if (!o->share && o->tie && view[k] != k) {
            p->tied_to[k] = view[k];
            p->tied++;
        }
        if (view[k] == k && t->nbytes > 0 && msh_dtype_size(t->dtype) > 0)
            c[nc++] = (msh_dedup_cand){(int64_t)p->sel[k], 1, 0};
    }
    msh_status st = MSH_OK;
    if (o->dedup && nc >= 2) {
        dup_ctx dc = {tab, NULL, NULL, p};
        st = msh_dedup_classes(tab, c, nc, eng, on_class, &dc, e);
    }
    /* output storages, in order of first use */
    for (size_t k = 0; st == MSH_OK && k < p->n; k++) {
        size_t src = p->sel[view[k]];
        const msh_tentry *v = msh_table_at(tab, src);
        if (o->share && v->dup_of >= 0)
            src = (size_t)v->dup_of;
        size_t s = 0;
        if (o->share)
            while (s < p->n_storage && p->rep[s] != src)
                s++;
        else if (p->tied_to[k] != MSH_CKPT_UNTIED)
            s = p->storage_of[p->tied_to[k]]; /* written once, with its earlier key */
        else
            s = p->n_storage;
        if (s == p->n_storage)
            p->rep[p->n_storage++] = src;
        p->storage_of[k] = s;
    }
    /* precision: per output storage, so that the tensors sharing one agree */
    uint8_t *kept_s = st == MSH_OK ? calloc(p->n_storage + 1, 1) : NULL;
    if (st == MSH_OK && !kept_s)
        st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t k = 0; st == MSH_OK && o->float_type && k < p->n; k++) {
        const msh_tentry *t = msh_table_at(tab, p->sel[k]);
        const msh_tentry *r = msh_table_at(tab, p->rep[p->storage_of[k]]);
        if (t->dtype != MSH_DT_FLOAT)
            continue;
        int why = keep_reason(o, t);
        if (!why)
            why = keep_reason(o, r);
        if (why > (int)kept_s[p->storage_of[k]])
            kept_s[p->storage_of[k]] = (uint8_t)why;
    }
    for (size_t k = 0; st == MSH_OK && o->float_type && k < p->n; k++) {
        msh_tentry *t = msh_table_at(tab, p->sel[k]);
        if (t->dtype != MSH_DT_FLOAT)
            continue;
        uint8_t why = kept_s[p->storage_of[k]];
        if (p->tied_to[k] != MSH_CKPT_UNTIED) {
            if (!why)
                t->out_dtype = o->float_type; /* as its earlier key; not written, not counted */
        } else if (why == KEEP_RANGE) {
            p->kept_range++;
        } else if (why == KEEP_USER) {
            p->kept_user++;
        } else {
            t->out_dtype = o->float_type;
            p->float_tensors++;
            p->float_saved += t->numel * 2;
        }
    }
    /* a storage's bytes are converted like the tensors that view it */
    for (size_t s = 0; st == MSH_OK && o->float_type && s < p->n_storage; s++) {
        msh_tentry *r = msh_table_at(tab, p->rep[s]);
        if (r->dtype == MSH_DT_FLOAT && !kept_s[s])
            r->out_dtype = o->float_type;
    }
    free(kept_s);
    free(view);
    free(c);
    if (st != MSH_OK)
        msh_ckpt_plan_free(p);
    return st;
}

void msh_ckpt_plan_free(msh_ckpt_plan *p) {
    free(p->sel);
    free(p->storage_of);
    free(p->rep);
    free(p->tied_to);
    memset(p, 0, sizeof *p);
}
