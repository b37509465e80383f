/*
 * Hugging Face model folders: one model kept in several files.
 *
 * A folder is a model folder when it holds one of these, taken in the order transformers
 * prefers them: model.safetensors; model.safetensors.index.json with its shards;
 * pytorch_model.bin (a torch.save state dict); pytorch_model.bin.index.json with its shards.
 * An index is the JSON object {"metadata": {"total_size": N, ...}, "weight_map": {"<tensor>":
 * "<file>", ...}}; shards are conventionally named model-0000k-of-0000n.safetensors or
 * pytorch_model-0000k-of-0000n.bin.
 *
 * Reading is strict, and nothing is written before it has passed:
 *   - the index is at most 64 MiB of JSON: an object whose "weight_map" maps strings to strings,
 *     each tensor listed once, and whose "metadata", when present, is an object;
 *   - every file the index names is a plain name (no '/', no '\', no "..", not hidden) of a
 *     regular file of the folder, not a symbolic link; names of the form
 *     <prefix>-<k>-of-<n>.<ext> agree on n and cover k = 1..n; every shard-named file of the
 *     folder is listed;
 *   - every shard opens with its format's strict reader (safetensors.c, pth.c: a .bin shard must
 *     hold a state dict); every tensor of a shard's state dict is listed in the index under that
 *     shard, and every tensor listed is found in its shard.
 * The folder's table (msh_hf_table) is one msh_tentry per state-dict tensor across all shards,
 * in shard order (by file name) and each shard's own order: copies of the shard readers'
 * entries, which keep pointing at their shard's open file, so the folder stays open until the
 * output is written.
 *
 * The other files (config.json, tokenizer files, subfolders) are listed for copying as they are.
 * A symbolic link is copied as the regular file it points to only when that file lies inside
 * the folder; a link that leaves the folder, dangles or names a folder, and anything that is not
 * a regular file or a folder, is refused. ".git" folders and modelshrink's temporaries are not
 * copied, and neither is any weight file (of either format) or index.
 *
 * Writing (hf_folder_write.c) only places bytes: shards of at most max_shard bytes filled in the
 * table's order, each written by the safetensors writer, the index, the copies, all inside a
 * temporary sibling folder that is renamed into place complete.
 */
#ifndef MSH_HF_FOLDER_H
#define MSH_HF_FOLDER_H

#include <cjson/cJSON.h>

#include "common/msh_strmap.h"
#include "formats/pth.h"
#include "formats/safetensors.h"

typedef struct msh_hf_shard {
    char *file; /* its name in the folder */
    char *path; /* "<folder>/<file>" */
    int64_t size, mtime_ns;
    msh_pth pth;    /* .bin weights */
    msh_st_file st; /* safetensors weights */
    int opened;
    size_t first, count; /* its tensors in the folder's table */
} msh_hf_shard;

typedef struct msh_hf_tensor {
    msh_tentry d; /* first: msh_table views these. d.name is the state-dict key, d.origin the
                     index in this table, d.storage numbered across the folder */
    size_t shard;
} msh_hf_tensor;

/* A file or subfolder to copy. */
typedef struct msh_hf_file {
    char *rel; /* relative to the folder */
    char *src; /* what is read: the file itself, or the in-folder target of a symbolic link */
    int is_dir;
    unsigned mode; /* permission bits */
} msh_hf_file;

typedef struct msh_hf {
    char *dir;
    char *real;           /* the folder's real path */
    msh_format weights;   /* MSH_FORMAT_SAFETENSORS or MSH_FORMAT_PTH */
    const char *index;    /* the index's name, or NULL for a single weight file */
    cJSON *index_json;    /* the parsed index (the map's keys point into it) */
    msh_strmap wmap;      /* tensor -> 2 * shard + found */
    msh_hf_shard *shards; /* sorted by file name */
    size_t n_shards;
    msh_hf_tensor *t;
    size_t n, cap;
    msh_hf_file *files;
    size_t n_files, cap_files;
    int64_t bytes_in; /* the weight files and the index */
    int64_t mtime_ns; /* the newest of them */
    char note[256];   /* weights of the other format that are not converted, or "" */
} msh_hf;

/* What a folder's weights are (MSH_FORMAT_SAFETENSORS or MSH_FORMAT_PTH), or MSH_FORMAT_AUTO when
 * it is not a model folder (or not a folder). Looks only at names. */
msh_format msh_hf_detect(const char *dir);

/* Validate the folder's index and weight files and measure them (bytes_in, mtime_ns); opens no
 * shard. Free with msh_hf_free even on failure. Messages are not prefixed with the folder. */
msh_status msh_hf_scan(msh_hf *h, const char *dir, msh_error *e);

/* msh_hf_scan, then open every shard, build the table and check it against the index, and list
 * the other files. Free with msh_hf_free even on failure. */
msh_status msh_hf_open(msh_hf *h, const char *dir, msh_error *e);
void msh_hf_free(msh_hf *h);
msh_table msh_hf_table(const msh_hf *h);

/* The output path `out` may receive the model folder `in`: it is not the input, not inside it,
 * does not hold it, and is absent, an empty folder or a model folder (which is replaced).
 * MSH_ERR_USAGE otherwise. */
msh_status msh_hf_check_output(const char *in, const char *out, msh_error *e);

/* ---- the writer (hf_folder_write.c) ---- */

typedef struct msh_hf_write_result {
    int64_t bytes_out; /* the shards and the index */
    int64_t shards;
    int64_t files_copied;
} msh_hf_write_result;

/* Write the model folder `out`: `items` (the tensors to write, in order; their bytes come from
 * `bytes`, in this order) in safetensors shards of at most `max_shard` data bytes (a larger
 * tensor alone in its own), named model.safetensors when one shard holds everything, else
 * model-0000k-of-0000n.safetensors with model.safetensors.index.json; the index's metadata holds
 * total_size and, when `n_tied` > 0, "tied": {tied_from[i]: tied_to[i]}. Then every file of
 * `in` is copied. All of it goes to a temporary sibling folder, renamed to `out` when complete
 * (an existing `out` is replaced, and removed once the new folder is in place); on failure the
 * temporary folder is removed and `out` is untouched. */
msh_status msh_hf_write(const char *out, const msh_hf *in, const msh_st_out *items, size_t n,
                        int64_t max_shard, const char *const *tied_from, const char *const *tied_to,
                        size_t n_tied, msh_bytes_fn bytes, void *ctx, msh_hf_write_result *wr,
                        msh_error *e);

#endif
