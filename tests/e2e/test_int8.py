#!/usr/bin/env python3
"""End-to-end: `convert --int8` (weight-only INT8, symmetric, per output channel at every opset
from 7).

Models: the ALBERT-shaped encoder (hidden 256, ffn 1024, 4 layers, vocab 4000: per-layer weight
copies, so dedup must run first and every shared weight is quantized once), a CNN (Conv weights
below and above the 4096-element threshold, a Gemm head with transB=1 and one with transB=0),
a pre-LN transformer block (Q/K/V/O and FFN MatMuls), a ConvTranspose model (channel axis 1,
group 1 and 2; also at opset 11), a weight shared by a MatMul and an Add (the Add is not
eligible: it keeps the FLOAT initializer) next to a weight just below the threshold and a large
one; the same without the large one (quantizing would make the file larger: kept FP32, and the
byte count reported is checked against the contract's quantized model), a Gather embedding (with
and without --int8-gather), NaN/inf/denormal weights (opsets 17 and 11), an MLP at opsets 13,
12, 11, 10, 9, 7, 9 with IR 3 (initializers are graph inputs) and 6 (nothing quantized), the
CNN at opset 11, LSTM (bidirectional), GRU and RNN (reverse) with a MatMul head at opsets 11
and 14, MatMul weights held in Constant nodes (main graph and both branches of an If, a
main-graph weight read inside a branch, a small Constant that stays) at opsets 11 and 13, the
gain rule's boundaries at IR 8 and IR 3 (--int8-min-elements 1), and models where nothing is
quantized for each reason.

For each converted model the expectation comes from an oracle of the contract (expected_quant):
weights are FLOAT initializers (before IR 4 also those that are graph inputs, from IR 4 not
those) and, from IR 4, FLOAT Constant values read as a weight with at least --int8-min-elements
elements, whose name is declared once, read at the weight input of MatMul (B, channels on its
last axis), Gemm (axis 0 with transB=1, else 1), Conv (0), ConvTranspose (1), LSTM/GRU/RNN (W
and R, per direction and row), Gather with --int8-gather (0); with at least
--int8-min-elements elements and 3 x elements > 4 x channels + 160 (x2 before IR 4); nothing
below opset 7. Then:
  - `convert --int8 ...` exits 0 and prints `int8: K tensors` with K = the number of distinct
    (after dedup) weights to quantize, and no `per-tensor` note; when K is 0, `int8: 0 tensors:
    <why>` with the exact reason (opset, below the threshold, no gain, no eligible weight, or
    the file would grow), and every FLOAT weight is kept bit for bit, with no dequantizing node
    and no INT8 initializer;
  - onnx.checker.check_model(full_check=True) passes;
  - every eligible consumer (in any graph) reads its weight from, at opset >= 13,
    `DequantizeLinear(<W>_quantized, <W>_scale [C], <W>_zero_point [C] INT8 zeros, axis) ->
    <W>_dequantized` with axis = the channel axis; at opsets 7-12 and for recurrent weights at
    every opset, `Cast(<W>_quantized, to=FLOAT) -> <W>_int8_as_float` and
    `Mul(<W>_int8_as_float, <W>_scale) -> <W>_dequantized`, no zero point, the scale shaped to
    broadcast (MatMul [N], Gemm transB [N,1], Conv [O,1,1,1], ConvTranspose [O/g,1,1],
    recurrent [D,G*H,1]); no weight has a single per-tensor scale; an ineligible consumer of
    the same weight still reads the FLOAT original, bit for bit; a weight with no remaining
    FLOAT consumer is gone, and a lifted Constant node with it; before IR 4 the new
    initializers are graph inputs with their type and shape and a removed weight's input is
    gone, from IR 4 they are not graph inputs;
  - the INT8 tensor equals a numpy reference of the rule bit for bit: scale = max|w| / 127 over
    the channel in float32 (1 for an all-zero channel), q = np.round(w / scale) in float32
    (round half to even), clipped to [-127, 127]; each channel's scale equals that scale bit
    for bit; where the scale is FLOAT16 (--fp16: Cast+Mul, whose Cast is then to FLOAT16, and
    DequantizeLinear from opset 19) it is float16(scale) and q is rounded against
    float32(float16(scale)), the scale the model dequantizes with; with --bf16 refused (opset
    11) the scales stay the plain FLOAT values;
  - weight bytes: INT8 + scale + zero point bytes <= 27% of the FP32 bytes of the same weights,
    and (without --fp16/--bf16) the file is smaller than `convert` without --int8 makes it;
  - onnxruntime runs it and the output's cosine similarity to the FP32 model's (all outputs
    flattened, float64) is >= 0.999, for each set of feeds (both If conditions). Cosine and
    worst absolute error are printed per model.
NaN/inf weights are checked for structure and bits only (NaN -> 0, +-inf -> +-127, neither in
the maximum, as the README says). Also `--int8 --fp16` on the transformer block (opset 17:
FLOAT scales; opset 19: FLOAT16 scales; the biases become FLOAT16), run in onnxruntime
(reference evaluator when onnxruntime lacks a kernel), cosine >= 0.999; and `inspect --json` on
INT8 outputs of both forms reports `quantized: {tensors, bytes, scale_bytes,
zero_point_bytes}` matching the INT8 initializers that a DequantizeLinear or a Cast+Mul reads,
and the table shows `quantized: K INT8 weights`. A run that converted nothing or made no check
fails."""

import json
import os
import re
import sys
from collections import Counter
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_int8"
MIN_COSINE = 0.999
MAX_WEIGHT_RATIO = 0.27
# `int8: N tensors` and, when nothing was quantized, `: why` (which may hold commas) up to the
# next field of the line
INT8_RE = re.compile(r"int8: (\d+) tensors?(?:: (.*?))?(?=, (?:fp16|bf16)(?: storage)?: |"
                     r", tensors in |, not applied to |, on \S+|$)", re.M)
RECURRENT = {"LSTM", "GRU", "RNN"}
ELIGIBLE = {"MatMul", "Gemm", "Conv", "ConvTranspose"} | RECURRENT
NODE_BYTES = 160  # the gain rule's estimate of a dequantizing node's bytes (x2 before IR 4)
FLOAT, FLOAT16, INT8 = 1, 10, 3


# ---------------------------------------------------------------------------------------------
# oracles shared with test_int8_corpus.py
# ---------------------------------------------------------------------------------------------

def kept_dims(shape, axis, fold):
    """The dims that index a channel: [axis], or [0 .. axis] for recurrent W/R (per direction
    and row)."""
    return tuple(shape[:axis + 1]) if fold else (shape[axis],)


def q_against(np, w, scale_b):
    """INT8 of ``w`` against ``scale_b`` (broadcastable): round half to even in float32, clipped
    to [-127, 127]; NaN -> 0, +-inf -> +-127 (README)."""
    fin = np.isfinite(w)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        q = np.round(np.where(fin, w, np.float32(0)) / scale_b)
    q = np.clip(q, -127, 127)
    q = np.where(np.isnan(w), 0, np.where(np.isinf(w), np.sign(w) * 127, q))
    return q.astype(np.int8)


def ref_quantize(np, w, axis, fold=False):
    """(q int8, scale float32 shaped as the channel dims (kept_dims)) by the contract's rule:
    scale = max|w| / 127 over the channel in float32 (1 for a channel without a non-zero finite
    value). NaN and +-inf take no part in the maximum."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    axis = axis % w.ndim
    a = np.where(np.isfinite(w), np.abs(w), np.float32(0)).astype(np.float32)
    red = tuple(i for i in range(w.ndim) if (i > axis if fold else i != axis))
    amax = (np.max(a, axis=red) if red else a).astype(np.float32)
    scale = (amax / np.float32(127)).astype(np.float32)
    scale[amax == 0] = np.float32(1)
    return q_against(np, w, scale.reshape(bcast_shape(w.shape, axis, fold, keep=True))), scale


def bcast_shape(shape, axis, fold, keep=False):
    """The shape of Cast + Mul's scale: the weight's dims from the channel axis (from 0 for
    recurrent weights) up to it, then 1 for each later dim. ``keep``: with leading 1s, to
    broadcast against the weight in numpy."""
    lead = [] if fold or not keep else [1] * axis
    return tuple(lead) + kept_dims(shape, axis, fold) + (1,) * (len(shape) - axis - 1)


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


def node_key(n):
    """A node's key across conversion: its name, else its first output (--fp16 renames the
    outputs of nodes that produce a graph output)."""
    return n.name or (n.output[0] if n.output else "")


def weight_axis(node, idx, rank, gather):
    """(channel axis, fold) when input ``idx`` of ``node`` is a weight INT8 quantizes (``rank``:
    the weight's), else None. fold: recurrent W/R, whose channels are direction x row."""
    if node.domain not in ("", "ai.onnx"):
        return None
    op = node.op_type
    if op in RECURRENT and idx in (1, 2) and rank == 3:
        return 1, True
    if op == "MatMul" and idx == 1 and rank >= 2:
        return rank - 1, False
    if op == "Gemm" and idx == 1 and rank == 2:
        return (0 if attr(node, "transB", 0) else 1), False
    if op == "Conv" and idx == 1 and rank >= 3:
        return 0, False
    if op == "ConvTranspose" and idx == 1 and rank >= 3:
        return 1, False
    if gather and op == "Gather" and idx == 0 and rank >= 2 and attr(node, "axis", 0) == 0:
        return 0, False
    return None


def const_value(node):
    """The tensor of a default-domain Constant node's `value`, else None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or \
            len(node.output) != 1:
        return None
    for a in node.attribute:
        if a.name == "value" and a.HasField("t"):
            return a.t
    return None


def expected_quant(np, m, min_elements=4096, gather=False):
    """What `convert --int8` must do to the ORIGINAL model ``m``, by the contract:
      .uses     {consumer key (node_key): (weight, input index, axis, fold,
                 castmul, op)} for every eligible use of a weight that is quantized, in any graph;
      .weights  {name: info} of every weight read by an eligible op (quantized or not: .quant,
                 .reason), with .arr, .graph (index in C.all_graphs), .axis, .fold, .castmul
                 (Cast + Mul: opset < 13 or recurrent), .lifted (a Constant's value), .keep_float
                 (another consumer, another axis or a graph output still reads the FLOAT tensor);
      .k        the number of distinct weights (by content, as dedup merges them) quantized;
      .why      the reason the tool must give when .k is 0.
    Weights: FLOAT initializers (not graph inputs from IR 4; before IR 4 every initializer is a
    graph input too) and, from IR 4, FLOAT Constant values read as a weight with at least
    min_elements elements (lifted to initializers), whose name is declared once in the model; of
    at least min_elements elements; and only where 3*numel > 4*channels + 160 (x2 before IR 4).
    Nothing below opset 7. (The rule that the whole file must not grow is checked apart.)"""
    from onnx import numpy_helper
    E = SimpleNamespace(uses={}, weights={}, k=0, why="", opset=opset_of(m), ir=m.ir_version,
                        min_elements=min_elements, gather=gather)
    if E.opset < 7:
        E.why = "INT8 needs opset 7 and the model has opset %d" % E.opset
        return E
    graphs = C.all_graphs(m.graph)
    decl = Counter()
    for g in graphs:
        decl.update(t.name for t in g.initializer)
        decl.update(i.name for i in g.input)
        decl.update(o for n in g.node for o in n.output)
    gouts = {o.name for g in graphs for o in g.output}
    # every use of every name, in graph order
    uses = {}
    for g in graphs:
        for n in g.node:
            for i, x in enumerate(n.input):
                uses.setdefault(x, []).append((n, i))
    cands = []  # (name, tensor, graph index, lifted, const node)
    for gi, g in enumerate(graphs):
        ginputs = {i.name for i in g.input}
        for t in g.initializer:
            own = E.ir < 4 and t.name in ginputs
            if decl[t.name] == 1 + own:
                cands.append((t.name, t, gi, False, None))
        if E.ir >= 4:
            for n in g.node:
                t = const_value(n)
                if t is not None and decl[n.output[0]] == 1 and n.output[0] not in gouts:
                    cands.append((n.output[0], t, gi, True, n))
    for name, t, gi, lifted, cnode in cands:
        if t.data_type != FLOAT or len(t.dims) == 0:
            continue
        arr = numpy_helper.to_array(t)
        if arr.size == 0:
            continue
        us = [(n, i, weight_axis(n, i, arr.ndim, gather)) for n, i in uses.get(name, [])]
        first = next((a for _, _, a in us if a is not None), None)
        if first is None:
            continue
        if lifted and arr.size < min_elements:
            continue  # a Constant too small to quantize stays a Constant
        axis, fold = first
        channels = int(np.prod(kept_dims(arr.shape, axis, fold)))
        info = SimpleNamespace(name=name, arr=arr, graph=gi, lifted=lifted, const=cnode,
                               axis=axis, fold=fold, channels=channels,
                               castmul=fold or E.opset < 13, uses=us, quant=False, reason="")
        if arr.size < min_elements:
            info.reason = "small"
        elif 3 * arr.size <= 4 * channels + NODE_BYTES * (2 if E.ir < 4 else 1):
            info.reason = "no_gain"
        else:
            info.quant = True
        info.keep_float = name in gouts or any(a != first for _, _, a in us)
        E.weights[name] = info
    distinct = {}
    for info in E.weights.values():
        distinct.setdefault((info.arr.shape, info.arr.tobytes()), info)
    E.k = sum(1 for i in distinct.values() if i.quant)
    for info in E.weights.values():
        if info.quant:
            for n, i, a in info.uses:
                if a == (info.axis, info.fold) and node_key(n):
                    E.uses[node_key(n)] = (info.name, i, info.axis, info.fold, info.castmul,
                                           n.op_type)
    eligible = len(distinct)
    no_gain = sum(1 for i in distinct.values() if i.reason == "no_gain")
    small = [i.arr.size for i in distinct.values() if i.reason == "small"]
    if E.k:
        pass
    elif not eligible:
        E.why = "no FP32 weight feeds MatMul, Gemm, Conv, ConvTranspose, LSTM, GRU or RNN%s" % (
            " or Gather" if gather else "")
    elif no_gain:
        E.why = "no weight is large enough for INT8 to save bytes (%d too small)" % no_gain
    else:
        E.why = "no weight has %d elements (the largest of %d has %d)" % (
            min_elements, eligible, max(small))
    return E


def int8_line(r):
    """(tensors, why) from convert's line, or None."""
    mt = INT8_RE.search(r.out)
    return (int(mt.group(1)), mt.group(2) or "") if mt else None


def weight_arrays(m):
    """{name: (array, data type, dims)} of every initializer, in any graph, and (from IR 4) of
    every Constant value."""
    from onnx import numpy_helper
    out = {}
    for g in C.all_graphs(m.graph):
        for t in g.initializer:
            out[t.name] = t
        if m.ir_version >= 4:
            for n in g.node:
                t = const_value(n)
                if t is not None:
                    out[n.output[0]] = t
    return {k: (numpy_helper.to_array(t), t.data_type, tuple(t.dims)) for k, t in out.items()}


def dedup_group(np, arrays, name):
    """Names of the tensors whose content equals ``name``'s (dedup's group)."""
    a, dt, dims = arrays[name]
    return {k for k, (b, dt2, dims2) in arrays.items() if dt2 == dt and dims2 == dims and
            b.tobytes() == a.tobytes()}


def quantized_in(m):
    """A converted model, all graphs: ({(consumer key, input index): (consumer node, input
    index, deq)}, {dequantized output: deq}) for every node input that reads an INT8
    initializer dequantized by either form:
      deq.kind 'dql':     DequantizeLinear(q, scale[, zero point]) (.node; .zp; .axis), also
                          through the Casts that --fp16 puts behind a FLOAT DequantizeLinear;
      deq.kind 'castmul': Cast(q) -> Mul with an initializer (.cast, .node the Mul; .zp None).
    deq.q, deq.scale, deq.out name the tensors; the consumer key is node_key."""
    graphs = C.all_graphs(m.graph)
    inits = {t.name: t for g in graphs for t in g.initializer}
    dq, casts = {}, {}
    for gi, g in enumerate(graphs):
        for n in g.node:  # topological order within a graph
            if n.op_type == "DequantizeLinear" and n.input and n.input[0] in inits and \
                    inits[n.input[0]].data_type == INT8:
                dq[n.output[0]] = SimpleNamespace(
                    kind="dql", node=n, cast=None, q=n.input[0],
                    scale=n.input[1] if len(n.input) > 1 else "",
                    zp=n.input[2] if len(n.input) > 2 else "", out=n.output[0],
                    axis=attr(n, "axis", None), graph=gi)
            elif n.op_type == "Cast" and n.input and n.input[0] in inits and \
                    inits[n.input[0]].data_type == INT8:
                casts[n.output[0]] = n
            elif n.op_type == "Mul" and len(n.input) == 2 and \
                    any(x in casts for x in n.input):
                c = n.input[0] if n.input[0] in casts else n.input[1]
                s = n.input[1] if c == n.input[0] else n.input[0]
                if s in inits:
                    dq[n.output[0]] = SimpleNamespace(
                        kind="castmul", node=n, cast=casts[c], q=casts[c].input[0], scale=s,
                        zp=None, out=n.output[0], axis=None, graph=gi)
            elif n.op_type == "Cast" and n.input and n.input[0] in dq and \
                    dq[n.input[0]].kind == "dql":
                dq[n.output[0]] = dq[n.input[0]]  # DQ -> Cast(to=FLOAT16) -> consumer (--fp16)
    res = {}
    for g in graphs:
        for n in g.node:
            if n.op_type == "Cast" and n.input and n.input[0] in dq:
                continue
            for i, x in enumerate(n.input):
                if x in dq and node_key(n):
                    res[(node_key(n), i)] = (n, i, dq[x])
    return res, dq


def quantized_tensors(m):
    """The INT8 initializers of a converted model that a dequantizing node of either form reads,
    with their scale and zero-point tensors: (set of q names, set of scale names, set of zero
    point names)."""
    _, dq = quantized_in(m)
    return ({d.q for d in dq.values()}, {d.scale for d in dq.values()},
            {d.zp for d in dq.values() if d.zp})


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


def check_quantized(np, onnx, F, tag, orig, out, E, fp16=False):
    """Structure and bit-exactness of every quantized weight of ``out`` against the expectation
    ``E`` (expected_quant of ``orig``). ``fp16``: --fp16 was given and applied: Cast + Mul
    scales (and DequantizeLinear's from opset 19) are FLOAT16 and q is rounded against them.
    Returns (fp32 bytes, int8+scale+zp bytes) of the quantized weights (each distinct INT8
    initializer once)."""
    from onnx import numpy_helper
    oarrs = weight_arrays(orig)
    graphs = C.all_graphs(out.graph)
    inits = {t.name: t for g in graphs for t in g.initializer}
    qin, dqs = quantized_in(out)
    got_keys = {}
    for (key, i), v in qin.items():
        got_keys[key] = v
    extra = sorted(set(got_keys) - set(E.uses))
    missing = sorted(set(E.uses) - set(got_keys))
    F.check(not extra, "%s: only eligible weights are quantized" % tag,
            "quantized but not eligible (consumers): %s" % extra)
    F.check(not missing, "%s: every eligible weight is quantized" % tag,
            "eligible but read as FLOAT (consumer, weight): %s" % [
                (k, E.uses[k][0]) for k in missing])
    fp32_bytes = q_bytes = 0
    seen_q = set()
    for key in sorted(set(got_keys) & set(E.uses)):
        n, idx, d = got_keys[key]
        wname, widx, axis, fold, castmul, op = E.uses[key]
        form = "Cast+Mul" if castmul else "DequantizeLinear"
        F.check(n.op_type == op and idx == widx,
                "%s: %s reads the dequantized weight at its weight input" % (tag, key),
                "consumer %s input %d, want %s input %d" % (n.op_type, idx, op, widx))
        F.check(d.kind == ("castmul" if castmul else "dql"),
                "%s: %s is dequantized by %s (opset %d%s)" % (
                    tag, wname, form, E.opset, ", recurrent" if fold else ""),
                "got %s" % ("Cast+Mul" if d.kind == "castmul" else "DequantizeLinear"))
        group = dedup_group(np, oarrs, wname)
        ok_names = any(d.q.startswith(g + "_quantized") for g in group) and \
            any(d.scale.startswith(g + "_scale") for g in group) and \
            any(d.out.startswith(g + "_dequantized") for g in group)
        if d.kind == "dql":
            # The zero point may be one INT8-zeros tensor shared by all weights with the same
            # channel count (named after the first of them): only its suffix is checked.
            ok_names = ok_names and "_zero_point" in d.zp
        else:
            ok_names = ok_names and any(d.cast.output[0].startswith(g + "_int8_as_float")
                                        for g in group)
        F.check(ok_names, "%s: names of %r's quantized tensors follow <W>_quantized/_scale/"
                "_dequantized, %s" % (tag, wname, "*_zero_point" if d.kind == "dql" else
                                      "<W>_int8_as_float"),
                "x=%r scale=%r zero_point=%r cast output=%r output=%r, W in %s" % (
                    d.q, d.scale, d.zp, d.cast.output[0] if d.cast else None, d.out,
                    sorted(group)))
        w = E.weights[wname].arr
        q = numpy_helper.to_array(inits[d.q])
        st = inits.get(d.scale)
        F.check(q.dtype == np.int8 and q.shape == w.shape,
                "%s: %s is INT8 with the weight's shape" % (tag, d.q),
                "dtype %s shape %s, weight %s" % (q.dtype, q.shape, w.shape))
        lowp = fp16 and (d.kind == "castmul" or E.opset >= 19)  # the scale's type: FLOAT16
        if d.kind == "dql":
            dq_axis = d.axis
            eff = 1 if dq_axis is None else dq_axis % w.ndim
            F.check(eff == axis, "%s: %s's DequantizeLinear axis is %d (%s)" % (
                tag, wname, axis, n.op_type), "axis attribute %s" % dq_axis)
            zt = inits.get(d.zp)
            want_shape = (w.shape[axis],)
        else:
            zt = None
            to = attr(d.cast, "to", None)
            want_to = FLOAT16 if lowp else FLOAT
            F.check(to == want_to and len(d.cast.input) == 1,
                    "%s: %s's Cast is to %s" % (tag, wname, "FLOAT16" if lowp else "FLOAT"),
                    "Cast to=%s inputs %s" % (to, list(d.cast.input)))
            F.check(list(d.node.input) == [d.cast.output[0], d.scale],
                    "%s: %s's Mul reads (<W>_int8_as_float, <W>_scale) and nothing else" % (
                        tag, wname), "Mul inputs %s" % list(d.node.input))
            F.check(not any(x.startswith(wname + "_zero_point") for x in inits),
                    "%s: %s has no zero point (Cast+Mul)" % (tag, wname),
                    "initializers %s" % sorted(x for x in inits if "_zero_point" in x))
            want_shape = bcast_shape(w.shape, axis, fold)
        if st is None or (d.kind == "dql" and zt is None):
            F.fail("%s: %s's scale%s are initializers" % (
                tag, wname, " and zero point" if d.kind == "dql" else ""),
                "scale %r zero point %r" % (d.scale, d.zp))
            continue
        s = numpy_helper.to_array(st)
        want_sdt = np.float16 if lowp else np.float32
        F.check(s.dtype == want_sdt, "%s: %s's scale is %s" % (
            tag, wname, "FLOAT16" if lowp else "FLOAT"), "scale dtype %s" % s.dtype)
        F.check(s.shape == want_shape, "%s: %s's scale has shape %s (%s)" % (
            tag, wname, list(want_shape), form), "scale %s" % list(s.shape))
        zb = 0
        if zt is not None:
            z = numpy_helper.to_array(zt)
            zb = z.nbytes
            F.check(z.shape == want_shape, "%s: %s's zero point has shape %s" % (
                tag, wname, list(want_shape)), "zero point %s" % list(z.shape))
            F.check(z.dtype == np.int8 and not np.any(z),
                    "%s: %s's zero point is INT8 zeros" % (tag, wname),
                    "dtype %s, %d non-zero" % (z.dtype, int(np.count_nonzero(z))))
        rq, rs = ref_quantize(np, w, axis, fold)
        if lowp and s.size == rs.size and s.dtype == np.float16:
            # FLOAT16 scale: q is rounded against the scale the model dequantizes with,
            # float32(float16(max|w|/127))
            rq = q_against(np, np.asarray(w, np.float32), s.astype(np.float32).reshape(
                bcast_shape(w.shape, axis, fold, keep=True)))
        if q.shape == rq.shape and q.dtype == np.int8:
            bad = q != rq
            at = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.any() else ()
            F.check(not bad.any(), "%s: %s's INT8 values equal the numpy reference bit for bit"
                    % (tag, wname),
                    "%d of %d differ; first at %s: got %d want %d (w=%r, channel scale %r)" % (
                        int(bad.sum()), q.size, at, q[at], rq[at], float(w[at]),
                        float(rs[at[:axis + 1]] if fold else rs[at[axis]])) if at else "")
        if s.size == rs.size:
            want_s = rs.astype(want_sdt).ravel()
            got_s = s.ravel()
            F.check(got_s.tobytes() == want_s.tobytes(),
                    "%s: %s's %d scales equal max|w|/127 per channel (float32%s) bit for bit" % (
                        tag, wname, rs.size, ", then float16" if lowp else ""),
                    "%d of %d differ; e.g. channel %d: got %r want %r" % (
                        int(np.count_nonzero(got_s != want_s)), s.size,
                        int(np.argmax(got_s != want_s)),
                        got_s[np.argmax(got_s != want_s)], want_s[np.argmax(got_s != want_s)]))
        if d.q not in seen_q:
            seen_q.add(d.q)
            fp32_bytes += 4 * w.size
            q_bytes += q.size + s.nbytes + zb
    # consumers that are not eligible keep the FLOAT original; a weight without such consumers
    # is gone from the output (and, before IR 4, its graph input with it); a lifted Constant is
    # gone
    onodes = {node_key(n): n for g in graphs for n in g.node if node_key(n)}
    for wname in sorted({E.uses[k][0] for k in E.uses}):
        info = E.weights[wname]
        others = [(n, i) for n, i, a in info.uses if a != (info.axis, info.fold)]
        if others:
            for on, i in others:
                mn = onodes.get(node_key(on))
                if mn is None:
                    F.fail("%s: ineligible consumer %s of %s is still there" % (
                        tag, node_key(on) or on.op_type, wname))
                    continue
                x = mn.input[i] if i < len(mn.input) else ""
                t = inits.get(x)
                F.check(t is not None and t.data_type == FLOAT and
                        numpy_helper.to_array(t).tobytes() == info.arr.tobytes(),
                        "%s: ineligible %s consumer of %s still reads the FLOAT weight" % (
                            tag, on.op_type, wname), "inputs %s" % list(mn.input))
        elif not info.keep_float:
            still = [t.name for t in inits.values() if t.data_type == FLOAT and
                     tuple(t.dims) == info.arr.shape and
                     numpy_helper.to_array(t).tobytes() == info.arr.tobytes()]
            F.check(not still, "%s: FLOAT copy of %s is removed (no FLOAT consumer left)" % (
                tag, wname), "still present as %s" % still)
        if info.lifted:
            left = [n.op_type for g in graphs for n in g.node if wname in n.output]
            F.check(not left, "%s: the Constant node that held %s is gone (lifted)" % (
                tag, wname), "still produced by %s" % left)
    # graph inputs: before IR 4 every new initializer is also declared as a graph input (its
    # type and shape) and a removed FP32 weight's input is gone; from IR 4 none is an input
    for gi, g in enumerate(graphs):
        ginputs = {i.name: i for i in g.input}
        new = [t for t in g.initializer if t.name in
               {x for d in dqs.values() if d.graph == gi for x in (d.q, d.scale, d.zp) if x}]
        if not new:
            continue
        if E.ir < 4:
            bad = []
            for t in new:
                i = ginputs.get(t.name)
                tt = i.type.tensor_type if i is not None else None
                if tt is None or tt.elem_type != t.data_type or \
                        [dd.dim_value for dd in tt.shape.dim] != list(t.dims):
                    bad.append(t.name)
            F.check(not bad, "%s: IR %d: the %d new initializers of graph %d are graph inputs "
                    "with their type and shape" % (tag, E.ir, len(new), gi),
                    "missing or wrong: %s" % bad)
            inits_g = {t.name for t in g.initializer}
            orphan = [x for x in ginputs if x in E.weights and x not in inits_g]
            F.check(not orphan, "%s: IR %d: no graph input is left for a removed FP32 weight" %
                    (tag, E.ir), "inputs without initializer: %s" % orphan)
        else:
            bad = [t.name for t in new if t.name in ginputs]
            F.check(not bad, "%s: IR %d: the new initializers are not graph inputs" % (
                tag, E.ir), "declared as inputs: %s" % bad)
    return fp32_bytes, q_bytes


def check_nothing_quantized(np, F, tag, orig, out, why_what):
    """No dequantizing node, no INT8 initializer, and every FLOAT weight of ``orig`` still in
    ``out`` with the same bytes."""
    from onnx import numpy_helper
    qin, dqs = quantized_in(out)
    graphs = C.all_graphs(out.graph)
    F.check(not dqs and not any(n.op_type == "DequantizeLinear" for g in graphs
                                for n in g.node),
            "%s: no dequantizing node (%s)" % (tag, why_what),
            "dequantized: %s" % sorted(dqs))
    F.check(not any(t.data_type == INT8 for g in graphs for t in g.initializer),
            "%s: no INT8 initializer (%s)" % (tag, why_what))
    oarrs = {k: v for k, v in weight_arrays(orig).items() if v[1] == FLOAT}
    got = {t.name: t for g in graphs for t in g.initializer}
    consts = {n.output[0]: n for g in graphs for n in g.node if const_value(n) is not None}
    changed = []
    for k, (a, _, _) in oarrs.items():
        if k in got:
            b = numpy_helper.to_array(got[k])
        elif k in consts:
            b = numpy_helper.to_array(const_value(consts[k]))
        else:
            changed.append(k + " (gone)")
            continue
        if b.dtype != a.dtype or b.tobytes() != a.tobytes():
            changed.append(k)
    F.check(not changed, "%s: every FLOAT weight is kept bit for bit (%s)" % (tag, why_what),
            "changed: %s" % changed)


def quantize_like_contract(np, onnx, m, E):
    """``m`` quantized in Python by the contract (names, nodes, initializers, graph inputs before
    IR 4): what the tool would have written had it quantized; its size decides the rule that
    the file must not grow."""
    from onnx import helper, numpy_helper
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    graphs = C.all_graphs(m2.graph)
    zshare = {}
    for wname, info in E.weights.items():
        if not info.quant:
            continue
        g = graphs[info.graph]
        q, s = ref_quantize(np, info.arr, info.axis, info.fold)
        new = [numpy_helper.from_array(s.reshape(bcast_shape(info.arr.shape, info.axis,
                                                             info.fold)) if info.castmul
                                       else s.ravel(), wname + "_scale")]
        if info.castmul:
            nodes = [helper.make_node("Cast", [wname + "_quantized"], [wname + "_int8_as_float"],
                                      name=wname + "_Cast", to=FLOAT),
                     helper.make_node("Mul", [wname + "_int8_as_float", wname + "_scale"],
                                      [wname + "_dequantized"],
                                      name=wname + "_DequantizeLinear")]
        else:
            zk = (info.graph, info.channels)
            if zk not in zshare:
                zshare[zk] = wname + "_zero_point"
                new.append(numpy_helper.from_array(np.zeros(info.channels, np.int8),
                                                   zshare[zk]))
            nodes = [helper.make_node("DequantizeLinear", [wname + "_quantized", wname + "_scale",
                                                           zshare[zk]], [wname + "_dequantized"],
                                      name=wname + "_DequantizeLinear", axis=info.axis)]
        new.append(numpy_helper.from_array(q, wname + "_quantized"))
        for t in new:
            g.initializer.append(t)
            if E.ir < 4:
                g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        old = list(g.node)
        del g.node[:]
        g.node.extend(nodes + old)
        for gg in graphs:
            for n in gg.node:
                for i, x in enumerate(n.input):
                    if x == wname and weight_axis(n, i, info.arr.ndim, E.gather) == \
                            (info.axis, info.fold):
                        n.input[i] = wname + "_dequantized"
        if not info.keep_float and not any(x == wname for gg in graphs for n in gg.node
                                           for x in n.input):
            keep = [t for t in g.initializer if t.name != wname]
            del g.initializer[:]
            g.initializer.extend(keep)
            keep = [i for i in g.input if i.name != wname]
            del g.input[:]
            g.input.extend(keep)
    return m2


def main():
    np, onnx = C.import_deps("numpy", "onnx")
    C.import_deps("onnxruntime")
    args = C.parse_args(__doc__)
    C.require_jsonschema()
    from onnx import TensorProto, helper, numpy_helper
    g = C.gen_models()
    F = C.Failures()
    w = args.work
    rng = np.random.default_rng(21)
    I64 = TensorProto.INT64
    table = []
    n_cases = [0, 0]  # cases, cases converted

    def f32(a):
        return np.ascontiguousarray(a, dtype=np.float32)

    def vi(name, t, shape):
        return helper.make_tensor_value_info(name, t, shape)

    def small_model(name, nodes, inputs, outputs, inits, opset=17, ir=None):
        """A model; ``ir`` < 4: every initializer is declared as a graph input too."""
        ins = [vi(*i) for i in inputs]
        if ir is not None and ir < 4:
            ins += [vi(t.name, t.data_type, list(t.dims)) for t in inits]
        gr = helper.make_graph(nodes, name, ins, [vi(*o) for o in outputs], initializer=inits)
        m = helper.make_model(gr, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = ir if ir is not None else 9 if opset >= 19 else 8
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

    def checker_ok(tag, path, r):
        try:
            onnx.checker.check_model(path, full_check=True)
            err = ""
        except Exception as e:  # noqa: BLE001
            err = str(e)[:600]
        F.check(not err, tag + ": checker full_check passes", "%s\n%s" % (r.cmd(), err))

    def case(tag, m, feeds, opts=(), fp16=False, min_elements=4096, gather=False, extra=None,
             numeric=True, why=None, kept=False):
        """Convert ``m`` with --int8 and check it against expected_quant. ``feeds``: a dict or
        a list of dicts (each run). ``why``: the exact reason the line must give when nothing
        is quantized (also checked against the oracle's). ``kept``: the model is one where
        quantizing would make the file larger: the tool must say so and keep FP32."""
        n_cases[0] += 1
        src = os.path.join(w, tag + ".onnx")
        dst = os.path.join(w, tag + ".int8.onnx")
        onnx.checker.check_model(m, full_check=True)
        g.save(m, src)
        orig = onnx.load(src)
        E = expected_quant(np, orig, min_elements, gather)
        r = C.run(args.bin, "convert", "--int8", *opts, src, "-o", dst)
        what = "%s: convert --int8%s" % (tag, "".join(" " + o for o in opts))
        if not F.check(r.rc == 0 and os.path.isfile(dst), what + " exits 0", r.describe()):
            table.append((tag, None, None, None, "convert failed"))
            return None
        n_cases[1] += 1
        line = int8_line(r)
        k_got, why_got = line if line else (None, None)
        out = onnx.load(dst)
        b32 = bq = 0
        if kept:
            F.check(E.k > 0, "%s: the oracle has weights to quantize (the case is built so)" %
                    tag, "why %r" % E.why)
            mk = re.fullmatch(r"quantizing (\d+) tensors? would make the file (%s) "
                              r"larger; kept FP32" % C.SIZE, why_got or "")
            F.check(k_got == 0 and mk is not None and int(mk.group(1)) == E.k,
                    "%s: reports 'int8: 0 tensors: quantizing %d tensors would make the file M "
                    "larger; kept FP32'" % (what, E.k), r.describe())
            # M: the contract's quantized model against the FP32 file the tool wrote
            Eo = expected_quant(np, out, min_elements, gather)
            grow = quantize_like_contract(np, onnx, out, Eo).ByteSize() - out.ByteSize()
            F.check(grow > 0 and mk is not None and mk.group(2) == C.human_bytes(grow),
                    "%s: M is what the quantized model would add (%d bytes: %s)" % (
                        tag, grow, C.human_bytes(grow)), r.describe())
            check_nothing_quantized(np, F, tag, orig, out, "quantizing would grow the file")
        elif E.k == 0:
            F.check(k_got == 0 and why_got == E.why,
                    "%s: reports 'int8: 0 tensors: %s'" % (what, E.why), r.describe())
            if why is not None:
                F.check(E.why == why, "%s: the oracle's reason is %r" % (tag, why),
                        "oracle: %r" % E.why)
            check_nothing_quantized(np, F, tag, orig, out, E.why)
        else:
            F.check(k_got == E.k and why_got == "",
                    "%s: reports 'int8: %d tensors' and no reason" % (what, E.k), r.describe())
            F.check("per-tensor" not in r.out + r.err,
                    "%s: no per-tensor note" % what, r.describe())
        checker_ok(tag, dst, r)
        if E.k and not kept:
            b32, bq = check_quantized(np, onnx, F, tag, orig, out, E, fp16=fp16)
            if b32:
                F.check(bq <= MAX_WEIGHT_RATIO * b32,
                        "%s: INT8+scale+zero-point bytes <= %.0f%% of FP32" % (
                            tag, 100 * MAX_WEIGHT_RATIO),
                        "%d -> %d bytes (%.2f%%)" % (b32, bq, 100.0 * bq / b32))
            if not any(o in ("--fp16", "--bf16") for o in opts):
                # INT8 never makes the file larger: smaller than the same conversion without it
                base = os.path.join(w, tag + ".noint8.onnx")
                bopts = [o for i, o in enumerate(opts) if not o.startswith("--int8") and
                         not (i and opts[i - 1] == "--int8-min-elements")]
                rb = C.run(args.bin, "convert", *bopts, src, "-o", base)
                F.check(rb.rc == 0 and os.path.getsize(dst) < os.path.getsize(base),
                        "%s: the INT8 file is smaller than the file without --int8" % tag,
                        "%s\n%s: %d bytes vs %d" % (r.cmd(), rb.cmd(), os.path.getsize(dst),
                                                    os.path.getsize(base)
                                                    if os.path.isfile(base) else -1))
        if not numeric:  # (NaN/inf weights, or no runtime for the opset: structure only)
            table.append((tag, None, None, (b32, bq), "not run"))
            if extra:
                extra(orig, out, r)
            return out
        worst_cos, worst_abs, engine = 1.0, 0.0, ""
        for fi, fd in enumerate(feeds if isinstance(feeds, list) else [feeds]):
            ref = C.run_model(src, fd)
            try:
                got, engine, note = ort_or_ref(dst, fd)
            except Exception as e:  # noqa: BLE001
                F.fail("%s: onnxruntime loads and runs the output" % tag,
                       "%s\n%s: %s" % (r.cmd(), type(e).__name__, str(e)[:600]))
                table.append((tag, None, None, (b32, bq), "onnxruntime failed"))
                return out
            if note:
                print("  %-24s onnxruntime has no kernel (%s): reference evaluator used" % (
                    tag, note))
            cos, worst = cosine(np, ref, got)
            F.check(cos >= MIN_COSINE, "%s: cosine similarity to FP32 >= %g (%s, feeds %d)" % (
                tag, MIN_COSINE, engine, fi), "%s\ncosine %.6f, worst abs err %.4g" % (
                    r.cmd(), cos, worst))
            worst_cos, worst_abs = min(worst_cos, cos), max(worst_abs, worst)
        print("  %-24s cosine %.6f  worst abs %.4g  weights %d -> %d bytes%s  [%s]" % (
            tag, worst_cos, worst_abs, b32, bq, " (%.2f%%)" % (100.0 * bq / b32) if b32 else "",
            engine), flush=True)
        table.append((tag, worst_cos, worst_abs, (b32, bq), engine))
        if extra:
            extra(orig, out, r)
        return out

    def init_of(out, name):
        return next((t for gg in C.all_graphs(out.graph) for t in gg.initializer
                     if t.name == name), None)

    # 1. ALBERT-shaped: dedup first, shared weights quantized once ---------------------------
    albert = g.make_albert(layers=4, hidden=256, embed=128, ffn=1024, vocab=4000, heads=4,
                           seed=0)
    ids = {"input_ids": rng.integers(0, 4000, (1, 16)).astype(np.int64)}

    def albert_dedup(orig, out, r):
        n_dq = sum(1 for n in out.graph.node if n.op_type == "DequantizeLinear")
        F.check(n_dq == 7, "albert: 7 DequantizeLinear nodes (one per distinct weight)",
                "%d" % n_dq)
    case("albert", albert, ids, extra=albert_dedup)
    case("albert_gather", albert, ids, opts=("--int8-gather",), gather=True)

    # 2. CNN: Conv (below and above the threshold), Gemm transB=1 and transB=0 ----------------
    cnn = g.make_cnn_int8()
    xin = {"x": f32(rng.normal(0, 1, (1, 3, 32, 32)))}

    def conv1_float(orig, out, r):
        t = init_of(out, "conv1.weight")
        F.check(t is not None and t.data_type == FLOAT,
                "cnn: conv1.weight (432 elements < 4096) stays FLOAT")
    case("cnn", cnn, xin, extra=conv1_float)
    case("cnn_min100", cnn, xin, opts=("--int8-min-elements", "100"), min_elements=100)

    # 3. transformer block ---------------------------------------------------------------------
    tb = g.make_transformer_block()
    tin = {"x": f32(rng.normal(0, 1, (1, 16, 256)))}
    case("transformer", tb, tin)

    # 4. ConvTranspose (axis 1), group 1 and group 2; at opset 11 Cast+Mul [O/g, 1, 1] --------
    def convtranspose(opset):
        r2 = np.random.default_rng(31)
        return small_model("convtranspose", [
            helper.make_node("ConvTranspose", ["x", "ct1.weight", "ct1.bias"], ["c1"],
                             name="ct1", strides=[2, 2], kernel_shape=[4, 4],
                             pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("ConvTranspose", ["r1", "ct2.weight"], ["y"], name="ct2",
                             kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2)],
            [("x", FLOAT, [1, 64, 8, 8])], [("y", FLOAT, [1, 32, 16, 16])],
            [numpy_helper.from_array(f32(r2.normal(0, 0.05, (64, 32, 4, 4))), "ct1.weight"),
             numpy_helper.from_array(f32(r2.normal(0, 0.05, 32)), "ct1.bias"),
             numpy_helper.from_array(f32(r2.normal(0, 0.1, (32, 16, 3, 3))), "ct2.weight")],
            opset=opset)
    ctin = {"x": f32(rng.normal(0, 1, (1, 64, 8, 8)))}
    case("convtranspose", convtranspose(17), ctin)

    def ct_shapes(orig, out, r):
        want = {"ct1.weight_scale": [32, 1, 1], "ct2.weight_scale": [16, 1, 1]}
        got = {k: list(init_of(out, k).dims) if init_of(out, k) is not None else None
               for k in want}
        F.check(got == want, "convtranspose_op11: Cast+Mul scales are [O/g, 1, 1] (axis 1)",
                "got %s" % got)
    case("convtranspose_op11", convtranspose(11), ctin, extra=ct_shapes)

    # 5. a weight shared by a MatMul and an Add; a weight just below the threshold -----------
    def shared_model(big):
        r2 = np.random.default_rng(32)
        nodes = [helper.make_node("MatMul", ["x", "W"], ["m1"], name="mm1"),
                 helper.make_node("Add", ["m1", "W"], ["a1"], name="add_w"),
                 helper.make_node("MatMul", ["a1", "Wsmall"], ["y0" if big else "y"],
                                  name="mm2")]
        inits = [numpy_helper.from_array(f32(r2.normal(0, 0.1, (64, 64))), "W"),
                 numpy_helper.from_array(f32(r2.normal(0, 0.1, (64, 63))), "Wsmall")]
        if big:  # a weight whose INT8 pays for the FLOAT copy W keeps for the Add
            nodes.append(helper.make_node("MatMul", ["y0", "Wbig"], ["y"], name="mm3"))
            inits.append(numpy_helper.from_array(f32(r2.normal(0, 0.1, (63, 256))), "Wbig"))
        return small_model("shared", nodes, [("x", FLOAT, [1, 64])],
                           [("y", FLOAT, [64, 256 if big else 63])], inits)

    def shared_extra(orig, out, r):
        add = [n for n in out.graph.node if n.output and n.output[0] == "a1"]
        inits = {t.name: t for t in out.graph.initializer}
        wsrc = numpy_helper.to_array([t for t in orig.graph.initializer if t.name == "W"][0])
        ok = bool(add) and any(x in inits and inits[x].data_type == FLOAT and
                               numpy_helper.to_array(inits[x]).tobytes() == wsrc.tobytes()
                               for x in add[0].input)
        F.check(ok, "shared: the Add still reads W as the original FLOAT initializer",
                str(add[0] if add else "Add missing"))
        mm = [n for n in out.graph.node if n.output and n.output[0] == "m1"]
        F.check(bool(mm) and mm[0].input[1] == "W_dequantized",
                "shared: the MatMul reads W_dequantized", str(mm[0] if mm else "MatMul missing"))
        t = inits.get("Wsmall")
        F.check(t is not None and t.data_type == FLOAT,
                "shared: Wsmall (4032 elements < 4096) stays FLOAT")
    sfeeds = {"x": f32(rng.normal(0, 1, (1, 64)))}
    case("shared", shared_model(True), sfeeds, extra=shared_extra)
    # without Wbig, W's INT8 copy only adds bytes: the file would grow, so nothing is quantized
    case("shared_larger", shared_model(False), sfeeds, kept=True)

    # 6. Gather embedding: --int8-gather quantizes it per row; plain --int8 does not ----------
    ge = small_model("gather", [
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="gather", axis=0),
        helper.make_node("MatMul", ["e", "proj"], ["y"], name="proj_mm")],
        [("ids", I64, [1, 8])], [("y", FLOAT, [1, 8, 128])],
        [numpy_helper.from_array(f32(rng.normal(0, 0.05, (1000, 64))), "emb"),
         numpy_helper.from_array(f32(rng.normal(0, 0.1, (64, 128))), "proj")])
    gfeeds = {"ids": rng.integers(0, 1000, (1, 8)).astype(np.int64)}

    def emb_float(orig, out, r):
        t = init_of(out, "emb")
        F.check(t is not None and t.data_type == FLOAT, "gather: emb stays FLOAT without "
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
    with np.errstate(over="ignore"):
        wsp[:, 6] = f32(rng.normal(0, 1, 64)) * np.float32(3e38)  # huge values
    wsp[0, 7] = -1.0  # a negative maximum
    for op in (17, 11):
        case("special_values" + ("" if op == 17 else "_op%d" % op), small_model(
            "special%d" % op, [helper.make_node("MatMul", ["x", "Wsp"], ["y"], name="mm")],
            [("x", FLOAT, [1, 64])], [("y", FLOAT, [1, 80])],
            [numpy_helper.from_array(wsp, "Wsp")], opset=op), None, numeric=False)

    # 7. opsets 7-12: per channel with Cast + Mul; below opset 7 nothing ----------------------
    def mlp(opset, ir=None):
        bc = {"broadcast": 1} if opset < 7 else {}  # (Add-6 / Gemm-6 broadcast the bias so)
        return small_model("mlp_opset%d" % opset, [
            helper.make_node("MatMul", ["x", "w1"], ["h1m"], name="mm1"),
            helper.make_node("Add", ["h1m", "b1"], ["h1a"], name="add1", **bc),
            helper.make_node("Relu", ["h1a"], ["h1"], name="relu1"),
            helper.make_node("Gemm", ["h1", "w2", "b2"], ["h2"], name="gemm2", transB=1, **bc),
            helper.make_node("Relu", ["h2"], ["h2r"], name="relu2"),
            helper.make_node("Gemm", ["h2r", "w3", "b3"], ["y"], name="gemm3", **bc)],
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
            opset=opset, ir=ir)
    mfeeds = {"x": f32(rng.normal(0, 1, (2, 128)))}

    def mlp_castmul(tag):
        def chk(orig, out, r):
            want = {"w1_scale": [256], "w2_scale": [128, 1], "w3_scale": [64]}
            got = {k: list(init_of(out, k).dims) if init_of(out, k) is not None else None
                   for k in want}
            F.check(got == want, "%s: Cast+Mul scales: MatMul B [K,N] -> [N], Gemm transB "
                    "[N,K] -> [N,1], Gemm B [K,N] -> [N]" % tag, "got %s" % got)
            n_dql = sum(1 for n in out.graph.node if n.op_type == "DequantizeLinear")
            F.check(n_dql == 0, "%s: no DequantizeLinear below opset 13" % tag, "%d" % n_dql)
        return chk
    case("mlp_opset13", mlp(13), mfeeds)
    for op in (12, 11, 10, 9, 7):
        case("mlp_opset%d" % op, mlp(op), mfeeds, extra=mlp_castmul("mlp_opset%d" % op))
    case("cnn_opset11", g.make_cnn_int8(opset=11), xin)
    # IR 3: initializers are graph inputs too, and so are the new ones
    case("mlp_opset9_ir3", mlp(9, ir=3), mfeeds, extra=mlp_castmul("mlp_opset9_ir3"))
    # opset 6 (IR 3, like the ONNX test data): nothing; onnxruntime runs no opset 6 model
    case("mlp_opset6", mlp(6, ir=3), None, numeric=False,
         why="INT8 needs opset 7 and the model has opset 6")

    # 7b. recurrent weights: LSTM / GRU / RNN W and R per direction and row, always Cast+Mul;
    # a MatMul head on Y_h (DequantizeLinear from opset 13)
    def recurrent(op, opset, direction, hidden, inp, seed, **kw):
        r2 = np.random.default_rng(seed)
        G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
        D = 2 if direction == "bidirectional" else 1
        seq, batch, head = 6, 2, -(-4096 // hidden)  # Whead: at least 4096 elements
        outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
        nodes = [helper.make_node(op, ["x", "W", "R", "B"], outs, name=op.lower(),
                                  hidden_size=hidden, direction=direction, **kw),
                 helper.make_node("MatMul", ["Y_h", "Whead"], ["z"], name="head")]
        inits = [numpy_helper.from_array(f32(r2.normal(0, 1 / np.sqrt(inp),
                                                       (D, G * hidden, inp))), "W"),
                 numpy_helper.from_array(f32(r2.normal(0, 1 / np.sqrt(hidden),
                                                       (D, G * hidden, hidden))), "R"),
                 numpy_helper.from_array(f32(r2.normal(0, 0.1, (D, 2 * G * hidden))), "B"),
                 numpy_helper.from_array(f32(r2.normal(0, 1 / np.sqrt(hidden),
                                                       (hidden, head))), "Whead")]
        oshape = {"Y": [seq, D, batch, hidden], "Y_h": [D, batch, hidden],
                  "Y_c": [D, batch, hidden]}
        m = small_model("%s_%d" % (op.lower(), opset), nodes, [("x", FLOAT, [seq, batch, inp])],
                        [(o, FLOAT, oshape[o]) for o in outs] + [("z", FLOAT, [D, batch, head])],
                        inits, opset=opset)
        return m, {"x": f32(rng.normal(0, 1, (seq, batch, inp)))}

    def rec_extra(tag, D, GH):
        def chk(orig, out, r):
            got = {k: list(init_of(out, k).dims) if init_of(out, k) is not None else None
                   for k in ("W_scale", "R_scale")}
            F.check(got == {"W_scale": [D, GH, 1], "R_scale": [D, GH, 1]},
                    "%s: W and R scales are [D, G*H, 1] = [%d, %d, 1]" % (tag, D, GH),
                    "got %s" % got)
            muls = {n.output[0] for n in out.graph.node if n.op_type == "Mul"}
            F.check({"W_dequantized", "R_dequantized"} <= muls,
                    "%s: W and R are dequantized by Mul (Cast+Mul at opset %d)" % (
                        tag, opset_of(orig)), "Mul outputs %s" % sorted(muls))
        return chk
    for opset in (11, 14):
        for op, direction, hidden, inp, seed, kw in (
                ("LSTM", "bidirectional", 64, 64, 41, {}),
                ("GRU", "forward", 64, 72, 42, {"linear_before_reset": 1}),
                ("RNN", "reverse", 64, 80, 43, {})):
            tag = "%s_op%d" % (op.lower(), opset)
            m, fd = recurrent(op, opset, direction, hidden, inp, seed, **kw)
            G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
            D = 2 if direction == "bidirectional" else 1
            case(tag, m, fd, extra=rec_extra(tag, D, G * hidden))

    # 7c. weights in Constant nodes (lifted to initializers, then quantized), in the main graph
    # and in both branches of an If; a main-graph weight read only inside a branch; a small
    # Constant weight (below the threshold) that stays a Constant
    def const_model(opset):
        r2 = np.random.default_rng(44)

        def const(name, shape):
            return helper.make_node("Constant", [], [name], name=name + "_const",
                                    value=numpy_helper.from_array(
                                        f32(r2.normal(0, 1 / np.sqrt(shape[0]), shape)),
                                        name + "_value"))
        then = helper.make_graph([
            const("Wt", (64, 96)),
            helper.make_node("MatMul", ["h", "Wt"], ["t1"], name="then_mm"),
            helper.make_node("MatMul", ["h", "Wo"], ["t2"], name="then_mm_outer"),
            helper.make_node("Add", ["t1", "t2"], ["yt"], name="then_add")],
            "then", [], [vi("yt", FLOAT, [2, 96])])
        els = helper.make_graph([
            const("We", (64, 96)),
            helper.make_node("MatMul", ["h", "We"], ["ye"], name="else_mm")],
            "else", [], [vi("ye", FLOAT, [2, 96])])
        return small_model("consts", [
            const("W0", (128, 64)),
            helper.make_node("MatMul", ["x", "W0"], ["h0"], name="mm0"),
            helper.make_node("Relu", ["h0"], ["h"], name="relu"),
            helper.make_node("If", ["cond"], ["yi"], name="if", then_branch=then,
                             else_branch=els),
            const("Wsmall", (96, 8)),
            helper.make_node("MatMul", ["yi", "Wsmall"], ["y"], name="mm_small")],
            [("x", FLOAT, [2, 128]), ("cond", TensorProto.BOOL, [])], [("y", FLOAT, [2, 8])],
            [numpy_helper.from_array(f32(r2.normal(0, 1 / 8, (64, 96))), "Wo")], opset=opset)
    x2 = f32(rng.normal(0, 1, (2, 128)))
    cfeeds = [{"x": x2, "cond": np.array(True)}, {"x": x2, "cond": np.array(False)}]

    def const_extra(tag):
        def chk(orig, out, r):
            graphs = C.all_graphs(out.graph)
            small = [n for gg in graphs for n in gg.node if n.op_type == "Constant" and
                     "Wsmall" in n.output]
            F.check(len(small) == 1, "%s: the small Constant weight (768 < 4096 elements) "
                    "stays a Constant" % tag, "%d" % len(small))
            where = {}
            for gi, gg in enumerate(graphs):
                for t in gg.initializer:
                    where[t.name] = gi
            want = {"W0_quantized": 0, "Wo_quantized": 0}
            F.check(all(where.get(k) == v for k, v in want.items()) and
                    where.get("Wt_quantized", 0) != 0 and where.get("We_quantized", 0) != 0 and
                    where.get("Wt_quantized") != where.get("We_quantized"),
                    "%s: each INT8 weight lives in the graph of its Constant / initializer "
                    "(W0, Wo: main; Wt: then; We: else)" % tag,
                    "graph of each: %s" % {k: v for k, v in where.items() if "quantized" in k})
        return chk
    for opset in (11, 13):
        case("consts_op%d" % opset, const_model(opset), cfeeds,
             extra=const_extra("consts_op%d" % opset))

    # 7d. the gain rule: 3 x elements > 4 x channels + 160 (x2 before IR 4) --------------------
    def gain_model(ir, shapes, opset=17):
        r2 = np.random.default_rng(45)
        nodes, ins, outs, inits = [], [], [], []
        for i, (name, (k, n)) in enumerate(shapes.items()):
            nodes.append(helper.make_node("MatMul", ["x%d" % i, name], ["y%d" % i],
                                          name="mm_" + name))
            ins.append(("x%d" % i, FLOAT, [2, k]))
            outs.append(("y%d" % i, FLOAT, [2, n]))
            inits.append(numpy_helper.from_array(f32(r2.normal(0, 0.1, (k, n))), name))
        return small_model("gain", nodes, ins, outs, inits, opset=opset, ir=ir), {
            "x%d" % i: f32(rng.normal(0, 1, (2, k))) for i, (k, n) in
            enumerate(shapes.values())}
    # [K, 8]: 3*8K > 4*8 + 160 from K = 9 (IR 8); > 4*8 + 320 from K = 15 (IR 3)
    gshapes = {"A8": (8, 8), "B9": (9, 8), "C14": (14, 8), "D15": (15, 8), "Big": (128, 256)}

    def gain_extra(tag, want_int8):
        def chk(orig, out, r):
            got = {k: (init_of(out, k + "_quantized") is not None,
                       init_of(out, k) is not None and init_of(out, k).data_type == FLOAT)
                   for k in gshapes}
            want = {k: (k in want_int8, k not in want_int8) for k in gshapes}
            F.check(got == want, "%s: quantized exactly %s; the others stay FLOAT" % (
                tag, sorted(want_int8)), "(INT8, FLOAT) per weight: %s" % got)
        return chk
    m8, gfd = gain_model(8, gshapes)
    case("gain_ir8", m8, gfd, opts=("--int8-min-elements", "1"), min_elements=1,
         extra=gain_extra("gain_ir8", {"B9", "C14", "D15", "Big"}))
    m3, gfd3 = gain_model(3, gshapes, opset=8)
    case("gain_ir3", m3, gfd3, opts=("--int8-min-elements", "1"), min_elements=1,
         extra=gain_extra("gain_ir3", {"D15", "Big"}))
    mt, tfd = gain_model(8, {"A8": (8, 8)})
    case("gain_tiny", mt, tfd, opts=("--int8-min-elements", "1"), min_elements=1,
         why="no weight is large enough for INT8 to save bytes (1 too small)")
    ms, sfd = gain_model(8, {"S1": (32, 64), "S2": (64, 16)})
    case("below_threshold", ms, sfd,
         why="no weight has 4096 elements (the largest of 2 has 2048)")
    nw = small_model("noweight", [helper.make_node("Add", ["x", "bias"], ["y"], name="add")],
                     [("x", FLOAT, [2, 4096])], [("y", FLOAT, [2, 4096])],
                     [numpy_helper.from_array(f32(rng.normal(0, 1, 4096)), "bias")])
    case("no_weight", nw, {"x": f32(rng.normal(0, 1, (2, 4096)))},
         why="no FP32 weight feeds MatMul, Gemm, Conv, ConvTranspose, LSTM, GRU or RNN")

    # 8. --int8 --fp16 / --bf16; scale dtype by form and opset --------------------------------
    def fp16_rest(tag):
        def chk(orig, out, r):
            inits = {t.name: t for t in out.graph.initializer}
            bad = [n for n in ("attn.q.bias", "ffn.up.bias", "ln1.weight")
                   if n not in inits or inits[n].data_type != TensorProto.FLOAT16]
            F.check(not bad, "%s: weights that are not quantized become FLOAT16 (--fp16)" % tag,
                    "not FLOAT16: %s" % bad)
        return chk
    case("transformer_fp16_op17", tb, tin, opts=("--fp16",), fp16=True,
         extra=fp16_rest("transformer_fp16_op17"))
    tb19 = g.make_transformer_block(opset=19)
    case("transformer_fp16_op19", tb19, tin, opts=("--fp16",), fp16=True,
         extra=fp16_rest("transformer_fp16_op19"))
    case("transformer_op19", tb19, tin)

    def fp16_applied(tag):
        def chk(orig, out, r):
            F.check(re.search(r"fp16: [1-9]\d* tensors?", r.out) is not None,
                    "%s: the FP16 pass ran (the scales are FLOAT16 because of it)" % tag,
                    r.describe())
        return chk
    # Cast+Mul under --fp16: Cast to FLOAT16, FLOAT16 scales, q against them
    case("mlp_opset11_fp16", mlp(11), mfeeds, opts=("--fp16",), fp16=True,
         extra=fp16_applied("mlp_opset11_fp16"))
    # --bf16 is refused below opset 13: the Mul runs in FLOAT, so the scales are the plain
    # FLOAT max|w|/127, not rounded to BF16 values
    case("mlp_opset11_bf16", mlp(11), mfeeds, opts=("--bf16",))

    # 9. inspect --json / table on INT8 outputs: both dequantizing forms ----------------------
    for tag in ("albert", "cnn", "transformer_fp16_op19", "mlp_opset11", "lstm_op14",
                "consts_op11"):
        p = os.path.join(w, tag + ".int8.onnx")
        if not F.check(os.path.isfile(p), "%s: INT8 output exists for inspect" % tag):
            continue
        m = onnx.load(p)
        inits = {t.name: t for gg in C.all_graphs(m.graph) for t in gg.initializer}
        xs, scales, zps = quantized_tensors(m)
        want = {"tensors": len(xs),
                "bytes": sum(numpy_helper.to_array(inits[x]).nbytes for x in xs),
                "scale_bytes": sum(numpy_helper.to_array(inits[s]).nbytes for s in scales),
                "zero_point_bytes": sum(numpy_helper.to_array(inits[z]).nbytes for z in zps)}
        r = C.run(args.bin, "inspect", "--json", p)
        C.check_inspect_json(F, r.out, "inspect --json %s" % os.path.basename(p))
        try:
            j = json.loads(r.out)["files"][0]
        except Exception as e:  # noqa: BLE001
            F.fail("%s: inspect --json prints JSON" % tag, "%s\n%s" % (r.describe(), e))
            continue
        got = j.get("quantized")
        F.check(isinstance(got, dict) and all(got.get(k) == v for k, v in want.items()),
                "%s: inspect --json reports quantized %s (DequantizeLinear and Cast+Mul)" % (
                    tag, want), "%s\ngot %s" % (r.cmd(), got))
        r = C.run(args.bin, "inspect", p)
        F.check(r.rc == 0 and re.search(r"quantized: %d INT8 weights?" % len(xs), r.out)
                is not None, "%s: inspect's table says 'quantized: %d INT8 weights'" % (
                    tag, len(xs)), r.describe())

    print("\n  %-24s %10s %12s %14s  %s" % ("model", "cosine", "worst abs", "weight bytes",
                                             "engine"))
    for tag, cos, worst, wb, eng in table:
        print("  %-24s %10s %12s %14s  %s" % (
            tag, "-" if cos is None else "%.6f" % cos, "-" if worst is None else "%.4g" % worst,
            "-" if not wb or not wb[0] else "%.2f%%" % (100.0 * wb[1] / wb[0]), eng))
    if not n_cases[1] or not F.checks:
        F.fail("the test converted models and made checks", "%d of %d cases converted, %d "
               "checks" % (n_cases[1], n_cases[0], F.checks))
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
