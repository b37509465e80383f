/*
 * modelshrink — shrink neural-network model files without breaking them.
 *
 * This is the only header the CLI and users include. The library reads a model, runs the
 * requested passes (deduplication today; FP16/BF16 and INT8 conversion, checkpoint stripping
 * and pruning in later versions) and writes the result by streaming tensor payloads, so
 * memory stays bounded whatever the model's size.
 *
 * Minimal use:
 *
 *     msh_convert_options opt;
 *     msh_convert_options_init(&opt);
 *     msh_convert_result res;
 *     msh_error err;
 *     if (msh_convert_file("in.onnx", "out.onnx", &opt, &res, &err) != MSH_OK)
 *         fprintf(stderr, "%s\n", err.msg);
 *
 * Ownership: strings returned through `char **` out-parameters are malloc'd and owned by the
 * caller (release with msh_free). Threading: every call is independent and re-entrant; calls on
 * different files may run in parallel threads.
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
    MSH_ERR_CANCELLED = 10   /**< msh_cancel_request() stopped the work; nothing was written */
} msh_status;

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

/** Options of one conversion. Initialise with msh_convert_options_init. */
typedef struct msh_convert_options {
    int dedup;                  /**< merge identical initializers (default 1) */
    int dedup_graph_inputs;     /**< also merge initializers that are graph inputs (default 0) */
    int external_data;          /**< write tensors to "<output>.data" (default 0; forced on when the
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
    int64_t max_shard_bytes; /**< Hugging Face folders: the largest shard, in tensor bytes
                                  (default 5,000,000,000, Hugging Face's "5GB"); a tensor larger
                                  than this gets a shard of its own */
} msh_convert_options;

MSH_API void msh_convert_options_init(msh_convert_options *opt);

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
    MSH_OPTION_MAX_SHARD_BYTES     /* Hugging Face model folders */
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
 *  storage_only; int8_gather and int8_min_elements need int8; keep_inputs needs keep_outputs or
 *  drop_outputs; dedup_graph_inputs needs dedup. Each op type in block_ops must be one of an
 *  ONNX operator schema (any domain and version, spelled as ONNX does: "MatMul"); nodes of
 *  custom domains always stay FP32, so naming one is refused too (`*bad` is
 *  MSH_OPTION_BLOCK_OPS).
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
    char state_dict[160]; /**< checkpoints holding several state dicts: the one taken and the
                               others ("model (also in the file: ema)"), or "" */
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
 * Returns MSH_OK, MSH_ERR_IO, MSH_ERR_FORMAT, MSH_ERR_LIMIT, MSH_ERR_UNSAFE, MSH_ERR_NOMEM,
 * MSH_ERR_USAGE or MSH_ERR_UNSUPPORTED.
 */
MSH_API msh_status msh_convert_file(const char *in_path, const char *out_path,
                                    const msh_convert_options *opt, msh_convert_result *res,
                                    msh_error *err);

/**
 * Explain the size of the model at `path` as a JSON object (schema in README.md, "inspect
 * --json"). `*json_out` receives a malloc'd NUL-terminated string owned by the caller.
 */
MSH_API msh_status msh_inspect_file(const char *path, char **json_out, msh_error *err);

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
 *  its temporary files. Async-signal-safe: meant for SIGINT/SIGTERM handlers. */
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
