/*
 * PyTorch checkpoints: what torch.save and torch.jit.save write, read without running anything.
 *
 * Three containers:
 *   - the zip format (torch >= 1.6): "<prefix>/data.pkl" and "<prefix>/data/<key>" storages;
 *   - the legacy stream (torch < 1.6, or _use_new_zipfile_serialization=False): pickled magic
 *     number, protocol version and sys_info, the object, the list of storage keys, then each
 *     storage as an 8-byte element count and its bytes (FORMATS.md);
 *   - TorchScript archives (torch.jit.save): a zip whose data.pkl is a tree of module objects of
 *     `__torch__` classes, with the classes' source under code/ (DEFLATE, inflated only to read
 *     each class's `__parameters__` and `__buffers__` lists as text).
 * The pickle is read by the data-only machine of pickle.c: unknown globals are inert
 * placeholders, code-running ones are refused. Every tensor becomes (storage, element offset,
 * shape, stride), checked to lie inside its storage, and every storage inside the file.
 *
 * The state dict is chosen, in this order:
 *   1. the user's key (`key`), whose value must be a dict of tensors or a module;
 *   2. the root itself when it is a module (torch.save(model), a TorchScript archive): its
 *      parameters and persistent buffers, named as module.state_dict() names them;
 *   3. the root when its values are tensors (a bare state dict);
 *   4. the first of model_state_dict, state_dict, model_state, model, module, net, network, ema,
 *      model_ema that holds a dict of tensors or a module;
 *   5. the only value of the root that does; several without a known key are an error that
 *      lists them (name one with `key`).
 * The other candidates are listed (msh_pth.cand) and their tensors are training state. A state
 * dict entry that is a placeholder object rather than a tensor (a tensor rebuilt by a function
 * this reader does not interpret) is refused with the global named; placeholders elsewhere are
 * metadata. Tensors under optimizer, optimizer_state_dict, optim, optimizer_state,
 * optimizer_states are optimizer state.
 * The reader only describes: it never converts or writes (pth_write.c writes weights-only
 * archives).
 */
#ifndef MSH_PTH_H
#define MSH_PTH_H

#include "common/msh_table.h"
#include "formats/pickle.h"
#include "formats/zip.h"

enum { MSH_PTH_WEIGHTS = 0, MSH_PTH_OPTIM = 1, MSH_PTH_OTHER = 2 };
enum { MSH_PTH_ZIP = 0, MSH_PTH_LEGACY = 1, MSH_PTH_TORCHSCRIPT = 2 };

/* d (first: msh_table views these) describes the tensor as the neutral table does: d.name is
 * its path from the root, d.src a file span when it is contiguous in its storage and a strided
 * view otherwise, d.storage its storage, d.role weight or buffer (state dict), optimizer state or
 * training state. */
typedef struct msh_pth_tensor {
    msh_tentry d;
    char *name;      /* path from the root, keys joined with '.' */
    const char *key; /* name inside the state dict (a suffix of `name`), or NULL */
    const int64_t *stride;
    int64_t offset; /* in elements */
    size_t storage;
    int cat;
} msh_pth_tensor;

typedef struct msh_pth_storage {
    const char *key;
    int32_t dtype;
    int64_t numel, nbytes;
    int64_t file_offset;
    int users;
    int cat; /* the category of its first user by priority: weights, optimizer, other */
} msh_pth_storage;

/* A legacy storage's bytes in the file. */
typedef struct msh_pth_blob {
    const char *key;
    int64_t offset, numel;
} msh_pth_blob;

/* A value that could be the state dict. */
typedef struct msh_pth_cand {
    const char *key;        /* "" for the root */
    int64_t tensors, bytes; /* bytes: the tensors' own, a view of a shared storage each time */
    int64_t storages, storage_bytes; /* the storages they view, each counted once */
    int chosen;
} msh_pth_cand;

typedef struct msh_pth {
    int fd;
    int64_t file_size;
    int kind; /* MSH_PTH_ZIP, MSH_PTH_LEGACY or MSH_PTH_TORCHSCRIPT */
    msh_zip zip;
    msh_pickle pk;
    msh_pth_blob *blobs; /* legacy */
    size_t n_blobs;
    msh_pth_tensor *t;
    size_t nt, capt;
    msh_pth_storage *s;
    size_t ns, caps;
    const char *sd_key;     /* "" for a bare state dict or a module root, NULL when none */
    const char *root_class; /* the root module's class ("module name") or NULL */
    msh_pth_cand cand[16];
    size_t n_cand;
    char **classes; /* placeholder classes met (metadata), "module name" each */
    size_t n_classes;
    int64_t *class_count;
} msh_pth;

/* 1 when the file starts like a zip archive; 2 when it looks like a legacy torch pickle. */
int msh_pth_sniff(const uint8_t *head, size_t n);

/* `key`: the user's state-dict key, or NULL to choose it as above. The message is not prefixed
 * with the path. Free with msh_pth_free even on failure. */
msh_status msh_pth_open(msh_pth *p, const char *path, const char *key, msh_error *e);
void msh_pth_free(msh_pth *p);

/* The tensor table over p->t. */
msh_table msh_pth_table(const msh_pth *p);

/* The top-level keys of the checkpoint (for "no state dict found"), comma-separated into
 * `buf`. */
void msh_pth_top_keys(const msh_pth *p, char *buf, size_t cap);

/* "zip", "legacy" or "TorchScript". */
const char *msh_pth_kind_name(int kind);

#endif
