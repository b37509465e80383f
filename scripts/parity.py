#!/usr/bin/env python3
"""Compare what a converted ONNX model computes with what the original computes.

    scripts/parity.py ORIGINAL.onnx CONVERTED.onnx [--inputs DIR|FILE.npz] [--runs N] [--seed S]
                      [--engine auto|ort|ref] [--dim NAME=VALUE ...]

Inputs are random, made from the ORIGINAL model's graph inputs (initializers that are also inputs
are left to their defaults): float inputs from N(0, 1), integer inputs in [0, 100) (valid token
ids for any vocabulary of at least 100), bool inputs 0/1. Symbolic dimensions become 1 unless
--dim NAME=VALUE names them (repeatable, e.g. --dim seq=128 --dim batch=2). With --inputs, the
values come from a .npz file (keys = input names) or from a folder of input_0.pb, input_1.pb, ...
TensorProto files (ONNX test_data_set layout), and one run is made.

The CONVERTED model gets the same values, cast to its own input types where they differ (for
example float16 inputs after `modelshrink convert --fp16 --no-keep-io-types`).

Engines: `auto` (default) runs each model in onnxruntime (CPU) and falls back to the ONNX
reference evaluator (onnx.reference.ReferenceEvaluator; slow but it has every op and type) when
onnxruntime cannot load or run it (no kernel for an op/type, ...). `ort` or `ref` force one.

Per output, one line: name, dtype (original -> converted), shape, worst absolute error, worst
relative error |got - ref| / |ref| (over elements with ref != 0), NaN/inf mismatches, and which
engine ran each model. Values are compared in float64; the worst over all runs is reported.
Exits 0 when both models ran (whatever the errors are: read them), 1 when a model could not be
run by any engine, 2 on usage errors.

Example:
    build/modelshrink convert --fp16 model.onnx -o model.fp16.onnx
    scripts/parity.py model.onnx model.fp16.onnx --runs 3 --dim seq=64
"""

import argparse
import glob
import os
import re
import sys


def die(msg, code=2):
    print("parity: " + msg, file=sys.stderr)
    sys.exit(code)


def real_inputs(model):
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def np_dtype(onnx, elem):
    return onnx.helper.tensor_dtype_to_np_dtype(elem)


def make_feeds(np, onnx, model, dims, rng):
    feeds = {}
    for vi in real_inputs(model):
        if vi.type.WhichOneof("value") != "tensor_type":
            die("input %r is not a tensor (%s): pass --inputs" % (
                vi.name, vi.type.WhichOneof("value")), 1)
        tt = vi.type.tensor_type
        shape = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            elif d.HasField("dim_param") and d.dim_param in dims:
                shape.append(dims[d.dim_param])
            else:
                shape.append(1)
        dt = np.dtype(np_dtype(onnx, tt.elem_type))
        if dt.kind == "f" or dt.name == "bfloat16":
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32).astype(dt)
        elif dt.kind in "iu":
            feeds[vi.name] = rng.integers(0, 100, size=shape).astype(dt)
        elif dt.kind == "b":
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(dt)
        else:
            die("input %r has type %s: pass --inputs" % (vi.name, dt), 1)
    return feeds


def load_inputs(np, onnx, model, path):
    if os.path.isdir(path):
        from onnx import numpy_helper

        def key(p):
            m = re.search(r"_(\d+)\.pb$", p)
            return int(m.group(1)) if m else 0
        files = sorted(glob.glob(os.path.join(path, "input_*.pb")), key=key)
        ins = real_inputs(model)
        if len(files) > len(ins):
            die("%d input files but the model has %d inputs" % (len(files), len(ins)))
        feeds = {}
        for f, vi in zip(files, ins):
            t = onnx.TensorProto()
            t.ParseFromString(open(f, "rb").read())
            feeds[vi.name] = numpy_helper.to_array(t)
        return feeds
    data = np.load(path)
    return {k: data[k] for k in data.files}


def cast_feeds(np, onnx, model, feeds):
    out = {}
    types = {vi.name: vi.type.tensor_type.elem_type for vi in real_inputs(model)
             if vi.type.WhichOneof("value") == "tensor_type"}
    for k, v in feeds.items():
        if k in types and types[k]:
            out[k] = np.asarray(v).astype(np_dtype(onnx, types[k]))
        else:
            out[k] = v
    return out


class Runner:
    """Runs one model with onnxruntime or the reference evaluator."""

    def __init__(self, path, engine):
        self.path, self.engine, self.sess, self.used, self.note = path, engine, None, None, ""

    def _ort(self):
        import onnxruntime as ort
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


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("original")
    ap.add_argument("converted")
    ap.add_argument("--inputs", help=".npz file or folder of input_N.pb files")
    ap.add_argument("--runs", type=int, default=1, help="random input sets (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", choices=("auto", "ort", "ref"), default="auto")
    ap.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE",
                    help="value of a symbolic dimension (default 1)")
    args = ap.parse_args(argv)
    try:
        import numpy as np
        import onnx
    except ImportError as e:
        die("needs numpy and onnx (%s); use the project's .venv/bin/python" % e, 1)
    dims = {}
    for d in args.dim:
        if "=" not in d:
            die("--dim wants NAME=VALUE, got %r" % d)
        k, v = d.split("=", 1)
        try:
            dims[k] = int(v)
        except ValueError:
            die("--dim %s: %r is not an integer" % (k, v))
    for p in (args.original, args.converted):
        if not os.path.isfile(p):
            die("%s: no such file" % p)
    mo = onnx.load(args.original, load_external_data=False)
    mc = onnx.load(args.converted, load_external_data=False)
    ro, rc = Runner(args.original, args.engine), Runner(args.converted, args.engine)
    rng = np.random.default_rng(args.seed)
    sets = [load_inputs(np, onnx, mo, args.inputs)] if args.inputs else [
        make_feeds(np, onnx, mo, dims, rng) for _ in range(max(1, args.runs))]

    onames = [o.name for o in mo.graph.output]
    cnames = [o.name for o in mc.graph.output]
    stats = {}
    for feeds in sets:
        try:
            ref = ro.run(mo, cast_feeds(np, onnx, mo, feeds))
        except Exception as e:  # noqa: BLE001
            die("cannot run the original: %s" % str(e).strip().splitlines()[0][:300], 1)
        try:
            got = rc.run(mc, cast_feeds(np, onnx, mc, feeds))
        except Exception as e:  # noqa: BLE001
            die("cannot run the converted model: %s" % str(e).strip().splitlines()[0][:300], 1)
        for i, name in enumerate(onames):
            cname = name if name in got else (cnames[i] if i < len(cnames) else None)
            a = np.asarray(ref[name])
            b = np.asarray(got[cname]) if cname is not None else None
            s = stats.setdefault(name, {"dtype": "%s -> %s" % (a.dtype, b.dtype if b is not None
                                                                else "missing"),
                                        "shape": a.shape, "abs": 0.0, "rel": 0.0, "bad": 0,
                                        "note": ""})
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
            nonfin = ~(fa & fb) & ~((np.isnan(a64) & np.isnan(b64)) | (a64 == b64))
            s["bad"] += int(nonfin.sum())
            if both.any():
                d = np.abs(a64[both] - b64[both])
                s["abs"] = max(s["abs"], float(d.max()))
                nz = a64[both] != 0
                if nz.any():
                    s["rel"] = max(s["rel"], float((d[nz] / np.abs(a64[both][nz])).max()))

    print("original:  %s  [%s]" % (args.original, ro.used))
    if ro.note:
        print("           " + ro.note)
    print("converted: %s  [%s]" % (args.converted, rc.used))
    if rc.note:
        print("           " + rc.note)
    print("inputs: %s" % ("from " + args.inputs if args.inputs else "%d random set(s), seed %d%s"
                          % (len(sets), args.seed, (", dims " + ", ".join(
                              "%s=%d" % kv for kv in dims.items())) if dims else "")))
    w = max([len(n) for n in onames] + [6])
    print("%-*s  %-22s %-18s %12s %12s  %s" % (w, "output", "dtype", "shape", "max abs err",
                                              "max rel err", "nan/inf mismatches"))
    for name in onames:
        s = stats[name]
        print("%-*s  %-22s %-18s %12.4g %12.4g  %d%s" % (
            w, name, s["dtype"], "x".join(map(str, s["shape"])) or "scalar", s["abs"], s["rel"],
            s["bad"], ("  " + s["note"]) if s["note"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
