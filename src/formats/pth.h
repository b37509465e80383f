/*
 * PyTorch checkpoints (torch.save zip format, torch >= 1.6).
 *
 * The archive is read with zip.c, "<prefix>/data.pkl" with the data-only pickle reader
 * (pickle.c), and every tensor becomes (storage "<prefix>/data/<key>", element offset, shape,
 * stride); storages are checked to be as large as their element count says and every tensor to
 * lie inside its storage. The model's state dict is found under model_state_dict, state_dict,
 * model, module, net or network (or a key the user names); a dict whose values are all tensors
 * is a bare state dict. Tensors under optimizer, optimizer_state_dict, optim or
 * optimizer_state are optimizer state; any other tensor is "other" (EMA copies, scalers).
 * The reader only describes: it never converts or writes (pth_write.c writes weights-only
 * archives, pickle_write.c and zip_write.c do their parts).
 */
#ifndef MSH_PTH_H
#define MSH_PTH_H

#include "common/msh_table.h"
#include "formats/pickle.h"
#include "formats/zip.h"

enum { MSH_PTH_WEIGHTS = 0, MSH_PTH_OPTIM = 1, MSH_PTH_OTHER = 2 };

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

typedef struct msh_pth {
    int fd;
    int64_t file_size;
    msh_zip zip;
    msh_pickle pk;
    msh_pth_tensor *t;
    size_t nt, capt;
    msh_pth_storage *s;
    size_t ns, caps;
    const char *sd_key; /* "" for a bare state dict, NULL when none was found */
} msh_pth;

/* 1 when the file starts like a zip archive; 2 when it looks like a legacy torch pickle. */
int msh_pth_sniff(const uint8_t *head, size_t n);

/* `key`: the user's state-dict key, or NULL to search the usual ones. The message is not
 * prefixed with the path. Free with msh_pth_free even on failure. */
msh_status msh_pth_open(msh_pth *p, const char *path, const char *key, msh_error *e);
void msh_pth_free(msh_pth *p);

/* The tensor table over p->t. */
msh_table msh_pth_table(const msh_pth *p);

/* The top-level keys of the checkpoint (for "no state dict found"), comma-separated into
 * `buf`. */
void msh_pth_top_keys(const msh_pth *p, char *buf, size_t cap);

#endif
