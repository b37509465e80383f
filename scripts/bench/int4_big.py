#!/usr/bin/env python3
"""INT4 on a model over 2 GiB: time and peak RSS of `modelshrink convert --int4` (both forms)
beside `cp` of the data file, and the outputs checked in onnxruntime against the FP32 model.

    int4_big.py --bin build/modelshrink --work DIR [--layers 11]

The model is peer_int4.py's decoder (hidden 2048, MLP 5632), 11 layers by default: 2.26 GB of
external data. Each tool runs as a whole process; RSS is /usr/bin/time's peak. The
outputs compared are layer 1's (a graph output added for it: the full stack overflows in FP32). Needs ~5 GB of
disk in DIR and ~3 GB of memory for onnxruntime's FP32 run."""

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_int4 import decoder  # noqa: E402


def run(argv):
    # /usr/bin/time's %M: a child forked from this (large) Python process would count its pages
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "%M"] + argv, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode:
        sys.exit("%s failed: %s" % (argv[0], r.stderr))
    return time.perf_counter() - t, int(r.stderr.split()[-1]) / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--layers", type=int, default=11)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    src = os.path.join(a.work, "big.onnx")
    if os.path.exists(src + ".data"):
        os.remove(src + ".data")  # onnx.save appends to an existing data file
    m = decoder(2048, 5632, a.layers)
    # the full stack's output overflows to NaN in FP32 past a few layers: compare layer 1's
    m.graph.output.append(onnx.helper.make_tensor_value_info("l1_out", onnx.TensorProto.FLOAT,
                                                             [16, 2048]))
    onnx.save(m, src, save_as_external_data=True,
              location="big.onnx.data")
    size = os.path.getsize(src + ".data")
    x = np.random.default_rng(1).standard_normal((16, 2048)).astype(np.float32)

    def out(path):
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return s.run(["l1_out"], {"x": x})[0].astype(np.float64).ravel()
    t, rss = run(["cp", src + ".data", os.path.join(a.work, "copy.data")])
    os.remove(os.path.join(a.work, "copy.data"))
    print("model: %d layers, %.2f GB of external data" % (a.layers, size / 1e9))
    print("%-26s %6.2f s  %7.1f MiB" % ("cp (the data file)", t, rss))
    ref = out(src)
    for fmt in ("qdq", "matmulnbits"):
        dst = os.path.join(a.work, "big_%s.onnx" % fmt)
        t, rss = run([a.bin, "convert", "--int4", "--int4-format", fmt, src, "-o", dst])
        y = out(dst)
        cos = ref @ y / np.linalg.norm(ref) / np.linalg.norm(y)
        print("%-26s %6.2f s  %7.1f MiB  cosine %.6f" % ("modelshrink --int4 " + fmt, t, rss,
                                                         cos))


if __name__ == "__main__":
    main()
