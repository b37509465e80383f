#!/usr/bin/env python3
"""End-to-end: usage errors and mixed batches. A valid external-data model (built the way the
hostile catalogue builds its broken ones) converts and computes the same; convert refuses to
overwrite its input or to write into its input folder (exit 2, input unchanged); missing -o and
unknown options exit 2 and write nothing; a batch with one broken and one good model exits 1,
prints one line for the broken one and writes only the good one. The hostile inputs themselves
are in tests/fixtures/make_hostile.py and tests/e2e/test_hostile.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_bad_inputs"


def main():
    np, onnx, _ = C.import_deps("numpy", "onnx", "onnxruntime")
    args = C.parse_args(__doc__)
    G = C.gen_models()
    import make_hostile as MH
    F = C.Failures()
    good_bytes = G.make_albert(layers=2, hidden=64, embed=32, ffn=128, vocab=500, heads=4,
                               seed=7).SerializeToString()

    # Control: the same external-data construction with a valid location converts fine, so the
    # ext_* failures below are due to their one defect.
    ctrl = os.path.join(args.work, "control")
    os.makedirs(ctrl)
    with open(os.path.join(ctrl, "model.onnx.data"), "wb") as f:
        f.write(MH.weights_bytes())
    with open(os.path.join(ctrl, "model.onnx"), "wb") as f:
        f.write(MH.ext_model("model.onnx.data", 0, len(MH.weights_bytes())))
    x = np.linspace(-1, 1, 1024, dtype=np.float32)
    ref = C.run_model(os.path.join(ctrl, "model.onnx"), {"x": x})
    ctrl_out = os.path.join(args.work, "control_out")
    os.makedirs(ctrl_out)
    r = C.run(args.bin, "convert", os.path.join(ctrl, "model.onnx"), "-o",
              os.path.join(ctrl_out, "out.onnx"))
    if F.check(r.rc == 0, "control: valid external-data model converts (exit 0)", r.describe()):
        try:
            got = C.run_model(os.path.join(ctrl_out, "out.onnx"), {"x": x})
            F.check(not C.diff_outputs(ref, got), "control: output model computes the same",
                    C.diff_outputs(ref, got))
        except Exception as e:
            F.fail("control: onnxruntime runs the converted model", str(e))

    # ---- usage errors -----------------------------------------------------------------------
    u = os.path.join(args.work, "usage")
    os.makedirs(u)
    good = os.path.join(u, "good.onnx")
    with open(good, "wb") as f:
        f.write(good_bytes)
    sha = C.sha256(good)
    r = C.run(args.bin, "convert", good, "-o", good)
    F.check(r.rc == 2, "convert x.onnx -o x.onnx exits 2", r.describe())
    F.check(C.sha256(good) == sha, "convert x.onnx -o x.onnx leaves the input unchanged")
    r = C.run(args.bin, "convert", "good.onnx", "-o", "./good.onnx", cwd=u)
    F.check(r.rc == 2, "convert good.onnx -o ./good.onnx (same file, other spelling) exits 2",
            r.describe())
    F.check(C.sha256(good) == sha, "convert good.onnx -o ./good.onnx leaves the input unchanged")
    before = C.tree_state(u)
    r = C.run(args.bin, "convert", u, "-o", u)
    F.check(r.rc == 2, "convert DIR -o DIR (output folder == input folder) exits 2", r.describe())
    F.check(C.tree_state(u) == before, "convert DIR -o DIR leaves the folder unchanged")
    r = C.run(args.bin, "convert", good)
    F.check(r.rc == 2, "convert without -o exits 2", r.describe())
    r = C.run(args.bin, "convert", good, "-o", os.path.join(u, "x.onnx"), "--no-such-option")
    F.check(r.rc == 2, "convert with an unknown option exits 2", r.describe())
    F.check(not os.path.exists(os.path.join(u, "x.onnx")), "usage error writes no output")
    F.check(C.tree_state(u) == before, "usage errors leave the folder unchanged")

    # ---- batch: one bad, one good -------------------------------------------------------------
    bad_copy = os.path.join(u, "bad.onnx")
    with open(bad_copy, "wb") as fo:
        fo.write(good_bytes[:len(good_bytes) // 2])
    bo = os.path.join(args.work, "batch_out")
    r = C.run(args.bin, "convert", bad_copy, good, "-o", bo)
    lines = [l for l in r.err.splitlines() if l.strip()]
    F.check(r.rc == 1, "batch bad+good: exit 1", r.describe())
    F.check(len(lines) == 1 and "bad.onnx" in lines[0], "batch bad+good: one stderr line, "
            "naming bad.onnx", r.describe())
    listing = sorted(os.listdir(bo)) if os.path.isdir(bo) else []
    F.check(listing == ["good.onnx"], "batch bad+good: output folder holds only good.onnx",
            "found %s" % listing)
    if "good.onnx" in listing:
        try:
            onnx.checker.check_model(os.path.join(bo, "good.onnx"))
            F.check(True, "batch: good output passes onnx.checker")
        except Exception as e:
            F.fail("batch: good output passes onnx.checker", str(e))
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
