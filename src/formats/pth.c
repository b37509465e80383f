#include "formats/pth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/msh_dtype.h"
#include "common/msh_io.h"

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
    msh_tentry_init(&x->d);
    x->d.origin = (int64_t)p->nt;
    x->name = msh_strdup(path);
    if (!x->name)
        return msh_fail(w->e, MSH_ERR_NOMEM, "out of memory");
    x->key = sd_path ? x->name + (sd_path - path) : NULL;
    x->stride = t->stride;
    x->offset = t->offset;
    x->storage = si;
    x->cat = cat;
    x->d.dtype = t->dtype;
    x->d.shape = t->shape;
    x->d.ndim = t->ndim;
    x->d.numel = numel;
    x->d.nbytes = numel * msh_dtype_size(t->dtype);
    x->d.storage = (int64_t)si;
    p->nt++;
    return MSH_OK;
}

static int contiguous(const msh_pth_tensor *t) {
    int64_t want = 1;
    for (size_t d = t->d.ndim; d-- > 0;) {
        if (t->d.shape[d] != 1 && t->stride[d] != want)
            return 0;
        want *= t->d.shape[d];
    }
    return 1;
}

/* BatchNorm statistics and counters: state in the state dict that is not trained. */
static int is_buffer_name(const char *key) {
    static const char *suffixes[] = {"running_mean", "running_var", "num_batches_tracked"};
    size_t n = strlen(key);
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        size_t k = strlen(suffixes[i]);
        if (n >= k && strcmp(key + n - k, suffixes[i]) == 0 && (n == k || key[n - k - 1] == '.'))
            return 1;
    }
    return 0;
}

/* The neutral description: name, role and where the bytes are. */
static void describe(msh_pth *p, msh_pth_tensor *x) {
    const msh_pth_storage *s = &p->s[x->storage];
    int64_t es = msh_dtype_size(x->d.dtype);
    x->d.name = x->key ? x->key : x->name;
    x->d.role = x->cat == MSH_PTH_OPTIM   ? MSH_ROLE_OPTIMIZER
                : x->cat == MSH_PTH_OTHER ? MSH_ROLE_TRAINING
                : is_buffer_name(x->name) ? MSH_ROLE_BUFFER
                                          : MSH_ROLE_WEIGHT;
    msh_src *src = &x->d.src;
    memset(src, 0, sizeof *src);
    src->fd = p->fd;
    src->length = x->d.nbytes;
    if (x->d.nbytes == 0) {
        src->kind = MSH_SRC_NONE;
    } else if (contiguous(x)) {
        src->kind = MSH_SRC_FILE;
        src->offset = s->file_offset + x->offset * es;
    } else {
        src->kind = MSH_SRC_STRIDED;
        src->offset = s->file_offset;
        src->elem_size = es;
        src->elem_offset = x->offset;
        src->ndim = x->d.ndim;
        src->shape = x->d.shape;
        src->stride = x->stride;
    }
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
            return msh_fail(e, MSH_ERR_USAGE,
                            "state dict key '%s' does not name a dict in the checkpoint", key);
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
    for (size_t i = 0; st == MSH_OK && i < p->nt; i++) {
        describe(p, &p->t[i]);
        p->t[i].d.users = p->s[p->t[i].storage].users; /* the views of its storage */
    }
    return st;
}

msh_table msh_pth_table(const msh_pth *p) {
    msh_table t = {p->t ? &p->t[0].d : NULL, p->nt, sizeof(msh_pth_tensor)};
    return t;
}

void msh_pth_top_keys(const msh_pth *p, char *keys, size_t cap) {
    keys[0] = 0;
    const msh_pk *r = p->pk.root;
    for (size_t i = 0; r && r->type == MSH_PK_DICT && i + 1 < r->n; i += 2)
        if (r->items[i]->type == MSH_PK_STR && strlen(keys) + strlen(r->items[i]->s) + 8 < cap)
            snprintf(keys + strlen(keys), cap - strlen(keys), "%s%s", *keys ? ", " : "",
                     r->items[i]->s);
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
