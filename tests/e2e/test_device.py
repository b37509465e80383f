#!/usr/bin/env python3
"""End-to-end: the GPU backend gives exactly the CPU's bytes, through the whole engine.

Needs a device: a GPU (modelshrink --version reports CUDA devices > 0), or the test device that
stands in for one (MSH_TEST_DEVICE, src/engine/msh_backend_test.c: asynchronous copies and
kernels on a worker thread, delayed and reordered completions). Without either it exits 77
(skipped). ctest runs it twice: e2e_test_device (a real GPU, skipped here) and
e2e_test_device_emulated (MSH_TEST_DEVICE=delay,reorder).

Checks, each against `--device cpu`, byte for byte:
- `--device cuda --verify --staging-mib 1` (tensors split into many pieces) with --fp16, --bf16,
  --int8 and --int8 --fp16 on the demo zoo and an ALBERT-shaped model, and dedup on a model where
  a tensor in float_data equals one in raw_data (the GPU digests typed tensors too);
- checkpoints: strip to safetensors and to .pth, with --fp16;
- every line says the device ran and was verified.
With the test device only:
- an injected CUDA failure (at a submit, at a wait) makes the model be redone on the CPU: exit 0,
  a warning, the CPU's bytes, and the rest of the run on the CPU;
- --device auto picks the device for a model whose tensors live in a 64 MiB external data file.
"""

import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_device"


def trees_equal(F, a, b, what):
    n = 0
    for root, _, files in os.walk(b):
        for f in files:
            pb = os.path.join(root, f)
            pa = os.path.join(a, os.path.relpath(pb, b))
            n += 1
            F.check(os.path.isfile(pa) and C.sha256(pa) == C.sha256(pb),
                    "%s: %s identical on the device and the CPU" % (what, os.path.relpath(pb, b)))
    F.check(n > 0, "%s: the CPU run wrote files to compare" % what)


def typed_twin(onnx, path):
    """A model whose weight W1 is stored in float_data and W2, equal to it, in raw_data."""
    import numpy as np
    from onnx import helper, numpy_helper, TensorProto
    w = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 1000.0
    t1 = helper.make_tensor("W1", TensorProto.FLOAT, w.shape, w.flatten().tolist())  # float_data
    t2 = numpy_helper.from_array(w, "W2")  # raw_data
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]),
             helper.make_node("MatMul", ["h", "W2"], ["y"])]
    g = helper.make_graph(nodes, "twin", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                        [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                          [t1, t2])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)


def main():
    (onnx,) = C.import_deps("onnx")
    args = C.parse_args(__doc__.split("\n")[0])
    v = C.run(args.bin, "--version")
    m = re.search(r"CUDA devices: (\d+)", v.out)
    if not m or int(m.group(1)) == 0:
        C.skip("no CUDA device and no test device (MSH_TEST_DEVICE): nothing to compare")
    emulated = bool(os.environ.get("MSH_TEST_DEVICE"))
    dev = "test" if emulated else "cuda"
    G = C.gen_models()
    F = C.Failures()
    w = args.work
    zoo = os.path.join(w, "zoo")
    G.make_zoo(zoo)
    onnx.save(G.make_albert(layers=4, hidden=256, embed=64, ffn=1024, vocab=4000, heads=4),
              os.path.join(zoo, "albert_mid.onnx"))
    typed_twin(onnx, os.path.join(zoo, "typed_twin.onnx"))
    for opts in (["--fp16"], ["--bf16"], ["--int8", "--int8-min-elements", "1"],
                 ["--int8", "--fp16"], []):
        what = " ".join(opts) or "dedup"
        a, b = os.path.join(w, "dev_" + what), os.path.join(w, "cpu_" + what)
        r1 = C.run(args.bin, "convert", "--device", "cuda", "--verify", "--staging-mib", "1",
                   *opts, zoo, "-o", a)
        r2 = C.run(args.bin, "convert", "--device", "cpu", *opts, zoo, "-o", b)
        ok = F.check(r1.rc == 0 and r2.rc == 0, "%s: device with --verify and CPU both run"
                     % what, r1.describe() + "\n" + r2.describe())
        lines = [l for l in r1.out.splitlines() if C.CONVERT_LINE_RE.match(l)]
        F.check(ok and lines and all(l.endswith("on %s (verified against the CPU)" % dev)
                                     for l in lines),
                "%s: every model ran on the device and was verified" % what, r1.out)
        trees_equal(F, a, b, what)
    r = C.run(args.bin, "convert", "--device", "cuda", os.path.join(zoo, "typed_twin.onnx"), "-o",
              os.path.join(w, "twin.onnx"))
    F.check(r.rc == 0 and "dedup merged 1 tensor," in r.out,
            "a float_data tensor equal to a raw_data one is merged on the device", r.describe())

    # checkpoints through the same engine
    ck = os.path.join(C.FIXTURES, "pth", "resnet_adam.pth")
    for opts, ext in ((["--fp16"], ".safetensors"), (["--fp16", "--format", "pth"], ".pth"),
                      (["--bf16", "--format", "pth"], ".pth")):
        what = "checkpoint " + " ".join(opts)
        a, b = os.path.join(w, "ck_dev" + ext), os.path.join(w, "ck_cpu" + ext)
        r1 = C.run(args.bin, "convert", "--device", "cuda", "--verify", "--staging-mib", "1",
                   *opts, ck, "-o", a)
        r2 = C.run(args.bin, "convert", "--device", "cpu", *opts, ck, "-o", b)
        F.check(r1.rc == 0 and r2.rc == 0 and "on %s (verified against the CPU)" % dev in r1.out,
                "%s: runs on the device, verified" % what, r1.describe())
        F.check(os.path.isfile(a) and os.path.isfile(b) and C.sha256(a) == C.sha256(b),
                "%s: identical on the device and the CPU" % what)

    if emulated:
        alb = os.path.join(zoo, "albert_mid.onnx")
        ref = os.path.join(w, "ref16.onnx")
        C.run(args.bin, "convert", "--device", "cpu", "--fp16", alb, "-o", ref)
        for spec in ("fail=submit:2", "fail=wait:3", "delay,fail=submit:5"):
            out = os.path.join(w, "fail.onnx")
            env = dict(os.environ, MSH_TEST_DEVICE=spec)
            p = subprocess.run([args.bin, "convert", "--device", "cuda", "--staging-mib", "1",
                                "--fp16", alb, "-o", out], env=env, capture_output=True,
                               text=True)
            F.check(p.returncode == 0 and "redone on the CPU" in p.stderr and
                    "injected failure" in p.stderr and p.stdout.rstrip().endswith("on cpu"),
                    "%s: the model is redone on the CPU, with a warning" % spec,
                    p.stdout + p.stderr)
            F.check(os.path.isfile(out) and C.sha256(out) == C.sha256(ref),
                    "%s: the redone output is the CPU's" % spec)
        # a batch: after the failure the rest of the run stays on the CPU
        env = dict(os.environ, MSH_TEST_DEVICE="fail=submit:1")
        bo = os.path.join(w, "fail_batch")
        p = subprocess.run([args.bin, "convert", "--jobs", "1", "--device", "cuda", "--fp16", zoo,
                            "-o", bo], env=env, capture_output=True, text=True)
        lines = [l for l in p.stdout.splitlines() if C.CONVERT_LINE_RE.match(l)]
        F.check(p.returncode == 0 and lines and all(l.endswith("on cpu") for l in lines),
                "after a device failure the whole batch runs on the CPU", p.stdout + p.stderr)
        trees_equal(F, bo, os.path.join(w, "cpu_--fp16"), "batch after a failure")
        # --device auto counts external data: a 64 MiB data file takes the device
        import numpy as np
        from onnx import helper, numpy_helper, TensorProto
        big = np.ones((4096, 4096), dtype=np.float32)
        g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "ext",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])],
                              [numpy_helper.from_array(big, "W")])
        ext = os.path.join(w, "ext", "big.onnx")
        os.makedirs(os.path.dirname(ext))
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), ext,
                  save_as_external_data=True, location="big.onnx.data")
        F.check(os.path.getsize(ext) < 1 << 20, "the external-data model's .onnx is small")
        r = C.run(args.bin, "convert", "--fp16", ext, "-o", os.path.join(w, "ext16.onnx"))
        F.check(r.rc == 0 and r.out.rstrip().endswith("on test"),
                "--device auto takes the device for 64 MiB of external data", r.describe())
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
