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
 * allow the target keep FLOAT. Nodes without a schema (custom domains), If/Loop/Scan nodes
 * themselves, and nodes blocked by the user stay FP32. Where a value's type differs from what a
 * consumer needs, a Cast is inserted just before the consumer (one per value, type and graph).
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
} msh_fp16_opts;

typedef struct msh_fp16_stats {
    int64_t tensors;     /* tensors converted */
    int64_t nodes;       /* nodes that now run in the target type */
    int64_t nodes_kept;  /* nodes with FLOAT inputs or outputs kept in FP32 */
    int64_t casts;       /* Cast nodes inserted */
    int64_t bytes_saved; /* FP32 bytes minus the bytes written for them (copies count) */
} msh_fp16_stats;

msh_status msh_fp16_apply(msh_onnx_model *m, const msh_fp16_opts *o, msh_fp16_stats *st,
                          msh_error *e);

#endif
