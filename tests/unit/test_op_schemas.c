/* The generated operator schema table: lookup by opset, variadic repetition, and facts from
 * onnx.defs that the FP16/BF16 pass depends on. */
#include "passes/op_schemas.h"
#include "test_check.h"

#include <string.h>

#define BIT(t) MSH_OP_TYPE_BIT(t)
enum { FLOAT = 1, INT64 = 7, FLOAT16 = 10, BFLOAT16 = 16 };

static const msh_op_schema *find(const char *domain, const char *op, int64_t opset) {
    const msh_op_schema *s = msh_op_schema_find(domain, op, opset);
    CHECK(s != NULL, "%s::%s at opset %lld not found", domain, op, (long long)opset);
    return s;
}

static void test_sorted(void) {
    size_t n = 0;
    const msh_op_schema *t = msh_op_schema_table(&n);
    CHECK(n > 600, "only %zu schemas", n);
    for (size_t i = 1; i < n; i++) {
        int c = strcmp(t[i - 1].domain, t[i].domain);
        if (c == 0)
            c = strcmp(t[i - 1].name, t[i].name);
        if (c == 0)
            c = t[i - 1].since_version < t[i].since_version ? -1 : 1;
        CHECK(c < 0, "table not sorted at %zu (%s::%s-%d)", i, t[i].domain, t[i].name,
              t[i].since_version);
    }
    /* Every entry is reachable by lookup at its own since_version, and every var index is in
     * range with the parameter's mask equal to its variable's. */
    for (size_t i = 0; i < n; i++) {
        const msh_op_schema *s = &t[i];
        CHECK(msh_op_schema_find(s->domain, s->name, s->since_version) == s, "%s::%s-%d lookup",
              s->domain, s->name, s->since_version);
        for (int io = 0; io < 2; io++) {
            const msh_op_param *p = io ? s->outputs : s->inputs;
            size_t np = io ? s->n_outputs : s->n_inputs;
            for (size_t k = 0; k < np; k++) {
                CHECK(p[k].var < (int)s->n_vars, "%s-%d var out of range", s->name,
                      s->since_version);
                if (p[k].var >= 0)
                    CHECK(p[k].types == s->var_types[p[k].var], "%s-%d mask mismatch", s->name,
                          s->since_version);
                CHECK(p[k].types != 0, "%s-%d param %zu allows nothing", s->name, s->since_version,
                      k);
            }
        }
    }
    CHECK(strcmp(msh_op_schemas_onnx_version, "1") > 0, "onnx version '%s'",
          msh_op_schemas_onnx_version);
}

static void test_lookup(void) {
    const msh_op_schema *s = find("", "Add", 14);
    if (s) {
        CHECK(s->since_version == 14, "Add@14 since %d", s->since_version);
        CHECK(s->n_vars == 1 && strcmp(s->var_names[0], "T") == 0, "Add vars");
        const msh_op_param *a = msh_op_input(s, 0);
        CHECK(a && a->var == 0, "Add input 0 is T");
        CHECK(a && (a->types & BIT(FLOAT)) && (a->types & BIT(FLOAT16)) &&
                  (a->types & BIT(BFLOAT16)),
              "Add@14 T: 0x%08x", a ? a->types : 0);
        CHECK(msh_op_output(s, 0) && msh_op_output(s, 0)->var == 0, "Add output is T");
        CHECK(msh_op_input(s, 2) == NULL, "Add has two inputs");
        CHECK(msh_op_output(s, 1) == NULL, "Add has one output");
    }
    s = find("", "Add", 7);
    if (s) {
        CHECK(s->since_version == 7, "Add@7 since %d", s->since_version);
        CHECK(s->var_types[0] & BIT(FLOAT16), "Add@7 allows FLOAT16");
        CHECK(!(s->var_types[0] & BIT(BFLOAT16)), "Add@7 must not allow BFLOAT16");
    }
    s = find("", "Add", 13); /* versions 13 and 14 exist: 13 applies at 13 */
    CHECK(s && s->since_version == 13, "Add@13");
    s = find("ai.onnx", "Add", 12);
    CHECK(s && s->since_version == 7 && s == msh_op_schema_find("", "Add", 12),
          "ai.onnx is the default domain");
    CHECK(msh_op_schema_find(NULL, "Add", 12) == s, "NULL domain is the default domain");

    s = find("", "Resize", 13);
    if (s) {
        const msh_op_param *scales = msh_op_input(s, 2), *roi = msh_op_input(s, 1);
        CHECK(scales && scales->var == -1 && scales->types == BIT(FLOAT),
              "Resize scales fixed float: var %d mask 0x%08x", scales ? scales->var : 99,
              scales ? scales->types : 0);
        CHECK(scales && scales->option == MSH_OP_OPTIONAL, "Resize scales optional");
        CHECK(roi && roi->var >= 0 && strcmp(s->var_names[roi->var], "T2") == 0 &&
                  (roi->types & BIT(FLOAT16)),
              "Resize roi is T2 with FLOAT16");
        CHECK(msh_op_input(s, 3) && msh_op_input(s, 3)->types == BIT(INT64), "Resize sizes");
    }
    s = find("", "Range", 11);
    if (s) {
        CHECK(!(s->var_types[0] & BIT(FLOAT16)), "Range@11 must not allow FLOAT16");
        CHECK(s->var_types[0] & BIT(FLOAT), "Range@11 allows FLOAT");
    }
    s = find("", "TopK", 11);
    if (s) {
        const msh_op_param *k = msh_op_input(s, 1);
        CHECK(k && k->var == -1 && k->types == BIT(INT64), "TopK K fixed int64");
        const msh_op_param *idx = msh_op_output(s, 1);
        CHECK(idx && idx->types == BIT(INT64), "TopK indices int64");
    }
    s = find("", "Cast", 13);
    if (s) {
        const msh_op_param *o = msh_op_output(s, 0);
        CHECK(o && o->var >= 0 && strcmp(s->var_names[o->var], "T2") == 0 &&
                  (o->types & BIT(FLOAT16)) && (o->types & BIT(BFLOAT16)),
              "Cast output T2 allows FLOAT16");
    }
    s = find("", "LayerNormalization", 17);
    CHECK(s && s->since_version == 17, "LayerNormalization-17");
    CHECK(msh_op_schema_find("", "LayerNormalization", 16) == NULL, "no LayerNormalization@16");

    s = find("", "Concat", 13);
    if (s) {
        const msh_op_param *p0 = msh_op_input(s, 0);
        CHECK(p0 && p0->option == MSH_OP_VARIADIC && p0->homogeneous, "Concat input variadic");
        CHECK(msh_op_input(s, 5) == p0, "Concat input 5 repeats input 0");
        CHECK(msh_op_output(s, 1) == NULL, "Concat has one output");
    }
    s = find("", "SequenceAt", 11);
    if (s) {
        const msh_op_param *p = msh_op_input(s, 0);
        CHECK(p && (p->types & MSH_OP_NONTENSOR), "SequenceAt input 0 is a sequence");
        const msh_op_param *pos = msh_op_input(s, 1);
        CHECK(pos && !(pos->types & MSH_OP_NONTENSOR), "position is a tensor");
    }
    s = find("ai.onnx.ml", "ArrayFeatureExtractor", 1);
    CHECK(s && strcmp(s->domain, "ai.onnx.ml") == 0, "ai.onnx.ml domain present");
    CHECK(msh_op_schema_find("ai.onnx.ml", "Add", 14) == NULL, "Add is not in ai.onnx.ml");

    CHECK(msh_op_schema_find("", "NoSuchOp", 20) == NULL, "unknown op");
    CHECK(msh_op_schema_find("", "Ad", 20) == NULL, "prefix of an op");
    CHECK(msh_op_schema_find("", "Addd", 20) == NULL, "extension of an op");
    CHECK(msh_op_schema_find("com.example", "Add", 14) == NULL, "unknown domain");
    CHECK(msh_op_schema_find("", "Add", 0) == NULL, "opset 0");
    CHECK(msh_op_schema_find("", "Gelu", 19) == NULL, "Gelu before its first version (20)");
    CHECK(msh_op_schema_find("", "Gelu", 20) != NULL, "Gelu-20");
    CHECK(msh_op_schema_find("", "Add", 1000) != NULL, "future opset takes the latest");
    CHECK(msh_op_input(NULL, 0) == NULL && msh_op_output(NULL, 0) == NULL, "NULL schema");
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    test_sorted();
    test_lookup();
    printf("%s\n", fails ? "FAILED" : "ok");
    return fails != 0;
}
