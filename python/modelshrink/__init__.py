"""modelshrink: shrink neural-network model files without breaking them.

    import modelshrink
    info = modelshrink.inspect("model.onnx")            # where the bytes go, as a dict
    res = modelshrink.convert("model.onnx", "model.fp16.onnx", fp16=True)
    print(res["bytes_in"], "->", res["bytes_out"], "on the", res["device"])
    print(modelshrink.check("model.onnx", "model.fp16.onnx"))   # needs modelshrink[check]

Every function calls the C library (libmodelshrink, include/modelshrink.h) through ctypes; the
work and every rule (which options apply to which format, what is refused) are the library's,
exactly as the `modelshrink` command applies them. Calls release the GIL: conversions of
different files may run in parallel threads. A failure raises `modelshrink.Error` carrying the
library's one-line message ("model.onnx: ...") and its status name.
"""

from __future__ import annotations

import ctypes
import json
import os
import time
from importlib import metadata as _metadata
from typing import Any, Callable, Dict, Iterable, NamedTuple, Optional, Sequence, Union

from . import _native

__all__ = [
    "Cancelled",
    "CancelToken",
    "Error",
    "Progress",
    "check",
    "convert",
    "cuda_built",
    "cuda_device_count",
    "diff",
    "inspect",
    "library_version",
]

try:
    __version__ = _metadata.version("modelshrink")
except _metadata.PackageNotFoundError:  # used from the source tree (scripts/parity.py)
    __version__ = "0+unknown"

PathLike = Union[str, "os.PathLike[str]"]


class Error(Exception):
    """A call failed. `str(e)` is the library's message, which names the file and what is wrong;
    `e.status` is the status name ("MSH_ERR_FORMAT", "MSH_ERR_USAGE", ...), `e.code` its value."""

    def __init__(self, message: str, status: str = "MSH_ERR_USAGE", code: int = 6) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Cancelled(Error):
    """The conversion was cancelled (a CancelToken, or the progress callback returned True);
    nothing was written."""


class Progress(NamedTuple):
    """What the progress callback of convert() receives (msh_progress)."""

    path: str
    phase: str  # "scan" (reading tensors to plan) or "write" (making the output's bytes)
    bytes_done: int
    bytes_total: int
    tensors_done: int
    tensors_total: int


def _raise(st: int, err: _native.Error) -> None:
    msg = err.msg.decode("utf-8", "replace")
    name = _native.STATUS_NAMES.get(st, "MSH_ERR_%d" % st)
    cls = Cancelled if st == _native.ERR_CANCELLED else Error
    raise cls(msg or name, name, st)


def _path(p: PathLike) -> bytes:
    return os.fsencode(os.fspath(p))


def _take_string(ptr: ctypes.c_void_p) -> str:
    try:
        return ctypes.string_at(ptr).decode("utf-8")
    finally:
        _native.lib().msh_free(ptr)


def library_version() -> str:
    """The C library's version (msh_version), which is the package's."""
    return _native.lib().msh_version().decode()


def cuda_built() -> bool:
    """True when the library was built with its CUDA back end (nvcc was found at build time)."""
    return bool(_native.lib().msh_cuda_built())


def cuda_device_count() -> int:
    """Usable CUDA devices (0 without a CUDA build or without a GPU)."""
    return int(_native.lib().msh_cuda_device_count())


def inspect(path: PathLike) -> Dict[str, Any]:
    """Where the bytes of a model go: the object `modelshrink inspect --json` prints for one file
    (schema: share/modelshrink/schema/inspect.schema.json of the C install, include/schema/ in
    the source tree). ONNX, torch.save checkpoints, safetensors and Hugging Face folders."""
    out = ctypes.c_void_p()
    err = _native.Error()
    st = _native.lib().msh_inspect_file(_path(path), ctypes.byref(out), ctypes.byref(err))
    if st != 0:
        _raise(st, err)
    return json.loads(_take_string(out))


def diff(a: PathLike, b: PathLike) -> Dict[str, Any]:
    """Compare two model files tensor by tensor (`modelshrink diff --json`)."""
    out = ctypes.c_void_p()
    same = ctypes.c_int()
    err = _native.Error()
    st = _native.lib().msh_diff_files(
        _path(a), _path(b), ctypes.byref(out), ctypes.byref(same), ctypes.byref(err)
    )
    if st != 0:
        _raise(st, err)
    return json.loads(_take_string(out))


class CancelToken:
    """Stops the conversions given it (convert(..., cancel=token)) with Cancelled. `request()`
    may be called from any thread; the conversion stops within one piece of tensor data and
    leaves nothing behind."""

    def __init__(self) -> None:
        h = ctypes.c_void_p()
        err = _native.Error()
        st = _native.lib().msh_cancel_token_create(ctypes.byref(h), ctypes.byref(err))
        if st != 0:
            _raise(st, err)
        self._h: Optional[ctypes.c_void_p] = h

    def request(self) -> None:
        _native.lib().msh_cancel_token_request(self._h)

    @property
    def requested(self) -> bool:
        return bool(_native.lib().msh_cancel_token_requested(self._h))

    def reset(self) -> None:
        _native.lib().msh_cancel_token_reset(self._h)

    def __del__(self) -> None:
        h, self._h = getattr(self, "_h", None), None
        if h and _native._lib is not None:
            _native._lib.msh_cancel_token_free(h)


def _csv(v: Union[None, str, Iterable[str]]) -> Optional[bytes]:
    if v is None:
        return None
    if isinstance(v, str):
        return v.encode()
    return ",".join(v).encode()


_RESULT_STRINGS = {"device", "format", "note", "float_why", "int8_why", "state_dict", "int4_why"}


def convert(
    src: PathLike,
    dst: PathLike,
    *,
    fp16: bool = False,
    bf16: bool = False,
    int8: bool = False,
    int4: bool = False,
    keep_outputs: Union[None, str, Sequence[str]] = None,
    drop_outputs: Union[None, str, Sequence[str]] = None,
    keep_inputs: bool = False,
    device: str = "auto",
    progress: Optional[Callable[[Progress], Optional[bool]]] = None,
    cancel: Optional[CancelToken] = None,
    dedup: bool = True,
    dedup_graph_inputs: bool = False,
    external_data: bool = False,
    external_threshold: Optional[int] = None,
    keep_io_types: bool = True,
    block_ops: Union[None, str, Sequence[str]] = None,
    block_nodes: Union[None, str, Sequence[str]] = None,
    keep_fp32: Optional[Sequence[str]] = None,
    fp16_clamp: bool = False,
    storage_only: bool = False,
    allow_larger: bool = False,
    int8_min_elements: Optional[int] = None,
    int8_gather: bool = False,
    int4_block: Optional[int] = None,
    int4_asym: bool = False,
    int4_min_elements: Optional[int] = None,
    int4_gather: bool = False,
    int4_format: str = "qdq",
    int4_search: bool = False,
    key: Optional[str] = None,
    out_format: str = "auto",
    max_shard_bytes: Optional[int] = None,
    threads: int = 0,
    verify: bool = False,
    staging_mib: Optional[int] = None,
) -> Dict[str, Any]:
    """Convert the model `src` into `dst`, as `modelshrink convert` does; returns the result
    record (the fields of msh_convert_result, plus "input", "output" and "seconds").

    The keyword arguments are the command's options (`modelshrink convert --help`, the README's
    Usage): fp16/bf16/int8, keep_outputs/drop_outputs (names, or one comma-separated string),
    device "auto" | "cpu" | "cuda", out_format "auto" | "onnx" | "safetensors" | "pth", ... An
    option that does not apply to the input's format, or that needs another one, raises Error
    before anything is written (status "MSH_ERR_USAGE"). `dst`'s extension decides its format.

    `progress(p)` is called on this thread at the start and end of each phase and every 16 MiB
    or so; returning True cancels (Cancelled), and an exception it raises cancels the conversion
    and is raised again. Ctrl-C stops a running conversion the same way (KeyboardInterrupt).
    The output is written under a temporary name and renamed when complete: on any failure
    nothing is left behind.
    """
    if fp16 and bf16:
        raise Error("convert: fp16 and bf16 exclude each other", "MSH_ERR_USAGE", 6)
    if device not in _native.DEVICES:
        raise Error("convert: device must be auto, cpu or cuda, not %r" % (device,))
    if int4_format not in _native.INT4_FORMATS:
        raise Error("convert: int4_format must be qdq or matmulnbits, not %r" % (int4_format,))
    if out_format not in _native.FORMATS:
        raise Error("convert: out_format must be auto, onnx, safetensors or pth, not %r"
                    % (out_format,))
    L = _native.lib()
    opt = _native.ConvertOptions()
    L.msh_convert_options_init_sized(
        ctypes.byref(opt), ctypes.sizeof(_native.ConvertOptions),
        ctypes.sizeof(_native.ConvertResult)
    )
    opt.dedup = int(dedup)
    opt.dedup_graph_inputs = int(dedup_graph_inputs)
    opt.external_data = int(external_data)
    if external_threshold is not None:
        opt.external_threshold = external_threshold
    opt.float_type = _native.FLOAT_FP16 if fp16 else _native.FLOAT_BF16 if bf16 else 0
    opt.keep_io_types = int(keep_io_types)
    opt.block_ops = _csv(block_ops)
    opt.block_nodes = _csv(block_nodes)
    opt.int8 = int(int8)
    if int8_min_elements is not None:
        opt.int8_min_elements = int8_min_elements
    opt.int8_gather = int(int8_gather)
    opt.int4 = int(int4)
    if int4_block is not None:
        opt.int4_block = int4_block
    opt.int4_asym = int(int4_asym)
    if int4_min_elements is not None:
        opt.int4_min_elements = int4_min_elements
    opt.int4_gather = int(int4_gather)
    opt.int4_format = _native.INT4_FORMATS[int4_format]
    opt.int4_search = int(int4_search)
    opt.device = _native.DEVICES[device]
    opt.verify = int(verify)
    if staging_mib is not None:
        opt.staging_mib = staging_mib
    opt.key = key.encode() if key is not None else None
    opt.out_format = _native.FORMATS[out_format]
    opt.keep_outputs = _csv(keep_outputs)
    opt.drop_outputs = _csv(drop_outputs)
    opt.keep_inputs = int(keep_inputs)
    opt.threads = threads
    opt.fp16_clamp = int(fp16_clamp)
    patterns = [p.encode() for p in (keep_fp32 or [])]
    keep_arr = (ctypes.c_char_p * max(1, len(patterns)))(*patterns)
    if patterns:
        opt.keep_fp32 = ctypes.cast(keep_arr, ctypes.POINTER(ctypes.c_char_p))
        opt.n_keep_fp32 = len(patterns)
    opt.storage_only = int(storage_only)
    opt.allow_larger = int(allow_larger)
    if max_shard_bytes is not None:
        opt.max_shard_bytes = max_shard_bytes

    # The callback is always installed: it runs the user's one and lets Python deliver a
    # pending signal (Ctrl-C) between two pieces of tensor data.
    raised: list = []

    def on_progress(_user: Any, p: Any) -> int:
        try:
            if progress is not None:
                q = p.contents
                stop = progress(Progress(q.path.decode("utf-8", "replace"),
                                         _native.PHASES.get(q.phase, str(q.phase)),
                                         q.bytes_done, q.bytes_total, q.tensors_done,
                                         q.tensors_total))
                return 1 if stop else 0
            return 0
        except BaseException as e:  # noqa: BLE001 -- raised again after the C call returns
            raised.append(e)
            return 1

    cb = _native.PROGRESS_FN(on_progress)
    opt.progress = cb
    opt.cancel = cancel._h if cancel is not None else None

    res = _native.ConvertResult()
    err = _native.Error()
    t0 = time.monotonic()
    st = L.msh_convert_file(_path(src), _path(dst), ctypes.byref(opt), ctypes.byref(res),
                            ctypes.byref(err))
    secs = time.monotonic() - t0
    del keep_arr
    if raised:
        raise raised[0]
    if st != 0:
        _raise(st, err)
    out: Dict[str, Any] = {"input": os.fspath(src), "output": os.fspath(dst), "seconds": secs}
    for name, _t in _native.ConvertResult._fields_:
        if name == "struct_size":
            continue
        v = getattr(res, name)
        out[name] = v.decode("utf-8", "replace") if name in _RESULT_STRINGS else v
    return out


def check(original: PathLike, converted: PathLike, **kwargs: Any) -> Dict[str, Any]:
    """Run both ONNX models in onnxruntime on the same generated inputs and return, per output,
    the largest absolute and relative error and the cosine similarity (modelshrink[check];
    the arguments are those of modelshrink._parity.check)."""
    from ._parity import check as _check

    return _check(original, converted, **kwargs)
