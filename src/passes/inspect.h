/* Size report of a model as JSON (schema in README.md, "inspect --json"). */
#ifndef MSH_INSPECT_H
#define MSH_INSPECT_H

#include <cjson/cJSON.h>

#include "engine/msh_engine.h"
#include "formats/hf_folder.h"
#include "formats/onnx_model.h"
#include "formats/pth.h"
#include "formats/safetensors.h"
#include "passes/dedup.h"

/* The version of inspect's JSON (include/schema/inspect*.schema.json): fields may be added
 * within a version; a field renamed, removed or changed in meaning makes the next one. */
#define MSH_INSPECT_SCHEMA_VERSION 1

/* Add "by_dtype": [{"dtype", "count", "bytes"}] to a report object from per-type tallies
 * indexed by element type (index 31: unknown types). */
void msh_json_by_dtype(cJSON *report, const int64_t count[32], const int64_t bytes[32]);

/* Each fills `obj` with the report of a model; `list` non-zero adds "tensors": every tensor (a
 * checkpoint: every storage) with its bytes, element type, role and, when dedup would merge it,
 * "dup_of", the tensor it duplicates (msh_inspect_file_ex, MSH_INSPECT_TENSOR_LIST). */

/* An ONNX model; `plan` is what dedup would merge. */
msh_status msh_inspect_onnx(const msh_onnx_model *m, const msh_dedup_plan *plan, int list,
                            cJSON *obj, msh_error *e);

/* A torch.save checkpoint: sizes by role and type, the state dict, shared storages, and the
 * duplicates a .pth output would store once (found by the engine). */
msh_status msh_inspect_pth(const msh_pth *p, msh_engine *eng, int list, cJSON *obj, msh_error *e);

/* A safetensors file: sizes by type and its duplicate tensors (found by the engine). */
msh_status msh_inspect_st(const msh_st_file *f, msh_engine *eng, int list, cJSON *obj,
                          msh_error *e);

/* A Hugging Face model folder as one model: its shards, tensor bytes by type across them (a key
 * tied to an earlier one counted once), the tied keys, and identical tensors that are not tied
 * (found by the engine). */
msh_status msh_inspect_hf(msh_hf *h, msh_engine *eng, int list, cJSON *obj, msh_error *e);

#endif
