/*
 * Storage-only FP16/BF16 for ONNX: the weights are stored in the half type, every op still
 * computes in FP32.
 *
 * A FLOAT initializer W (in any graph) becomes W__msh_fp16 (FLOAT16, or __msh_bf16) and a
 * Cast(to=FLOAT) at the top of its graph produces W again; a Constant whose value is FLOAT gets
 * the half tensor, its output renamed, and a Cast right after it produces the old name. Nothing
 * else changes: node inputs, graph inputs and outputs, value_info and subgraphs keep their names
 * and types, so the output runs wherever the original runs (onnxruntime on CPU included) with
 * about half the weight bytes. The bytes are converted by the engine, as for msh_fp16_apply.
 *
 * Not converted: tensors under MSH_STORAGE_MIN_ELEMENTS elements (the Cast would cost more than
 * it saves), initializers that are graph inputs (overridable defaults; before IR 4 every
 * initializer is one, and then the input is renamed and retyped with it), tensors passes created
 * (INT8 scales), and the tensors `o` keeps FP32 (range test, globs). BF16 needs Cast-13: the
 * caller checks the opset.
 */
#ifndef MSH_STORAGE_H
#define MSH_STORAGE_H

#include "passes/fp16.h"

#define MSH_STORAGE_MIN_ELEMENTS 64

/* Uses o->target, keep and keep_globs; st gets tensors, casts, bytes_saved and the kept counts. */
msh_status msh_storage_apply(msh_onnx_model *m, const msh_fp16_opts *o, msh_fp16_stats *st,
                             msh_error *e);

#endif
