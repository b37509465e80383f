/*
 * modelshrink — shrink neural-network model files without breaking them.
 *
 * This is the only header the CLI and users include. The library reads a model (ONNX, a
 * torch.save checkpoint, safetensors, a Hugging Face model folder), runs the requested passes
 * (dedup, FP16/BF16, INT8, pruning, checkpoint stripping) and writes the result by streaming
 * tensor payloads in bounded pieces, so memory stays bounded whatever the model's size.
 *
 * Minimal example (tests/api/readme_example.c, built and run by ctest; README.md's "Library"
 * section holds the same program):
 *
 *     #include <modelshrink.h>
 *     #include <stdio.h>
 *
 *     // Called on this thread every 16 MiB or so; returning non-zero cancels the conversion.
 *     static int on_progress(void *user, const msh_progress *p) {
 *         (void)user;
 *         if (p->phase == MSH_PHASE_WRITE)
 *             fprintf(stderr, "\r%s: %lld of %lld MiB", p->path, (long long)(p->bytes_done >> 20),
 *                     (long long)(p->bytes_total >> 20));
 *         return 0;
 *     }
 *
 *     int main(int argc, char **argv) {
 *         if (argc != 3) {
 *             fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
 *             return 2;
 *         }
 *         msh_error err;
 *         msh_inspect_info *info;
 *         if (msh_inspect(argv[1], &info, &err) != MSH_OK) {
 *             fprintf(stderr, "%s\n", err.msg); // "in.onnx: ..."
 *             return 1;
 *         }
 *         printf("%s: %s, %lld tensors, %lld bytes, %lld of them duplicates\n", argv[1],
 *                msh_format_name(info->format), (long long)info->tensor_count,
 *                (long long)info->tensor_bytes, (long long)info->dup_saved_bytes);
 *         for (size_t i = 0; i < info->n_largest && i < 3; i++)
 *             printf("  %s %s %lld bytes\n", info->largest[i].name, info->largest[i].dtype,
 *                    (long long)info->largest[i].bytes);
 *         msh_inspect_info_free(info);
 *
 *         msh_convert_options opt;
 *         msh_convert_options_init(&opt); // every field at its default: dedup on
 *         opt.float_type = MSH_FLOAT_FP16;
 *         opt.progress = on_progress;
 *         msh_convert_result res;
 *         if (msh_convert_file(argv[1], argv[2], &opt, &res, &err) != MSH_OK) {
 *             fprintf(stderr, "\n%s\n", err.msg);
 *             return 1;
 *         }
 *         printf("\n%s: %lld -> %lld bytes on the %s\n", argv[2], (long long)res.bytes_in,
 *                (long long)res.bytes_out, res.device);
 *         return 0;
 *     }
 *
 * Ownership: the caller owns what it passes in (paths, options and the strings and arrays they
 * point to) and keeps it valid for the duration of the call; the library keeps no pointer to
 * it after returning. What the library returns through an out-parameter is the caller's to
 * release: strings and arrays with msh_free, an msh_inspect_info with msh_inspect_info_free, a
 * cancel token with msh_cancel_token_free. Strings from msh_status_name, msh_format_name,
 * msh_option_name and msh_version are static.
 *
 * Growing structs: msh_convert_options and msh_convert_result begin with `struct_size`, and
 * msh_convert_options_init records the caller's sizes of both (a macro: sizeof is taken where
 * the caller is compiled). A program built against an older header passes smaller structs:
 * the library reads only the option fields that it knows, giving the others their defaults,
 * and writes only the result bytes that it has. The structs the library allocates or hands to
 * a callback (msh_inspect_info, msh_progress) carry the library's size in `struct_size`;
 * MSH_STRUCT_HAS says whether a field is there. Fields are only ever appended.
 *
 * Threading:
 *   - Every function may be called from any thread. Calls are independent: conversions,
 *     inspections and diffs of different files may run at the same time in different threads
 *     (the same input may be read by several at once; two calls must not write the same
 *     output). One conversion also runs worker threads of its own (`threads`), joined before
 *     it returns.
 *   - An msh_convert_options may be shared by concurrent calls: the library only reads it (and
 *     what it points to, which must not change while they run). Each call needs its own
 *     msh_convert_result and msh_error.
 *   - The progress callback runs on the thread that called msh_convert_file, between two
 *     pieces of tensor data, never in a worker thread; calls in different threads each call
 *     it from their own thread, so a callback shared by concurrent calls guards its state.
 *   - msh_cancel_request and msh_cancel_token_request are async-signal-safe and may be called
 *     from any thread or a signal handler.
 *   - Process-wide state is guarded: the CPU's features, the umask and the host name are read
 *     once (pthread_once), the environment (MSH_FORCE_SCALAR, test switches) with getenv, so
 *     do not setenv while calls run; the pool of CUDA staging buffers is under a lock.
 *   - GPUs are shared: each conversion running on the GPU has its own streams and pinned
 *     buffers, and a CUDA error in one turns the GPU off for the rest of the process (that
 *     conversion and every later one run on the CPU, with the same bytes).
 *
 * Errors: functions return msh_status (MSH_OK == 0). On failure `err->msg` holds one line that
 * names the file and what is wrong, e.g. "m.onnx: initializer 'w1': dim 2 is negative". The
 * library never prints, exits or aborts.
 */
#ifndef MODELSHRINK_H
#define MODELSHRINK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The functions of the public API; everything else in the library is hidden (the shared
 * library is built with -fvisibility=hidden). */
#ifndef MSH_API
#if defined(__GNUC__) || defined(__clang__)
#define MSH_API __attribute__((visibility("default")))
#else
#define MSH_API
#endif
#endif

#define MSH_VERSION_MAJOR 0
#define MSH_VERSION_MINOR 1
#define MSH_VERSION_PATCH 0

/** Status codes. Stable: values never change meaning. */
typedef enum msh_status {
    MSH_OK = 0,
    MSH_ERR_IO = 1,          /**< a read, write, rename or fsync failed */
    MSH_ERR_FORMAT = 2,      /**< the file is not a well-formed model of its format */
    MSH_ERR_LIMIT = 3,       /**< a size, count or nesting limit was exceeded */
    MSH_ERR_UNSAFE = 4,      /**< refused for safety (external path leaving the folder, ...) */
    MSH_ERR_NOMEM = 5,       /**< out of memory */
    MSH_ERR_USAGE = 6,       /**< bad arguments (output equals input, unknown option value) */
    MSH_ERR_UNSUPPORTED = 7, /**< valid input that this version does not handle */
    MSH_ERR_CUDA = 8,        /**< a CUDA call failed, or no CUDA device for --device cuda */
    MSH_ERR_VERIFY = 9,      /**< --verify: the GPU's bytes differ from the CPU's */
    MSH_ERR_CANCELLED = 10   /**< msh_cancel_request, the call's cancel token or its progress
                                  callback stopped the work; nothing was written */
} msh_status;

/** 1 when `p`, a struct of the library that begins with `size_t struct_size` (msh_inspect_info,
 *  msh_progress), holds `field`: a library older than this header may not have it. */
#define MSH_STRUCT_HAS(p, type, field)                                                             \
    ((p)->struct_size >= offsetof(type, field) + sizeof(((type *)0)->field))

/** A short stable name for a status ("MSH_ERR_FORMAT"). Never NULL. */
MSH_API const char *msh_status_name(msh_status s);

/** The detail of a failure: one line, naming the file and the problem. */
typedef struct msh_error {
    msh_status status;
    char msg[1024];
} msh_error;

/** Library version as "MAJOR.MINOR.PATCH". */
MSH_API const char *msh_version(void);

/** Where the element work runs. AUTO: the GPU when one is present and the model's tensor data
 *  (external data included) is at least 64 MiB, else the CPU. */
enum { MSH_DEVICE_AUTO = 0, MSH_DEVICE_CPU = 1, MSH_DEVICE_CUDA = 2 };

/** The element type FP32 weights are converted to (msh_convert_options.float_type). The values
 *  are ONNX TensorProto.DataType codes. */
enum { MSH_FLOAT_KEEP = 0, MSH_FLOAT_FP16 = 10, MSH_FLOAT_BF16 = 16 };

/** File formats: what an input is (msh_probe_file) and what an output is written as. */
typedef enum msh_format {
    MSH_FORMAT_AUTO = 0,        /**< output: ONNX for ONNX inputs, safetensors for checkpoints
                                     (or what the output's extension names: msh_convert_check) */
    MSH_FORMAT_ONNX = 1,        /**< an ONNX model (.onnx, with or without external data) */
    MSH_FORMAT_PTH = 2,         /**< a torch.save checkpoint; as output, a weights-only .pth */
    MSH_FORMAT_SAFETENSORS = 3, /**< a safetensors file */
    MSH_FORMAT_HF_FOLDER = 4    /**< a Hugging Face model folder (a directory holding
                                     pytorch_model.bin, model.safetensors, or their shards with
                                     an index): converted as one model into a folder of
                                     safetensors shards */
} msh_format;

/** "onnx", "pth", "safetensors", "hf" or "auto". */
MSH_API const char *msh_format_name(msh_format f);

/** What the file at `path` is, from its first bytes (or, when they match no format, its name).
 *  A directory is MSH_FORMAT_HF_FOLDER when it holds model.safetensors,
 *  model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json (the index
 *  and the shards are validated only when the folder is converted or inspected).
 *  MSH_ERR_IO when it cannot be opened; MSH_ERR_USAGE when it is neither a regular file nor
 *  such a folder. */
MSH_API msh_status msh_probe_file(const char *path, msh_format *kind, msh_error *err);

/** The input bytes of a model and their newest modification time (nanoseconds since the epoch),
 *  as a resumed batch compares them: a file's own; for a Hugging Face model folder, the sum and
 *  the newest of its weight files and index (the other files are copied, not converted).
 *  MSH_ERR_IO when it cannot be read; MSH_ERR_USAGE as msh_probe_file. */
MSH_API msh_status msh_input_stat(const char *path, int64_t *bytes, int64_t *mtime_ns,
                                  msh_error *err);

/** A cancellation handle for the conversions that name it in msh_convert_options.cancel. */
typedef struct msh_cancel_token msh_cancel_token;

/** A new token, not requested. MSH_ERR_NOMEM when out of memory (`*token` is then NULL). */
MSH_API msh_status msh_cancel_token_create(msh_cancel_token **token, msh_error *err);
/** Ask every conversion that uses `token` to stop with MSH_ERR_CANCELLED, now or when it next
 *  checks (before each piece of tensor data: at most 1 MiB on the CPU, the staging buffer on a
 *  GPU, 16 MiB of a file-to-file copy), removing its temporary files. A conversion started
 *  with a requested token stops before it writes anything. Async-signal-safe; any thread. */
MSH_API void msh_cancel_token_request(msh_cancel_token *token);
/** 1 once msh_cancel_token_request was called (and not undone by msh_cancel_token_reset). */
MSH_API int msh_cancel_token_requested(const msh_cancel_token *token);
/** Make the token unrequested again, for the next conversions. Not while one uses it. */
MSH_API void msh_cancel_token_reset(msh_cancel_token *token);
/** Release a token once no running call uses it. NULL is fine. */
MSH_API void msh_cancel_token_free(msh_cancel_token *token);

/** What msh_convert_options.progress is told. The phases of one conversion: scans that read
 *  tensors to plan it (dedup digests and byte comparisons, INT8 channel ranges, the FP16 range
 *  test; a scan that reads less than 16 MiB is not reported), then the write of the output's
 *  tensor bytes (always reported). A phase may come again: a conversion whose plan changes
 *  half-way (a tensor that FP16 cannot hold) scans and writes again. */
typedef enum msh_phase {
    MSH_PHASE_SCAN = 1, /**< reading tensors to plan the conversion */
    MSH_PHASE_WRITE = 2 /**< making and writing the output's tensor bytes */
} msh_phase;

/** Progress of the current phase of one conversion. Made by the library: `struct_size` is its
 *  sizeof(msh_progress) (MSH_STRUCT_HAS). Valid during the callback only. */
typedef struct msh_progress {
    size_t struct_size;
    const char *path;      /**< the input, as given to msh_convert_file */
    int phase;             /**< an msh_phase */
    int64_t bytes_done;    /**< input tensor bytes of this phase done so far */
    int64_t bytes_total;   /**< input tensor bytes of this phase */
    int64_t tensors_done;  /**< tensors of this phase done */
    int64_t tensors_total; /**< tensors of this phase */
} msh_progress;

/** Called on the thread of msh_convert_file, between pieces of tensor data: at the start of each
 *  phase (bytes_done == 0), whenever 16 MiB more of it is done (on a GPU, whose pieces are its
 *  staging buffer, after every piece), and at its end (bytes_done == bytes_total, tensors_done
 *  == tensors_total); `user` is progress_user. Returning non-zero cancels the conversion
 *  (MSH_ERR_CANCELLED, nothing left behind). */
typedef int (*msh_progress_fn)(void *user, const msh_progress *p);

/** Options of one conversion. Initialise with msh_convert_options_init, then set fields. */
typedef struct msh_convert_options {
    size_t struct_size;     /**< sizeof(msh_convert_options) where the caller was compiled: set by
                                 msh_convert_options_init. Fields that end past it take their
                                 defaults; 0, a size inside a field, or a size larger than this
                                 library's struct is MSH_ERR_USAGE. */
    size_t result_size;     /**< sizeof(msh_convert_result) where the caller was compiled: set by
                                 msh_convert_options_init; msh_convert_file writes no byte past it
                                 (at least sizeof(size_t), else MSH_ERR_USAGE) */
    int dedup;              /**< merge identical initializers (default 1) */
    int dedup_graph_inputs; /**< also merge initializers that are graph inputs (default 0) */
    int external_data;      /**< write tensors to "<output>.data" (default 0; forced on when the
                                 input's tensors are external or the output would pass 2 GiB) */
    int64_t external_threshold; /**< tensors below this many bytes stay inline (default 1024) */
    int float_type;             /**< MSH_FLOAT_KEEP, MSH_FLOAT_FP16 or MSH_FLOAT_BF16 */
    int keep_io_types;          /**< keep FP32 graph inputs and outputs, with Casts (default 1) */
    float fp16_min; /**< non-zero magnitudes below become this (default 2^-24, FP16's smallest
                         subnormal) */
    float fp16_max; /**< finite magnitudes above become this (default 65504) */
    const char *block_ops;     /**< comma-separated ONNX op types kept in FP32, or NULL */
    const char *block_nodes;   /**< comma-separated node names kept in FP32, or NULL */
    int int8;                  /**< quantize weights to INT8 (DequantizeLinear) */
    int64_t int8_min_elements; /**< smallest weight quantized (default 4096 elements) */
    int int8_gather;           /**< also quantize embedding tables feeding Gather */
    int device;                /**< MSH_DEVICE_AUTO (default), MSH_DEVICE_CPU or MSH_DEVICE_CUDA */
    int verify;                /**< recompute every GPU piece on the CPU and compare the bytes */
    int64_t staging_mib; /**< GPU pinned staging buffer size in MiB (default 64; two are used) */
    const char *key;     /**< torch.save checkpoints: the state dict's key (NULL: found
                              automatically) */
    int out_format;      /**< a msh_format: AUTO (default), or for checkpoint and safetensors
                              inputs SAFETENSORS or PTH (weights-only .pth) */
    const char *keep_outputs; /**< keep only these graph outputs (comma-separated), or NULL */
    const char *drop_outputs; /**< remove these graph outputs (comma-separated), or NULL */
    int keep_inputs;          /**< keep graph inputs that pruning leaves unread */
    int threads;              /**< CPU threads of one conversion (0: one per core) */
    int fp16_clamp; /**< FP16: clamp the values of tensors that FP16 cannot hold (beyond 65504,
                         or mostly below 2^-14) instead of keeping those tensors FP32 */
    const char *const *keep_fp32; /**< glob patterns (fnmatch) of tensors kept FP32: ONNX
                                       initializer and Constant output names, checkpoint keys */
    size_t n_keep_fp32;
    int storage_only; /**< ONNX: store FP32 weights as FP16/BF16 and widen them back to FP32
                           with a Cast once, so that every op still computes in FP32 (checkpoint
                           conversion always changes storage only) */
    int allow_larger; /**< ONNX: keep the FP16/BF16 conversion even when its Casts make the file
                           larger (for half-precision compute on a GPU); by default such a
                           conversion is left out */
    int64_t max_shard_bytes;  /**< Hugging Face folders: the largest shard, in tensor bytes
                                   (default 5,000,000,000, Hugging Face's "5GB"); a tensor larger
                                   than this gets a shard of its own */
    msh_progress_fn progress; /**< called as the conversion goes (NULL: none) */
    void *progress_user;      /**< passed to progress */
    msh_cancel_token *cancel; /**< stops the conversion when requested (NULL: none) */
    int int4; /**< ONNX: store MatMul/Gemm weights in 4 bits, blockwise along the reduction axis
                   (excludes int8) */
    int int4_block;            /**< values per block: 32 (default), 64 or 128 */
    int int4_asym;             /**< UINT4 with a zero point per block (default: symmetric INT4) */
    int64_t int4_min_elements; /**< smallest weight quantized (default 4096 elements) */
    int int4_gather;           /**< also Gather tables (MATMULNBITS: GatherBlockQuantized) */
    int int4_format; /**< MSH_INT4_FORMAT_QDQ (default: DequantizeLinear-21 with block_size) or
                          MSH_INT4_FORMAT_MATMULNBITS (onnxruntime's com.microsoft.MatMulNBits) */
    int int4_search; /**< with int4: per block, the scale among 20 clipping ratios (1, 0.99, ...,
                          0.81 of RTN's range) with the least squared error (README, INT4) */
} msh_convert_options;

enum { MSH_INT4_FORMAT_QDQ = 0, MSH_INT4_FORMAT_MATMULNBITS = 1 };

/** Set every field of the `struct_size`-byte options at `opt` to its default and record
 *  `struct_size` and `result_size`; fields that end past `struct_size` are not touched. Call
 *  it through msh_convert_options_init, which passes the sizes of the caller's header (from
 *  other languages, pass the sizes of the structs as you declare them). */
MSH_API void msh_convert_options_init_sized(msh_convert_options *opt, size_t struct_size,
                                            size_t result_size);

/* msh_convert_result is declared below; the macro expands where the caller uses it. */
/** Set `*opt` to the defaults, recording the caller's struct sizes. */
#define msh_convert_options_init(opt)                                                              \
    msh_convert_options_init_sized((opt), sizeof(msh_convert_options), sizeof(msh_convert_result))

/** The options that only some input formats take. */
typedef enum msh_option {
    MSH_OPTION_NONE = 0,
    MSH_OPTION_DEDUP_GRAPH_INPUTS, /* ONNX */
    MSH_OPTION_EXTERNAL_DATA,      /* ONNX */
    MSH_OPTION_EXTERNAL_THRESHOLD, /* ONNX */
    MSH_OPTION_KEEP_IO_TYPES,      /* ONNX */
    MSH_OPTION_BLOCK_OPS,          /* ONNX */
    MSH_OPTION_BLOCK_NODES,        /* ONNX */
    MSH_OPTION_INT8,               /* ONNX */
    MSH_OPTION_INT8_MIN_ELEMENTS,  /* ONNX */
    MSH_OPTION_INT8_GATHER,        /* ONNX */
    MSH_OPTION_KEY,                /* torch.save checkpoints */
    MSH_OPTION_OUT_FORMAT,         /* checkpoints and safetensors (not ONNX) */
    MSH_OPTION_KEEP_OUTPUTS,       /* ONNX */
    MSH_OPTION_DROP_OUTPUTS,       /* ONNX */
    MSH_OPTION_KEEP_INPUTS,        /* ONNX */
    MSH_OPTION_FP16_CLAMP,         /* all formats, with float_type FP16 */
    MSH_OPTION_KEEP_FP32,          /* all formats, with float_type set */
    MSH_OPTION_STORAGE_ONLY,       /* all formats, with float_type set */
    MSH_OPTION_ALLOW_LARGER,       /* ONNX, with float_type set */
    MSH_OPTION_MAX_SHARD_BYTES,    /* Hugging Face model folders */
    MSH_OPTION_INT4,               /* ONNX */
    MSH_OPTION_INT4_BLOCK,         /* ONNX, with int4 */
    MSH_OPTION_INT4_ASYM,          /* ONNX, with int4 */
    MSH_OPTION_INT4_MIN_ELEMENTS,  /* ONNX, with int4 */
    MSH_OPTION_INT4_GATHER,        /* ONNX, with int4 */
    MSH_OPTION_INT4_FORMAT,        /* ONNX, with int4 */
    MSH_OPTION_INT4_SEARCH         /* ONNX, with int4 */
} msh_option;

/** The option's field name in msh_convert_options ("int8"). */
MSH_API const char *msh_option_name(msh_option o);
/** 1 when the option means something for inputs of that format. */
MSH_API int msh_option_applies(msh_option o, msh_format input);
/** MSH_ERR_USAGE when an option set to other than its default does not apply to inputs of that
 *  format (`*bad`, when not NULL, says which; the message names it), when the output's name
 *  contradicts the options or the input, or when an option would change nothing; MSH_OK
 *  otherwise. msh_convert_file makes the same check before it touches any output.
 *
 *  Options that refine another need it: fp16_clamp needs float_type FP16; keep_fp32,
 *  storage_only, allow_larger, keep_io_types = 0, block_ops and block_nodes need a float_type;
 *  keep_io_types = 0, block_ops and block_nodes choose what computes in FP32, so they exclude
 *  storage_only; int8_gather and int8_min_elements need int8; int4 excludes int8; int4_block
 *  (32, 64 or 128), int4_asym, int4_min_elements, int4_gather, int4_format and int4_search need
 *  int4; keep_inputs needs keep_outputs or drop_outputs; dedup_graph_inputs needs dedup. Each op
 *  type in block_ops must be one of an ONNX operator schema (any domain and version, spelled as
 *  ONNX does: "MatMul"), or com.microsoft's MatMulNBits or GatherBlockQuantized (which int4
 *  writes); other nodes of custom domains always stay FP32, so naming one is refused too (`*bad`
 *  is MSH_OPTION_BLOCK_OPS).
 *
 *  The output's extension decides its format: `out_path` (NULL: no name rule) ending in
 *  ".safetensors" is written as safetensors, ".pth", ".pt" or ".bin" as a weights-only .pth,
 *  ".onnx" as ONNX. An extension that contradicts out_format (".pth" with SAFETENSORS) or the
 *  input (an ONNX input to ".safetensors" or ".pth"; a checkpoint or safetensors input to
 *  ".onnx"; a Hugging Face folder, whose output is a folder, to any of them) is MSH_ERR_USAGE
 *  (`*bad` is MSH_OPTION_OUT_FORMAT). Other names keep the default: ONNX for ONNX inputs,
 *  safetensors for checkpoints, unless out_format says otherwise. */
MSH_API msh_status msh_convert_check(const msh_convert_options *opt, msh_format input,
                                     const char *out_path, msh_option *bad, msh_error *err);

/** What one conversion did. Byte counts include external data files. */
typedef struct msh_convert_result {
    size_t struct_size; /**< set by msh_convert_file: the bytes of this struct it wrote
                             (opt->result_size, or fewer for a library older than the caller) */
    int64_t bytes_in;
    int64_t bytes_out;
    int64_t dedup_merged;      /**< tensors removed by dedup */
    int64_t dedup_saved_bytes; /**< tensor bytes removed by dedup */
    int external_out;          /**< 1 when the output's tensors went to "<output>.data" */
    int64_t float_tensors;     /**< tensors converted to FP16/BF16 */
    uint64_t float_clamped;    /**< FP16 values too large, moved down to ±fp16_max (or kept
                                    off infinity): only with fp16_clamp or a lower fp16_max */
    int64_t float_casts;       /**< Cast nodes inserted at FP32 borders */
    int64_t int8_tensors;      /**< weights quantized to INT8 */
    int64_t int8_bytes_before; /**< their FP32 bytes */
    int64_t int8_bytes_after;  /**< their INT8 + scale + zero-point bytes */
    int int8_per_tensor;       /**< 1: the opset (< 13) allowed only one scale per tensor */
    int64_t int8_opset;        /**< the model's default-domain opset (INT8 needs >= 10) */
    char device[8];            /**< where the element work ran: "cpu" or "cuda" */
    char format[12];           /**< msh_format_name of the input's format */
    int64_t float_saved_bytes; /**< bytes saved by FP16/BF16 */
    int64_t strip_saved_bytes; /**< bytes of a checkpoint's dropped training state and metadata */
    int64_t pruned_nodes;      /**< nodes removed (dead code, unneeded outputs) */
    int64_t pruned_tensors;    /**< initializers removed */
    int64_t prune_saved_bytes; /**< their data bytes */
    char note[256];            /**< a remark for the user (e.g. why output went external), or "" */
    int64_t dedup_unshared;    /**< identical tensors the output format cannot share
                                    (safetensors), kept as copies */
    int64_t dedup_unshared_bytes; /**< their bytes: what a .pth output would save */
    int64_t float_kept_range;     /**< FP32 tensors kept FP32 because FP16 cannot hold them */
    int64_t float_kept_above;     /**< of those, tensors with values above 65504 */
    float float_kept_max;         /**< the largest |x| among the tensors kept for range */
    int64_t float_kept_user;      /**< FP32 tensors kept by keep_fp32 */
    uint64_t float_subnormal;     /**< non-zero values of converted tensors with |x| < 2^-14 (FP16's
                                       smallest normal) as read: they become FP16 subnormals (or
                                       fp16_min; the few just below 2^-14 round up to it) */
    char float_why[192];          /**< why FP16/BF16 converted nothing, or was undone; or "" */
    char int8_why[192];           /**< why INT8 quantized nothing; or "" */
    int64_t constants_lifted;     /**< Constant nodes made initializers for dedup or INT8 */
    int64_t shards_in;            /**< Hugging Face folders: weight files read */
    int64_t shards_out;           /**< Hugging Face folders: safetensors files written */
    int64_t tied_tensors;         /**< Hugging Face folders: keys that view the same storage as
                                       an earlier key (tied weights): written once, under the
                                       first key, and listed in the index's "tied" map */
    int64_t files_copied;         /**< Hugging Face folders: other files copied as they are */
    char state_dict[160];       /**< checkpoints holding several state dicts: the one taken and the
                                     others ("model (also in the file: ema)"), or "" */
    int64_t int4_tensors;       /**< weights stored in 4 bits */
    int64_t int4_bytes_before;  /**< their FP32 bytes */
    int64_t int4_bytes_after;   /**< their 4-bit + scale + zero-point bytes */
    int64_t int4_opset;         /**< the default-domain opset written (21 when raised for QDQ) */
    char int4_why[192];         /**< why INT4 quantized nothing; or "" */
    double int4_search_seconds; /**< int4_search: seconds the search took (its engine scan over
                                     the int4_bytes_before FP32 bytes); 0 without it */
} msh_convert_result;

/**
 * Convert the model at `in_path` into `out_path`. The output (and "<out_path>.data" when tensors
 * are written externally) is written under a temporary name in the output's folder, synced and
 * renamed; on failure nothing is left behind. The input is never modified; an output path that
 * names the input (or one of its external data files) is refused with MSH_ERR_USAGE. The
 * output's extension decides its format (msh_convert_check).
 *
 * A Hugging Face model folder (msh_probe_file says MSH_FORMAT_HF_FOLDER) is converted as one
 * model: `out_path` becomes a folder holding "model.safetensors", or shards
 * "model-0000k-of-0000n.safetensors" of at most max_shard_bytes tensor bytes each with
 * "model.safetensors.index.json", plus a copy of every other file of the input folder. It is
 * written as a temporary sibling folder and renamed into place complete. An existing
 * `out_path` is replaced only when it is an empty folder or a Hugging Face model folder.
 *
 * `opt` NULL converts with the defaults and then writes the first (this header's)
 * msh_convert_result fields only. `res` receives opt->result_size bytes whatever the outcome
 * (zeros and what was found before a failure). With `opt->progress` set, it is called on this
 * thread as described at msh_progress_fn. The conversion stops with MSH_ERR_CANCELLED, removing
 * its temporary files, when msh_cancel_request or msh_cancel_token_request(opt->cancel) is
 * called or the progress callback returns non-zero; the checks come before each piece of tensor
 * data, so it stops within one piece (opening and planning a model are not interrupted).
 * Returns MSH_OK, MSH_ERR_IO, MSH_ERR_FORMAT, MSH_ERR_LIMIT, MSH_ERR_UNSAFE, MSH_ERR_NOMEM,
 * MSH_ERR_USAGE (also for a bad struct_size or result_size), MSH_ERR_UNSUPPORTED, MSH_ERR_CUDA
 * (device CUDA without one), MSH_ERR_VERIFY or MSH_ERR_CANCELLED.
 */
MSH_API msh_status msh_convert_file(const char *in_path, const char *out_path,
                                    const msh_convert_options *opt, msh_convert_result *res,
                                    msh_error *err);

/**
 * Explain the size of the model at `path` as a JSON object (schema in README.md, "inspect
 * --json"). `*json_out` receives a malloc'd NUL-terminated string owned by the caller.
 */
MSH_API msh_status msh_inspect_file(const char *path, char **json_out, msh_error *err);

/** Flags of msh_inspect_file_ex. */
enum {
    /** Add "tensors": [{"name", "dtype", "bytes", "role", "dup_of"}], every tensor of the model
     *  with its own bytes in the file (a torch.save checkpoint: every storage, under the name of
     *  its first tensor, since the file holds each storage once; a model folder: a tied key
     *  once), its role ("weight", "buffer", "optimizer_state", "training_state", "other") and,
     *  when dedup would merge it into another, "dup_of": that tensor's name. For a map of a
     *  file's bytes (inspect --html); a model of many tensors makes a long list. */
    MSH_INSPECT_TENSOR_LIST = 1
};

/**
 * msh_inspect_file with `flags` (MSH_INSPECT_TENSOR_LIST, or 0: the same as msh_inspect_file).
 * Returns what msh_inspect_file returns, and MSH_ERR_USAGE for an unknown flag.
 */
MSH_API msh_status msh_inspect_file_ex(const char *path, unsigned flags, char **json_out,
                                       msh_error *err);

/** One element type's share of a model (msh_inspect_info.by_dtype). Never grows: a new fact per
 *  type would come as a new array of msh_inspect_info. */
typedef struct msh_inspect_dtype {
    const char *dtype; /**< "FLOAT", "FLOAT16", "BFLOAT16", "INT8", ... ("UNKNOWN" for others) */
    int32_t code;      /**< its ONNX TensorProto.DataType code (-1: unknown) */
    int64_t count;     /**< tensors of this type */
    int64_t bytes;     /**< their bytes (checkpoints: each storage once) */
} msh_inspect_dtype;

/** One tensor (msh_inspect_info.largest). Never grows, like msh_inspect_dtype. */
typedef struct msh_inspect_tensor {
    const char *name;     /**< ONNX: its name; checkpoints: its path from the root
                               ("optimizer.state.0.exp_avg"); model folders: its key */
    const char *dtype;    /**< as msh_inspect_dtype.dtype */
    int32_t code;         /**< as msh_inspect_dtype.code */
    const int64_t *shape; /**< `ndim` dimensions */
    size_t ndim;
    int64_t bytes;
} msh_inspect_tensor;

#define MSH_INSPECT_LARGEST 10 /**< how many of the largest tensors msh_inspect_info lists */

/** What msh_inspect found: the figures of `inspect --json` (msh_inspect_file), the same values
 *  from the same pass. Made by the library and read-only: `struct_size` is the library's
 *  sizeof(msh_inspect_info) (MSH_STRUCT_HAS). Figures that a format does not have are -1. */
typedef struct msh_inspect_info {
    size_t struct_size;
    msh_format format;    /**< ONNX, PTH, SAFETENSORS or HF_FOLDER */
    int64_t file_bytes;   /**< the file's bytes (ONNX: without external data; a model folder: its
                               weight files and index) */
    int64_t tensor_bytes; /**< tensor data bytes (checkpoints: each storage once; a model
                               folder: a tied key once) */
    int64_t tensor_count;
    const msh_inspect_dtype *by_dtype; /**< tensor bytes by element type, by ascending code
                                            (unknown types last) */
    size_t n_by_dtype;
    /* where the bytes are: a torch.save checkpoint ("breakdown") */
    int64_t weights_bytes;         /**< storages of model weights */
    int64_t optimizer_state_bytes; /**< storages of optimizer state */
    int64_t other_tensor_bytes;    /**< other storages (buffers, training state) */
    int64_t metadata_bytes;        /**< everything else: pickle, zip structure */
    /* ... an ONNX model */
    int64_t overhead_bytes; /**< the graph and everything but inline tensor data */
    int64_t external_bytes; /**< external data files */
    /* ... a safetensors file */
    int64_t header_bytes; /**< its JSON header */
    /* identical tensors ("duplicates"): what dedup would merge */
    int64_t dup_groups;         /**< sets of identical tensors */
    int64_t dup_tensors;        /**< tensors beyond the first of each set */
    int64_t dup_saved_bytes;    /**< their bytes: what storing each set once saves */
    const char *state_dict_key; /**< a checkpoint's state dict: its key from the root ("" when the
                                     checkpoint is the state dict or a module); NULL when none
                                     was found or the input is not a torch.save checkpoint */
    const msh_inspect_tensor *largest; /**< the largest tensors, largest first (at most
                                            MSH_INSPECT_LARGEST) */
    size_t n_largest;
} msh_inspect_info;

/**
 * Inspect the model at `path` into `*info` (allocated; release it with msh_inspect_info_free;
 * NULL on failure). Reads the tensor data once, in bounded pieces, to find duplicates. Returns
 * MSH_OK, MSH_ERR_IO, MSH_ERR_FORMAT, MSH_ERR_LIMIT, MSH_ERR_UNSAFE, MSH_ERR_NOMEM,
 * MSH_ERR_USAGE (a folder that is not a model folder), MSH_ERR_UNSUPPORTED or
 * MSH_ERR_CANCELLED (msh_cancel_request).
 */
MSH_API msh_status msh_inspect(const char *path, msh_inspect_info **info, msh_error *err);

/** Release what msh_inspect made. NULL is fine. */
MSH_API void msh_inspect_info_free(msh_inspect_info *info);

/**
 * Compare two model files tensor by tensor (any two supported formats): tensors are matched by
 * name; each pair is byte-identical or not, and otherwise gets its largest absolute and relative
 * difference, largest distance in units in the last place (same float type) and cosine. Both are
 * read in bounded pieces. `*json_out` receives a malloc'd JSON object: "a", "b", "tensors"
 * ([{name, status: identical|different|dtype|shape|missing|extra, ...}]), "summary" and
 * "identical"; `*identical` is 1 when every tensor is in both, byte for byte.
 */
MSH_API msh_status msh_diff_files(const char *path_a, const char *path_b, char **json_out,
                                  int *identical, msh_error *err);

/** Number of usable CUDA devices; 0 when built without CUDA or when none is present. */
MSH_API int msh_cuda_device_count(void);

/** 1 when this build includes the CUDA back end. */
MSH_API int msh_cuda_built(void);

/** Ask every conversion in progress (all threads) to stop soon with MSH_ERR_CANCELLED, removing
 *  its temporary files, and every later one to stop before it writes: the request holds for the
 *  rest of the process (for one call, use a cancel token). Async-signal-safe: meant for
 *  SIGINT/SIGTERM handlers. */
MSH_API void msh_cancel_request(void);

/** Remove temporary files and folders left in `dir` (recursively) by modelshrink processes of
 *  this host that are no longer running (a run killed with SIGKILL). Returns how many were
 *  removed (a folder counts once). */
MSH_API int64_t msh_clean_stale_temps(const char *dir);

/** The external data files of an ONNX model: `*locations` receives `*n` malloc'd strings (paths
 *  relative to the model's folder, as the model names them), released with msh_free each and
 *  msh_free on the array. A file that is not ONNX has none (MSH_OK, *n = 0). */
MSH_API msh_status msh_onnx_external_files(const char *path, char ***locations, size_t *n,
                                           msh_error *err);

/** Release memory returned by the library. NULL is fine. */
MSH_API void msh_free(void *p);

#ifdef __cplusplus
}
#endif
#endif /* MODELSHRINK_H */
