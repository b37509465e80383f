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
 *   - a TensorProto with a payload is packed without raw_data (and without the scanner's
 *     marker), then its raw_data field is written with the payload streamed from its source
 *     file in bounded chunks; or, for external output, external_data entries point into
 *     "<out>.data", which is written first, tensors in table order, each at a 4096-aligned
 *     offset.
 * Field order inside a message may differ from the input's (scalars first); protobuf readers
 * accept fields in any order and repeated fields keep their relative order.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/msh_io.h"
#include "formats/onnx_model.h"
#include "kernels/msh_convert.h"
#include "kernels/msh_engine.h"

#define MSH_EXT_ALIGN 4096
#define MSH_STREAM_CHUNK ((size_t)4 << 20)

typedef struct wctx {
    const msh_onnx_model *m;
    msh_sink *out;    /* NULL in size mode */
    int64_t *ext_off; /* per tensor: offset in the data file, or -1 for inline */
    const char *data_name;
    uint8_t *scratch;
    size_t scratch_cap;
    uint8_t *chunk;
    uint8_t *chunk2; /* the next chunk, read while `chunk` is converted and written */
    uint8_t *conv;   /* converted half of `chunk` */
    msh_f16_bounds f16;
    uint64_t clamped;
    const msh_engine *engine;
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

typedef struct conv_ctx {
    wctx *c;
    const msh_tensor *t;
    msh_sink *dst;
} conv_ctx;

/* One chunk of a tensor converted on its way out. */
static msh_status convert_chunk(void *arg, const uint8_t *buf, size_t n, int64_t off,
                                msh_error *e) {
    conv_ctx *x = arg;
    wctx *c = x->c;
    const msh_tensor *t = x->t;
    if (t->out_type == 10) {
        c->clamped += msh_f32_to_f16_buf(buf, c->conv, n / 4, &c->f16);
        return msh_sink_write(x->dst, c->conv, n / 2, e);
    }
    if (t->out_type == 16) {
        msh_f32_to_bf16_buf(buf, c->conv, n / 4);
        return msh_sink_write(x->dst, c->conv, n / 2, e);
    }
    if (t->out_type == 3) {
        msh_int8_quantize(buf, c->conv, n / 4, off / 4, t->qinner, t->qchannels, t->qscales);
        return msh_sink_write(x->dst, c->conv, n / 4, e);
    }
    return msh_sink_write(x->dst, buf, n, e);
}

static msh_status gpu_read(void *arg, void *dst, size_t n, int64_t off, msh_error *e) {
    conv_ctx *x = arg;
    return msh_onnx_tensor_read(x->c->m, x->t, off, dst, n, e);
}

static msh_status gpu_write(void *arg, const void *p, size_t n, msh_error *e) {
    conv_ctx *x = arg;
    return msh_sink_write(x->dst, p, n, e);
}

static msh_status stream_tensor(wctx *c, const msh_tensor *t, msh_sink *dst) {
    const msh_onnx_model *m = c->m;
    if (t->payload >= 0 && !t->out_type) {
        /* Unchanged bytes from a file: let the kernel copy them. */
        const msh_payload *p = &m->payloads[t->payload];
        int fd = p->src == 0 ? m->fd : m->ext[p->src - 1].fd;
        return msh_sink_copy_from(dst, fd, p->offset, p->length, c->e);
    }
    conv_ctx x = {c, t, dst};
    if (c->engine && c->engine->cuda && t->out_type && t->payload >= 0)
        return msh_engine_convert(c->engine, t->out_type, t->nbytes, &c->f16, t->qscales, t->qinner,
                                  t->qchannels, gpu_read, gpu_write, &x, &c->clamped,
                                  t->tp->name ? t->tp->name : "(unnamed)", c->e);
    return msh_onnx_tensor_stream(m, t, c->chunk, c->chunk2, MSH_STREAM_CHUNK, convert_chunk, &x,
                                  c->e);
}

static msh_status emit_tensor(wctx *c, const Onnx__TensorProto *tp, uint64_t *size) {
    int64_t ti = msh_onnx_find_tensor(c->m, tp);
    const msh_tensor *t = ti >= 0 ? &c->m->tensors[ti] : NULL;
    if (!t || t->payload < 0)
        return pack_whole(c, &tp->base, size);
    Onnx__TensorProto sh = *tp;
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
    int64_t plen = msh_tensor_out_bytes(t);
    int ext = c->ext_off && c->ext_off[ti] >= 0;
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
    if (!ext) {
        *size += 1 + varint_len((uint64_t)plen) + (uint64_t)plen; /* raw_data = field 9 */
        if (c->out) {
            MSH_FORWARD(put_varint(c, (9u << 3) | 2u));
            MSH_FORWARD(put_varint(c, (uint64_t)plen));
            MSH_FORWARD(stream_tensor(c, t, c->out));
        }
    }
    return MSH_OK;
}

static msh_status emit_msg(wctx *c, const ProtobufCMessage *msg, uint64_t *size);

static msh_status emit_sub(wctx *c, uint32_t id, const ProtobufCMessage *sub, uint64_t *total) {
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
    free(c->chunk);
    free(c->chunk2);
    free(c->conv);
    free(c->ext_off);
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

msh_status msh_onnx_write(const msh_onnx_model *m, const char *out_path,
                          const msh_onnx_write_opts *o, msh_onnx_write_result *r, msh_error *e) {
    wctx c;
    memset(&c, 0, sizeof c);
    c.m = m;
    c.e = e;
    memset(r, 0, sizeof *r);
    c.chunk = malloc(MSH_STREAM_CHUNK);
    c.chunk2 = malloc(MSH_STREAM_CHUNK);
    c.conv = malloc(MSH_STREAM_CHUNK / 2);
    c.f16.min_abs = o->f16_min_abs ? o->f16_min_abs : MSH_F16_MIN_SUBNORMAL_BITS;
    c.f16.max_abs = o->f16_max_abs ? o->f16_max_abs : MSH_F16_MAX_BITS;
    c.engine = o->engine;
    if (!c.chunk || !c.chunk2 || !c.conv)
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory for the write buffer");
    msh_sink data, model;
    int data_open = 0, model_open = 0;
    char *data_path = NULL;
    msh_status st = MSH_OK;

    if (o->external) {
        c.ext_off = malloc((m->n_tensors + 1) * sizeof *c.ext_off);
        data_path = malloc(strlen(out_path) + 6);
        if (!c.ext_off || !data_path) {
            st = msh_fail(e, MSH_ERR_NOMEM, "out of memory");
            goto done;
        }
        sprintf(data_path, "%s.data", out_path);
        const char *slash = strrchr(data_path, '/');
        c.data_name = slash ? slash + 1 : data_path;
        int64_t cursor = 0;
        int any = 0;
        for (size_t i = 0; i < m->n_tensors; i++) {
            const msh_tensor *t = &m->tensors[i];
            c.ext_off[i] = -1;
            if (t->removed || t->payload < 0 || msh_tensor_out_bytes(t) < o->external_threshold)
                continue;
            cursor = (cursor + MSH_EXT_ALIGN - 1) / MSH_EXT_ALIGN * MSH_EXT_ALIGN;
            c.ext_off[i] = cursor;
            cursor += msh_tensor_out_bytes(t);
            any = 1;
        }
        if (any) {
            st = msh_sink_open(&data, data_path, e);
            if (st != MSH_OK)
                goto done;
            data_open = 1;
            for (size_t i = 0; i < m->n_tensors && st == MSH_OK; i++) {
                if (c.ext_off[i] < 0)
                    continue;
                st = msh_sink_pad(&data, MSH_EXT_ALIGN, e);
                if (st == MSH_OK)
                    st = stream_tensor(&c, &m->tensors[i], &data);
            }
            if (st == MSH_OK)
                st = msh_sink_finish(&data, e);
            if (st != MSH_OK)
                goto done;
            r->data_bytes = data.written;
            r->external = 1;
        }
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
    if (st == MSH_OK) {
        r->model_bytes = model.written;
        r->clamped = c.clamped;
    }
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
