#!/usr/bin/env python3
"""End-to-end: `modelshrink diff A B` compares two model files tensor by tensor.

The oracle is numpy over the tensors as onnx / safetensors read them. Checks:
- a file against a byte copy, and a CPU conversion against a test-device conversion: exit 0,
  "identical";
- an ONNX model against its FP16 conversion: exit 1, every FP32 weight reported as a dtype
  change, max abs and cosine equal to numpy's over the same tensors;
- two FP16 conversions with different clamping bounds: the same element type, so a ULP distance,
  equal to numpy's over the FP16 bit patterns;
- a training checkpoint against its safetensors strip: the state dict identical, the optimizer
  state only in the checkpoint; an ONNX model against its safetensors-style export by name;
- safetensors files with a shape change, a missing and an extra name;
- --json is a JSON object with the documented fields; usage errors exit 2; an unreadable file
  exits 1 with one line.
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_diff"


def main():
    np, onnx = C.import_deps("numpy", "onnx")
    from onnx import numpy_helper
    try:
        from safetensors.numpy import save_file, load_file
    except ImportError as e:
        C.skip("safetensors is not available (%s)" % e)
    args = C.parse_args(__doc__.split("\n")[0])
    C.require_jsonschema()
    G = C.gen_models()
    F = C.Failures()
    w = args.work
    src = os.path.join(w, "albert.onnx")
    onnx.save(G.make_albert(layers=2, hidden=64, embed=32, ffn=128, vocab=500, heads=4), src)
    copy = os.path.join(w, "copy.onnx")
    with open(src, "rb") as a, open(copy, "wb") as b:
        b.write(a.read())

    def diff(*xs, env=None):
        argv = [args.bin, "diff"] + [str(x) for x in xs]
        p = subprocess.run(argv, capture_output=True, text=True, env=env)
        r = C.Result(argv, p.returncode, p.stdout, p.stderr)
        if "--json" in argv and p.stdout.strip():
            C.check_diff_json(F, p.stdout, "diff %s" % " ".join(str(x) for x in xs))
        return r

    r = diff(src, copy)
    F.check(r.rc == 0 and r.out.startswith("identical"), "a byte copy is identical (exit 0)",
            r.describe())
    cpu = os.path.join(w, "cpu16.onnx")
    dev = os.path.join(w, "dev16.onnx")
    C.run(args.bin, "convert", "--no-dedup", "--fp16", "--device", "cpu", src, "-o", cpu)
    p = subprocess.run([args.bin, "convert", "--no-dedup", "--fp16", "--device", "cuda", src,
                        "-o", dev], env=dict(os.environ, MSH_TEST_DEVICE="delay"),
                       capture_output=True, text=True)
    F.check(p.returncode == 0, "FP16 on the test device runs", p.stderr)
    r = diff(cpu, dev)
    F.check(r.rc == 0 and "identical" in r.out, "a CPU and a test-device conversion: identical",
            r.describe())

    # FP32 against FP16: dtype changes with numpy's errors
    r = diff("--json", src, cpu)
    F.check(r.rc == 1, "FP32 against FP16 differs (exit 1)", r.describe())
    rep = json.loads(r.out)
    F.check(set(rep) >= {"a", "b", "format_a", "format_b", "tensors", "summary", "identical"},
            "--json has the documented fields", str(list(rep)))
    ma = {t.name: numpy_helper.to_array(t) for t in onnx.load(src).graph.initializer}
    mb = {t.name: numpy_helper.to_array(t) for t in onnx.load(cpu).graph.initializer}
    checked = 0
    for t in rep["tensors"]:
        n = t["name"]
        if n not in ma or n not in mb or ma[n].dtype != np.float32:
            continue
        a = ma[n].astype(np.float64).ravel()
        b = mb[n].astype(np.float64).ravel()
        F.check(t["status"] == "dtype", "%s: FLOAT -> FLOAT16 is a dtype change" % n, str(t))
        err = float(np.max(np.abs(a - b))) if a.size else 0.0
        cos = float(a @ b / np.sqrt((a @ a) * (b @ b))) if a.any() and b.any() else 1.0
        F.check(abs(t.get("max_abs", -1) - err) <= 1e-12 * max(1.0, err),
                "%s: max abs %s equals numpy's %s" % (n, t.get("max_abs"), err))
        F.check(abs(t.get("cosine", -1) - cos) <= 1e-9, "%s: cosine equals numpy's" % n,
                "%s vs %s" % (t.get("cosine"), cos))
        checked += 1
    F.check(checked >= 10, "numpy checked %d tensors" % checked)

    # same type: ULP distances over FP16 bit patterns
    clamp = os.path.join(w, "clamp16.onnx")
    C.run(args.bin, "convert", "--no-dedup", "--fp16", "--fp16-max", "0.05", src, "-o", clamp)
    r = diff("--json", cpu, clamp)
    rep = json.loads(r.out)
    mc = {t.name: numpy_helper.to_array(t) for t in onnx.load(clamp).graph.initializer}
    seen_ulp = 0
    for t in rep["tensors"]:
        n = t["name"]
        if t["status"] != "different" or n not in mb or mb[n].dtype != np.float16:
            continue
        ua = mb[n].view(np.uint16).astype(np.int64).ravel()
        ub = mc[n].view(np.uint16).astype(np.int64).ravel()
        oa = np.where(ua & 0x8000, -(ua & 0x7FFF), ua & 0x7FFF)
        ob = np.where(ub & 0x8000, -(ub & 0x7FFF), ub & 0x7FFF)
        want = int(np.max(np.abs(oa - ob)))
        F.check(t.get("max_ulp") == want, "%s: max ULP %s equals numpy's %d" % (
            n, t.get("max_ulp"), want))
        seen_ulp += 1
    F.check(seen_ulp >= 1 and r.rc == 1, "FP16 against FP16 clamped: ULP distances (%d tensors)"
            % seen_ulp, r.describe())

    # a checkpoint against its strip
    ck = os.path.join(C.FIXTURES, "pth", "resnet_adam.pth")
    st = os.path.join(w, "strip.safetensors")
    C.run(args.bin, "convert", ck, "-o", st)
    r = diff("--json", ck, st)
    rep = json.loads(r.out)
    s = rep["summary"]
    keys = load_file(st)
    F.check(r.rc == 1 and s["identical"] == len(keys) and s["different"] == 0 and
            s["extra"] == 0 and s["missing"] > 0,
            "checkpoint vs its strip: the state dict identical, the rest only in the checkpoint",
            json.dumps(s))

    # shape changes, missing and extra names
    x = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
         "b": np.ones(4, dtype=np.float32), "c": np.zeros(3, dtype=np.int64)}
    y = {"a": np.arange(6, dtype=np.float32).reshape(3, 2),
         "b": np.ones(4, dtype=np.float32) * 2, "d": np.zeros(3, dtype=np.int64)}
    save_file(x, os.path.join(w, "x.safetensors"))
    save_file(y, os.path.join(w, "y.safetensors"))
    r = diff("--json", os.path.join(w, "x.safetensors"), os.path.join(w, "y.safetensors"))
    st = {t["name"]: t["status"] for t in json.loads(r.out)["tensors"]}
    F.check(st == {"a": "shape", "b": "different", "c": "missing", "d": "extra"},
            "safetensors: shape change, different values, missing and extra names", str(st))
    r = diff(os.path.join(w, "x.safetensors"), os.path.join(w, "y.safetensors"))
    F.check(r.rc == 1 and "[2,3] -> [3,2]" in r.out, "the table shows the shape change", r.out)

    for bad in ([], [src], [src, copy, copy], ["--bogus", src, copy]):
        r = diff(*bad)
        F.check(r.rc == 2, "usage error: diff %s" % " ".join(bad), r.describe())
    r = diff(src, os.path.join(w, "nope.onnx"))
    lines = [l for l in r.err.splitlines() if l.strip()]
    F.check(r.rc == 1 and len(lines) == 1 and "nope.onnx" in lines[0],
            "a missing file: exit 1, one line naming it", r.describe())
    r = C.run(args.bin, "diff", "--help")
    F.check(r.rc == 0 and r.out.startswith("usage: modelshrink diff"), "diff --help", r.describe())
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
