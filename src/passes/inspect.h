/* Size report of a model as JSON (schema in README.md, "inspect --json"). */
#ifndef MSH_INSPECT_H
#define MSH_INSPECT_H

#include <cjson/cJSON.h>

#include "formats/onnx_model.h"
#include "passes/dedup.h"

/* Fill `obj` with the report of `m`; `plan` is what dedup would merge. */
/* Add "by_dtype": [{"dtype", "count", "bytes"}] to a report object from per-type tallies
 * indexed by element type (index 31: unknown types). */
void msh_json_by_dtype(cJSON *report, const int64_t count[32], const int64_t bytes[32]);

msh_status msh_inspect_onnx(const msh_onnx_model *m, const msh_dedup_plan *plan, cJSON *obj,
                            msh_error *e);

#endif
