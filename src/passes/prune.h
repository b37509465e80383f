/*
 * Keeping only the sub-model that is needed, and dead-code removal.
 *
 * With keep/drop lists, the main graph's outputs are chosen first (an unknown name is an error
 * that lists the outputs). Then, always: walking the nodes backwards from the graph outputs,
 * a node is kept when one of its outputs is read; a kept node's inputs are read, and so are the
 * names its If/Loop/Scan subgraphs take from enclosing scopes (subgraphs are pruned the same
 * way from their own outputs). Dead nodes (unused Constants among them), unused initializers
 * and sparse initializers, main-graph inputs nothing reads (only when outputs were chosen, and not
 * with keep_inputs), value_info of
 * names that no longer exist, and opset imports of domains no node uses (the default domain
 * stays) are removed. An initializer that is a graph input stays while the input does.
 */
#ifndef MSH_PRUNE_H
#define MSH_PRUNE_H

#include "formats/onnx_model.h"

typedef struct msh_prune_opts {
    const char *keep_outputs; /* comma-separated, or NULL */
    const char *drop_outputs;
    int keep_inputs;
} msh_prune_opts;

typedef struct msh_prune_stats {
    int64_t nodes;   /* nodes removed */
    int64_t tensors; /* initializers removed */
    int64_t bytes;   /* their data bytes */
    int64_t inputs;  /* graph inputs removed */
    int64_t outputs; /* graph outputs removed */
    int64_t opsets;  /* opset imports removed */
} msh_prune_stats;

/* apply 0: only count what would go (inspect). */
msh_status msh_prune_apply(msh_onnx_model *m, const msh_prune_opts *o, int apply,
                           msh_prune_stats *st, msh_error *e);

#endif
