#!/usr/bin/env python3
"""End-to-end: INT4 beyond the forms themselves (issue 20, second part).

1. `inspect` on outputs of `convert --int4` (qdq and matmulnbits, symmetric and --int4-asym):
   `by_dtype` counts INT4 / UINT4 initializers with their packed bytes (ceil(n / 2) each), and
   `quantized.int4` reports the 4-bit weights (INT4/UINT4 read by DequantizeLinear, the UINT8 B
   of com.microsoft.MatMulNBits), their scale and zero-point bytes, by form; the facts are
   computed here from the model with onnx + numpy; the JSON passes the schema and the table
   says `quantized: K INT4 weights`.
2. `--int4 --fp16`: qdq's DequantizeLinear scales become FLOAT16 (so its output is FP16, as the
   FP16 pass retypes the consumers; --bf16: BFLOAT16), onnx.checker full_check passes;
   matmulnbits' scales take input A's type: FLOAT16 when the FP16 pass runs MatMulNBits in FP16
   (with or without --keep-io-types), FLOAT with --block-op MatMulNBits or --bf16 (onnxruntime's
   CPU MatMulNBits runs float and float16 only). Stored FP16 scales equal the rule's FP32
   scales rounded to FP16, bit for bit; onnxruntime's outputs have cosine >= 0.98 to the FP32
   model's and >= 0.999 to the same INT4 model with FP32 scales.
3. `--external-data`: the scales and zero points of a large weight go to external data (they
   are streamed by the engine from its one copy, not held again as raw_data), small ones stay
   inline; every initializer equals the inline output's and onnxruntime's outputs are equal.
4. Weights held in Constant nodes (PaddlePaddle-style: MatMul and Gemm weights and the bias as
   Constants) are lifted and quantized in both forms; onnxruntime's output has cosine >= 0.99
   to the FP32 model's.
A run that converted nothing or made no check fails."""

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_int4_more"


def main():
    args = C.parse_args(__doc__)
    np, onnx, ort = C.import_deps("numpy", "onnx", "onnxruntime")
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    F = C.Failures()
    w = args.work
    rng = np.random.default_rng(21)

    def save(m, name):
        p = os.path.join(w, name)
        onnx.save(m, p)
        return p

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def mk_linear(opset=17):
        # K = 200 (a ragged last block), a Gemm with transB and C, and W4 of 65 x 33: an odd
        # element count (its packed bytes round up)
        nodes = [h.make_node("MatMul", ["x", "W1"], ["y1"]), h.make_node("Relu", ["y1"], ["r"]),
                 h.make_node("Gemm", ["r", "W2", "C2"], ["y2"], transB=1),
                 h.make_node("MatMul", ["y2", "W4"], ["y"])]
        inits = [nh.from_array(weight(200, 96), "W1"), nh.from_array(weight(65, 96), "W2"),
                 nh.from_array(weight(65), "C2"), nh.from_array(weight(65, 33), "W4")]
        g = h.make_graph(nodes, "lin", [h.make_tensor_value_info("x", T.FLOAT, [3, 200])],
                         [h.make_tensor_value_info("y", T.FLOAT, [3, 33])], inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
        m.ir_version = 8
        return m

    def cosine(a, b):
        a = np.concatenate([v.ravel() for v in a.values()]).astype(np.float64)
        b = np.concatenate([v.ravel() for v in b.values()]).astype(np.float64)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    lin = save(mk_linear(), "linear17.onnx")
    feeds_lin = {"x": rng.standard_normal((3, 200)).astype(np.float32)}
    converted = 0

    # ---- 1. inspect ----
    def facts(path):
        """by_dtype and the 4-bit weights of `path`, from onnx + numpy."""
        m = onnx.load(path)
        inits = {t.name: t for t in m.graph.initializer}

        def nbytes(t):
            n = int(np.prod(t.dims)) if len(t.dims) else 1
            if t.data_type in (T.INT4, T.UINT4):
                return (n + 1) // 2
            return n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize

        by = {}
        for t in m.graph.initializer:
            name = T.DataType.Name(t.data_type)
            c, b = by.get(name, (0, 0))
            by[name] = (c + 1, b + nbytes(t))
        q = {"tensors": 0, "bytes": 0, "scale_bytes": 0, "zero_point_bytes": 0,
             "dequantize_linear": 0, "com_microsoft": 0}
        seen = set()
        for n in m.graph.node:
            if n.op_type == "DequantizeLinear" and n.domain in ("", "ai.onnx"):
                wi, si, key = 0, 1, "dequantize_linear"
                if n.input[0] not in inits or inits[n.input[0]].data_type not in (T.INT4,
                                                                                  T.UINT4):
                    continue
            elif n.domain == "com.microsoft" and n.op_type in ("MatMulNBits",
                                                               "GatherBlockQuantized"):
                wi = 1 if n.op_type == "MatMulNBits" else 0
                si, key = 2, "com_microsoft"
            else:
                continue
            if n.input[wi] in seen:
                continue
            seen.add(n.input[wi])
            q["tensors"] += 1
            q[key] += 1
            q["bytes"] += nbytes(inits[n.input[wi]])
            if n.input[si] not in seen:
                seen.add(n.input[si])
                q["scale_bytes"] += nbytes(inits[n.input[si]])
            if len(n.input) > si + 1 and n.input[si + 1] and n.input[si + 1] not in seen:
                seen.add(n.input[si + 1])
                q["zero_point_bytes"] += nbytes(inits[n.input[si + 1]])
        return by, q

    for fmt in ("qdq", "matmulnbits"):
        for asym in (False, True):
            tag = "inspect %s%s" % (fmt, " asym" if asym else "")
            out = os.path.join(w, "insp_%s_%d.onnx" % (fmt, asym))
            r = C.run(args.bin, "convert", "--int4", "--int4-format", fmt, "--int4-min-elements",
                      "1000", *(["--int4-asym"] if asym else []), lin, "-o", out)
            if not F.check(r.rc == 0 and re.search(r"int4: 3 tensors", r.out),
                           "%s: converted 3 weights" % tag, r.describe()):
                continue
            converted += 1
            by, q = facts(out)
            F.check(q["tensors"] == 3, "%s: the oracle finds 3 4-bit weights" % tag, str(q))
            r = C.run(args.bin, "inspect", "--json", out)
            C.check_inspect_json(F, r.out, "%s: schema" % tag)
            try:
                doc = json.loads(r.out)["files"][0]
            except (ValueError, KeyError, IndexError) as e:
                F.fail("%s: inspect --json prints JSON" % tag, "%s\n%s" % (r.describe(), e))
                continue
            got_by = {x["dtype"]: (x["count"], x["bytes"]) for x in doc["by_dtype"]}
            F.check(got_by == by, "%s: by_dtype equals onnx's count and packed bytes" % tag,
                    "%s vs %s" % (got_by, by))
            want4 = "UINT4" if asym else "INT4"
            if fmt == "qdq":
                F.check(want4 in got_by, "%s: by_dtype names %s" % (tag, want4), str(got_by))
            F.check(doc["quantized"].get("int4") == q, "%s: quantized.int4 equals the oracle's"
                    % tag, "%s vs %s" % (doc["quantized"].get("int4"), q))
            F.check(doc["quantized"]["tensors"] == 0, "%s: no INT8 weights reported" % tag)
            r = C.run(args.bin, "inspect", out)
            F.check(r.rc == 0 and re.search(r"quantized: 3 INT4 weights \(%d DequantizeLinear, "
                                            r"%d com.microsoft\)" % (q["dequantize_linear"],
                                                                     q["com_microsoft"]), r.out),
                    "%s: the table says 'quantized: 3 INT4 weights'" % tag, r.describe())

    # ---- 2. --fp16: the scales in FP16 where the dequantizing node runs in FP16 ----
    def sym_scales(wt, B):
        """Symmetric scales [N, kb] of the weight seen as [N, K] (README's rule, float32)."""
        N, K = wt.shape
        kb = -(-K // B)
        pad = np.zeros((N, kb * B), np.float32)
        pad[:, :K] = wt
        blk = pad.reshape(N, kb, B)
        lo = np.minimum(blk.min(axis=2), np.float32(0))
        hi = np.maximum(blk.max(axis=2), np.float32(0))
        m = np.where(hi >= -lo, hi, lo).astype(np.float32)
        d = (m / np.float32(-8)).astype(np.float32)
        return np.where(d != 0, d, np.float32(1)).astype(np.float32)

    src_w = {t.name: nh.to_array(t) for t in onnx.load(lin).graph.initializer}
    layouts = {"W1": "KN", "W2": "NK", "W4": "KN"}
    y32 = C.run_model(lin, feeds_lin)
    for fmt, extra, want_t in (("qdq", ["--fp16"], T.FLOAT16),
                               ("qdq", ["--fp16", "--no-keep-io-types"], T.FLOAT16),
                               ("qdq", ["--bf16"], T.BFLOAT16),
                               ("matmulnbits", ["--fp16"], T.FLOAT16),
                               ("matmulnbits", ["--fp16", "--no-keep-io-types"], T.FLOAT16),
                               ("matmulnbits", ["--fp16", "--block-op", "MatMulNBits"], T.FLOAT),
                               ("matmulnbits", ["--bf16"], T.FLOAT)):
        tag = "%s %s" % (fmt, " ".join(extra))
        out = os.path.join(w, "f16_%s_%s.onnx" % (fmt, "_".join(x.strip("-") for x in extra)))
        r = C.run(args.bin, "convert", "--int4", "--int4-format", fmt, "--int4-min-elements",
                  "1000", *extra, lin, "-o", out)
        if not F.check(r.rc == 0 and re.search(r"int4: 3 tensors", r.out),
                       "%s: converted 3 weights" % tag, r.describe()):
            continue
        converted += 1
        m1 = onnx.load(out)
        inits = {t.name: t for t in m1.graph.initializer}
        sfx = "_scale" if fmt == "qdq" else "_scales"
        for wn, lay in layouts.items():
            st = inits.get(wn + sfx)
            if not F.check(st is not None and st.data_type == want_t, "%s: %s%s is %s" % (
                    tag, wn, sfx, T.DataType.Name(want_t)),
                    "type %s" % (st.data_type if st is not None else None)):
                continue
            # the stored scale is the FP32 rule's scale rounded to the stored type (and the
            # 4-bit values were made with it)
            d = sym_scales(src_w[wn].T if lay == "KN" else src_w[wn], 32)
            if fmt == "qdq" and lay == "KN":
                d = d.T
            got = nh.to_array(st)
            if want_t == T.FLOAT16:
                F.check(got.dtype == np.float16 and got.tobytes() == d.astype(np.float16)
                        .tobytes(), "%s: %s scales are the rule's, rounded to FP16" % (tag, wn))
            elif want_t == T.FLOAT:
                F.check(got.dtype == np.float32 and got.shape == d.shape,
                        "%s: %s scales FLOAT %s" % (tag, wn, d.shape), str(got.shape))
        types = {}
        for vi in list(m1.graph.input) + list(m1.graph.value_info) + list(m1.graph.output):
            types[vi.name] = vi.type.tensor_type.elem_type
        types.update({t.name: t.data_type for t in m1.graph.initializer})
        for n in m1.graph.node:
            if n.op_type == "Cast":
                types[n.output[0]] = [a.i for a in n.attribute if a.name == "to"][0]
        if fmt == "matmulnbits":
            mm = [n for n in m1.graph.node if n.op_type == "MatMulNBits"]
            a_t = want_t if want_t != T.FLOAT else T.FLOAT
            # A's type, where the graph declares it (a graph input or a Cast's output)
            first = [n for n in mm if n.input[0] in types]
            F.check(len(mm) == 3 and first and all(types[n.input[0]] == a_t for n in first),
                    "%s: MatMulNBits' A is %s like its scales" % (tag, T.DataType.Name(a_t)),
                    str([(n.input[0], types.get(n.input[0])) for n in mm]))
        else:
            try:
                onnx.checker.check_model(m1, full_check=True)
                F.check(True, "")
            except Exception as e:  # noqa: BLE001
                F.fail("%s: onnx.checker full_check passes" % tag, str(e))
        if want_t == T.BFLOAT16:
            continue  # onnxruntime's CPU has no BF16 MatMul
        f16io = "--no-keep-io-types" in extra
        y = C.run_model(out, {k: v.astype(np.float16) if f16io else v
                              for k, v in feeds_lin.items()})
        y4 = C.run_model(os.path.join(w, "insp_%s_0.onnx" % fmt), feeds_lin)
        F.check(all(v.dtype == (np.float16 if f16io else np.float32) for v in y.values()),
                "%s: the outputs' type follows --keep-io-types" % tag)
        c32, c4 = cosine(y32, y), cosine(y4, y)
        F.check(c32 >= 0.98 and c4 >= 0.999, "%s: onnxruntime output close to FP32's (cosine "
                ">= 0.98) and to FP32-scale INT4's (>= 0.999)" % tag, "%.6f, %.6f" % (c32, c4))
        print("  %-44s cosine to FP32 %.6f, to FP32-scale INT4 %.6f" % (tag, c32, c4))

    # ---- 3. external data: the scales and zero points of large weights go there too ----
    for fmt in ("qdq", "matmulnbits"):
        tag = "external %s asym" % fmt
        out = os.path.join(w, "ext_%s.onnx" % fmt)
        r = C.run(args.bin, "convert", "--int4", "--int4-format", fmt, "--int4-min-elements",
                  "1000", "--int4-asym", "--external-data", lin, "-o", out)
        if not F.check(r.rc == 0 and re.search(r"int4: 3 tensors", r.out),
                       "%s: converted 3 weights" % tag, r.describe()):
            continue
        converted += 1
        sfx = ("_scale", "_zero_point") if fmt == "qdq" else ("_scales", "_zero_points")
        m1 = onnx.load(out, load_external_data=False)
        loc = {t.name: t.data_location for t in m1.graph.initializer}
        # W1's scales: 7 x 96 FLOAT, 2688 bytes, over the 1024-byte threshold; W4's: 3 x 33
        F.check(loc.get("W1" + sfx[0]) == T.EXTERNAL and loc.get("W4" + sfx[0]) == T.DEFAULT,
                "%s: W1's scales are external data, W4's small ones inline" % tag, str(loc))
        inline = onnx.load(os.path.join(w, "insp_%s_1.onnx" % fmt))
        a = {t.name: nh.to_array(t) for t in inline.graph.initializer}
        b = {t.name: nh.to_array(t) for t in onnx.load(out).graph.initializer}
        F.check(a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and
                                             a[k].tobytes() == b[k].tobytes() for k in a),
                "%s: every initializer equals the inline output's, byte for byte" % tag,
                str(sorted(k for k in a if k not in b or a[k].tobytes() != b[k].tobytes())))
        ya = C.run_model(os.path.join(w, "insp_%s_1.onnx" % fmt), feeds_lin)
        yb = C.run_model(out, feeds_lin)
        F.check(all(ya[k].tobytes() == yb[k].tobytes() for k in ya),
                "%s: onnxruntime gives the inline output's values" % tag)

    # ---- 4. weights held in Constant nodes (a PaddlePaddle-style export) are lifted ----
    def mk_paddle():
        W1, W2, b2 = weight(256, 128), weight(64, 128), weight(64)
        nodes = [h.make_node("Constant", [], ["w1"], value=nh.from_array(W1, "w1_v")),
                 h.make_node("Constant", [], ["w2"], value=nh.from_array(W2, "w2_v")),
                 h.make_node("Constant", [], ["b2"], value=nh.from_array(b2, "b2_v")),
                 h.make_node("MatMul", ["x", "w1"], ["y1"]), h.make_node("Relu", ["y1"], ["r"]),
                 h.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
        g = h.make_graph(nodes, "paddle", [h.make_tensor_value_info("x", T.FLOAT, [4, 256])],
                         [h.make_tensor_value_info("y", T.FLOAT, [4, 64])])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
        m.ir_version = 8
        return m

    pad = save(mk_paddle(), "paddle17.onnx")
    feeds_pad = {"x": rng.standard_normal((4, 256)).astype(np.float32)}
    y32 = C.run_model(pad, feeds_pad)
    for fmt in ("qdq", "matmulnbits"):
        tag = "constants %s" % fmt
        out = os.path.join(w, "paddle_%s.onnx" % fmt)
        r = C.run(args.bin, "convert", "--int4", "--int4-format", fmt, "--int4-min-elements",
                  "1000", pad, "-o", out)
        if not F.check(r.rc == 0 and re.search(r"int4: 2 tensors", r.out),
                       "%s: both Constant weights quantized" % tag, r.describe()):
            continue
        converted += 1
        m1 = onnx.load(out)
        consts = [n.output[0] for n in m1.graph.node if n.op_type == "Constant"]
        inits = {t.name: t.data_type for t in m1.graph.initializer}
        four = (T.INT4,) if fmt == "qdq" else (T.UINT8,)
        F.check("w1" not in consts and "w2" not in consts and
                sum(1 for t in inits.values() if t in four) == 2 and "w1" not in inits,
                "%s: no Constant holds a weight; two 4-bit initializers" % tag,
                "%s %s" % (consts, inits))
        y = C.run_model(out, feeds_pad)
        cos = cosine(y32, y)
        F.check(cos >= 0.99, "%s: onnxruntime output close to FP32's (cosine >= 0.99)" % tag,
                "%.6f" % cos)
        print("  %-44s cosine to FP32 %.6f" % (tag, cos))

    if not converted or not F.checks:
        F.fail("the test converted models and made checks", "%d converted" % converted)
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
