#include "passes/int4.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/msh_io.h"
#include "common/msh_strmap.h"
#include "formats/onnx_build.h"
#include "kernels/msh_cpu.h"
#include "passes/int8.h"
#include "passes/names.h"
#include "passes/op_schemas.h"

/* the weight's stored layout: blocks along axis 0 or along axis 1; GT: a Gather table [V, D] in
 * the matmulnbits form, blocks along axis 1 like NK but stored for GatherBlockQuantized (INT4 /
 * UINT4 of the table's shape), so a MatMulNBits use of the same weight keeps FLOAT */
enum { KN = 0, NK = 1, GT = 2 };

typedef struct quse {
    Onnx__NodeProto *node;
    size_t idx;
    int layout; /* KN, NK, or -1: not an eligible use */
} quse;

typedef struct qcand {
    int64_t t;
    quse *uses;
    size_t n, cap;
    int other;  /* a graph output */
    int layout; /* -1: not quantized */
    int64_t K, N, kb;
    msh_src stats_src; /* the weight seen as [N, K] */
    float *stats;      /* 2 per block, [N, kb] order */
} qcand;

/* The weight seen as [N, Kp] row-major: element (n, k) is W[k, n] (`trans`: W is [K, N]) or
 * W[n, k] (W is [N, K]) for k < K, and 0 for K <= k < Kp (MatMulNBits' padded last block).
 *
 * A transposed piece needs a few columns of every row of W. Read one row at a time, that is a
 * read of a few hundred bytes per row and piece; instead the view reads bands of columns (all K
 * rows, as many columns as fit in Q4_BAND_BYTES) that neighbouring pieces share: the producer
 * threads take pieces in order, so a few bands serve them all. The bands belong to the model
 * (one cache for all its views), so memory stays Q4_BANDS * Q4_BAND_BYTES whatever the size. */
#define Q4_BAND_BYTES ((size_t)8 << 20)
#define Q4_BANDS 3

typedef struct q4band {
    const void *view; /* NULL: empty */
    int64_t c0, w;    /* columns c0 .. c0 + w - 1 of every row, row-major [K, w] in buf */
    int users, ready;
    uint64_t used; /* the cache's clock when last taken: the oldest free band is refilled */
    float *buf;
} q4band;

typedef struct q4cache {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t clock;
    q4band b[Q4_BANDS];
} q4cache;

typedef struct q4view {
    msh_src src; /* the weight's own bytes (a copy: the table may move) */
    int64_t K, N, Kp;
    int trans;
    q4cache *cache; /* trans: the model's band cache */
} q4view;

/* The cache of model `m`, made on first use and owned by the model. */
static q4cache *q4cache_get(msh_onnx_model *m, q4cache **slot, msh_error *e) {
    if (*slot)
        return *slot;
    q4cache *c = calloc(1, sizeof *c);
    if (!c || msh_onnx_own(m, c) != MSH_OK) {
        free(c);
        msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    for (int i = 0; i < Q4_BANDS; i++) {
        c->b[i].buf = malloc(Q4_BAND_BYTES);
        if (!c->b[i].buf || msh_onnx_own(m, c->b[i].buf) != MSH_OK) {
            free(c->b[i].buf);
            c->b[i].buf = NULL;
            msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            return NULL;
        }
    }
    *slot = c;
    return c;
}

/* Band `bi` (width `wc`) of view `v`, read if no band holds it; NULL when every band is in use
 * (the caller reads directly). */
static q4band *band_take(const q4view *v, int64_t bi, int64_t wc, msh_status *st, msh_error *e) {
    q4cache *c = v->cache;
    int64_t c0 = bi * wc, w = v->N - c0 < wc ? v->N - c0 : wc;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        q4band *hit = NULL, *free_b = NULL;
        for (int i = 0; i < Q4_BANDS; i++) {
            q4band *b = &c->b[i];
            if (b->view == v && b->c0 == c0 && b->w == w)
                hit = b;
            else if (b->users == 0 && (!free_b || b->used < free_b->used))
                free_b = b;
        }
        if (hit && !hit->ready) { /* another thread is reading it */
            pthread_cond_wait(&c->cv, &c->mu);
            continue;
        }
        if (hit) {
            hit->users++;
            hit->used = ++c->clock;
            pthread_mutex_unlock(&c->mu);
            return hit;
        }
        if (!free_b) {
            pthread_mutex_unlock(&c->mu);
            return NULL;
        }
        free_b->view = v;
        free_b->c0 = c0;
        free_b->w = w;
        free_b->ready = 0;
        free_b->users = 1;
        free_b->used = ++c->clock;
        pthread_mutex_unlock(&c->mu);
        for (int64_t k = 0; k < v->K && *st == MSH_OK; k++)
            *st = msh_src_read(&v->src, (k * v->N + c0) * 4, free_b->buf + k * w, (size_t)w * 4, e);
        pthread_mutex_lock(&c->mu);
        if (*st != MSH_OK) {
            free_b->view = NULL;
            free_b->users = 0;
        } else {
            free_b->ready = 1;
        }
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        return *st == MSH_OK ? free_b : NULL;
    }
}

static void band_give(const q4view *v, q4band *b) {
    pthread_mutex_lock(&v->cache->mu);
    b->users--;
    pthread_cond_broadcast(&v->cache->cv);
    pthread_mutex_unlock(&v->cache->mu);
}

/* out[i] for the elements i of [e0, e0 + cnt) whose view row (a column of W) lies in
 * [c0, c0 + w), from `buf` holding columns c0 .. c0 + w - 1 of every row of W as [K, w]. */
static void band_copy(const q4view *v, const float *buf, int64_t c0, int64_t w, int64_t e0,
                      int64_t cnt, float *out) {
    int64_t ra = e0 / v->Kp, rb = (e0 + cnt - 1) / v->Kp;
    if (ra < c0)
        ra = c0;
    if (rb > c0 + w - 1)
        rb = c0 + w - 1;
    int64_t r = ra;
    while (r <= rb) {
        int64_t k0 = r * v->Kp < e0 ? e0 - r * v->Kp : 0;
        int64_t k1 = (r + 1) * v->Kp > e0 + cnt ? e0 + cnt - r * v->Kp : v->Kp;
        int64_t kr = k1 < v->K ? k1 : v->K;
        if (k0 == 0 && k1 == v->Kp && r + 16 <= rb + 1 && (r + 16) * v->Kp <= e0 + cnt) {
            /* 16 whole rows: down the columns of buf a cache line at a time (a row of buf
             * is often a multiple of 4 KiB apart, so walking one column alone thrashes) */
            float *d = out + (r * v->Kp - e0);
            const float *s = buf + (r - c0);
            float tile[16][16];
            int64_t k = 0;
            for (; k + 16 <= v->K; k += 16) { /* through a 16 x 16 tile: lines in, lines out */
                for (int a = 0; a < 16; a++)
                    for (int t = 0; t < 16; t++)
                        tile[t][a] = s[(k + a) * w + t];
                for (int t = 0; t < 16; t++)
                    memcpy(d + t * v->Kp + k, tile[t], sizeof tile[t]);
            }
            for (; k < v->K; k++)
                for (int t = 0; t < 16; t++)
                    d[t * v->Kp + k] = s[k * w + t];
            for (int t = 0; t < 16; t++)
                for (int64_t kp = v->K; kp < v->Kp; kp++)
                    d[t * v->Kp + kp] = 0.0f;
            r += 16;
            continue;
        }
        float *d = out + (r * v->Kp - e0);
        const float *s = buf + (r - c0);
        for (int64_t k = k0; k < kr; k++)
            d[k] = s[k * w];
        for (int64_t k = kr > k0 ? kr : k0; k < k1; k++)
            d[k] = 0.0f;
        r++;
    }
}

static msh_status view_read(const void *ctx, int64_t off, void *dst, size_t n, msh_error *e) {
    const q4view *v = ctx;
    float *out = dst;
    int64_t e0 = off / 4, cnt = (int64_t)n / 4;
    if (off % 4 || n % 4)
        return msh_fail(e, MSH_ERR_FORMAT, "internal error: unaligned read of an INT4 view");
    if (cnt == 0)
        return MSH_OK;
    int64_t na = e0 / v->Kp, nb = (e0 + cnt - 1) / v->Kp;
    if (!v->trans) {
        for (int64_t r = na; r <= nb; r++) {
            int64_t k0 = r == na ? e0 - r * v->Kp : 0;
            int64_t k1 = r == nb ? e0 + cnt - r * v->Kp : v->Kp;
            float *d = out + (r * v->Kp + k0 - e0);
            int64_t kr = k1 < v->K ? k1 : v->K;
            if (kr > k0)
                MSH_FORWARD(
                    msh_src_read(&v->src, (r * v->K + k0) * 4, d, (size_t)(kr - k0) * 4, e));
            for (int64_t k = kr > k0 ? kr : k0; k < k1; k++)
                d[k - k0] = 0.0f;
        }
        return MSH_OK;
    }
    /* columns na..nb of every row k of W [K, N]: from the bands that hold them */
    int64_t wc = (int64_t)(Q4_BAND_BYTES / 4) / v->K;
    msh_status st = MSH_OK;
    for (int64_t bi = wc > 0 ? na / wc : 0; wc > 0 && bi <= nb / wc && st == MSH_OK; bi++) {
        q4band *b = band_take(v, bi, wc, &st, e);
        if (!b)
            break;
        band_copy(v, b->buf, b->c0, b->w, e0, cnt, out);
        band_give(v, b);
        na = b->c0 + b->w; /* done up to here */
    }
    if (st != MSH_OK || na > nb)
        return st;
    /* the rest (no band free, or rows too long for one): one read of its columns per row */
    int64_t w = nb - na + 1;
    float *buf = malloc((size_t)(w * v->K) * sizeof *buf + 1);
    if (!buf)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (int64_t k = 0; k < v->K && st == MSH_OK; k++)
        st = msh_src_read(&v->src, (k * v->N + na) * 4, buf + k * w, (size_t)w * 4, e);
    if (st == MSH_OK)
        band_copy(v, buf, na, w, e0, cnt, out);
    free(buf);
    return st;
}

static int is_dflt(const char *d) {
    return !d || !*d || strcmp(d, "ai.onnx") == 0;
}

static const Onnx__AttributeProto *attr(const Onnx__NodeProto *n, const char *name) {
    for (size_t i = 0; i < n->n_attribute; i++)
        if (n->attribute[i]->name && strcmp(n->attribute[i]->name, name) == 0)
            return n->attribute[i];
    return NULL;
}

static int attr_i(const Onnx__NodeProto *n, const char *name, int64_t dflt) {
    const Onnx__AttributeProto *a = attr(n, name);
    return a && a->has_i ? (int)a->i : (int)dflt;
}

static float attr_f(const Onnx__NodeProto *n, const char *name, float dflt) {
    const Onnx__AttributeProto *a = attr(n, name);
    return a && a->has_f ? a->f : dflt;
}

/* The layout of input `idx` of `n` when it is a weight INT4 stores, else -1. `cdims`: dims of
 * Gemm's C when it is an initializer (NULL otherwise), for MatMulNBits' bias. */
static int eligible_layout(const Onnx__NodeProto *n, size_t idx, const Onnx__TensorProto *w,
                           const msh_int4_opts *o, const Onnx__TensorProto *c) {
    if (!is_dflt(n->domain) || !n->op_type || w->n_dims != 2)
        return -1;
    const char *op = n->op_type;
    if (strcmp(op, "MatMul") == 0 && idx == 1)
        return KN;
    if (strcmp(op, "Gemm") == 0 && idx == 1) {
        int lay = attr_i(n, "transB", 0) ? NK : KN;
        if (o->format == MSH_INT4_MATMULNBITS) {
            int64_t N = lay == NK ? w->dims[0] : w->dims[1];
            if (attr_i(n, "transA", 0) || attr_f(n, "alpha", 1.0f) != 1.0f)
                return -1;
            if (n->n_input > 2 && n->input[2][0] &&
                (attr_f(n, "beta", 1.0f) != 1.0f || !c || c->n_dims != 1 || c->dims[0] != N ||
                 c->data_type != 1))
                return -1;
        }
        return lay;
    }
    if (o->gather && strcmp(op, "Gather") == 0 && idx == 0 && n->n_input == 2 &&
        attr_i(n, "axis", 0) == 0)
        return o->format == MSH_INT4_QDQ ? NK : GT; /* rows looked up, blocks along each row */
    return -1;
}

int msh_int4_reads_weight(const Onnx__NodeProto *n, size_t idx, size_t rank, int gather) {
    if (!is_dflt(n->domain) || !n->op_type)
        return 0;
    if (strcmp(n->op_type, "Gemm") == 0 && idx == 2 && rank == 1)
        return 2; /* C, MatMulNBits' bias: it must be an initializer */
    if (rank != 2)
        return 0;
    if ((strcmp(n->op_type, "MatMul") == 0 || strcmp(n->op_type, "Gemm") == 0) && idx == 1)
        return 1;
    return gather && strcmp(n->op_type, "Gather") == 0 && idx == 0 && attr_i(n, "axis", 0) == 0;
}

/* Op versions between opset 13 and 21 after which a node valid before may mean something else
 * or be invalid (attributes that became inputs, changed defaults or value names). Every other
 * version in that range only widened the types or added attributes whose defaults keep the old
 * meaning. */
static const struct {
    const char *op;
    int since;
    const char *what;
} breaking[] = {
    {"ReduceMean", 18, "its axes became an input"},
    {"ReduceMax", 18, "its axes became an input"},
    {"ReduceMin", 18, "its axes became an input"},
    {"ReduceProd", 18, "its axes became an input"},
    {"ReduceL1", 18, "its axes became an input"},
    {"ReduceL2", 18, "its axes became an input"},
    {"ReduceLogSum", 18, "its axes became an input"},
    {"ReduceLogSumExp", 18, "its axes became an input"},
    {"ReduceSumSquare", 18, "its axes became an input"},
    {"Split", 18, "it needs the split input or num_outputs"},
    {"RoiAlign", 16, "its coordinate_transformation_mode default changed"},
    {"GridSample", 20, "its mode values were renamed"},
    {"DFT", 20, "its dft_length and axis became inputs"},
    {"GroupNormalization", 21, "its scale and bias became per channel"},
};

int msh_int4_opset_blocker(const msh_onnx_model *m, int64_t opset, char *why, size_t cap) {
    if (opset >= 21)
        return 0;
    if (opset < 13) {
        snprintf(why, cap,
                 "INT4 DequantizeLinear needs opset 21 and the model has opset %lld (raised only "
                 "from 13)",
                 (long long)opset);
        return 1;
    }
    if (m->mp->n_functions) {
        snprintf(why, cap,
                 "INT4 DequantizeLinear needs opset 21; the model has opset %lld and local "
                 "functions, so it is not raised",
                 (long long)opset);
        return 1;
    }
    for (size_t gi = 0; gi < m->n_graphs; gi++) {
        const Onnx__GraphProto *g = m->graphs[gi].g;
        for (size_t i = 0; i < g->n_node; i++) {
            const Onnx__NodeProto *n = g->node[i];
            if (!is_dflt(n->domain) || !n->op_type)
                continue;
            const msh_op_schema *a = msh_op_schema_find("", n->op_type, opset);
            const msh_op_schema *b = msh_op_schema_find("", n->op_type, 21);
            if (!a || !b) {
                snprintf(why, cap,
                         "INT4 DequantizeLinear needs opset 21 and op %s has no schema at opset "
                         "%s; the model keeps opset %lld",
                         n->op_type, a ? "21" : "of the model", (long long)opset);
                return 1;
            }
            for (size_t k = 0; k < sizeof breaking / sizeof breaking[0]; k++)
                if (strcmp(n->op_type, breaking[k].op) == 0 && breaking[k].since > opset &&
                    breaking[k].since <= 21) {
                    snprintf(why, cap,
                             "INT4 DequantizeLinear needs opset 21 and the model has opset %lld: "
                             "%s changes at opset %d (%s)",
                             (long long)opset, n->op_type, breaking[k].since, breaking[k].what);
                    return 1;
                }
        }
    }
    return 0;
}

static msh_status set_opset(msh_onnx_model *m, const char *domain, int64_t version, msh_error *e) {
    for (size_t i = 0; i < m->mp->n_opset_import; i++) {
        Onnx__OperatorSetIdProto *op = m->mp->opset_import[i];
        if ((is_dflt(domain) && is_dflt(op->domain)) ||
            (!is_dflt(domain) && op->domain && strcmp(op->domain, domain) == 0)) {
            if (op->version < version) {
                op->version = version;
                op->has_version = 1;
            }
            return MSH_OK;
        }
    }
    Onnx__OperatorSetIdProto **arr =
        realloc(m->mp->opset_import, (m->mp->n_opset_import + 1) * sizeof *arr);
    Onnx__OperatorSetIdProto *op = malloc(sizeof *op);
    if (arr)
        m->mp->opset_import = arr;
    if (!arr || !op) {
        free(op);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    onnx__operator_set_id_proto__init(op);
    op->domain = msh_strdup(domain);
    op->has_version = 1;
    op->version = version;
    arr[m->mp->n_opset_import++] = op;
    return op->domain ? MSH_OK : msh_fail(e, MSH_ERR_NOMEM, "out of memory");
}

/* Block scales (and zero points) of an [N, kb] grid of blocks from their statistics (2 floats
 * each): `stats_kbn` / `out_kbn`: the statistics / the scales are laid out [kb, N] (the QDQ
 * form's [K, N] weight, and the order in which rows of [K, N] give them), else [N, kb]. */
static void make_scales(const float *stats, int64_t N, int64_t kb, int stats_kbn, int out_kbn,
                        int asym, int scale_round, float *scales, uint8_t *zps) {
    const int64_t outer = stats_kbn ? kb : N, inner = stats_kbn ? N : kb;
    for (int64_t a = 0, b = 0; a < outer; a++)
        for (int64_t i = 0; i < inner; i++, b++) {
            float lo = stats[2 * b], hi = stats[2 * b + 1];
            float d = asym ? msh_int4_asym_scale_ref(lo, hi) : msh_int4_sym_scale_ref(lo, hi);
            if (scale_round == 10 || scale_round == 16) {
                /* the float pass stores the scale in that type: quantize with the stored value */
                uint32_t bits;
                int clamped;
                memcpy(&bits, &d, 4);
                if (scale_round == 10)
                    bits = msh_f16_to_f32_ref(msh_f32_to_f16_ref(bits, MSH_F16_MIN_SUBNORMAL_BITS,
                                                                 MSH_F16_MAX_BITS, &clamped));
                else
                    bits = (uint32_t)msh_f32_to_bf16_ref(bits) << 16;
                memcpy(&d, &bits, 4);
            }
            int64_t at = stats_kbn == out_kbn ? b : i * outer + a;
            scales[at] = d;
            if (zps)
                zps[at] = msh_int4_zero_point_ref(lo, d);
        }
}

/* RTN scales made when the writer first needs them and freed once their tensors are written,
 * so only the weights being written hold scales (not every weight from planning to the write).
 * A weight's statistics are found from its own bytes, read in rows of W, then turned into
 * scales in the writer's layout. Bytes counted by the releases: once every dependent tensor's
 * input bytes (the 4-bit tensor, the scales, the zero points) are taken and nobody holds them,
 * they are freed; a later use makes them again (the same values: minima and maxima; searched
 * scales, made at planning, are read back from the model's scratch file). Besides,
 * at most Q4_LIVE weights keep theirs while unused (another reader, such as the FP16 range
 * test of the scales, does not keep them all). */
#define Q4_LIVE 4
#define Q4_LAZY_CHUNK ((size_t)4 << 20)

typedef struct q4lazy q4lazy;
typedef struct q4lazyset {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t clock;
    int live;
    q4lazy *head;
    int spill_fd; /* the searched scales' scratch file (-1: none yet) */
    int64_t spill_end;
} q4lazyset;

struct q4lazy {
    msh_int4_lazy api;
    q4lazyset *set;
    q4lazy *next;
    msh_src src; /* W's bytes: [K, N] (trans) or [N, K] */
    int64_t K, N, kb, block;
    int trans; /* W is [K, N] */
    int xpose; /* scales stored [kb, N] */
    int asym, scale_round;
    float *sc; /* state 2: the scales (and zero points) in the writer's layout */
    uint8_t *zp;
    int state; /* 0: not made, 1: being made, 2: made */
    int users;
    int64_t left, total;
    uint64_t used;
    int spilled;       /* searched: the scales (then zero points) are in the set's scratch file */
    int64_t spill_off; /* ... at this offset */
};

static void lazy_drop(q4lazy *z) {
    free(z->sc);
    free(z->zp);
    z->sc = NULL;
    z->zp = NULL;
    z->state = 0;
    z->set->live--;
}

static void lazyset_free(void *ctx) {
    q4lazyset *S = ctx;
    for (q4lazy *z = S->head; z; z = z->next) {
        free(z->sc);
        free(z->zp);
        z->sc = NULL;
        z->zp = NULL;
    }
    if (S->spill_fd >= 0)
        close(S->spill_fd);
    pthread_mutex_destroy(&S->mu);
    pthread_cond_destroy(&S->cv);
}

/* The statistics of W's blocks, then its scales: outside the set's lock. Rows of [N, K] give
 * their blocks in [N, kb] order; rows of [K, N] give block row k / B of every column, so their
 * statistics are kept [kb, N] and found a block row at a time, column-wise. */
static msh_status lazy_make(const q4lazy *z, float **psc, uint8_t **pzp, msh_error *e) {
    const int64_t nb = z->N * z->kb, R = z->trans ? z->K : z->N, C = z->trans ? z->N : z->K;
    if (z->spilled) { /* searched: read back as they were made */
        float *sc = malloc((size_t)nb * sizeof *sc + 1);
        uint8_t *zp = z->asym ? malloc((size_t)nb + 1) : NULL;
        msh_status st =
            sc && (!z->asym || zp) ? MSH_OK : msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        if (st == MSH_OK)
            st = msh_pread_full(z->set->spill_fd, sc, (size_t)nb * 4, z->spill_off, e);
        if (st == MSH_OK && zp)
            st = msh_pread_full(z->set->spill_fd, zp, (size_t)nb, z->spill_off + nb * 4, e);
        if (st != MSH_OK) {
            free(sc);
            free(zp);
            return st;
        }
        *psc = sc;
        *pzp = zp;
        return MSH_OK;
    }
    int64_t rp = (int64_t)(Q4_LAZY_CHUNK / 4) / C;
    if (rp < 1)
        rp = 1;
    float *stats = calloc((size_t)(2 * nb) + 1, sizeof *stats);
    float *buf = malloc((size_t)(rp * C) * sizeof *buf + 1);
    float *lh = z->trans ? calloc((size_t)(2 * C) + 1, sizeof *lh) : NULL;
    float *sc = malloc((size_t)nb * sizeof *sc + 1);
    uint8_t *zp = z->asym ? malloc((size_t)nb + 1) : NULL;
    msh_status st = stats && buf && sc && (!z->trans || lh) && (!z->asym || zp)
                        ? MSH_OK
                        : msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (int64_t r0 = 0; st == MSH_OK && r0 < R; r0 += rp) {
        int64_t n = R - r0 < rp ? R - r0 : rp;
        st = msh_src_read(&z->src, r0 * C * 4, buf, (size_t)(n * C) * 4, e);
        if (st != MSH_OK)
            break;
        if (!z->trans) { /* whole rows [N, K]: their blocks, in order */
            msh_int4_stats((const uint8_t *)buf, (size_t)(n * C), r0 * C, C, z->block,
                           stats + 2 * r0 * z->kb);
            continue;
        }
        for (int64_t r = 0; r < n;) { /* rows of one block row at a time */
            int64_t k = r0 + r, end = (k / z->block + 1) * z->block;
            int64_t m = (end < r0 + n ? end : r0 + n) - k;
            msh_int4_colstats(buf + r * C, m, C, lh, lh + C);
            r += m;
            if (k + m == end || k + m == z->K) { /* the block row is complete */
                float *s = stats + 2 * (k / z->block) * C;
                for (int64_t c = 0; c < C; c++) {
                    s[2 * c] = lh[c];
                    s[2 * c + 1] = lh[C + c];
                }
                memset(lh, 0, (size_t)(2 * C) * sizeof *lh);
            }
        }
    }
    if (st == MSH_OK)
        make_scales(stats, z->N, z->kb, z->trans, z->xpose, z->asym, z->scale_round, sc, zp);
    free(stats);
    free(buf);
    free(lh);
    if (st != MSH_OK) {
        free(sc);
        free(zp);
        return st;
    }
    *psc = sc;
    *pzp = zp;
    return MSH_OK;
}

static msh_status lazy_acquire(void *ctx, const float **scales, const uint8_t **zps, msh_error *e) {
    q4lazy *z = ctx;
    q4lazyset *S = z->set;
    pthread_mutex_lock(&S->mu);
    for (;;) {
        if (z->state == 2) {
            z->users++;
            z->used = ++S->clock;
            *scales = z->sc;
            *zps = z->zp;
            pthread_mutex_unlock(&S->mu);
            return MSH_OK;
        }
        if (z->state == 0)
            break;
        pthread_cond_wait(&S->cv, &S->mu); /* another thread is making them */
    }
    z->state = 1;
    while (S->live >= Q4_LIVE) { /* the least recently used idle ones go */
        q4lazy *old = NULL;
        for (q4lazy *y = S->head; y; y = y->next)
            if (y->state == 2 && y->users == 0 && (!old || y->used < old->used))
                old = y;
        if (!old)
            break;
        lazy_drop(old);
    }
    pthread_mutex_unlock(&S->mu);
    float *sc = NULL;
    uint8_t *zp = NULL;
    msh_status st = lazy_make(z, &sc, &zp, e);
    pthread_mutex_lock(&S->mu);
    if (st == MSH_OK) {
        z->sc = sc;
        z->zp = zp;
        z->state = 2;
        z->left = z->total;
        z->users = 1;
        z->used = ++S->clock;
        S->live++;
        *scales = sc;
        *zps = zp;
    } else {
        z->state = 0;
    }
    pthread_cond_broadcast(&S->cv);
    pthread_mutex_unlock(&S->mu);
    return st;
}

static void lazy_release(void *ctx, int64_t bytes) {
    q4lazy *z = ctx;
    pthread_mutex_lock(&z->set->mu);
    z->users--;
    z->left -= bytes;
    if (z->left <= 0 && z->users == 0 && z->state == 2)
        lazy_drop(z);
    pthread_mutex_unlock(&z->set->mu);
}

/* The scale tensor's bytes, from the lazily made scales. */
static msh_status lazy_scale_read(const void *ctx, int64_t off, void *dst, size_t n, msh_error *e) {
    q4lazy *z = (q4lazy *)(uintptr_t)ctx;
    const float *sc;
    const uint8_t *zp;
    MSH_FORWARD(lazy_acquire(z, &sc, &zp, e));
    memcpy(dst, (const uint8_t *)sc + off, n);
    lazy_release(z, (int64_t)n);
    return MSH_OK;
}

/* The model's set, made on first use. */
static q4lazyset *lazyset_get(msh_onnx_model *m, q4lazyset **slot, msh_error *e) {
    if (*slot)
        return *slot;
    q4lazyset *S = calloc(1, sizeof *S);
    if (!S || msh_onnx_own(m, S) != MSH_OK) {
        msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&S->mu, NULL);
    pthread_cond_init(&S->cv, NULL);
    S->spill_fd = -1;
    if (msh_onnx_on_free(m, lazyset_free, S) != MSH_OK) {
        pthread_mutex_destroy(&S->mu);
        pthread_cond_destroy(&S->cv);
        msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        return NULL;
    }
    *slot = S;
    return S;
}

/* `*out`: the weight at `src` ([N, K], or [K, N] when `trans`) read as [N, Kp], rows padded with
 * zeros to Kp; the view is owned by the model. */
static msh_status view_src(msh_onnx_model *m, const msh_src *src, int64_t K, int64_t N, int64_t Kp,
                           int trans, q4cache **cache, msh_src *out, msh_error *e) {
    q4view *v = malloc(sizeof *v);
    if (!v || msh_onnx_own(m, v) != MSH_OK) {
        free(v);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    *v = (q4view){*src, K, N, Kp, trans, NULL};
    if (v->trans && !(v->cache = q4cache_get(m, cache, e)))
        return MSH_ERR_NOMEM;
    memset(out, 0, sizeof *out);
    out->kind = MSH_SRC_CALLBACK;
    out->read = view_read;
    out->ctx = v;
    out->length = N * Kp * 4;
    return MSH_OK;
}

/* A TensorProto named `name` of `type` and shape `dims`, without data; NULL when out of memory. */
static Onnx__TensorProto *new_tensor_proto(const char *name, int32_t type, const int64_t *dims,
                                           size_t n_dims) {
    Onnx__TensorProto *tp = malloc(sizeof *tp);
    if (!tp)
        return NULL;
    onnx__tensor_proto__init(tp);
    tp->name = msh_strdup(name);
    tp->dims = malloc((n_dims + 1) * sizeof *tp->dims);
    tp->has_data_type = 1;
    tp->data_type = type;
    if (!tp->name || !tp->dims) {
        protobuf_c_message_free_unpacked(&tp->base, NULL);
        return NULL;
    }
    memcpy(tp->dims, dims, n_dims * sizeof *dims);
    tp->n_dims = n_dims;
    return tp;
}

/* A new 4-bit tensor entry for `w` whose bytes the engine makes from `src`. */
static msh_status add_q4_tensor(msh_onnx_model *m, qcand *q, const char *name, int32_t type,
                                const int64_t *dims, size_t n_dims, const msh_src *src,
                                int64_t numel, const msh_int4_layout *l, Onnx__TensorProto **out,
                                msh_error *e) {
    Onnx__TensorProto *qtp = new_tensor_proto(name, type, dims, n_dims);
    if (!qtp)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    msh_tensor qt = m->tensors[q->t];
    qt.tp = qtp;
    qt.payload = -1;
    qt.external_in = 0;
    qt.d.dropped = 0;
    qt.d.out_dtype = type;
    qt.d.q4 = 1;
    qt.d.q4l = *l;
    qt.d.src = *src;
    qt.d.numel = numel;
    qt.d.nbytes = numel * 4;
    qt.d.dtype = 1;
    if (msh_onnx_add_tensor_entry(m, &qt) < 0) {
        protobuf_c_message_free_unpacked(&qtp->base, NULL);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    *out = qtp;
    return MSH_OK;
}

/* A new tensor of `type` whose `nbytes` bytes the engine copies from `src` when the writer
 * asks for them: no raw_data of its own, so a scale or zero-point tensor is held once (the
 * engine's copy, which the 4-bit tensor's layout points to) and goes to external data like any
 * streamed tensor of its size. */
static msh_status add_stream_tensor(msh_onnx_model *m, const char *name, int32_t type,
                                    const int64_t *dims, size_t n_dims, const msh_src *src,
                                    int64_t numel, int64_t nbytes, int graph,
                                    Onnx__TensorProto **out, msh_error *e) {
    Onnx__TensorProto *tp = new_tensor_proto(name, type, dims, n_dims);
    if (!tp)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    msh_tensor t;
    memset(&t, 0, sizeof t);
    msh_tentry_init(&t.d);
    t.tp = tp;
    t.graph = graph;
    t.loc = MSH_LOC_INITIALIZER;
    t.payload = -1;
    t.d.dtype = type;
    t.d.out_dtype = type; /* streamed: copied (or converted by the float pass) by the engine */
    t.d.numel = numel;
    t.d.nbytes = nbytes;
    t.d.src = *src;
    if (msh_onnx_add_tensor_entry(m, &t) < 0) {
        protobuf_c_message_free_unpacked(&tp->base, NULL);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    *out = tp;
    return MSH_OK;
}

/* Packed zero points, made from the engine's one-per-block copy as they are read: rows of
 * `cols` values; MatMulNBits packs each row into `per` bytes, the QDQ form packs the flattened
 * tensor. */
typedef struct zpview {
    q4lazy *lz; /* the zero points, [rows, cols], 0..15 */
    int64_t rows, cols, per;
    int nbits;
} zpview;

static msh_status zp_read(const void *ctx, int64_t off, void *dst, size_t n, msh_error *e) {
    const zpview *v = ctx;
    uint8_t *d = dst;
    const uint8_t *zs;
    const float *unused;
    MSH_FORWARD(lazy_acquire(v->lz, &unused, &zs, e));
    for (size_t k = 0; k < n; k++) {
        int64_t b = off + (int64_t)k;
        uint8_t byte = 0;
        for (int h = 0; h < 2; h++) {
            int64_t r, c;
            if (v->nbits) {
                r = b / v->per;
                c = (b % v->per) * 2 + h;
            } else {
                r = (2 * b + h) / v->cols;
                c = (2 * b + h) % v->cols;
            }
            if (r < v->rows && c < v->cols)
                byte = (uint8_t)(byte | (zs[r * v->cols + c] << (4 * h)));
        }
        d[k] = byte;
    }
    lazy_release(v->lz, (int64_t)n);
    return MSH_OK;
}

static msh_status quantize_one(msh_onnx_model *m, const msh_int4_opts *o, msh_int4_result *st,
                               msh_names *nm, qcand *q, int *ms_used, q4cache **cache,
                               q4lazyset **lset, msh_error *e) {
    msh_tensor *w = &m->tensors[q->t];
    Onnx__TensorProto *tp = w->tp;
    const int64_t K = q->K, N = q->N, kb = q->kb, B = o->block, nb = N * kb;
    int graph = w->graph;
    Onnx__GraphProto *g = m->graphs[graph].g;
    /* the engine reads the scales (and zero points) in the writer's layout: [kb, N] for the QDQ
     * form's [K, N] weight, else [N, kb]. They are made when written (q4lazy): RTN's from the
     * weight's statistics then; the clipping search's now, from its scan, and kept in a scratch
     * file until then, so that no weight holds its scales from planning to the write */
    int xpose = o->format == MSH_INT4_QDQ && q->layout == KN;
    int64_t sdims[2] = {xpose ? kb : N, xpose ? N : kb};
    q4lazyset *S = lazyset_get(m, lset, e);
    if (!S)
        return MSH_ERR_NOMEM;
    int64_t spill_off = -1;
    if (q->stats) { /* searched: the scales wait for the write in the scratch file */
        msh_status rc = S->spill_fd >= 0  ? MSH_OK
                        : o->scratch_near ? msh_scratch_open(o->scratch_near, &S->spill_fd, e)
                                          : msh_fail(e, MSH_ERR_USAGE,
                                                     "internal error: no scratch "
                                                     "place for INT4 scales");
        float *sc = rc == MSH_OK ? malloc((size_t)nb * sizeof *sc + 1) : NULL;
        uint8_t *zp = rc == MSH_OK && o->asym ? malloc((size_t)nb + 1) : NULL;
        if (rc == MSH_OK && (!sc || (o->asym && !zp)))
            rc = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        if (rc == MSH_OK) {
            make_scales(q->stats, N, kb, 0, xpose, o->asym, o->scale_round, sc, zp);
            spill_off = S->spill_end;
            rc = msh_pwrite_full(S->spill_fd, sc, (size_t)nb * 4, spill_off, e);
        }
        if (rc == MSH_OK && zp)
            rc = msh_pwrite_full(S->spill_fd, zp, (size_t)nb, spill_off + nb * 4, e);
        free(sc);
        free(zp);
        if (rc != MSH_OK)
            return rc;
        S->spill_end = spill_off + nb * 4 + (o->asym ? nb : 0);
    }
    q4lazy *lz = calloc(1, sizeof *lz);
    if (!lz || msh_onnx_own(m, lz) != MSH_OK)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    lz->api = (msh_int4_lazy){lz, lazy_acquire, lazy_release};
    lz->set = S;
    lz->src = w->d.src;
    lz->K = K;
    lz->N = N;
    lz->kb = kb;
    lz->block = B;
    lz->trans = q->layout == KN;
    lz->xpose = xpose;
    lz->asym = o->asym;
    lz->scale_round = o->scale_round;
    lz->spilled = spill_off >= 0;
    lz->spill_off = spill_off;
    pthread_mutex_lock(&S->mu);
    lz->next = S->head;
    S->head = lz;
    pthread_mutex_unlock(&S->mu);
    /* ms: the matmulnbits form's names; nbits: MatMulNBits' packing (a Gather table, GT, is
     * packed as the QDQ form packs it: GatherBlockQuantized reads INT4 / UINT4 of its shape) */
    int ms = o->format == MSH_INT4_MATMULNBITS;
    int nbits = ms && q->layout != GT;
    const char *qn = msh_names_fresh(nm, tp->name, ms ? "_q4" : "_quantized");
    const char *sn = msh_names_fresh(nm, tp->name, ms ? "_scales" : "_scale");
    const char *zn =
        o->asym ? msh_names_fresh(nm, tp->name, ms ? "_zero_points" : "_zero_point") : "";
    if (!qn || !sn || !zn)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    /* scales */
    Onnx__TensorProto *stp = NULL, *ztp = NULL, *qtp = NULL;
    size_t sbytes = (size_t)nb * 4;
    msh_src ssrc;
    memset(&ssrc, 0, sizeof ssrc);
    ssrc.kind = MSH_SRC_CALLBACK;
    ssrc.read = lazy_scale_read;
    ssrc.ctx = lz;
    ssrc.length = (int64_t)sbytes;
    MSH_FORWARD(add_stream_tensor(m, sn, 1, sdims, 2, &ssrc, nb, (int64_t)sbytes, graph, &stp, e));
    MSH_FORWARD(msh_quant_add_weight(m, g, stp, e));
    size_t zbytes = 0;
    if (o->asym) { /* packed two per byte: along the rows of the scale's shape */
        zpview *zv = malloc(sizeof *zv);
        if (!zv || msh_onnx_own(m, zv) != MSH_OK) {
            free(zv);
            return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        }
        *zv = (zpview){lz, sdims[0], sdims[1], nbits ? (sdims[1] + 1) / 2 : 0, nbits};
        zbytes = nbits ? (size_t)(zv->rows * zv->per) : (size_t)((nb + 1) / 2);
        int64_t zd = (int64_t)zbytes;
        msh_src zsrc;
        memset(&zsrc, 0, sizeof zsrc);
        zsrc.kind = MSH_SRC_CALLBACK;
        zsrc.read = zp_read;
        zsrc.ctx = zv;
        zsrc.length = zd;
        MSH_FORWARD(add_stream_tensor(m, zn, nbits ? 2 : 21, nbits ? &zd : sdims, nbits ? 1 : 2,
                                      &zsrc, nbits ? zd : nb, zd, graph, &ztp, e));
        MSH_FORWARD(msh_quant_add_weight(m, g, ztp, e));
    }
    /* the 4-bit weight, made by the engine when written */
    msh_int4_layout l;
    memset(&l, 0, sizeof l);
    l.block = B;
    l.asym = o->asym;
    l.scales = NULL;
    l.zps = NULL;
    l.lazy = lz ? &lz->api : NULL;
    int64_t qbytes, qin; /* the 4-bit tensor's bytes, and the FP32 bytes the engine reads */
    w = &m->tensors[q->t];
    if (nbits) {
        int64_t Kp = kb * B;
        msh_src vs;
        MSH_FORWARD(view_src(m, &w->d.src, K, N, Kp, q->layout == KN, cache, &vs, e));
        l.cols = Kp;
        l.axis = 1;
        l.offset = 8;
        int64_t dims[3] = {N, kb, B / 2};
        MSH_FORWARD(add_q4_tensor(m, q, qn, 2, dims, 3, &vs, N * Kp, &l, &qtp, e));
        qbytes = N * Kp / 2;
        qin = N * Kp * 4;
    } else {
        l.cols = tp->dims[1];
        l.axis = q->layout == KN ? 0 : 1;
        /* copies: adding a tensor may move the table that `w` points into */
        msh_src wsrc = w->d.src;
        int64_t numel = w->d.numel;
        MSH_FORWARD(
            add_q4_tensor(m, q, qn, o->asym ? 21 : 22, tp->dims, 2, &wsrc, numel, &l, &qtp, e));
        qbytes = (numel + 1) / 2;
        qin = numel * 4;
    }
    /* the bytes the engine reads for the 4-bit tensor, the scales, the zero points */
    lz->total = qin + (int64_t)sbytes + (int64_t)zbytes;
    MSH_FORWARD(msh_quant_add_weight(m, g, qtp, e));
    size_t kept = 0;
    if (q->layout == GT) {
        for (size_t i = 0; i < q->n; i++) {
            Onnx__NodeProto *n = q->uses[i].node;
            if (q->uses[i].layout != GT) {
                kept++;
                continue;
            }
            /* Gather(W, I) -> GatherBlockQuantized(q, I, scales, [zp]) */
            const char *in[4] = {qn, n->input[1], sn, zn};
            Onnx__NodeProto *r =
                msh_onnx_node_new("GatherBlockQuantized", n->name ? n->name : "", in,
                                  o->asym ? 4 : 3, (const char *const *)n->output, n->n_output);
            if (!r)
                return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            free(r->domain);
            r->domain = msh_strdup("com.microsoft");
            if (!r->domain || !msh_onnx_node_add_attr(r, msh_onnx_attr_int("gather_axis", 0)) ||
                !msh_onnx_node_add_attr(r, msh_onnx_attr_int("quantize_axis", 1)) ||
                !msh_onnx_node_add_attr(r, msh_onnx_attr_int("block_size", B)) ||
                !msh_onnx_node_add_attr(r, msh_onnx_attr_int("bits", 4))) {
                protobuf_c_message_free_unpacked(&r->base, NULL);
                return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            }
            Onnx__NodeProto tmp = *n;
            *n = *r;
            *r = tmp;
            protobuf_c_message_free_unpacked(&r->base, NULL);
            *ms_used = 1;
        }
        if (m->mp->ir_version < 10) { /* INT4 / UINT4 initializers are IR 10's */
            m->mp->ir_version = 10;
            m->mp->has_ir_version = 1;
        }
    } else if (nbits) {
        for (size_t i = 0; i < q->n; i++) {
            Onnx__NodeProto *n = q->uses[i].node;
            if (q->uses[i].layout != q->layout) {
                kept++;
                continue;
            }
            /* MatMul(A, W) / Gemm(A, W, C) -> MatMulNBits(A, q, scales, [zp], [], [C]) */
            const char *in[6] = {n->input[0], qn, sn, zn, "", ""};
            size_t n_in = o->asym ? 4 : 3;
            if (strcmp(n->op_type, "Gemm") == 0 && n->n_input > 2 && n->input[2][0]) {
                in[5] = n->input[2];
                n_in = 6;
            }
            Onnx__NodeProto *r = msh_onnx_node_new("MatMulNBits", n->name ? n->name : "", in, n_in,
                                                   (const char *const *)n->output, n->n_output);
            if (!r)
                return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            free(r->domain);
            r->domain = msh_strdup("com.microsoft");
            if (!r->domain || !msh_onnx_node_add_attr(r, msh_onnx_attr_int("K", K)) ||
                !msh_onnx_node_add_attr(r, msh_onnx_attr_int("N", N)) ||
                !msh_onnx_node_add_attr(r, msh_onnx_attr_int("bits", 4)) ||
                !msh_onnx_node_add_attr(r, msh_onnx_attr_int("block_size", B))) {
                protobuf_c_message_free_unpacked(&r->base, NULL);
                return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            }
            /* swap the node's contents in place: uses of other candidates may point at it */
            Onnx__NodeProto tmp = *n;
            *n = *r;
            *r = tmp;
            protobuf_c_message_free_unpacked(&r->base, NULL);
            *ms_used = 1;
        }
    } else {
        const char *dn = msh_names_fresh(nm, tp->name, "_dequantized");
        const char *nn = msh_names_fresh(nm, tp->name, "_DequantizeLinear");
        if (!dn || !nn)
            return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        const char *in[3] = {qn, sn, zn};
        Onnx__NodeProto *dq =
            msh_onnx_node_new("DequantizeLinear", nn, in, o->asym ? 3 : 2, &dn, 1);
        if (!dq ||
            !msh_onnx_node_add_attr(dq, msh_onnx_attr_int("axis", q->layout == KN ? 0 : 1)) ||
            !msh_onnx_node_add_attr(dq, msh_onnx_attr_int("block_size", B))) {
            if (dq)
                protobuf_c_message_free_unpacked(&dq->base, NULL);
            return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        }
        MSH_FORWARD(msh_quant_prepend_node(g, dq, e));
        for (size_t i = 0; i < q->n; i++) {
            if (q->uses[i].layout == q->layout)
                MSH_FORWARD(msh_quant_set_input(q->uses[i].node, q->uses[i].idx, dn, e));
            else
                kept++;
        }
    }
    w = &m->tensors[q->t];
    st->tensors++;
    st->bytes_before += w->d.nbytes;
    st->bytes_after += qbytes + (int64_t)sbytes + (int64_t)zbytes;
    if (kept == 0 && !q->other) {
        for (size_t i = 0; i < g->n_initializer; i++)
            if (g->initializer[i] == w->tp) {
                memmove(&g->initializer[i], &g->initializer[i + 1],
                        (g->n_initializer - i - 1) * sizeof *g->initializer);
                g->n_initializer--;
                ptrdiff_t in =
                    m->mp->ir_version < 4 ? msh_quant_graph_input_at(g, w->tp->name) : -1;
                if (in >= 0) {
                    protobuf_c_message_free_unpacked(&g->input[in]->base, NULL);
                    memmove(&g->input[in], &g->input[in + 1],
                            (g->n_input - (size_t)in - 1) * sizeof *g->input);
                    g->n_input--;
                }
                if (msh_onnx_adopt_orphan(m, w->tp) != MSH_OK)
                    return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
                w->d.dropped = 1;
                break;
            }
    }
    return MSH_OK;
}

/* With --int4-search the scan is the clipping search (Q4SEARCH) instead of the statistics: it
 * writes each block's chosen (lo, hi) where the statistics go, and make_scales applies the RTN
 * rule to them. Every block must lie inside one engine piece, so the weight is read as [N, Kp]
 * with rows padded by zeros to whole blocks (Kp = kb * block; pieces are multiples of 64 KiB):
 * zeros add nothing to a candidate's error, so the choice is the ragged block's. */
static msh_status search_job(msh_onnx_model *m, qcand *q, const msh_int4_opts *o, msh_job *j,
                             q4cache **cache, msh_error *e) {
    const msh_tensor *w = &m->tensors[q->t];
    int64_t Kp = q->kb * o->block;
    if (q->layout == KN || Kp != q->K) {
        MSH_FORWARD(
            view_src(m, &w->d.src, q->K, q->N, Kp, q->layout == KN, cache, &q->stats_src, e));
    }
    j->src = &q->stats_src;
    j->nbytes = q->N * Kp * 4;
    j->op = MSH_OP_Q4SEARCH;
    j->q4.cols = Kp;
    j->q4.asym = o->asym;
    j->q4_store = o->scale_round;
    return MSH_OK;
}

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

msh_status msh_int4_apply(msh_onnx_model *m, const msh_int4_opts *o, msh_int4_result *st,
                          msh_error *e) {
    memset(st, 0, sizeof *st);
    for (size_t i = 0; i < m->mp->n_opset_import; i++)
        if (is_dflt(m->mp->opset_import[i]->domain))
            st->opset_in = m->mp->opset_import[i]->version;
    st->opset_out = st->opset_in;
    msh_strmap decl, idx;
    msh_strmap_init(&decl);
    msh_strmap_init(&idx);
    msh_names nm;
    memset(&nm, 0, sizeof nm);
    qcand *c = NULL;
    size_t nc = 0;
    q4cache *cache = NULL;
    q4lazyset *lset = NULL;
    msh_status s = msh_quant_count_decls(m, &decl, e);
    if (s == MSH_OK)
        s = msh_names_collect(&nm, m, e);
    if (s == MSH_OK && !(c = calloc(m->n_tensors + 1, sizeof *c)))
        s = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t i = 0; s == MSH_OK && i < m->n_tensors; i++) {
        const msh_tensor *t = &m->tensors[i];
        if (t->loc != MSH_LOC_INITIALIZER || t->d.dropped || t->graph < 0 || t->d.out_dtype ||
            t->tp->data_type != 1 || t->d.numel == 0 || !t->tp->name || t->tp->n_dims != 2)
            continue;
        int64_t *d = msh_strmap_get(&decl, t->tp->name);
        int64_t own = m->mp->ir_version < 4 &&
                      msh_quant_graph_input_at(m->graphs[t->graph].g, t->tp->name) >= 0;
        if (!d || *d != 1 + own)
            continue;
        c[nc].t = (int64_t)i;
        if (!msh_strmap_upsert(&idx, t->tp->name, (int64_t)nc))
            s = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        nc++;
    }
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
                const Onnx__TensorProto *ct = NULL;
                for (size_t t = 0; n->n_input > 2 && n->input[2][0] && t < g->n_initializer; t++)
                    if (g->initializer[t]->name &&
                        strcmp(g->initializer[t]->name, n->input[2]) == 0)
                        ct = g->initializer[t];
                q->uses[q->n++] = (quse){n, k, eligible_layout(n, k, m->tensors[q->t].tp, o, ct)};
            }
        }
        for (size_t i = 0; i < g->n_output; i++) {
            int64_t *ci = g->output[i]->name ? msh_strmap_get(&idx, g->output[i]->name) : NULL;
            if (ci)
                c[*ci].other = 1;
        }
    }
    /* the layouts, then per weight an engine scan for the block statistics and the quantization */
    msh_job *jobs = s == MSH_OK ? calloc(1, sizeof *jobs) : NULL;
    int ms_used = 0;
    if (s == MSH_OK && !jobs)
        s = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    int64_t want = 0;
    for (size_t i = 0; s == MSH_OK && i < nc; i++) {
        qcand *q = &c[i];
        q->layout = -1;
        for (size_t k = 0; k < q->n && q->layout < 0; k++)
            q->layout = q->uses[k].layout;
        if (q->layout < 0)
            continue;
        const msh_tensor *w = &m->tensors[q->t];
        st->eligible++;
        q->K = q->layout == KN ? w->tp->dims[0] : w->tp->dims[1];
        q->N = q->layout == KN ? w->tp->dims[1] : w->tp->dims[0];
        if (w->d.numel < o->min_elements || q->K < o->block || q->N < 1) {
            if (w->d.numel > st->largest_small)
                st->largest_small = w->d.numel;
            q->layout = -1;
            continue;
        }
        want++;
    }
    if (s == MSH_OK && want && o->format == MSH_INT4_QDQ && st->opset_in < 21) {
        if (msh_int4_opset_blocker(m, st->opset_in, st->why, sizeof st->why))
            want = 0;
        else if ((s = set_opset(m, "", 21, e)) == MSH_OK) {
            st->opset_out = 21;
            if (m->mp->ir_version < 10) {
                m->mp->ir_version = 10;
                m->mp->has_ir_version = 1;
            }
        }
    }
    for (size_t i = 0; s == MSH_OK && want && i < nc; i++) {
        qcand *q = &c[i];
        if (q->layout < 0)
            continue;
        const msh_tensor *w = &m->tensors[q->t];
        q->kb = (q->K + o->block - 1) / o->block;
        if (!o->search) { /* RTN: the scales are made when the weight is written */
            s = quantize_one(m, o, st, &nm, q, &ms_used, &cache, &lset, e);
            continue;
        }
        if (!(q->stats = calloc((size_t)(2 * q->N * q->kb), sizeof(float)))) {
            s = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            break;
        }
        q->stats_src = w->d.src;
        msh_job *j = &jobs[0];
        memset(j, 0, sizeof *j);
        j->q4.block = o->block;
        j->q4.axis = 1;
        j->name = w->d.name;
        j->q4_stats = q->stats;
        if ((s = search_job(m, q, o, j, &cache, e)) != MSH_OK)
            break;
        /* one weight at a time: its search results are freed once its scales are made (the
         * scales themselves are kept by the model until the write) */
        double t0 = seconds_now();
        s = msh_engine_scan(o->engine, jobs, 1, e);
        st->search_seconds += seconds_now() - t0;
        if (s == MSH_OK)
            s = quantize_one(m, o, st, &nm, q, &ms_used, &cache, &lset, e);
        free(q->stats);
        q->stats = NULL;
    }
    free(jobs);
    if (s == MSH_OK && ms_used)
        s = set_opset(m, "com.microsoft", 1, e);
    for (size_t i = 0; c && i < nc; i++) {
        free(c[i].uses);
        free(c[i].stats);
    }
    free(c);
    msh_names_free(&nm);
    msh_strmap_free(&decl);
    msh_strmap_free(&idx);
    return s;
}
