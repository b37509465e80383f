/* Wire scanner and streaming writer: every tensor is found, payloads are detached and streamed
 * back, a round trip preserves the message (unknown fields included), external output is
 * aligned and complete, and malformed input fails cleanly. */
#include <unistd.h>

#include "test_util.h"

static const char *dir;

static char *path_in(const char *name) {
    static char buf[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static Onnx__ModelProto *build(void) {
    Onnx__GraphProto *g = mk_graph("main");
    Onnx__TensorProto *a = mk_tensor("A", 1000, 1.0f, 0);
    /* an unknown varint field 1000 = 7 on A */
    a->base.n_unknown_fields = 1;
    a->base.unknown_fields = malloc(sizeof(ProtobufCMessageUnknownField));
    a->base.unknown_fields[0].tag = 1000;
    a->base.unknown_fields[0].wire_type = PROTOBUF_C_WIRE_TYPE_VARINT;
    a->base.unknown_fields[0].len = 1;
    a->base.unknown_fields[0].data = malloc(1);
    a->base.unknown_fields[0].data[0] = 7;
    PUSH(g->initializer, g->n_initializer, a);
    PUSH(g->initializer, g->n_initializer, mk_tensor("B", 10, 5.0f, 1));
    Onnx__TensorProto *z = mk_tensor("Z", 0, 0.0f, 0);
    PUSH(g->initializer, g->n_initializer, z);
    PUSH(g->input, g->n_input, mk_vi("x"));
    PUSH(g->output, g->n_output, mk_vi("y"));
    PUSH(g->node, g->n_node, mk_node("Add", "x", "A", "y1"));
    Onnx__NodeProto *cn = mk_node("Constant", NULL, NULL, "c");
    Onnx__AttributeProto *at = malloc(sizeof *at);
    onnx__attribute_proto__init(at);
    at->name = xstrdup("value");
    at->t = mk_tensor("C", 50, 3.0f, 0);
    PUSH(cn->attribute, cn->n_attribute, at);
    PUSH(g->node, g->n_node, cn);
    Onnx__NodeProto *ifn = mk_node("If", "cond", NULL, "y");
    const char *names[2] = {"then_branch", "else_branch"};
    const char *tn[2] = {"T", "E"};
    for (int b = 0; b < 2; b++) {
        Onnx__AttributeProto *ga = malloc(sizeof *ga);
        onnx__attribute_proto__init(ga);
        ga->name = xstrdup(names[b]);
        ga->g = mk_graph(names[b]);
        PUSH(ga->g->initializer, ga->g->n_initializer, mk_tensor(tn[b], 300, 9.0f, 0));
        PUSH(ga->g->node, ga->g->n_node, mk_node("Add", "y1", tn[b], "o"));
        PUSH(ga->g->output, ga->g->n_output, mk_vi("o"));
        PUSH(ifn->attribute, ifn->n_attribute, ga);
    }
    PUSH(g->node, g->n_node, ifn);
    Onnx__ModelProto *m = mk_model(g);
    Onnx__StringStringEntryProto *kv = malloc(sizeof *kv);
    onnx__string_string_entry_proto__init(kv);
    kv->key = xstrdup("author");
    kv->value = xstrdup("unit test");
    PUSH(m->metadata_props, m->n_metadata_props, kv);
    return m;
}

static void expect_same_tensors(const msh_onnx_model *x, const msh_onnx_model *y) {
    CHECK(x->n_tensors == y->n_tensors, "tensor count %zu vs %zu", x->n_tensors, y->n_tensors);
    for (size_t i = 0; i < x->n_tensors && i < y->n_tensors; i++) {
        const msh_tensor *a = &x->tensors[i], *b = &y->tensors[i];
        CHECK(a->d.nbytes == b->d.nbytes, "tensor %zu size", i);
        if (a->d.nbytes != b->d.nbytes || a->d.nbytes <= 0)
            continue;
        uint8_t *ba = malloc((size_t)a->d.nbytes), *bb = malloc((size_t)b->d.nbytes);
        msh_error e;
        CHECK(msh_onnx_tensor_read(x, a, 0, ba, (size_t)a->d.nbytes, &e) == MSH_OK, "read a");
        CHECK(msh_onnx_tensor_read(y, b, 0, bb, (size_t)b->d.nbytes, &e) == MSH_OK, "read b");
        CHECK(memcmp(ba, bb, (size_t)a->d.nbytes) == 0, "tensor %zu bytes differ", i);
        free(ba);
        free(bb);
    }
}

/* Wrap the n bytes at buf (in place) as a length-delimited field. */
static size_t wrap(uint8_t *buf, unsigned field, size_t n) {
    uint8_t hdr[12];
    size_t k = 0;
    hdr[k++] = (uint8_t)((field << 3) | 2);
    size_t v = n;
    while (v >= 0x80) {
        hdr[k++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    hdr[k++] = (uint8_t)v;
    memmove(buf + k, buf, n);
    memcpy(buf, hdr, k);
    return k + n;
}

int main(int argc, char **argv) {
    dir = argc > 1 ? argv[1] : ".";
    Onnx__ModelProto *src = build();
    size_t len;
    uint8_t *bytes = pack(&src->base, &len);
    protobuf_c_message_free_unpacked(&src->base, NULL);
    write_bytes(path_in("w_in.onnx"), bytes, len);

    msh_onnx_model m;
    msh_error e;
    msh_status st = msh_onnx_model_open(&m, path_in("w_in.onnx"), &e);
    CHECK(st == MSH_OK, "open: %s", e.msg);
    CHECK(m.n_tensors == 6, "found %zu tensors, want 6 (A B Z C T E)", m.n_tensors);
    CHECK(m.n_graphs == 3, "found %zu graphs, want 3", m.n_graphs);
    CHECK(m.n_payloads == 4, "detached %zu payloads, want 4", m.n_payloads);
    for (size_t i = 0; i < m.n_payloads; i++) {
        /* every payload is really in the file where the scanner said */
        const msh_payload *p = &m.payloads[i];
        CHECK(p->offset > 0 && p->offset + p->length <= (int64_t)len, "payload %zu range", i);
    }
    float a2;
    CHECK(msh_onnx_tensor_read(&m, &m.tensors[0], 8, &a2, 4, &e) == MSH_OK && a2 == 3.0f,
          "A[2] read from the file");
    float b3;
    CHECK(msh_onnx_tensor_read(&m, &m.tensors[1], 12, &b3, 4, &e) == MSH_OK && b3 == 8.0f,
          "B[3] read from float_data");

    /* Inline round trip: same message as the input. */
    msh_engine *eng = NULL;
    CHECK(msh_engine_cpu(2, &eng, &e) == MSH_OK, "engine: %s", e.msg);
    msh_onnx_write_result wr;
    st = msh_onnx_save(&m, path_in("w_out.onnx"), 0, 1024, eng, &wr, NULL, &e);
    CHECK(st == MSH_OK, "write: %s", e.msg);
    size_t n1, n2;
    uint8_t *c1 = canonical(path_in("w_in.onnx"), &n1);
    uint8_t *c2 = canonical(path_in("w_out.onnx"), &n2);
    CHECK(c1 && c2 && n1 == n2 && memcmp(c1, c2, n1) == 0, "round trip changed the model");
    CHECK(wr.model_bytes == (int64_t)len, "round trip size %lld vs %zu", (long long)wr.model_bytes,
          len);
    free(c1);
    free(c2);

    /* External output: every payload goes to .data at 4096-aligned offsets. */
    st = msh_onnx_save(&m, path_in("w_ext.onnx"), 1, 0, eng, &wr, NULL, &e);
    CHECK(st == MSH_OK && wr.external, "external write: %s", e.msg);
    msh_onnx_model x;
    st = msh_onnx_model_open(&x, path_in("w_ext.onnx"), &e);
    CHECK(st == MSH_OK, "reopen external: %s", e.msg);
    if (st == MSH_OK) {
        CHECK(x.n_ext == 1, "one external file");
        size_t n_external = 0;
        for (size_t i = 0; i < x.n_tensors; i++)
            if (x.tensors[i].external_in) {
                n_external++;
                CHECK(x.payloads[x.tensors[i].payload].offset % 4096 == 0, "alignment");
            }
        CHECK(n_external > 0, "the external output holds external tensors (%zu)", n_external);
        expect_same_tensors(&m, &x);
        /* and back to inline: identical to the input again */
        st = msh_onnx_save(&x, path_in("w_back.onnx"), 0, 1024, eng, &wr, NULL, &e);
        CHECK(st == MSH_OK, "write back: %s", e.msg);
        c1 = canonical(path_in("w_in.onnx"), &n1);
        c2 = canonical(path_in("w_back.onnx"), &n2);
        CHECK(c1 && c2 && n1 == n2 && memcmp(c1, c2, n1) == 0, "external round trip");
        free(c1);
        free(c2);
    }
    msh_onnx_model_free(&x);
    msh_onnx_model_free(&m);

    /* Every truncation: never a crash; refused whenever protobuf-c itself cannot parse it. */
    int accepted = 0;
    for (size_t k = 0; k < len; k++) {
        write_bytes(path_in("w_trunc.onnx"), bytes, k);
        st = msh_onnx_model_open(&m, path_in("w_trunc.onnx"), &e);
        if (st == MSH_OK) {
            accepted++;
            ProtobufCMessage *pm =
                protobuf_c_message_unpack(&onnx__model_proto__descriptor, NULL, k, bytes);
            CHECK(pm != NULL, "accepted a truncation at %zu that protobuf-c rejects", k);
            if (pm)
                protobuf_c_message_free_unpacked(pm, NULL);
        }
        msh_onnx_model_free(&m);
    }
    CHECK(accepted < 8, "%d truncations accepted", accepted);

    /* Nesting 100 graphs deep is refused before protobuf-c recurses. */
    size_t cap = 1 << 16, n = 0;
    uint8_t *deep = calloc(cap, 1);
    for (int lvl = 0; lvl < 100; lvl++) {
        n = wrap(deep, 6, n); /* AttributeProto.g */
        n = wrap(deep, 5, n); /* NodeProto.attribute */
        n = wrap(deep, 1, n); /* GraphProto.node */
    }
    n = wrap(deep, 7, n); /* ModelProto.graph */
    write_bytes(path_in("w_deep.onnx"), deep, n);
    st = msh_onnx_model_open(&m, path_in("w_deep.onnx"), &e);
    CHECK(st == MSH_ERR_LIMIT, "deep nesting: status %d (%s)", st, e.msg);
    msh_onnx_model_free(&m);
    free(deep);

    /* Not a model at all. */
    write_bytes(path_in("w_empty.onnx"), bytes, 0);
    CHECK(msh_onnx_model_open(&m, path_in("w_empty.onnx"), &e) == MSH_ERR_FORMAT, "empty");
    msh_onnx_model_free(&m);
    write_bytes(path_in("w_text.onnx"), (const uint8_t *)"hello, world\n", 13);
    CHECK(msh_onnx_model_open(&m, path_in("w_text.onnx"), &e) != MSH_OK, "text accepted");
    msh_onnx_model_free(&m);
    free(bytes);
    printf("%s\n", fails ? "FAILED" : "ok");
    msh_engine_close(eng);
    return fails != 0;
}
