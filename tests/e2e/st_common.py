"""Helpers shared by the checkpoint tests (test_pth.py, test_safetensors.py): a strict
safetensors reader and writer in plain Python, the FP16/BF16 reference conversions, and dtype
name aliases. Needs numpy only (ml_dtypes for BF16 when present)."""

import json
import struct

ST_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}

# names an inspect report may use for a dtype -> the safetensors name
DTYPE_ALIASES = {}
for _canon, _names in {
        "F32": ("F32", "FLOAT", "FLOAT32"), "F16": ("F16", "FLOAT16", "HALF"),
        "BF16": ("BF16", "BFLOAT16"), "F64": ("F64", "DOUBLE", "FLOAT64"),
        "I64": ("I64", "INT64", "LONG"), "I32": ("I32", "INT32", "INT"),
        "I16": ("I16", "INT16", "SHORT"), "I8": ("I8", "INT8", "CHAR"),
        "U8": ("U8", "UINT8", "BYTE"), "BOOL": ("BOOL",), "U16": ("U16", "UINT16"),
        "U32": ("U32", "UINT32"), "U64": ("U64", "UINT64"),
        "F8_E5M2": ("F8_E5M2", "FLOAT8E5M2"), "F8_E4M3": ("F8_E4M3", "FLOAT8E4M3FN")}.items():
    for _n in _names:
        DTYPE_ALIASES[_n] = _canon


def canon_dtype(name):
    return DTYPE_ALIASES.get(str(name).upper(), str(name))


class STError(Exception):
    pass


def read_st(path):
    """Parse and strictly validate a safetensors file. Returns (header_len, metadata or None,
    {name: (dtype, shape, raw bytes)}, data_bytes). Raises STError on any violation."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise STError("file shorter than 8 bytes")
    n = struct.unpack("<Q", raw[:8])[0]
    if n > len(raw) - 8:
        raise STError("header length %d past the end" % n)
    try:
        hdr = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise STError("header is not UTF-8 JSON: %s" % e)
    if not isinstance(hdr, dict):
        raise STError("header is not an object")
    data = raw[8 + n:]
    meta = hdr.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and
                                 all(isinstance(v, str) for v in meta.values())):
        raise STError("__metadata__ is not string to string")
    spans = []
    out = {}
    for name, t in hdr.items():
        if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
            raise STError("tensor %r: bad entry %r" % (name, t))
        dt, shape, offs = t["dtype"], t["shape"], t["data_offsets"]
        if dt not in ST_ITEMSIZE:
            raise STError("tensor %r: unknown dtype %r" % (name, dt))
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise STError("tensor %r: bad shape %r" % (name, shape))
        if not (isinstance(offs, list) and len(offs) == 2 and
                all(isinstance(o, int) and o >= 0 for o in offs) and offs[0] <= offs[1]):
            raise STError("tensor %r: bad offsets %r" % (name, offs))
        numel = 1
        for d in shape:
            numel *= d
        if numel * ST_ITEMSIZE[dt] != offs[1] - offs[0]:
            raise STError("tensor %r: %d bytes for shape %r %s" % (name, offs[1] - offs[0],
                                                                   shape, dt))
        spans.append((offs[0], offs[1], name))
        out[name] = (dt, shape, data[offs[0]:offs[1]])
    spans.sort()
    pos = 0
    for b, e, name in spans:
        if b != pos:
            raise STError("tensor %r starts at %d, expected %d (%s)" % (
                name, b, pos, "overlap" if b < pos else "gap"))
        pos = e
    if pos != len(data):
        raise STError("data area is %d bytes, tensors cover %d" % (len(data), pos))
    return n, meta, out, len(data)


def st_bytes(tensors, metadata=None, order=None, pad=True):
    """Serialise {name: (dtype, shape, raw bytes)} as safetensors. ``order``: the names in data
    order (default: sorted); the header lists them in sorted order either way."""
    order = order or sorted(tensors)
    hdr = {}
    pos = 0
    for name in order:
        dt, shape, b = tensors[name]
        hdr[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [pos, pos + len(b)]}
        pos += len(b)
    h = {}
    if metadata is not None:
        h["__metadata__"] = metadata
    for k in sorted(hdr):
        h[k] = hdr[k]
    js = json.dumps(h, separators=(",", ":")).encode()
    if pad:
        js += b" " * ((-len(js)) % 8)
    return struct.pack("<Q", len(js)) + js + b"".join(tensors[n][2] for n in order)


def f16_reference(np, f32_bytes, min_abs=2.0 ** -24, max_abs=65504.0):
    """FP32 bytes -> (FP16 bits (uint16 array), in-range mask, clamped mask): a finite non-zero
    magnitude below min_abs becomes min_abs, above max_abs becomes max_abs, then numpy rounds
    to nearest even. NaN stays NaN, inf stays inf."""
    x = np.frombuffer(f32_bytes, dtype=np.float32).astype(np.float32)
    ax = np.abs(x)
    finite = np.isfinite(x)
    small = finite & (ax != 0) & (ax < np.float32(min_abs))
    large = finite & (ax > np.float32(max_abs))
    y = x.copy()
    y[small] = np.copysign(np.float32(min_abs), x[small])
    y[large] = np.copysign(np.float32(max_abs), x[large])
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        h = y.astype(np.float16).view(np.uint16)
    return h, ~(small | large), small | large


def f16_range_keep(np, f32_bytes, ndim):
    """The precision plan's range rule (README, "FP16 range"), written again from its text:
    'above' when a finite value's magnitude exceeds 65504; 'below' when the tensor has at least
    two dimensions, at least 16 finite non-zero values, and more than a tenth of them are smaller
    than 2**-14; else None (the tensor is converted)."""
    x = np.frombuffer(f32_bytes, dtype=np.float32).astype(np.float64)
    ax = np.abs(x)
    nz = np.isfinite(x) & (ax != 0)
    if np.any(nz & (ax > 65504.0)):
        return "above"
    n = int(nz.sum())
    if ndim >= 2 and n >= 16 and 10 * int((nz & (ax < 2.0 ** -14)).sum()) > n:
        return "below"
    return None


def bf16_reference(np, f32_bytes):
    """FP32 bytes -> BF16 bits (round to nearest even, NaN stays NaN)."""
    u = np.frombuffer(f32_bytes, dtype=np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    try:  # cross-check the formula with ml_dtypes where it is installed
        import ml_dtypes
        x = np.frombuffer(f32_bytes, dtype=np.float32)
        m = x.astype(ml_dtypes.bfloat16).view(np.uint16)
        assert np.array_equal(m[~nan], r[~nan]), "bf16 reference disagrees with ml_dtypes"
    except ImportError:
        pass
    return r


def compare_f16(np, got_bytes, f32_bytes, what):
    """'' when FP16 ``got_bytes`` equal the reference of ``f32_bytes``, else a description.
    NaN positions must match (payloads are not compared)."""
    ref, _inr, _cl = f16_reference(np, f32_bytes)
    got = np.frombuffer(got_bytes, dtype=np.uint16)
    if got.shape != ref.shape:
        return "%s: %d FP16 values, expected %d" % (what, got.size, ref.size)
    gnan = (got & 0x7FFF) > 0x7C00
    rnan = (ref & 0x7FFF) > 0x7C00
    bad = (got != ref) & ~(gnan & rnan)
    bad |= gnan != rnan
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        x = np.frombuffer(f32_bytes, dtype=np.float32)[i]
        return "%s: %d values differ; first at %d: f32 %r -> got 0x%04x, expected 0x%04x" % (
            what, int(bad.sum()), i, float(x), int(got[i]), int(ref[i]))
    return ""


def compare_bf16(np, got_bytes, f32_bytes, what):
    ref = bf16_reference(np, f32_bytes)
    got = np.frombuffer(got_bytes, dtype=np.uint16)
    if got.shape != ref.shape:
        return "%s: %d BF16 values, expected %d" % (what, got.size, ref.size)
    gnan = (got & 0x7FFF) > 0x7F80
    rnan = (ref & 0x7FFF) > 0x7F80
    bad = ((got != ref) & ~(gnan & rnan)) | (gnan != rnan)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        return "%s: %d values differ; first at %d: got 0x%04x, expected 0x%04x" % (
            what, int(bad.sum()), i, int(got[i]), int(ref[i]))
    return ""


def one_line(res):
    """True when stderr holds exactly one non-empty line."""
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    return len(lines) == 1
