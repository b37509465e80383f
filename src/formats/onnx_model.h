/*
 * An ONNX model held as a skeleton plus a tensor table.
 *
 * The skeleton is the ModelProto with every TensorProto.raw_data payload cut out at the wire
 * level (onnx_scan.c) and replaced by a private varint field MSH_ONNX_MARKER_FIELD holding the
 * payload's index; protobuf-c unpacks only that small skeleton. External data become payloads
 * too, so every tensor's bytes are reached the same way: (source file, offset, length).
 *
 * The tensor walker visits every place a tensor lives: graph initializers, sparse initializers,
 * Constant nodes and other attribute tensors, subgraphs of If/Loop/Scan (attributes g/graphs)
 * to any depth, function bodies and training_info graphs.
 */
#ifndef MSH_ONNX_MODEL_H
#define MSH_ONNX_MODEL_H

#include "common/msh_common.h"
#include "common/msh_dtype.h"
#include "common/msh_io.h"
#include "common/msh_table.h"
#include "onnx.pb-c.h"

/* Field number of the private payload marker inside a skeleton TensorProto. The scanner
 * refuses input that already uses it, so a marker is never ambiguous. */
#define MSH_ONNX_MARKER_FIELD 536870911u
#define MSH_ONNX_MAX_DEPTH 256      /* protobuf message nesting */
#define MSH_ONNX_MAX_GRAPH_DEPTH 64 /* graphs inside graphs */

/* Where a payload's bytes are. src 0 is the model file, k > 0 is external file k-1. */
typedef struct msh_payload {
    int src;
    int64_t offset;
    int64_t length;
} msh_payload;

typedef enum msh_tensor_loc {
    MSH_LOC_INITIALIZER = 0,
    MSH_LOC_CONSTANT,  /* `value` of a Constant node */
    MSH_LOC_ATTRIBUTE, /* any other attribute tensor */
    MSH_LOC_SPARSE,    /* values or indices of a sparse tensor */
    MSH_LOC_FUNCTION   /* attribute tensor inside a function body */
} msh_tensor_loc;

/* One tensor: its neutral description and plan (d, first: msh_table views these), and where
 * it sits in the ONNX tree. d.dtype and d.nbytes describe the bytes as read; a pass that
 * retypes the TensorProto (tp->data_type) records the conversion in d.out_dtype, and the writer
 * then streams the converted bytes as raw_data. d.dropped: taken out of its graph (dedup, INT8
 * replacing it). */
typedef struct msh_tensor {
    msh_tentry d;
    Onnx__TensorProto *tp;
    int graph; /* index in model->graphs, or -1 (function bodies) */
    msh_tensor_loc loc;
    int64_t payload; /* index in model->payloads, or -1 when the data is in typed fields */
    int external_in; /* the input stored it as external data */
} msh_tensor;

typedef struct msh_graph {
    Onnx__GraphProto *g;
    int parent; /* -1 for top-level graphs */
    int depth;
} msh_graph;

typedef struct msh_ext_file {
    char *location; /* as written in the model */
    int fd;
    int64_t size;
    int64_t dev, ino;
} msh_ext_file;

typedef struct msh_onnx_model {
    char *path;
    char *dir;
    int fd;
    int64_t file_size;
    uint8_t *skel;
    size_t skel_len;
    Onnx__ModelProto *mp;
    msh_payload *payloads;
    size_t n_payloads, cap_payloads;
    msh_tensor *tensors;
    size_t n_tensors, cap_tensors;
    msh_graph *graphs;
    size_t n_graphs, cap_graphs;
    msh_ext_file *ext;
    size_t n_ext;
    int64_t external_bytes;      /* bytes of tensor data held in external files */
    Onnx__TensorProto **orphans; /* TensorProtos detached from the tree (freed with the model) */
    size_t n_orphans, cap_orphans;
    void **blocks; /* memory passes attach to the model (freed with it) */
    size_t n_blocks, cap_blocks;
    struct msh_onnx_closer *closers; /* run by msh_onnx_model_free before `blocks` are freed */
    size_t n_closers, cap_closers;
    int64_t *tmap; /* open-addressing map TensorProto* -> tensor index (-1 empty) */
    size_t tmap_cap;
} msh_onnx_model;

/* "initializer", "constant", "attribute", "sparse" or "function". */
const char *msh_onnx_loc_name(msh_tensor_loc loc);

/* The tensor table over m->tensors (valid until the array is next grown). */
msh_table msh_onnx_table(const msh_onnx_model *m);

/* Whether the writer streams a tensor's data (raw_data from the engine) rather than packing the
 * TensorProto as it is in the tree: it has a payload in a file, or a planned conversion. */
int msh_onnx_streamed(const msh_tensor *t);

/* Scan a model file into a skeleton (onnx_scan.c). Appends payloads to `m`. */
msh_status msh_onnx_scan(msh_onnx_model *m, msh_error *e);

/* Open, scan, unpack, walk and validate. `m` is zeroed first; free with msh_onnx_model_free
 * even on failure. The error message is not yet prefixed with the path. */
msh_status msh_onnx_model_open(msh_onnx_model *m, const char *path, msh_error *e);
void msh_onnx_model_free(msh_onnx_model *m);

/* Read `n` bytes at `off` of a tensor's data (payload or typed fields, little-endian). */
msh_status msh_onnx_tensor_read(const msh_onnx_model *m, const msh_tensor *t, int64_t off,
                                void *dst, size_t n, msh_error *e);

/* Tensor index of a TensorProto, or -1 (linear map built on first use). */
int64_t msh_onnx_find_tensor(const msh_onnx_model *m, const Onnx__TensorProto *tp);

/* Append a tensor-table entry for a TensorProto added by a pass (the tree owns `tp`); the
 * lookup map is rebuilt. Its description (d.name, shape, source) is refreshed from `tp`: a
 * TensorProto with raw_data in the tree is read from there, otherwise d.src is kept (a
 * converted copy of another tensor shares that tensor's source). Returns the new index or -1
 * when out of memory. */
int64_t msh_onnx_add_tensor_entry(msh_onnx_model *m, const msh_tensor *t);

/* Attach `p` to the model: freed by msh_onnx_model_free. On failure `p` is freed. */
msh_status msh_onnx_own(msh_onnx_model *m, void *p);

/* Have msh_onnx_model_free call fn(ctx) (before it frees what msh_onnx_own attached). */
typedef struct msh_onnx_closer {
    void (*fn)(void *ctx);
    void *ctx;
} msh_onnx_closer;
msh_status msh_onnx_on_free(msh_onnx_model *m, void (*fn)(void *ctx), void *ctx);

/* Rebuild the graph list and tensor table after a pass changed the tree's structure (removed
 * nodes or graphs). External files stay open; payload records may be appended again. */
msh_status msh_onnx_reindex(msh_onnx_model *m, msh_error *e);

/* Keep a TensorProto that was taken out of the tree so the model frees it. */
msh_status msh_onnx_adopt_orphan(msh_onnx_model *m, Onnx__TensorProto *tp);

/* ---- the writer (onnx_write.c) ---- */

/* Where the writer puts each streamed tensor: `order` lists tensor indices in the order the
 * writer asks for their bytes (tensors of "<out>.data" first, in table order, then the inline
 * ones in the tree's order); ext_off[i] is tensor i's offset in the data file, or -1. */
typedef struct msh_onnx_layout {
    int external;
    int64_t *ext_off;
    size_t *order;
    size_t n_order;
    size_t n_external; /* the first n_external entries of order go to the data file */
} msh_onnx_layout;

/* Lay out the output: with `external`, streamed tensors of at least `threshold` output bytes go
 * to the data file. Free with msh_onnx_layout_free. */
msh_status msh_onnx_layout_make(const msh_onnx_model *m, int external, int64_t threshold,
                                msh_onnx_layout *L, msh_error *e);
void msh_onnx_layout_free(msh_onnx_layout *L);

/* Total output size the writer would produce inline (for the 2 GiB protobuf limit). */
msh_status msh_onnx_inline_size(const msh_onnx_model *m, int64_t *size, msh_error *e);

typedef struct msh_onnx_write_result {
    int64_t model_bytes;
    int64_t data_bytes;
    int external;
} msh_onnx_write_result;

/* Serialize the model to `out_path` (and "<out_path>.data"): temporary files, then rename.
 * Each streamed tensor's bytes come from `bytes`, called once per entry of L->order, in order. */
msh_status msh_onnx_write(const msh_onnx_model *m, const msh_onnx_layout *L, const char *out_path,
                          msh_bytes_fn bytes, void *ctx, msh_onnx_write_result *r, msh_error *e);

#endif
