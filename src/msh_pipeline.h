/* The orchestration layer (src/msh_api.c): reader -> passes -> engine -> writer for one model.
 * Internal: the public entry points are in include/modelshrink.h; tests use these directly. */
#ifndef MSH_PIPELINE_H
#define MSH_PIPELINE_H

#include "engine/msh_engine.h"
#include "formats/onnx_model.h"

/* Internal statuses of one attempt at a model: it stopped, wrote nothing, and the next attempt
 * plans differently (never returned by the public API). */
#define MSH_RETRY_RANGE ((msh_status)100)  /* a tensor failed FP16's range test */
#define MSH_RETRY_LARGER ((msh_status)101) /* the float conversion made the file larger */
#define MSH_RETRY_INT8 ((msh_status)102)   /* INT8 made the file larger */

/* A CPU engine with the default FP16 bounds and `threads` threads (0: one per core). */
msh_status msh_engine_cpu(int threads, msh_engine **g, msh_error *e);

/* Lay out and write an ONNX model whose passes have run: the engine makes every streamed
 * tensor's bytes in the writer's order. `clamped` (may be NULL) receives FP16 clamps. */
msh_status msh_onnx_save(const msh_onnx_model *m, const char *out_path, int external,
                         int64_t threshold, msh_engine *g, msh_onnx_write_result *wr,
                         uint64_t *clamped, msh_error *e);

#endif
