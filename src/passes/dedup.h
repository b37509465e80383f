/*
 * Deduplication: finding tensors with identical bytes (any format), and merging them in ONNX.
 *
 * The finding is format-neutral (msh_dedup_classes): candidates are table entries; only those
 * whose (element type, shape) occurs more than once can match; groups of large tensors are
 * split first by the digest of their first MSH_HASH_CHUNK bytes, then by the full tensor digest
 * (kernels/msh_scalar.h), both computed by the engine (CPU or GPU, the same value); every class
 * is then confirmed byte for byte against its first member. Classes come out in a fixed order:
 * by (type, shape, first table index), then by digest.
 *
 * ONNX (msh_dedup_find / msh_dedup_apply): dense initializers, in any graph (main graph,
 * If/Loop/Scan subgraphs, training graphs), that have the same element type, shape and bytes.
 * One is kept and every node input naming another is rewritten to the kept name.
 *
 * What is never merged in ONNX:
 *   - initializers that are also graph inputs (a default the caller may override), unless
 *     `allow_graph_inputs`;
 *   - initializers whose name is a graph output (they may be kept, never removed);
 *   - initializers whose name is declared more than once in the model (shadowed in a subgraph):
 *     with unique names, renaming can never capture another value;
 *   - Constant nodes, attribute tensors, sparse initializers, function bodies, STRING tensors;
 *   - tensors in different top-level graphs (main graph vs training_info graphs).
 * Across subgraphs (both branches of an If holding the same weight), the kept tensor is moved
 * to the innermost graph that encloses every copy, where all of them can see it.
 */
#ifndef MSH_DEDUP_H
#define MSH_DEDUP_H

#include "engine/msh_engine.h"
#include "formats/onnx_model.h"

/* ---- format-neutral finding ---- */

typedef struct msh_dedup_cand {
    int64_t t;     /* table index */
    int removable; /* the format may drop it (else it can only be a keeper) */
    uint64_t digest;
} msh_dedup_cand;

/* Called once per class of two or more identical tensors; cls[0] is the first met. */
typedef msh_status (*msh_dedup_class_fn)(void *ctx, const msh_dedup_cand *const *cls, size_t n,
                                         msh_error *e);

/* Find the classes of identical tensors among the candidates (their order is changed). */
msh_status msh_dedup_classes(const msh_table *tab, msh_dedup_cand *c, size_t n, msh_engine *eng,
                             msh_dedup_class_fn fn, void *ctx, msh_error *e);

/* ---- ONNX ---- */

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

msh_status msh_dedup_find(const msh_onnx_model *m, int allow_graph_inputs, msh_engine *engine,
                          msh_dedup_plan *plan, msh_error *e);
msh_status msh_dedup_apply(msh_onnx_model *m, const msh_dedup_plan *plan, msh_error *e);
void msh_dedup_plan_free(msh_dedup_plan *plan);

#endif
