#!/usr/bin/env python3
"""End-to-end: `convert --fp16` on hand-built models, one per known trap of FP16 converters.

Every trap model holds at least 256 FP32 values per weight it converts, so that FP16 saves more
bytes than the Casts at the FP16 region's borders cost (the tool undoes a conversion that would
make the file larger: see never_larger).

For every model: `convert --fp16` exits 0 and prints `fp16: K tensors`; onnx.checker.check_model
(full_check=True) passes on the output (types per schema, topological order); where the
conversion is expected, the line has no 'would make the file ... larger' verdict and both the
FLOAT/FLOAT16 tensor bytes and the output file (+ its .data) shrink; the weights named in each
case are FLOAT16 (or stay FLOAT) in the output; no Cast pair cancels (Cast(to=FLOAT16) fed by
Cast(to=FLOAT) or the reverse); and onnx.reference.ReferenceEvaluator on the output agrees with
ReferenceEvaluator on the FP32 original within the FP16 tolerance |got - ref| <= ATOL + RTOL *
|ref| (RTOL = 1e-2, ATOL = 1e-3, compared in float64; integer outputs must be equal; NaN/inf
positions must match; the outputs have no NaN the original lacks). The worst absolute and
relative errors are printed per case. onnxruntime runs the output too where it has the kernels
(a NOT_IMPLEMENTED is reported and skipped) and must agree the same way.

Traps: Resize (float `scales` must stay FLOAT), TopK (int64 K), Range (no FP16 kernel in the
schema: stays FP32 behind Casts), CumSum (FP16 data, INT64 axis), Constant nodes (value tensor
bit-exact FLOAT16; the Mul reading a value_float Constant runs in FP16), Cast(to=FLOAT) inside
the converted region (retargeted, no cancelling Cast pairs), If with weights in both branches,
Loop with a weight in its body, a decomposed LayerNorm with a scalar epsilon 1e-12 (exempt from
the 'mostly below' rule: it becomes the smallest FP16 subnormal 2^-24, bits 0x0001, not 0, and
is counted in 'values subnormal'; zero-variance rows give no NaN), a weight shared by a blocked
and a converted node (--block-op / --block-node: the blocked MatMul reads W's FP32 bytes, the
converted Add reads FLOAT16; the converted region's other weights make the whole file shrink),
external data, graph I/O types (--keep-io-types default vs --no-keep-io-types).

Range rule: a weight with values beyond 65504 (1e5, -1e5, 7e4, 2e4) stays FLOAT with its exact
bytes by default, the Mul reading it runs in FP32, the line says `kept fp32: 1 tensor beyond
FP16 range (max |x| 1e+05)` and the output matches the original; with --fp16-clamp it is FLOAT16
saturated to +-65504 (`3 values clamped`), with --fp16-clamp --fp16-max 1e4 to +-1e4 (`4 values
clamped`). A weight of ~1e-6 values (all below 2^-14) stays FLOAT by default (`kept fp32: 1
tensors mostly below FP16's normal range`) and is converted by --fp16-clamp (np.float16 bit for
bit, counted as subnormal, not as clamped); a model with both prints the mixed form `kept fp32:
2 tensors (1 beyond FP16 range, max |x| 1e+05; 1 mostly below FP16's normal range)`.
--keep-fp32 GLOB (repeatable): `w*` keeps initializer w FLOAT and its reader FP32, `c` keeps a
Constant node's value FLOAT bit for bit; the line says `kept fp32 by --keep-fp32: 1 tensor`.

Bit-exact rounding (with --fp16-clamp, since the values include 3.4e38 and 65520): every FP16
tensor equals numpy's round-to-nearest-even of the clamped FP32 value bit for bit (and
onnxconverter-common's convert_np_to_float16 bit for bit with --fp16-min 1e-7 --fp16-max 1e4,
when that module is installed); 'values clamped' counts the finite values above the max bound,
'values subnormal' the non-zero FP32 values below 2^-14 (those raised to --fp16-min included).

Never larger: a single Mul with an 8-element weight says `fp16: 0 tensors: converting 1 tensors
would make the file M larger (2 Casts); kept FP32` (M in kB); its output holds no FLOAT16 tensor or
value, computes the original's outputs bit for bit and is not larger than `convert` without
--fp16 makes it."""

import os
import re
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_fp16_traps"
RTOL, ATOL = 1e-2, 1e-3
FP16_RE = re.compile(r"fp16: (\d+) tensors?")
CLAMPED_RE = re.compile(r"(\d+) values? clamped")


def main():
    np, onnx = C.import_deps("numpy", "onnx")
    args = C.parse_args(__doc__)
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator
    F = C.Failures()
    w = args.work
    rng = np.random.default_rng(7)
    FLOAT, F16, I64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64

    def f32(a):
        return np.array(a, dtype=np.float32)  # a copy, C-contiguous, 0-d stays 0-d

    def init(name, a):
        return numpy_helper.from_array(np.array(a), name=name)

    def vi(name, t, shape):
        return helper.make_tensor_value_info(name, t, shape)

    def model(name, nodes, inputs, outputs, inits=(), opset=17):
        g = helper.make_graph(nodes, name, [vi(*i) for i in inputs], [vi(*o) for o in outputs],
                              initializer=list(inits))
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)  # the fixture itself must be valid
        return m

    def file_bytes(p):
        return os.path.getsize(p) + (os.path.getsize(p + ".data") if os.path.exists(p + ".data")
                                     else 0)

    # ---- oracles ---------------------------------------------------------------------------
    def np_dtype(elem):
        return onnx.helper.tensor_dtype_to_np_dtype(elem)

    def feeds_for(m, feeds):
        """Cast the FP32 feeds to the converted model's input types (--no-keep-io-types)."""
        out = {}
        for i in m.graph.input:
            if i.name in feeds:
                out[i.name] = np.asarray(feeds[i.name]).astype(
                    np_dtype(i.type.tensor_type.elem_type))
        return out

    def ref_run(m, feeds):
        sess = ReferenceEvaluator(m)
        names = [o.name for o in m.graph.output]
        return dict(zip(names, sess.run(None, feeds_for(m, feeds))))

    def compare(ref, got):
        """(ok, worst abs, worst rel, detail)."""
        worst_a = worst_r = 0.0
        bad = []
        for k, r in ref.items():
            if k not in got:
                bad.append("output %r missing" % k)
                continue
            r, g = np.asarray(r), np.asarray(got[k])
            if r.shape != g.shape:
                bad.append("%s: shape %s vs %s" % (k, r.shape, g.shape))
                continue
            if r.dtype.kind not in "fc":
                if not np.array_equal(r, g):
                    bad.append("%s: %s values differ (%d of %d)" % (
                        k, r.dtype, int(np.count_nonzero(r != g)), r.size))
                continue
            r64, g64 = r.astype(np.float64), g.astype(np.float64)
            fin = np.isfinite(r64)
            if not np.array_equal(np.isnan(r64), np.isnan(g64)) or not np.array_equal(
                    r64[~fin & ~np.isnan(r64)], g64[~fin & ~np.isnan(r64)]):
                bad.append("%s: NaN/inf positions differ (ref %d nan %d inf, got %d nan %d inf)"
                           % (k, np.isnan(r64).sum(), np.isinf(r64).sum(), np.isnan(g64).sum(),
                              np.isinf(g64).sum()))
                continue
            if not fin.any():
                continue
            d = np.abs(g64[fin] - r64[fin])
            worst_a = max(worst_a, float(d.max()))
            worst_r = max(worst_r, float((d / np.maximum(np.abs(r64[fin]), 1e-30)).max()))
            over = d > ATOL + RTOL * np.abs(r64[fin])
            if over.any():
                i = int(np.argmax(d - (ATOL + RTOL * np.abs(r64[fin]))))
                bad.append("%s: %d of %d values outside tolerance, e.g. ref %r got %r" % (
                    k, int(over.sum()), int(fin.sum()), r64[fin][i], g64[fin][i]))
        return not bad, worst_a, worst_r, "; ".join(bad)

    def ort_session(path, optimize=True):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 4
        if not optimize:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def ort_run(path, feeds, m):
        """(outputs or None, note). Raises when onnxruntime fails for another reason than a
        missing kernel. When only onnxruntime's graph optimizer fails (the model loads with
        optimizations disabled), the note says so and the unoptimized session runs: that is a
        known onnxruntime problem (e.g. its LayerNormFusion on an FP16 decomposed LayerNorm
        right behind a Cast), reported loudly but not counted as a modelshrink failure."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return None, "onnxruntime not installed"
        note = ""
        try:
            s = ort_session(path)
        except Exception as e:  # noqa: BLE001
            if "NOT_IMPLEMENTED" in str(e) or "Could not find an implementation" in str(e):
                return None, "onnxruntime has no kernel: " + str(e).splitlines()[0][:200]
            try:
                s = ort_session(path, optimize=False)
            except Exception:  # noqa: BLE001
                raise RuntimeError(str(e)[:400])
            note = ("NOTE onnxruntime's graph optimizer fails on this model (it loads and runs "
                    "with ORT_DISABLE_ALL, used here): " + str(e).splitlines()[0][:300])
        names = [o.name for o in s.get_outputs()]
        return dict(zip(names, s.run(None, feeds_for(m, feeds)))), note

    # ---- structure checks ------------------------------------------------------------------
    def all_graphs(m):
        return C.all_graphs(m.graph)

    def find_tensor(m, name):
        for g in all_graphs(m):
            for t in g.initializer:
                if t.name == name:
                    return t
        return None

    def cast_pairs(m):
        bad = []
        for g in all_graphs(m):
            prod = {o: n for n in g.node for o in n.output}
            for n in g.node:
                if n.op_type != "Cast" or not n.input:
                    continue
                to = [a.i for a in n.attribute if a.name == "to"][0]
                p = prod.get(n.input[0])
                if p is None or p.op_type != "Cast":
                    continue
                pto = [a.i for a in p.attribute if a.name == "to"][0]
                if {to, pto} == {FLOAT, F16} or {to, pto} == {FLOAT, TensorProto.BFLOAT16}:
                    bad.append("%s(to=%d) <- %s(to=%d) in graph %s" % (
                        n.name or n.output[0], to, p.name or p.output[0], pto, g.name))
        return bad

    def elem_types(m):
        """name -> element type in the main graph (after shape inference)."""
        mi = onnx.shape_inference.infer_shapes(m)
        t = {}
        for v in list(mi.graph.input) + list(mi.graph.output) + list(mi.graph.value_info):
            t[v.name] = v.type.tensor_type.elem_type
        for i in mi.graph.initializer:
            t[i.name] = i.data_type
        return t

    def float_tensor_bytes(m):
        n = 0
        for g in all_graphs(m):
            ts = list(g.initializer)
            for nd in g.node:
                ts += [a.t for a in nd.attribute if a.HasField("t")]
                for a in nd.attribute:
                    ts += list(a.tensors)
            for t in ts:
                if t.data_type in (FLOAT, F16, TensorProto.BFLOAT16):
                    n += int(np.prod(t.dims)) * (4 if t.data_type == FLOAT else 2)
        return n

    def node(m, name):
        for n in m.graph.node:
            if n.name == name:
                return n
        return None

    # ---- one trap --------------------------------------------------------------------------
    def fp16_part(out_text):
        """The fp16 part of convert's line: from 'fp16:' to the end of that line."""
        for ln in out_text.splitlines():
            i = ln.find("fp16: ")
            if i >= 0:
                return ln[i:]
        return ""

    def half_tensors(m):
        """Names of FLOAT16 tensors anywhere in m: initializers and Constant/attribute tensors
        of every graph."""
        names = []
        for g in all_graphs(m):
            for t in g.initializer:
                if t.data_type == F16:
                    names.append(t.name)
            for nd in g.node:
                for a in nd.attribute:
                    for t in ([a.t] if a.HasField("t") else []) + list(a.tensors):
                        if t.data_type == F16:
                            names.append("%s.%s" % (nd.name or nd.output[0], a.name))
        return names

    def runs_fp32(tag, m, name):
        """Check that node `name` of m's main graph reads and writes FLOAT only."""
        n = node(m, name)
        t = elem_types(m)
        io = [(i, t.get(i)) for i in (list(n.input) + list(n.output) if n is not None else [])]
        F.check(n is not None and all(v == FLOAT for _, v in io),
                "%s: node %r runs in FP32 (inputs and output FLOAT)" % (tag, name), str(io))

    ort_notes = []

    # ---- one trap --------------------------------------------------------------------------
    def trap(tag, m, feeds_list, opts=(), fp16=(), fp32=(), numeric=True, external=False,
             expect_io=FLOAT, shrink=True):
        """Convert m with `convert --fp16 *opts` and run the common checks. shrink: the
        conversion is expected to happen and to pay off (float tensor bytes and the file
        shrink, no 'would make the file ... larger' verdict)."""
        src = os.path.join(w, tag + ".onnx")
        dst = os.path.join(w, tag + ".fp16.onnx")
        C.gen_models().save(m, src, external=external)
        r = C.run(args.bin, "convert", "--fp16", *opts, src, "-o", dst)
        what = "%s: convert --fp16%s" % (tag, "".join(" " + o for o in opts))
        if not F.check(r.rc == 0 and os.path.isfile(dst), what + " exits 0", r.describe()):
            return None, r
        print("  %-22s %s" % (tag, fp16_part(r.out)))
        F.check(FP16_RE.search(r.out) is not None,
                what + ": stdout reports 'fp16: K tensors'", r.describe())
        try:
            onnx.checker.check_model(dst, full_check=True)
            F.check(True, tag + ": checker full_check passes")
        except Exception as e:  # noqa: BLE001
            F.fail(tag + ": checker full_check passes", "%s\n%s" % (r.cmd(), e))
        out = onnx.load(dst)
        orig = onnx.load(src)
        tb_in, tb_out = float_tensor_bytes(orig), float_tensor_bytes(out)
        if shrink:
            F.check("would make the file" not in r.out,
                    tag + ": the conversion pays off (not undone as 'would make the file "
                    "larger')", r.out.strip())
            F.check(tb_out < tb_in, tag + ": float tensor bytes shrink",
                    "FLOAT/FLOAT16 tensor bytes %d -> %d" % (tb_in, tb_out))
            F.check(file_bytes(dst) < file_bytes(src), tag + ": output file is smaller",
                    "%d -> %d bytes" % (file_bytes(src), file_bytes(dst)))
        for n in fp16:
            t = find_tensor(out, n)
            F.check(t is not None and t.data_type == F16, "%s: weight %r is FLOAT16" % (tag, n),
                    "data_type %s" % (t.data_type if t is not None else "missing"))
        for n in fp32:
            t = find_tensor(out, n)
            F.check(t is not None and t.data_type == FLOAT, "%s: tensor %r stays FLOAT" % (tag, n),
                    "data_type %s" % (t.data_type if t is not None else "missing"))
        cp = cast_pairs(out)
        F.check(not cp, tag + ": no cancelling Cast pairs", "\n".join(cp))
        io = [(v.name, v.type.tensor_type.elem_type) for v in list(out.graph.input) +
              list(out.graph.output) if v.type.tensor_type.elem_type in (FLOAT, F16)]
        F.check(all(t == expect_io for _, t in io),
                "%s: float graph inputs/outputs are %s" % (
                    tag, TensorProto.DataType.Name(expect_io)), str(io))
        for k, feeds in enumerate(feeds_list):
            ref = ref_run(orig, feeds)
            try:
                got = ref_run(out, feeds)
            except Exception as e:  # noqa: BLE001
                F.fail("%s: ReferenceEvaluator runs the output (feeds %d)" % (tag, k),
                       "%s: %s" % (type(e).__name__, e))
                continue
            for n, v in got.items():
                v = np.asarray(v)
                if v.dtype.kind == "f":
                    F.check(not (np.isnan(v).any() and not np.isnan(np.asarray(ref[n])).any()),
                            "%s: output %r has no NaN (feeds %d)" % (tag, n, k))
            if numeric:
                ok, wa, wr, det = compare(ref, got)
                print("  %-22s feeds %d  reference evaluator: worst abs %.3g, worst rel %.3g"
                      % (tag, k, wa, wr))
                F.check(ok, "%s: ReferenceEvaluator output within FP16 tolerance (feeds %d)"
                        % (tag, k), det)
            try:
                base, _ = ort_run(src, feeds, orig)
            except Exception:  # noqa: BLE001
                base = None
            try:
                got_o, note = ort_run(dst, feeds, out)
            except Exception as e:  # noqa: BLE001
                if base is not None:
                    F.fail("%s: onnxruntime loads and runs the output (feeds %d)" % (tag, k),
                           "%s: %s" % (type(e).__name__, str(e)[:500]))
                else:
                    print("  %-22s onnxruntime cannot run the original either: skipped" % tag)
                continue
            if got_o is None:
                print("  %-22s onnxruntime: %s (comparison skipped)" % (tag, note))
                continue
            if note:
                print("  %-22s %s" % (tag, note))
                ort_notes.append(tag)
            if numeric:
                # against onnxruntime on the original (onnxruntime and the reference evaluator
                # may disagree with each other on the FP32 model itself, e.g. for Loop)
                ok, wa, wr, det = compare(base if base is not None else ref, got_o)
                print("  %-22s feeds %d  onnxruntime:         worst abs %.3g, worst rel %.3g"
                      % (tag, k, wa, wr))
                F.check(ok, "%s: onnxruntime output within FP16 tolerance (feeds %d)" % (tag, k),
                        det)
        return out, r

    def rnd(*shape, scale=1.0):
        return f32(rng.normal(0, scale, shape))

    def pos(*shape, lo=0.5, hi=1.5):
        """Positive values: no cancellation, so FP16's relative error stays relative."""
        return f32(rng.uniform(lo, hi, shape))

    def below_normal(a):
        """Non-zero finite values that FP16 holds only as subnormals (|x| < 2^-14)."""
        a = np.asarray(a, np.float64)
        return int(np.count_nonzero(np.isfinite(a) & (a != 0) & (np.abs(a) < 2.0 ** -14)))

    def subnormal_count(out_text):
        ms = re.search(r"(\d+) values? subnormal", out_text)
        return int(ms.group(1)) if ms else 0

    def clamped_count(out_text):
        mc = CLAMPED_RE.search(out_text)
        return int(mc.group(1)) if mc else 0

    # Every trap model holds at least 256 FP32 weight values per converted weight, so that
    # converting saves more bytes than the Casts at the FP16 region's borders cost (otherwise
    # the tool rightly keeps the model FP32: see 'never_larger').

    # 1. Resize with float scales ------------------------------------------------------------
    m = model("resize", [
        helper.make_node("Mul", ["x", "w"], ["a"], name="mul"),
        helper.make_node("Resize", ["a", "", "scales"], ["y"], name="resize", mode="linear")],
        [("x", FLOAT, [1, 4, 8, 8])], [("y", FLOAT, [1, 4, 16, 16])],
        [init("w", pos(1, 4, 8, 8)), init("scales", f32([1, 1, 2, 2]))])
    out, _ = trap("resize", m, [{"x": pos(1, 4, 8, 8)}], fp16=["w"], fp32=["scales"])
    if out is not None:
        n = node(out, "resize")
        t = elem_types(out)
        F.check(n is not None and t.get(n.input[2]) == FLOAT,
                "resize: Resize's `scales` input is FLOAT",
                "scales input %r type %s" % (n.input[2] if n else None,
                                             t.get(n.input[2]) if n else None))
        F.check(n is not None and t.get(n.input[0]) == F16,
                "resize: Resize itself runs in FP16 (its data input is FLOAT16)",
                "data input %r type %s" % (n.input[0] if n else None,
                                           t.get(n.input[0]) if n else None))

    # 2. TopK ----------------------------------------------------------------------------------
    x = f32(rng.permutation(256).reshape(4, 64))  # distinct integers: 1.5 x is exact in FP16
    m = model("topk", [
        helper.make_node("Mul", ["x", "w"], ["a"], name="mul"),
        helper.make_node("TopK", ["a", "k"], ["values", "indices"], name="topk", axis=1)],
        [("x", FLOAT, [4, 64])], [("values", FLOAT, [4, 5]), ("indices", I64, [4, 5])],
        [init("w", f32(np.full((4, 64), 1.5))), init("k", np.array([5], np.int64))])
    out, _ = trap("topk", m, [{"x": x}], fp16=["w"])
    if out is not None:
        k = find_tensor(out, "k")
        F.check(k is not None and k.data_type == I64, "topk: K stays INT64")

    # 3. Range ---------------------------------------------------------------------------------
    m = model("range", [
        helper.make_node("Range", ["start", "limit", "delta"], ["r"], name="range"),
        helper.make_node("Mul", ["r", "w"], ["rw"], name="mul"),
        helper.make_node("Add", ["rw", "x"], ["y"], name="add")],
        [("x", FLOAT, [256])], [("y", FLOAT, [256])],
        [init("start", f32(0.5)), init("limit", f32(256.5)), init("delta", f32(1.0)),
         init("w", pos(256))])
    out, _ = trap("range", m, [{"x": pos(256)}], fp16=["w"])
    if out is not None:
        runs_fp32("range", out, "range")

    # 4. CumSum --------------------------------------------------------------------------------
    m = model("cumsum", [
        helper.make_node("Mul", ["x", "w"], ["a"], name="mul"),
        helper.make_node("CumSum", ["a", "axis"], ["y"], name="cumsum")],
        [("x", FLOAT, [32, 8])], [("y", FLOAT, [32, 8])],
        [init("w", pos(32, 8)), init("axis", np.array(1, np.int64))])
    out, _ = trap("cumsum", m, [{"x": pos(32, 8)}], fp16=["w"])
    if out is not None:
        t = elem_types(out)
        n = node(out, "cumsum")
        F.check(n is not None and t.get(n.input[0]) == F16 and t.get(n.input[1]) == I64,
                "cumsum: CumSum runs in FP16 with its INT64 axis",
                str([(i, t.get(i)) for i in (n.input if n else [])]))

    # 5. Constant nodes ------------------------------------------------------------------------
    cval = rnd(256)
    m = model("constant", [
        helper.make_node("Constant", [], ["c"], name="const",
                         value=numpy_helper.from_array(cval, "c_value")),
        helper.make_node("Constant", [], ["half"], name="const_half", value_float=0.5),
        helper.make_node("Add", ["x", "c"], ["a"], name="add"),
        helper.make_node("Mul", ["a", "w"], ["b"], name="mul"),
        helper.make_node("Mul", ["b", "half"], ["y"], name="mul_half")],
        [("x", FLOAT, [256])], [("y", FLOAT, [256])], [init("w", rnd(256))])
    cfeeds = [{"x": f32(cval + np.where(cval < 0, -1, 1) * pos(256))}]  # |x + c| >= 0.5

    def const_value(out):
        n = node(out, "const")
        vt = [a.t for a in n.attribute if a.name == "value"] if n is not None else []
        return n, (vt[0] if vt else None)

    out, _ = trap("constant", m, cfeeds, fp16=["w"])
    if out is not None:
        n, vt = const_value(out)
        F.check(vt is not None and vt.data_type == F16,
                "constant: Constant node's value tensor is FLOAT16",
                "node %s" % (n if n is not None else "missing"))
        if vt is not None and vt.data_type == F16:
            got = numpy_helper.to_array(vt)
            F.check(got.tobytes() == cval.astype(np.float16).tobytes(),
                    "constant: Constant value equals np.float16 rounding bit for bit")
        n = node(out, "mul_half")  # value_float has no FLOAT16 form: a value or a Cast
        t = elem_types(out)
        F.check(n is not None and all(t.get(i) == F16 for i in n.input),
                "constant: the Mul reading the value_float Constant runs in FP16",
                str([(i, t.get(i)) for i in (n.input if n else [])]))

    # 5b. --keep-fp32 GLOB: an initializer and a Constant output kept FP32 by name -------------
    out, r = trap("keep_fp32_w", m, cfeeds, opts=("--keep-fp32", "w*"), fp32=["w"])
    if out is not None:
        runs_fp32("keep_fp32_w", out, "mul")
        n, vt = const_value(out)
        F.check(vt is not None and vt.data_type == F16,
                "keep_fp32_w: the Constant 'c' (not matched) is still FLOAT16")
        F.check("kept fp32 by --keep-fp32: 1 tensor," in r.out,
                "keep_fp32_w: stdout says 'kept fp32 by --keep-fp32: 1 tensor'", r.out.strip())
    out, r = trap("keep_fp32_const", m, cfeeds,
                  opts=("--keep-fp32", "nomatch*", "--keep-fp32", "c"), fp16=["w"])
    if out is not None:
        n, vt = const_value(out)
        F.check(vt is not None and vt.data_type == FLOAT and
                numpy_helper.to_array(vt).tobytes() == cval.tobytes(),
                "keep_fp32_const: the Constant 'c' keeps its FLOAT value bit for bit",
                "node %s" % n)
        runs_fp32("keep_fp32_const", out, "add")
        F.check("kept fp32 by --keep-fp32: 1 tensor," in r.out,
                "keep_fp32_const: stdout says 'kept fp32 by --keep-fp32: 1 tensor'",
                r.out.strip())

    # 6. Cast(to=FLOAT) inside the converted region ------------------------------------------
    m = model("cast_inside", [
        helper.make_node("Mul", ["x", "w"], ["a"], name="mul"),
        helper.make_node("Cast", ["a"], ["b"], name="cast_f", to=FLOAT),
        helper.make_node("Add", ["b", "w2"], ["c"], name="add"),
        helper.make_node("Cast", ["ids"], ["idf"], name="cast_ids", to=FLOAT),
        helper.make_node("Mul", ["c", "idf"], ["y"], name="mul_ids")],
        [("x", FLOAT, [256]), ("ids", I64, [256])], [("y", FLOAT, [256])],
        [init("w", pos(256)), init("w2", pos(256))])
    out, _ = trap("cast_inside", m, [{"x": pos(256),
                                      "ids": np.arange(256, dtype=np.int64) % 7}],
                  fp16=["w", "w2"])
    if out is not None:
        n = node(out, "cast_f")
        to = [a.i for a in n.attribute if a.name == "to"][0] if n is not None else None
        F.check(n is None or to == F16,
                "cast_inside: Cast(to=FLOAT) in the converted region is retargeted to FLOAT16 "
                "(or removed)", "to=%s" % to)

    # 7a. If with weights in both branches ----------------------------------------------------
    n_ = 256
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "Wt"], ["ty"], name="then_mul")],
                               "then", [], [vi("ty", FLOAT, [n_])],
                               initializer=[init("Wt", pos(n_))])
    else_g = helper.make_graph([helper.make_node("Add", ["x", "We"], ["ey"], name="else_add")],
                               "else", [], [vi("ey", FLOAT, [n_])],
                               initializer=[init("We", pos(n_))])
    m = model("if_weights", [
        helper.make_node("Mul", ["x0", "W0"], ["x"], name="mul"),
        helper.make_node("If", ["cond"], ["b"], name="if", then_branch=then_g,
                         else_branch=else_g),
        helper.make_node("Add", ["b", "W1"], ["y"], name="add")],
        [("cond", TensorProto.BOOL, []), ("x0", FLOAT, [n_])], [("y", FLOAT, [n_])],
        [init("W0", pos(n_)), init("W1", pos(n_))])
    xv = pos(n_)
    trap("if_weights", m, [{"cond": np.array(True), "x0": xv},
                           {"cond": np.array(False), "x0": xv}],
         fp16=["W0", "W1", "Wt", "We"])

    # 7b. Loop with a weight in its body ------------------------------------------------------
    body = helper.make_graph([
        helper.make_node("Mul", ["v_in", "Wb"], ["v1"], name="body_mul"),
        helper.make_node("Add", ["v1", "Bb"], ["v_out"], name="body_add"),
        helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_id")],
        "body", [vi("i", I64, []), vi("cond_in", TensorProto.BOOL, []), vi("v_in", FLOAT, [n_])],
        [vi("cond_out", TensorProto.BOOL, []), vi("v_out", FLOAT, [n_])],
        initializer=[init("Wb", pos(n_, lo=0.8, hi=1.1)), init("Bb", pos(n_, lo=0.05, hi=0.2))])
    m = model("loop_weight", [
        helper.make_node("Mul", ["x0", "W0"], ["x"], name="mul"),
        helper.make_node("Loop", ["trip", "", "x"], ["v"], name="loop", body=body),
        helper.make_node("Add", ["v", "W1"], ["y"], name="add")],
        [("trip", I64, []), ("x0", FLOAT, [n_])], [("y", FLOAT, [n_])],
        [init("W0", pos(n_)), init("W1", pos(n_))])
    trap("loop_weight", m, [{"trip": np.array(3, np.int64), "x0": pos(n_)}],
         fp16=["W0", "W1", "Wb", "Bb"])

    # 8. Decomposed LayerNorm, epsilon 1e-12, a zero-variance row ----------------------------
    hid = 256
    x = rnd(4, hid)
    x[0, :] = 3.0
    gamma, beta = f32(1 + rng.normal(0, 0.1, hid)), pos(hid, lo=0.1, hi=0.3)
    m = model("layernorm_eps", [
        helper.make_node("ReduceMean", ["x"], ["mu"], name="mean1", axes=[-1]),
        helper.make_node("Sub", ["x", "mu"], ["d"], name="sub"),
        helper.make_node("Constant", [], ["two"], name="two",
                         value=numpy_helper.from_array(f32(2.0), "two_v")),
        helper.make_node("Pow", ["d", "two"], ["d2"], name="pow"),
        helper.make_node("ReduceMean", ["d2"], ["var"], name="mean2", axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
        helper.make_node("Div", ["d", "sd"], ["nrm"], name="div"),
        helper.make_node("Mul", ["nrm", "gamma"], ["g"], name="mul_gamma"),
        helper.make_node("Add", ["g", "beta"], ["y"], name="add_beta")],
        [("x", FLOAT, [4, hid])], [("y", FLOAT, [4, hid])],
        [init("eps", f32(1e-12)), init("gamma", gamma), init("beta", beta)])
    out, r = trap("layernorm_eps", m, [{"x": x}], fp16=["eps", "gamma", "beta"])
    if out is not None:
        e = find_tensor(out, "eps")
        if e is not None and e.data_type == F16:
            bits = numpy_helper.to_array(e).view(np.uint16).reshape(-1)
            F.check(bits.tolist() == [0x0001],
                    "layernorm_eps: epsilon 1e-12 becomes 2^-24 (bits 0x0001), not 0",
                    "bits %s" % [hex(b) for b in bits.tolist()])
        want = below_normal(1e-12) + below_normal(gamma) + below_normal(beta)
        F.check(subnormal_count(r.out) == want,
                "layernorm_eps: stdout counts %d values subnormal (the epsilon)" % want,
                r.out.strip())
        F.check("kept fp32" not in r.out,
                "layernorm_eps: the scalar epsilon (< 16 non-zero values) is exempt from the "
                "'mostly below' rule", r.out.strip())
        got = ref_run(out, {"x": x})["y"]
        F.check(bool(np.isfinite(got).all()),
                "layernorm_eps: zero-variance row gives finite outputs (no 0/0)",
                "row 0: %s" % got[0])

    # 9. A weight shared by a blocked node and a converted node --------------------------------
    # The converted region also holds W2 and B2, so the model shrinks even though W is stored
    # twice (FP32 for the blocked MatMul, FP16 for the converted Add).
    m = model("shared_blocked", [
        helper.make_node("MatMul", ["x", "W"], ["a"], name="mm"),
        helper.make_node("Add", ["a", "W"], ["b"], name="add"),
        helper.make_node("Mul", ["b", "W2"], ["c"], name="mul"),
        helper.make_node("Add", ["c", "B2"], ["d"], name="add2"),
        helper.make_node("Relu", ["d"], ["y"], name="relu")],
        [("x", FLOAT, [1, 16])], [("y", FLOAT, [16, 16])],
        [init("W", pos(16, 16, lo=0.1, hi=0.2)), init("W2", pos(16, 16)),
         init("B2", pos(16, 16, lo=0.1, hi=0.2))])
    for tag, opts in (("shared_block_op", ("--block-op", "MatMul")),
                      ("shared_block_node", ("--block-node", "mm"))):
        out, _ = trap(tag, m, [{"x": pos(1, 16)}], opts=opts, fp16=["W2", "B2"])
        if out is not None:
            t = elem_types(out)
            mm, add = node(out, "mm"), node(out, "add")
            F.check(mm is not None and all(t.get(i) == FLOAT for i in mm.input),
                    "%s: the blocked MatMul gets FLOAT inputs" % tag,
                    str([(i, t.get(i)) for i in (mm.input if mm else [])]))
            F.check(add is not None and all(t.get(i) == F16 for i in add.input),
                    "%s: the converted Add gets FLOAT16 inputs" % tag,
                    str([(i, t.get(i)) for i in (add.input if add else [])]))
            wt = find_tensor(out, "W")
            F.check(wt is not None and wt.data_type == FLOAT and
                    numpy_helper.to_array(wt).tobytes() ==
                    numpy_helper.to_array(find_tensor(m, "W")).tobytes(),
                    "%s: the shared weight W keeps its FP32 bytes for the blocked MatMul" % tag)

    # 10. Values beyond 65504: kept FP32 by default; --fp16-clamp saturates ------------------
    # a = x + b runs in FP16; y = a * w reads the out-of-range weight. |a| < 1, so the clamped
    # runs' y = a * 65504 stays finite in FP16 too. Four values are out of range for
    # --fp16-max 1e4, three of them (not 2e4) for the default 65504.
    big = np.concatenate([f32([1e5, -1e5, 7e4, 2e4]), pos(252)]).astype(np.float32)
    bias = pos(256, lo=0.1, hi=0.4)
    m = model("big_values", [helper.make_node("Add", ["x", "b"], ["a"], name="add"),
                             helper.make_node("Mul", ["a", "w"], ["y"], name="mul")],
              [("x", FLOAT, [256])], [("y", FLOAT, [256])], [init("w", big), init("b", bias)])
    bfeeds = [{"x": pos(256, lo=0.1, hi=0.4)}]
    out, r = trap("big_default", m, bfeeds, fp16=["b"], fp32=["w"])
    if out is not None:
        t = find_tensor(out, "w")
        F.check(t is not None and numpy_helper.to_array(t).tobytes() == big.tobytes(),
                "big_default: w keeps its exact FP32 bytes")
        runs_fp32("big_default", out, "mul")
        mt = FP16_RE.search(r.out)
        F.check(mt is not None and mt.group(1) == "1",
                "big_default: stdout says 'fp16: 1 tensor' (b only)", r.out.strip())
        F.check("kept fp32: 1 tensor beyond FP16 range (max |x| 1e+05)" in r.out,
                "big_default: stdout says 'kept fp32: 1 tensor beyond FP16 range "
                "(max |x| 1e+05)'", r.out.strip())
        F.check(CLAMPED_RE.search(r.out) is None,
                "big_default: stdout reports no clamped values", r.out.strip())
    for tag, opts, hi in (
            ("big_clamp", ("--fp16-clamp",), 65504.0),
            ("big_clamp_max1e4", ("--fp16-clamp", "--fp16-max", "1e4"), 1e4)):
        out, r = trap(tag, m, bfeeds, opts=opts, fp16=["w", "b"], numeric=False)
        if out is None:
            continue
        t = find_tensor(out, "w")
        if t is not None and t.data_type == F16:
            got = numpy_helper.to_array(t)
            exp = np.clip(big, -hi, hi).astype(np.float16)
            F.check(got.tobytes() == exp.tobytes(), "%s: weights saturate to +-%g" % (tag, hi),
                    "got %s, expected %s" % (got[:4].tolist(), exp[:4].tolist()))
        n_big = int(np.count_nonzero(np.abs(big) > hi))
        F.check(clamped_count(r.out) == n_big,
                "%s: stdout says %d values clamped" % (tag, n_big), r.out.strip())
        F.check("kept fp32" not in r.out, "%s: nothing kept FP32" % tag, r.out.strip())

    # 10b. A matrix mostly below FP16's normal range (|x| < 2^-14) ----------------------------
    # (the "below" part of the rule judges tensors of rank >= 2; vectors and scalars convert)
    tiny = f32(rng.uniform(0.5e-6, 2e-6, 64) * rng.choice([-1.0, 1.0], 64))
    m = model("below_range", [helper.make_node("Add", ["x", "b"], ["a"], name="add"),
                              helper.make_node("Mul", ["a", "t"], ["y"], name="mul")],
              [("x", FLOAT, [256])], [("y", FLOAT, [1, 256])],
              [init("t", np.tile(tiny, 4).reshape(1, 256)), init("b", bias)])
    out, r = trap("below_default", m, bfeeds, fp16=["b"], fp32=["t"])
    if out is not None:
        t = find_tensor(out, "t")
        F.check(t is not None and numpy_helper.to_array(t).tobytes() ==
                np.tile(tiny, 4).tobytes(), "below_default: t keeps its exact FP32 bytes")
        runs_fp32("below_default", out, "mul")
        F.check("kept fp32: 1 tensor mostly below FP16's normal range" in r.out,
                "below_default: stdout says \"kept fp32: 1 tensor mostly below FP16's normal "
                "range\"", r.out.strip())
    out, r = trap("below_clamp", m, bfeeds, opts=("--fp16-clamp",), fp16=["t", "b"],
                  numeric=False)
    if out is not None:
        t = find_tensor(out, "t")
        if t is not None and t.data_type == F16:
            F.check(numpy_helper.to_array(t).tobytes() == np.tile(tiny, 4).astype(
                np.float16).tobytes(), "below_clamp: t equals np.float16 rounding bit for bit")
        want = below_normal(np.tile(tiny, 4)) + below_normal(bias)
        F.check(subnormal_count(r.out) == want,
                "below_clamp: stdout says %d values subnormal" % want, r.out.strip())
        F.check(CLAMPED_RE.search(r.out) is None,
                "below_clamp: tiny values are not counted as clamped", r.out.strip())

    # 10b'. The same values as a vector: converted (subnormals), nothing kept -------------------
    m = model("below_vector", [helper.make_node("Add", ["x", "b"], ["a"], name="add"),
                               helper.make_node("Mul", ["a", "t"], ["y"], name="mul")],
              [("x", FLOAT, [256])], [("y", FLOAT, [256])],
              [init("t", np.tile(tiny, 4)), init("b", bias)])
    out, r = trap("below_vector", m, bfeeds, fp16=["t", "b"], numeric=False)
    if out is not None:
        F.check("kept fp32" not in r.out, "below_vector: a vector of tiny values is not kept FP32",
                r.out.strip())

    # 10c. Both kinds in one model: the line names both -----------------------------------------
    m = model("mixed_range", [helper.make_node("Add", ["x", "b"], ["a"], name="add"),
                              helper.make_node("Mul", ["a", "w"], ["c"], name="mul"),
                              helper.make_node("Mul", ["c", "t"], ["y"], name="mul_t")],
              [("x", FLOAT, [256])], [("y", FLOAT, [1, 256])],
              [init("w", big), init("t", np.tile(tiny, 4).reshape(1, 256)), init("b", bias)])
    out, r = trap("mixed_range", m, bfeeds, fp16=["b"], fp32=["w", "t"])
    if out is not None:
        runs_fp32("mixed_range", out, "mul")
        runs_fp32("mixed_range", out, "mul_t")
        want = ("kept fp32: 2 tensors (1 beyond FP16 range, max |x| 1e+05; 1 mostly below "
                "FP16's normal range)")
        F.check(want in r.out, "mixed_range: stdout says %r" % want, r.out.strip())

    # 11. Bit-exact rounding over many magnitudes ---------------------------------------------
    mag = np.exp2(rng.uniform(-30, 17, 4000)) * rng.choice([-1.0, 1.0], 4000)
    ulp_ties = []
    for e in range(-24, 16):  # exact halfway points between neighbouring FP16 values
        step = 2.0 ** max(e - 10, -24)
        for k in (1, 3, 5, 1023 * 2 + 1):
            ulp_ties.append(2.0 ** e + (k * step) / 2)
    specials = [0.0, -0.0, 2.0 ** -24, 2.0 ** -25, 1.5 * 2 ** -24, 2.5 * 2 ** -24, 3 * 2 ** -26,
                2.0 ** -14, 2.0 ** -14 - 2 ** -25, 65504.0, 65519.0, 65520.0, 65536.0,
                -65519.0, 3.4e38, -3.4e38, 1e-45, -1e-45, float("inf"), float("-inf"),
                float("nan"), 1e-7, 1e-8, 9999.0, 10000.0, 10001.0, 1e4 + 3, -1e4 - 3]
    wv = f32(np.concatenate([mag, ulp_ties, np.negative(ulp_ties), specials]))
    N = wv.size
    m = model("rounding", [helper.make_node("Add", ["x", "w"], ["y"], name="add")],
              [("x", FLOAT, [N])], [("y", FLOAT, [N])], [init("w", wv)])

    def clamp_round(a, lo, hi):
        a = a.astype(np.float32).copy()
        fin = np.isfinite(a)
        small = fin & (a != 0) & (np.abs(a) < lo)
        a[small] = np.copysign(np.float32(lo), a[small])
        large = fin & (np.abs(a) > hi)
        a[large] = np.copysign(np.float32(hi), a[large])
        return a.astype(np.float16)

    def same_bits(got, exp):
        g, e = got.view(np.uint16), exp.view(np.uint16)
        nan = np.isnan(exp)
        bad = (g != e) & ~nan | (nan & ~np.isnan(got))
        return np.flatnonzero(bad)

    # wv holds values beyond 65504 (3.4e38, 65520, ...): without --fp16-clamp the range rule
    # would keep it FP32 (see big_default), so both runs convert with --fp16-clamp.
    for tag, opts, lo, hi in (("rounding_default", ("--fp16-clamp",), 2.0 ** -24, 65504.0),
                              ("rounding_peer_bounds", ("--fp16-clamp", "--fp16-min", "1e-7",
                                                        "--fp16-max", "1e4"), 1e-7, 1e4)):
        out, r = trap(tag, m, [{"x": f32(np.zeros(N))}], opts=opts, fp16=["w"], numeric=False)
        t = find_tensor(out, "w") if out is not None else None
        if t is None or t.data_type != F16:
            continue
        fin = np.isfinite(wv)
        n_hi = int(np.count_nonzero(fin & (np.abs(wv) > hi)))
        F.check(clamped_count(r.out) == n_hi,
                "%s: stdout says %d values clamped (finite |x| > %g)" % (tag, n_hi, hi),
                r.out.strip())
        got = numpy_helper.to_array(t)
        exp = clamp_round(wv, lo, hi)
        n_sub = below_normal(wv)  # counted on the FP32 values, before rounding
        F.check(subnormal_count(r.out) == n_sub,
                "%s: stdout says %d values subnormal (non-zero FP32 values below 2^-14, "
                "including those raised to --fp16-min)" % (tag, n_sub), r.out.strip())
        bad = same_bits(got, exp)
        F.check(bad.size == 0, "%s: %d FP16 values equal clamp + np.float16 RNE bit for bit"
                % (tag, N), "%d differ, e.g. %s" % (bad.size, "; ".join(
                    "x=%r got 0x%04x expected 0x%04x" % (float(wv[i]), got.view(np.uint16)[i],
                                                         exp.view(np.uint16)[i])
                    for i in bad[:8])))
        if tag == "rounding_peer_bounds":
            try:
                from onnxconverter_common import float16 as oc16
            except ImportError:
                print("  onnxconverter_common not installed: peer bit comparison skipped")
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peer = np.asarray(oc16.convert_np_to_float16(wv, 1e-7, 1e4))
            bad = same_bits(got, peer)
            F.check(bad.size == 0, "%s: equals onnxconverter-common convert_np_to_float16 bit "
                    "for bit" % tag, "%d differ, e.g. %s" % (bad.size, "; ".join(
                        "x=%r got 0x%04x peer 0x%04x" % (float(wv[i]), got.view(np.uint16)[i],
                                                         peer.view(np.uint16)[i])
                        for i in bad[:8])))

    # 12. External data ------------------------------------------------------------------------
    G = C.gen_models()
    cnn = G.make_cnn(seed=11)
    xin = rnd(1, 3, 32, 32)
    out, _ = trap("external", cnn, [{"x": xin}], external=True,
                  fp16=["conv1.weight", "conv2.weight", "fc.weight"])
    dst = os.path.join(w, "external.fp16.onnx")
    if out is not None:
        F.check(os.path.isfile(dst + ".data"), "external: output keeps external data (.data file)")
        raw = onnx.load(dst, load_external_data=False)
        ext = [t for t in raw.graph.initializer
               if t.data_location == TensorProto.EXTERNAL]
        F.check(len(ext) >= 2 and all(t.data_type == F16 for t in ext),
                "external: tensors in the .data file are FLOAT16",
                str([(t.name, t.data_type) for t in ext]))
        src_data = os.path.join(w, "external.onnx.data")
        if os.path.isfile(dst + ".data"):
            F.check(os.path.getsize(dst + ".data") < 0.75 * os.path.getsize(src_data),
                    "external: the .data file is about half the size",
                    "%d -> %d" % (os.path.getsize(src_data), os.path.getsize(dst + ".data")))

    # 13. Graph I/O types ----------------------------------------------------------------------
    trap("io_keep", cnn, [{"x": xin}], opts=("--keep-io-types",), expect_io=FLOAT,
         fp16=["conv1.weight", "fc.weight"])
    out, _ = trap("io_nokeep", cnn, [{"x": xin}], opts=("--no-keep-io-types",), expect_io=F16,
                  fp16=["conv1.weight", "fc.weight"])
    if out is not None:
        F.check(out.graph.input[0].type.tensor_type.elem_type == F16 and
                out.graph.output[0].type.tensor_type.elem_type == F16,
                "io_nokeep: input x and output logits are FLOAT16")
    # 14. Never larger: a tiny model whose Casts would cost more than FP16 saves -------------
    small_w = rnd(8)
    m = model("never_larger", [helper.make_node("Mul", ["x", "w"], ["y"], name="mul")],
              [("x", FLOAT, [8])], [("y", FLOAT, [8])], [init("w", small_w)])
    nfeeds = {"x": rnd(8)}
    out, r = trap("never_larger", m, [nfeeds], fp32=["w"], shrink=False)
    if out is not None:
        mw = re.search(r"converting (\d+) tensors? would make the file (%s) larger "
                       r"\((\d+) Casts?\); kept FP32" % C.SIZE, r.out)
        F.check(mw is not None and mw.group(1) == "1" and not mw.group(2).startswith("0 ") and
                mw.group(3) == "2",
                "never_larger: stdout says 'converting 1 tensor would make the file M larger "
                "(2 Casts); kept FP32'", r.out.strip())
        mt = FP16_RE.search(r.out)
        F.check(mt is not None and mt.group(1) == "0",
                "never_larger: stdout says 'fp16: 0 tensors'", r.out.strip())
        ht = half_tensors(out)
        t = elem_types(out)
        hv = [k for k, v in t.items() if v == F16]
        F.check(not ht and not hv, "never_larger: the output holds no FLOAT16 tensor or value",
                "tensors %s, values %s" % (ht, hv))
        F.check(numpy_helper.to_array(find_tensor(out, "w")).tobytes() == small_w.tobytes(),
                "never_larger: w keeps its exact FP32 bytes")
        got, ref = ref_run(out, nfeeds)["y"], ref_run(onnx.load(
            os.path.join(w, "never_larger.onnx")), nfeeds)["y"]
        F.check(got.dtype == np.float32 and got.tobytes() == ref.tobytes(),
                "never_larger: outputs equal the FP32 original bit for bit")
        plain = os.path.join(w, "never_larger.plain.onnx")
        rp = C.run(args.bin, "convert", os.path.join(w, "never_larger.onnx"), "-o", plain)
        if F.check(rp.rc == 0 and os.path.isfile(plain),
                   "never_larger: convert without --fp16 exits 0", rp.describe()):
            dst = os.path.join(w, "never_larger.fp16.onnx")
            F.check(file_bytes(dst) <= file_bytes(plain),
                    "never_larger: the --fp16 output is not larger than convert without --fp16",
                    "%d bytes with --fp16, %d without" % (file_bytes(dst), file_bytes(plain)))

    if ort_notes:
        print("onnxruntime graph-optimizer failures (ran unoptimized instead): %s" % ", ".join(
            ort_notes))
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
