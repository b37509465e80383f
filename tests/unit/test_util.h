/* Helpers for the unit tests: build ONNX messages with protobuf-c, write them, compare. */
#ifndef MSH_TEST_UTIL_H
#define MSH_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/onnx_model.h"
#include "msh_pipeline.h"

#include "test_check.h"

static inline char *xstrdup(const char *s) {
    char *d = malloc(strlen(s) + 1);
    strcpy(d, s);
    return d;
}

/* A FLOAT tensor of shape [n] holding seed, seed+1, ... in raw_data (or float_data). */
static Onnx__TensorProto *mk_tensor(const char *name, int64_t n, float seed, int typed) {
    Onnx__TensorProto *t = malloc(sizeof *t);
    onnx__tensor_proto__init(t);
    t->name = xstrdup(name);
    t->has_data_type = 1;
    t->data_type = 1;
    t->n_dims = 1;
    t->dims = malloc(sizeof(int64_t));
    t->dims[0] = n;
    if (typed) {
        t->n_float_data = (size_t)n;
        t->float_data = malloc((size_t)n * 4 + 4);
        for (int64_t i = 0; i < n; i++)
            t->float_data[i] = seed + (float)i;
    } else {
        t->has_raw_data = 1;
        t->raw_data.len = (size_t)n * 4;
        t->raw_data.data = malloc((size_t)n * 4 + 4);
        for (int64_t i = 0; i < n; i++) {
            float v = seed + (float)i;
            memcpy(t->raw_data.data + 4 * i, &v, 4);
        }
    }
    return t;
}

static Onnx__NodeProto *mk_node(const char *op, const char *in0, const char *in1, const char *out) {
    Onnx__NodeProto *nd = malloc(sizeof *nd);
    onnx__node_proto__init(nd);
    nd->op_type = xstrdup(op);
    nd->n_input = in1 ? 2 : (in0 ? 1 : 0);
    nd->input = malloc(2 * sizeof(char *));
    if (in0)
        nd->input[0] = xstrdup(in0);
    if (in1)
        nd->input[1] = xstrdup(in1);
    nd->n_output = 1;
    nd->output = malloc(sizeof(char *));
    nd->output[0] = xstrdup(out);
    return nd;
}

static Onnx__ValueInfoProto *mk_vi(const char *name) {
    Onnx__ValueInfoProto *v = malloc(sizeof *v);
    onnx__value_info_proto__init(v);
    v->name = xstrdup(name);
    return v;
}

static Onnx__GraphProto *mk_graph(const char *name) {
    Onnx__GraphProto *g = malloc(sizeof *g);
    onnx__graph_proto__init(g);
    g->name = xstrdup(name);
    return g;
}

#define PUSH(arr, n, x)                                                                            \
    do {                                                                                           \
        (arr) = realloc((arr), ((n) + 1) * sizeof *(arr));                                         \
        (arr)[(n)++] = (x);                                                                        \
    } while (0)

static Onnx__ModelProto *mk_model(Onnx__GraphProto *g) {
    Onnx__ModelProto *m = malloc(sizeof *m);
    onnx__model_proto__init(m);
    m->has_ir_version = 1;
    m->ir_version = 8;
    m->graph = g;
    Onnx__OperatorSetIdProto *op = malloc(sizeof *op);
    onnx__operator_set_id_proto__init(op);
    op->domain = xstrdup("");
    op->has_version = 1;
    op->version = 17;
    PUSH(m->opset_import, m->n_opset_import, op);
    return m;
}

static inline uint8_t *pack(const ProtobufCMessage *m, size_t *len) {
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *b = malloc(*len + 1);
    protobuf_c_message_pack(m, b);
    return b;
}

static inline void write_bytes(const char *path, const uint8_t *b, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
}

static inline uint8_t *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        *n = 0;
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    return b;
}

/* Canonical bytes of a file's ModelProto (unpack + protobuf-c pack), NULL if it won't parse. */
static inline uint8_t *canonical(const char *path, size_t *n) {
    size_t len;
    uint8_t *b = read_file(path, &len);
    if (!b)
        return NULL;
    ProtobufCMessage *m = protobuf_c_message_unpack(&onnx__model_proto__descriptor, NULL, len, b);
    free(b);
    if (!m)
        return NULL;
    uint8_t *c = pack(m, n);
    protobuf_c_message_free_unpacked(m, NULL);
    return c;
}

#endif
