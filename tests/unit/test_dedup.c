/* Dedup: groups by type, shape and bytes; keeps graph inputs and outputs intact; merges across
 * If branches by hoisting; rewrites every reference. */
#include "msh_pipeline.h"
#include "passes/dedup.h"
#include "test_util.h"

static Onnx__ModelProto *build(void) {
    Onnx__GraphProto *g = mk_graph("main");
    const char *same[] = {"W1", "W2", "W3", "W4", "O"};
    for (int i = 0; i < 5; i++)
        PUSH(g->initializer, g->n_initializer, mk_tensor(same[i], 64, 1.0f, i == 2));
    PUSH(g->initializer, g->n_initializer, mk_tensor("Diff", 64, 2.0f, 0));
    PUSH(g->input, g->n_input, mk_vi("x"));
    PUSH(g->input, g->n_input, mk_vi("W4"));  /* W4 is an overridable default */
    PUSH(g->output, g->n_output, mk_vi("O")); /* O is an output: never renamed */
    PUSH(g->output, g->n_output, mk_vi("y"));
    PUSH(g->value_info, g->n_value_info, mk_vi("W2"));
    PUSH(g->node, g->n_node, mk_node("Mul", "x", "W1", "a"));
    PUSH(g->node, g->n_node, mk_node("Mul", "a", "W2", "b"));
    PUSH(g->node, g->n_node, mk_node("Add", "b", "W3", "c"));
    PUSH(g->node, g->n_node, mk_node("Add", "c", "W4", "d"));
    PUSH(g->node, g->n_node, mk_node("Add", "d", "Diff", "e"));
    Onnx__NodeProto *ifn = mk_node("If", "cond", NULL, "y");
    const char *names[2] = {"then_branch", "else_branch"};
    const char *tn[2] = {"T1", "T2"};
    for (int b = 0; b < 2; b++) {
        Onnx__AttributeProto *ga = malloc(sizeof *ga);
        onnx__attribute_proto__init(ga);
        ga->name = xstrdup(names[b]);
        ga->g = mk_graph(names[b]);
        PUSH(ga->g->initializer, ga->g->n_initializer, mk_tensor(tn[b], 32, 7.0f, 0));
        PUSH(ga->g->node, ga->g->n_node, mk_node("Add", "e", tn[b], "o"));
        PUSH(ga->g->output, ga->g->n_output, mk_vi("o"));
        PUSH(ifn->attribute, ifn->n_attribute, ga);
    }
    PUSH(g->node, g->n_node, ifn);
    return mk_model(g);
}

static const char *input_of(const Onnx__GraphProto *g, size_t node, size_t k) {
    return g->node[node]->input[k];
}

static int has_init(const Onnx__GraphProto *g, const char *name) {
    for (size_t i = 0; i < g->n_initializer; i++)
        if (strcmp(g->initializer[i]->name, name) == 0)
            return 1;
    return 0;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : ".";
    char in[1024], out[1024];
    snprintf(in, sizeof in, "%s/d_in.onnx", dir);
    snprintf(out, sizeof out, "%s/d_out.onnx", dir);
    Onnx__ModelProto *src = build();
    size_t len;
    uint8_t *bytes = pack(&src->base, &len);
    protobuf_c_message_free_unpacked(&src->base, NULL);
    write_bytes(in, bytes, len);
    free(bytes);

    msh_engine *eng = NULL;
    msh_error ee;
    CHECK(msh_engine_cpu(2, &eng, &ee) == MSH_OK, "engine: %s", ee.msg);
    for (int allow = 0; allow < 2; allow++) {
        msh_onnx_model m;
        msh_error e;
        msh_dedup_plan plan;
        CHECK(msh_onnx_model_open(&m, in, &e) == MSH_OK, "open: %s", e.msg);
        CHECK(msh_dedup_find(&m, allow, eng, &plan, &e) == MSH_OK, "find: %s", e.msg);
        CHECK(plan.n_groups == 2, "groups %zu, want 2", plan.n_groups);
        CHECK(plan.merged == 4, "merged %lld, want 4", (long long)plan.merged);
        CHECK(plan.saved_bytes == 3 * 256 + 128, "saved %lld", (long long)plan.saved_bytes);
        /* The keeper is the interface tensor: O (an output) by default; with graph inputs
         * allowed, W4 (an input default) is met first and kept, and O stays on its own. */
        const char *k = allow ? "W4" : "O";
        CHECK(msh_dedup_apply(&m, &plan, &e) == MSH_OK, "apply: %s", e.msg);
        Onnx__GraphProto *g = m.mp->graph;
        CHECK(has_init(g, "O") && has_init(g, "W4") && !has_init(g, "W1") && !has_init(g, "W2") &&
                  !has_init(g, "W3"),
              "main graph initializers after dedup");
        CHECK(strcmp(input_of(g, 0, 1), k) == 0 && strcmp(input_of(g, 1, 1), k) == 0 &&
                  strcmp(input_of(g, 2, 1), k) == 0,
              "references rewritten to the keeper %s", k);
        CHECK(strcmp(input_of(g, 3, 1), "W4") == 0, "graph input name never changes");
        CHECK(strcmp(input_of(g, 4, 1), "Diff") == 0 && has_init(g, "Diff"), "Diff untouched");
        CHECK(g->n_value_info == 0, "value_info of a removed tensor is dropped");
        /* The If branches' copies are merged into one, hoisted to the main graph. */
        Onnx__GraphProto *tb = g->node[5]->attribute[0]->g, *eb = g->node[5]->attribute[1]->g;
        CHECK(tb->n_initializer + eb->n_initializer == 0, "branch initializers hoisted");
        CHECK(has_init(g, "T1"), "T1 now lives in the main graph");
        CHECK(strcmp(tb->node[0]->input[1], "T1") == 0 && strcmp(eb->node[0]->input[1], "T1") == 0,
              "both branches reference T1");
        msh_onnx_write_result wr;
        CHECK(msh_onnx_save(&m, out, 0, 1024, eng, &wr, NULL, &e) == MSH_OK, "write: %s", e.msg);
        msh_dedup_plan_free(&plan);
        msh_onnx_model_free(&m);
        /* The written file holds exactly what remains, and nothing is left to merge. */
        CHECK(msh_onnx_model_open(&m, out, &e) == MSH_OK, "reopen: %s", e.msg);
        CHECK(m.n_tensors == 4, "tensors after dedup: %zu", m.n_tensors);
        CHECK(msh_dedup_find(&m, allow, eng, &plan, &e) == MSH_OK && plan.n_groups == 0,
              "second dedup finds nothing");
        msh_dedup_plan_free(&plan);
        msh_onnx_model_free(&m);
    }
    msh_engine_close(eng);
    printf("%s\n", fails ? "FAILED" : "ok");
    return fails != 0;
}
