/*
 * Wire-level scan of an ONNX file (protobuf, proto2).
 *
 * Accepts: a ModelProto as a sequence of fields `tag = (number << 3) | wire_type` with wire
 * types 0 (varint), 1 (fixed64), 2 (length-delimited) and 5 (fixed32). Groups (3, 4) are
 * refused. Fields are resolved against the generated descriptors: a length-delimited field
 * whose descriptor says "message" is scanned recursively (depth <= MSH_ONNX_MAX_DEPTH, graphs
 * <= MSH_ONNX_MAX_GRAPH_DEPTH); every other field, known or unknown, is copied verbatim.
 *
 * Output: a skeleton, the same message without TensorProto.raw_data payloads. Each non-empty
 * raw_data becomes a payload record (offset and length in the file) and, in the skeleton, a
 * varint field MSH_ONNX_MARKER_FIELD holding the payload's index. Enclosing lengths are
 * recomputed. The file is read through one bounded buffer and payload bytes are skipped, so a
 * model of any size is scanned in memory proportional to its graph, not its weights.
 */
#include "formats/onnx_model.h"

#include <stdlib.h>

#include "common/msh_io.h"

typedef struct msh_scan {
    msh_onnx_model *m;
    msh_reader rd;
    uint8_t *out;
    size_t len, cap;
    msh_error *e;
} msh_scan;

static msh_status scan_reserve(msh_scan *s, size_t extra) {
    if (s->cap - s->len >= extra)
        return MSH_OK;
    size_t cap = s->cap ? s->cap : 4096;
    while (cap - s->len < extra) {
        if (cap > SIZE_MAX / 2)
            return msh_fail(s->e, MSH_ERR_NOMEM, "model graph too large to hold in memory");
        cap *= 2;
    }
    uint8_t *p = realloc(s->out, cap);
    if (!p)
        return msh_fail(s->e, MSH_ERR_NOMEM, "out of memory holding the model graph (%zu bytes)",
                        cap);
    s->out = p;
    s->cap = cap;
    return MSH_OK;
}

static size_t varint_encode(uint64_t v, uint8_t *p) {
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

static msh_status put_varint(msh_scan *s, uint64_t v) {
    MSH_FORWARD(scan_reserve(s, 10));
    s->len += varint_encode(v, s->out + s->len);
    return MSH_OK;
}

static msh_status put_bytes(msh_scan *s, int64_t n) {
    MSH_FORWARD(scan_reserve(s, (size_t)n));
    MSH_FORWARD(msh_reader_read(&s->rd, s->out + s->len, (size_t)n, s->e));
    s->len += (size_t)n;
    return MSH_OK;
}

static msh_status read_varint(msh_scan *s, int64_t end, uint64_t *v) {
    uint64_t r = 0;
    int64_t start = s->rd.pos;
    for (int i = 0; i < 10; i++) {
        if (s->rd.pos >= end)
            return msh_fail(s->e, MSH_ERR_FORMAT, "truncated varint at offset %lld",
                            (long long)start);
        uint8_t b;
        MSH_FORWARD(msh_reader_read(&s->rd, &b, 1, s->e));
        r |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *v = r;
            return MSH_OK;
        }
    }
    return msh_fail(s->e, MSH_ERR_FORMAT, "malformed varint at offset %lld", (long long)start);
}

static msh_status add_payload(msh_onnx_model *m, int src, int64_t off, int64_t len, size_t *idx,
                              msh_error *e) {
    if (!msh_grow((void **)&m->payloads, &m->cap_payloads, m->n_payloads, sizeof *m->payloads))
        return msh_fail(e, MSH_ERR_NOMEM, "out of memory for the tensor table");
    *idx = m->n_payloads;
    m->payloads[m->n_payloads++] = (msh_payload){src, off, len};
    return MSH_OK;
}

msh_status msh_onnx_add_payload(msh_onnx_model *m, int src, int64_t off, int64_t len, size_t *idx,
                                msh_error *e);
msh_status msh_onnx_add_payload(msh_onnx_model *m, int src, int64_t off, int64_t len, size_t *idx,
                                msh_error *e) {
    return add_payload(m, src, off, len, idx, e);
}

static msh_status scan_message(msh_scan *s, const ProtobufCMessageDescriptor *d, int64_t end,
                               int depth, int graph_depth) {
    const int is_tensor = d == &onnx__tensor_proto__descriptor;
    int seen_raw = 0;
    while (s->rd.pos < end) {
        int64_t field_at = s->rd.pos;
        uint64_t tag;
        MSH_FORWARD(read_varint(s, end, &tag));
        uint64_t num = tag >> 3;
        unsigned wt = (unsigned)(tag & 7);
        if (num == 0 || num > 536870911u)
            return msh_fail(s->e, MSH_ERR_FORMAT,
                            "not a protobuf model: invalid field number at offset %lld",
                            (long long)field_at);
        if (is_tensor && num == MSH_ONNX_MARKER_FIELD)
            return msh_fail(s->e, MSH_ERR_FORMAT,
                            "tensor uses reserved field number %u at offset %lld",
                            MSH_ONNX_MARKER_FIELD, (long long)field_at);
        const ProtobufCFieldDescriptor *fd =
            protobuf_c_message_descriptor_get_field(d, (unsigned)num);
        switch (wt) {
        case 0: {
            uint64_t v;
            MSH_FORWARD(read_varint(s, end, &v));
            MSH_FORWARD(put_varint(s, tag));
            MSH_FORWARD(put_varint(s, v));
            break;
        }
        case 1:
        case 5: {
            int64_t n = wt == 1 ? 8 : 4;
            if (end - s->rd.pos < n)
                return msh_fail(s->e, MSH_ERR_FORMAT, "truncated field at offset %lld",
                                (long long)field_at);
            MSH_FORWARD(put_varint(s, tag));
            MSH_FORWARD(put_bytes(s, n));
            break;
        }
        case 2: {
            uint64_t len;
            MSH_FORWARD(read_varint(s, end, &len));
            if (len > (uint64_t)(end - s->rd.pos))
                return msh_fail(
                    s->e, MSH_ERR_FORMAT,
                    "truncated: field %llu at offset %lld claims %llu bytes, %lld remain",
                    (unsigned long long)num, (long long)field_at, (unsigned long long)len,
                    (long long)(end - s->rd.pos));
            int64_t sub_end = s->rd.pos + (int64_t)len;
            if (fd && fd->type == PROTOBUF_C_TYPE_MESSAGE) {
                const ProtobufCMessageDescriptor *sd = fd->descriptor;
                int gd = graph_depth + (sd == &onnx__graph_proto__descriptor);
                if (depth + 1 > MSH_ONNX_MAX_DEPTH || gd > MSH_ONNX_MAX_GRAPH_DEPTH)
                    return msh_fail(s->e, MSH_ERR_LIMIT,
                                    "nesting deeper than %d messages or %d graphs at offset %lld",
                                    MSH_ONNX_MAX_DEPTH, MSH_ONNX_MAX_GRAPH_DEPTH,
                                    (long long)field_at);
                if (len >= ((uint64_t)1 << 35))
                    return msh_fail(s->e, MSH_ERR_LIMIT, "message of %llu bytes is too large",
                                    (unsigned long long)len);
                MSH_FORWARD(put_varint(s, tag));
                MSH_FORWARD(scan_reserve(s, 5));
                size_t len_at = s->len;
                s->len += 5; /* room for the largest length varint; shrunk below */
                MSH_FORWARD(scan_message(s, sd, sub_end, depth + 1, gd));
                size_t child = s->len - (len_at + 5);
                uint8_t tmp[10];
                size_t k = varint_encode(child, tmp);
                memmove(s->out + len_at + k, s->out + len_at + 5, child);
                memcpy(s->out + len_at, tmp, k);
                s->len -= 5 - k;
            } else if (is_tensor && num == 9 && len > 0) {
                if (seen_raw++)
                    return msh_fail(s->e, MSH_ERR_FORMAT,
                                    "tensor has raw_data twice at offset %lld",
                                    (long long)field_at);
                size_t idx = 0;
                MSH_FORWARD(add_payload(s->m, 0, s->rd.pos, (int64_t)len, &idx, s->e));
                s->rd.pos = sub_end;
                MSH_FORWARD(put_varint(s, ((uint64_t)MSH_ONNX_MARKER_FIELD << 3) | 0));
                MSH_FORWARD(put_varint(s, idx));
            } else {
                MSH_FORWARD(put_varint(s, tag));
                MSH_FORWARD(put_varint(s, len));
                MSH_FORWARD(put_bytes(s, (int64_t)len));
            }
            break;
        }
        case 3:
        case 4:
            return msh_fail(s->e, MSH_ERR_FORMAT,
                            "not an ONNX model: protobuf group field at offset %lld",
                            (long long)field_at);
        default:
            return msh_fail(s->e, MSH_ERR_FORMAT,
                            "not a protobuf model: invalid wire type %u at offset %lld", wt,
                            (long long)field_at);
        }
    }
    if (s->rd.pos != end)
        return msh_fail(s->e, MSH_ERR_FORMAT, "malformed protobuf: a field crosses offset %lld",
                        (long long)end);
    return MSH_OK;
}

msh_status msh_onnx_scan(msh_onnx_model *m, msh_error *e) {
    msh_scan s;
    memset(&s, 0, sizeof s);
    s.m = m;
    s.e = e;
    MSH_FORWARD(msh_reader_init(&s.rd, m->fd, m->file_size, (size_t)1 << 20, e));
    msh_status st = scan_message(&s, &onnx__model_proto__descriptor, m->file_size, 0, 0);
    msh_reader_free(&s.rd);
    if (st != MSH_OK) {
        free(s.out);
        return st;
    }
    m->skel = s.out;
    m->skel_len = s.len;
    return MSH_OK;
}
