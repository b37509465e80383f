/*
 * A pickle reader that builds data and calls nothing.
 *
 * Accepts protocols 2 to 5 as torch.save and torch.jit.save write them: the data opcodes (ints,
 * floats, strings, bytes, tuples, lists, dicts, sets, memo, frames), BINPERSID storage
 * references, and GLOBAL / REDUCE / NEWOBJ / BUILD. What a global means is decided here, by name,
 * and nothing named in the file is ever imported, called or looked up:
 *   - interpreted: collections.OrderedDict, torch._utils._rebuild_tensor_v2 / _v3,
 *     _rebuild_parameter(_with_state), torch storage classes, torch.Size, torch dtypes,
 *     _codecs.encode, builtins set/frozenset/slice/complex: they become the data they stand for;
 *   - refused wherever they appear (MSH_ERR_UNSAFE, the global named): the callables that run
 *     code or touch the system (os, posix, nt, subprocess, sys, builtins eval/exec/compile/open/
 *     __import__/setattr/..., importlib, runpy, shutil, socket, pty, ctypes, pickle, marshal,
 *     functools, operator, code, webbrowser, threading, torch.load,
 *     torch.storage._load_from_bytes, torch._utils._rebuild_device_tensor_from_numpy). No
 *     checkpoint needs them; a file that names them is an attack, and the user hears of it
 *     (builtins.getattr is not among them: enums pickle through it, and here it names, never
 *     looks up);
 *   - any other global is an inert placeholder (MSH_PK_CLASS, its name kept): calling it
 *     (REDUCE, NEWOBJ, NEWOBJ_EX) makes an MSH_PK_OBJECT that records the class and arguments,
 *     and BUILD records the object's state. omegaconf containers, argparse.Namespace,
 *     dataclasses, enums, numpy scalars, pathlib paths, TorchScript's `__torch__` classes and
 *     pickled nn.Modules all open this way; the checkpoint reader refuses a state dict whose
 *     tensors would need one of them (pth.c), and otherwise reports them as metadata.
 * INST, OBJ, PERSID, EXT* and any opcode torch does not write are refused. Stack, memo, string
 * lengths and nesting are bounded.
 */
#ifndef MSH_PICKLE_H
#define MSH_PICKLE_H

#include "common/msh_common.h"

typedef enum msh_pk_type {
    MSH_PK_NONE = 0,
    MSH_PK_BOOL,
    MSH_PK_INT,
    MSH_PK_FLOAT,
    MSH_PK_STR,
    MSH_PK_BYTES,
    MSH_PK_TUPLE,
    MSH_PK_LIST,
    MSH_PK_DICT, /* items: key, value, key, value, ... */
    MSH_PK_SET,
    MSH_PK_GLOBAL,  /* an allowed callable or class: `s` holds "module name" */
    MSH_PK_STORAGE, /* a persistent storage reference */
    MSH_PK_TENSOR,
    MSH_PK_DTYPE, /* a torch dtype: `i` is its ONNX element type */
    MSH_PK_MARK,
    MSH_PK_CLASS, /* an inert placeholder for a global: `s` holds "module name" */
    MSH_PK_OBJECT /* an instance of a placeholder: `s` its class, items[0] the arguments,
                     items[1] the state BUILD gave it (NONE until then), items[2] (when present)
                     the entries or items added to it (a dict or list subclass) */
} msh_pk_type;

typedef struct msh_pk msh_pk;
struct msh_pk {
    msh_pk_type type;
    int64_t i;  /* INT, BOOL; STORAGE: numel; DTYPE: element type */
    double f;   /* FLOAT */
    char *s;    /* STR, BYTES, GLOBAL; STORAGE: key */
    size_t len; /* STR, BYTES */
    msh_pk **items;
    size_t n, cap;
    /* STORAGE: element type (ONNX code); TENSOR: storage, offset, shape, stride, dtype */
    int32_t dtype;
    msh_pk *storage;
    int64_t offset;
    int64_t *shape, *stride;
    size_t ndim;
    int checked; /* the deepest level at which the nesting check passed (shared subtrees) */
    int seen;    /* scratch for readers (pth.c: a tensor already taken into the state dict) */
};

typedef struct msh_pickle {
    msh_pk **all; /* every object, freed together */
    size_t n_all, cap_all;
    msh_pk *root;
    int truncated; /* the load failed because the bytes ended before STOP */
} msh_pickle;

/* Interpret `len` bytes of pickle. On failure the message says what and where. */
msh_status msh_pickle_load(msh_pickle *p, const uint8_t *buf, size_t len, msh_error *e);
/* The same for the first pickle of `buf` (the legacy format is several in a row): `*used`
 * receives the bytes up to and including its STOP. */
msh_status msh_pickle_load_prefix(msh_pickle *p, const uint8_t *buf, size_t len, size_t *used,
                                  msh_error *e);
void msh_pickle_free(msh_pickle *p);

/* The value of `key` in a DICT, or NULL. */
msh_pk *msh_pk_dict_get(const msh_pk *d, const char *key);
/* A new empty object owned by `p` (for views a reader builds, e.g. a module's state dict);
 * NULL when out of memory. */
msh_pk *msh_pk_new(msh_pickle *p, msh_pk_type t);
/* Append `x` to a container's items; 0 when out of memory. */
int msh_pk_append(msh_pk *c, msh_pk *x);
/* The state BUILD gave an OBJECT (NULL when none). */
const msh_pk *msh_pk_object_state(const msh_pk *o);

#endif
