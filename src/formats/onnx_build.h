/* Building ONNX nodes and attributes for passes. Every string is copied; a node returned here
 * is owned by the caller until it is put into a graph (then the model frees it). NULL: out of
 * memory (nothing leaks). */
#ifndef MSH_ONNX_BUILD_H
#define MSH_ONNX_BUILD_H

#include "formats/onnx_model.h"

Onnx__NodeProto *msh_onnx_node_new(const char *op, const char *name, const char *const *in,
                                   size_t n_in, const char *const *out, size_t n_out);
Onnx__AttributeProto *msh_onnx_attr_int(const char *name, int64_t v);
Onnx__AttributeProto *msh_onnx_attr_string(const char *name, const char *v);
/* Takes ownership of `t` (freed with the attribute, also on failure). */
Onnx__AttributeProto *msh_onnx_attr_tensor(const char *name, Onnx__TensorProto *t);
/* Appends `a` to `n`; frees `a` and returns 0 when out of memory. */
int msh_onnx_node_add_attr(Onnx__NodeProto *n, Onnx__AttributeProto *a);

#endif
