#!/usr/bin/env python3
"""End-to-end: `convert --int4` (weight-only INT4, blockwise along the reduction axis, RTN).

Models: a MatMul + Gemm(transB=1, with C) + Gemm(transB=0) model at opset 17 whose reduction
axes are not multiples of the block (200 and 96: a ragged / padded last block), next to a
MatMul weight below --int4-min-elements; a small decoder-shaped model (opset 18: q/k/v/o
projections with attention, gate/up/down MLP with SiLU, RMSNorm with ReduceMean; weights
N(0, 0.02) with a few outlier channels); the ALBERT-shaped encoder of the fixtures (opset 17,
Gather embeddings, MatMul weights); and models where QDQ cannot apply (opset 11; opset 13 with a
ReduceMean-13, whose axes became an input at 18).

For each converted model and each form (--int4-format qdq / matmulnbits), symmetric and
--int4-asym, blocks 32 / 64 / 128, the expectation comes from a numpy oracle of the README's
rule (independent of the code under test): per block of the weight seen as [N, K], lo = min(0,
finite w), hi = max(0, finite w); symmetric d = m / -8 with m = hi if hi >= -lo else lo (1 when
0), q = clip(round_half_even(w / d), -8, 7); asymmetric d = (hi - lo) / 15 (1 when 0), z =
clip(round(-lo / d), 0, 15), q = clip(round(w / d) + z, 0, 15), in float32. Then:
  - the line says `int4: K tensors` with K the weights of at least --int4-min-elements elements
    and K >= block; the small weight stays FLOAT bit for bit;
  - qdq: default opset 21 (raised), IR >= 10, each weight read through DequantizeLinear(axis,
    block_size) from an INT4 (UINT4 with --int4-asym) initializer of the weight's shape and a
    FLOAT scale [ceil(K/B), N] (axis 0) or [N, ceil(K/B)] (axis 1); the 4-bit values (unpacked
    from raw_data, low nibble first, along the last axis), the scales and zero points equal the
    oracle's; onnx.checker.check_model(full_check=True) passes;
  - matmulnbits: the MatMul / Gemm nodes are com.microsoft.MatMulNBits with K, N, bits 4,
    block_size; B is UINT8 [N, ceil(K/B), B/2] packed along K with the oracle's q (+8 when
    symmetric) and zero padding (stored 8, or the block's zero point), scales FLOAT
    [N, ceil(K/B)], zero points [N * ceil(kb/2)] packed along the blocks; Gemm's C is the bias;
  - onnxruntime runs it and the output's cosine to the FP32 model's (onnxruntime, an
    independent oracle) is >= 0.99 (block 32); for the decoder model the 4-bit weight bytes
    (4-bit + scale + zero point) are <= 16% of their FP32 bytes at block 32 symmetric;
  - where QDQ cannot apply, `int4: 0 tensors: <why>` names the opset (and the op) and the model
    is written unchanged in its weights, while matmulnbits still quantizes it.
A run that converted nothing or made no check fails."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_int4"
MIN_COSINE = 0.99
LINEAR_COSINE = 0.8
MAX_RATIO = 0.16


def main():
    args = C.parse_args(__doc__)
    np, onnx, ort = C.import_deps("numpy", "onnx", "onnxruntime")
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    F = C.Failures()
    w = args.work
    rng = np.random.default_rng(20)

    def save(m, name):
        p = os.path.join(w, name)
        onnx.save(m, p)
        return p

    def weight(*shape, outliers=2):
        a = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        for c in rng.choice(shape[-1], outliers, replace=False):
            a[..., c] *= 12.0
        return a

    def mk_linear(opset=17, extra=None):
        W1, W2, C2, W3 = weight(200, 96), weight(64, 96), weight(64), weight(64, 40)
        small = weight(40, 8)
        nodes = [h.make_node("MatMul", ["x", "W1"], ["y1"]), h.make_node("Relu", ["y1"], ["r"]),
                 h.make_node("Gemm", ["r", "W2", "C2"], ["y2"], transB=1),
                 h.make_node("Gemm", ["y2", "W3"], ["y3"]),
                 h.make_node("MatMul", ["y3", "small"], ["y"])]
        if extra:
            nodes += extra
        g = h.make_graph(nodes, "lin", [h.make_tensor_value_info("x", T.FLOAT, [3, 200])],
                         [h.make_tensor_value_info("y", T.FLOAT, [3, 8])],
                         [nh.from_array(W1, "W1"), nh.from_array(W2, "W2"),
                          nh.from_array(C2, "C2"), nh.from_array(W3, "W3"),
                          nh.from_array(small, "small")])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
        m.ir_version = 8
        return m

    def mk_decoder(hidden=256, mlp=704, layers=2, seq=8):
        inits, nodes = [], []
        x = "x"
        for i in range(layers):
            p = "l%d_" % i

            def lin(inp, name, k, n, out):
                inits.append(nh.from_array(weight(k, n), p + name + ".weight"))
                nodes.append(h.make_node("MatMul", [inp, p + name + ".weight"], [out]))
            # RMSNorm
            nodes.append(h.make_node("Mul", [x, x], [p + "sq"]))
            nodes.append(h.make_node("ReduceMean", [p + "sq", "axes"], [p + "ms"], keepdims=1))
            nodes.append(h.make_node("Add", [p + "ms", "eps"], [p + "mse"]))
            nodes.append(h.make_node("Sqrt", [p + "mse"], [p + "rms"]))
            nodes.append(h.make_node("Div", [x, p + "rms"], [p + "n"]))
            lin(p + "n", "q", hidden, hidden, p + "q")
            lin(p + "n", "k", hidden, hidden, p + "k")
            lin(p + "n", "v", hidden, hidden, p + "v")
            nodes.append(h.make_node("Transpose", [p + "k"], [p + "kt"], perm=[1, 0]))
            nodes.append(h.make_node("MatMul", [p + "q", p + "kt"], [p + "s"]))
            nodes.append(h.make_node("Mul", [p + "s", "sc"], [p + "ss"]))
            nodes.append(h.make_node("Softmax", [p + "ss"], [p + "a"], axis=-1))
            nodes.append(h.make_node("MatMul", [p + "a", p + "v"], [p + "av"]))
            lin(p + "av", "o", hidden, hidden, p + "o")
            nodes.append(h.make_node("Add", [x, p + "o"], [p + "h"]))
            lin(p + "h", "gate", hidden, mlp, p + "g")
            lin(p + "h", "up", hidden, mlp, p + "u")
            nodes.append(h.make_node("Sigmoid", [p + "g"], [p + "gs"]))
            nodes.append(h.make_node("Mul", [p + "g", p + "gs"], [p + "silu"]))
            nodes.append(h.make_node("Mul", [p + "silu", p + "u"], [p + "gu"]))
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

    def oracle(wt, B, asym):
        """wt: the weight as [N, K]. Returns (q [N, kb*B] with padding, d [N, kb], z [N, kb])."""
        N, K = wt.shape
        kb = -(-K // B)
        pad = np.full((N, kb * B), np.nan, np.float32)
        pad[:, :K] = wt
        blk = pad.reshape(N, kb, B)
        fin = np.where(np.isfinite(blk), blk, np.float32(0))
        lo = np.minimum(fin.min(axis=2), np.float32(0)).astype(np.float32)
        hi = np.maximum(fin.max(axis=2), np.float32(0)).astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            if asym:
                d = ((hi - lo) / np.float32(15)).astype(np.float32)
                d = np.where(d > 0, d, np.float32(1)).astype(np.float32)
                z = np.clip(np.round(-lo / d), 0, 15).astype(np.int64)
                x = np.round(blk / d[:, :, None])
                q = np.clip(np.where(np.isnan(x), 0, x) + z[:, :, None], 0, 15)
                q = np.where(np.isnan(blk), z[:, :, None], q)
            else:
                m = np.where(hi >= -lo, hi, lo).astype(np.float32)
                d = (m / np.float32(-8)).astype(np.float32)
                d = np.where(d != 0, d, np.float32(1)).astype(np.float32)
                z = np.zeros_like(d, dtype=np.int64)
                x = np.round(blk / d[:, :, None])
                q = np.clip(np.where(np.isnan(x), 0, x), -8, 7)
        return q.reshape(N, kb * B).astype(np.int64), d, z

    def nibbles(raw, count):
        b = np.frombuffer(raw, np.uint8)
        v = np.empty(b.size * 2, np.int64)
        v[0::2], v[1::2] = b & 15, b >> 4
        return v[:count]

    def check_model(tag, src, out, fmt, B, asym, expect, feeds):
        m0, m1 = onnx.load(src), onnx.load(out)
        inits0 = {t.name: nh.to_array(t) for t in m0.graph.initializer}
        inits1 = {t.name: t for t in m1.graph.initializer}
        nodes = list(m1.graph.node)
        n_ok = 0
        wbytes = [0, 0]
        for wname, layout in expect.items():
            W = inits0[wname]
            wt = W.T if layout == "KN" else W
            N, K = wt.shape
            q, d, z = oracle(wt, B, asym)
            kb = d.shape[1]
            wbytes[0] += W.nbytes
            if fmt == "qdq":
                dq = [n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] ==
                      wname + "_quantized"]
                if not F.check(len(dq) == 1, "%s: %s read through one DequantizeLinear" % (
                        tag, wname), str([n.input for n in nodes])):
                    continue
                a = {x.name: x.i for x in dq[0].attribute}
                F.check(a.get("axis") == (0 if layout == "KN" else 1) and a.get("block_size") ==
                        B, "%s: %s axis and block_size" % (tag, wname), str(a))
                qt, st = inits1[wname + "_quantized"], inits1[wname + "_scale"]
                F.check(qt.data_type == (T.UINT4 if asym else T.INT4) and list(qt.dims) ==
                        list(W.shape), "%s: %s 4-bit type and shape" % (tag, wname),
                        "%s %s" % (qt.data_type, qt.dims))
                got = nibbles(qt.raw_data, W.size).reshape(W.shape)
                if not asym:
                    got = np.where(got >= 8, got - 16, got)
                want = q[:, :K].T if layout == "KN" else q[:, :K]
                scale = nh.to_array(st)
                want_s = d.T if layout == "KN" else d
                F.check(np.array_equal(got, want), "%s: %s 4-bit values equal the oracle's" % (
                    tag, wname), "%d of %d differ" % (int((got != want).sum()), got.size))
                F.check(scale.shape == want_s.shape and scale.tobytes() == want_s.tobytes(),
                        "%s: %s scales equal the oracle's bit for bit" % (tag, wname),
                        "%s vs %s" % (scale.shape, want_s.shape))
                wbytes[1] += len(qt.raw_data) + scale.nbytes
                if asym:
                    zt = inits1[wname + "_zero_point"]
                    gz = nibbles(zt.raw_data, d.size).reshape(want_s.shape)
                    F.check(zt.data_type == T.UINT4 and np.array_equal(
                        gz, z.T if layout == "KN" else z), "%s: %s zero points" % (tag, wname))
                    wbytes[1] += len(zt.raw_data)
            else:
                mm = [n for n in nodes if n.op_type == "MatMulNBits" and n.input[1] ==
                      wname + "_q4"]
                if not F.check(len(mm) >= 1 and all(n.domain == "com.microsoft" for n in mm),
                               "%s: %s feeds com.microsoft.MatMulNBits" % (tag, wname),
                               str([(n.op_type, list(n.input)) for n in nodes])):
                    continue
                a = {x.name: x.i for x in mm[0].attribute}
                F.check(a == {"K": K, "N": N, "bits": 4, "block_size": B},
                        "%s: %s MatMulNBits attributes" % (tag, wname), str(a))
                bt, st = inits1[wname + "_q4"], inits1[wname + "_scales"]
                F.check(bt.data_type == T.UINT8 and list(bt.dims) == [N, kb, B // 2],
                        "%s: %s blob [N, kb, B/2] uint8" % (tag, wname), str(bt.dims))
                got = nibbles(bt.raw_data, N * kb * B).reshape(N, kb * B)
                want = q + (0 if asym else 8)
                F.check(np.array_equal(got, want), "%s: %s packed values (padding included) "
                        "equal the oracle's" % (tag, wname),
                        "%d of %d differ" % (int((got != want).sum()), got.size))
                scale = nh.to_array(st)
                F.check(scale.tobytes() == d.tobytes() and list(scale.shape) == [N, kb],
                        "%s: %s scales [N, kb] equal the oracle's" % (tag, wname))
                wbytes[1] += len(bt.raw_data) + scale.nbytes
                if asym:
                    zt = inits1[wname + "_zero_points"]
                    per = (kb + 1) // 2
                    zb = np.frombuffer(zt.raw_data, np.uint8).reshape(N, per)
                    gz = np.stack([zb & 15, zb >> 4], axis=2).reshape(N, 2 * per)[:, :kb]
                    F.check(np.array_equal(gz, z), "%s: %s packed zero points" % (tag, wname))
                    wbytes[1] += len(zt.raw_data)
                gemm_c = [n for n in m0.graph.node if n.op_type == "Gemm" and n.input[1] == wname
                          and len(n.input) > 2]
                if gemm_c:
                    F.check(len(mm[0].input) == 6 and mm[0].input[5] == gemm_c[0].input[2],
                            "%s: %s Gemm's C is MatMulNBits' bias" % (tag, wname))
            F.check(wname not in inits1, "%s: FP32 %s is gone" % (tag, wname))
            n_ok += 1
        if fmt == "qdq":
            F.check(max(o.version for o in m1.opset_import if o.domain in ("", "ai.onnx")) ==
                    21 and m1.ir_version >= 10, "%s: opset 21, IR >= 10" % tag)
            try:
                onnx.checker.check_model(m1, full_check=True)
                F.check(True, "")
            except Exception as e:  # noqa: BLE001
                F.fail("%s: onnx.checker full_check passes" % tag, str(e))
        ya = C.run_model(src, feeds)
        yb = C.run_model(out, feeds)
        a, b = np.concatenate([v.ravel() for v in ya.values()]).astype(np.float64), \
            np.concatenate([v.ravel() for v in yb.values()]).astype(np.float64)
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        # the accuracy bar is for the decoder- and BERT-shaped models; the linear chain of random
        # matrices (outlier columns, bias as large as the signal) only has to stay close
        bar = MIN_COSINE if tag.startswith("decoder") else LINEAR_COSINE
        if B == 32:
            F.check(cos >= bar, "%s: cosine to FP32 >= %g (onnxruntime)" % (tag, bar),
                    "cosine %.6f" % cos)
        return cos, wbytes, n_ok

    table = []
    lin = save(mk_linear(), "linear17.onnx")
    lin_expect = {"W1": "KN", "W2": "NK", "W3": "KN"}
    dec = save(mk_decoder(), "decoder18.onnx")
    dec_expect = {"l%d_%s.weight" % (i, n): "KN" for i in range(2)
                  for n in ("q", "k", "v", "o", "gate", "up", "down")}
    g = C.gen_models()
    alb = os.path.join(w, "albert.onnx")
    g.save(g.make_albert(layers=4, hidden=256, embed=128, ffn=1024, vocab=4000, heads=4, seed=5), alb)
    feeds_lin = {"x": rng.standard_normal((3, 200)).astype(np.float32)}
    feeds_dec = {"x": rng.standard_normal((8, 256)).astype(np.float32)}
    cases = []
    for fmt in ("qdq", "matmulnbits"):
        for asym in (False, True):
            for B in (32, 64, 128) if not asym else (32,):
                cases.append(("linear", lin, lin_expect, feeds_lin, fmt, B, asym, ["--int4-min-elements", "1000"]))
        cases.append(("decoder", dec, dec_expect, feeds_dec, fmt, 32, False, []))
        cases.append(("decoder", dec, dec_expect, feeds_dec, fmt, 32, True, []))
    converted = 0
    for name, src, expect, feeds, fmt, B, asym, extra in cases:
        tag = "%s %s B%d%s" % (name, fmt, B, " asym" if asym else "")
        out = os.path.join(w, "%s_%s_%d_%d.onnx" % (name, fmt, B, asym))
        # block 128 > K of some weights: those stay FP32
        exp = {k: v for k, v in expect.items()
               if (onnx.numpy_helper.to_array([t for t in onnx.load(src).graph.initializer
                                               if t.name == k][0]).shape[0 if v == "KN" else 1]
                   >= B)}
        argv = ["convert", "--int4", "--int4-format", fmt, "--int4-block", str(B)] + extra + \
            (["--int4-asym"] if asym else []) + [src, "-o", out]
        r = C.run(args.bin, *argv)
        if not F.check(r.rc == 0 and re.search(r"int4: %d tensors?\b" % len(exp), r.out),
                       "%s: exit 0 and 'int4: %d tensors'" % (tag, len(exp)), r.describe()):
            continue
        converted += 1
        cos, wb, n_ok = check_model(tag, src, out, fmt, B, asym, exp, feeds)
        if name == "linear":
            small = [t for t in onnx.load(out).graph.initializer if t.name == "small"]
            F.check(len(small) == 1 and small[0].data_type == T.FLOAT and
                    nh.to_array(small[0]).tobytes() == nh.to_array(
                        [t for t in onnx.load(src).graph.initializer
                         if t.name == "small"][0]).tobytes(),
                    "%s: the weight below --int4-min-elements stays FLOAT bit for bit" % tag)
        if name == "decoder" and B == 32 and not asym:
            F.check(wb[1] <= MAX_RATIO * wb[0], "%s: 4-bit weights <= %d%% of FP32" % (
                tag, 100 * MAX_RATIO), "%d of %d bytes" % (wb[1], wb[0]))
        table.append((tag, cos, wb))
    # the ALBERT-shaped encoder: MatMul weights (its embeddings feed Gather, not quantized)
    ids = {"input_ids": rng.integers(0, 4000, (1, 16)).astype(np.int64)}
    for fmt in ("qdq", "matmulnbits"):
        out = os.path.join(w, "albert_%s.onnx" % fmt)
        r = C.run(args.bin, "convert", "--int4", "--int4-format", fmt, alb, "-o", out)
        m = re.search(r"int4: (\d+) tensors?", r.out)
        if not F.check(r.rc == 0 and m and int(m.group(1)) > 0, "albert %s: converted" % fmt,
                       r.describe()):
            continue
        converted += 1
        ya, yb = C.run_model(alb, ids), C.run_model(out, ids)
        a = np.concatenate([v.ravel() for v in ya.values()]).astype(np.float64)
        b = np.concatenate([v.ravel() for v in yb.values()]).astype(np.float64)
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        F.check(cos >= MIN_COSINE, "albert %s: cosine >= %g" % (fmt, MIN_COSINE), "%.6f" % cos)
        table.append(("albert %s B32" % fmt, cos, None))
    # where QDQ cannot apply: the reason on the model's line, weights kept; MatMulNBits still runs
    op11 = mk_linear(opset=11)
    rm13 = mk_linear(opset=13, extra=[h.make_node("ReduceMean", ["y"], ["m"], axes=[1])])
    rm13.graph.output.append(h.make_tensor_value_info("m", T.FLOAT, None))
    for name, model, why in (("opset11", op11, r"int4: 0 tensors: INT4 DequantizeLinear needs "
                              r"opset 21 and the model has opset 11"),
                             ("reducemean13", rm13, r"int4: 0 tensors: .*opset 13: ReduceMean "
                              r"changes at opset 18")):
        src = save(model, name + ".onnx")
        out = os.path.join(w, name + "_out.onnx")
        r = C.run(args.bin, "convert", "--int4", "--int4-min-elements", "1000", src, "-o", out)
        F.check(r.rc == 0 and re.search(why, r.out), "%s: qdq refused with the reason" % name,
                r.describe())
        if r.rc == 0:
            m1 = onnx.load(out)
            F.check(not any(n.op_type == "DequantizeLinear" for n in m1.graph.node) and
                    all(t.data_type == T.FLOAT for t in m1.graph.initializer if t.name[0] == "W"),
                    "%s: no DequantizeLinear, FP32 weights kept" % name)
        r = C.run(args.bin, "convert", "--int4", "--int4-format", "matmulnbits",
                  "--int4-min-elements", "1000", src, "-o", out)
        F.check(r.rc == 0 and re.search(r"int4: 3 tensors", r.out),
                "%s: matmulnbits still applies" % name, r.describe())
        if r.rc == 0:
            ya, yb = C.run_model(src, feeds_lin), C.run_model(out, feeds_lin)
            a, b = ya["y"].ravel().astype(np.float64), yb["y"].ravel().astype(np.float64)
            F.check(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= LINEAR_COSINE,
                    "%s: matmulnbits runs in onnxruntime, cosine >= %g" % (name, LINEAR_COSINE))
    print("\n  %-28s %10s %14s" % ("model", "cosine", "weight bytes"))
    for tag, cos, wb in table:
        print("  %-28s %10.6f %14s" % (tag, cos, "-" if not wb or not wb[0] else
                                       "%.2f%%" % (100.0 * wb[1] / wb[0])))
    if not converted or not F.checks:
        F.fail("the test converted models and made checks", "%d converted" % converted)
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
