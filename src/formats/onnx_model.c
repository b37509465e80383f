/*
 * Opening an ONNX model: scan to a skeleton, unpack it with protobuf-c, walk every tensor.
 *
 * Checks made here, each failing with a message naming the tensor:
 *   - the skeleton unpacks as a ModelProto that has a graph;
 *   - dims are non-negative and the element and byte counts do not overflow int64;
 *   - raw_data length equals the shape's byte size; typed fields hold exactly numel values;
 *   - external data: `location` is relative, non-empty, has no backslash, stays inside the
 *     model's folder after normalisation, passes through no symbolic link and names a regular
 *     file; offset and length are decimal integers, length equals the tensor's byte size and
 *     offset + length lies within the file.
 */
#include "formats/onnx_model.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/msh_io.h"
#include "common/msh_strmap.h"

msh_status msh_onnx_add_payload(msh_onnx_model *m, int src, int64_t off, int64_t len, size_t *idx,
                                msh_error *e);

const char *msh_onnx_loc_name(msh_tensor_loc l) {
    switch (l) {
    case MSH_LOC_INITIALIZER: return "initializer";
    case MSH_LOC_CONSTANT: return "constant";
    case MSH_LOC_ATTRIBUTE: return "attribute";
    case MSH_LOC_SPARSE: return "sparse";
    case MSH_LOC_FUNCTION: return "function";
    }
    return "tensor";
}

static const char *tname(const Onnx__TensorProto *tp) {
    return tp->name && *tp->name ? tp->name : "(unnamed)";
}

/* ---- external data ---- */

/* An external-data offset or length: decimal digits only, at most INT64_MAX. */
static msh_status ext_parse_int(const char *what, const char *v, int64_t *out, msh_error *e) {
    if (!v || !*v)
        return msh_fail(e, MSH_ERR_FORMAT, "external data %s is empty", what);
    if (v[0] == '-' && v[1] >= '0' && v[1] <= '9')
        return msh_fail(e, MSH_ERR_FORMAT, "external data %s '%.40s' is negative", what, v);
    int64_t r = 0;
    for (const char *p = v; *p; p++) {
        if (*p < '0' || *p > '9')
            return msh_fail(e, MSH_ERR_FORMAT, "external data %s '%.40s' is not an integer", what,
                            v);
        int d = *p - '0';
        if (r > (INT64_MAX - d) / 10)
            return msh_fail(e, MSH_ERR_FORMAT, "external data %s '%.40s' is too large", what, v);
        r = r * 10 + d;
    }
    *out = r;
    return MSH_OK;
}

static msh_status ext_open(msh_onnx_model *m, const char *loc, int *idx, msh_error *e) {
    for (size_t i = 0; i < m->n_ext; i++)
        if (strcmp(m->ext[i].location, loc) == 0) {
            *idx = (int)i;
            return MSH_OK;
        }
    if (!*loc)
        return msh_fail(e, MSH_ERR_UNSAFE, "external data location is empty");
    if (loc[0] == '/')
        return msh_fail(e, MSH_ERR_UNSAFE, "external data location '%s' is an absolute path", loc);
    if (strchr(loc, '\\') || strlen(loc) > 4000)
        return msh_fail(e, MSH_ERR_UNSAFE,
                        "external data location '%.200s' is not a plain "
                        "relative path",
                        loc);
    /* Walk the components as written: '..' may not climb above the model's folder, and no
     * prefix of the path may be a symbolic link (checked with lstat, before opening). */
    size_t dlen = strlen(m->dir);
    char *path = malloc(dlen + strlen(loc) + 2);
    if (!path)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    memcpy(path, m->dir, dlen);
    size_t plen = dlen;
    int level = 0;
    const char *p = loc;
    msh_status st = MSH_OK;
    while (*p && st == MSH_OK) {
        const char *q = strchr(p, '/');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        int is_last = !q || !q[1];
        if (n == 0 || (n == 1 && p[0] == '.')) {
            /* nothing */
        } else if (n == 2 && p[0] == '.' && p[1] == '.') {
            if (--level < 0)
                st = msh_fail(e, MSH_ERR_UNSAFE,
                              "external data location '%s' leaves the model's folder", loc);
        } else {
            level++;
        }
        path[plen++] = '/';
        memcpy(path + plen, p, n);
        plen += n;
        path[plen] = 0;
        if (st == MSH_OK && n > 0 && !(n == 1 && p[0] == '.') && !(n == 2 && p[0] == '.')) {
            struct stat sb;
            if (lstat(path, &sb) != 0)
                st = msh_fail(e, MSH_ERR_FORMAT, "external data file '%s': %s", loc,
                              strerror(errno));
            else if (S_ISLNK(sb.st_mode))
                st = msh_fail(e, MSH_ERR_UNSAFE,
                              "external data location '%s' passes through a symbolic link", loc);
            else if (!is_last && !S_ISDIR(sb.st_mode))
                st = msh_fail(e, MSH_ERR_FORMAT, "external data location '%s': not a folder", loc);
        }
        p = q ? q + 1 : p + n;
    }
    if (st == MSH_OK && level == 0)
        st = msh_fail(e, MSH_ERR_UNSAFE, "external data location '%s' names no file", loc);
    int fd = -1;
    struct stat sb;
    if (st == MSH_OK) {
        fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            st = msh_fail(e, MSH_ERR_UNSAFE, "cannot open external data file '%s': %s", loc,
                          strerror(errno));
        else if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))
            st = msh_fail(e, MSH_ERR_UNSAFE, "external data '%s' is not a regular file", loc);
    }
    free(path);
    if (st != MSH_OK) {
        if (fd >= 0)
            close(fd);
        return st;
    }
    msh_ext_file *ne = realloc(m->ext, (m->n_ext + 1) * sizeof *ne);
    char *copy = msh_strdup(loc);
    if (!ne || !copy) {
        if (ne)
            m->ext = ne;
        free(copy);
        close(fd);
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    m->ext = ne;
    m->ext[m->n_ext] =
        (msh_ext_file){copy, fd, (int64_t)sb.st_size, (int64_t)sb.st_dev, (int64_t)sb.st_ino};
    *idx = (int)m->n_ext++;
    return MSH_OK;
}

static msh_status tensor_external(msh_onnx_model *m, msh_tensor *t, msh_error *e) {
    const Onnx__TensorProto *tp = t->tp;
    const char *loc = NULL, *off_s = NULL, *len_s = NULL;
    for (size_t i = 0; i < tp->n_external_data; i++) {
        const Onnx__StringStringEntryProto *kv = tp->external_data[i];
        if (!kv->key)
            continue;
        if (strcmp(kv->key, "location") == 0)
            loc = kv->value;
        else if (strcmp(kv->key, "offset") == 0)
            off_s = kv->value;
        else if (strcmp(kv->key, "length") == 0)
            len_s = kv->value;
    }
    if (!loc)
        return msh_fail(e, MSH_ERR_FORMAT, "external data without a location");
    if (t->d.nbytes < 0)
        return msh_fail(e, MSH_ERR_UNSUPPORTED, "external data of element type %s",
                        msh_dtype_name(tp->data_type));
    int64_t off = 0, len = t->d.nbytes;
    if (off_s)
        MSH_FORWARD(ext_parse_int("offset", off_s, &off, e));
    if (len_s)
        MSH_FORWARD(ext_parse_int("length", len_s, &len, e));
    if (len != t->d.nbytes)
        return msh_fail(e, MSH_ERR_FORMAT,
                        "external data length %lld differs from the %lld "
                        "bytes its shape needs",
                        (long long)len, (long long)t->d.nbytes);
    int idx = 0;
    MSH_FORWARD(ext_open(m, loc, &idx, e));
    int64_t end;
    if (!msh_add_i64(off, len, &end) || end > m->ext[idx].size)
        return msh_fail(e, MSH_ERR_FORMAT,
                        "external data '%s': offset %lld + length %lld is "
                        "past the end of the %lld-byte file",
                        loc, (long long)off, (long long)len, (long long)m->ext[idx].size);
    size_t pi;
    MSH_FORWARD(msh_onnx_add_payload(m, idx + 1, off, len, &pi, e));
    t->payload = (int64_t)pi;
    t->external_in = 1;
    m->external_bytes += len;
    return MSH_OK;
}

/* ---- the tensor walker ---- */

static int64_t typed_count(const Onnx__TensorProto *tp, int64_t *expected, int64_t numel) {
    switch (tp->data_type) {
    case 1: *expected = numel; return (int64_t)tp->n_float_data;
    case 14: *expected = 2 * numel; return (int64_t)tp->n_float_data;
    case 11: *expected = numel; return (int64_t)tp->n_double_data;
    case 15: *expected = 2 * numel; return (int64_t)tp->n_double_data;
    case 7: *expected = numel; return (int64_t)tp->n_int64_data;
    case 12:
    case 13: *expected = numel; return (int64_t)tp->n_uint64_data;
    case 8: *expected = numel; return (int64_t)tp->n_string_data;
    case 2:
    case 3:
    case 4:
    case 5:
    case 6:
    case 9:
    case 10:
    case 16:
    case 17:
    case 18:
    case 19:
    case 20:
    case 24: *expected = numel; return (int64_t)tp->n_int32_data;
    case 21:
    case 22:
    case 23: *expected = numel / 2 + (numel & 1); return (int64_t)tp->n_int32_data;
    default: *expected = -1; return 0;
    }
}

/* Typed-field bytes are read through a callback that decodes the fields by the type they were
 * read as (a pass may retype the TensorProto before the writer asks for the bytes). */
typedef struct typed_src {
    const Onnx__TensorProto *tp;
    int32_t dtype;
    int64_t numel;
    int64_t nbytes;
} typed_src;

static msh_status typed_read(const void *ctx, int64_t off, void *dst, size_t n, msh_error *e);

static msh_role role_of(msh_tensor_loc loc) {
    return loc == MSH_LOC_ATTRIBUTE || loc == MSH_LOC_FUNCTION ? MSH_ROLE_OTHER : MSH_ROLE_WEIGHT;
}

/* Fill t->d from the tree: name, type, shape and where the bytes are. */
static msh_status describe(msh_onnx_model *m, msh_tensor *t, msh_error *e) {
    Onnx__TensorProto *tp = t->tp;
    t->d.name = tp->name ? tp->name : "";
    t->d.ndim = tp->n_dims;
    t->d.shape = tp->dims;
    msh_src *s = &t->d.src;
    if (t->payload >= 0) {
        const msh_payload *p = &m->payloads[t->payload];
        memset(s, 0, sizeof *s);
        s->kind = MSH_SRC_FILE;
        s->fd = p->src == 0 ? m->fd : m->ext[p->src - 1].fd;
        s->offset = p->offset;
        s->length = p->length;
    } else if (tp->has_raw_data && tp->raw_data.len > 0) {
        memset(s, 0, sizeof *s);
        s->kind = MSH_SRC_MEMORY;
        s->mem = tp->raw_data.data;
        s->length = (int64_t)tp->raw_data.len;
    } else if (t->d.nbytes > 0 && s->kind == MSH_SRC_NONE) {
        typed_src *ts = malloc(sizeof *ts);
        if (!ts || msh_onnx_own(m, ts) != MSH_OK)
            return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
        *ts = (typed_src){tp, t->d.dtype, t->d.numel, t->d.nbytes};
        s->kind = MSH_SRC_CALLBACK;
        s->read = typed_read;
        s->ctx = ts;
        s->length = t->d.nbytes;
    }
    return MSH_OK;
}

static msh_status add_tensor(msh_onnx_model *m, Onnx__TensorProto *tp, int graph,
                             msh_tensor_loc loc, msh_error *e) {
    if (!msh_grow((void **)&m->tensors, &m->cap_tensors, m->n_tensors, sizeof *m->tensors))
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory for the tensor table");
    msh_tensor *t = &m->tensors[m->n_tensors];
    memset(t, 0, sizeof *t);
    msh_tentry_init(&t->d);
    t->d.origin = (int64_t)m->n_tensors;
    t->tp = tp;
    t->graph = graph;
    t->loc = loc;
    t->payload = -1;
    t->d.dtype = tp->data_type;
    t->d.role = role_of(loc);
    int64_t numel = 1;
    for (size_t i = 0; i < tp->n_dims; i++) {
        if (tp->dims[i] < 0)
            return msh_fail(e, MSH_ERR_FORMAT, "%s '%s': dim %zu is negative (%lld)",
                            msh_onnx_loc_name(loc), tname(tp), i, (long long)tp->dims[i]);
        if (!msh_mul_i64(numel, tp->dims[i], &numel))
            return msh_fail(e, MSH_ERR_LIMIT, "%s '%s': element count overflows",
                            msh_onnx_loc_name(loc), tname(tp));
    }
    t->d.numel = numel;
    t->d.nbytes = msh_dtype_bytes(tp->data_type, numel);
    if (t->d.nbytes == -2)
        return msh_fail(e, MSH_ERR_LIMIT, "%s '%s': byte size overflows", msh_onnx_loc_name(loc),
                        tname(tp));
    for (size_t i = 0; i < tp->base.n_unknown_fields; i++) {
        const ProtobufCMessageUnknownField *u = &tp->base.unknown_fields[i];
        if (u->tag != MSH_ONNX_MARKER_FIELD)
            continue;
        uint64_t v = 0;
        for (size_t k = 0; k < u->len && k < 10; k++)
            v |= (uint64_t)(u->data[k] & 0x7f) << (7 * k);
        t->payload = (int64_t)v;
    }
    int external =
        tp->has_data_location && tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
    msh_status st = MSH_OK;
    if (external) {
        if (t->payload >= 0)
            st = msh_fail(e, MSH_ERR_FORMAT, "both raw_data and external data");
        else
            st = tensor_external(m, t, e);
        if (st != MSH_OK) {
            if (e) {
                char tmp[sizeof e->msg];
                snprintf(tmp, sizeof tmp, "%s '%s': %s", msh_onnx_loc_name(loc), tname(tp), e->msg);
                memcpy(e->msg, tmp, sizeof tmp);
            }
            return st;
        }
    } else if (t->payload >= 0) {
        int64_t have = m->payloads[t->payload].length;
        if (tp->data_type == 8)
            return msh_fail(e, MSH_ERR_FORMAT, "%s '%s': STRING tensor with raw_data",
                            msh_onnx_loc_name(loc), tname(tp));
        if (t->d.nbytes < 0)
            t->d.nbytes = have; /* an element type this version does not know: opaque bytes */
        else if (have != t->d.nbytes)
            return msh_fail(e, MSH_ERR_FORMAT,
                            "%s '%s': raw_data has %lld bytes, its shape "
                            "needs %lld",
                            msh_onnx_loc_name(loc), tname(tp), (long long)have,
                            (long long)t->d.nbytes);
    } else {
        int64_t expected;
        int64_t count = typed_count(tp, &expected, numel);
        if (expected >= 0 && count != 0 && count != expected)
            return msh_fail(e, MSH_ERR_FORMAT, "%s '%s': %lld values for a shape of %lld",
                            msh_onnx_loc_name(loc), tname(tp), (long long)count,
                            (long long)expected);
    }
    MSH_FORWARD(describe(m, t, e));
    m->n_tensors++;
    return MSH_OK;
}

static msh_status walk_graph(msh_onnx_model *m, Onnx__GraphProto *g, int parent, int depth,
                             msh_error *e);

static msh_status walk_sparse(msh_onnx_model *m, Onnx__SparseTensorProto *sp, int graph,
                              msh_error *e) {
    if (sp->values)
        MSH_FORWARD(add_tensor(m, sp->values, graph, MSH_LOC_SPARSE, e));
    if (sp->indices)
        MSH_FORWARD(add_tensor(m, sp->indices, graph, MSH_LOC_SPARSE, e));
    return MSH_OK;
}

static msh_status walk_nodes(msh_onnx_model *m, Onnx__NodeProto **nodes, size_t n, int graph,
                             int depth, int in_function, msh_error *e) {
    for (size_t i = 0; i < n; i++) {
        Onnx__NodeProto *nd = nodes[i];
        int is_const =
            nd->op_type && strcmp(nd->op_type, "Constant") == 0 && (!nd->domain || !*nd->domain);
        for (size_t a = 0; a < nd->n_attribute; a++) {
            Onnx__AttributeProto *at = nd->attribute[a];
            msh_tensor_loc loc = in_function ? MSH_LOC_FUNCTION
                                 : is_const  ? MSH_LOC_CONSTANT
                                             : MSH_LOC_ATTRIBUTE;
            if (at->t) {
                MSH_FORWARD(add_tensor(m, at->t, graph, loc, e));
                /* a Constant's value is known by the node's output name */
                msh_tentry *d = &m->tensors[m->n_tensors - 1].d;
                if (is_const && !*d->name && nd->n_output > 0 && nd->output[0])
                    d->name = nd->output[0];
            }
            for (size_t k = 0; k < at->n_tensors; k++)
                MSH_FORWARD(add_tensor(m, at->tensors[k], graph, loc, e));
            if (at->sparse_tensor)
                MSH_FORWARD(walk_sparse(m, at->sparse_tensor, graph, e));
            for (size_t k = 0; k < at->n_sparse_tensors; k++)
                MSH_FORWARD(walk_sparse(m, at->sparse_tensors[k], graph, e));
            if (at->g)
                MSH_FORWARD(walk_graph(m, at->g, in_function ? -1 : graph, depth + 1, e));
            for (size_t k = 0; k < at->n_graphs; k++)
                MSH_FORWARD(walk_graph(m, at->graphs[k], in_function ? -1 : graph, depth + 1, e));
        }
    }
    return MSH_OK;
}

static msh_status walk_graph(msh_onnx_model *m, Onnx__GraphProto *g, int parent, int depth,
                             msh_error *e) {
    if (depth > MSH_ONNX_MAX_GRAPH_DEPTH)
        return msh_fail(e, MSH_ERR_LIMIT, "graphs nested deeper than %d", MSH_ONNX_MAX_GRAPH_DEPTH);
    if (!msh_grow((void **)&m->graphs, &m->cap_graphs, m->n_graphs, sizeof *m->graphs))
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    int id = (int)m->n_graphs++;
    m->graphs[id] = (msh_graph){g, parent, depth};
    for (size_t i = 0; i < g->n_initializer; i++)
        MSH_FORWARD(add_tensor(m, g->initializer[i], id, MSH_LOC_INITIALIZER, e));
    for (size_t i = 0; i < g->n_sparse_initializer; i++)
        MSH_FORWARD(walk_sparse(m, g->sparse_initializer[i], id, e));
    return walk_nodes(m, g->node, g->n_node, id, depth, 0, e);
}

static msh_status tmap_build(msh_onnx_model *m, msh_error *e) {
    size_t cap = 16;
    while (cap < 2 * m->n_tensors + 16)
        cap *= 2;
    m->tmap = malloc(cap * sizeof *m->tmap);
    if (!m->tmap)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    m->tmap_cap = cap;
    for (size_t i = 0; i < cap; i++)
        m->tmap[i] = -1;
    for (size_t i = 0; i < m->n_tensors; i++) {
        size_t h = ((uintptr_t)m->tensors[i].tp >> 4) * 0x9E3779B97F4A7C15ULL & (cap - 1);
        while (m->tmap[h] >= 0)
            h = (h + 1) & (cap - 1);
        m->tmap[h] = (int64_t)i;
    }
    return MSH_OK;
}

int64_t msh_onnx_find_tensor(const msh_onnx_model *m, const Onnx__TensorProto *tp) {
    if (!m->tmap)
        return -1;
    size_t h = ((uintptr_t)tp >> 4) * 0x9E3779B97F4A7C15ULL & (m->tmap_cap - 1);
    while (m->tmap[h] >= 0) {
        if (m->tensors[m->tmap[h]].tp == tp)
            return m->tmap[h];
        h = (h + 1) & (m->tmap_cap - 1);
    }
    return -1;
}

/* The graph list and tensor table, walked from the tree. */
/* What uses each initializer: the node inputs, in any graph, that name it. (A subgraph may
 * shadow a name; the count is by name.) */
static msh_status count_users(msh_onnx_model *m, msh_error *e) {
    msh_strmap uses;
    msh_strmap_init(&uses);
    msh_status st = MSH_OK;
    for (size_t gi = 0; gi < m->n_graphs && st == MSH_OK; gi++) {
        const Onnx__GraphProto *g = m->graphs[gi].g;
        for (size_t i = 0; i < g->n_node && st == MSH_OK; i++)
            for (size_t k = 0; k < g->node[i]->n_input; k++) {
                const char *nm = g->node[i]->input[k];
                int64_t *v = nm && *nm ? msh_strmap_upsert(&uses, nm, 0) : NULL;
                if (nm && *nm && !v) {
                    st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
                    break;
                }
                if (v)
                    (*v)++;
            }
    }
    for (size_t i = 0; st == MSH_OK && i < m->n_tensors; i++) {
        msh_tensor *t = &m->tensors[i];
        int64_t *v = t->loc == MSH_LOC_INITIALIZER && t->tp->name
                         ? msh_strmap_get(&uses, t->tp->name)
                         : NULL;
        t->d.users = v ? (int)*v : t->loc == MSH_LOC_INITIALIZER ? 0 : 1;
    }
    msh_strmap_free(&uses);
    return st;
}

static msh_status walk_all(msh_onnx_model *m, msh_error *e) {
    MSH_FORWARD(walk_graph(m, m->mp->graph, -1, 1, e));
    for (size_t i = 0; i < m->mp->n_training_info; i++) {
        Onnx__TrainingInfoProto *ti = m->mp->training_info[i];
        if (ti->initialization)
            MSH_FORWARD(walk_graph(m, ti->initialization, -1, 1, e));
        if (ti->algorithm)
            MSH_FORWARD(walk_graph(m, ti->algorithm, -1, 1, e));
    }
    for (size_t i = 0; i < m->mp->n_functions; i++) {
        Onnx__FunctionProto *f = m->mp->functions[i];
        MSH_FORWARD(walk_nodes(m, f->node, f->n_node, -1, 1, 1, e));
    }
    MSH_FORWARD(count_users(m, e));
    return tmap_build(m, e);
}

msh_status msh_onnx_reindex(msh_onnx_model *m, msh_error *e) {
    m->n_tensors = 0;
    m->n_graphs = 0;
    m->external_bytes = 0;
    free(m->tmap);
    m->tmap = NULL;
    return walk_all(m, e);
}

msh_status msh_onnx_model_open(msh_onnx_model *m, const char *path, msh_error *e) {
    memset(m, 0, sizeof *m);
    m->fd = -1;
    m->path = msh_strdup(path);
    m->dir = msh_path_dir(path);
    if (!m->path || !m->dir)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    m->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (m->fd < 0)
        return msh_fail(e, MSH_ERR_IO, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(m->fd, &sb) != 0)
        return msh_fail(e, MSH_ERR_IO, "cannot stat: %s", strerror(errno));
    if (S_ISDIR(sb.st_mode))
        return msh_fail(e, MSH_ERR_USAGE, "is a folder");
    if (!S_ISREG(sb.st_mode))
        return msh_fail(e, MSH_ERR_FORMAT, "not a regular file");
    m->file_size = (int64_t)sb.st_size;
    if (m->file_size == 0)
        return msh_fail(e, MSH_ERR_FORMAT, "empty file, not an ONNX model");
    MSH_FORWARD(msh_onnx_scan(m, e));
    m->mp = (Onnx__ModelProto *)protobuf_c_message_unpack(&onnx__model_proto__descriptor, NULL,
                                                          m->skel_len, m->skel);
    if (!m->mp)
        return msh_fail(e, MSH_ERR_FORMAT,
                        "not an ONNX model: the protobuf does not decode as "
                        "a ModelProto");
    free(m->skel); /* the unpacked message owns copies of everything it needs */
    m->skel = NULL;
    if (!m->mp->graph)
        return msh_fail(e, MSH_ERR_FORMAT, "not an ONNX model: no graph");
    if (!m->mp->has_ir_version)
        return msh_fail(e, MSH_ERR_FORMAT, "not an ONNX model: no ir_version");
    return walk_all(m, e);
}

void msh_onnx_model_free(msh_onnx_model *m) {
    if (m->mp)
        protobuf_c_message_free_unpacked(&m->mp->base, NULL);
    for (size_t i = 0; i < m->n_orphans; i++)
        protobuf_c_message_free_unpacked(&m->orphans[i]->base, NULL);
    free(m->orphans);
    for (size_t i = 0; i < m->n_closers; i++)
        m->closers[i].fn(m->closers[i].ctx);
    free(m->closers);
    for (size_t i = 0; i < m->n_blocks; i++)
        free(m->blocks[i]);
    free(m->blocks);
    if (m->fd >= 0)
        close(m->fd);
    for (size_t i = 0; i < m->n_ext; i++) {
        free(m->ext[i].location);
        if (m->ext[i].fd >= 0)
            close(m->ext[i].fd);
    }
    free(m->ext);
    free(m->skel);
    free(m->payloads);
    free(m->tensors);
    free(m->graphs);
    free(m->tmap);
    free(m->path);
    free(m->dir);
    memset(m, 0, sizeof *m);
    m->fd = -1;
}

msh_table msh_onnx_table(const msh_onnx_model *m) {
    msh_table t = {m->tensors ? &m->tensors[0].d : NULL, m->n_tensors, sizeof(msh_tensor)};
    return t;
}

int msh_onnx_streamed(const msh_tensor *t) {
    return t->payload >= 0 || t->d.out_dtype != 0;
}

msh_status msh_onnx_own(msh_onnx_model *m, void *p) {
    if (!msh_grow((void **)&m->blocks, &m->cap_blocks, m->n_blocks, sizeof *m->blocks)) {
        free(p);
        return MSH_ERR_NOMEM;
    }
    m->blocks[m->n_blocks++] = p;
    return MSH_OK;
}

msh_status msh_onnx_on_free(msh_onnx_model *m, void (*fn)(void *ctx), void *ctx) {
    if (!msh_grow((void **)&m->closers, &m->cap_closers, m->n_closers, sizeof *m->closers))
        return MSH_ERR_NOMEM;
    m->closers[m->n_closers++] = (msh_onnx_closer){fn, ctx};
    return MSH_OK;
}

int64_t msh_onnx_add_tensor_entry(msh_onnx_model *m, const msh_tensor *t) {
    if (!msh_grow((void **)&m->tensors, &m->cap_tensors, m->n_tensors, sizeof *m->tensors))
        return -1;
    msh_tensor *n = &m->tensors[m->n_tensors];
    *n = *t;
    if (describe(m, n, NULL) != MSH_OK)
        return -1;
    m->n_tensors++;
    free(m->tmap);
    m->tmap = NULL;
    if (tmap_build(m, NULL) != MSH_OK)
        return -1;
    return (int64_t)m->n_tensors - 1;
}

msh_status msh_onnx_adopt_orphan(msh_onnx_model *m, Onnx__TensorProto *tp) {
    if (!msh_grow((void **)&m->orphans, &m->cap_orphans, m->n_orphans, sizeof *m->orphans))
        return MSH_ERR_NOMEM;
    m->orphans[m->n_orphans++] = tp;
    return MSH_OK;
}

/* Typed fields as little-endian bytes: value i of the field that holds `dt`, `vs` bytes wide. */
static void typed_value(const Onnx__TensorProto *tp, int32_t dt, int64_t i, uint8_t out[8],
                        int vs) {
    uint64_t v = 0;
    switch (dt) {
    case MSH_DT_FLOAT:
    case MSH_DT_COMPLEX64: {
        uint32_t b;
        memcpy(&b, &tp->float_data[i], 4);
        v = b;
        break;
    }
    case MSH_DT_DOUBLE:
    case MSH_DT_COMPLEX128: memcpy(&v, &tp->double_data[i], 8); break;
    case MSH_DT_INT64: v = (uint64_t)tp->int64_data[i]; break;
    case MSH_DT_UINT32:
    case MSH_DT_UINT64: v = tp->uint64_data[i]; break;
    default: v = (uint64_t)(uint32_t)tp->int32_data[i]; break;
    }
    for (int k = 0; k < vs && k < 8; k++)
        out[k] = (uint8_t)(v >> (8 * k));
}

static msh_status typed_read(const void *ctx, int64_t off, void *dst, size_t n, msh_error *e) {
    const typed_src *ts = ctx;
    const Onnx__TensorProto *tp = ts->tp;
    int32_t dt = ts->dtype;
    int64_t end;
    if (off < 0 || !msh_add_i64(off, (int64_t)n, &end) || end > ts->nbytes)
        return msh_fail(e, MSH_ERR_FORMAT, "read outside tensor '%s'", tname(tp));
    uint8_t *o = dst;
    if (msh_dtype_is_4bit(dt)) {
        /* 4-bit types in int32_data: one packed byte per int32. */
        if ((int64_t)tp->n_int32_data < end)
            return msh_fail(e, MSH_ERR_FORMAT, "tensor '%s' has no data", tname(tp));
        for (size_t k = 0; k < n; k++)
            o[k] = (uint8_t)tp->int32_data[off + (int64_t)k];
        return MSH_OK;
    }
    int es = msh_dtype_size(dt);
    int vs = dt == MSH_DT_COMPLEX64 ? 4 : dt == MSH_DT_COMPLEX128 ? 8 : es; /* one typed value */
    if (vs <= 0 || vs > 8)
        return msh_fail(e, MSH_ERR_UNSUPPORTED, "tensor '%s' of type %s has no byte form",
                        tname(tp), msh_dtype_name(dt));
    Onnx__TensorProto probe = *tp;
    probe.data_type = dt;
    int64_t expected, count = typed_count(&probe, &expected, ts->numel);
    if (count * vs < end)
        return msh_fail(e, MSH_ERR_FORMAT, "tensor '%s' has no data", tname(tp));
    uint8_t tmp[8];
    for (int64_t pos = off; pos < end;) {
        int64_t i = pos / vs;
        int64_t in = pos % vs;
        typed_value(tp, dt, i, tmp, vs);
        int64_t k = vs - in;
        if (k > end - pos)
            k = end - pos;
        memcpy(o, tmp + in, (size_t)k);
        o += k;
        pos += k;
    }
    return MSH_OK;
}

msh_status msh_onnx_tensor_read(const msh_onnx_model *m, const msh_tensor *t, int64_t off,
                                void *dst, size_t n, msh_error *e) {
    (void)m;
    int64_t end;
    if (off < 0 || !msh_add_i64(off, (int64_t)n, &end) || t->d.nbytes < 0 || end > t->d.src.length)
        return msh_fail(e, MSH_ERR_FORMAT, "read outside tensor '%s'", tname(t->tp));
    return msh_src_read(&t->d.src, off, dst, n, e);
}
