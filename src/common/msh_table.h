/*
 * The format-neutral tensor table.
 *
 * Every reader (ONNX, torch.save checkpoints, safetensors) describes each tensor it finds with
 * one msh_tentry: its name, element type, shape, where its bytes are (a file span, a strided view
 * of a storage in a file, bytes in memory, or a reader callback), its role and how many places
 * use it. Passes write their decisions into the same entry (the plan): the element type to write,
 * INT8 scales, the tensor whose bytes it duplicates, whether it is written at all. The engine
 * turns a planned entry into output bytes; writers only place those bytes.
 *
 * A format keeps its own per-tensor record (an ONNX TensorProto, a pickle path) with the
 * msh_tentry as its first member; msh_table is a strided view over such an array, so neutral
 * code walks any format's tensors without knowing the record's type.
 */
#ifndef MSH_TABLE_H
#define MSH_TABLE_H

#include "common/msh_common.h"

typedef enum msh_role {
    MSH_ROLE_WEIGHT = 0,    /* a parameter: initializers, Constant values, state-dict weights */
    MSH_ROLE_BUFFER = 1,    /* state that is not trained: BatchNorm statistics, counters */
    MSH_ROLE_OPTIMIZER = 2, /* optimizer state (Adam moments, momentum buffers) */
    MSH_ROLE_TRAINING = 3,  /* other training state (EMA copies, scalers) */
    MSH_ROLE_OTHER = 4      /* tensors in metadata or attributes that are not weights */
} msh_role;
#define MSH_ROLE_COUNT 5

/* "weight", "buffer", "optimizer_state", "training_state", "other". */
const char *msh_role_name(msh_role r);

typedef enum msh_src_kind {
    MSH_SRC_NONE = 0, /* no bytes (empty tensor) */
    MSH_SRC_FILE,     /* `length` bytes of file `fd` at `offset` */
    MSH_SRC_MEMORY,   /* `length` bytes at `mem` */
    MSH_SRC_STRIDED,  /* a view: element k (row-major over shape) is storage element
                         elem_offset + sum(idx_d * stride_d), the storage starting at `offset` */
    MSH_SRC_CALLBACK  /* `read` fills any range of the tensor's row-major bytes */
} msh_src_kind;

typedef msh_status (*msh_src_read_fn)(const void *ctx, int64_t off, void *dst, size_t n,
                                      msh_error *e);

typedef struct msh_src {
    msh_src_kind kind;
    int fd;
    int64_t offset;
    int64_t length; /* the tensor's bytes as stored (row-major, contiguous) */
    const uint8_t *mem;
    /* STRIDED */
    int64_t elem_size, elem_offset;
    size_t ndim;
    const int64_t *shape, *stride;
    /* CALLBACK */
    msh_src_read_fn read;
    const void *ctx;
} msh_src;

/* The layout of a tensor quantized to 4 bits blockwise (kernels/msh_scalar.h has the math):
 * element i, in the order the tensor is read, belongs to block msh_int4_block_of(i, cols, block,
 * axis). */
/* Scales made when first needed: `acquire` makes them (or finds them made) and holds them until
 * the matching `release`, told how many of the tensor's input bytes that use covered; the maker
 * may free them once every dependent tensor's bytes are taken and nobody holds them, and makes
 * them again if they are asked for after that. */
typedef struct msh_int4_lazy {
    void *ctx;
    msh_status (*acquire)(void *ctx, const float **scales, const uint8_t **zps, msh_error *e);
    void (*release)(void *ctx, int64_t bytes);
} msh_int4_lazy;

typedef struct msh_int4_layout {
    int64_t cols, block;
    int axis;                  /* 1: blocks along each row; 0: along the columns */
    int asym;                  /* UINT4 with zero points, else INT4 */
    int offset;                /* symmetric: added to q before storing (0 or 8) */
    const float *scales;       /* one per block */
    const uint8_t *zps;        /* asymmetric: one zero point (0..15) per block */
    const msh_int4_lazy *lazy; /* non-NULL: scales and zps are NULL here and come from it */
} msh_int4_layout;

typedef struct msh_tentry {
    const char *name;
    int32_t dtype; /* msh_dtype.h codes */
    size_t ndim;
    const int64_t *shape;
    int64_t numel;
    int64_t nbytes; /* data bytes; -1 when the type has no fixed size (STRING) */
    msh_src src;
    msh_role role;
    int64_t storage; /* checkpoints: the storage it views (views of one storage share it); -1 */
    int users;       /* ONNX initializers: node inputs naming it (other ONNX tensors: 1);
                        checkpoints: the views of its storage */
    int64_t origin;  /* its index in the table as the reader made it (a pass's copy keeps its
                        original's; a tensor a pass creates has -1): stable across attempts */
    /* ---- the plan, written by passes ---- */
    int32_t out_dtype;         /* 0: written as read; FLOAT16/BFLOAT16: converted from FLOAT;
                                  INT8: quantized per channel with qscales */
    const float *qscales;      /* INT8 scales, one per channel */
    int64_t qchannels, qinner; /* channel of element i: (i / qinner) % qchannels */
    int64_t dup_of;            /* dedup: the tensor whose identical bytes this one shares; -1 */
    int dropped;               /* not written (strip, prune, or merged by dedup) */
    /* INT4 (passes/int4.h): the bytes are the 4-bit quantization of the FLOAT source, laid out
     * by q4 (and whose block scales and zero points it points to); out_dtype is INT4, UINT4 or
     * UINT8 (MatMulNBits' packed blob), numel the 4-bit values written (padding included) */
    int q4;
    msh_int4_layout q4l;
} msh_tentry;

typedef struct msh_table {
    msh_tentry *first;
    size_t n;
    size_t stride; /* bytes from one entry to the next */
} msh_table;

static inline msh_tentry *msh_table_at(const msh_table *t, size_t i) {
    return (msh_tentry *)(void *)((char *)t->first + i * t->stride);
}

/* Read `n` bytes at `off` of a source's row-major bytes (a strided view is gathered). */
msh_status msh_src_read(const msh_src *s, int64_t off, void *dst, size_t n, msh_error *e);

/* Zero an entry and set the plan to "as read". */
void msh_tentry_init(msh_tentry *t);

/* Bytes the plan writes for a tensor. */
int64_t msh_tentry_out_bytes(const msh_tentry *t);

#endif
