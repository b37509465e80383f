/* Size report of a model as JSON (schema in README.md, "inspect --json"). */
#ifndef MSH_INSPECT_H
#define MSH_INSPECT_H

#include <cjson/cJSON.h>

#include "formats/onnx_model.h"
#include "passes/dedup.h"

/* Fill `obj` with the report of `m`; `plan` is what dedup would merge. */
msh_status msh_inspect_onnx(const msh_onnx_model *m, const msh_dedup_plan *plan, cJSON *obj,
                            msh_error *e);

#endif
