#!/usr/bin/env python3
"""End-to-end: dedup across subgraphs and around graph inputs.

- if_dup: the two If branches each hold a local initializer with identical values; `convert`
  merges them (fewer initializers over all graphs), outputs bit-identical for cond True/False.
- nested_if: four identical initializers spread over the main graph and three nested branches
  (two levels deep) merge; outputs bit-identical for every (c1, c2).
- graph_input_dup: an initializer that is also a graph input (an overridable default) duplicates
  a plain initializer: NOT merged by default (both names stay), merged with --dedup-graph-inputs;
  graph input/output names never change, and the model runs without feeding the default.
- shadow: an If branch declares a local initializer with the same name as an outer initializer
  that duplicates another outer one. Outputs must stay bit-identical after dedup.
  (Note: onnxruntime 1.32 resolves the shadowed name in the branch to the OUTER value, so a
  dedup that renames/removes the outer name changes the result; leaving such names alone is
  safe.)"""

import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_subgraph_dedup"


def main():
    np, onnx, _ = C.import_deps("numpy", "onnx", "onnxruntime")
    args = C.parse_args(__doc__)
    G = C.gen_models()
    F = C.Failures()
    w = args.work
    B = lambda v: np.array(bool(v))  # noqa: E731

    def convert(src, dst, *opts):
        r = C.run(args.bin, "convert", *opts, src, "-o", dst)
        ok = F.check(r.rc == 0 and os.path.isfile(dst), "convert %s%s exits 0"
                     % (" ".join(opts) + " " if opts else "", os.path.basename(src)), r.describe())
        return ok

    def same_outputs(src, dst, feeds_list, what):
        for feeds in feeds_list:
            desc = ", ".join("%s=%s" % (k, v.tolist() if v.ndim == 0 else "[...]")
                             for k, v in feeds.items())
            try:
                ref = C.run_model(src, feeds)
                got = C.run_model(dst, feeds)
            except Exception as e:
                F.fail("%s: onnxruntime runs the output (%s)" % (what, desc), str(e))
                continue
            d = C.diff_outputs(ref, got)
            F.check(not d, "%s: outputs bit-identical (%s)" % (what, desc), d)

    def io_names(path):
        m = onnx.load(path)
        return ([i.name for i in m.graph.input], [o.name for o in m.graph.output])

    def checker(path, what):
        try:
            onnx.checker.check_model(path)
            F.check(True, "%s: onnx.checker passes" % what)
        except Exception as e:
            F.fail("%s: onnx.checker passes" % what, str(e))

    # ---- if_dup ----------------------------------------------------------------------------
    src = G.save(G.make_if_dup(), os.path.join(w, "if_dup.onnx"))
    x = np.linspace(-2, 2, 256, dtype=np.float32)
    feeds = [{"cond": B(c), "x": x} for c in (True, False)]
    n_in = C.count_initializers(onnx.load(src))
    dst = os.path.join(w, "if_dup.out.onnx")
    if convert(src, dst):
        n_out = C.count_initializers(onnx.load(dst))
        F.check(n_out < n_in, "if_dup: the branches' identical initializers are merged",
                "initializers over all graphs: %d before, %d after" % (n_in, n_out))
        F.check(io_names(dst) == io_names(src), "if_dup: graph input/output names unchanged")
        checker(dst, "if_dup")
        same_outputs(src, dst, feeds, "if_dup")
    dst = os.path.join(w, "if_dup.nodedup.onnx")
    if convert(src, dst, "--no-dedup"):
        F.check(C.count_initializers(onnx.load(dst)) == n_in,
                "if_dup --no-dedup: initializer count unchanged")
        same_outputs(src, dst, feeds, "if_dup --no-dedup")

    # ---- nested_if -------------------------------------------------------------------------
    src = G.save(G.make_nested_if(), os.path.join(w, "nested_if.onnx"))
    x = np.linspace(-2, 2, 128, dtype=np.float32)
    feeds = [{"c1": B(a), "c2": B(b), "x": x} for a, b in itertools.product((True, False),
                                                                           repeat=2)]
    dst = os.path.join(w, "nested_if.out.onnx")
    if convert(src, dst):
        n_in = C.count_initializers(onnx.load(src))
        n_out = C.count_initializers(onnx.load(dst))
        F.check(n_out == 1, "nested_if: four identical initializers in four graphs become one",
                "initializers over all graphs: %d before, %d after" % (n_in, n_out))
        F.check(io_names(dst) == io_names(src), "nested_if: graph input/output names unchanged")
        checker(dst, "nested_if")
        same_outputs(src, dst, feeds, "nested_if")

    # ---- graph_input_dup -------------------------------------------------------------------
    src = G.save(G.make_graph_input_dup(), os.path.join(w, "graph_input_dup.onnx"))
    x = np.linspace(-2, 2, 64, dtype=np.float32)
    feeds = [{"x": x}, {"x": x, "w_default": np.full(64, 0.25, np.float32)}]
    dst = os.path.join(w, "gi.default.onnx")
    if convert(src, dst):
        names = sorted(t.name for t in onnx.load(dst).graph.initializer)
        F.check(names == ["w_const", "w_default"],
                "graph_input_dup: by default an initializer that is a graph input is not merged",
                "initializers after convert: %s" % names)
        F.check(io_names(dst) == io_names(src), "graph_input_dup: input/output names unchanged",
                "%s vs %s" % (io_names(dst), io_names(src)))
        same_outputs(src, dst, feeds, "graph_input_dup (default)")
    dst = os.path.join(w, "gi.merged.onnx")
    if convert(src, dst, "--dedup-graph-inputs"):
        names = sorted(t.name for t in onnx.load(dst).graph.initializer)
        F.check(len(names) == 1, "graph_input_dup --dedup-graph-inputs: merged into one",
                "initializers after convert: %s" % names)
        F.check(io_names(dst) == io_names(src),
                "graph_input_dup --dedup-graph-inputs: input/output names unchanged",
                "%s vs %s" % (io_names(dst), io_names(src)))
        same_outputs(src, dst, feeds[:1], "graph_input_dup --dedup-graph-inputs (no override)")

    # ---- shadow ----------------------------------------------------------------------------
    for leq in (False, True):
        tag = "shadow(local %s outer)" % ("==" if leq else "!=")
        src = G.save(G.make_shadow(local_equals_outer=leq),
                     os.path.join(w, "shadow_%d.onnx" % leq))
        x = np.linspace(-2, 2, 64, dtype=np.float32)
        feeds = [{"cond": B(c), "x": x} for c in (True, False)]
        dst = os.path.join(w, "shadow_%d.out.onnx" % leq)
        if convert(src, dst):
            F.check(io_names(dst) == io_names(src), "%s: input/output names unchanged" % tag)
            same_outputs(src, dst, feeds, tag)
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
