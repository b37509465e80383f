"""The ctypes binding of libmodelshrink (include/modelshrink.h): structs, prototypes, loading.

Only declarations live here. The structs mirror the header field by field, in order;
tests/python/test_package.py compiles a C program against the header and checks every offset
and size against these declarations, so the two cannot drift apart silently. The library reads
only the option fields that fit in `struct_size` and writes no result byte past `result_size`
(the header's "Growing structs"), so a mirror that lags behind a newer library still works.
"""

from __future__ import annotations

import ctypes
import os
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char,
    c_char_p,
    c_float,
    c_int,
    c_int64,
    c_size_t,
    c_uint64,
    c_void_p,
)

SONAME = "libmodelshrink.so.0"


class Error(ctypes.Structure):
    _fields_ = [("status", c_int), ("msg", c_char * 1024)]


class Progress(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("path", c_char_p),
        ("phase", c_int),
        ("bytes_done", c_int64),
        ("bytes_total", c_int64),
        ("tensors_done", c_int64),
        ("tensors_total", c_int64),
    ]


PROGRESS_FN = CFUNCTYPE(c_int, c_void_p, POINTER(Progress))


class ConvertOptions(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("result_size", c_size_t),
        ("dedup", c_int),
        ("dedup_graph_inputs", c_int),
        ("external_data", c_int),
        ("external_threshold", c_int64),
        ("float_type", c_int),
        ("keep_io_types", c_int),
        ("fp16_min", c_float),
        ("fp16_max", c_float),
        ("block_ops", c_char_p),
        ("block_nodes", c_char_p),
        ("int8", c_int),
        ("int8_min_elements", c_int64),
        ("int8_gather", c_int),
        ("device", c_int),
        ("verify", c_int),
        ("staging_mib", c_int64),
        ("key", c_char_p),
        ("out_format", c_int),
        ("keep_outputs", c_char_p),
        ("drop_outputs", c_char_p),
        ("keep_inputs", c_int),
        ("threads", c_int),
        ("fp16_clamp", c_int),
        ("keep_fp32", POINTER(c_char_p)),
        ("n_keep_fp32", c_size_t),
        ("storage_only", c_int),
        ("allow_larger", c_int),
        ("max_shard_bytes", c_int64),
        ("progress", PROGRESS_FN),
        ("progress_user", c_void_p),
        ("cancel", c_void_p),
        ("int4", c_int),
        ("int4_block", c_int),
        ("int4_asym", c_int),
        ("int4_min_elements", c_int64),
        ("int4_gather", c_int),
        ("int4_format", c_int),
        ("int4_search", c_int),
    ]


class ConvertResult(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("bytes_in", c_int64),
        ("bytes_out", c_int64),
        ("dedup_merged", c_int64),
        ("dedup_saved_bytes", c_int64),
        ("external_out", c_int),
        ("float_tensors", c_int64),
        ("float_clamped", c_uint64),
        ("float_casts", c_int64),
        ("int8_tensors", c_int64),
        ("int8_bytes_before", c_int64),
        ("int8_bytes_after", c_int64),
        ("int8_per_tensor", c_int),
        ("int8_opset", c_int64),
        ("device", c_char * 8),
        ("format", c_char * 12),
        ("float_saved_bytes", c_int64),
        ("strip_saved_bytes", c_int64),
        ("pruned_nodes", c_int64),
        ("pruned_tensors", c_int64),
        ("prune_saved_bytes", c_int64),
        ("note", c_char * 256),
        ("dedup_unshared", c_int64),
        ("dedup_unshared_bytes", c_int64),
        ("float_kept_range", c_int64),
        ("float_kept_above", c_int64),
        ("float_kept_max", c_float),
        ("float_kept_user", c_int64),
        ("float_subnormal", c_uint64),
        ("float_why", c_char * 192),
        ("int8_why", c_char * 192),
        ("constants_lifted", c_int64),
        ("shards_in", c_int64),
        ("shards_out", c_int64),
        ("tied_tensors", c_int64),
        ("files_copied", c_int64),
        ("state_dict", c_char * 160),
        ("int4_tensors", c_int64),
        ("int4_bytes_before", c_int64),
        ("int4_bytes_after", c_int64),
        ("int4_opset", c_int64),
        ("int4_why", c_char * 192),
        ("int4_search_seconds", ctypes.c_double),
    ]


# msh_status, msh_format, the device and float-type enums (values from the header).
STATUS_NAMES = {
    0: "MSH_OK",
    1: "MSH_ERR_IO",
    2: "MSH_ERR_FORMAT",
    3: "MSH_ERR_LIMIT",
    4: "MSH_ERR_UNSAFE",
    5: "MSH_ERR_NOMEM",
    6: "MSH_ERR_USAGE",
    7: "MSH_ERR_UNSUPPORTED",
    8: "MSH_ERR_CUDA",
    9: "MSH_ERR_VERIFY",
    10: "MSH_ERR_CANCELLED",
}
ERR_CANCELLED = 10
FORMATS = {"auto": 0, "onnx": 1, "pth": 2, "safetensors": 3}
DEVICES = {"auto": 0, "cpu": 1, "cuda": 2}
FLOAT_FP16, FLOAT_BF16 = 10, 16
PHASES = {1: "scan", 2: "write"}
INT4_FORMATS = {"qdq": 0, "matmulnbits": 1}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def library_path() -> str:
    """The shared library this package loads: $MODELSHRINK_LIBRARY, else the one installed
    beside this file."""
    env = os.environ.get("MODELSHRINK_LIBRARY")
    if env:
        return env
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), SONAME)


def _declare(lib: ctypes.CDLL) -> None:
    perr = POINTER(Error)
    protos = {
        "msh_version": (c_char_p, []),
        "msh_status_name": (c_char_p, [c_int]),
        "msh_cuda_built": (c_int, []),
        "msh_cuda_device_count": (c_int, []),
        "msh_free": (None, [c_void_p]),
        "msh_convert_options_init_sized": (None, [POINTER(ConvertOptions), c_size_t, c_size_t]),
        "msh_convert_file": (
            c_int,
            [c_char_p, c_char_p, POINTER(ConvertOptions), POINTER(ConvertResult), perr],
        ),
        "msh_inspect_file": (c_int, [c_char_p, POINTER(c_void_p), perr]),
        "msh_diff_files": (c_int, [c_char_p, c_char_p, POINTER(c_void_p), POINTER(c_int), perr]),
        "msh_probe_file": (c_int, [c_char_p, POINTER(c_int), perr]),
        "msh_cancel_token_create": (c_int, [POINTER(c_void_p), perr]),
        "msh_cancel_token_request": (None, [c_void_p]),
        "msh_cancel_token_requested": (c_int, [c_void_p]),
        "msh_cancel_token_reset": (None, [c_void_p]),
        "msh_cancel_token_free": (None, [c_void_p]),
    }
    for name, (restype, argtypes) in protos.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def lib() -> ctypes.CDLL:
    """The loaded library (loaded once, on first use)."""
    global _lib
    with _lock:
        if _lib is None:
            path = library_path()
            try:
                loaded = ctypes.CDLL(path)
            except OSError as e:
                raise ImportError(
                    "modelshrink: cannot load the C library %s (%s)" % (path, e)
                ) from None
            _declare(loaded)
            _lib = loaded
        return _lib

