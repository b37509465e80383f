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

typedef struct msh_tensor {
    Onnx__TensorProto *tp;
    int graph; /* index in model->graphs, or -1 (function bodies) */
    msh_tensor_loc loc;
    int64_t payload; /* index in model->payloads, or -1 when the data is in typed fields */
    int external_in; /* the input stored it as external data */
    int64_t numel;
    int64_t nbytes;       /* data bytes; -1 for element types without a fixed size (STRING) */
    int removed;          /* dedup removed it from its graph */
    int32_t out_type;     /* 0: written as read; FLOAT16/BFLOAT16: converted from FLOAT on write */
    const float *qscales; /* out_type INT8: per-channel scales (owned by the model) */
    int64_t qchannels, qinner; /* channel of element i: (i / qinner) % qchannels */
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
    int64_t *tmap; /* open-addressing map TensorProto* -> tensor index (-1 empty) */
    size_t tmap_cap;
} msh_onnx_model;

/* Bytes of one element of an ONNX data type; 0 for unknown types, -1 for STRING; 4-bit types
 * report 1 and are special-cased by msh_onnx_tensor_bytes. */
int msh_onnx_elem_size(int32_t data_type);
const char *msh_onnx_dtype_name(int32_t data_type);
/* "initializer", "constant", "attribute", "sparse" or "function". */
const char *msh_onnx_loc_name(msh_tensor_loc loc);
/* Add "by_dtype": [{"dtype", "count", "bytes"}] to a report object (cJSON *) from per-type
 * tallies indexed by element type (index 31: unknown types). */
void msh_json_by_dtype(void *report, const int64_t count[32], const int64_t bytes[32]);

/* Data bytes of `numel` elements of `data_type`; -1 when not a fixed-size type. */
int64_t msh_onnx_tensor_bytes(int32_t data_type, int64_t numel);

/* Scan a model file into a skeleton (onnx_scan.c). Appends payloads to `m`. */
msh_status msh_onnx_scan(msh_onnx_model *m, msh_error *e);

/* Open, scan, unpack, walk and validate. `m` is zeroed first; free with msh_onnx_model_free
 * even on failure. The error message is not yet prefixed with the path. */
msh_status msh_onnx_model_open(msh_onnx_model *m, const char *path, msh_error *e);
void msh_onnx_model_free(msh_onnx_model *m);

/* Read `n` bytes at `off` of a tensor's data (payload or typed fields, little-endian). */
msh_status msh_onnx_tensor_read(const msh_onnx_model *m, const msh_tensor *t, int64_t off,
                                void *dst, size_t n, msh_error *e);

/* Stream a tensor's bytes in chunks of `chunk` bytes (a multiple of 4) to `fn`, reading the next
 * chunk in a helper thread while `fn` works on the current one. `buf0` and `buf1` hold `chunk`
 * bytes each. `fn` gets the chunk, its length and its byte offset in the tensor. */
typedef msh_status (*msh_chunk_fn)(void *ctx, const uint8_t *buf, size_t n, int64_t off,
                                   msh_error *e);
msh_status msh_onnx_tensor_stream(const msh_onnx_model *m, const msh_tensor *t, uint8_t *buf0,
                                  uint8_t *buf1, size_t chunk, msh_chunk_fn fn, void *ctx,
                                  msh_error *e);

/* Tensor index of a TensorProto, or -1 (linear map built on first use). */
int64_t msh_onnx_find_tensor(const msh_onnx_model *m, const Onnx__TensorProto *tp);

/* Data bytes of a tensor as written (after any conversion). */
int64_t msh_tensor_out_bytes(const msh_tensor *t);

/* Append a tensor-table entry for a TensorProto added by a pass (the tree owns `tp`); the
 * lookup map is rebuilt. Returns the new index or -1 when out of memory. */
int64_t msh_onnx_add_tensor_entry(msh_onnx_model *m, const msh_tensor *t);

/* Attach `p` to the model: freed by msh_onnx_model_free. On failure `p` is freed. */
msh_status msh_onnx_own(msh_onnx_model *m, void *p);

/* Rebuild the graph list and tensor table after a pass changed the tree's structure (removed
 * nodes or graphs). External files stay open; payload records may be appended again. */
msh_status msh_onnx_reindex(msh_onnx_model *m, msh_error *e);

/* Keep a TensorProto that was taken out of the tree so the model frees it. */
msh_status msh_onnx_adopt_orphan(msh_onnx_model *m, Onnx__TensorProto *tp);

/* Output options of the streaming writer. */
typedef struct msh_onnx_write_opts {
    int external; /* write payloads >= threshold to "<out>.data" */
    int64_t external_threshold;
    uint32_t
        f16_min_abs; /* FP16 bounds (FP32 bits) for tensors with out_type FLOAT16; 0: default */
    uint32_t f16_max_abs;
    const struct msh_engine *engine; /* where conversions run (NULL: the CPU) */
} msh_onnx_write_opts;

typedef struct msh_onnx_write_result {
    int64_t model_bytes;
    int64_t data_bytes;
    int external;
    uint64_t clamped; /* FP16 values clamped while converting payloads */
} msh_onnx_write_result;

/* Total output size the writer would produce inline (for the 2 GiB protobuf limit). */
msh_status msh_onnx_inline_size(const msh_onnx_model *m, int64_t *size, msh_error *e);

/* Stream the model to `out_path` (and "<out_path>.data"), temp files then rename. */
msh_status msh_onnx_write(const msh_onnx_model *m, const char *out_path,
                          const msh_onnx_write_opts *o, msh_onnx_write_result *r, msh_error *e);

#endif
