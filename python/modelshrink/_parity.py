"""modelshrink.check: does a converted ONNX model still compute what the original computes?

Both models run on the same inputs and every output of the original is compared with the
converted model's output of the same name (or, when renamed, at the same position). Needs
numpy, onnx and onnxruntime (`pip install modelshrink[check]`). scripts/parity.py is the same
check as a command.

Inputs are generated from the ORIGINAL model's graph inputs (initializers that are also inputs
keep their defaults): float inputs from N(0, 1), integer inputs in [0, 100) (valid token ids for
any vocabulary of at least 100), bool inputs 0/1, from `seed`. A symbolic dimension is 1 unless
`dims` names it ({"seq": 128}). `inputs` gives the values instead: a dict of arrays, a .npz file
or a folder of input_0.pb, input_1.pb, ... (the ONNX test_data_set layout); one run is made. The
converted model gets the same values, cast to its own input types where they differ (float16
inputs after --fp16 --no-keep-io-types).

Engines: "ort" runs both in onnxruntime (CPU); "auto" also falls back to the ONNX reference
evaluator (slow, but it has every op and type) for a model onnxruntime cannot load or run; "ref"
uses only the reference evaluator.

Errors are computed in float64 over elements finite in both outputs, the worst over all runs:
max_abs_err = max |b - a|, max_rel_err = max |b - a| / |a| over a != 0, cosine = a.b / (|a| |b|)
over all runs' elements (1.0 when both are all zeros, 0.0 when only one is), and
nonfinite_mismatches counts elements where one output is NaN/inf and the other is not the same.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any, Dict, Mapping, Optional, Union


class ParityError(Exception):
    """A model could not be run (`usage` False) or the arguments are wrong (`usage` True)."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def _need():
    try:
        import numpy as np
        import onnx
    except ImportError as e:
        raise ImportError("modelshrink.check needs numpy, onnx and onnxruntime: "
                          "pip install 'modelshrink[check]' (%s)" % e) from None
    return np, onnx


def _real_inputs(model):
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _np_dtype(onnx, elem):
    return onnx.helper.tensor_dtype_to_np_dtype(elem)


def _make_feeds(np, onnx, model, dims, rng):
    feeds = {}
    for vi in _real_inputs(model):
        if vi.type.WhichOneof("value") != "tensor_type":
            raise ParityError("input %r is not a tensor (%s): pass inputs" % (
                vi.name, vi.type.WhichOneof("value")))
        tt = vi.type.tensor_type
        shape = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            elif d.HasField("dim_param") and d.dim_param in dims:
                shape.append(dims[d.dim_param])
            else:
                shape.append(1)
        dt = np.dtype(_np_dtype(onnx, tt.elem_type))
        if dt.kind == "f" or dt.name == "bfloat16":
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32).astype(dt)
        elif dt.kind in "iu":
            feeds[vi.name] = rng.integers(0, 100, size=shape).astype(dt)
        elif dt.kind == "b":
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(dt)
        else:
            raise ParityError("input %r has type %s: pass inputs" % (vi.name, dt))
    return feeds


def _load_inputs(np, onnx, model, src):
    if isinstance(src, Mapping):
        return {k: np.asarray(v) for k, v in src.items()}
    src = os.fspath(src)
    if os.path.isdir(src):
        from onnx import numpy_helper

        def key(p):
            m = re.search(r"_(\d+)\.pb$", p)
            return int(m.group(1)) if m else 0
        files = sorted(glob.glob(os.path.join(src, "input_*.pb")), key=key)
        ins = _real_inputs(model)
        if len(files) > len(ins):
            raise ParityError("%s: %d input files but the model has %d inputs" % (
                src, len(files), len(ins)), usage=True)
        feeds = {}
        for f, vi in zip(files, ins):
            t = onnx.TensorProto()
            with open(f, "rb") as fh:
                t.ParseFromString(fh.read())
            feeds[vi.name] = numpy_helper.to_array(t)
        return feeds
    data = np.load(src)
    return {k: data[k] for k in data.files}


def _cast_feeds(np, onnx, model, feeds):
    out = {}
    types = {vi.name: vi.type.tensor_type.elem_type for vi in _real_inputs(model)
             if vi.type.WhichOneof("value") == "tensor_type"}
    for k, v in feeds.items():
        if k in types and types[k]:
            out[k] = np.asarray(v).astype(_np_dtype(onnx, types[k]))
        else:
            out[k] = v
    return out


class _Runner:
    """Runs one model with onnxruntime or the reference evaluator."""

    def __init__(self, path, engine):
        self.path, self.engine, self.sess, self.used, self.note = path, engine, None, None, ""

    def _ort(self):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("modelshrink.check needs onnxruntime: "
                              "pip install 'modelshrink[check]'") from None
        so = ort.SessionOptions()
        so.log_severity_level = 4
        return ort.InferenceSession(self.path, so, providers=["CPUExecutionProvider"])

    def _ref(self):
        import onnx
        from onnx.reference import ReferenceEvaluator
        return ReferenceEvaluator(onnx.load(self.path))

    def run(self, model, feeds):
        names = [o.name for o in model.graph.output]
        if self.used is None and self.engine in ("auto", "ort"):
            try:
                self.sess = self._ort()
                outs = self.sess.run(names, feeds)
                self.used = "onnxruntime"
                return dict(zip(names, outs))
            except ImportError:
                raise
            except Exception as e:  # noqa: BLE001
                if self.engine == "ort":
                    raise
                self.note = "onnxruntime failed (%s), used the reference evaluator" % (
                    str(e).strip().splitlines()[0][:160])
                self.sess = None
        if self.used == "onnxruntime":
            return dict(zip(names, self.sess.run(names, feeds)))
        if self.sess is None:
            self.sess = self._ref()
            self.used = "reference"
        return dict(zip(names, self.sess.run(None, feeds)))


def check(original: Union[str, "os.PathLike[str]"], converted: Union[str, "os.PathLike[str]"],
          *, inputs: Any = None, runs: int = 1, seed: int = 0,
          dims: Optional[Mapping[str, int]] = None, engine: str = "ort") -> Dict[str, Any]:
    """Run `original` and `converted` on the same inputs; returns
    {"original", "converted", "engines": {"original", "converted"}, "notes", "runs",
     "outputs": {name: {"dtype", "shape", "max_abs_err", "max_rel_err", "cosine",
                        "nonfinite_mismatches", "note"}}}
    where "note" says when an output is missing or its shape or values cannot be compared.
    Raises ParityError when a model cannot be run or an argument is wrong."""
    np, onnx = _need()
    if engine not in ("auto", "ort", "ref"):
        raise ParityError("engine must be auto, ort or ref, not %r" % (engine,), usage=True)
    dims = dict(dims or {})
    original, converted = os.fspath(original), os.fspath(converted)
    for p in (original, converted):
        if not os.path.isfile(p):
            raise ParityError("%s: no such file" % p, usage=True)
    mo = onnx.load(original, load_external_data=False)
    mc = onnx.load(converted, load_external_data=False)
    ro, rc = _Runner(original, engine), _Runner(converted, engine)
    rng = np.random.default_rng(seed)
    sets = [_load_inputs(np, onnx, mo, inputs)] if inputs is not None else [
        _make_feeds(np, onnx, mo, dims, rng) for _ in range(max(1, runs))]

    onames = [o.name for o in mo.graph.output]
    cnames = [o.name for o in mc.graph.output]
    stats: Dict[str, Dict[str, Any]] = {}
    dots: Dict[str, list] = {}
    for feeds in sets:
        try:
            ref = ro.run(mo, _cast_feeds(np, onnx, mo, feeds))
        except ImportError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ParityError("%s: cannot run the original: %s" % (
                original, str(e).strip().splitlines()[0][:300])) from None
        try:
            got = rc.run(mc, _cast_feeds(np, onnx, mc, feeds))
        except ImportError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ParityError("%s: cannot run the converted model: %s" % (
                converted, str(e).strip().splitlines()[0][:300])) from None
        for i, name in enumerate(onames):
            cname = name if name in got else (cnames[i] if i < len(cnames) else None)
            a = np.asarray(ref[name])
            b = np.asarray(got[cname]) if cname is not None else None
            s = stats.setdefault(name, {
                "dtype": "%s -> %s" % (a.dtype, b.dtype if b is not None else "missing"),
                "shape": list(a.shape), "max_abs_err": 0.0, "max_rel_err": 0.0, "cosine": None,
                "nonfinite_mismatches": 0, "note": ""})
            if b is None:
                s["note"] = "missing in the converted model"
                continue
            if a.shape != b.shape:
                s["note"] = "shape differs: %s vs %s" % (a.shape, b.shape)
                continue
            if a.dtype == object or b.dtype == object:
                if a.tolist() != b.tolist():
                    s["note"] = "values differ"
                continue
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            fa, fb = np.isfinite(a64), np.isfinite(b64)
            both = fa & fb
            nonfin = ~both & ~((np.isnan(a64) & np.isnan(b64)) | (a64 == b64))
            s["nonfinite_mismatches"] += int(nonfin.sum())
            acc = dots.setdefault(name, [0.0, 0.0, 0.0])
            if both.any():
                x, y = a64[both], b64[both]
                d = np.abs(x - y)
                s["max_abs_err"] = max(s["max_abs_err"], float(d.max()))
                nz = x != 0
                if nz.any():
                    s["max_rel_err"] = max(s["max_rel_err"], float((d[nz] / np.abs(x[nz])).max()))
                acc[0] += float(np.dot(x, y))
                acc[1] += float(np.dot(x, x))
                acc[2] += float(np.dot(y, y))
    for name, (xy, xx, yy) in dots.items():
        if xx == 0.0 and yy == 0.0:
            cos = 1.0
        elif xx == 0.0 or yy == 0.0:
            cos = 0.0
        else:
            cos = xy / (xx ** 0.5 * yy ** 0.5)
        stats[name]["cosine"] = cos
    return {
        "original": original,
        "converted": converted,
        "engines": {"original": ro.used, "converted": rc.used},
        "notes": [n for n in (ro.note, rc.note) if n],
        "runs": len(sets),
        "inputs": "given" if inputs is not None else "random, seed %d" % seed,
        "dims": dims,
        "outputs": {name: stats[name] for name in onames},
    }
