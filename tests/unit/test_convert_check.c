/* msh_convert_check (issue 18): an option that would silently do nothing is MSH_ERR_USAGE, with
 * `*bad` naming it: block_ops naming an op type of no ONNX schema (custom-domain nodes stay FP32
 * anyway), and options given without the option they refine. */
#include <string.h>

#include "modelshrink.h"
#include "test_check.h"

/* The status of msh_convert_check for an ONNX input; *bad and *msg as it set them. */
static msh_status check(const msh_convert_options *o, msh_option *bad, const char **msg) {
    static msh_error e;
    e.msg[0] = 0;
    *bad = MSH_OPTION_NONE;
    msh_status st = msh_convert_check(o, MSH_FORMAT_ONNX, NULL, bad, &e);
    *msg = e.msg;
    return st;
}

int main(void) {
    msh_convert_options o;
    msh_option bad;
    const char *msg;

    /* op types: any ONNX schema's (ai.onnx, ai.onnx.ml, training), exact spelling */
    static const char *const good_ops[] = {
        "MatMul", "MatMul,Add", "LayerNormalization", "LinearClassifier", "Gradient", "MatMul,,Add",
        ""};
    for (size_t i = 0; i < sizeof good_ops / sizeof good_ops[0]; i++) {
        msh_convert_options_init(&o);
        o.float_type = MSH_FLOAT_FP16;
        o.block_ops = good_ops[i];
        CHECK(check(&o, &bad, &msg) == MSH_OK, "block_ops '%s' is accepted: %s", good_ops[i], msg);
    }
    msh_convert_options_init(&o);
    o.float_type = MSH_FLOAT_BF16;
    o.block_ops = "MatMul,NotAnOp";
    CHECK(check(&o, &bad, &msg) == MSH_ERR_USAGE && bad == MSH_OPTION_BLOCK_OPS &&
              strstr(msg, "'NotAnOp'") && strstr(msg, "custom domains always stay FP32") &&
              !strstr(msg, "did you mean"),
          "block_ops NotAnOp: usage error naming it and the custom-domain rule: %s", msg);
    o.block_ops = "matmul";
    CHECK(check(&o, &bad, &msg) == MSH_ERR_USAGE && bad == MSH_OPTION_BLOCK_OPS &&
              strstr(msg, "did you mean 'MatMul'"),
          "block_ops matmul: suggests MatMul: %s", msg);
    o.block_ops = "FusedMatMul"; /* com.microsoft: a custom domain for ONNX */
    CHECK(check(&o, &bad, &msg) == MSH_ERR_USAGE && bad == MSH_OPTION_BLOCK_OPS,
          "block_ops FusedMatMul (a custom-domain op): usage error: %s", msg);

    /* options without the one they refine; `base` makes each valid again */
    enum { KEEP_IO, BLOCK_OPS, BLOCK_NODES, STORAGE_IO, STORAGE_OPS, GATHER, MIN_EL, KEEP_IN, DGI };
    static const struct {
        const char *what;
        msh_option bad;
    } cases[] = {
        [KEEP_IO] = {"keep_io_types 0 without float_type", MSH_OPTION_KEEP_IO_TYPES},
        [BLOCK_OPS] = {"block_ops without float_type", MSH_OPTION_BLOCK_OPS},
        [BLOCK_NODES] = {"block_nodes without float_type", MSH_OPTION_BLOCK_NODES},
        [STORAGE_IO] = {"keep_io_types 0 with storage_only", MSH_OPTION_KEEP_IO_TYPES},
        [STORAGE_OPS] = {"block_ops with storage_only", MSH_OPTION_BLOCK_OPS},
        [GATHER] = {"int8_gather without int8", MSH_OPTION_INT8_GATHER},
        [MIN_EL] = {"int8_min_elements without int8", MSH_OPTION_INT8_MIN_ELEMENTS},
        [KEEP_IN] = {"keep_inputs without keep_outputs or drop_outputs", MSH_OPTION_KEEP_INPUTS},
        [DGI] = {"dedup_graph_inputs without dedup", MSH_OPTION_DEDUP_GRAPH_INPUTS},
    };
    for (int k = 0; k < (int)(sizeof cases / sizeof cases[0]); k++) {
        for (int fixed = 0; fixed < 2; fixed++) {
            msh_convert_options_init(&o);
            switch (k) {
            case KEEP_IO: o.keep_io_types = 0, o.float_type = fixed ? MSH_FLOAT_FP16 : 0; break;
            case BLOCK_OPS:
                o.block_ops = "MatMul", o.float_type = fixed ? MSH_FLOAT_BF16 : 0;
                break;
            case BLOCK_NODES:
                o.block_nodes = "n1", o.float_type = fixed ? MSH_FLOAT_FP16 : 0;
                break;
            case STORAGE_IO:
                o.keep_io_types = 0, o.float_type = MSH_FLOAT_FP16, o.storage_only = !fixed;
                break;
            case STORAGE_OPS:
                o.block_ops = "MatMul", o.float_type = MSH_FLOAT_BF16, o.storage_only = !fixed;
                break;
            case GATHER: o.int8_gather = 1, o.int8 = fixed; break;
            case MIN_EL: o.int8_min_elements = 1, o.int8 = fixed; break;
            case KEEP_IN: o.keep_inputs = 1, o.keep_outputs = fixed ? "y" : NULL; break;
            default: o.dedup_graph_inputs = 1, o.dedup = fixed; break;
            }
            msh_status st = check(&o, &bad, &msg);
            if (fixed)
                CHECK(st == MSH_OK, "%s: fine with it: %s", cases[k].what, msg);
            else
                CHECK(st == MSH_ERR_USAGE && bad == cases[k].bad &&
                          strstr(msg, msh_option_name(cases[k].bad)),
                      "%s: usage error naming the option (%s)", cases[k].what, msg);
        }
    }
    printf("%s\n", fails ? "FAILED" : "ok");
    return fails != 0;
}
