#!/usr/bin/env python3
"""End-to-end: --device, --verify and --staging-mib on the command line, with or without a GPU.

`--device cpu` runs and the line says "on cpu"; bad values are usage errors (exit 2). Without a
usable GPU (and without the test device): `--device cuda` fails with one clear line (exit 2) and
writes nothing, for ONNX models and checkpoints alike, and `--verify` warns and still writes the
bytes of a plain run. With a GPU those two checks say they were not run (test_device compares
the GPU with the CPU).
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_device_cli"


def main():
    (onnx,) = C.import_deps("onnx")
    args = C.parse_args(__doc__.split("\n")[0])
    G = C.gen_models()
    F = C.Failures()
    w = args.work
    src = os.path.join(w, "mlp.onnx")
    onnx.save(G.make_mlp_dup(), src)
    ck = os.path.join(C.FIXTURES, "pth", "sgd_momentum.pth")
    v = C.run(args.bin, "--version")
    m = re.search(r"CUDA devices: (\d+)", v.out)
    gpus = int(m.group(1)) if m else 0
    cpu = os.path.join(w, "cpu.onnx")
    r = C.run(args.bin, "convert", "--device", "cpu", "--fp16", src, "-o", cpu)
    F.check(r.rc == 0 and r.out.rstrip().endswith(", on cpu"), "--device cpu runs on the CPU",
            r.describe())
    plain = os.path.join(w, "plain.onnx")
    r = C.run(args.bin, "convert", "--fp16", src, "-o", plain)
    F.check(r.rc == 0, "plain --fp16 runs", r.describe())
    for bad in (["--device", "tpu"], ["--staging-mib", "0"], ["--staging-mib", "x"]):
        r = C.run(args.bin, "convert", *bad, src, "-o", os.path.join(w, "bad.onnx"))
        F.check(r.rc == 2, "usage error for %s" % " ".join(bad), r.describe())
    if gpus:
        print("a device is present: the no-GPU checks of --device cuda and --verify were not run")
        return F.finish(NAME)
    for inp, out in ((src, "cuda.onnx"), (ck, "cuda.safetensors")):
        o = os.path.join(w, out)
        r = C.run(args.bin, "convert", "--device", "cuda", inp, "-o", o)
        lines = [l for l in r.err.splitlines() if l.strip()]
        F.check(r.rc == 2 and len(lines) == 1 and "--device cuda" in lines[0],
                "--device cuda without a GPU on %s: exit 2, one line" % os.path.basename(inp),
                r.describe())
        F.check(not os.path.exists(o), "--device cuda without a GPU writes nothing (%s)" % out)
    ver = os.path.join(w, "verify.onnx")
    r = C.run(args.bin, "convert", "--verify", "--fp16", src, "-o", ver)
    F.check(r.rc == 0 and "--verify" in r.err and "warning" in r.err,
            "--verify without a GPU warns and runs", r.describe())
    F.check(os.path.isfile(ver) and C.sha256(ver) == C.sha256(plain),
            "--verify without a GPU writes the same bytes")
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
