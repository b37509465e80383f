/*
 * Streaming ONNX writer.
 *
 * protobuf_c_message_pack_to_buffer packs every nested message into a temporary buffer before
 * appending it, so a 1 GB GraphProto would be built in memory. This writer walks the
 * descriptors itself instead:
 *   - a message type that can never contain a TensorProto (ValueInfoProto, TypeProto, ...) is
 *     small and is packed by protobuf-c as a whole;
 *   - any other message is packed in two parts: protobuf-c packs a shallow copy with its
 *     message-typed fields cleared (scalars, strings, unknown fields), then each submessage is
 *     written as tag + length + recursive body. Lengths come from the same walk in "size" mode.
 *   - a streamed TensorProto (one with a payload in a file, or a planned conversion) is packed
 *     without raw_data, typed data fields and the scanner's marker, then its raw_data field is
 *     written with bytes the caller supplies (the engine, in the order of the layout); or, for
 *     external output, external_data entries point into "<out>.data", which is written first,
 *     tensors in table order, each at a 4096-aligned offset.
 * The writer never reads or converts tensor bytes itself.
 * Field order inside a message may differ from the input's (scalars first); protobuf readers
 * accept fields in any order and repeated fields keep their relative order.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/msh_io.h"
#include "formats/onnx_model.h"

#define MSH_EXT_ALIGN 4096

typedef struct wctx {
    const msh_onnx_model *m;
    msh_sink *out;          /* NULL in size mode */
    const int64_t *ext_off; /* per tensor: offset in the data file, or -1 for inline */
    const char *data_name;
    uint8_t *scratch;
    size_t scratch_cap;
    msh_bytes_fn bytes;
    void *bytes_ctx;
    /* collect mode: the streamed inline tensors in the order write mode will reach them */
    size_t *order;
    size_t n_order, cap_order;
    int collect;
    msh_error *e;
} wctx;

/* ---- which message types can hold a tensor ---- */

static int reaches_tensor_rec(const ProtobufCMessageDescriptor *d, int depth) {
    if (d == &onnx__tensor_proto__descriptor)
        return 1;
    if (depth > 16)
        return 0;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type == PROTOBUF_C_TYPE_MESSAGE && f->descriptor != d &&
            reaches_tensor_rec(f->descriptor, depth + 1))
            return 1;
    }
    return 0;
}

static pthread_mutex_t g_reach_lock = PTHREAD_MUTEX_INITIALIZER;

static int reaches_tensor(const ProtobufCMessageDescriptor *d) {
    /* Graph <-> Node <-> Attribute recurse; the depth bound stops the walk, and the answer for
     * the few ONNX types is kept (under a lock: models are written by parallel workers). */
    static const ProtobufCMessageDescriptor *seen[64];
    static int ans[64];
    static int n_seen;
    pthread_mutex_lock(&g_reach_lock);
    for (int i = 0; i < n_seen; i++)
        if (seen[i] == d) {
            int r = ans[i];
            pthread_mutex_unlock(&g_reach_lock);
            return r;
        }
    int r = reaches_tensor_rec(d, 0);
    if (n_seen < 64) {
        ans[n_seen] = r;
        seen[n_seen++] = d;
    }
    pthread_mutex_unlock(&g_reach_lock);
    return r;
}

static size_t varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static msh_status put_varint(wctx *c, uint64_t v) {
    uint8_t b[10];
    size_t n = 0;
    while (v >= 0x80) {
        b[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    b[n++] = (uint8_t)v;
    return msh_sink_write(c->out, b, n, c->e);
}

static msh_status pack_whole(wctx *c, const ProtobufCMessage *msg, uint64_t *size) {
    size_t n = protobuf_c_message_get_packed_size(msg);
    *size = n;
    if (!c->out)
        return MSH_OK;
    if (n > c->scratch_cap) {
        uint8_t *p = realloc(c->scratch, n);
        if (!p)
            return msh_fail(c->e, MSH_ERR_NOMEM, "out of memory packing a %zu-byte message", n);
        c->scratch = p;
        c->scratch_cap = n;
    }
    size_t k = protobuf_c_message_pack(msg, c->scratch);
    return msh_sink_write(c->out, c->scratch, k, c->e);
}

static msh_status emit_tensor(wctx *c, const Onnx__TensorProto *tp, uint64_t *size) {
    int64_t ti = msh_onnx_find_tensor(c->m, tp);
    const msh_tensor *t = ti >= 0 ? &c->m->tensors[ti] : NULL;
    if (!t || !msh_onnx_streamed(t))
        return pack_whole(c, &tp->base, size);
    Onnx__TensorProto sh = *tp;
    /* the bytes come from the engine as raw_data: no typed copy of them */
    sh.n_float_data = sh.n_int32_data = sh.n_int64_data = sh.n_double_data = sh.n_uint64_data = 0;
    ProtobufCMessageUnknownField *uf = NULL;
    if (tp->base.n_unknown_fields) {
        uf = malloc(tp->base.n_unknown_fields * sizeof *uf);
        if (!uf)
            return msh_fail(c->e, MSH_ERR_NOMEM, "out of memory");
        unsigned k = 0;
        for (unsigned i = 0; i < tp->base.n_unknown_fields; i++)
            if (tp->base.unknown_fields[i].tag != MSH_ONNX_MARKER_FIELD)
                uf[k++] = tp->base.unknown_fields[i];
        sh.base.n_unknown_fields = k;
        sh.base.unknown_fields = uf;
    }
    sh.has_raw_data = 0;
    sh.raw_data.len = 0;
    sh.raw_data.data = NULL;
    int64_t plen = msh_tentry_out_bytes(&t->d);
    int ext = c->ext_off && c->ext_off[ti] >= 0;
    if (c->collect && !ext && plen > 0) {
        if (!msh_grow((void **)&c->order, &c->cap_order, c->n_order, sizeof *c->order))
            return msh_fail(c->e, MSH_ERR_NOMEM, "out of memory");
        c->order[c->n_order++] = (size_t)ti;
    }
    Onnx__StringStringEntryProto kv[3];
    Onnx__StringStringEntryProto *kvp[3];
    char offs[24], lens[24];
    if (ext) {
        snprintf(offs, sizeof offs, "%lld", (long long)c->ext_off[ti]);
        snprintf(lens, sizeof lens, "%lld", (long long)plen);
        const char *keys[3] = {"location", "offset", "length"};
        const char *vals[3] = {c->data_name, offs, lens};
        for (int i = 0; i < 3; i++) {
            onnx__string_string_entry_proto__init(&kv[i]);
            kv[i].key = (char *)keys[i];
            kv[i].value = (char *)vals[i];
            kvp[i] = &kv[i];
        }
        sh.has_data_location = 1;
        sh.data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
        sh.n_external_data = 3;
        sh.external_data = kvp;
    } else {
        sh.has_data_location = 0;
        sh.data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__DEFAULT;
        sh.n_external_data = 0;
        sh.external_data = NULL;
    }
    uint64_t base;
    msh_status st = pack_whole(c, &sh.base, &base);
    free(uf);
    MSH_FORWARD(st);
    *size = base;
    if (!ext && plen > 0) {
        *size += 1 + varint_len((uint64_t)plen) + (uint64_t)plen; /* raw_data = field 9 */
        if (c->out) {
            MSH_FORWARD(put_varint(c, (9u << 3) | 2u));
            MSH_FORWARD(put_varint(c, (uint64_t)plen));
            int64_t before = c->out->written;
            MSH_FORWARD(c->bytes(c->bytes_ctx, (size_t)ti, c->out, c->e));
            if (c->out->written - before != plen)
                return msh_fail(c->e, MSH_ERR_FORMAT,
                                "internal error: tensor '%s' came with %lld bytes, not %lld",
                                t->d.name, (long long)(c->out->written - before), (long long)plen);
        }
    }
    return MSH_OK;
}

static msh_status emit_msg(wctx *c, const ProtobufCMessage *msg, uint64_t *size);

static msh_status emit_sub(wctx *c, uint32_t id, const ProtobufCMessage *sub, uint64_t *total) {
    if (c->collect) {
        uint64_t ignored;
        return emit_msg(c, sub, &ignored);
    }
    uint64_t n;
    msh_sink *saved = c->out;
    c->out = NULL;
    msh_status st = emit_msg(c, sub, &n);
    c->out = saved;
    MSH_FORWARD(st);
    *total += varint_len(((uint64_t)id << 3) | 2u) + varint_len(n) + n;
    if (c->out) {
        MSH_FORWARD(put_varint(c, ((uint64_t)id << 3) | 2u));
        MSH_FORWARD(put_varint(c, n));
        uint64_t again;
        MSH_FORWARD(emit_msg(c, sub, &again));
        if (again != n)
            return msh_fail(c->e, MSH_ERR_FORMAT,
                            "internal error: message size changed while "
                            "writing");
    }
    return MSH_OK;
}

static msh_status emit_msg(wctx *c, const ProtobufCMessage *msg, uint64_t *size) {
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    if (d == &onnx__tensor_proto__descriptor)
        return emit_tensor(c, (const Onnx__TensorProto *)msg, size);
    if (!reaches_tensor(d))
        return pack_whole(c, msg, size);
    _Alignas(16) unsigned char shallow[1024];
    if (d->sizeof_message > sizeof shallow)
        return msh_fail(c->e, MSH_ERR_UNSUPPORTED, "message type %s too large", d->name);
    memcpy(shallow, msg, d->sizeof_message);
    const unsigned char *src = (const unsigned char *)msg;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t zero = 0;
            memcpy(shallow + f->quantifier_offset, &zero, sizeof zero);
        } else {
            void *null = NULL;
            memcpy(shallow + f->offset, &null, sizeof null);
            if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
                uint32_t cs;
                memcpy(&cs, shallow + f->quantifier_offset, sizeof cs);
                if (cs == f->id) {
                    cs = 0;
                    memcpy(shallow + f->quantifier_offset, &cs, sizeof cs);
                }
            }
        }
    }
    uint64_t total;
    MSH_FORWARD(pack_whole(c, (const ProtobufCMessage *)(void *)shallow, &total));
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n;
            ProtobufCMessage **arr;
            memcpy(&n, src + f->quantifier_offset, sizeof n);
            memcpy(&arr, src + f->offset, sizeof arr);
            for (size_t k = 0; k < n; k++)
                MSH_FORWARD(emit_sub(c, f->id, arr[k], &total));
        } else {
            ProtobufCMessage *sub;
            memcpy(&sub, src + f->offset, sizeof sub);
            if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
                uint32_t cs;
                memcpy(&cs, src + f->quantifier_offset, sizeof cs);
                if (cs != f->id)
                    continue;
            }
            if (sub)
                MSH_FORWARD(emit_sub(c, f->id, sub, &total));
        }
    }
    *size = total;
    return MSH_OK;
}

static void wctx_free(wctx *c) {
    free(c->scratch);
    free(c->order);
}

msh_status msh_onnx_inline_size(const msh_onnx_model *m, int64_t *size, msh_error *e) {
    wctx c;
    memset(&c, 0, sizeof c);
    c.m = m;
    c.e = e;
    uint64_t n;
    msh_status st = emit_msg(&c, &m->mp->base, &n);
    wctx_free(&c);
    *size = (int64_t)n;
    return st;
}

void msh_onnx_layout_free(msh_onnx_layout *L) {
    free(L->ext_off);
    free(L->order);
    memset(L, 0, sizeof *L);
}

msh_status msh_onnx_layout_make(const msh_onnx_model *m, int external, int64_t threshold,
                                msh_onnx_layout *L, msh_error *e) {
    memset(L, 0, sizeof *L);
    L->ext_off = malloc((m->n_tensors + 1) * sizeof *L->ext_off);
    if (!L->ext_off)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    size_t *ext_order = malloc((m->n_tensors + 1) * sizeof *ext_order);
    if (!ext_order)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    int64_t cursor = 0;
    for (size_t i = 0; i < m->n_tensors; i++) {
        const msh_tensor *t = &m->tensors[i];
        L->ext_off[i] = -1;
        int64_t ob = msh_tentry_out_bytes(&t->d);
        if (!external || t->d.dropped || !msh_onnx_streamed(t) || ob < threshold || ob <= 0)
            continue;
        cursor = (cursor + MSH_EXT_ALIGN - 1) / MSH_EXT_ALIGN * MSH_EXT_ALIGN;
        L->ext_off[i] = cursor;
        cursor += ob;
        ext_order[L->n_external++] = i;
    }
    L->external = external && L->n_external > 0;
    /* the inline ones: walk the tree as write mode will */
    wctx c;
    memset(&c, 0, sizeof c);
    c.m = m;
    c.e = e;
    c.ext_off = L->ext_off;
    c.collect = 1;
    uint64_t ignored;
    msh_status st = emit_msg(&c, &m->mp->base, &ignored);
    if (st == MSH_OK) {
        L->order = malloc((L->n_external + c.n_order + 1) * sizeof *L->order);
        if (!L->order)
            st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
    }
    if (st == MSH_OK) {
        if (L->n_external)
            memcpy(L->order, ext_order, L->n_external * sizeof *L->order);
        if (c.n_order)
            memcpy(L->order + L->n_external, c.order, c.n_order * sizeof *L->order);
        L->n_order = L->n_external + c.n_order;
    }
    free(ext_order);
    wctx_free(&c);
    if (st != MSH_OK)
        msh_onnx_layout_free(L);
    return st;
}

msh_status msh_onnx_write(const msh_onnx_model *m, const msh_onnx_layout *L, const char *out_path,
                          msh_bytes_fn bytes, void *ctx, msh_onnx_write_result *r, msh_error *e) {
    wctx c;
    memset(&c, 0, sizeof c);
    c.m = m;
    c.e = e;
    c.bytes = bytes;
    c.bytes_ctx = ctx;
    memset(r, 0, sizeof *r);
    msh_sink data, model;
    int data_open = 0, model_open = 0;
    char *data_path = NULL;
    msh_status st = MSH_OK;

    if (L->external) {
        c.ext_off = L->ext_off;
        data_path = malloc(strlen(out_path) + 6);
        if (!data_path) {
            st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            goto done;
        }
        sprintf(data_path, "%s.data", out_path);
        const char *slash = strrchr(data_path, '/');
        c.data_name = slash ? slash + 1 : data_path;
        st = msh_sink_open(&data, data_path, e);
        if (st != MSH_OK)
            goto done;
        data_open = 1;
        for (size_t k = 0; k < L->n_external && st == MSH_OK; k++) {
            size_t i = L->order[k];
            st = msh_sink_pad(&data, MSH_EXT_ALIGN, e);
            int64_t before = data.written;
            if (st == MSH_OK)
                st = bytes(ctx, i, &data, e);
            if (st == MSH_OK && data.written - before != msh_tentry_out_bytes(&m->tensors[i].d))
                st = msh_fail(e, MSH_ERR_FORMAT, "internal error: tensor '%s' came with %lld bytes",
                              m->tensors[i].d.name, (long long)(data.written - before));
        }
        if (st == MSH_OK)
            st = msh_sink_finish(&data, e);
        if (st != MSH_OK)
            goto done;
        r->data_bytes = data.written;
        r->external = 1;
    }
    st = msh_sink_open(&model, out_path, e);
    if (st != MSH_OK)
        goto done;
    model_open = 1;
    c.out = &model;
    uint64_t n;
    st = emit_msg(&c, &m->mp->base, &n);
    if (st == MSH_OK)
        st = msh_sink_finish(&model, e);
    if (st == MSH_OK && data_open)
        st = msh_sink_rename(&data, e);
    if (st == MSH_OK)
        st = msh_sink_rename(&model, e);
    if (st == MSH_OK)
        r->model_bytes = model.written;
done:
    if (model_open)
        msh_sink_abort(&model);
    if (data_open) {
        if (st != MSH_OK && !data.tmp_path && data.final_path)
            (void)remove(data.final_path); /* the model did not land: drop its data too */
        msh_sink_abort(&data);
    }
    free(data_path);
    wctx_free(&c);
    return st;
}
