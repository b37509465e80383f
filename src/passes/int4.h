/*
 * INT4 weight-only quantization, blockwise along the reduction axis (kernels/msh_scalar.h has
 * the element math: RTN, symmetric INT4 or asymmetric UINT4 with zero points).
 *
 * A FLOAT initializer with at least `min_elements` elements, declared once, of rank 2 and with
 * K >= block, read as
 *   MatMul B [K, N], Gemm B ([N, K] with transB, else [K, N]), and with `gather` the data input
 *   of Gather (axis 0: table [V, D], blocks along D)
 * is stored in 4 bits, in one of two forms:
 *   qdq:         <W>_quantized (INT4 / UINT4, the weight's shape, packed two per byte along the
 *                last axis in row-major order, low nibble first), <W>_scale FLOAT with the
 *                weight's rank and ceil(K / block) along the blocked axis, with asym
 *                <W>_zero_point UINT4 of the scale's shape; DequantizeLinear-21(axis, block_size)
 *                -> <W>_dequantized feeds the consumers. The model's default opset is raised to
 *                21 (and IR to 10) when it is below: allowed from opset 13 when no op of the
 *                model changes meaning on the way (msh_int4_opset_blocker), else nothing is
 *                quantized and `why` says so.
 *   matmulnbits: each MatMul (and Gemm with transA = 0, alpha = 1 and no C or beta = 1 with C
 *                of shape [N]) becomes com.microsoft.MatMulNBits(A, <W>_q4 UINT8
 *                [N, ceil(K / block), block / 2] packed along K, <W>_scales FLOAT
 *                [N, ceil(K / block)], with asym <W>_zero_points UINT8 [N * ceil(kb / 2)]
 *                packed two per byte along the blocks; bias = Gemm's C) with K, N, bits = 4,
 *                block_size. The last block of a row is padded with zeros.
 *                A Gather table becomes com.microsoft.GatherBlockQuantized(<W>_q4 INT4 / UINT4
 *                [V, D] packed as the qdq form packs it, indices, <W>_scales FLOAT [V, kb],
 *                with asym <W>_zero_points UINT4 [V, kb] packed the same way) with
 *                gather_axis 0, quantize_axis 1, block_size, bits 4 (no padding); IR is raised
 *                to 10 (the INT4 types') when below.
 * The per-block statistics come from one engine scan (Q4STATS) over each weight seen as [N, K]
 * (a MatMul weight through a transposing view); the 4-bit bytes are made by the engine (INT4)
 * while the writer asks for them. A weight that also feeds another consumer keeps its FLOAT
 * initializer for it. Constant nodes that hold such weights are first lifted to initializers
 * (lift.h).
 */
#ifndef MSH_INT4_H
#define MSH_INT4_H

#include "engine/msh_engine.h"
#include "formats/onnx_model.h"

enum { MSH_INT4_QDQ = 0, MSH_INT4_MATMULNBITS = 1 };

typedef struct msh_int4_opts {
    int64_t min_elements;
    int block; /* 32, 64 or 128 */
    int asym;
    int gather;
    int format;          /* MSH_INT4_QDQ or MSH_INT4_MATMULNBITS */
    int32_t scale_round; /* 0, or 10 / 16: the float pass that follows stores the scales in that
                            type: round them to its values first */
    msh_engine *engine;
    int search; /* the clipping search (kernels/msh_scalar.h) instead of RTN's range */
    const char *scratch_near; /* search: each weight's searched scales wait for the write in a
                                 scratch file beside this path (the output) */
} msh_int4_opts;

typedef struct msh_int4_stats {
    int64_t tensors;       /* weights quantized */
    int64_t bytes_before;  /* their FP32 bytes */
    int64_t bytes_after;   /* 4-bit + scale + zero-point bytes */
    int64_t eligible;      /* FLOAT initializers read as a weight of an eligible op, any size */
    int64_t largest_small; /* elements of the largest of those under min_elements */
    int64_t opset_in, opset_out; /* the default-domain opset read and written */
    char why[160];               /* set when the model's form refuses INT4 (opset) */
    double search_seconds;       /* with search: the engine scan's seconds */
} msh_int4_result;

/* The first default-domain op of the model that keeps its opset from being raised to 21 for
 * DequantizeLinear's blocks ("ReduceMean changes at opset 18"), written into `why`; 0 when the
 * opset can be raised (or is already >= 21). */
int msh_int4_opset_blocker(const msh_onnx_model *m, int64_t opset, char *why, size_t cap);

/* 1 when input `idx` of `n` may be a weight INT4 stores (MatMul B, Gemm B, with `gather` the
 * table of Gather on axis 0) of rank `rank`; 2 for Gemm's C of rank 1 (MatMulNBits' bias, which
 * must be an initializer, of any size); else 0. The pass decides the rest (sizes, Gemm's form). */
int msh_int4_reads_weight(const Onnx__NodeProto *n, size_t idx, size_t rank, int gather);

msh_status msh_int4_apply(msh_onnx_model *m, const msh_int4_opts *o, msh_int4_result *st,
                          msh_error *e);

#endif
