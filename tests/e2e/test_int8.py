#!/usr/bin/env python3
"""End-to-end: `convert --int8` (weight-only INT8, symmetric, per output channel).

Models: the ALBERT-shaped encoder (hidden 256, ffn 1024, 4 layers, vocab 4000: per-layer weight
copies, so dedup must run first and every shared weight is quantized once), a CNN (Conv weights
below and above the 4096-element threshold, a Gemm head with transB=1 and one with transB=0),
a pre-LN transformer block (Q/K/V/O and FFN MatMuls), a ConvTranspose model (channel axis 1,
group 1 and 2), a weight shared by a MatMul and an Add (the Add is not eligible: it keeps the
FLOAT initializer) next to a weight just below the threshold, a Gather embedding (with and
without --int8-gather), MLP/CNN models at opsets 10 and 11 (per-tensor scale, reported) and at
opset 9 (nothing quantized, reported).

For each converted model:
  - `convert --int8 ...` exits 0 and prints `int8: K tensors` with K = the number of distinct
    (after dedup) eligible weights (`(per-tensor: opset N)` appended for opsets 10-12);
  - onnx.checker.check_model(full_check=True) passes;
  - every eligible consumer reads its weight from `DequantizeLinear(<W>_quantized, <W>_scale,
    <W>_zero_point) -> <W>_dequantized`, with axis = the output-channel axis (MatMul: last axis
    of B; Gemm: 0 with transB=1, else 1; Conv: 0; ConvTranspose: 1; Gather: 0), no axis and
    scalar scale/zero point where the opset forces per-tensor; an ineligible consumer of the
    same weight still reads the FLOAT original, bit for bit; a weight with no remaining FLOAT
    consumer is gone;
  - the INT8 tensor equals a numpy reference of the rule bit for bit: scale = max|w| / 127 over
    the channel in float32 (1 for an all-zero channel), q = np.round(w / scale) in float32
    (round half to even), clipped to [-127, 127]; the scale tensor equals that scale bit for bit;
    where the scale is FLOAT16 (--fp16, opset >= 19) it is float16(scale) and q is rounded
    against float32(float16(scale)), the scale the model dequantizes with; the zero point is
    INT8 zeros (one tensor may serve all weights with the same channel count);
  - weight bytes: INT8 + scale + zero point bytes <= 27% of the FP32 bytes of the same weights;
  - onnxruntime runs it and the output's cosine similarity to the FP32 model's (all outputs
    flattened, float64) is >= 0.999. Cosine and worst absolute error are printed per model.
A MatMul weight with NaN, +-inf, -0.0, denormals, huge values, an all-zero and an all-NaN/inf
channel is checked for structure and bits only (NaN -> 0, +-inf -> +-127, neither in the
maximum, as the README says). Also `--int8 --fp16` on the transformer block (opset 17: FLOAT
scales; opset 19: FLOAT16 scales; the biases become FLOAT16), run in onnxruntime (reference
evaluator when onnxruntime lacks a kernel), cosine >= 0.999; and `inspect --json` on INT8
outputs reports `quantized: {tensors, bytes, scale_bytes, zero_point_bytes}` matching the
DequantizeLinear nodes whose x is an INT8 initializer, and the table shows a line for it."""

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_int8"
MIN_COSINE = 0.999
MAX_WEIGHT_RATIO = 0.27
INT8_RE = re.compile(r"int8: (\d+) tensors(?: \(per-tensor: opset (\d+)\))?")
ELIGIBLE = {"MatMul", "Gemm", "Conv", "ConvTranspose"}


# ---------------------------------------------------------------------------------------------
# oracles shared with test_int8_corpus.py
# ---------------------------------------------------------------------------------------------

def ref_quantize(np, w, axis):
    """(q int8, scale float32) by the contract's rule; ``axis`` None: per tensor (scalar).
    NaN and +-inf take no part in the maximum; NaN becomes 0 and +-inf +-127 (README)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    fin = np.isfinite(w)
    a = np.where(fin, np.abs(w), np.float32(0)).astype(np.float32)  # NaN/inf: not in the max

    def q_of(scale_b):
        with np.errstate(invalid="ignore", over="ignore"):
            q = np.round(np.where(fin, w, np.float32(0)) / scale_b)
        q = np.clip(q, -127, 127)
        q = np.where(np.isnan(w), 0, np.where(np.isinf(w), np.sign(w) * 127, q))
        return q.astype(np.int8)  # NaN -> 0, +-inf -> +-127
    if axis is None:
        amax = np.float32(np.max(a)) if w.size else np.float32(0)
        scale = np.float32(amax / np.float32(127))
        if amax == 0:
            scale = np.float32(1)
        return q_of(scale), np.array(scale, np.float32)
    axis = axis % w.ndim
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(a, axis=red) if red else a
    amax = amax.astype(np.float32)
    scale = (amax / np.float32(127)).astype(np.float32)
    scale[amax == 0] = np.float32(1)
    shape = [1] * w.ndim
    shape[axis] = -1
    return q_of(scale.reshape(shape)), scale


def opset_of(m):
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return 0


def attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            from onnx import helper
            return helper.get_attribute_value(a)
    return default


def weight_slot(node, gather):
    """(input index of the weight, channel axis given the weight's rank) or None."""
    if node.op_type in ("MatMul", "Conv", "ConvTranspose"):
        return 1, {"MatMul": -1, "Conv": 0, "ConvTranspose": 1}[node.op_type]
    if node.op_type == "Gemm":
        return 1, 0 if attr(node, "transB", 0) else 1
    if gather and node.op_type == "Gather" and attr(node, "axis", 0) == 0:
        return 0, 0
    return None


def expected_quant(np, m, min_elements=4096, gather=False):
    """Main-graph eligible weights of the ORIGINAL model: {node key: (weight name, axis)} where
    the node key is the node's first output, and the number of distinct weights (by content, as
    dedup merges them)."""
    from onnx import numpy_helper
    inits = {t.name: t for t in m.graph.initializer}
    graph_inputs = {i.name for i in m.graph.input}
    out, contents = {}, set()
    for n in m.graph.node:
        s = weight_slot(n, gather)
        if s is None or len(n.input) <= s[0]:
            continue
        name = n.input[s[0]]
        t = inits.get(name)
        if t is None or t.data_type != 1 or name in graph_inputs:
            continue
        a = numpy_helper.to_array(t)
        if a.size < min_elements or a.ndim == 0:
            continue
        if n.op_type == "MatMul" and a.ndim < 2:
            continue
        out[n.output[0]] = (name, s[1] % a.ndim)
        contents.add((a.dtype.str, a.shape, a.tobytes()))
    return out, len(contents)


def dedup_group(np, m, name):
    """Names of the initializers whose content equals ``name``'s (dedup's group)."""
    from onnx import numpy_helper
    inits = {t.name: t for t in m.graph.initializer}
    a = numpy_helper.to_array(inits[name])
    return {k for k, t in inits.items() if t.data_type == inits[name].data_type and
            tuple(t.dims) == tuple(inits[name].dims) and
            numpy_helper.to_array(t).tobytes() == a.tobytes()}


def quantized_in(m):
    """Main graph of a converted model: {consumer key: (consumer node, input index, DQ node)}
    for every node input produced by a DequantizeLinear whose x is an INT8 initializer
    (directly, or through Casts that --fp16 puts behind a FLOAT DequantizeLinear)."""
    inits = {t.name: t for t in m.graph.initializer}
    dq = {}
    for n in m.graph.node:  # topological order: a Cast of a DQ output comes after the DQ
        if n.op_type == "DequantizeLinear" and n.input and n.input[0] in inits and \
                inits[n.input[0]].data_type == 3:
            dq[n.output[0]] = n
        elif n.op_type == "Cast" and n.input and n.input[0] in dq:
            dq[n.output[0]] = dq[n.input[0]]  # DQ -> Cast(to=FLOAT16) -> consumer (--fp16)
    res = {}
    for n in m.graph.node:
        if n.op_type == "Cast" and n.input and n.input[0] in dq:
            continue
        for i, x in enumerate(n.input):
            if x in dq and n.output:
                res[(n.output[0], i)] = (n, i, dq[x])
    return res, dq


def cosine(np, ref, got):
    """(cosine similarity, worst abs error) of all outputs flattened, in float64."""
    a = np.concatenate([np.asarray(ref[k], np.float64).ravel() for k in ref])
    b = np.concatenate([np.asarray(got[k], np.float64).ravel() for k in ref])
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        cos = 1.0
    elif na == 0 or nb == 0:
        cos = 0.0
    else:
        cos = float(np.dot(a, b) / (na * nb))
    worst = float(np.max(np.abs(a - b))) if a.size else 0.0
    return cos, worst


def check_quantized(np, onnx, F, tag, orig, out, expect, per_tensor=False, fp16_scale=False,
                    min_elements=4096, gather=False):
    """Structure and bit-exactness of every quantized weight. Returns (fp32 bytes, int8+scale+zp
    bytes) of the quantized weights (each distinct INT8 initializer once)."""
    from onnx import numpy_helper
    oinits = {t.name: t for t in orig.graph.initializer}
    inits = {t.name: t for t in out.graph.initializer}
    onodes = {n.output[0]: n for n in orig.graph.node if n.output}
    qin, dqs = quantized_in(out)
    got_keys = {}
    for (key, i), (n, idx, dq) in qin.items():
        got_keys[key] = (n, idx, dq)
    want_keys = set(expect)
    extra = sorted(set(got_keys) - want_keys)
    missing = sorted(want_keys - set(got_keys))
    F.check(not extra, "%s: only eligible weights are quantized" % tag,
            "quantized but not eligible (consumer outputs): %s" % extra)
    F.check(not missing, "%s: every eligible weight is quantized" % tag,
            "eligible but read as FLOAT (consumer outputs, weight): %s" % [
                (k, expect[k][0]) for k in missing])
    fp32_bytes = q_bytes = 0
    seen_q = set()
    for key in sorted(set(got_keys) & want_keys):
        n, idx, dq = got_keys[key]
        wname, axis = expect[key]
        on = onodes.get(key)
        F.check(on is not None and on.op_type == n.op_type and
                (idx == (0 if n.op_type == "Gather" else 1)),
                "%s: %s reads the dequantized weight at its weight input" % (tag, key),
                "consumer %s input %d" % (n.op_type, idx))
        group = dedup_group(np, orig, wname)
        qn, sn = dq.input[0], dq.input[1] if len(dq.input) > 1 else ""
        zn = dq.input[2] if len(dq.input) > 2 else ""
        # The zero point may be one INT8-zeros tensor shared by all weights with the same
        # channel count (named after the first of them): only its suffix is checked.
        F.check(any(qn.startswith(g + "_quantized") for g in group) and
                any(sn.startswith(g + "_scale") for g in group) and
                "_zero_point" in zn and
                any(dq.output[0].startswith(g + "_dequantized") for g in group),
                "%s: names of %r's quantized tensors follow <W>_quantized/_scale/_dequantized, "
                "*_zero_point" % (tag, wname),
                "x=%r scale=%r zero_point=%r output=%r, W in %s" % (qn, sn, zn, dq.output[0],
                                                                     sorted(group)))
        w = numpy_helper.to_array(oinits[wname])
        q = numpy_helper.to_array(inits[qn])
        st = inits.get(sn)
        zt = inits.get(zn)
        F.check(q.dtype == np.int8 and q.shape == w.shape,
                "%s: %s is INT8 with the weight's shape" % (tag, qn),
                "dtype %s shape %s, weight %s" % (q.dtype, q.shape, w.shape))
        dq_axis = attr(dq, "axis", None)
        if per_tensor:
            rq, rs = ref_quantize(np, w, None)
            F.check(dq_axis is None, "%s: %s's DequantizeLinear has no axis (per-tensor)" % (
                tag, wname), "axis=%s" % dq_axis)
        else:
            rq, rs = ref_quantize(np, w, axis)
            eff = 1 if dq_axis is None else dq_axis % w.ndim
            F.check(eff == axis, "%s: %s's DequantizeLinear axis is %d (%s)" % (
                tag, wname, axis, n.op_type), "axis attribute %s" % dq_axis)
        if st is None or zt is None:
            F.fail("%s: %s's scale and zero point are initializers" % (tag, wname),
                   "scale %r zero point %r" % (sn, zn))
            continue
        s = numpy_helper.to_array(st)
        z = numpy_helper.to_array(zt)
        want_sdt = np.float16 if fp16_scale else np.float32
        F.check(s.dtype == want_sdt, "%s: %s's scale is %s" % (
            tag, wname, "FLOAT16" if fp16_scale else "FLOAT"), "scale dtype %s" % s.dtype)
        want_shape = () if per_tensor else (w.shape[axis],)
        F.check(s.shape == want_shape and z.shape == want_shape,
                "%s: %s's scale and zero point have shape %s" % (tag, wname, list(want_shape)),
                "scale %s zero point %s" % (list(s.shape), list(z.shape)))
        F.check(z.dtype == np.int8 and not np.any(z),
                "%s: %s's zero point is INT8 zeros" % (tag, wname),
                "dtype %s, %d non-zero" % (z.dtype, int(np.count_nonzero(z))))
        if fp16_scale and s.shape == rs.shape and s.dtype == np.float16:
            # FLOAT16 scale: q is rounded against the scale the model dequantizes with,
            # float32(float16(max|w|/127)) (clamped to +-127 like every q)
            shape = [1] * w.ndim
            if not per_tensor:
                shape[axis] = -1
            s32 = s.astype(np.float32).reshape(shape if not per_tensor else ())
            fin = np.isfinite(w)
            with np.errstate(invalid="ignore", over="ignore"):
                rq = np.clip(np.round(np.where(fin, w, np.float32(0)) / s32), -127, 127)
            rq = np.where(np.isnan(w), 0, np.where(np.isinf(w), np.sign(w) * 127, rq))
            rq = rq.astype(np.int8)
        if q.shape == rq.shape and q.dtype == np.int8:
            bad = q != rq
            F.check(not bad.any(), "%s: %s's INT8 values equal the numpy reference bit for bit"
                    % (tag, wname),
                    "%d of %d differ; first at %s: got %d want %d (w=%r, channel scale %r)" % (
                        int(bad.sum()), q.size, tuple(int(i) for i in np.argwhere(bad)[0]),
                        q[tuple(np.argwhere(bad)[0])], rq[tuple(np.argwhere(bad)[0])],
                        float(w[tuple(np.argwhere(bad)[0])]),
                        float(rs if per_tensor else rs[np.argwhere(bad)[0][axis]]))
                    if bad.any() else "")
        if s.shape == rs.shape:
            want_s = rs.astype(want_sdt)
            F.check(s.tobytes() == want_s.tobytes(),
                    "%s: %s's scale equals max|w|/127 (float32%s) bit for bit" % (
                        tag, wname, ", then float16" if fp16_scale else ""),
                    "%d of %d differ; e.g. got %r want %r" % (
                        int(np.count_nonzero(s != want_s)), s.size,
                        s.ravel()[np.argmax(s.ravel() != want_s.ravel())],
                        want_s.ravel()[np.argmax(s.ravel() != want_s.ravel())]))
        if qn not in seen_q:
            seen_q.add(qn)
            fp32_bytes += 4 * w.size
            q_bytes += q.size + s.nbytes + z.nbytes
    # consumers that are not eligible keep the FLOAT original; a weight without such consumers
    # is gone from the output
    qnames = {expect[k][0] for k in expect}
    for wname in sorted(qnames):
        others = [n for n in orig.graph.node for i, x in enumerate(n.input) if x == wname and
                  not (n.output and n.output[0] in expect and expect[n.output[0]][0] == wname)]
        oarr = numpy_helper.to_array(oinits[wname])
        if others:
            for on in others:
                mn = [n for n in out.graph.node if n.output and on.output and
                      n.output[0] == on.output[0]]
                if not mn:
                    F.fail("%s: ineligible consumer %s of %s is still there" % (
                        tag, on.output[0], wname))
                    continue
                ins = [x for x in mn[0].input if x in inits and inits[x].data_type == 1 and
                       numpy_helper.to_array(inits[x]).tobytes() == oarr.tobytes()]
                F.check(bool(ins), "%s: ineligible %s consumer of %s still reads the FLOAT "
                        "weight" % (tag, on.op_type, wname), "inputs %s" % list(mn[0].input))
        else:
            still = [t.name for t in out.graph.initializer if t.data_type == 1 and
                     tuple(t.dims) == oarr.shape and
                     numpy_helper.to_array(t).tobytes() == oarr.tobytes()]
            F.check(not still, "%s: FLOAT copy of %s is removed (no FLOAT consumer left)" % (
                tag, wname), "still present as %s" % still)
    return fp32_bytes, q_bytes


def main():
    np, onnx = C.import_deps("numpy", "onnx")
    C.import_deps("onnxruntime")
    args = C.parse_args(__doc__)
    from onnx import TensorProto, helper, numpy_helper
    g = C.gen_models()
    F = C.Failures()
    w = args.work
    rng = np.random.default_rng(21)
    FLOAT, I64 = TensorProto.FLOAT, TensorProto.INT64
    table = []

    def f32(a):
        return np.ascontiguousarray(a, dtype=np.float32)

    def vi(name, t, shape):
        return helper.make_tensor_value_info(name, t, shape)

    def small_model(name, nodes, inputs, outputs, inits, opset=17):
        gr = helper.make_graph(nodes, name, [vi(*i) for i in inputs],
                               [vi(*o) for o in outputs], initializer=inits)
        m = helper.make_model(gr, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 9 if opset >= 19 else 8
        return m

    def ort_or_ref(path, feeds):
        """(outputs, engine, note): onnxruntime, or the reference evaluator when onnxruntime
        has no kernel (noted)."""
        try:
            return C.run_model(path, feeds), "onnxruntime", ""
        except Exception as e:  # noqa: BLE001
            msg = str(e).splitlines()[0][:200]
            if "NOT_IMPLEMENTED" not in str(e) and "Could not find an implementation" \
                    not in str(e):
                raise
            from onnx.reference import ReferenceEvaluator
            m = onnx.load(path)
            r = ReferenceEvaluator(m).run(None, feeds)
            return dict(zip([o.name for o in m.graph.output], r)), "reference", msg

    def case(tag, m, feeds, opts=(), per_tensor_opset=None, no_quant_opset=None,
             fp16_scale=False, min_elements=4096, gather=False, extra=None, numeric=True):
        src = os.path.join(w, tag + ".onnx")
        dst = os.path.join(w, tag + ".int8.onnx")
        onnx.checker.check_model(m, full_check=True)
        g.save(m, src)
        orig = onnx.load(src)
        expect, k_want = expected_quant(np, orig, min_elements, gather)
        if no_quant_opset is not None:
            expect, k_want = {}, 0
        r = C.run(args.bin, "convert", "--int8", *opts, src, "-o", dst)
        what = "%s: convert --int8%s" % (tag, "".join(" " + o for o in opts))
        if not F.check(r.rc == 0 and os.path.isfile(dst), what + " exits 0", r.describe()):
            table.append((tag, None, None, None, "convert failed"))
            return None
        mt = INT8_RE.search(r.out)
        if no_quant_opset is not None:
            F.check(mt is None or int(mt.group(1)) == 0,
                    "%s: nothing quantized at opset %d" % (what, no_quant_opset), r.describe())
            F.check(re.search(r"opset\s*%d" % no_quant_opset, r.out + r.err) is not None,
                    "%s: the opset that prevented INT8 is reported (stdout or stderr)" % what,
                    r.describe())
        else:
            F.check(mt is not None and int(mt.group(1)) == k_want,
                    "%s: stdout reports 'int8: %d tensors'" % (what, k_want), r.describe())
            if per_tensor_opset is not None:
                F.check(mt is not None and mt.group(2) == str(per_tensor_opset),
                        "%s: stdout reports '(per-tensor: opset %d)'" % (what, per_tensor_opset),
                        r.describe())
            else:
                F.check(mt is None or mt.group(2) is None,
                        "%s: no per-tensor note at opset %d" % (what, opset_of(orig)),
                        r.describe())
        try:
            onnx.checker.check_model(dst, full_check=True)
            F.check(True, tag + ": checker full_check passes")
        except Exception as e:  # noqa: BLE001
            F.fail(tag + ": checker full_check passes", "%s\n%s" % (r.cmd(), str(e)[:600]))
        out = onnx.load(dst)
        if no_quant_opset is not None:
            qin, dqs = quantized_in(out)
            F.check(not dqs and not any(n.op_type == "DequantizeLinear" for n in out.graph.node),
                    "%s: no DequantizeLinear at opset %d" % (tag, no_quant_opset))
            F.check(not any(t.data_type == 3 for t in out.graph.initializer),
                    "%s: no INT8 initializer at opset %d" % (tag, no_quant_opset))
            b32 = bq = 0
        else:
            b32, bq = check_quantized(np, onnx, F, tag, orig, out, expect,
                                      per_tensor=per_tensor_opset is not None,
                                      fp16_scale=fp16_scale, min_elements=min_elements,
                                      gather=gather)
            if b32:
                F.check(bq <= MAX_WEIGHT_RATIO * b32,
                        "%s: INT8+scale+zero-point bytes <= %.0f%% of FP32" % (
                            tag, 100 * MAX_WEIGHT_RATIO),
                        "%d -> %d bytes (%.2f%%)" % (b32, bq, 100.0 * bq / b32))
        if not numeric:  # (NaN/inf weights: structure and bits only)
            table.append((tag, None, None, (b32, bq), "not run (non-finite weights)"))
            if extra:
                extra(orig, out, r)
            return out
        ref = C.run_model(src, feeds)
        try:
            got, engine, note = ort_or_ref(dst, feeds)
        except Exception as e:  # noqa: BLE001
            F.fail("%s: onnxruntime loads and runs the output" % tag,
                   "%s\n%s: %s" % (r.cmd(), type(e).__name__, str(e)[:600]))
            table.append((tag, None, None, (b32, bq), "onnxruntime failed"))
            return out
        if note:
            print("  %-24s onnxruntime has no kernel (%s): reference evaluator used" % (tag,
                                                                                        note))
        cos, worst = cosine(np, ref, got)
        print("  %-24s cosine %.6f  worst abs %.4g  weights %d -> %d bytes%s  [%s]" % (
            tag, cos, worst, b32, bq, " (%.2f%%)" % (100.0 * bq / b32) if b32 else "", engine),
            flush=True)
        F.check(cos >= MIN_COSINE, "%s: cosine similarity to FP32 >= %g (%s)" % (
            tag, MIN_COSINE, engine), "%s\ncosine %.6f, worst abs err %.4g" % (r.cmd(), cos,
                                                                               worst))
        table.append((tag, cos, worst, (b32, bq), engine))
        if extra:
            extra(orig, out, r)
        return out

    # 1. ALBERT-shaped: dedup first, shared weights quantized once ---------------------------
    albert = g.make_albert(layers=4, hidden=256, embed=128, ffn=1024, vocab=4000, heads=4,
                           seed=0)
    ids = {"input_ids": rng.integers(0, 4000, (1, 16)).astype(np.int64)}

    def albert_dedup(orig, out, r):
        n_dq = sum(1 for n in out.graph.node if n.op_type == "DequantizeLinear")
        F.check(n_dq == 7, "albert: 7 DequantizeLinear nodes (one per distinct weight)",
                "%d" % n_dq)
    out_albert = case("albert", albert, ids, extra=albert_dedup)
    case("albert_gather", albert, ids, opts=("--int8-gather",), gather=True)

    # 2. CNN: Conv (below and above the threshold), Gemm transB=1 and transB=0 ----------------
    cnn = g.make_cnn_int8()
    xin = {"x": f32(rng.normal(0, 1, (1, 3, 32, 32)))}

    def conv1_float(orig, out, r):
        t = [t for t in out.graph.initializer if t.name == "conv1.weight"]
        F.check(bool(t) and t[0].data_type == FLOAT,
                "cnn: conv1.weight (432 elements < 4096) stays FLOAT")
    out_cnn = case("cnn", cnn, xin, extra=conv1_float)
    case("cnn_min100", cnn, xin, opts=("--int8-min-elements", "100"), min_elements=100)

    # 3. transformer block ---------------------------------------------------------------------
    tb = g.make_transformer_block()
    tin = {"x": f32(rng.normal(0, 1, (1, 16, 256)))}
    case("transformer", tb, tin)

    # 4. ConvTranspose (axis 1), group 1 and group 2 -------------------------------------------
    ct = small_model("convtranspose", [
        helper.make_node("ConvTranspose", ["x", "ct1.weight", "ct1.bias"], ["c1"], name="ct1",
                         strides=[2, 2], kernel_shape=[4, 4], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("ConvTranspose", ["r1", "ct2.weight"], ["y"], name="ct2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2)],
        [("x", FLOAT, [1, 64, 8, 8])], [("y", FLOAT, [1, 32, 16, 16])],
        [numpy_helper.from_array(f32(rng.normal(0, 0.05, (64, 32, 4, 4))), "ct1.weight"),
         numpy_helper.from_array(f32(rng.normal(0, 0.05, 32)), "ct1.bias"),
         numpy_helper.from_array(f32(rng.normal(0, 0.1, (32, 16, 3, 3))), "ct2.weight")])
    case("convtranspose", ct, {"x": f32(rng.normal(0, 1, (1, 64, 8, 8)))})

    # 5. a weight shared by a MatMul and an Add; a weight just below the threshold -----------
    sh = small_model("shared", [
        helper.make_node("MatMul", ["x", "W"], ["m1"], name="mm1"),
        helper.make_node("Add", ["m1", "W"], ["a1"], name="add_w"),
        helper.make_node("MatMul", ["a1", "Wsmall"], ["y"], name="mm2")],
        [("x", FLOAT, [1, 64])], [("y", FLOAT, [64, 63])],
        [numpy_helper.from_array(f32(rng.normal(0, 0.1, (64, 64))), "W"),
         numpy_helper.from_array(f32(rng.normal(0, 0.1, (64, 63))), "Wsmall")])

    def shared_extra(orig, out, r):
        add = [n for n in out.graph.node if n.output and n.output[0] == "a1"]
        inits = {t.name: t for t in out.graph.initializer}
        wsrc = numpy_helper.to_array([t for t in orig.graph.initializer if t.name == "W"][0])
        ok = bool(add) and any(x in inits and inits[x].data_type == FLOAT and
                               numpy_helper.to_array(inits[x]).tobytes() == wsrc.tobytes()
                               for x in add[0].input)
        F.check(ok, "shared: the Add still reads W as the original FLOAT initializer",
                str(add[0] if add else "Add missing"))
        t = inits.get("Wsmall")
        F.check(t is not None and t.data_type == FLOAT,
                "shared: Wsmall (4032 elements < 4096) stays FLOAT")
    case("shared", sh, {"x": f32(rng.normal(0, 1, (1, 64)))}, extra=shared_extra)

    # 6. Gather embedding: --int8-gather quantizes it per row; plain --int8 does not ----------
    ge = small_model("gather", [
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="gather", axis=0),
        helper.make_node("MatMul", ["e", "proj"], ["y"], name="proj_mm")],
        [("ids", I64, [1, 8])], [("y", FLOAT, [1, 8, 128])],
        [numpy_helper.from_array(f32(rng.normal(0, 0.05, (1000, 64))), "emb"),
         numpy_helper.from_array(f32(rng.normal(0, 0.1, (64, 128))), "proj")])
    gfeeds = {"ids": rng.integers(0, 1000, (1, 8)).astype(np.int64)}

    def emb_float(orig, out, r):
        t = [t for t in out.graph.initializer if t.name == "emb"]
        F.check(bool(t) and t[0].data_type == FLOAT, "gather: emb stays FLOAT without "
                "--int8-gather")
    case("gather", ge, gfeeds, extra=emb_float)
    case("gather_int8gather", ge, gfeeds, opts=("--int8-gather",), gather=True)

    # 6b. non-finite and special values: NaN -> 0, +-inf -> +-127, neither in the maximum;
    # -0.0, denormals, an all-zero channel (scale 1), a channel of only NaN/inf (scale 1), a
    # channel whose maximum is a denormal
    wsp = f32(rng.normal(0, 0.1, (64, 80)))
    wsp[3, 0], wsp[5, 0], wsp[7, 0] = np.nan, np.inf, -np.inf
    wsp[:, 1] = 0.0
    wsp[:, 2] = -0.0
    wsp[:, 3] = np.nan
    wsp[::2, 3] = np.inf
    wsp[:, 4] = f32(rng.normal(0, 1, 64)) * np.float32(1e-39)  # denormals only
    wsp[10, 5] = np.float32(1e-41)
    wsp[:, 6] = f32(rng.normal(0, 1, 64)) * np.float32(3e38)  # huge values
    wsp[0, 7] = -1.0  # a negative maximum
    sp = small_model("special", [helper.make_node("MatMul", ["x", "Wsp"], ["y"], name="mm")],
                     [("x", FLOAT, [1, 64])], [("y", FLOAT, [1, 80])],
                     [numpy_helper.from_array(wsp, "Wsp")])
    case("special_values", sp, None, numeric=False)
    case("special_values_op11", small_model(
        "special11", [helper.make_node("MatMul", ["x", "Wsp"], ["y"], name="mm")],
        [("x", FLOAT, [1, 64])], [("y", FLOAT, [1, 80])],
        [numpy_helper.from_array(wsp, "Wsp")], opset=11), None, numeric=False,
        per_tensor_opset=11)

    # 7. opsets 10 and 11: per-tensor; opset 9: not quantized --------------------------------
    def mlp(opset):
        return small_model("mlp_opset%d" % opset, [
            helper.make_node("MatMul", ["x", "w1"], ["h1m"], name="mm1"),
            helper.make_node("Add", ["h1m", "b1"], ["h1a"], name="add1"),
            helper.make_node("Relu", ["h1a"], ["h1"], name="relu1"),
            helper.make_node("Gemm", ["h1", "w2", "b2"], ["h2"], name="gemm2", transB=1),
            helper.make_node("Relu", ["h2"], ["h2r"], name="relu2"),
            helper.make_node("Gemm", ["h2r", "w3", "b3"], ["y"], name="gemm3")],
            [("x", FLOAT, [2, 128])], [("y", FLOAT, [2, 64])],
            [numpy_helper.from_array(f32(np.random.default_rng(5).normal(0, 0.09, (128, 256))),
                                     "w1"),
             numpy_helper.from_array(f32(np.random.default_rng(6).normal(0, 0.05, 256)), "b1"),
             numpy_helper.from_array(f32(np.random.default_rng(7).normal(0, 0.06, (128, 256))),
                                     "w2"),
             numpy_helper.from_array(f32(np.random.default_rng(8).normal(0, 0.05, 128)), "b2"),
             numpy_helper.from_array(f32(np.random.default_rng(9).normal(0, 0.09, (128, 64))),
                                     "w3"),
             numpy_helper.from_array(f32(np.random.default_rng(10).normal(0, 0.05, 64)), "b3")],
            opset=opset)
    mfeeds = {"x": f32(rng.normal(0, 1, (2, 128)))}
    case("mlp_opset13", mlp(13), mfeeds)
    case("mlp_opset11", mlp(11), mfeeds, per_tensor_opset=11)
    case("mlp_opset10", mlp(10), mfeeds, per_tensor_opset=10)
    case("cnn_opset11", g.make_cnn_int8(opset=11), xin, per_tensor_opset=11)
    case("mlp_opset9", mlp(9), mfeeds, no_quant_opset=9)

    # 8. --int8 --fp16; scale dtype by opset --------------------------------------------------
    def fp16_rest(tag):
        def chk(orig, out, r):
            inits = {t.name: t for t in out.graph.initializer}
            bad = [n for n in ("attn.q.bias", "ffn.up.bias", "ln1.weight")
                   if n not in inits or inits[n].data_type != TensorProto.FLOAT16]
            F.check(not bad, "%s: weights that are not quantized become FLOAT16 (--fp16)" % tag,
                    "not FLOAT16: %s" % bad)
        return chk
    case("transformer_fp16_op17", tb, tin, opts=("--fp16",), fp16_scale=False,
         extra=fp16_rest("transformer_fp16_op17"))
    tb19 = g.make_transformer_block(opset=19)
    case("transformer_fp16_op19", tb19, tin, opts=("--fp16",), fp16_scale=True,
         extra=fp16_rest("transformer_fp16_op19"))
    case("transformer_op19", tb19, tin, fp16_scale=False)

    # 9. inspect --json / table on INT8 outputs -----------------------------------------------
    for tag in ("albert", "cnn", "transformer_fp16_op19", "mlp_opset11"):
        p = os.path.join(w, tag + ".int8.onnx")
        if not os.path.isfile(p):
            continue
        m = onnx.load(p)
        inits = {t.name: t for t in m.graph.initializer}
        xs, scales = set(), set()
        for n in m.graph.node:
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and \
                    inits[n.input[0]].data_type == 3:
                xs.add(n.input[0])
                if len(n.input) > 1 and n.input[1] in inits:
                    scales.add(n.input[1])
        want = {"tensors": len(xs),
                "bytes": sum(numpy_helper.to_array(inits[x]).nbytes for x in xs),
                "scale_bytes": sum(numpy_helper.to_array(inits[s]).nbytes for s in scales)}
        zps = {n.input[2] for n in m.graph.node if n.op_type == "DequantizeLinear" and
               n.input[0] in xs and len(n.input) > 2 and n.input[2] in inits}
        want_zp = sum(numpy_helper.to_array(inits[z]).nbytes for z in zps)
        r = C.run(args.bin, "inspect", "--json", p)
        try:
            j = json.loads(r.out)["files"][0]
        except Exception as e:  # noqa: BLE001
            F.fail("%s: inspect --json prints JSON" % tag, "%s\n%s" % (r.describe(), e))
            continue
        got = j.get("quantized")
        F.check(isinstance(got, dict) and all(got.get(k) == v for k, v in want.items()),
                "%s: inspect --json reports quantized %s" % (tag, want),
                "%s\ngot %s" % (r.cmd(), got))
        if isinstance(got, dict) and "zero_point_bytes" in got:  # (README: also reported)
            F.check(got["zero_point_bytes"] == want_zp,
                    "%s: inspect --json quantized.zero_point_bytes is %d (distinct zero-point "
                    "tensors)" % (tag, want_zp), "%s\ngot %s" % (r.cmd(), got))
        r = C.run(args.bin, "inspect", p)
        F.check(r.rc == 0 and re.search(r"quantiz|int8", r.out, re.I) is not None,
                "%s: inspect's table shows a quantized/int8 line" % tag, r.describe())

    print("\n  %-24s %10s %12s %14s  %s" % ("model", "cosine", "worst abs", "weight bytes",
                                             "engine"))
    for tag, cos, worst, wb, eng in table:
        print("  %-24s %10s %12s %14s  %s" % (
            tag, "-" if cos is None else "%.6f" % cos, "-" if worst is None else "%.4g" % worst,
            "-" if not wb or not wb[0] else "%.2f%%" % (100.0 * wb[1] / wb[0]), eng))
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
