/*
 * Comparing two models tensor by tensor (`modelshrink diff`), whatever their formats: an ONNX
 * model against its safetensors export, a checkpoint against its strip, a GPU conversion made
 * on one machine against a CPU conversion made on another.
 *
 * Tensors are matched by name (ONNX initializer names and Constant outputs, checkpoint
 * state-dict keys or paths, safetensors keys). For each matched pair: its bytes identical or
 * not; otherwise, when both are numeric with the same element count, the largest absolute and
 * relative difference, the largest distance in units in the last place (both of the same float
 * type), and the cosine of the two as vectors, computed in double precision while both are
 * read side by side in 1 MiB pieces, so memory stays bounded. Names in one file only, and
 * element type or shape changes, are reported too.
 */
#ifndef MSH_DIFF_H
#define MSH_DIFF_H

#include <cjson/cJSON.h>

#include "common/msh_table.h"

/* The version of diff's JSON (include/schema/diff.schema.json): fields may be added within a
 * version; a field renamed, removed or changed in meaning makes the next one. */
#define MSH_DIFF_SCHEMA_VERSION 1

/* Compare tables `a` and `b`, adding "schema_version", "tensors" (one object per name, in `a`'s
 * order then `b`'s extra names), "summary" and "identical" to `out`. `*identical` is 1 when every
 * tensor of either is in both with the same type, shape and bytes. */
msh_status msh_diff_tables(const msh_table *a, const msh_table *b, cJSON *out, int *identical,
                           msh_error *e);

#endif
