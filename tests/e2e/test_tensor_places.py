#!/usr/bin/env python3
"""End-to-end: tensors in every place they can live survive conversion.

One model holds tensors in a sparse initializer, in a local function's Constant node, in an
attribute of a node inside an If branch, in a Loop body initializer, and in a training_info
initialization graph; it also has a duplicated pair of initializers, so dedup really rewrites
the model. After `convert` and `convert --no-dedup`:
  - the sparse initializer, the function body's tensor and the training_info tensor are
    byte-identical to the input's (compared through onnx's own parser);
  - onnxruntime gives bit-identical outputs;
  - `inspect --json` counts every tensor and reports the 'sparse' and 'function' locations.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_tensor_places"


def build(np, onnx):
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(7)
    w = rng.standard_normal((16, 16)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w_a"), numpy_helper.from_array(w.copy(), "w_b")]
    # sparse initializer: 3 non-zeros of a [4, 16] matrix
    vals = numpy_helper.from_array(np.array([1.5, -2.0, 3.25], np.float32), "sp")
    idx = numpy_helper.from_array(np.array([1, 17, 63], np.int64), "sp_idx")
    sparse = helper.make_sparse_tensor(vals, idx, [4, 16])
    # local function: y = x * Constant(c)
    c = numpy_helper.from_array(rng.standard_normal((16,)).astype(np.float32), "fc")
    fn = helper.make_function(
        "local", "ScaleBy", ["x"], ["y"],
        [helper.make_node("Constant", [], ["c"], value=c), helper.make_node("Mul", ["x", "c"], ["y"])],
        [helper.make_opsetid("", 17)])
    # If branch whose node carries an attribute tensor (Constant)
    bt = numpy_helper.from_array(rng.standard_normal((16,)).astype(np.float32), "bt")
    then_g = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=bt), helper.make_node("Add", ["s", "k"], ["o"])],
        "then", [], [helper.make_tensor_value_info("o", TensorProto.FLOAT, [4, 16])])
    else_g = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["o2"])],
        "else", [], [helper.make_tensor_value_info("o2", TensorProto.FLOAT, [4, 16])])
    nodes = [
        helper.make_node("MatMul", ["x", "w_a"], ["h1"]),
        helper.make_node("MatMul", ["h1", "w_b"], ["h2"]),
        helper.make_node("ScaleBy", ["h2"], ["h3"], domain="local"),
        helper.make_node("Add", ["h3", "sp"], ["s"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    g = helper.make_graph(
        nodes, "places",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
        inits, sparse_initializer=[sparse])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("local", 1)],
                          functions=[fn])
    m.ir_version = 8
    # training_info with an initialization graph that holds its own initializer
    ti = m.training_info.add()
    ti.initialization.CopyFrom(helper.make_graph(
        [helper.make_node("Identity", ["t0"], ["t_out"])], "init",
        [], [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [8])],
        [numpy_helper.from_array(np.arange(8, dtype=np.float32), "t0")]))
    return m


def main():
    np, onnx, _ = C.import_deps("numpy", "onnx", "onnxruntime")
    args = C.parse_args(__doc__)
    C.require_jsonschema()
    F = C.Failures()
    src = os.path.join(args.work, "places.onnx")
    onnx.save(build(np, onnx), src)
    feeds_t = {"x": np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32),
               "cond": np.array(True)}
    feeds_f = dict(feeds_t, cond=np.array(False))
    ref_t, ref_f = C.run_model(src, feeds_t), C.run_model(src, feeds_f)
    orig = onnx.load(src)

    for opts in ([], ["--no-dedup"]):
        dst = os.path.join(args.work, "out%s.onnx" % ("_nodedup" if opts else ""))
        r = C.run(args.bin, "convert", *opts, src, "-o", dst)
        if not F.check(r.rc == 0, "convert %s exits 0" % " ".join(opts), r.describe()):
            continue
        out = onnx.load(dst)
        label = " ".join(opts) or "(dedup)"
        F.check(out.graph.sparse_initializer[0].SerializeToString()
                == orig.graph.sparse_initializer[0].SerializeToString(),
                "%s: sparse initializer byte-identical" % label)
        F.check(out.functions[0].SerializeToString() == orig.functions[0].SerializeToString(),
                "%s: function body (with its Constant tensor) byte-identical" % label)
        F.check(out.training_info[0].SerializeToString()
                == orig.training_info[0].SerializeToString(),
                "%s: training_info graph byte-identical" % label)
        want_inits = 1 if not opts else 2
        F.check(len(out.graph.initializer) == want_inits,
                "%s: %d main-graph initializers" % (label, want_inits),
                "got %s" % [i.name for i in out.graph.initializer])
        for feeds, ref in ((feeds_t, ref_t), (feeds_f, ref_f)):
            got = C.run_model(dst, feeds)
            d = C.diff_outputs(ref, got)
            F.check(not d, "%s: outputs bit-identical (cond=%s)" % (label, feeds["cond"]), d)

    r = C.run(args.bin, "inspect", "--json", src)
    C.check_inspect_json(F, r.out, "inspect --json")
    if F.check(r.rc == 0, "inspect --json exits 0", r.describe()):
        import json
        rep = json.loads(r.out)["files"][0]
        # w_a w_b, sparse values + indices, function constant, branch constant, training t0
        F.check(rep["tensor_count"] == 7, "inspect counts all 7 tensors",
                "tensor_count = %s" % rep["tensor_count"])
        locs = {t["location"] for t in rep["largest"]}
        F.check({"initializer", "sparse", "function", "constant"} <= locs,
                "inspect reports initializer, sparse, function and constant locations",
                "got %s" % sorted(locs))
        F.check(rep["duplicates"]["groups"] == 1 and rep["duplicates"]["saved_bytes"] == 1024,
                "inspect: one duplicate group saving 1024 bytes", str(rep["duplicates"]))
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
