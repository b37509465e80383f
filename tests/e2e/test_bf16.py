#!/usr/bin/env python3
"""End-to-end: `convert --bf16`.

Models: an MLP (gen_models.make_mlp_dup), the small CNN (make_cnn), a tiny ALBERT-shaped encoder
(make_albert, 2 layers) and a "magnitudes" model whose weight covers FP32 values of every
magnitude (subnormals, exact rounding ties, NaN, +-inf, +-0).

For every model: convert exits 0 and prints `bf16: K tensors`; onnx.checker full_check passes;
every initializer that was FLOAT is BFLOAT16 (unless all its consumers are ops whose schema at
the model's opset has no BF16, e.g. Conv/MaxPool before opset 22: those stay FLOAT) and equals, bit for bit, the reference rounding of
the FP32 bits computed in numpy: bf16 = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
(round-to-nearest-even), NaN stays NaN; the output runs in onnx.reference.ReferenceEvaluator and
agrees with the FP32 original within |got - ref| <= ATOL + RTOL * |ref| (RTOL = 2e-2,
ATOL = 2e-2, float64). When the evaluator has no BF16 implementation for an op, the op and the
error are reported and that model's numeric comparison is skipped (not failed); onnxruntime is
tried too, for information."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_bf16"
RTOL, ATOL = 2e-2, 2e-2
BF16_RE = re.compile(r"bf16: (\d+) tensors?")


def bf16_bits(np, a):
    """Reference FP32 -> BF16 round-to-nearest-even on the bit patterns (uint16); NaN -> NaN."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF
    return r.astype(np.uint16)


def bf16_to_f32(np, bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def main():
    np, onnx = C.import_deps("numpy", "onnx")
    args = C.parse_args(__doc__)
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator
    G = C.gen_models()
    F = C.Failures()
    w = args.work
    rng = np.random.default_rng(21)
    BF16 = TensorProto.BFLOAT16

    # the reference rounding itself, against ml_dtypes when present
    try:
        import ml_dtypes
        probe = np.float32(rng.normal(0, 1, 10000) * np.exp2(rng.uniform(-20, 20, 10000)))
        F.check(np.array_equal(bf16_bits(np, probe), probe.astype(ml_dtypes.bfloat16).view(
            np.uint16)), "reference BF16 rounding agrees with ml_dtypes.bfloat16")
    except ImportError:
        pass

    # magnitudes model
    mag = np.exp2(rng.uniform(-140, 120, 3000)) * rng.choice([-1.0, 1.0], 3000)
    ties = (np.arange(1, 2000, dtype=np.uint32) << 16 | 0x8000).view(np.float32)  # exact ties
    near = (np.arange(1, 2000, dtype=np.uint32) << 16 | 0x7FFF).view(np.float32)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.17e-38, 1.0,
                         -1.0, 3.0e38, 1 + 2 ** -8, 1 + 3 * 2 ** -8], np.float64)
    wv = np.concatenate([mag, ties.astype(np.float64), -near.astype(np.float64), specials]).astype(
        np.float32)
    n = wv.size
    g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"], name="mul")], "mags",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
                          initializer=[numpy_helper.from_array(wv, "w")])
    mags = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    mags.ir_version = 8

    def opset_of(m):
        return [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")][0]

    def consumers(m, name):
        return [nd for gr in C.all_graphs(m.graph) for nd in gr.node if name in nd.input]

    def bf16_consumers(m, name):
        """Consumers of ``name`` whose schema (at the model's opset) allows tensor(bfloat16) for
        that input."""
        from onnx import defs
        found = []
        for nd in consumers(m, name):
            try:
                sch = defs.get_schema(nd.op_type, opset_of(m), nd.domain)
            except Exception:  # noqa: BLE001
                found.append(nd)
                continue
            for idx, inp in enumerate(nd.input):
                if inp != name:
                    continue
                fp = sch.inputs[min(idx, len(sch.inputs) - 1)]
                allowed = {tc.type_param_str: tc.allowed_type_strs for tc in sch.type_constraints}
                types = allowed.get(fp.type_str, [fp.type_str])
                if "tensor(bfloat16)" in types:
                    found.append(nd)
        return found

    cases = [
        ("mlp", G.make_mlp_dup(seed=3, width=64),
         {"x": np.float32(rng.normal(0, 1, (1, 64)))}, True),
        ("cnn", G.make_cnn(seed=4), {"x": np.float32(rng.normal(0, 1, (1, 3, 32, 32)))}, True),
        ("tiny_albert", G.make_albert(layers=2, hidden=64, embed=32, ffn=128, vocab=200, heads=4,
                                      seed=5, seq=8),
         {"input_ids": rng.integers(0, 200, (1, 8)).astype(np.int64)}, True),
        ("magnitudes", mags, {"x": np.ones(n, np.float32)}, False),
    ]
    no_bf16_ops = []
    for tag, model, feeds, numeric in cases:
        src = G.save(model, os.path.join(w, tag + ".onnx"))
        dst = os.path.join(w, tag + ".bf16.onnx")
        r = C.run(args.bin, "convert", "--bf16", src, "-o", dst)
        if not F.check(r.rc == 0 and os.path.isfile(dst), "%s: convert --bf16 exits 0" % tag,
                       r.describe()):
            continue
        F.check(BF16_RE.search(r.out) is not None, "%s: stdout reports 'bf16: K tensors'" % tag,
                r.describe())
        try:
            onnx.checker.check_model(dst, full_check=True)
            F.check(True, "%s: checker full_check passes" % tag)
        except Exception as e:  # noqa: BLE001
            F.fail("%s: checker full_check passes" % tag, "%s\n%s" % (r.cmd(), e))
        out = onnx.load(dst)
        orig = onnx.load(src)
        want = {}
        for gr in C.all_graphs(orig.graph):
            for t in gr.initializer:
                if t.data_type == TensorProto.FLOAT:
                    want[t.name] = numpy_helper.to_array(t)
        checked, bad, kept_fp32 = 0, [], []
        for gr in C.all_graphs(out.graph):
            for t in gr.initializer:
                if t.name not in want:
                    continue
                if t.data_type != BF16:
                    if t.data_type == TensorProto.FLOAT and not bf16_consumers(out, t.name):
                        kept_fp32.append(t.name)  # only ops without BF16 in their schema use it
                    else:
                        bad.append("%s: data_type %d, not BFLOAT16 (consumers: %s)" % (
                            t.name, t.data_type, ", ".join(
                                "%s(%s)" % (nd.op_type, nd.name) for nd in consumers(out, t.name))))
                    continue
                if t.raw_data:
                    got = np.frombuffer(t.raw_data, dtype=np.uint16)
                else:
                    got = np.array(t.int32_data, dtype=np.uint32).astype(np.uint16)
                exp = bf16_bits(np, want[t.name]).reshape(-1)
                checked += 1
                if got.shape != exp.shape:
                    bad.append("%s: %d values, expected %d" % (t.name, got.size, exp.size))
                    continue
                nan = np.isnan(want[t.name].reshape(-1))
                diff = np.flatnonzero((got != exp) & ~nan |
                                      (nan & ~np.isnan(bf16_to_f32(np, got))))
                if diff.size:
                    i = diff[0]
                    bad.append("%s: %d of %d values differ, e.g. fp32 %r (0x%08x): got 0x%04x, "
                               "expected 0x%04x" % (t.name, diff.size, exp.size,
                                                    float(want[t.name].reshape(-1)[i]),
                                                    int(want[t.name].reshape(-1).view(
                                                        np.uint32)[i]), got[i], exp[i]))
        F.check(checked > 0 and not bad,
                "%s: %d BF16 initializers equal the reference RNE rounding bit for bit" % (
                    tag, checked), "\n".join(bad[:10]) or "no FLOAT initializer found in output")
        if kept_fp32:
            print("  %-12s kept FLOAT (consumers have no BF16 in their opset-%d schema): %s" % (
                tag, opset_of(out), ", ".join(kept_fp32)))
        # numerics
        ref = dict(zip([o.name for o in orig.graph.output],
                       ReferenceEvaluator(orig).run(None, feeds)))
        try:
            got = dict(zip([o.name for o in out.graph.output],
                           ReferenceEvaluator(out).run(None, feeds)))
        except Exception as e:  # noqa: BLE001
            msg = ("%s: %s" % (type(e).__name__, e)).splitlines()[0][:300]
            ops = sorted({nd.op_type for gr in C.all_graphs(out.graph) for nd in gr.node
                          if nd.op_type in msg})
            print("  %-12s ReferenceEvaluator cannot run the BF16 output (op %s): %s" % (
                tag, ",".join(ops) or "?", msg))
            no_bf16_ops.append((tag, ",".join(ops) or "?", msg))
            got = None
        if got is not None and numeric:
            for k, rv in ref.items():
                a = np.asarray(rv, np.float64)
                b = np.asarray(got[k]).astype(np.float64)
                if not F.check(a.shape == b.shape, "%s: output %s shape" % (tag, k)):
                    continue
                d = np.abs(a - b)
                wa = float(d.max()) if d.size else 0.0
                wr = float((d / np.maximum(np.abs(a), 1e-30)).max()) if d.size else 0.0
                print("  %-12s output %-18s worst abs %.3g, worst rel %.3g" % (tag, k, wa, wr))
                over = ~(d <= ATOL + RTOL * np.abs(a))
                F.check(not over.any(), "%s: output %s within BF16 tolerance" % (tag, k),
                        "%d of %d outside; worst abs %.3g" % (over.sum(), a.size, wa))
        try:
            import onnxruntime  # noqa: F401
            C.run_model(dst, feeds)
            print("  %-12s onnxruntime runs the BF16 output" % tag)
        except ImportError:
            pass
        except Exception as e:  # noqa: BLE001
            print("  %-12s onnxruntime cannot run the BF16 output (information only): %s" % (
                tag, str(e).splitlines()[0][:200]))
    if no_bf16_ops:
        print("ReferenceEvaluator lacks BF16 support here: %s" % "; ".join(
            "%s (%s)" % (t, o) for t, o, _ in no_bf16_ops))
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
