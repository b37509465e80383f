#!/usr/bin/env python3
"""End-to-end: weights that a real export reads through Identity nodes.

torch.onnx.export writes parameters that hold the same values once and reads the others through
`Identity` nodes: nn.TransformerEncoder deep-copies its layer, so before training every layer's
weights equal the first layer's, and the exported graph feeds layers 2 and 3 from
`Identity(<layer-1 initializer>)`. Made here with Debian's torch (/usr/bin/python3): a 3-layer
nn.TransformerEncoder (d_model 256, 4 heads, FFN 1024, opset 17), exported as users export it.

The weight passes see every reader of a weight through such an Identity (the Identity is removed
and its readers read the initializer; the graph computes the same values). For `--int4` (QDQ
and matmulnbits), `--int8` and `--fp16`:
  - the fixture really has Identity nodes of initializers that feed MatMul (else this test
    would prove nothing);
  - `convert` exits 0 and its line reports every MatMul weight converted (`int4: K tensors` /
    `int8: K tensors`, K = the distinct FLOAT initializers read as a MatMul or Gemm weight, directly or
    through an Identity, of at least 4096 elements, counted here with onnx); `--fp16` reports
    `fp16: K tensors` with no 'left out' note;
  - no Identity of a FLOAT initializer remains in the output;
  - onnxruntime runs the output; its output's cosine to the FP32 model's (onnxruntime, an
    independent oracle) is >= 0.999 for INT8 and FP16 and >= 0.99 for INT4 (block 32);
  - the output is smaller than the input by at least the pass's own ratio (INT4 4x, INT8 3x,
    FP16 1.8x).
A plain `convert` (dedup only) keeps the Identity nodes: the graph is only changed where a weight
pass needs it. Skips (77) when /usr/bin/python3 cannot import torch."""

import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_identity_weights"
SYS_PY = "/usr/bin/python3"

EXPORT = r"""
import sys, torch, torch.nn as nn
torch.manual_seed(0)
layer = nn.TransformerEncoderLayer(d_model=256, nhead=4, dim_feedforward=1024, batch_first=True)
m = nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False).eval()
x = torch.randn(2, 16, 256)
torch.onnx.export(m, (x,), sys.argv[1], opset_version=17, input_names=["x"], output_names=["y"])
"""


def main():
    args = C.parse_args(__doc__)
    np, onnx, ort = C.import_deps("numpy", "onnx", "onnxruntime")
    probe = subprocess.run([SYS_PY, "-c", "import torch"], capture_output=True, text=True)
    if probe.returncode != 0:
        C.skip("%s cannot import torch (Debian's python3-torch): %s"
               % (SYS_PY, probe.stderr.strip()[-200:]))
    F = C.Failures()
    src = os.path.join(args.work, "encoder.onnx")
    r = subprocess.run([SYS_PY, "-c", EXPORT, src], capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(src):
        F.fail("torch.onnx.export of nn.TransformerEncoder", r.stderr[-2000:])
        return F.finish(NAME)

    model = onnx.load(src)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    ident = {n.output[0]: n.input[0] for n in g.node
             if n.op_type == "Identity" and n.input[0] in inits}
    weights = set()
    through = 0
    for n in g.node:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) >= 2:
            w = n.input[1]
            if w in ident:
                through += 1
                w = ident[w]
            t = inits.get(w)
            if t is not None and t.data_type == onnx.TensorProto.FLOAT and \
                    int(np.prod(t.dims)) >= 4096:
                weights.add(w)
    F.check(through >= 2 and len(weights) >= 4,
            "the export reads MatMul/Gemm weights through Identity nodes of initializers",
            "%d MatMul/Gemm through an Identity, %d weights" % (through, len(weights)))

    x = np.random.default_rng(1).standard_normal((2, 16, 256)).astype(np.float32)
    ref = C.run_model(src, {"x": x})["y"].astype(np.float64).ravel()
    in_bytes = os.path.getsize(src)

    cases = [("int4", ["--int4"], r"int4: (\d+) tensors", 0.99, 4.0),
             ("int4-mnb", ["--int4", "--int4-format", "matmulnbits"], r"int4: (\d+) tensors",
              0.99, 4.0),
             ("int8", ["--int8"], r"int8: (\d+) tensors", 0.999, 3.0),
             ("fp16", ["--fp16"], r"fp16: (\d+) tensors", 0.999, 1.8)]
    for name, flags, pat, min_cos, min_ratio in cases:
        out = os.path.join(args.work, name + ".onnx")
        res = C.run(args.bin, "convert", *flags, src, "-o", out)
        if not F.check(res.rc == 0, "%s: convert exits 0" % name, res.describe()):
            continue
        m = re.search(pat, res.out)
        k = int(m.group(1)) if m else -1
        if name == "fp16":
            F.check(k > 0 and "left out" not in res.out and "kept" not in res.out,
                    "fp16: converts the weights, nothing left out", res.out)
        else:
            F.check(k == len(weights), "%s: every MatMul/Gemm weight converted (%d)"
                    % (name, len(weights)), res.out)
        om = onnx.load(out)
        oi = {t.name: t for t in om.graph.initializer}
        left = [n.name for n in om.graph.node if n.op_type == "Identity" and n.input[0] in oi
                and oi[n.input[0]].data_type == onnx.TensorProto.FLOAT]
        F.check(not left, "%s: no Identity of a FLOAT initializer remains" % name, str(left))
        got = C.run_model(out, {"x": x})["y"].astype(np.float64).ravel()
        cos = float(np.dot(ref, got) / (np.linalg.norm(ref) * np.linalg.norm(got)))
        print("%s: %d tensors, cosine %.6f, %d -> %d bytes" % (name, k, cos, in_bytes,
                                                               os.path.getsize(out)))
        F.check(cos >= min_cos, "%s: cosine to FP32 >= %g" % (name, min_cos), "%.6f" % cos)
        F.check(in_bytes >= min_ratio * os.path.getsize(out),
                "%s: at least %gx smaller" % (name, min_ratio),
                "%d -> %d" % (in_bytes, os.path.getsize(out)))

    out = os.path.join(args.work, "plain.onnx")
    res = C.run(args.bin, "convert", src, "-o", out)
    if F.check(res.rc == 0, "plain convert exits 0", res.describe()):
        n_id = sum(1 for n in onnx.load(out).graph.node if n.op_type == "Identity")
        F.check(n_id == sum(1 for n in g.node if n.op_type == "Identity"),
                "a plain convert keeps the Identity nodes", "%d left" % n_id)
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
