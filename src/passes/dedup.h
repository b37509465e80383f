/*
 * Deduplication of identical initializers.
 *
 * What is merged: dense initializers, in any graph (main graph, If/Loop/Scan subgraphs,
 * training graphs), that have the same element type, shape and bytes. One is kept and every
 * node input naming another is rewritten to the kept name.
 *
 * What is never merged:
 *   - initializers that are also graph inputs (a default the caller may override), unless
 *     `allow_graph_inputs`;
 *   - initializers whose name is a graph output (they may be kept, never removed);
 *   - initializers whose name is declared more than once in the model (shadowed in a subgraph):
 *     with unique names, renaming can never capture another value;
 *   - Constant nodes, attribute tensors, sparse initializers, function bodies, STRING tensors;
 *   - tensors in different top-level graphs (main graph vs training_info graphs).
 * Across subgraphs (both branches of an If holding the same weight), the kept tensor is moved
 * to the innermost graph that encloses every copy, where all of them can see it.
 *
 * Cost: only tensors whose (type, shape) occurs more than once are hashed, each once (chunked
 * XXH64, see kernels/msh_scalar.h); a digest match is confirmed byte for byte against the
 * group's first member.
 */
#ifndef MSH_DEDUP_H
#define MSH_DEDUP_H

#include "formats/onnx_model.h"

typedef struct msh_dup_group {
    int64_t keeper;   /* tensor index */
    int64_t *removed; /* tensor indices merged into the keeper */
    size_t n_removed;
    int hoist_to; /* graph index to move the keeper to, or -1 */
} msh_dup_group;

typedef struct msh_dedup_plan {
    msh_dup_group *groups;
    size_t n_groups;
    int64_t merged;      /* tensors removed */
    int64_t saved_bytes; /* their data bytes */
} msh_dedup_plan;

msh_status msh_dedup_find(const msh_onnx_model *m, int allow_graph_inputs,
                          const struct msh_engine *engine, msh_dedup_plan *plan, msh_error *e);
msh_status msh_dedup_apply(msh_onnx_model *m, const msh_dedup_plan *plan, msh_error *e);
void msh_dedup_plan_free(msh_dedup_plan *plan);
/* `engine`: where digests are computed (NULL: the CPU). */

#endif
