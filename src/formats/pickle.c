#include "formats/pickle.h"

#include <stdio.h>
#include <stdlib.h>

#define PK_MAX_STACK 1000000
#define PK_MAX_MEMO 10000000
#define PK_MAX_DEPTH 1000

typedef struct vm {
    msh_pickle *p;
    const uint8_t *b;
    size_t len, pos;
    msh_pk **st;
    size_t sn, scap;
    msh_pk **memo;
    size_t mcap;
    msh_error *e;
} vm;

static msh_pk *new_obj(vm *v, msh_pk_type t) {
    msh_pickle *p = v->p;
    if (!msh_grow((void **)&p->all, &p->cap_all, p->n_all, sizeof *p->all))
        return NULL;
    msh_pk *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    o->type = t;
    p->all[p->n_all++] = o;
    return o;
}

static msh_status oom(vm *v) {
    return msh_fail(v->e, MSH_ERR_NOMEM, "out of memory reading the pickle");
}

static msh_status push(vm *v, msh_pk *o) {
    if (!o)
        return oom(v);
    if (v->sn >= PK_MAX_STACK)
        return msh_fail(v->e, MSH_ERR_LIMIT, "pickle stack deeper than %d", PK_MAX_STACK);
    if (!msh_grow((void **)&v->st, &v->scap, v->sn, sizeof *v->st))
        return oom(v);
    v->st[v->sn++] = o;
    return MSH_OK;
}

static msh_status pop(vm *v, msh_pk **o) {
    if (v->sn == 0 || v->st[v->sn - 1]->type == MSH_PK_MARK)
        return msh_fail(v->e, MSH_ERR_FORMAT, "pickle stack underflow at offset %zu", v->pos);
    *o = v->st[--v->sn];
    return MSH_OK;
}

static msh_status top(vm *v, msh_pk **o) {
    if (v->sn == 0 || v->st[v->sn - 1]->type == MSH_PK_MARK)
        return msh_fail(v->e, MSH_ERR_FORMAT, "pickle stack underflow at offset %zu", v->pos);
    *o = v->st[v->sn - 1];
    return MSH_OK;
}

/* Index of the topmost MARK. */
static msh_status find_mark(vm *v, size_t *at) {
    for (size_t i = v->sn; i-- > 0;)
        if (v->st[i]->type == MSH_PK_MARK) {
            *at = i;
            return MSH_OK;
        }
    return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: no MARK at offset %zu", v->pos);
}

static msh_status add_item(vm *v, msh_pk *c, msh_pk *x) {
    if (!msh_grow((void **)&c->items, &c->cap, c->n, sizeof *c->items))
        return oom(v);
    c->items[c->n++] = x;
    return MSH_OK;
}

static msh_status need(vm *v, size_t n) {
    if (v->len - v->pos < n) {
        v->p->truncated = 1;
        return msh_fail(v->e, MSH_ERR_FORMAT, "pickle truncated at offset %zu", v->pos);
    }
    return MSH_OK;
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t r = 0;
    for (int i = n - 1; i >= 0; i--)
        r = (r << 8) | p[i];
    return r;
}

static msh_status push_str(vm *v, msh_pk_type t, size_t n) {
    MSH_FORWARD(need(v, n));
    msh_pk *o = new_obj(v, t);
    if (!o || !(o->s = malloc(n + 1)))
        return oom(v);
    memcpy(o->s, v->b + v->pos, n);
    o->s[n] = 0;
    o->len = n;
    v->pos += n;
    return push(v, o);
}

static msh_status memo_put(vm *v, uint64_t idx) {
    msh_pk *o = NULL;
    MSH_FORWARD(top(v, &o));
    /* A pickle writes memo slots in order, one per opcode at most: an index beyond the
     * pickle's length is a lie that would only make us allocate (8 bytes per slot). */
    if (idx >= PK_MAX_MEMO || idx > v->len)
        return msh_fail(v->e, MSH_ERR_LIMIT, "pickle memo index %llu out of range",
                        (unsigned long long)idx);
    if (idx >= v->mcap) {
        size_t cap = v->mcap ? v->mcap : 256;
        while (cap <= idx)
            cap *= 2;
        msh_pk **m = realloc(v->memo, cap * sizeof *m);
        if (!m)
            return oom(v);
        memset(m + v->mcap, 0, (cap - v->mcap) * sizeof *m);
        v->memo = m;
        v->mcap = cap;
    }
    v->memo[idx] = o;
    return MSH_OK;
}

static msh_status memo_get(vm *v, uint64_t idx) {
    if (idx >= v->mcap || !v->memo[idx])
        return msh_fail(v->e, MSH_ERR_FORMAT, "pickle memo index %llu is not set",
                        (unsigned long long)idx);
    return push(v, v->memo[idx]);
}

/* ---- the allowlist ---- */

static int32_t storage_dtype(const char *name) {
    static const struct {
        const char *n;
        int32_t t;
    } map[] = {{"FloatStorage", 1},         {"HalfStorage", 10},   {"BFloat16Storage", 16},
               {"DoubleStorage", 11},       {"LongStorage", 7},    {"IntStorage", 6},
               {"ShortStorage", 5},         {"CharStorage", 3},    {"ByteStorage", 2},
               {"BoolStorage", 9},          {"UntypedStorage", 2}, {"ComplexFloatStorage", 14},
               {"ComplexDoubleStorage", 15}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(name, map[i].n) == 0)
            return map[i].t;
    return 0;
}

static int32_t dtype_code(const char *name) {
    static const struct {
        const char *n;
        int32_t t;
    } map[] = {{"float32", 1},    {"float", 1},      {"float16", 10}, {"half", 10},
               {"bfloat16", 16},  {"float64", 11},   {"double", 11},  {"int64", 7},
               {"long", 7},       {"int32", 6},      {"int", 6},      {"int16", 5},
               {"short", 5},      {"int8", 3},       {"uint8", 2},    {"bool", 9},
               {"complex64", 14}, {"complex128", 15}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(name, map[i].n) == 0)
            return map[i].t;
    return 0;
}

/* 1 when `module name` may appear; everything the reader can interpret, nothing else. */
static int allowed(const char *mod, const char *name) {
    if (strcmp(mod, "collections") == 0)
        return strcmp(name, "OrderedDict") == 0;
    if (strcmp(mod, "torch._utils") == 0)
        return strcmp(name, "_rebuild_tensor_v2") == 0 || strcmp(name, "_rebuild_tensor_v3") == 0 ||
               strcmp(name, "_rebuild_parameter") == 0 ||
               strcmp(name, "_rebuild_parameter_with_state") == 0;
    if (strcmp(mod, "torch") == 0)
        return storage_dtype(name) != 0 || dtype_code(name) != 0 || strcmp(name, "Size") == 0;
    if (strcmp(mod, "torch.storage") == 0)
        return strcmp(name, "UntypedStorage") == 0 || strcmp(name, "TypedStorage") == 0;
    if (strcmp(mod, "_codecs") == 0)
        return strcmp(name, "encode") == 0;
    if (strcmp(mod, "builtins") == 0 || strcmp(mod, "__builtin__") == 0)
        return strcmp(name, "set") == 0 || strcmp(name, "frozenset") == 0 ||
               strcmp(name, "slice") == 0 || strcmp(name, "complex") == 0;
    return 0;
}

/* 1 when `module name` runs code or reaches the system: refused wherever it appears. */
static int dangerous(const char *mod, const char *name) {
    static const char *const mods[] = {"os",
                                       "posix",
                                       "nt",
                                       "subprocess",
                                       "sys",
                                       "runpy",
                                       "shutil",
                                       "socket",
                                       "pty",
                                       "ctypes",
                                       "pickle",
                                       "_pickle",
                                       "marshal",
                                       "functools",
                                       "operator",
                                       "code",
                                       "codeop",
                                       "webbrowser",
                                       "importlib",
                                       "commands",
                                       "platform",
                                       "signal",
                                       "multiprocessing",
                                       "asyncio",
                                       "threading",
                                       "_thread",
                                       "io",
                                       "tempfile"};
    static const char *const calls[] = {"torch.storage _load_from_bytes",
                                        "torch._utils _rebuild_device_tensor_from_numpy",
                                        "torch.serialization load",
                                        "torch load",
                                        "torch.hub load",
                                        "numpy.testing._private.utils runstring",
                                        "pydoc pipepager",
                                        "pydoc locate"};
    /* builtins that run code, reach files or change objects; the rest (getattr, which enums
     * pickle through, int, list, ...) are inert names like any other */
    static const char *const builtins[] = {
        "eval",    "exec",     "compile", "open",    "__import__", "breakpoint", "input",
        "exit",    "quit",     "help",    "globals", "locals",     "vars",       "setattr",
        "delattr", "execfile", "reload",  "file",    "memoryview"};
    if (strcmp(mod, "builtins") == 0 || strcmp(mod, "__builtin__") == 0) {
        for (size_t i = 0; i < sizeof builtins / sizeof builtins[0]; i++)
            if (strcmp(name, builtins[i]) == 0)
                return 1;
        return 0;
    }
    char full[260];
    snprintf(full, sizeof full, "%s %s", mod, name);
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++)
        if (strcmp(full, calls[i]) == 0)
            return 1;
    for (size_t i = 0; i < sizeof mods / sizeof mods[0]; i++) {
        size_t k = strlen(mods[i]);
        if (strncmp(mod, mods[i], k) == 0 && (mod[k] == 0 || mod[k] == '.'))
            return 1;
    }
    return 0;
}

static msh_status global(vm *v, const char *mod, const char *name) {
    int ok = allowed(mod, name);
    if (!ok && dangerous(mod, name))
        return msh_fail(v->e, MSH_ERR_UNSAFE,
                        "refused: pickle calls GLOBAL '%.100s %.100s', which runs code or "
                        "reaches the system (nothing was run)",
                        mod, name);
    msh_pk *o = new_obj(v, ok ? MSH_PK_GLOBAL : MSH_PK_CLASS);
    size_t n = strlen(mod) + strlen(name) + 2;
    if (!o || !(o->s = malloc(n)))
        return oom(v);
    snprintf(o->s, n, "%s %s", mod, name);
    if (strcmp(mod, "torch") == 0 && dtype_code(name)) {
        o->type = MSH_PK_DTYPE;
        o->i = dtype_code(name);
    }
    return push(v, o);
}

static int is(const msh_pk *g, const char *full) {
    return g->type == MSH_PK_GLOBAL && strcmp(g->s, full) == 0;
}

static int64_t as_int(const msh_pk *o, int *ok) {
    if (o && (o->type == MSH_PK_INT || o->type == MSH_PK_BOOL))
        return o->i;
    *ok = 0;
    return 0;
}

static msh_status int_list(vm *v, const msh_pk *t, int64_t **out, size_t *n) {
    if (!t || (t->type != MSH_PK_TUPLE && t->type != MSH_PK_LIST))
        return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: tensor size/stride is not a tuple");
    *out = malloc((t->n + 1) * sizeof **out);
    if (!*out)
        return oom(v);
    int ok = 1;
    for (size_t i = 0; i < t->n; i++) {
        (*out)[i] = as_int(t->items[i], &ok);
        if ((*out)[i] < 0)
            ok = 0;
    }
    *n = t->n;
    return ok ? MSH_OK : msh_fail(v->e, MSH_ERR_FORMAT, "pickle: bad tensor size or stride");
}

/* An inert instance of placeholder `cls` (a CLASS, or an OBJECT being called). */
static msh_status make_object(vm *v, const msh_pk *cls, msh_pk *args) {
    msh_pk *o = new_obj(v, MSH_PK_OBJECT);
    msh_pk *none = o ? new_obj(v, MSH_PK_NONE) : NULL;
    /* getattr(SomeEnum, 'MEMBER'), how enums pickle: named by the class it comes from */
    if (cls->type == MSH_PK_CLASS &&
        (strcmp(cls->s, "builtins getattr") == 0 || strcmp(cls->s, "__builtin__ getattr") == 0) &&
        args->type == MSH_PK_TUPLE && args->n >= 1 && args->items[0]->type == MSH_PK_CLASS)
        cls = args->items[0];
    if (!o || !none || !(o->s = msh_strdup(cls->s)))
        return oom(v);
    MSH_FORWARD(add_item(v, o, args));
    MSH_FORWARD(add_item(v, o, none));
    return push(v, o);
}

/* REDUCE/NEWOBJ: an allowed global is interpreted, a placeholder makes an inert object; nothing
 * is ever called. */
static msh_status apply(vm *v, msh_pk *f, msh_pk *args) {
    if (f->type == MSH_PK_CLASS || f->type == MSH_PK_OBJECT)
        return make_object(v, f, args);
    if (f->type != MSH_PK_GLOBAL || args->type != MSH_PK_TUPLE)
        return msh_fail(v->e, MSH_ERR_UNSAFE,
                        "refused: pickle REDUCE on something that is not "
                        "a global");
    if (is(f, "builtins slice") || is(f, "__builtin__ slice") || is(f, "builtins complex") ||
        is(f, "__builtin__ complex")) {
        /* metadata values: kept as their argument tuple */
        return push(v, args);
    }
    if (is(f, "collections OrderedDict") || is(f, "builtins set") || is(f, "builtins frozenset") ||
        is(f, "__builtin__ set") || is(f, "__builtin__ frozenset")) {
        msh_pk *d = new_obj(v, is(f, "collections OrderedDict") ? MSH_PK_DICT : MSH_PK_SET);
        if (d && args->n == 1 && args->items[0]->type == MSH_PK_LIST)
            for (size_t i = 0; i < args->items[0]->n; i++)
                MSH_FORWARD(add_item(v, d, args->items[0]->items[i]));
        return push(v, d);
    }
    if (is(f, "torch Size"))
        return push(v, args->n ? args->items[0] : new_obj(v, MSH_PK_TUPLE));
    if (is(f, "_codecs encode")) {
        /* bytes pickled by protocol 2 as a latin-1 string */
        if (args->n < 1 || args->items[0]->type != MSH_PK_STR)
            return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: bad _codecs.encode");
        msh_pk *b = new_obj(v, MSH_PK_BYTES);
        if (!b)
            return oom(v);
        const uint8_t *s = (const uint8_t *)args->items[0]->s;
        b->s = malloc(args->items[0]->len + 1);
        if (!b->s)
            return oom(v);
        size_t k = 0;
        for (size_t i = 0; i < args->items[0]->len; i++) {
            uint32_t c = s[i];
            if (c >= 0xC0 && i + 1 < args->items[0]->len) /* UTF-8 of a latin-1 code point */
                c = ((c & 0x1F) << 6) | (s[++i] & 0x3F);
            b->s[k++] = (char)c;
        }
        b->len = k;
        return push(v, b);
    }
    if (is(f, "torch._utils _rebuild_parameter") ||
        is(f, "torch._utils _rebuild_parameter_with_state")) {
        if (args->n < 1)
            return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: bad _rebuild_parameter");
        return push(v, args->items[0]);
    }
    if (is(f, "torch._utils _rebuild_tensor_v2") || is(f, "torch._utils _rebuild_tensor_v3")) {
        if (args->n < 4 || args->items[0]->type != MSH_PK_STORAGE)
            return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: bad _rebuild_tensor arguments");
        if (!args->items[0]->dtype)
            return msh_fail(v->e, MSH_ERR_UNSUPPORTED,
                            "pickle: a tensor over storage '%.100s' of an unknown storage class",
                            args->items[0]->s);
        msh_pk *t = new_obj(v, MSH_PK_TENSOR);
        if (!t)
            return oom(v);
        int ok = 1;
        t->storage = args->items[0];
        t->dtype = t->storage->dtype;
        t->offset = as_int(args->items[1], &ok);
        if (!msh_add_i64(t->offset, t->storage->offset, &t->offset)) /* legacy views */
            ok = 0;
        MSH_FORWARD(int_list(v, args->items[2], &t->shape, &t->ndim));
        size_t ns;
        MSH_FORWARD(int_list(v, args->items[3], &t->stride, &ns));
        if (!ok || t->offset < 0 || ns != t->ndim)
            return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: bad tensor offset or stride");
        if (is(f, "torch._utils _rebuild_tensor_v3") && args->n >= 7 &&
            args->items[6]->type == MSH_PK_DTYPE)
            t->dtype = (int32_t)args->items[6]->i;
        return push(v, t);
    }
    return msh_fail(v->e, MSH_ERR_UNSAFE,
                    "refused: pickle calls '%.200s', which only names a "
                    "class or type",
                    f->s);
}

static msh_status persistent(vm *v, msh_pk *pid) {
    /* ('storage', <storage class>, key, location, numel) */
    if (pid->type != MSH_PK_TUPLE || pid->n < 5 || pid->items[0]->type != MSH_PK_STR ||
        strcmp(pid->items[0]->s, "storage") != 0 ||
        (pid->items[1]->type != MSH_PK_GLOBAL && pid->items[1]->type != MSH_PK_CLASS) ||
        pid->items[2]->type != MSH_PK_STR)
        return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: unsupported persistent id");
    const char *cls = strchr(pid->items[1]->s, ' ');
    msh_pk *s = new_obj(v, MSH_PK_STORAGE);
    if (!s || !(s->s = msh_strdup(pid->items[2]->s)))
        return oom(v);
    /* a storage class this reader does not know (QUInt8Storage, ...) keeps dtype 0: a tensor
     * rebuilt over it is refused where it is used */
    s->dtype = cls && pid->items[1]->type == MSH_PK_GLOBAL ? storage_dtype(cls + 1) : 0;
    int ok = 1;
    s->i = as_int(pid->items[4], &ok);
    if (!ok || s->i < 0)
        return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: bad storage reference '%.100s'", s->s);
    /* the legacy format's view_metadata (view_key, offset, size): a view of the root storage */
    if (pid->n >= 6 && pid->items[5]->type == MSH_PK_TUPLE) {
        const msh_pk *vm6 = pid->items[5];
        int64_t off = vm6->n == 3 ? as_int(vm6->items[1], &ok) : -1;
        int64_t size = vm6->n == 3 ? as_int(vm6->items[2], &ok) : -1;
        if (!ok || off < 0 || size < 0 || off > s->i || size > s->i - off)
            return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: bad storage view of '%.100s'", s->s);
        s->offset = off;
    }
    return push(v, s);
}

/* Items added to a placeholder object (a dict or list subclass: omegaconf's containers) go to
 * its contents, items[2], made on first use. */
static msh_status contents(vm *v, msh_pk **target, msh_pk_type want) {
    msh_pk *o = *target;
    if (o->type != MSH_PK_OBJECT)
        return MSH_OK;
    if (o->n == 2) {
        msh_pk *c = new_obj(v, want);
        if (!c)
            return oom(v);
        MSH_FORWARD(add_item(v, o, c));
    }
    if (o->n != 3 || o->items[2]->type != want)
        return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: an object gets both items and entries");
    *target = o->items[2];
    return MSH_OK;
}

static msh_status collect(vm *v, msh_pk_type t) {
    size_t m = 0;
    MSH_FORWARD(find_mark(v, &m));
    msh_pk *o = new_obj(v, t);
    if (!o)
        return oom(v);
    for (size_t i = m + 1; i < v->sn; i++)
        MSH_FORWARD(add_item(v, o, v->st[i]));
    v->sn = m;
    return push(v, o);
}

static msh_status small_tuple(vm *v, size_t n) {
    if (v->sn < n)
        return msh_fail(v->e, MSH_ERR_FORMAT, "pickle stack underflow at offset %zu", v->pos);
    msh_pk *o = new_obj(v, MSH_PK_TUPLE);
    if (!o)
        return oom(v);
    for (size_t i = v->sn - n; i < v->sn; i++) {
        if (v->st[i]->type == MSH_PK_MARK)
            return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: MARK inside a tuple");
        MSH_FORWARD(add_item(v, o, v->st[i]));
    }
    v->sn -= n;
    return push(v, o);
}

static msh_status run(vm *v) {
    for (;;) {
        MSH_FORWARD(need(v, 1));
        size_t at = v->pos;
        uint8_t op = v->b[v->pos++];
        msh_pk *a = NULL, *b = NULL, *c = NULL;
        switch (op) {
        case 0x80: /* PROTO */
            MSH_FORWARD(need(v, 1));
            if (v->b[v->pos] > 5)
                return msh_fail(v->e, MSH_ERR_FORMAT, "pickle protocol %u is not supported",
                                v->b[v->pos]);
            v->pos++;
            break;
        case 0x95: /* FRAME */
            MSH_FORWARD(need(v, 8));
            v->pos += 8;
            break;
        case '.': /* STOP */ return pop(v, &v->p->root);
        case '(': MSH_FORWARD(push(v, new_obj(v, MSH_PK_MARK))); break;
        case 'N': MSH_FORWARD(push(v, new_obj(v, MSH_PK_NONE))); break;
        case 0x88:
        case 0x89: {
            msh_pk *o = new_obj(v, MSH_PK_BOOL);
            if (o)
                o->i = op == 0x88;
            MSH_FORWARD(push(v, o));
            break;
        }
        case 'J':
        case 'K':
        case 'M': {
            int n = op == 'J' ? 4 : op == 'K' ? 1 : 2;
            MSH_FORWARD(need(v, (size_t)n));
            msh_pk *o = new_obj(v, MSH_PK_INT);
            if (o)
                o->i = op == 'J' ? (int32_t)(uint32_t)le(v->b + v->pos, 4)
                                 : (int64_t)le(v->b + v->pos, n);
            v->pos += (size_t)n;
            MSH_FORWARD(push(v, o));
            break;
        }
        case 0x8a:   /* LONG1 */
        case 0x8b: { /* LONG4 */
            size_t n;
            if (op == 0x8a) {
                MSH_FORWARD(need(v, 1));
                n = v->b[v->pos++];
            } else {
                MSH_FORWARD(need(v, 4));
                n = (size_t)le(v->b + v->pos, 4);
                v->pos += 4;
            }
            MSH_FORWARD(need(v, n));
            if (n > ((size_t)1 << 20))
                return msh_fail(v->e, MSH_ERR_LIMIT, "pickle integer of %zu bytes", n);
            /* wider than 64 bits: metadata (no size or offset is that large); kept as 0 */
            uint64_t u = n && n <= 8 ? le(v->b + v->pos, (int)n) : 0;
            if (n && n < 8 && (v->b[v->pos + n - 1] & 0x80))
                u |= ~(uint64_t)0 << (8 * n); /* sign-extend */
            msh_pk *o = new_obj(v, MSH_PK_INT);
            if (o)
                o->i = (int64_t)u;
            v->pos += n;
            MSH_FORWARD(push(v, o));
            break;
        }
        case 'G': { /* BINFLOAT, big-endian */
            MSH_FORWARD(need(v, 8));
            uint64_t u = 0;
            for (int i = 0; i < 8; i++)
                u = (u << 8) | v->b[v->pos + (size_t)i];
            v->pos += 8;
            msh_pk *o = new_obj(v, MSH_PK_FLOAT);
            if (o)
                memcpy(&o->f, &u, 8);
            MSH_FORWARD(push(v, o));
            break;
        }
        case 'X':
        case 'T':
        case 'B': {
            MSH_FORWARD(need(v, 4));
            size_t n = (size_t)le(v->b + v->pos, 4);
            v->pos += 4;
            MSH_FORWARD(push_str(v, op == 'B' ? MSH_PK_BYTES : MSH_PK_STR, n));
            break;
        }
        case 0x8c:
        case 'U':
        case 'C': {
            MSH_FORWARD(need(v, 1));
            size_t n = v->b[v->pos++];
            MSH_FORWARD(push_str(v, op == 'C' ? MSH_PK_BYTES : MSH_PK_STR, n));
            break;
        }
        case 0x8d:
        case 0x8e:
        case 0x96: {
            MSH_FORWARD(need(v, 8));
            uint64_t n = le(v->b + v->pos, 8);
            v->pos += 8;
            if (n > v->len) {
                v->p->truncated = 1;
                return msh_fail(v->e, MSH_ERR_FORMAT, "pickle string longer than the pickle");
            }
            MSH_FORWARD(push_str(v, op == 0x8d ? MSH_PK_STR : MSH_PK_BYTES, (size_t)n));
            break;
        }
        case '}': MSH_FORWARD(push(v, new_obj(v, MSH_PK_DICT))); break;
        case ']': MSH_FORWARD(push(v, new_obj(v, MSH_PK_LIST))); break;
        case ')': MSH_FORWARD(push(v, new_obj(v, MSH_PK_TUPLE))); break;
        case 0x8f: MSH_FORWARD(push(v, new_obj(v, MSH_PK_SET))); break;
        case 't': MSH_FORWARD(collect(v, MSH_PK_TUPLE)); break;
        case 'l': MSH_FORWARD(collect(v, MSH_PK_LIST)); break;
        case 0x91: MSH_FORWARD(collect(v, MSH_PK_SET)); break;
        case 0x85: MSH_FORWARD(small_tuple(v, 1)); break;
        case 0x86: MSH_FORWARD(small_tuple(v, 2)); break;
        case 0x87: MSH_FORWARD(small_tuple(v, 3)); break;
        case 'q':
            MSH_FORWARD(need(v, 1));
            MSH_FORWARD(memo_put(v, v->b[v->pos++]));
            break;
        case 'r':
            MSH_FORWARD(need(v, 4));
            MSH_FORWARD(memo_put(v, le(v->b + v->pos, 4)));
            v->pos += 4;
            break;
        case 0x94: { /* MEMOIZE */
            size_t idx = 0;
            while (idx < v->mcap && v->memo[idx])
                idx++;
            MSH_FORWARD(memo_put(v, idx));
            break;
        }
        case 'h':
            MSH_FORWARD(need(v, 1));
            MSH_FORWARD(memo_get(v, v->b[v->pos++]));
            break;
        case 'j':
            MSH_FORWARD(need(v, 4));
            MSH_FORWARD(memo_get(v, le(v->b + v->pos, 4)));
            v->pos += 4;
            break;
        case 'a': /* APPEND */
            MSH_FORWARD(pop(v, &a));
            MSH_FORWARD(top(v, &b));
            MSH_FORWARD(contents(v, &b, MSH_PK_LIST));
            if (b->type != MSH_PK_LIST)
                return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: APPEND to a non-list");
            MSH_FORWARD(add_item(v, b, a));
            break;
        case 'e':    /* APPENDS */
        case 'u':    /* SETITEMS */
        case 0x90: { /* ADDITEMS */
            size_t m = 0;
            MSH_FORWARD(find_mark(v, &m));
            if (m == 0)
                return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: nothing to add to");
            c = v->st[m - 1];
            msh_pk_type want = op == 'u' ? MSH_PK_DICT : op == 'e' ? MSH_PK_LIST : MSH_PK_SET;
            MSH_FORWARD(contents(v, &c, want));
            if (c->type != want)
                return msh_fail(v->e, MSH_ERR_FORMAT,
                                "pickle: items added to the wrong type at "
                                "offset %zu",
                                at);
            if (op == 'u' && (v->sn - m - 1) % 2)
                return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: odd SETITEMS");
            for (size_t i = m + 1; i < v->sn; i++)
                MSH_FORWARD(add_item(v, c, v->st[i]));
            v->sn = m;
            break;
        }
        case 's': /* SETITEM */
            MSH_FORWARD(pop(v, &a));
            MSH_FORWARD(pop(v, &b));
            MSH_FORWARD(top(v, &c));
            MSH_FORWARD(contents(v, &c, MSH_PK_DICT));
            if (c->type != MSH_PK_DICT)
                return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: SETITEM on a non-dict");
            MSH_FORWARD(add_item(v, c, b));
            MSH_FORWARD(add_item(v, c, a));
            break;
        case 'i':   /* INST "module\nname\n": builds an instance, which torch never writes */
        case 'c': { /* GLOBAL "module\nname\n" */
            const uint8_t *s = v->b + v->pos, *end = v->b + v->len;
            const uint8_t *n1 = memchr(s, '\n', (size_t)(end - s));
            const uint8_t *n2 = n1 ? memchr(n1 + 1, '\n', (size_t)(end - n1 - 1)) : NULL;
            if (!n2 || n1 - s > 200 || n2 - n1 > 200)
                return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: bad GLOBAL at offset %zu", at);
            char mod[256], name[256];
            memcpy(mod, s, (size_t)(n1 - s));
            mod[n1 - s] = 0;
            memcpy(name, n1 + 1, (size_t)(n2 - n1 - 1));
            name[n2 - n1 - 1] = 0;
            v->pos = (size_t)(n2 + 1 - v->b);
            if (op == 'i')
                return msh_fail(v->e, MSH_ERR_UNSAFE,
                                "refused: pickle calls GLOBAL '%.100s "
                                "%.100s' through INST, which torch.save never writes",
                                mod, name);
            MSH_FORWARD(global(v, mod, name));
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            MSH_FORWARD(pop(v, &a));
            MSH_FORWARD(pop(v, &b));
            if (a->type != MSH_PK_STR || b->type != MSH_PK_STR)
                return msh_fail(v->e, MSH_ERR_FORMAT, "pickle: bad STACK_GLOBAL");
            MSH_FORWARD(global(v, b->s, a->s));
            break;
        case 'Q': /* BINPERSID */
            MSH_FORWARD(pop(v, &a));
            MSH_FORWARD(persistent(v, a));
            break;
        case 'R':  /* REDUCE */
        case 0x81: /* NEWOBJ */
            MSH_FORWARD(pop(v, &a));
            MSH_FORWARD(pop(v, &b));
            MSH_FORWARD(apply(v, b, a));
            break;
        case 0x92: /* NEWOBJ_EX: cls, args, kwargs; only placeholders are built this way */
            MSH_FORWARD(pop(v, &c));
            MSH_FORWARD(pop(v, &a));
            MSH_FORWARD(pop(v, &b));
            if (b->type != MSH_PK_CLASS)
                return msh_fail(v->e, MSH_ERR_UNSAFE, "refused: pickle NEWOBJ_EX on '%.200s'",
                                b->s ? b->s : "?");
            MSH_FORWARD(make_object(v, b, a));
            break;
        case 'b': /* BUILD: a placeholder object keeps its state; state set on a dict (a
                     state_dict's _metadata) or a tensor is dropped */
            MSH_FORWARD(pop(v, &a));
            MSH_FORWARD(top(v, &b));
            if (b->type == MSH_PK_OBJECT && b->n >= 2) {
                b->items[1] = a;
                break;
            }
            if (b->type != MSH_PK_DICT && b->type != MSH_PK_TENSOR)
                return msh_fail(v->e, MSH_ERR_UNSAFE, "refused: pickle BUILD on a %s object",
                                b->type == MSH_PK_GLOBAL || b->type == MSH_PK_CLASS ? "class"
                                                                                    : "non-dict");
            break;
        case '0': MSH_FORWARD(pop(v, &a)); break; /* POP */
        case '1': {                               /* POP_MARK */
            size_t m = 0;
            MSH_FORWARD(find_mark(v, &m));
            v->sn = m;
            break;
        }
        case '2': /* DUP */
            MSH_FORWARD(top(v, &a));
            MSH_FORWARD(push(v, a));
            break;
        default:
            return msh_fail(v->e, MSH_ERR_UNSAFE,
                            "refused: pickle opcode 0x%02x at offset %zu is "
                            "not one torch.save writes",
                            op, at);
        }
    }
}

/* Container nesting, checked once the tree is built (it may be cyclic through the memo). */
static msh_status depth_ok(msh_pk *o, int depth, msh_error *e) {
    if (depth > PK_MAX_DEPTH)
        return msh_fail(e, MSH_ERR_LIMIT, "pickle nested deeper than %d (or cyclic)", PK_MAX_DEPTH);
    if (o->checked >= depth + 1)
        return MSH_OK; /* passed already from as deep or deeper: a shared subtree, not re-walked */
    for (size_t i = 0; i < o->n; i++)
        MSH_FORWARD(depth_ok(o->items[i], depth + 1, e));
    o->checked = depth + 1;
    return MSH_OK;
}

msh_status msh_pickle_load_prefix(msh_pickle *p, const uint8_t *buf, size_t len, size_t *used,
                                  msh_error *e) {
    memset(p, 0, sizeof *p);
    vm v;
    memset(&v, 0, sizeof v);
    v.p = p;
    v.b = buf;
    v.len = len;
    v.e = e;
    msh_status st = run(&v);
    free(v.st);
    free(v.memo);
    if (st == MSH_OK)
        st = depth_ok(p->root, 0, e);
    if (used)
        *used = v.pos;
    return st;
}

msh_status msh_pickle_load(msh_pickle *p, const uint8_t *buf, size_t len, msh_error *e) {
    size_t used = 0;
    MSH_FORWARD(msh_pickle_load_prefix(p, buf, len, &used, e));
    if (used != len)
        return msh_fail(e, MSH_ERR_FORMAT, "pickle: %zu bytes after its STOP", len - used);
    return MSH_OK;
}

const msh_pk *msh_pk_object_state(const msh_pk *o) {
    if (!o || o->type != MSH_PK_OBJECT || o->n < 2 || o->items[1]->type == MSH_PK_NONE)
        return NULL;
    return o->items[1];
}

void msh_pickle_free(msh_pickle *p) {
    for (size_t i = 0; i < p->n_all; i++) {
        msh_pk *o = p->all[i];
        free(o->s);
        free(o->items);
        free(o->shape);
        free(o->stride);
        free(o);
    }
    free(p->all);
    memset(p, 0, sizeof *p);
}

msh_pk *msh_pk_dict_get(const msh_pk *d, const char *key) {
    if (!d || d->type != MSH_PK_DICT)
        return NULL;
    for (size_t i = 0; i + 1 < d->n; i += 2)
        if (d->items[i]->type == MSH_PK_STR && strcmp(d->items[i]->s, key) == 0)
            return d->items[i + 1];
    return NULL;
}

msh_pk *msh_pk_new(msh_pickle *p, msh_pk_type t) {
    if (!msh_grow((void **)&p->all, &p->cap_all, p->n_all, sizeof *p->all))
        return NULL;
    msh_pk *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    o->type = t;
    p->all[p->n_all++] = o;
    return o;
}

int msh_pk_append(msh_pk *c, msh_pk *x) {
    if (!msh_grow((void **)&c->items, &c->cap, c->n, sizeof *c->items))
        return 0;
    c->items[c->n++] = x;
    return 1;
}
