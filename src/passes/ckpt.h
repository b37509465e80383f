/*
 * Planning a checkpoint's output (torch.save archives and safetensors, any reader's table).
 *
 * Strip: only the state dict is written, i.e. the tensors whose role is weight or buffer;
 * optimizer and other training state, and all metadata, are left behind.
 * Views: tensors that are the same view of one input storage (tied weights) share one output
 * storage where the output format can alias (.pth); safetensors cannot, so each key gets a copy,
 * unless the caller ties them (`tie`: a Hugging Face folder writes the first key once and lists
 * the others as tied to it, and the model re-ties them when it loads).
 * Dedup: among the distinct views, tensors with identical bytes (same type and shape) are found
 * by the engine (dedup.h); a .pth output stores them once, in one storage that all of them view
 * (torch loads them tied); a safetensors output keeps every key and the plan only counts what a
 * .pth output would save.
 * Precision: FLOAT tensors become FLOAT16 or BFLOAT16 when asked (storage only: the model that
 * loads them decides what it computes in); every other type is kept, and so are FLOAT tensors
 * that the range test or the user keeps FP32.
 */
#ifndef MSH_CKPT_H
#define MSH_CKPT_H

#include "engine/msh_engine.h"

typedef struct msh_ckpt_opts {
    int32_t float_type; /* 0, FLOAT16 or BFLOAT16 */
    int dedup;          /* look for identical tensors */
    int share;          /* the output format can alias: tied and identical tensors share */
    /* FLOAT tensors kept FP32: by origin (the range test's verdict) or by glob on the key.
     * Every tensor that shares a kept tensor's output storage is kept with it. */
    const uint8_t *keep;
    size_t n_keep;
    const char *const *keep_globs;
    size_t n_keep_globs;
    int tie; /* without `share`: a key that is the same view as an earlier one is not written;
                plan.tied_to names the earlier one */
} msh_ckpt_opts;

typedef struct msh_ckpt_plan {
    size_t *sel; /* table indices written, in the input's order */
    size_t n;
    size_t *storage_of; /* per selected tensor: its output storage */
    size_t *rep;        /* per output storage: the table index that supplies its bytes */
    size_t n_storage;
    int64_t dup_tensors;   /* tensors whose bytes another one already holds */
    int64_t dup_bytes;     /* their bytes (saved in a .pth output) */
    int64_t float_tensors; /* tensors converted to FLOAT16/BFLOAT16 */
    int64_t float_saved;   /* bytes that saves, per key */
    int64_t kept_range;    /* FLOAT tensors kept FP32 by the range test (with their storage) */
    int64_t kept_user;     /* FLOAT tensors kept FP32 by a glob (with their storage) */
    size_t *tied_to;       /* per selected tensor: with `tie`, the selected position of the
                              earlier key it is the same view as (not written), else
                              MSH_CKPT_UNTIED */
    int64_t tied;          /* tensors tied to an earlier key */
} msh_ckpt_plan;

#define MSH_CKPT_UNTIED ((size_t)-1)

/* Plan the output of the tensors in `tab`; writes each selected entry's plan (out_dtype,
 * dup_of). Tied tensors share their earlier key's output storage and plan, and are not counted
 * in float_tensors, float_saved, kept_range or kept_user. */
msh_status msh_ckpt_plan_make(const msh_table *tab, const msh_ckpt_opts *o, msh_engine *eng,
                              msh_ckpt_plan *p, msh_error *e);
void msh_ckpt_plan_free(msh_ckpt_plan *p);

#endif
