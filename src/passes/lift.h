/*
 * Weights held in Constant nodes (PaddlePaddle exports, some PyTorch exports, If branches) made
 * initializers, so that the passes that work on initializers see them.
 *
 * A Constant node (default domain) whose `value` is a tensor becomes an initializer of the same
 * graph, named as the node's output, and the node is removed: the graph computes the same values.
 * Only where a pass needs it:
 *   for dedup: tensors of at least MSH_LIFT_DEDUP_MIN_BYTES that are identical to another
 *     Constant value or initializer (found by msh_dedup_classes on the engine);
 *   for INT8: tensors read as a weight INT8 quantizes (msh_int8_eligible_axis), of at least its
 *     minimum size; for INT4 likewise (msh_int4_reads_weight).
 * Never lifted: Constants before IR 4 (an initializer there must be a graph input), Constants
 * whose output is a graph output or is declared more than once in the model, and Constants in
 * function bodies.
 */
#ifndef MSH_LIFT_H
#define MSH_LIFT_H

#include "engine/msh_engine.h"
#include "formats/onnx_model.h"

#define MSH_LIFT_DEDUP_MIN_BYTES 64

typedef struct msh_lift_opts {
    int dedup;
    int int8;
    int64_t int8_min_elements;
    int int8_gather;
    msh_engine *engine; /* dedup's digests */
    int int4;           /* INT4: tensors read as a weight INT4 stores (msh_int4_reads_weight) */
    int64_t int4_min_elements;
    int int4_gather;
} msh_lift_opts;

msh_status msh_lift_constants(msh_onnx_model *m, const msh_lift_opts *o, int64_t *lifted,
                              msh_error *e);

/* Identity nodes (default domain) whose input is an initializer of their own graph are removed,
 * their readers reading the initializer instead (torch.onnx.export writes a weight shared by two
 * layers as an Identity of the first one's): the graph computes the same values, and the passes
 * that quantize or convert a weight by its readers see every reader. Kept: an Identity whose
 * output is a graph output, is declared more than once, or is read from a subgraph.
 * `*folded`: how many went. */
msh_status msh_fold_identities(msh_onnx_model *m, int64_t *folded, msh_error *e);

#endif
