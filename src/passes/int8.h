/*
 * INT8 weight-only quantization: symmetric, per output channel.
 *
 * A FLOAT initializer with at least `min_elements` elements (and enough that INT8 saves bytes:
 * MSH_INT8_NODE_BYTES) that is read as the weight of
 *   MatMul B (channels along the last axis), Gemm B (axis 0 when transB, else 1), Conv W (axis 0),
 *   ConvTranspose W (axis 1), LSTM / GRU / RNN W and R (per direction and row), and with
 *   `gather` the data input of Gather (axis 0, embedding rows)
 * becomes <W>_quantized (INT8, same shape) with one scale per channel, max|w| / 127, and is
 * dequantized in the graph:
 *   opset >= 13: DequantizeLinear(<W>_quantized, <W>_scale [C], <W>_zero_point [C] zeros, axis);
 *   opset 7-12, and recurrent weights at every opset (their channels span two dims):
 *     Cast(<W>_quantized, to=FLOAT) -> Mul(<W>_scale shaped to broadcast: the weight's dims up to
 *     the channel axis, then 1s).
 * No weight ever gets a single per-tensor scale. Below opset 7 nothing is quantized (onnxruntime
 * runs no Mul below opset 7). Before IR 4 the new initializers are declared as graph inputs too,
 * as that IR requires, and the FP32 weight's input goes with it. Scales are
 * rounded to FP16/BF16 values when the float pass that follows will store them so
 * (`scale_round`). The channel maxima are found by one engine scan; the INT8 bytes are made by the
 * engine while the writer asks for them, with the shared scalar math in kernels/msh_scalar.h. A
 * weight that also feeds another consumer (or the same op along another axis) keeps its FLOAT
 * initializer for it. Only initializers whose name is declared once in the model are
 * considered, so no subgraph can shadow the new names. Constant nodes that hold such weights are
 * first lifted to initializers (lift.h).
 */
#ifndef MSH_INT8_H
#define MSH_INT8_H

#include "common/msh_strmap.h"
#include "engine/msh_engine.h"
#include "formats/onnx_model.h"

typedef struct msh_int8_opts {
    int64_t min_elements;
    int gather;
    int32_t scale_round; /* 0, or 10 / 16: the float pass that follows converts to FP16 / BF16:
                            round the scales that it will store in that type to its values */
    msh_engine *engine;  /* where the channel maxima are found */
} msh_int8_opts;

typedef struct msh_int8_stats {
    int64_t tensors;      /* weights quantized */
    int64_t bytes_before; /* their FP32 bytes */
    int64_t bytes_after;  /* INT8 + scale + zero-point bytes */
    int per_tensor;       /* always 0: every weight gets per-channel scales */
    int skipped_opset;    /* 1: opset < 7, nothing quantized */
    int64_t castmul;      /* of `tensors`: dequantized by Cast + Mul */
    int64_t opset;
    int64_t eligible;      /* FLOAT initializers read as a weight of a quantized op, any size */
    int64_t largest_small; /* elements of the largest of those under min_elements */
    int64_t no_gain;       /* of those at least min_elements: left FP32 because their scales and
                              nodes would cost what INT8 saves */
} msh_int8_stats;

/* The channel axis when input `idx` of node `n` is a weight INT8 quantizes (`rank`: the
 * weight's), else -1. */
int msh_int8_eligible_axis(const Onnx__NodeProto *n, size_t idx, size_t rank, int gather);

/* A weight is quantized only when it saves bytes: 3 x elements > 4 x channels (its scales) +
 * this estimate of the dequantizing nodes, names and zero point (twice it before IR 4, whose
 * new initializers are graph inputs too). */
#define MSH_INT8_NODE_BYTES 160

msh_status msh_int8_apply(msh_onnx_model *m, const msh_int8_opts *o, msh_int8_stats *st,
                          msh_error *e);

/* Helpers shared with the INT4 pass (int4.c). */
/* Count how often each name is declared (initializers, graph inputs, node outputs) over every
 * graph of the model. */
msh_status msh_quant_count_decls(const msh_onnx_model *m, msh_strmap *decl, msh_error *e);
/* A new tensor whose bytes (`bytes`, owned from here) live in the skeleton, registered in the
 * tensor table. */
msh_status msh_quant_small_tensor(msh_onnx_model *m, const char *name, int32_t type,
                                  const int64_t *dims, size_t n_dims, void *bytes, size_t nbytes,
                                  int graph, Onnx__TensorProto **out, msh_error *e);
/* Index of graph input `name` in `g`, or -1. */
ptrdiff_t msh_quant_graph_input_at(const Onnx__GraphProto *g, const char *name);
/* A new initializer of `g` (and, before IR 4, the graph input that must declare it). */
msh_status msh_quant_add_weight(const msh_onnx_model *m, Onnx__GraphProto *g, Onnx__TensorProto *tp,
                                msh_error *e);
msh_status msh_quant_prepend_node(Onnx__GraphProto *g, Onnx__NodeProto *n, msh_error *e);
msh_status msh_quant_set_input(Onnx__NodeProto *n, size_t i, const char *name, msh_error *e);

#endif
