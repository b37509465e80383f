#include "formats/pth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/msh_io.h"
#include "common/msh_dtype.h"
#include "passes/inspect.h"
#include "formats/safetensors.h"
#include "kernels/msh_cpu.h"

#define PTH_MAX_PICKLE ((int64_t)1 << 31)
#define PTH_MAX_VISITS 10000000

int msh_pth_sniff(const uint8_t *h, size_t n) {
    if (n >= 4 && h[0] == 'P' && h[1] == 'K' && h[2] == 3 && h[3] == 4)
        return 1;
    /* the legacy format opens with a pickled magic number: PROTO 2, LONG1 10 bytes */
    if (n >= 4 && h[0] == 0x80 && h[1] == 0x02 && h[2] == 0x8a && h[3] == 0x0a)
        return 2;
    return 0;
}

typedef struct walk {
    msh_pth *p;
    msh_error *e;
    long visits;
    const msh_pk *sd;
} walk;

static int is_optim_key(const char *k) {
    return strcmp(k, "optimizer") == 0 || strcmp(k, "optimizer_state_dict") == 0 ||
           strcmp(k, "optim") == 0 || strcmp(k, "optimizer_state") == 0;
}

static msh_status add_tensor(walk *w, const msh_pk *t, const char *path, int cat,
                             const char *sd_path) {
    msh_pth *p = w->p;
    const msh_pk *s = t->storage;
    size_t si = 0;
    for (; si < p->ns; si++)
        if (strcmp(p->s[si].key, s->s) == 0)
            break;
    if (si == p->ns) {
        char rel[600];
        snprintf(rel, sizeof rel, "data/%s", s->s);
        const msh_zip_entry *z = msh_zip_find(&p->zip, rel);
        if (!z)
            return msh_fail(w->e, MSH_ERR_FORMAT, "storage '%.100s' has no data entry", s->s);
        int64_t es = msh_dtype_size(s->dtype), nb;
        if (es <= 0 || !msh_mul_i64(s->i, es, &nb))
            return msh_fail(w->e, MSH_ERR_FORMAT, "storage '%.100s': bad size", s->s);
        if (nb > z->size)
            return msh_fail(w->e, MSH_ERR_FORMAT,
                            "storage '%.100s' holds %lld bytes, its %lld "
                            "elements need %lld",
                            s->s, (long long)z->size, (long long)s->i, (long long)nb);
        if (!msh_grow((void **)&p->s, &p->caps, p->ns, sizeof *p->s))
            return msh_fail(w->e, MSH_ERR_NOMEM, "out of memory");
        p->s[p->ns++] = (msh_pth_storage){s->s, s->dtype, s->i, nb, z->offset, 0, cat};
    }
    msh_pth_storage *st = &p->s[si];
    st->users++;
    if (cat < st->cat)
        st->cat = cat;
    if (t->ndim > 64)
        return msh_fail(w->e, MSH_ERR_LIMIT, "tensor '%.200s' has %zu dims", path, t->ndim);
    /* the tensor must lie inside its storage: offset + sum((shape_i - 1) * stride_i) */
    int64_t numel = 1, last = t->offset;
    for (size_t d = 0; d < t->ndim; d++) {
        int64_t span;
        if (!msh_mul_i64(numel, t->shape[d], &numel) ||
            (t->shape[d] > 0 && (!msh_mul_i64(t->shape[d] - 1, t->stride[d], &span) ||
                                 !msh_add_i64(last, span, &last))))
            return msh_fail(w->e, MSH_ERR_LIMIT, "tensor '%.200s': size overflows", path);
    }
    if (numel > 0 && last >= st->numel)
        return msh_fail(w->e, MSH_ERR_FORMAT,
                        "tensor '%.200s' reaches element %lld of a "
                        "%lld-element storage",
                        path, (long long)last, (long long)st->numel);
    if (t->dtype != st->dtype && msh_dtype_size(t->dtype) != msh_dtype_size(st->dtype))
        return msh_fail(w->e, MSH_ERR_UNSUPPORTED,
                        "tensor '%.200s': dtype differs from its "
                        "storage's",
                        path);
    if (!msh_grow((void **)&p->t, &p->capt, p->nt, sizeof *p->t))
        return msh_fail(w->e, MSH_ERR_NOMEM, "out of memory");
    msh_pth_tensor *x = &p->t[p->nt];
    memset(x, 0, sizeof *x);
    x->name = msh_strdup(path);
    if (!x->name)
        return msh_fail(w->e, MSH_ERR_NOMEM, "out of memory");
    x->key = sd_path ? x->name + (sd_path - path) : NULL;
    x->dtype = t->dtype;
    x->shape = t->shape;
    x->stride = t->stride;
    x->ndim = t->ndim;
    x->offset = t->offset;
    x->numel = numel;
    x->nbytes = numel * msh_dtype_size(t->dtype);
    x->storage = si;
    x->cat = cat;
    p->nt++;
    return MSH_OK;
}

/* `sd_at`: where the state-dict-relative name starts in `path` (NULL outside the state dict). */
static msh_status walk_obj(walk *w, const msh_pk *o, char *path, size_t plen, int cat,
                           const char *sd_at, int depth) {
    if (++w->visits > PTH_MAX_VISITS || depth > 1000)
        return msh_fail(w->e, MSH_ERR_LIMIT, "checkpoint structure too large or cyclic");
    if (o->type == MSH_PK_TENSOR)
        return add_tensor(w, o, path, cat, sd_at);
    if (o->type != MSH_PK_DICT && o->type != MSH_PK_LIST && o->type != MSH_PK_TUPLE)
        return MSH_OK;
    int is_dict = o->type == MSH_PK_DICT;
    size_t step = is_dict ? 2 : 1;
    for (size_t i = 0; i + step - 1 < o->n; i += step) {
        char part[256];
        const msh_pk *k = is_dict ? o->items[i] : NULL;
        if (!is_dict)
            snprintf(part, sizeof part, "%zu", i);
        else if (k->type == MSH_PK_STR)
            snprintf(part, sizeof part, "%s", k->s);
        else if (k->type == MSH_PK_INT)
            snprintf(part, sizeof part, "%lld", (long long)k->i);
        else
            continue;
        size_t n = strlen(part);
        if (plen + n + 2 > 4096)
            return msh_fail(w->e, MSH_ERR_LIMIT, "checkpoint names longer than 4096 bytes");
        size_t at = plen;
        if (plen)
            path[at++] = '.';
        memcpy(path + at, part, n + 1);
        const msh_pk *val = o->items[i + step - 1];
        int c = cat;
        const char *sd = sd_at;
        if (val == w->sd) {
            c = MSH_PTH_WEIGHTS;
            sd = path + at + n + 1; /* names inside start after "key." */
        } else if (depth == 0 && is_dict && k->type == MSH_PK_STR && is_optim_key(k->s)) {
            c = MSH_PTH_OPTIM;
        }
        MSH_FORWARD(walk_obj(w, val, path, at + n, c, sd, depth + 1));
        path[plen] = 0;
    }
    return MSH_OK;
}

/* A state dict: a non-empty dict whose leaves, through nested dicts, are all tensors. */
static int all_tensors_rec(const msh_pk *d, int depth) {
    if (!d || d->type != MSH_PK_DICT || d->n == 0 || depth > 64)
        return 0;
    for (size_t i = 1; i < d->n; i += 2) {
        const msh_pk *v = d->items[i];
        if (v->type != MSH_PK_TENSOR && !all_tensors_rec(v, depth + 1))
            return 0;
    }
    return 1;
}

static int all_tensors(const msh_pk *d) {
    return all_tensors_rec(d, 0);
}

msh_status msh_pth_open(msh_pth *p, const char *path, const char *key, msh_error *e) {
    memset(p, 0, sizeof *p);
    p->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (p->fd < 0)
        return msh_fail(e, MSH_ERR_IO, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(p->fd, &sb) != 0 || !S_ISREG(sb.st_mode))
        return msh_fail(e, MSH_ERR_FORMAT, "not a regular file");
    p->file_size = (int64_t)sb.st_size;
    uint8_t head[8] = {0};
    size_t hn = p->file_size < 8 ? (size_t)p->file_size : 8;
    MSH_FORWARD(msh_pread_full(p->fd, head, hn, 0, e));
    if (msh_pth_sniff(head, hn) == 2)
        return msh_fail(e, MSH_ERR_UNSUPPORTED,
                        "legacy (pre-1.6) PyTorch format is not "
                        "supported; re-save it with torch >= 1.6 (zip format)");
    MSH_FORWARD(msh_zip_open(&p->zip, p->fd, p->file_size, e));
    const msh_zip_entry *pk = msh_zip_find(&p->zip, "data.pkl");
    if (!pk)
        return msh_fail(e, MSH_ERR_FORMAT, "not a torch.save archive: no data.pkl");
    if (pk->size > PTH_MAX_PICKLE)
        return msh_fail(e, MSH_ERR_LIMIT, "data.pkl of %lld bytes is too large",
                        (long long)pk->size);
    uint8_t *buf = malloc((size_t)pk->size + 1);
    if (!buf)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    msh_status st = msh_pread_full(p->fd, buf, (size_t)pk->size, pk->offset, e);
    if (st == MSH_OK)
        st = msh_pickle_load(&p->pk, buf, (size_t)pk->size, e);
    free(buf);
    MSH_FORWARD(st);
    const msh_pk *root = p->pk.root;
    walk w = {p, e, 0, NULL};
    static const char *cands[] = {"model_state_dict", "state_dict", "model",
                                  "module",           "net",        "network"};
    if (key) {
        w.sd = msh_pk_dict_get(root, key);
        if (!w.sd || w.sd->type != MSH_PK_DICT)
            return msh_fail(e, MSH_ERR_USAGE, "--key '%s' does not name a dict in the checkpoint",
                            key);
        p->sd_key = key;
    } else if (all_tensors(root)) {
        p->sd_key = "";
    } else {
        for (size_t i = 0; i < sizeof cands / sizeof cands[0] && !w.sd; i++) {
            const msh_pk *d = msh_pk_dict_get(root, cands[i]);
            if (all_tensors(d)) {
                w.sd = d;
                p->sd_key = cands[i];
            }
        }
    }
    char *pathbuf = calloc(4097, 1);
    if (!pathbuf)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    int bare = p->sd_key && !*p->sd_key;
    st = walk_obj(&w, root, pathbuf, 0, bare ? MSH_PTH_WEIGHTS : MSH_PTH_OTHER,
                  bare ? pathbuf : NULL, 0);
    free(pathbuf);
    if (bare)
        for (size_t i = 0; i < p->nt; i++)
            p->t[i].key = p->t[i].name;
    return st;
}

void msh_pth_free(msh_pth *p) {
    for (size_t i = 0; i < p->nt; i++)
        free(p->t[i].name);
    free(p->t);
    free(p->s);
    msh_pickle_free(&p->pk);
    msh_zip_free(&p->zip);
    if (p->fd > 0)
        close(p->fd);
    memset(p, 0, sizeof *p);
}

/* ---- inspect ---- */

msh_status msh_pth_inspect(const msh_pth *p, cJSON *o, msh_error *e) {
    (void)e;
    int64_t cat_bytes[3] = {0, 0, 0}, total = 0;
    int64_t dt_count[32] = {0}, dt_bytes[32] = {0};
    for (size_t i = 0; i < p->ns; i++) {
        cat_bytes[p->s[i].cat] += p->s[i].nbytes;
        total += p->s[i].nbytes;
    }
    for (size_t i = 0; i < p->nt; i++) {
        int d = p->t[i].dtype >= 0 && p->t[i].dtype < 31 ? p->t[i].dtype : 31;
        dt_count[d]++;
        dt_bytes[d] += p->t[i].nbytes;
    }
    cJSON_AddStringToObject(o, "format", "pth");
    cJSON_AddNumberToObject(o, "file_bytes", (double)p->file_size);
    cJSON_AddNumberToObject(o, "tensor_bytes", (double)total);
    cJSON_AddNumberToObject(o, "tensor_count", (double)p->nt);
    cJSON_AddStringToObject(o, "state_dict_key", p->sd_key ? p->sd_key : "");
    cJSON_AddBoolToObject(o, "state_dict_found", p->sd_key != NULL);
    cJSON *b = cJSON_AddObjectToObject(o, "breakdown");
    cJSON_AddNumberToObject(b, "weights", (double)cat_bytes[MSH_PTH_WEIGHTS]);
    cJSON_AddNumberToObject(b, "optimizer_state", (double)cat_bytes[MSH_PTH_OPTIM]);
    cJSON_AddNumberToObject(b, "other_tensors", (double)cat_bytes[MSH_PTH_OTHER]);
    cJSON_AddNumberToObject(b, "metadata", (double)(p->file_size - total));
    msh_json_by_dtype(o, dt_count, dt_bytes);
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
    return MSH_OK;
}

/* ---- safetensors output ---- */

static int contiguous(const msh_pth_tensor *t) {
    int64_t want = 1;
    for (size_t d = t->ndim; d-- > 0;) {
        if (t->shape[d] != 1 && t->stride[d] != want)
            return 0;
        want *= t->shape[d];
    }
    return 1;
}

/* The tensor's elements in row-major order, into `dst` (nbytes): a view or a transposed tensor
 * is gathered from the span of its storage that it touches. */
static msh_status gather(const msh_pth *p, const msh_pth_tensor *t, uint8_t *dst, msh_error *e) {
    const msh_pth_storage *s = &p->s[t->storage];
    int64_t es = msh_dtype_size(t->dtype);
    int64_t hi = t->offset;
    for (size_t d = 0; d < t->ndim; d++)
        hi += (t->shape[d] - 1) * t->stride[d];
    int64_t span = (hi - t->offset + 1) * es;
    uint8_t *buf = malloc((size_t)span);
    if (!buf)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory gathering '%.200s'", t->name);
    msh_status st = msh_pread_full(p->fd, buf, (size_t)span, s->file_offset + t->offset * es, e);
    int64_t idx[64] = {0};
    for (int64_t k = 0; st == MSH_OK && k < t->numel; k++) {
        int64_t off = 0;
        for (size_t d = 0; d < t->ndim; d++)
            off += idx[d] * t->stride[d];
        memcpy(dst + k * es, buf + off * es, (size_t)es);
        for (size_t d = t->ndim; d-- > 0;) {
            if (++idx[d] < t->shape[d])
                break;
            idx[d] = 0;
        }
    }
    free(buf);
    return st;
}

typedef struct gather_ctx {
    const msh_pth *p;
    const msh_pth_tensor *t;
} gather_ctx;

static msh_status gather_cb(void *ctx, uint8_t *dst, msh_error *e) {
    gather_ctx *g = ctx;
    return gather(g->p, g->t, dst, e);
}

msh_status msh_pth_write_safetensors(const msh_pth *p, const char *out_path, int float_type,
                                     uint32_t f16_min_abs, uint32_t f16_max_abs, int64_t *bytes_out,
                                     int64_t *tensors, uint64_t *clamped, msh_error *e) {
    if (!p->sd_key) {
        char keys[512] = "";
        const msh_pk *r = p->pk.root;
        for (size_t i = 0; r && r->type == MSH_PK_DICT && i + 1 < r->n; i += 2)
            if (r->items[i]->type == MSH_PK_STR && strlen(keys) + strlen(r->items[i]->s) < 400)
                snprintf(keys + strlen(keys), sizeof keys - strlen(keys), "%s%s", *keys ? ", " : "",
                         r->items[i]->s);
        return msh_fail(e, MSH_ERR_USAGE,
                        "no model state dict found (top-level keys: %s); name "
                        "it with --key",
                        *keys ? keys : "none");
    }
    msh_st_item *items = calloc(p->nt + 1, sizeof *items);
    gather_ctx *g = calloc(p->nt + 1, sizeof *g);
    if (!items || !g) {
        free(items);
        free(g);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    size_t n = 0;
    for (size_t i = 0; i < p->nt; i++) {
        const msh_pth_tensor *t = &p->t[i];
        if (t->cat != MSH_PTH_WEIGHTS || !t->key)
            continue;
        msh_st_item *it = &items[n];
        it->name = t->key;
        it->dtype_in = t->dtype;
        it->dtype_out = float_type && t->dtype == 1 ? float_type : t->dtype;
        it->shape = t->shape;
        it->ndim = t->ndim;
        it->numel = t->numel;
        it->fd = p->fd;
        it->offset = p->s[t->storage].file_offset + t->offset * msh_dtype_size(t->dtype);
        if (!contiguous(t)) {
            g[n] = (gather_ctx){p, t};
            it->gather = gather_cb;
            it->ctx = &g[n];
        }
        n++;
    }
    msh_status st =
        msh_st_write(out_path, NULL, items, n, f16_min_abs, f16_max_abs, bytes_out, clamped, e);
    free(items);
    free(g);
    if (st == MSH_OK)
        *tensors = (int64_t)n;
    return st;
}

/* ---- weights-only .pth output ---- */

typedef struct pbuf {
    uint8_t *b;
    size_t n, cap;
    int oom;
} pbuf;

static void put(pbuf *p, const void *d, size_t n) {
    if (p->oom)
        return;
    if (p->n + n > p->cap) {
        size_t cap = p->cap ? p->cap : 4096;
        while (cap < p->n + n)
            cap *= 2;
        uint8_t *nb = realloc(p->b, cap);
        if (!nb) {
            p->oom = 1;
            return;
        }
        p->b = nb;
        p->cap = cap;
    }
    memcpy(p->b + p->n, d, n);
    p->n += n;
}

static void put_op(pbuf *p, uint8_t op) {
    put(p, &op, 1);
}

static void put_str(pbuf *p, const char *s) { /* BINUNICODE */
    uint32_t n = (uint32_t)strlen(s);
    uint8_t h[5] = {'X', (uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
    put(p, h, 5);
    put(p, s, n);
}

static void put_int(pbuf *p, int64_t v) { /* LONG1, 8 bytes: any int64 */
    uint8_t h[10] = {0x8a, 8};
    for (int i = 0; i < 8; i++)
        h[2 + i] = (uint8_t)((uint64_t)v >> (8 * i));
    put(p, h, 10);
}

static void put_global(pbuf *p, const char *mod, const char *name) {
    put_op(p, 'c');
    put(p, mod, strlen(mod));
    put_op(p, '\n');
    put(p, name, strlen(name));
    put_op(p, '\n');
}

static const char *storage_class(int32_t t) {
    switch (t) {
    case 1: return "FloatStorage";
    case 10: return "HalfStorage";
    case 16: return "BFloat16Storage";
    case 11: return "DoubleStorage";
    case 7: return "LongStorage";
    case 6: return "IntStorage";
    case 5: return "ShortStorage";
    case 3: return "CharStorage";
    case 2: return "ByteStorage";
    case 9: return "BoolStorage";
    default: return NULL;
    }
}

typedef struct out_storage {
    const msh_pth_tensor *t; /* the first tensor that is this exact view */
    int32_t dtype;           /* as written */
} out_storage;

static int same_view(const msh_pth_tensor *a, const msh_pth_tensor *b) {
    return a->storage == b->storage && a->offset == b->offset && a->ndim == b->ndim &&
           a->dtype == b->dtype && memcmp(a->shape, b->shape, a->ndim * sizeof *a->shape) == 0 &&
           memcmp(a->stride, b->stride, a->ndim * sizeof *a->stride) == 0;
}

static void zip_local(pbuf *h, const char *name, uint32_t size) {
    uint8_t z[30] = {0x50, 0x4b, 0x03, 0x04, 20, 0};
    uint16_t n = (uint16_t)strlen(name);
    /* crc (14..17) is patched once the data is written; sizes are known */
    for (int i = 0; i < 4; i++) {
        z[18 + i] = (uint8_t)(size >> (8 * i));
        z[22 + i] = (uint8_t)(size >> (8 * i));
    }
    z[26] = (uint8_t)n;
    z[27] = (uint8_t)(n >> 8);
    put(h, z, 30);
    put(h, name, n);
}

static void zip_central(pbuf *cd, const char *name, uint32_t size, uint32_t crc, uint32_t off) {
    uint8_t z[46] = {0x50, 0x4b, 0x01, 0x02, 20, 0, 20, 0};
    uint16_t n = (uint16_t)strlen(name);
    for (int i = 0; i < 4; i++) {
        z[16 + i] = (uint8_t)(crc >> (8 * i));
        z[20 + i] = (uint8_t)(size >> (8 * i));
        z[24 + i] = (uint8_t)(size >> (8 * i));
        z[42 + i] = (uint8_t)(off >> (8 * i));
    }
    z[28] = (uint8_t)n;
    z[29] = (uint8_t)(n >> 8);
    put(cd, z, 46);
    put(cd, name, n);
}

typedef struct zw {
    msh_sink *s;
    pbuf cd;
    uint16_t entries;
    msh_error *e;
} zw;

/* One STORED entry whose bytes come from `fill` in pieces (CRC computed on the way). */
static msh_status zip_entry(zw *z, const char *name, const uint8_t *mem, int64_t size,
                            const msh_pth *p, const msh_pth_tensor *t, int32_t out_type,
                            const msh_f16_bounds *b, uint64_t *clamped) {
    if (size > 0x7FFFFFFF || z->s->written > 0x7FFFFFFF)
        return msh_fail(z->e, MSH_ERR_LIMIT,
                        "--format pth writes files under 2 GiB; use "
                        "safetensors for larger state dicts");
    pbuf h = {0};
    int64_t at = z->s->written;
    zip_local(&h, name, (uint32_t)size);
    if (h.oom)
        return msh_fail(z->e, MSH_ERR_NOMEM, "out of memory");
    msh_status st = msh_sink_write(z->s, h.b, h.n, z->e);
    free(h.b);
    uint32_t crc = 0;
    if (mem) {
        crc = msh_crc32(0, mem, (size_t)size);
        if (st == MSH_OK)
            st = msh_sink_write(z->s, mem, (size_t)size, z->e);
    } else if (st == MSH_OK) {
        /* a tensor: its elements, contiguous, converted when asked */
        int64_t es = msh_dtype_size(t->dtype);
        uint8_t *all = NULL, *chunk = malloc((size_t)4 << 20), *conv = malloc((size_t)2 << 20);
        if (!chunk || !conv)
            st = msh_fail(z->e, MSH_ERR_NOMEM, "out of memory");
        if (st == MSH_OK && !contiguous(t) && t->nbytes > 0) {
            all = malloc((size_t)t->nbytes);
            st = all ? gather(p, t, all, z->e) : msh_fail(z->e, MSH_ERR_NOMEM, "out of memory");
        }
        for (int64_t off = 0; st == MSH_OK && off < t->nbytes;) {
            size_t len =
                t->nbytes - off < ((int64_t)4 << 20) ? (size_t)(t->nbytes - off) : (size_t)4 << 20;
            const uint8_t *src = all ? all + off : chunk;
            if (!all)
                st = msh_pread_full(p->fd, chunk, len,
                                    p->s[t->storage].file_offset + t->offset * es + off, z->e);
            if (st != MSH_OK)
                break;
            size_t wl = len;
            if (out_type == 10) {
                *clamped += msh_f32_to_f16_buf(src, conv, len / 4, b);
                src = conv;
                wl = len / 2;
            } else if (out_type == 16) {
                msh_f32_to_bf16_buf(src, conv, len / 4);
                src = conv;
                wl = len / 2;
            }
            crc = msh_crc32(crc, src, wl);
            st = msh_sink_write(z->s, src, wl, z->e);
            off += (int64_t)len;
        }
        free(all);
        free(chunk);
        free(conv);
    }
    uint8_t c4[4] = {(uint8_t)crc, (uint8_t)(crc >> 8), (uint8_t)(crc >> 16), (uint8_t)(crc >> 24)};
    if (st == MSH_OK)
        st = msh_sink_patch(z->s, at + 14, c4, 4, z->e);
    zip_central(&z->cd, name, (uint32_t)size, crc, (uint32_t)at);
    z->entries++;
    return z->cd.oom ? msh_fail(z->e, MSH_ERR_NOMEM, "out of memory") : st;
}

msh_status msh_pth_write_pth(const msh_pth *p, const char *out_path, int float_type,
                             uint32_t f16_min_abs, uint32_t f16_max_abs, int64_t *bytes_out,
                             int64_t *tensors, uint64_t *clamped, msh_error *e) {
    if (!p->sd_key)
        return msh_fail(e, MSH_ERR_USAGE, "no model state dict found; name it with --key");
    out_storage *os = calloc(p->nt + 1, sizeof *os);
    size_t *which = calloc(p->nt + 1, sizeof *which);
    if (!os || !which) {
        free(os);
        free(which);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    /* output storages: identical views share one (tied weights), every other view gets its own
     * contiguous copy */
    size_t nos = 0;
    pbuf pk = {0};
    put(&pk, "\x80\x02", 2);
    put_global(&pk, "collections", "OrderedDict");
    put_op(&pk, ')');
    put_op(&pk, 'R');
    put_op(&pk, '(');
    int64_t n = 0;
    msh_status st = MSH_OK;
    for (size_t i = 0; i < p->nt && st == MSH_OK; i++) {
        const msh_pth_tensor *t = &p->t[i];
        if (t->cat != MSH_PTH_WEIGHTS || !t->key)
            continue;
        size_t k = 0;
        while (k < nos && !same_view(os[k].t, t))
            k++;
        if (k == nos)
            os[nos++] = (out_storage){t, float_type && t->dtype == 1 ? float_type : t->dtype};
        const char *cls = storage_class(os[k].dtype);
        if (!cls) {
            st = msh_fail(e, MSH_ERR_UNSUPPORTED, "tensor '%.200s': element type %s", t->name,
                          msh_dtype_name(t->dtype));
            break;
        }
        char key[32];
        snprintf(key, sizeof key, "%zu", k);
        put_str(&pk, t->key);
        put_global(&pk, "torch._utils", "_rebuild_tensor_v2");
        put_op(&pk, '(');
        put_op(&pk, '(');
        put_str(&pk, "storage");
        put_global(&pk, "torch", cls);
        put_str(&pk, key);
        put_str(&pk, "cpu");
        put_int(&pk, t->numel);
        put_op(&pk, 't');
        put_op(&pk, 'Q');
        put_int(&pk, 0); /* offset */
        put_op(&pk, '(');
        for (size_t d = 0; d < t->ndim; d++)
            put_int(&pk, t->shape[d]);
        put_op(&pk, 't');
        put_op(&pk, '(');
        int64_t stride = 1;
        int64_t strides[64];
        for (size_t d = t->ndim; d-- > 0;) {
            strides[d] = stride;
            stride *= t->shape[d];
        }
        for (size_t d = 0; d < t->ndim; d++)
            put_int(&pk, strides[d]);
        put_op(&pk, 't');
        put_op(&pk, 0x89); /* requires_grad False */
        put_global(&pk, "collections", "OrderedDict");
        put_op(&pk, ')');
        put_op(&pk, 'R');
        put_op(&pk, 't');
        put_op(&pk, 'R');
        n++;
    }
    put_op(&pk, 'u');
    put_op(&pk, '.');
    if (st == MSH_OK && pk.oom)
        st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    msh_sink s;
    int open = 0;
    if (st == MSH_OK && (st = msh_sink_open(&s, out_path, e)) == MSH_OK)
        open = 1;
    zw z = {&s, {0}, 0, e};
    msh_f16_bounds b = {f16_min_abs, f16_max_abs};
    if (st == MSH_OK)
        st = zip_entry(&z, "archive/data.pkl", pk.b, (int64_t)pk.n, NULL, NULL, 0, NULL, NULL);
    for (size_t k = 0; st == MSH_OK && k < nos; k++) {
        char name[64];
        snprintf(name, sizeof name, "archive/data/%zu", k);
        int64_t size = os[k].t->numel * msh_dtype_size(os[k].dtype);
        st = zip_entry(&z, name, NULL, size, p, os[k].t,
                       os[k].dtype != os[k].t->dtype ? os[k].dtype : 0, &b, clamped);
    }
    if (st == MSH_OK)
        st = zip_entry(&z, "archive/version", (const uint8_t *)"3\n", 2, NULL, NULL, 0, NULL, NULL);
    if (st == MSH_OK) {
        int64_t cd_at = s.written;
        uint8_t end[22] = {0x50, 0x4b, 0x05, 0x06};
        end[8] = end[10] = (uint8_t)z.entries;
        end[9] = end[11] = (uint8_t)(z.entries >> 8);
        for (int i = 0; i < 4; i++) {
            end[12 + i] = (uint8_t)(z.cd.n >> (8 * i));
            end[16 + i] = (uint8_t)((uint64_t)cd_at >> (8 * i));
        }
        st = msh_sink_write(&s, z.cd.b, z.cd.n, e);
        if (st == MSH_OK)
            st = msh_sink_write(&s, end, 22, e);
    }
    if (st == MSH_OK)
        st = msh_sink_finish(&s, e);
    if (st == MSH_OK)
        st = msh_sink_rename(&s, e);
    if (st == MSH_OK) {
        *bytes_out = s.written;
        *tensors = n;
    }
    if (open)
        msh_sink_abort(&s);
    free(z.cd.b);
    free(pk.b);
    free(os);
    free(which);
    return st;
}
