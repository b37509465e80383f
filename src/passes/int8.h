/*
 * INT8 weight-only quantization: symmetric, per output channel, DequantizeLinear.
 *
 * A FLOAT initializer with at least `min_elements` elements that feeds the weight input of
 * MatMul (B, channel axis = last), Gemm (B, axis 0 when transB else 1), Conv (W, axis 0),
 * ConvTranspose (W, axis 1) or, with `gather`, the data input of Gather (axis 0) becomes
 *   <W>_quantized (INT8, same shape) -> DequantizeLinear(axis) -> <W>_dequantized -> consumer,
 * with <W>_scale (FLOAT [C]; FLOAT16/BF16 after --fp16/--bf16 where DequantizeLinear-19 allows it)
 * and <W>_zero_point (INT8
 * zeros [C]). The scales are found by one streaming pass over the weight; the INT8 bytes are
 * produced while the output is written (onnx_write.c), both with the shared scalar math in
 * kernels/msh_scalar.h. Opset 10-12 (no per-axis DequantizeLinear) gets one scale per tensor;
 * below opset 10 nothing is quantized. A weight that also feeds another consumer (or the same
 * op along another axis) keeps its FLOAT initializer for it. Only initializers whose name is
 * declared once in the model are considered, so no subgraph can shadow the new names.
 */
#ifndef MSH_INT8_H
#define MSH_INT8_H

#include "engine/msh_engine.h"
#include "formats/onnx_model.h"

typedef struct msh_int8_opts {
    int64_t min_elements;
    int gather;
    int32_t scale_round; /* 0, or 10 / 16: round scales to FP16 / BF16 values (still stored as
                            FLOAT) because the float pass that follows will store them so */
    msh_engine *engine;  /* where the channel maxima are found */
} msh_int8_opts;

typedef struct msh_int8_stats {
    int64_t tensors;      /* weights quantized */
    int64_t bytes_before; /* their FP32 bytes */
    int64_t bytes_after;  /* INT8 + scale + zero-point bytes */
    int per_tensor;       /* 1: opset < 13 forced one scale per tensor */
    int skipped_opset;    /* 1: opset < 10, nothing quantized */
    int64_t opset;
} msh_int8_stats;

msh_status msh_int8_apply(msh_onnx_model *m, const msh_int8_opts *o, msh_int8_stats *st,
                          msh_error *e);

#endif
