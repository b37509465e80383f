#!/usr/bin/env python3
"""End-to-end: --device, --verify and --staging-mib.

Everywhere: `--device cuda` without a usable GPU fails with one clear line (exit 2) and writes
nothing; `--device cpu` runs and the line says "on cpu"; `--verify` without a GPU warns and still
writes the same bytes as a plain run; bad values are usage errors.
With a GPU (modelshrink --version reports CUDA devices > 0): `--device cuda --verify` with
--fp16, --bf16 and --int8 (small staging buffers, so tensors are split) gives exactly the bytes
of `--device cpu`, on the demo zoo and an ALBERT-shaped model.
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_device"


def main():
    (onnx,) = C.import_deps("onnx")
    args = C.parse_args(__doc__)
    G = C.gen_models()
    F = C.Failures()
    w = args.work
    src = os.path.join(w, "mlp.onnx")
    onnx.save(G.make_mlp_dup(), src)
    v = C.run(args.bin, "--version")
    m = re.search(r"CUDA devices: (\d+)", v.out)
    gpus = int(m.group(1)) if m else 0

    if gpus == 0:
        out = os.path.join(w, "cuda.onnx")
        r = C.run(args.bin, "convert", "--device", "cuda", src, "-o", out)
        lines = [l for l in r.err.splitlines() if l.strip()]
        F.check(r.rc == 2 and len(lines) == 1 and "--device cuda" in lines[0],
                "--device cuda without a GPU: exit 2, one line naming the problem", r.describe())
        F.check(not os.path.exists(out), "--device cuda without a GPU writes nothing")
    cpu = os.path.join(w, "cpu.onnx")
    r = C.run(args.bin, "convert", "--device", "cpu", "--fp16", src, "-o", cpu)
    F.check(r.rc == 0 and r.out.rstrip().endswith(", on cpu"), "--device cpu runs on the CPU",
            r.describe())
    plain = os.path.join(w, "plain.onnx")
    r = C.run(args.bin, "convert", "--fp16", src, "-o", plain)
    F.check(r.rc == 0, "plain --fp16 runs", r.describe())
    if gpus == 0:
        ver = os.path.join(w, "verify.onnx")
        r = C.run(args.bin, "convert", "--verify", "--fp16", src, "-o", ver)
        F.check(r.rc == 0 and "--verify" in r.err and "warning" in r.err,
                "--verify without a GPU warns and runs", r.describe())
        F.check(os.path.isfile(ver) and open(ver, "rb").read() == open(plain, "rb").read(),
                "--verify without a GPU writes the same bytes")
    for bad in (["--device", "tpu"], ["--staging-mib", "0"], ["--staging-mib", "x"]):
        r = C.run(args.bin, "convert", *bad, src, "-o", os.path.join(w, "bad.onnx"))
        F.check(r.rc == 2, "usage error for %s" % " ".join(bad), r.describe())

    if gpus > 0:
        zoo = os.path.join(w, "zoo")
        G.make_zoo(zoo)
        alb = os.path.join(zoo, "albert_mid.onnx")
        onnx.save(G.make_albert(layers=4, hidden=256, embed=64, ffn=1024, vocab=4000, heads=4),
                  alb)
        for opts in (["--fp16"], ["--bf16"], ["--int8", "--int8-min-elements", "1"],
                     ["--int8", "--fp16"]):
            a, b = os.path.join(w, "gpu"), os.path.join(w, "cpu_ref")
            r1 = C.run(args.bin, "convert", "--device", "cuda", "--verify", "--staging-mib", "1",
                       *opts, zoo, "-o", a)
            r2 = C.run(args.bin, "convert", "--device", "cpu", *opts, zoo, "-o", b)
            ok = F.check(r1.rc == 0 and r2.rc == 0, "%s: GPU with --verify and CPU both run"
                         % " ".join(opts), r1.describe() + "\n" + r2.describe())
            F.check(ok and "on cuda (verified against the CPU)" in r1.out,
                    "%s: the GPU ran and was verified" % " ".join(opts), r1.out)
            for root, _, files in os.walk(b):
                for f in files:
                    pa = os.path.join(a, os.path.relpath(os.path.join(root, f), b))
                    F.check(os.path.isfile(pa) and open(pa, "rb").read() == open(
                        os.path.join(root, f), "rb").read(),
                        "%s: %s identical on GPU and CPU" % (" ".join(opts), f))
    else:
        print("no CUDA device: the GPU-versus-CPU comparisons were not run")
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
