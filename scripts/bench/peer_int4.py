#!/usr/bin/env python3
"""INT4 against onnxruntime's MatMulNBitsQuantizer on a generated decoder-shaped model.

    peer_int4.py --bin build/modelshrink --work DIR [--hidden 2048 --mlp 5632 --layers 4]

The model: RMSNorm, q/k/v/o projections with attention, gate/up/down MLP with SiLU per layer
(opset 18), weights N(0, 0.02) with 4 outlier columns x 12 per matrix (seed 0). Each tool runs
as a user runs it (a whole process, wall time): `modelshrink convert --int4` (qdq and
matmulnbits, block 32 symmetric) and a Python process that loads the model, runs
MatMulNBitsQuantizer(block_size=32, is_symmetric=True) and saves it; also `cp` of the model.
Prints times and the output cosine to the FP32 model (onnxruntime, same random input)."""

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T, helper as h, numpy_helper as nh

PEER = r'''
import sys, onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
m = onnx.load(sys.argv[1])
q = MatMulNBitsQuantizer(m, block_size=32, is_symmetric=True)
q.process()
q.model.save_model_to_file(sys.argv[2], use_external_data_format=True)
'''


def decoder(hidden, mlp, layers, seq=16):
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"

    def weight(k, n):
        a = (rng.standard_normal((k, n), dtype=np.float32) * np.float32(0.02))
        a[:, rng.choice(n, 4, replace=False)] *= np.float32(12)
        return a
    for i in range(layers):
        p = "l%d_" % i

        def lin(inp, name, k, n, out):
            inits.append(nh.from_array(weight(k, n), p + name + ".weight"))
            nodes.append(h.make_node("MatMul", [inp, p + name + ".weight"], [out]))
        nodes += [h.make_node("Mul", [x, x], [p + "sq"]),
                  h.make_node("ReduceMean", [p + "sq", "axes"], [p + "ms"], keepdims=1),
                  h.make_node("Add", [p + "ms", "eps"], [p + "mse"]),
                  h.make_node("Sqrt", [p + "mse"], [p + "rms"]),
                  h.make_node("Div", [x, p + "rms"], [p + "n"])]
        for n in ("q", "k", "v"):
            lin(p + "n", n, hidden, hidden, p + n + "_out")
        nodes += [h.make_node("Transpose", [p + "k_out"], [p + "kt"], perm=[1, 0]),
                  h.make_node("MatMul", [p + "q_out", p + "kt"], [p + "s"]),
                  h.make_node("Mul", [p + "s", "sc"], [p + "ss"]),
                  h.make_node("Softmax", [p + "ss"], [p + "a"], axis=-1),
                  h.make_node("MatMul", [p + "a", p + "v_out"], [p + "av"])]
        lin(p + "av", "o", hidden, hidden, p + "o_out")
        nodes.append(h.make_node("Add", [x, p + "o_out"], [p + "h"]))
        lin(p + "h", "gate", hidden, mlp, p + "g")
        lin(p + "h", "up", hidden, mlp, p + "u")
        nodes += [h.make_node("Sigmoid", [p + "g"], [p + "gs"]),
                  h.make_node("Mul", [p + "g", p + "gs"], [p + "silu"]),
                  h.make_node("Mul", [p + "silu", p + "u"], [p + "gu"])]
        lin(p + "gu", "down", mlp, hidden, p + "d")
        nodes.append(h.make_node("Add", [p + "h", p + "d"], [p + "out"]))
        x = p + "out"
    nodes.append(h.make_node("Identity", [x], ["y"]))
    inits += [nh.from_array(np.array([-1], np.int64), "axes"),
              nh.from_array(np.array(1e-5, np.float32), "eps"),
              nh.from_array(np.array(1.0 / np.sqrt(hidden), np.float32), "sc")]
    g = h.make_graph(nodes, "decoder", [h.make_tensor_value_info("x", T.FLOAT, [seq, hidden])],
                     [h.make_tensor_value_info("y", T.FLOAT, [seq, hidden])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
    m.ir_version = 8
    return m


def timed(argv):
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def out(path, x):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0].astype(np.float64).ravel()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--mlp", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=4)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    src = os.path.join(a.work, "decoder.onnx")
    onnx.save(decoder(a.hidden, a.mlp, a.layers), src, save_as_external_data=True,
              location="decoder.onnx.data")
    size = os.path.getsize(src) + os.path.getsize(src + ".data")
    x = np.random.default_rng(1).standard_normal((16, a.hidden)).astype(np.float32)
    ref = out(src, x)
    rows = []
    t = timed(["cp", src + ".data", os.path.join(a.work, "copy.data")])
    rows.append(("cp (the data file)", t, None, size))
    for fmt in ("qdq", "matmulnbits"):
        dst = os.path.join(a.work, "ms_%s.onnx" % fmt)
        t = timed([a.bin, "convert", "--int4", "--int4-format", fmt, src, "-o", dst])
        sz = os.path.getsize(dst) + (os.path.getsize(dst + ".data")
                                     if os.path.exists(dst + ".data") else 0)
        rows.append(("modelshrink --int4 %s" % fmt, t, out(dst, x), sz))
    dst = os.path.join(a.work, "ort.onnx")
    t = timed([sys.executable, "-c", PEER, src, dst])
    sz = sum(os.path.getsize(os.path.join(a.work, f)) for f in os.listdir(a.work)
             if f.startswith("ort.onnx"))
    rows.append(("ort MatMulNBitsQuantizer (RTN)", t, out(dst, x), sz))
    print("model: hidden %d, mlp %d, %d layers, %.1f MB FP32" % (a.hidden, a.mlp, a.layers,
                                                               size / 1e6))
    for name, t, y, sz in rows:
        cos = "-" if y is None else "%.6f" % (ref @ y / np.linalg.norm(ref) / np.linalg.norm(y))
        print("%-34s %8.2f s  cosine %s  %.1f MB" % (name, t, cos, sz / 1e6))


if __name__ == "__main__":
    main()
