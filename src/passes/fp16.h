/*
 * FP32 -> FP16 / BF16 retyping of an ONNX graph.
 *
 * Tensors: FLOAT initializers, Constant `value` tensors and ConstantOfShape `value` tensors
 * become FLOAT16 (or BFLOAT16): the pass only plans it (msh_tentry.out_dtype) and the engine
 * converts the bytes when the writer asks for them, so this pass never reads weights. Tensors in
 * function bodies are left alone (their types are the function's contract).
 *
 * Nodes: a node runs in the target type when its operator schema (op_schemas.c, generated from
 * onnx.defs) allows the target type for a type variable that its FLOAT inputs bind. Inputs on
 * parameters fixed to tensor(float) (Resize scales, ...) and inputs on variables that do not
 * allow the target keep FLOAT (com.microsoft MatMulNBits and GatherBlockQuantized, which INT4
 * writes, have schemas here: MatMulNBits' A, scales, bias and Y, GatherBlockQuantized's scales and
 * output, in FLOAT or FLOAT16). Nodes without a schema (custom domains), If/Loop/Scan
 * nodes themselves, and nodes blocked by the user stay FP32. Where a value's type differs from what
 * a consumer needs, a Cast is inserted just before the consumer (one per value, type and graph).
 * Values whose type cannot be inferred are never retyped and never cast.
 *
 * Borders: main-graph inputs and outputs keep FLOAT unless keep_io is 0; subgraph inputs and
 * outputs always keep their types, so If/Loop/Scan stay type-correct. A Cast(to=FLOAT) whose
 * result is retyped becomes Cast(to=FLOAT16). A weight wanted in both types is stored in both.
 */
#ifndef MSH_FP16_H
#define MSH_FP16_H

#include "formats/onnx_model.h"

typedef struct msh_fp16_opts {
    int32_t target; /* 10 (FLOAT16) or 16 (BFLOAT16) */
    int keep_io;
    const char *block_ops;   /* comma-separated op types, or NULL */
    const char *block_nodes; /* comma-separated node names, or NULL */
    /* Tensors kept FP32, and every node that reads them (as if blocked; so are nodes that only
     * move such a value, and their readers): by the tensor's origin (msh_tentry.origin), from the
     * precision plan's range test; and by glob patterns (fnmatch) on initializer names and on
     * Constant output names. */
    const uint8_t *keep; /* per origin, or NULL */
    size_t n_keep;
    const char *const *keep_globs;
    size_t n_keep_globs;
} msh_fp16_opts;

typedef struct msh_fp16_stats {
    int64_t tensors;     /* tensors converted */
    int64_t nodes;       /* nodes that now run in the target type */
    int64_t nodes_kept;  /* nodes with FLOAT inputs or outputs kept in FP32 */
    int64_t casts;       /* Cast nodes inserted */
    int64_t bytes_saved; /* FP32 bytes minus the bytes written for them (copies count) */
    int64_t kept_range;  /* FLOAT tensors kept because `keep` names their origin */
    int64_t kept_user;   /* FLOAT tensors kept because a glob matched */
    int64_t candidates;  /* FLOAT initializers and Constant values seen (converted or not) */
} msh_fp16_stats;

/* Whether tensor `t`, known in its graph as `name` (an initializer's or a Constant's output),
 * stays FP32 under `o`: MSH_FP16_KEPT_RANGE, MSH_FP16_KEPT_USER or 0. */
enum { MSH_FP16_KEPT_RANGE = 1, MSH_FP16_KEPT_USER = 2 };
int msh_fp16_kept(const msh_fp16_opts *o, const msh_tensor *t, const char *name);

msh_status msh_fp16_apply(msh_onnx_model *m, const msh_fp16_opts *o, msh_fp16_stats *st,
                          msh_error *e);

#endif
