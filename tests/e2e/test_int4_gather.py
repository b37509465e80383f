#!/usr/bin/env python3
"""End-to-end: `convert --int4 --int4-gather`, Gather tables in 4 bits, both forms; with
`--int4-format matmulnbits` as com.microsoft.GatherBlockQuantized.

Model (opset 13, IR 7): ids [2, 7] (int64, first and last rows included) -> Gather(E [500, 200])
-> MatMul(W [200, 64]) -> y, and pos [5] -> Gather(P [64, 97]) -> p (97 is odd: rows share bytes).
D = 200 and 97 are not multiples of the block (a ragged last block). A second model ties its
table: E read by Gather and by Gemm(transB=1) (an LM head).

For matmulnbits, symmetric and --int4-asym, blocks 32 / 64 / 128, RTN and --int4-search, and
--fp16 at block 32, the expectation comes from a numpy version of the README's rule (per block of
each row: lo = min(0, w), hi = max(0, w); RTN symmetric d = m / -8 (m the end of larger magnitude,
the positive one on a tie), q = clip(rint(w / d), -8, 7); asym d = (hi - lo) / 15,
z = clip(rint(-lo / d), 0, 15), q = clip(rint(w / d) + z, 0, 15); the search tries ratios
(100 - i) / 100, i < 20, on both ends and keeps the lowest float32 squared error summed in element
order, the lower i on ties; with --fp16 d is rounded to FP16 first). Then:
  - the line says `int4: 3 tensors` (E, P, W); IR >= 10; opset com.microsoft 1, default opset 13;
  - each Gather of a table is GatherBlockQuantized(E_q4, ids, E_scales[, E_zero_points]) with
    gather_axis 0, quantize_axis 1, block_size B, bits 4, in com.microsoft, and no Gather is left;
  - E_q4 is INT4 (UINT4 with --int4-asym) [V, D], every nibble (flattened, low nibble first; a
    signed value as its two's complement nibble) equals the oracle's; E_scales is FLOAT (FLOAT16
    with --fp16) [V, ceil(D/B)] equal to the oracle's bit for bit; E_zero_points is UINT4 of the
    scale's shape, its nibbles the oracle's z;
  - onnxruntime runs it: the rows it gathers equal numpy's (q - z) * d of the same rows (so it
    reads the bytes as documented), and y's cosine to the FP32 model's is >= 0.99 (block 32);
  - the tied table keeps its FLOAT initializer for the Gemm (which keeps reading it) while the
    Gather reads the 4-bit copy; qdq writes DequantizeLinear(axis=1) for the same tables;
  - with --fp16 --block-op GatherBlockQuantized, and with --bf16, its scales stay FLOAT; a table
    held in a Constant node is lifted and quantized the same; all run in onnxruntime;
  - a Gather on axis 1 is not a table: nothing is quantized and the line says why.
A run that converted nothing or made no check fails."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_int4_gather"


def main():
    args = C.parse_args(__doc__)
    np, onnx, ort = C.import_deps("numpy", "onnx", "onnxruntime")
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    F = C.Failures()
    w = args.work
    f32 = np.float32
    rng = np.random.default_rng(41)

    def weight(*shape):
        a = (rng.standard_normal(shape) * 0.05).astype(f32)
        a[:, rng.choice(shape[1], 3, replace=False)] *= 4.0  # outlier columns
        return a

    E, W, P = weight(500, 200), weight(200, 64), weight(64, 97)
    E[3, :40] = 0.0  # an all-zero block
    E[4, :32] = -E[4, :32].max()  # largest magnitude negative
    ids = np.array([[0, 499, 3, 4, 17, 250, 3], [1, 2, 498, 100, 5, 6, 7]], np.int64)
    pos = np.array([0, 63, 31, 1, 2], np.int64)

    def save(m, name):
        p = os.path.join(w, name)
        onnx.save(m, p)
        return p

    def mk_emb(axis=0):
        nodes = [h.make_node("Gather", ["E", "ids"], ["x"], axis=axis),
                 h.make_node("MatMul", ["x", "W"], ["y"]),
                 h.make_node("Gather", ["P", "pos"], ["p"])]
        g = h.make_graph(nodes, "emb", [h.make_tensor_value_info("ids", T.INT64, [2, 7]),
                                        h.make_tensor_value_info("pos", T.INT64, [5])],
                         [h.make_tensor_value_info("y", T.FLOAT, None),
                          h.make_tensor_value_info("p", T.FLOAT, None)],
                         [nh.from_array(E, "E"), nh.from_array(W, "W"), nh.from_array(P, "P")])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
        m.ir_version = 7
        return m

    def mk_tied():
        nodes = [h.make_node("Gather", ["E", "ids"], ["x"]),
                 h.make_node("Reshape", ["x", "shp"], ["x2"]),
                 h.make_node("Gemm", ["x2", "E"], ["y"], transB=1)]
        g = h.make_graph(nodes, "tied", [h.make_tensor_value_info("ids", T.INT64, [2, 7])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)],
                         [nh.from_array(E, "E"), nh.from_array(np.array([14, 200]), "shp")])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
        m.ir_version = 7
        return m

    def quant(blk, lo, hi, asym, fp16):
        with np.errstate(divide="ignore", invalid="ignore"):
            if asym:
                d = ((hi - lo) / f32(15)).astype(f32)
                d = np.where(d > 0, d, f32(1)).astype(f32)
            else:
                m = np.where(hi >= -lo, hi, lo).astype(f32)
                d = (m / f32(-8)).astype(f32)
                d = np.where(d != 0, d, f32(1)).astype(f32)
            if fp16:
                d = d.astype(np.float16).astype(f32)
            z = np.clip(np.rint(-lo / d), 0, 15) if asym else np.zeros_like(d)
            x = np.rint(blk / d[..., None])
            q = np.clip(x + z[..., None], 0, 15) if asym else np.clip(x, -8, 7)
        return q, d, z

    def oracle(wt, B, asym, search, fp16):
        """(q [V, D], d [V, kb], z [V, kb]) for a table wt [V, D] (blocks along D)."""
        V, D = wt.shape
        kb = -(-D // B)
        pad = np.zeros((V, kb * B), f32)
        pad[:, :D] = wt
        blk = pad.reshape(V, kb, B)
        lo = np.minimum(blk.min(axis=2), f32(0)).astype(f32)
        hi = np.maximum(blk.max(axis=2), f32(0)).astype(f32)
        best = None
        for i in range(20 if search else 1):
            r = f32(100 - i) / f32(100)
            q, d, z = quant(blk, (r * lo).astype(f32), (r * hi).astype(f32), asym, fp16)
            t = (blk - ((q - z[..., None]).astype(f32) * d[..., None]).astype(f32)).astype(f32)
            e = np.cumsum(t * t, axis=-1, dtype=f32)[..., -1]  # element order, float32
            if best is None:
                best = [e, q, d, z]
            else:
                win = e < best[0]
                best = [np.where(win, e, best[0]), np.where(win[..., None], q, best[1]),
                        np.where(win, d, best[2]), np.where(win, z, best[3])]
        q = best[1].reshape(V, kb * B)[:, :D].astype(np.int64)
        return q, best[2].astype(f32), best[3].astype(np.int64)

    def nibbles(t, count):
        b = np.frombuffer(t.raw_data, np.uint8)
        v = np.empty(b.size * 2, np.int64)
        v[0::2], v[1::2] = b & 15, b >> 4
        return v[:count]

    def cosine(a, b):
        a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    src = save(mk_emb(), "emb.onnx")
    y32 = C.run_model(src, {"ids": ids, "pos": pos})
    converted = 0

    def check_gbq(tag, m1, name, table, idx_name, B, asym, search, fp16):
        """The GatherBlockQuantized of `name`; returns (q, d, z) read back from the file."""
        inits = {t.name: t for t in m1.graph.initializer}
        gbq = [n for n in m1.graph.node if n.op_type == "GatherBlockQuantized"
               and n.input[1] == idx_name]
        if not F.check(len(gbq) == 1, "%s: one GatherBlockQuantized reads %s" % (tag, idx_name),
                       str([n.op_type for n in m1.graph.node])):
            return None
        n = gbq[0]
        V, D = table.shape
        kb = -(-D // B)
        want_in = [name + "_q4", idx_name, name + "_scales"] + ([name + "_zero_points"]
                                                                 if asym else [])
        F.check(n.domain == "com.microsoft" and list(n.input) == want_in,
                "%s: %s is com.microsoft.GatherBlockQuantized(%s)" % (tag, name, want_in),
                "%s %s" % (n.domain, list(n.input)))
        at = {a.name: a.i for a in n.attribute}
        F.check(at == {"gather_axis": 0, "quantize_axis": 1, "block_size": B, "bits": 4},
                "%s: %s's attributes gather_axis 0, quantize_axis 1, block_size %d, bits 4"
                % (tag, name, B), str(at))
        q_o, d_o, z_o = oracle(table, B, asym, search, fp16)
        qt, st = inits.get(name + "_q4"), inits.get(name + "_scales")
        if not F.check(qt is not None and st is not None, "%s: %s_q4 and _scales exist" %
                       (tag, name)):
            return None
        F.check(qt.data_type == (T.UINT4 if asym else T.INT4) and list(qt.dims) == [V, D],
                "%s: %s_q4 is %s [%d, %d]" % (tag, name, "UINT4" if asym else "INT4", V, D),
                "%d %s" % (qt.data_type, list(qt.dims)))
        F.check(len(qt.raw_data) == (V * D + 1) // 2, "%s: %s_q4 holds ceil(V*D/2) bytes" %
                (tag, name), str(len(qt.raw_data)))
        got = nibbles(qt, V * D).reshape(V, D)
        want = q_o & 15
        bad = np.argwhere(got != want)
        F.check(bad.size == 0, "%s: every nibble of %s_q4 is the rule's" % (tag, name),
                "%d differ, first %s: %s vs %s" % (len(bad), bad[:1].tolist(),
                                                   got[tuple(bad[0])] if len(bad) else "",
                                                   want[tuple(bad[0])] if len(bad) else ""))
        sty = T.FLOAT16 if fp16 else T.FLOAT
        d_f = nh.to_array(st).astype(f32)
        F.check(st.data_type == sty and list(st.dims) == [V, kb],
                "%s: %s_scales is %s [%d, %d]" % (tag, name, T.DataType.Name(sty), V, kb),
                "%d %s" % (st.data_type, list(st.dims)))
        F.check(d_f.shape == d_o.shape and np.array_equal(d_f.view(np.uint32),
                                                          d_o.view(np.uint32)),
                "%s: %s_scales are the rule's bit for bit" % (tag, name),
                str(np.argwhere(d_f != d_o)[:3].tolist()) if d_f.shape == d_o.shape else "")
        z_f = np.zeros_like(z_o)
        if asym:
            zt = inits.get(name + "_zero_points")
            if F.check(zt is not None and zt.data_type == T.UINT4 and list(zt.dims) == [V, kb],
                       "%s: %s_zero_points is UINT4 [%d, %d]" % (tag, name, V, kb),
                       str(zt and (zt.data_type, list(zt.dims)))):
                z_f = nibbles(zt, V * kb).reshape(V, kb)
                F.check(np.array_equal(z_f, z_o), "%s: %s's zero points are the rule's" %
                        (tag, name), str(np.argwhere(z_f != z_o)[:3].tolist()))
        sq = np.where(got >= 8, got - 16, got) if not asym else got
        return sq, d_f, z_f

    def deq_rows(qdz, rows, B):
        q, d, z = qdz
        blk = np.arange(q.shape[1]) // B
        return ((q[rows] - z[rows][:, blk]).astype(f32) * d[rows][:, blk]).astype(f32)

    configs = [(B, asym, search, False) for B in (32, 64, 128) for asym in (0, 1)
               for search in (0, 1)] + [(32, 0, 0, True), (32, 1, 1, True)]
    for B, asym, search, fp16 in configs:
        tag = "matmulnbits B%d %s%s%s" % (B, "asym" if asym else "sym",
                                          " search" if search else "", " fp16" if fp16 else "")
        out = os.path.join(w, "gbq_%d_%d_%d_%d.onnx" % (B, asym, search, fp16))
        r = C.run(args.bin, "convert", "--int4", "--int4-format", "matmulnbits", "--int4-gather",
                  "--int4-min-elements", "1", "--int4-block", B, *(["--int4-asym"] if asym else []),
                  *(["--int4-search"] if search else []), *(["--fp16"] if fp16 else []), src,
                  "-o", out)
        if not F.check(r.rc == 0, "%s: convert succeeds" % tag, r.err):
            continue
        converted += 1
        # P (D = 97) is a table only for blocks up to 97 (K >= block): it stays a Gather at 128
        n_t = 3 if B <= 97 else 2
        F.check("int4: %d tensors," % n_t in r.out, "%s: line says int4: %d tensors" % (tag, n_t),
                r.out)
        m1 = onnx.load(out)
        ops = {(o.domain or ""): o.version for o in m1.opset_import}
        F.check(m1.ir_version >= 10 and ops.get("com.microsoft") == 1 and ops.get("") == 13,
                "%s: IR >= 10, com.microsoft 1, default opset 13 kept" % tag,
                "%d %s" % (m1.ir_version, ops))
        gathers = [n.input[0] for n in m1.graph.node if n.op_type == "Gather"]
        F.check(gathers == ([] if n_t == 3 else ["P"]), "%s: Gathers left: %s" %
                (tag, "none" if n_t == 3 else "P's"), str(gathers))
        F.check({t.name for t in m1.graph.initializer}.isdisjoint({"E", "P", "W"} if n_t == 3
                                                                   else {"E", "W"}),
                "%s: the quantized FP32 tables are gone" % tag)
        check_gbq(tag, m1, "E", E, "ids", B, asym, search, fp16)
        qp = check_gbq(tag, m1, "P", P, "pos", B, asym, search, fp16) if n_t == 3 else None
        y = C.run_model(out, {"ids": ids, "pos": pos})
        if qp is not None and not fp16:
            want = deq_rows(qp, pos, B)
            F.check(np.allclose(y["p"], want, rtol=0, atol=1e-7),
                    "%s: onnxruntime's gathered rows are numpy's (q - z) * d" % tag,
                    str(np.abs(y["p"] - want).max()))
        elif qp is not None:
            want = deq_rows(qp, pos, B)
            F.check(np.allclose(y["p"].astype(f32), want, rtol=1e-3, atol=1e-6),
                    "%s: onnxruntime's gathered rows are numpy's (q - z) * d (FP16)" % tag,
                    str(np.abs(y["p"] - want).max()))
        cy = cosine(y32["y"], y["y"])
        if B == 32:
            F.check(cy >= 0.99, "%s: y's cosine to FP32 >= 0.99" % tag, "%.6f" % cy)
        print("  %-36s cosine y %.6f  p %.6f" % (tag, cy, cosine(y32["p"], y["p"])))

    # scale types where the float pass leaves GatherBlockQuantized FLOAT (blocked; --bf16, which
    # onnxruntime's CPU kernel does not run), and a table held in a Constant node (lifted)
    cm = mk_emb()
    et = cm.graph.initializer[0]
    cm.graph.initializer.remove(et)
    cm.graph.node.insert(0, h.make_node("Constant", [], ["E"], value=et))
    csrc = save(cm, "const.onnx")
    for tag, extra, path, sty in (("--block-op", ["--fp16", "--block-op", "GatherBlockQuantized"],
                                   src, T.FLOAT),
                                  ("--bf16", ["--bf16"], src, T.FLOAT),
                                  ("Constant table", [], csrc, T.FLOAT)):
        out = os.path.join(w, "var_%d.onnx" % len(tag))
        r = C.run(args.bin, "convert", "--int4", "--int4-format", "matmulnbits", "--int4-gather",
                  "--int4-min-elements", "1", *extra, path, "-o", out)
        if not F.check(r.rc == 0 and "int4: 3 tensors," in r.out, "%s: 3 tensors" % tag,
                       r.out + r.err):
            continue
        converted += 1
        m1 = onnx.load(out)
        gbq = [n for n in m1.graph.node if n.op_type == "GatherBlockQuantized"]
        sc = {t.name: t.data_type for t in m1.graph.initializer}
        F.check(len(gbq) == 2 and sc.get("E_scales") == sty and sc.get("P_scales") == sty,
                "%s: two GatherBlockQuantized, scales %s" % (tag, T.DataType.Name(sty)),
                "%d %s" % (len(gbq), sc))
        c = cosine(y32["y"], C.run_model(out, {"ids": ids, "pos": pos})["y"])
        F.check(c >= 0.99, "%s: y's cosine to FP32 >= 0.99" % tag, "%.6f" % c)

    # a tied table: GatherBlockQuantized and MatMulNBits cannot share one copy, so the Gemm would
    # keep FLOAT E next to the 4-bit copy: a larger file, refused with the reason on the line;
    # qdq shares one DequantizeLinear between both readers
    tsrc = save(mk_tied(), "tied.onnx")
    for fmt in ("matmulnbits", "qdq"):
        tout = os.path.join(w, "tied_%s.onnx" % fmt)
        r = C.run(args.bin, "convert", "--int4", "--int4-format", fmt, "--int4-gather",
                  "--int4-min-elements", "1", tsrc, "-o", tout)
        if not F.check(r.rc == 0, "tied %s: convert succeeds" % fmt, r.err):
            continue
        converted += 1
        ops = [n.op_type for n in onnx.load(tout).graph.node]
        if fmt == "matmulnbits":
            F.check(re.search(r"int4: 0 tensors: quantizing 1 tensor would make the file .* "
                              r"larger; kept FP32", r.out),
                    "tied matmulnbits: the line says the file would grow, kept FP32", r.out)
            F.check(ops == ["Gather", "Reshape", "Gemm"], "tied matmulnbits: model unchanged",
                    str(ops))
        else:
            F.check("int4: 1 tensor," in r.out and ops.count("DequantizeLinear") == 1,
                    "tied qdq: one tensor, one DequantizeLinear for both readers",
                    r.out + str(ops))
            c = cosine(C.run_model(tsrc, {"ids": ids})["y"], C.run_model(tout, {"ids": ids})["y"])
            F.check(c >= 0.99, "tied qdq: cosine to FP32 >= 0.99", "%.6f" % c)

    # qdq: the same tables through DequantizeLinear(axis=1)
    qout = os.path.join(w, "qdq.onnx")
    r = C.run(args.bin, "convert", "--int4", "--int4-gather", "--int4-min-elements", "1", src,
              "-o", qout)
    if F.check(r.rc == 0 and "int4: 3 tensors" in r.out, "qdq: convert quantizes 3 tensors",
               r.out + r.err):
        converted += 1
        m1 = onnx.load(qout)
        dq = [n for n in m1.graph.node if n.op_type == "DequantizeLinear"
              and n.input[0] in ("E_quantized", "P_quantized")]
        F.check(len(dq) == 2 and all({a.name: a.i for a in n.attribute}.get("axis") == 1
                                     for n in dq),
                "qdq: E and P go through DequantizeLinear(axis=1)", str(dq))
        c = cosine(y32["y"], C.run_model(qout, {"ids": ids, "pos": pos})["y"])
        F.check(c >= 0.99, "qdq: y's cosine to FP32 >= 0.99", "%.6f" % c)

    # a Gather on axis 1 does not read a table's rows: not quantized, and the line says why
    m = mk_emb(axis=1)
    m.graph.node.remove(m.graph.node[1])  # no MatMul: only the Gathers
    m.graph.output[0].name = "x"
    m.graph.node.remove(m.graph.node[1])  # and only the axis-1 Gather
    m.graph.output.remove(m.graph.output[1])
    m.graph.input.remove(m.graph.input[1])
    del m.graph.initializer[1:]
    asrc = save(m, "axis1.onnx")
    r = C.run(args.bin, "convert", "--int4", "--int4-format", "matmulnbits", "--int4-gather",
              "--int4-min-elements", "1", asrc, "-o", os.path.join(w, "axis1_out.onnx"))
    F.check(r.rc == 0 and re.search(r"int4: 0 tensors: .*Gather on axis 0", r.out),
            "axis 1: nothing quantized, the line says Gather on axis 0", r.out + r.err)

    if not converted or not F.checks:
        F.fail("the test converted models and made checks", "%d converted" % converted)
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
