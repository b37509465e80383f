/*
 * Pickles for weights-only checkpoints: the state dict as torch.save (protocol 2) writes it, and
 * as torch.load(weights_only=True) accepts it:
 *
 *   OrderedDict([(key, torch._utils._rebuild_tensor_v2(
 *        persistent_id(('storage', torch.<Dtype>Storage, '<storage key>', 'cpu', <numel>)),
 *        <element offset>, (<shape>), (<row-major strides>), False, OrderedDict())), ...])
 *
 * Only globals on torch's weights-only allowlist are written.
 */
#ifndef MSH_PICKLE_WRITE_H
#define MSH_PICKLE_WRITE_H

#include "common/msh_common.h"

typedef struct msh_pkw_entry {
    const char *key;         /* the state-dict key */
    const char *storage_key; /* its storage's name in the archive ("0", "1", ...) */
    int32_t dtype;           /* element type of the storage and the tensor */
    int64_t storage_numel;   /* elements of the storage */
    int64_t offset;          /* first element of the tensor in the storage */
    const int64_t *shape;
    size_t ndim;
} msh_pkw_entry;

/* The pickle of a state dict, malloc'd into *out (*out_n bytes). MSH_ERR_UNSUPPORTED names an
 * element type torch has no storage class for. */
msh_status msh_pkw_state_dict(const msh_pkw_entry *t, size_t n, uint8_t **out, size_t *out_n,
                              msh_error *e);

#endif
