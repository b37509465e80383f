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
#define PTH_MAX_SOURCE ((size_t)64 << 20) /* one TorchScript class file */
#define PTH_MAX_MODULE_DEPTH 256

int msh_pth_sniff(const uint8_t *h, size_t n) {
    if (n >= 4 && h[0] == 'P' && h[1] == 'K' && h[2] == 3 && h[3] == 4)
        return 1;
    /* the legacy format opens with a pickled magic number: PROTO 2, LONG1 10 bytes */
    if (n >= 4 && h[0] == 0x80 && h[1] == 0x02 && h[2] == 0x8a && h[3] == 0x0a)
        return 2;
    return 0;
}

const char *msh_pth_kind_name(int kind) {
    return kind == MSH_PTH_LEGACY ? "legacy" : kind == MSH_PTH_TORCHSCRIPT ? "TorchScript" : "zip";
}

/* ---- storages ---- */

/* Where storage `key`'s bytes are, and how many the file holds for it. */
static msh_status storage_span(const msh_pth *p, const char *key, int64_t *off, int64_t *avail,
                               msh_error *e) {
    if (p->kind == MSH_PTH_LEGACY) {
        for (size_t i = 0; i < p->n_blobs; i++)
            if (strcmp(p->blobs[i].key, key) == 0) {
                *off = p->blobs[i].offset;
                *avail = p->blobs[i].numel; /* elements: the caller compares counts */
                return MSH_OK;
            }
        return msh_fail(e, MSH_ERR_FORMAT, "storage '%.100s' is not in the file's storage list",
                        key);
    }
    char rel[600];
    snprintf(rel, sizeof rel, "data/%s", key);
    const msh_zip_entry *z = msh_zip_find(&p->zip, rel);
    if (!z)
        return msh_fail(e, MSH_ERR_FORMAT, "storage '%.100s' has no data entry", key);
    if (z->method != 0)
        return msh_fail(e, MSH_ERR_UNSUPPORTED,
                        "storage '%.100s' is compressed (torch writes tensor data stored)", key);
    *off = z->offset;
    *avail = z->size;
    return MSH_OK;
}

typedef struct walk {
    msh_pth *p;
    msh_error *e;
    long visits;
    const msh_pk *sd; /* the chosen state dict, when it is a dict inside the tree */
    int mark;         /* mark the tensors met (a module's state dict, walked first) */
    int skip_marked;  /* pass over marked tensors (the rest of the tree, walked next) */
} walk;

static int is_optim_key(const char *k) {
    return strcmp(k, "optimizer") == 0 || strcmp(k, "optimizer_state_dict") == 0 ||
           strcmp(k, "optim") == 0 || strcmp(k, "optimizer_state") == 0 ||
           strcmp(k, "optimizer_states") == 0;
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
        int64_t off = 0, avail = 0;
        MSH_FORWARD(storage_span(p, s->s, &off, &avail, w->e));
        int64_t es = msh_dtype_size(s->dtype), nb;
        if (es <= 0 || !msh_mul_i64(s->i, es, &nb))
            return msh_fail(w->e, MSH_ERR_FORMAT, "storage '%.100s': bad size", s->s);
        if (p->kind == MSH_PTH_LEGACY ? s->i > avail : nb > avail)
            return msh_fail(w->e, MSH_ERR_FORMAT,
                            "storage '%.100s' holds %lld %s, its references need %lld elements",
                            s->s, (long long)avail,
                            p->kind == MSH_PTH_LEGACY ? "elements" : "bytes", (long long)s->i);
        if (!msh_grow((void **)&p->s, &p->caps, p->ns, sizeof *p->s))
            return msh_fail(w->e, MSH_ERR_NOMEM, "out of memory");
        p->s[p->ns++] = (msh_pth_storage){s->s, s->dtype, s->i, nb, off, 0, cat};
    } else if (s->i > p->s[si].numel) {
        /* another reference to the same storage claims it is larger: check it again */
        int64_t off = 0, avail = 0, es = msh_dtype_size(s->dtype), nb;
        MSH_FORWARD(storage_span(p, s->s, &off, &avail, w->e));
        if (es <= 0 || !msh_mul_i64(s->i, es, &nb) ||
            (p->kind == MSH_PTH_LEGACY ? s->i > avail : nb > avail))
            return msh_fail(w->e, MSH_ERR_FORMAT,
                            "storage '%.100s' is smaller than a reference to it", s->s);
        p->s[si].numel = s->i;
        p->s[si].nbytes = nb;
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
    if (o->type == MSH_PK_TENSOR) {
        if (w->skip_marked && o->seen)
            return MSH_OK; /* in the state dict already, under its module's name */
        if (w->mark)
            ((msh_pk *)o)->seen = 1;
        return add_tensor(w, o, path, cat, sd_at);
    }
    if (o->type == MSH_PK_OBJECT) {
        /* metadata: an inert object's arguments and state may hold tensors too */
        const msh_pk *state = msh_pk_object_state(o);
        if (state)
            MSH_FORWARD(walk_obj(w, state, path, plen, cat, sd_at, depth + 1));
        if (o->n >= 3) /* the entries of a dict or list subclass */
            MSH_FORWARD(walk_obj(w, o->items[2], path, plen, cat, sd_at, depth + 1));
        return MSH_OK;
    }
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

/* ---- which values are state dicts ---- */

/* A dict of tensors: non-empty, its leaves through nested dicts are tensors, or placeholder
 * objects standing where a tensor is expected (refused later, when this dict is chosen). */
static int tensor_dict_rec(const msh_pk *d, int depth, int *tensors) {
    if (!d || d->type != MSH_PK_DICT || d->n == 0 || depth > 64)
        return 0;
    for (size_t i = 1; i < d->n; i += 2) {
        const msh_pk *v = d->items[i];
        if (v->type == MSH_PK_TENSOR)
            (*tensors)++;
        else if (v->type != MSH_PK_OBJECT && !tensor_dict_rec(v, depth + 1, tensors))
            return 0;
    }
    return 1;
}

static int tensor_dict(const msh_pk *d) {
    int n = 0;
    return tensor_dict_rec(d, 0, &n) && n > 0;
}

/* Every value of the root is a tensor (or a placeholder where one should be): a bare state
 * dict. A dict of dicts is not one: {'model': sd, 'ema': sd} holds two. */
static int flat_tensor_dict(const msh_pk *d) {
    if (!d || d->type != MSH_PK_DICT || d->n == 0)
        return 0;
    int tensors = 0;
    for (size_t i = 1; i < d->n; i += 2) {
        if (d->items[i]->type == MSH_PK_TENSOR)
            tensors++;
        else if (d->items[i]->type != MSH_PK_OBJECT)
            return 0;
    }
    return tensors > 0;
}

/* The first placeholder object among a state dict's leaves, and its name (for the refusal). */
static const msh_pk *dependent_leaf(const msh_pk *d, char *path, size_t cap, int depth) {
    if (!d || d->type != MSH_PK_DICT || depth > 64)
        return NULL;
    size_t plen = strlen(path);
    for (size_t i = 0; i + 1 < d->n; i += 2) {
        const msh_pk *k = d->items[i], *v = d->items[i + 1];
        snprintf(path + plen, cap - plen, "%s%s", plen ? "." : "",
                 k->type == MSH_PK_STR ? k->s : "?");
        if (v->type == MSH_PK_OBJECT)
            return v;
        const msh_pk *x = dependent_leaf(v, path, cap, depth + 1);
        if (x)
            return x;
        path[plen] = 0;
    }
    return NULL;
}

/* ---- modules: torch.save(model) and TorchScript ---- */

typedef struct ts_class {
    char *name; /* "module name" */
    int is_module;
    char **params, **bufs;
    size_t np, nb;
} ts_class;

typedef struct mod_ctx {
    msh_pth *p;
    msh_error *e;
    ts_class *cls;
    size_t ncls;
    long visits;
} mod_ctx;

static void ts_classes_free(mod_ctx *c) {
    for (size_t i = 0; i < c->ncls; i++) {
        for (size_t k = 0; k < c->cls[i].np; k++)
            free(c->cls[i].params[k]);
        for (size_t k = 0; k < c->cls[i].nb; k++)
            free(c->cls[i].bufs[k]);
        free(c->cls[i].params);
        free(c->cls[i].bufs);
        free(c->cls[i].name);
    }
    free(c->cls);
}

/* The quoted names of a `__parameters__ = ["a", "b", ]` list starting at `s`. */
static msh_status parse_names(const char *s, const char *end, char ***out, size_t *n,
                              msh_error *e) {
    const char *q = strchr(s, '[');
    if (!q || q >= end)
        return MSH_OK;
    for (q++; q < end && *q != ']';) {
        if (*q != '"' && *q != '\'') {
            q++;
            continue;
        }
        char quote = *q++;
        const char *b = q;
        while (q < end && *q != quote && *q != '\n')
            q++;
        if (q >= end || *q != quote)
            return msh_fail(e, MSH_ERR_FORMAT, "TorchScript source: unterminated name");
        char **v = realloc(*out, (*n + 1) * sizeof *v);
        if (!v)
            return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        *out = v;
        if (!(v[*n] = malloc((size_t)(q - b) + 1)))
            return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        memcpy(v[*n], b, (size_t)(q - b));
        v[(*n)++][q - b] = 0;
        q++;
    }
    return MSH_OK;
}

/* What the class's source under code/ says: whether it is a Module, its parameter and buffer
 * names. The source is read as text: nothing in it is run. */
static msh_status ts_class_get(mod_ctx *c, const char *cls, const ts_class **out) {
    for (size_t i = 0; i < c->ncls; i++)
        if (strcmp(c->cls[i].name, cls) == 0) {
            *out = &c->cls[i];
            return MSH_OK;
        }
    ts_class *v = realloc(c->cls, (c->ncls + 1) * sizeof *v);
    if (!v)
        return msh_fail(c->e, MSH_ERR_NOMEM, "out of memory");
    c->cls = v;
    ts_class *k = &c->cls[c->ncls];
    memset(k, 0, sizeof *k);
    if (!(k->name = msh_strdup(cls)))
        return msh_fail(c->e, MSH_ERR_NOMEM, "out of memory");
    c->ncls++;
    *out = k;
    /* "a.b.c Name" -> code/a/b/c.py, class Name */
    const char *sp = strchr(cls, ' ');
    if (!sp || strncmp(cls, "__torch__", 9) != 0)
        return MSH_OK;
    char rel[1200], name[256];
    size_t ml = (size_t)(sp - cls);
    if (ml + 10 >= sizeof rel || strlen(sp + 1) >= sizeof name)
        return MSH_OK;
    memcpy(rel, "code/", 5);
    for (size_t i = 0; i < ml; i++)
        rel[5 + i] = cls[i] == '.' ? '/' : cls[i];
    memcpy(rel + 5 + ml, ".py", 4);
    snprintf(name, sizeof name, "%s", sp + 1);
    const msh_zip_entry *en = msh_zip_find(&c->p->zip, rel);
    if (!en)
        return msh_fail(c->e, MSH_ERR_FORMAT,
                        "TorchScript archive: no source for class '%.200s' (%.200s)", cls, rel);
    uint8_t *src = NULL;
    size_t len = 0;
    MSH_FORWARD(msh_zip_read(&c->p->zip, en, PTH_MAX_SOURCE, &src, &len, c->e));
    char head[300];
    snprintf(head, sizeof head, "class %s(", name);
    const char *s = (const char *)src, *end = s + len, *at = NULL;
    for (const char *l = s; l < end;) {
        const char *nl = memchr(l, '\n', (size_t)(end - l));
        const char *le = nl ? nl : end;
        if (!at && (size_t)(le - l) >= strlen(head) && strncmp(l, head, strlen(head)) == 0) {
            at = l;
            k->is_module = strstr(l, "(Module)") != NULL && strstr(l, "(Module)") < le;
        } else if (at && l[0] != ' ' && l[0] != '\t' && le > l) {
            end = l; /* the next top-level statement ends the class */
            break;
        }
        l = nl ? nl + 1 : end;
    }
    msh_status st = MSH_OK;
    for (const char *l = at; st == MSH_OK && l && l < end;) {
        const char *nl = memchr(l, '\n', (size_t)(end - l));
        const char *t = l;
        while (t < end && (*t == ' ' || *t == '\t'))
            t++;
        /* a list may go on over several lines: up to its ']' */
        const char *stop = memchr(t, ']', (size_t)(end - t));
        if (!stop)
            stop = end;
        if (strncmp(t, "__parameters__ =", 16) == 0)
            st = parse_names(t, stop, &k->params, &k->np, c->e);
        else if (strncmp(t, "__buffers__ =", 13) == 0)
            st = parse_names(t, stop, &k->bufs, &k->nb, c->e);
        l = nl ? nl + 1 : end;
    }
    free(src);
    if (st == MSH_OK && !at)
        st = msh_fail(c->e, MSH_ERR_FORMAT, "TorchScript archive: %s defines no class '%.200s'",
                      rel, name);
    return st;
}

static int is_nn_module(const msh_pk *o) {
    const msh_pk *st = msh_pk_object_state(o);
    return st && st->type == MSH_PK_DICT && msh_pk_dict_get(st, "_parameters") &&
           msh_pk_dict_get(st, "_modules");
}

static int is_ts_object(const msh_pk *o) {
    return o && o->type == MSH_PK_OBJECT && o->s && strncmp(o->s, "__torch__", 9) == 0;
}

static msh_status sd_add(mod_ctx *c, msh_pk *sd, const char *name, msh_pk *v) {
    msh_pk *k = msh_pk_new(&c->p->pk, MSH_PK_STR);
    if (!k || !(k->s = msh_strdup(name)) || !msh_pk_append(sd, k) || !msh_pk_append(sd, v))
        return msh_fail(c->e, MSH_ERR_NOMEM, "out of memory");
    k->len = strlen(name);
    return MSH_OK;
}

/* A parameter or buffer slot: a tensor joins the state dict, None is skipped, anything else is
 * refused (the state dict would need what this reader does not interpret). */
static msh_status sd_slot(mod_ctx *c, msh_pk *sd, const char *prefix, const char *name, msh_pk *v) {
    char full[4200];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    if (!v || v->type == MSH_PK_NONE)
        return MSH_OK;
    if (v->type != MSH_PK_TENSOR)
        return msh_fail(c->e, MSH_ERR_UNSAFE,
                        "state dict entry '%.200s' is %s%.200s%s, not a tensor; it is not "
                        "interpreted (nothing was run)",
                        full, v->type == MSH_PK_OBJECT ? "an object of class '" : "a ",
                        v->type == MSH_PK_OBJECT ? v->s : "value",
                        v->type == MSH_PK_OBJECT ? "'" : "");
    return sd_add(c, sd, full, v);
}

static int in_set(const msh_pk *set, const char *name) {
    for (size_t i = 0; set && i < set->n; i++)
        if (set->items[i]->type == MSH_PK_STR && strcmp(set->items[i]->s, name) == 0)
            return 1;
    return 0;
}

/* module.state_dict() of a pickled nn.Module or a TorchScript module object, into `sd`:
 * parameters, then persistent buffers, then each submodule's under "<name>.". */
static msh_status module_sd(mod_ctx *c, const msh_pk *o, msh_pk *sd, char *prefix, int depth) {
    if (depth > PTH_MAX_MODULE_DEPTH || ++c->visits > PTH_MAX_VISITS)
        return msh_fail(c->e, MSH_ERR_LIMIT, "module tree too deep or cyclic");
    const msh_pk *st = msh_pk_object_state(o);
    if (!st || st->type != MSH_PK_DICT)
        return MSH_OK;
    size_t plen = strlen(prefix);
    if (is_nn_module(o)) {
        const msh_pk *params = msh_pk_dict_get(st, "_parameters");
        const msh_pk *bufs = msh_pk_dict_get(st, "_buffers");
        const msh_pk *np = msh_pk_dict_get(st, "_non_persistent_buffers_set");
        const msh_pk *mods = msh_pk_dict_get(st, "_modules");
        for (size_t i = 0; params && params->type == MSH_PK_DICT && i + 1 < params->n; i += 2)
            if (params->items[i]->type == MSH_PK_STR)
                MSH_FORWARD(sd_slot(c, sd, prefix, params->items[i]->s, params->items[i + 1]));
        for (size_t i = 0; bufs && bufs->type == MSH_PK_DICT && i + 1 < bufs->n; i += 2)
            if (bufs->items[i]->type == MSH_PK_STR && !in_set(np, bufs->items[i]->s))
                MSH_FORWARD(sd_slot(c, sd, prefix, bufs->items[i]->s, bufs->items[i + 1]));
        for (size_t i = 0; mods && mods->type == MSH_PK_DICT && i + 1 < mods->n; i += 2) {
            const msh_pk *k = mods->items[i], *m = mods->items[i + 1];
            if (k->type != MSH_PK_STR || m->type != MSH_PK_OBJECT)
                continue;
            if (plen + strlen(k->s) + 2 > 4096)
                return msh_fail(c->e, MSH_ERR_LIMIT, "module names longer than 4096 bytes");
            sprintf(prefix + plen, "%s.", k->s);
            MSH_FORWARD(module_sd(c, m, sd, prefix, depth + 1));
            prefix[plen] = 0;
        }
        return MSH_OK;
    }
    const ts_class *cls = NULL;
    MSH_FORWARD(ts_class_get(c, o->s, &cls));
    for (size_t i = 0; i < cls->np; i++)
        MSH_FORWARD(sd_slot(c, sd, prefix, cls->params[i], msh_pk_dict_get(st, cls->params[i])));
    for (size_t i = 0; i < cls->nb; i++)
        MSH_FORWARD(sd_slot(c, sd, prefix, cls->bufs[i], msh_pk_dict_get(st, cls->bufs[i])));
    for (size_t i = 0; i + 1 < st->n; i += 2) {
        const msh_pk *k = st->items[i], *m = st->items[i + 1];
        if (k->type != MSH_PK_STR || !is_ts_object(m))
            continue;
        const ts_class *sub = NULL;
        MSH_FORWARD(ts_class_get(c, m->s, &sub));
        if (!sub->is_module)
            continue;
        if (plen + strlen(k->s) + 2 > 4096)
            return msh_fail(c->e, MSH_ERR_LIMIT, "module names longer than 4096 bytes");
        sprintf(prefix + plen, "%s.", k->s);
        MSH_FORWARD(module_sd(c, m, sd, prefix, depth + 1));
        prefix[plen] = 0;
    }
    return MSH_OK;
}

/* A module object (pickled nn.Module, or a TorchScript module) as its state dict, or NULL when
 * `o` is not one. */
static msh_status as_module_sd(mod_ctx *c, const msh_pk *o, msh_pk **out) {
    *out = NULL;
    if (!o || o->type != MSH_PK_OBJECT)
        return MSH_OK;
    if (!is_nn_module(o)) {
        if (!is_ts_object(o))
            return MSH_OK;
        const ts_class *cls = NULL;
        MSH_FORWARD(ts_class_get(c, o->s, &cls));
        if (!cls->is_module)
            return MSH_OK;
    }
    msh_pk *sd = msh_pk_new(&c->p->pk, MSH_PK_DICT);
    char *prefix = calloc(4200, 1);
    if (!sd || !prefix) {
        free(prefix);
        return msh_fail(c->e, MSH_ERR_NOMEM, "out of memory");
    }
    msh_status st = module_sd(c, o, sd, prefix, 0);
    free(prefix);
    if (st == MSH_OK)
        *out = sd;
    return st;
}

/* ---- the legacy stream ---- */

static msh_status legacy_pickle(msh_pth *p, int64_t *pos, msh_pickle *pk, msh_error *e) {
    size_t cap = (size_t)1 << 20;
    for (;;) {
        int64_t left = p->file_size - *pos;
        size_t n = left < (int64_t)cap ? (size_t)left : cap;
        uint8_t *buf = malloc(n + 1);
        if (!buf)
            return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        msh_status st = msh_pread_full(p->fd, buf, n, *pos, e);
        size_t used = 0;
        if (st == MSH_OK)
            st = msh_pickle_load_prefix(pk, buf, n, &used, e);
        free(buf);
        if (st == MSH_OK) {
            *pos += (int64_t)used;
            return MSH_OK;
        }
        int more = pk->truncated && (int64_t)n < left && cap < (size_t)PTH_MAX_PICKLE;
        msh_pickle_free(pk);
        if (!more)
            return st;
        cap *= 8; /* the object pickle is larger than the first read: read more */
    }
}

static msh_status legacy_open(msh_pth *p, msh_error *e) {
    static const uint8_t magic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
                                    0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e};
    uint8_t head[sizeof magic];
    if (p->file_size < (int64_t)sizeof magic)
        return msh_fail(e, MSH_ERR_FORMAT, "legacy torch file: too short");
    MSH_FORWARD(msh_pread_full(p->fd, head, sizeof head, 0, e));
    if (memcmp(head, magic, sizeof magic) != 0)
        return msh_fail(e, MSH_ERR_FORMAT, "legacy torch file: bad magic number");
    int64_t pos = (int64_t)sizeof magic;
    msh_pickle ver, sys, keys;
    memset(&ver, 0, sizeof ver);
    memset(&sys, 0, sizeof sys);
    memset(&keys, 0, sizeof keys);
    msh_status st = legacy_pickle(p, &pos, &ver, e);
    if (st == MSH_OK && (!ver.root || ver.root->type != MSH_PK_INT || ver.root->i != 1001))
        st = msh_fail(e, MSH_ERR_UNSUPPORTED,
                      "legacy torch file: protocol version %lld (1001 "
                      "is read)",
                      ver.root && ver.root->type == MSH_PK_INT ? (long long)ver.root->i : -1LL);
    if (st == MSH_OK)
        st = legacy_pickle(p, &pos, &sys, e);
    if (st == MSH_OK) {
        const msh_pk *le = msh_pk_dict_get(sys.root, "little_endian");
        if (!le || le->type != MSH_PK_BOOL || !le->i)
            st = msh_fail(e, MSH_ERR_UNSUPPORTED, "legacy torch file: not little-endian");
    }
    if (st == MSH_OK)
        st = legacy_pickle(p, &pos, &p->pk, e);
    if (st == MSH_OK)
        st = legacy_pickle(p, &pos, &keys, e);
    if (st == MSH_OK && (!keys.root || keys.root->type != MSH_PK_LIST))
        st = msh_fail(e, MSH_ERR_FORMAT, "legacy torch file: the storage key list is not a list");
    /* the storages, in the list's order: an 8-byte element count, then the bytes */
    size_t nk = st == MSH_OK ? keys.root->n : 0;
    if (st == MSH_OK && !(p->blobs = calloc(nk + 1, sizeof *p->blobs)))
        st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    for (size_t k = 0; st == MSH_OK && k < nk; k++) {
        const msh_pk *key = keys.root->items[k];
        if (key->type != MSH_PK_STR) {
            st = msh_fail(e, MSH_ERR_FORMAT, "legacy torch file: a storage key is not a string");
            break;
        }
        /* its element size: from the references in the object */
        int32_t dt = 0;
        for (size_t i = 0; i < p->pk.n_all && !dt; i++)
            if (p->pk.all[i]->type == MSH_PK_STORAGE && strcmp(p->pk.all[i]->s, key->s) == 0)
                dt = p->pk.all[i]->dtype;
        int64_t es = dt ? msh_dtype_size(dt) : 0;
        uint8_t cnt[8];
        if (es <= 0) {
            st = msh_fail(e, MSH_ERR_FORMAT,
                          "legacy torch file: storage '%.100s' is listed but "
                          "never referenced",
                          key->s);
            break;
        }
        if (p->file_size - pos < 8 || (st = msh_pread_full(p->fd, cnt, 8, pos, e)) != MSH_OK) {
            if (st == MSH_OK)
                st = msh_fail(e, MSH_ERR_FORMAT,
                              "legacy torch file: cut short at storage "
                              "'%.100s'",
                              key->s);
            break;
        }
        int64_t numel = (int64_t)msh_load_le64(cnt), nb;
        pos += 8;
        if (numel < 0 || !msh_mul_i64(numel, es, &nb) || nb > p->file_size - pos) {
            st = msh_fail(e, MSH_ERR_FORMAT,
                          "legacy torch file: storage '%.100s' of %lld "
                          "elements runs past the end of the file",
                          key->s, (long long)numel);
            break;
        }
        for (size_t i = 0; i < p->n_blobs; i++)
            if (strcmp(p->blobs[i].key, key->s) == 0)
                st = msh_fail(e, MSH_ERR_FORMAT,
                              "legacy torch file: storage '%.100s' listed "
                              "twice",
                              key->s);
        /* the key string lives in `keys`, freed below: the object's own copy is kept */
        const char *own = NULL;
        for (size_t i = 0; i < p->pk.n_all && !own; i++)
            if (p->pk.all[i]->type == MSH_PK_STORAGE && strcmp(p->pk.all[i]->s, key->s) == 0)
                own = p->pk.all[i]->s;
        p->blobs[p->n_blobs++] = (msh_pth_blob){own, pos, numel};
        pos += nb;
    }
    msh_pickle_free(&ver);
    msh_pickle_free(&sys);
    msh_pickle_free(&keys);
    return st;
}

/* ---- choosing the state dict ---- */

/* Storages by key: each tensor's reference is an object of its own, the key names the storage */
static int cmp_storage_key(const void *a, const void *b) {
    const msh_pk *x = *(const msh_pk *const *)a, *y = *(const msh_pk *const *)b;
    return strcmp(x->s ? x->s : "", y->s ? y->s : "");
}

/* The storages a candidate's tensors view, each once (tied weights view one). */
typedef struct sd_storages {
    const msh_pk **v;
    size_t n, cap;
} sd_storages;

static void count_sd(const msh_pk *d, msh_pth_cand *c, sd_storages *ss, int depth) {
    if (!d || depth > 64)
        return;
    if (d->type == MSH_PK_TENSOR) {
        int64_t n = 1;
        for (size_t i = 0; i < d->ndim; i++)
            if (!msh_mul_i64(n, d->shape[i], &n))
                return;
        c->tensors++;
        c->bytes += n * msh_dtype_size(d->dtype);
        if (!d->storage)
            return;
        if (ss->n == ss->cap) {
            size_t cap = ss->cap ? 2 * ss->cap : 64;
            const msh_pk **nv = realloc((void *)ss->v, cap * sizeof *nv);
            if (!nv)
                return; /* a count for inspect only: short of memory it stays low */
            ss->v = nv;
            ss->cap = cap;
        }
        ss->v[ss->n++] = d->storage;
        return;
    }
    if (d->type != MSH_PK_DICT)
        return;
    for (size_t i = 1; i < d->n; i += 2)
        count_sd(d->items[i], c, ss, depth + 1);
}

static void add_cand(msh_pth *p, const char *key, const msh_pk *sd, int chosen) {
    if (p->n_cand >= sizeof p->cand / sizeof p->cand[0])
        return;
    msh_pth_cand *c = &p->cand[p->n_cand++];
    memset(c, 0, sizeof *c);
    c->key = key;
    c->chosen = chosen;
    sd_storages ss = {NULL, 0, 0};
    count_sd(sd, c, &ss, 0);
    if (ss.n)
        qsort((void *)ss.v, ss.n, sizeof *ss.v, cmp_storage_key);
    for (size_t i = 0; i < ss.n; i++) {
        if (i && cmp_storage_key(&ss.v[i], &ss.v[i - 1]) == 0)
            continue;
        int64_t sb;
        c->storages++;
        if (ss.v[i]->i > 0 && msh_mul_i64(ss.v[i]->i, msh_dtype_size(ss.v[i]->dtype), &sb))
            c->storage_bytes += sb;
    }
    free((void *)ss.v);
}

static const char *const known_keys[] = {"model_state_dict", "state_dict", "model_state", "model",
                                         "module",           "net",        "network",     "ema",
                                         "model_ema"};

/* The value of a root key as a state dict: a dict of tensors, or a module's. */
static msh_status value_sd(mod_ctx *mc, const msh_pk *v, const msh_pk **sd, const msh_pk **mod) {
    *sd = NULL;
    *mod = NULL;
    if (tensor_dict(v)) {
        *sd = v;
        return MSH_OK;
    }
    msh_pk *m = NULL;
    MSH_FORWARD(as_module_sd(mc, v, &m));
    if (m && m->n) {
        *sd = m;
        *mod = v;
    }
    return MSH_OK;
}

/* The placeholder classes met: metadata for inspect. */
static msh_status list_classes(msh_pth *p, msh_error *e) {
    for (size_t i = 0; i < p->pk.n_all; i++) {
        const msh_pk *o = p->pk.all[i];
        if (o->type != MSH_PK_OBJECT || !o->s)
            continue;
        size_t k = 0;
        while (k < p->n_classes && strcmp(p->classes[k], o->s) != 0)
            k++;
        if (k == p->n_classes) {
            char **v = realloc(p->classes, (k + 1) * sizeof *v);
            int64_t *cnt = realloc(p->class_count, (k + 1) * sizeof *cnt);
            if (v)
                p->classes = v;
            if (cnt)
                p->class_count = cnt;
            if (!v || !cnt || !(p->classes[k] = msh_strdup(o->s)))
                return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            p->class_count[k] = 0;
            p->n_classes++;
        }
        p->class_count[k]++;
    }
    return MSH_OK;
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
    msh_status st;
    if (msh_pth_sniff(head, hn) == 2) {
        p->kind = MSH_PTH_LEGACY;
        MSH_FORWARD(legacy_open(p, e));
    } else if (hn >= 6 && memcmp(head, "ustar", 5) == 0) {
        return msh_fail(e, MSH_ERR_UNSUPPORTED, "a tar checkpoint (torch < 0.4) is not read");
    } else {
        MSH_FORWARD(msh_zip_open(&p->zip, p->fd, p->file_size, e));
        const msh_zip_entry *pk = msh_zip_find(&p->zip, "data.pkl");
        if (!pk)
            return msh_fail(e, MSH_ERR_FORMAT, "not a torch.save archive: no data.pkl");
        if (msh_zip_find(&p->zip, "constants.pkl") || msh_zip_find(&p->zip, "code/__torch__.py"))
            p->kind = MSH_PTH_TORCHSCRIPT;
        for (size_t i = 0; i < p->zip.n && p->kind != MSH_PTH_TORCHSCRIPT; i++)
            if (strncmp(p->zip.entries[i].name + strlen(p->zip.prefix), "code/", 5) == 0)
                p->kind = MSH_PTH_TORCHSCRIPT;
        uint8_t *buf = NULL;
        size_t blen = 0;
        st = msh_zip_read(&p->zip, pk, PTH_MAX_PICKLE, &buf, &blen, e);
        if (st == MSH_OK)
            st = msh_pickle_load(&p->pk, buf, blen, e);
        free(buf);
        MSH_FORWARD(st);
    }
    const msh_pk *root = p->pk.root;
    walk w = {p, e, 0, NULL, 0, 0};
    mod_ctx mc = {p, e, NULL, 0, 0};
    const msh_pk *sd = NULL, *mod = NULL;
    const char *chosen = NULL;
    st = MSH_OK;
    if (root && root->type == MSH_PK_OBJECT && !key) {
        /* torch.save(model), or a TorchScript archive: the module's own state dict */
        st = value_sd(&mc, root, &sd, &mod);
        if (sd) {
            chosen = "";
            p->root_class = root->s;
            add_cand(p, "", sd, 1);
        }
    } else if (flat_tensor_dict(root) && !key) {
        sd = root;
        chosen = "";
        add_cand(p, "", sd, 1);
    } else {
        /* the root's values that are state dicts: the user's key, else the first known key,
         * else the only one */
        const msh_pk *csd[16], *cmod[16];
        const char *ckey[16];
        size_t nc = 0;
        for (size_t i = 0; st == MSH_OK && root && root->type == MSH_PK_DICT && i + 1 < root->n;
             i += 2) {
            const msh_pk *k = root->items[i];
            const msh_pk *a = NULL, *b = NULL;
            if (k->type != MSH_PK_STR)
                continue;
            st = value_sd(&mc, root->items[i + 1], &a, &b);
            if (st == MSH_OK && a && nc < 16) {
                csd[nc] = a;
                cmod[nc] = b;
                ckey[nc++] = k->s;
            }
        }
        size_t pick = nc;
        if (st == MSH_OK && key) {
            for (size_t i = 0; i < nc && pick == nc; i++)
                if (strcmp(ckey[i], key) == 0)
                    pick = i;
            if (pick == nc)
                st = msh_fail(e, MSH_ERR_USAGE,
                              "state dict key '%s' names no dict of tensors or module in the "
                              "checkpoint",
                              key);
        }
        for (size_t k = 0;
             st == MSH_OK && !key && pick == nc && k < sizeof known_keys / sizeof known_keys[0];
             k++)
            for (size_t i = 0; i < nc && pick == nc; i++)
                if (strcmp(ckey[i], known_keys[k]) == 0)
                    pick = i;
        if (st == MSH_OK && !key && pick == nc && nc == 1)
            pick = 0;
        for (size_t i = 0; st == MSH_OK && i < nc; i++)
            add_cand(p, ckey[i], csd[i], i == pick);
        if (st == MSH_OK && pick < nc) {
            sd = csd[pick];
            mod = cmod[pick];
            chosen = ckey[pick];
        }
    }
    /* a state dict whose entries need a global this reader does not interpret is refused */
    if (st == MSH_OK && sd) {
        char where[4200] = "";
        const msh_pk *dep = dependent_leaf(sd, where, sizeof where, 0);
        if (dep)
            st = msh_fail(e, MSH_ERR_UNSAFE,
                          "state dict entry '%.200s' is built by '%.200s', which is not "
                          "interpreted (nothing was run)",
                          where, dep->s);
    }
    p->sd_key = st == MSH_OK && sd ? chosen : NULL;
    char *pathbuf = st == MSH_OK ? calloc(4097, 1) : NULL;
    if (st == MSH_OK && !pathbuf)
        st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    int module_root = mod && mod == root;
    if (st == MSH_OK && mod) {
        /* a module's state dict is not in the tree: walk it first, under its key; the rest of
         * the tree then adds only the tensors it did not take (non-persistent buffers, tensor
         * attributes), as other tensors */
        snprintf(pathbuf, 4097, "%s", chosen);
        size_t plen = strlen(pathbuf);
        w.mark = 1;
        st = walk_obj(&w, sd, pathbuf, plen, MSH_PTH_WEIGHTS, plen ? pathbuf + plen + 1 : pathbuf,
                      1);
        w.mark = 0;
        w.skip_marked = 1;
        pathbuf[0] = 0;
    } else if (st == MSH_OK) {
        w.sd = sd;
    }
    int bare = st == MSH_OK && sd && sd == root;
    if (st == MSH_OK)
        st = walk_obj(&w, root, pathbuf, 0, bare ? MSH_PTH_WEIGHTS : MSH_PTH_OTHER,
                      bare ? pathbuf : NULL, 0);
    free(pathbuf);
    if (bare || module_root) /* names inside the state dict are the whole names */
        for (size_t i = 0; i < p->nt; i++)
            if (p->t[i].cat == MSH_PTH_WEIGHTS)
                p->t[i].key = p->t[i].name;
    for (size_t i = 0; st == MSH_OK && i < p->nt; i++) {
        describe(p, &p->t[i]);
        p->t[i].d.users = p->s[p->t[i].storage].users; /* the views of its storage */
    }
    if (st == MSH_OK)
        st = list_classes(p, e);
    ts_classes_free(&mc);
    return st;
}

msh_table msh_pth_table(const msh_pth *p) {
    msh_table t = {p->t ? &p->t[0].d : NULL, p->nt, sizeof(msh_pth_tensor)};
    return t;
}

void msh_pth_top_keys(const msh_pth *p, char *keys, size_t cap) {
    keys[0] = 0;
    if (p->n_cand >= 2) {
        snprintf(keys, cap, "several state dicts:");
        for (size_t i = 0; i < p->n_cand && strlen(keys) + 80 < cap; i++) {
            char b[32];
            snprintf(keys + strlen(keys), cap - strlen(keys), "%s '%.40s' (%lld %s, %s)",
                     i ? "," : "", p->cand[i].key, (long long)p->cand[i].tensors,
                     msh_plural(p->cand[i].tensors, "tensor", "tensors"),
                     msh_fmt_bytes(p->cand[i].bytes, b, sizeof b));
        }
        return;
    }
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
    free(p->blobs);
    for (size_t i = 0; i < p->n_classes; i++)
        free(p->classes[i]);
    free(p->classes);
    free(p->class_count);
    msh_pickle_free(&p->pk);
    msh_zip_free(&p->zip);
    if (p->fd > 0)
        close(p->fd);
    memset(p, 0, sizeof *p);
}
