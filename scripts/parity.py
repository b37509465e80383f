#!/usr/bin/env python3
"""Compare what a converted ONNX model computes with what the original computes.

    scripts/parity.py ORIGINAL.onnx CONVERTED.onnx [--inputs DIR|FILE.npz] [--runs N] [--seed S]
                      [--engine auto|ort|ref] [--dim NAME=VALUE ...]

The check of the Python package, modelshrink.check (python/modelshrink/_parity.py says exactly
how inputs are made and errors computed), as a command that runs from the source tree with the
project's .venv. Inputs are random, made from the ORIGINAL model's graph inputs: float inputs
from N(0, 1), integer inputs in [0, 100), bool inputs 0/1. Symbolic dimensions become 1 unless
--dim NAME=VALUE names them (repeatable, e.g. --dim seq=128 --dim batch=2). With --inputs, the
values come from a .npz file (keys = input names) or from a folder of input_0.pb, input_1.pb, ...
TensorProto files (ONNX test_data_set layout), and one run is made.

Engines: `auto` (default) runs each model in onnxruntime (CPU) and falls back to the ONNX
reference evaluator when onnxruntime cannot load or run it. `ort` or `ref` force one.

Per output, one line: name, dtype (original -> converted), shape, worst absolute error, worst
relative error |got - ref| / |ref| (over elements with ref != 0), cosine similarity, NaN/inf
mismatches. Exits 0 when both models ran (whatever the errors are: read them), 1 when a model
could not be run by any engine, 2 on usage errors.

Example:
    build/modelshrink convert --fp16 model.onnx -o model.fp16.onnx
    scripts/parity.py model.onnx model.fp16.onnx --runs 3 --dim seq=64
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from modelshrink._parity import ParityError, check  # noqa: E402


def die(msg, code=2):
    print("parity: " + msg, file=sys.stderr)
    sys.exit(code)


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
    dims = {}
    for d in args.dim:
        if "=" not in d:
            die("--dim wants NAME=VALUE, got %r" % d)
        k, v = d.split("=", 1)
        try:
            dims[k] = int(v)
        except ValueError:
            die("--dim %s: %r is not an integer" % (k, v))
    try:
        r = check(args.original, args.converted, inputs=args.inputs, runs=args.runs,
                  seed=args.seed, dims=dims, engine=args.engine)
    except ImportError as e:
        die("%s; use the project's .venv/bin/python" % e, 1)
    except ParityError as e:
        die(str(e), 2 if e.usage else 1)

    print("original:  %s  [%s]" % (args.original, r["engines"]["original"]))
    print("converted: %s  [%s]" % (args.converted, r["engines"]["converted"]))
    for n in r["notes"]:
        print("           " + n)
    print("inputs: %s" % ("from " + args.inputs if args.inputs else "%d random set(s), seed %d%s"
                          % (r["runs"], args.seed, (", dims " + ", ".join(
                              "%s=%d" % kv for kv in dims.items())) if dims else "")))
    outs = r["outputs"]
    w = max([len(n) for n in outs] + [6])
    print("%-*s  %-22s %-18s %12s %12s %10s  %s" % (w, "output", "dtype", "shape", "max abs err",
                                                   "max rel err", "cosine",
                                                   "nan/inf mismatches"))
    for name, s in outs.items():
        cos = "-" if s["cosine"] is None else "%.6f" % s["cosine"]
        print("%-*s  %-22s %-18s %12.4g %12.4g %10s  %d%s" % (
            w, name, s["dtype"], "x".join(map(str, s["shape"])) or "scalar", s["max_abs_err"],
            s["max_rel_err"], cos, s["nonfinite_mismatches"],
            ("  " + s["note"]) if s["note"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
