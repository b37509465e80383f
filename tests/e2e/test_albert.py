#!/usr/bin/env python3
"""End-to-end: an ALBERT-shaped encoder whose 12 layers hold identical copies of the same weights
(as torch.onnx.export writes ALBERT) shrinks at least 5x under `modelshrink convert`, and the
result computes bit-identical outputs in onnxruntime. Also --no-dedup, external data input, and
--external-data output (4096-byte aligned), and `inspect --json`'s duplicate accounting."""

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_albert"
SHAPE = dict(layers=12, hidden=256, embed=64, ffn=1024, vocab=4000, heads=4)
LINE_RE = re.compile((r"^(?P<inp>.+) -> (?P<out>.+): (?P<a>%s) -> (?P<b>%s) "
                      r"\((?P<r>[0-9.]+)x\)(?:, dedup merged (?P<n>\d+) tensors?)?"
                      r", on (?:cpu|cuda)(?: \(verified against the CPU\))?$") % (C.SIZE, C.SIZE))


def main():
    np, onnx, _ = C.import_deps("numpy", "onnx", "onnxruntime")
    args = C.parse_args(__doc__)
    C.require_jsonschema()
    G = C.gen_models()
    F = C.Failures()
    w = args.work

    model = G.make_albert(**SHAPE, seed=0)
    src = G.save(model, os.path.join(w, "in.onnx"))
    ext_dir = os.path.join(w, "ext_in")
    src_ext = G.save(model, os.path.join(ext_dir, "albert.onnx"), external=True)
    in_size = os.path.getsize(src)
    in_names = sorted(t.name for t in model.graph.initializer)
    in_arrays = {t.name: t.raw_data for t in model.graph.initializer}
    del model
    src_sha = C.sha256(src)
    ext_state = C.tree_state(ext_dir)

    rng = np.random.default_rng(1234)
    feeds = {"input_ids": rng.integers(0, SHAPE["vocab"], size=(1, 16)).astype(np.int64)}
    ref = C.run_model(src, feeds)
    ref_ext = C.run_model(src_ext, feeds)
    F.check(not C.diff_outputs(ref, ref_ext), "fixture sanity: inline and external inputs agree",
            C.diff_outputs(ref, ref_ext))

    def check_same_outputs(path, what):
        try:
            got = C.run_model(path, feeds)
        except Exception as e:
            return F.fail("%s: onnxruntime cannot load/run the output %s" % (what, path), str(e))
        d = C.diff_outputs(ref, got)
        if F.check(not d, "%s: outputs bit-identical to the input model's" % what, d):
            for k in ref:
                F.check(np.array_equal(ref[k], got[k]) and ref[k].tobytes() == got[k].tobytes(),
                        "%s: output %r equal (array_equal and tobytes)" % (what, k))

    def check_model(path, what):
        try:
            onnx.checker.check_model(path)
            F.check(True, "%s: onnx.checker.check_model" % what)
        except Exception as e:
            F.fail("%s: onnx.checker.check_model(%s) failed" % (what, path), str(e))

    # ---- convert (default: dedup) ----------------------------------------------------------
    out = os.path.join(w, "out.onnx")
    r = C.run(args.bin, "convert", src, "-o", out)
    if F.check(r.rc == 0 and os.path.isfile(out), "convert in.onnx -o out.onnx exits 0 and writes "
               "out.onnx", r.describe()):
        out_size = os.path.getsize(out)
        F.check(in_size >= 5 * out_size, "output at least 5x smaller than input",
                "in %d bytes, out %d bytes (%.2fx)" % (in_size, out_size, in_size / out_size))
        lines = [l for l in r.out.splitlines() if l.strip()]
        m = LINE_RE.match(lines[0]) if len(lines) == 1 else None
        if F.check(m is not None, "convert prints one line 'IN -> OUT: A kB -> B kB (R.RRx), "
                   "dedup merged N tensors'", "stdout was: %r" % r.out):
            F.check(m.group("a") == C.human_bytes(in_size) and
                    m.group("b") == C.human_bytes(out_size),
                    "convert's byte counts are the file sizes (in inspect's units)",
                    "line %r; in %d out %d" % (lines[0], in_size, out_size))
            t = C.run(args.bin, "inspect", src)
            first = t.out.splitlines()[0] if t.out.strip() else ""
            F.check(first.startswith("%s: %s," % (src, m.group("a"))),
                    "inspect's table gives the input's size in the same units as convert's line",
                    "inspect: %r\nconvert: %r" % (first, lines[0]))
            F.check(m.group("n") is not None and int(m.group("n")) > 0,
                    "convert reports 'dedup merged N tensors' with N > 0", "line %r" % lines[0])
        F.check(r.err.strip() == "", "convert prints nothing on stderr", r.err)
        check_model(out, "convert")
        check_same_outputs(out, "convert")
        outm = onnx.load(out)
        F.check([i.name for i in outm.graph.input] == ["input_ids"]
                and [o.name for o in outm.graph.output] == ["last_hidden_state"],
                "graph input/output names unchanged")
        F.check(len(outm.graph.initializer) < len(in_names),
                "convert: fewer initializers after dedup",
                "%d -> %d" % (len(in_names), len(outm.graph.initializer)))
    F.check(C.sha256(src) == src_sha, "input file unchanged by convert")

    # ---- inspect --json --------------------------------------------------------------------
    r = C.run(args.bin, "inspect", "--json", src)
    C.check_inspect_json(F, r.out, "inspect --json in.onnx")
    try:
        js = json.loads(r.out)
    except ValueError as e:
        js = None
        F.fail("inspect --json in.onnx prints one JSON object", "%s\n%s" % (e, r.describe()))
    if js is not None:
        F.check(r.rc == 0, "inspect --json exits 0", r.describe())
        try:
            f0 = js["files"][0]
            dup = f0["duplicates"]
            F.check(f0["path"] == src or os.path.basename(f0["path"]) == "in.onnx",
                    "inspect: path", str(f0.get("path")))
            F.check(f0["format"] == "onnx", "inspect: format onnx", str(f0.get("format")))
            F.check(f0["file_bytes"] == in_size, "inspect: file_bytes == file size",
                    "%s vs %d" % (f0["file_bytes"], in_size))
            F.check(f0["tensor_count"] >= len(in_names), "inspect: tensor_count >= initializers",
                    "%s vs %d" % (f0["tensor_count"], len(in_names)))
            total = sum(len(v) for v in in_arrays.values())
            F.check(f0["tensor_bytes"] >= total, "inspect: tensor_bytes >= initializer bytes",
                    "%s vs %d" % (f0["tensor_bytes"], total))
            F.check(dup["groups"] > 0, "inspect: duplicates.groups > 0", json.dumps(dup)[:500])
            if os.path.isfile(out):
                saved = in_size - os.path.getsize(out)
                F.check(abs(dup["saved_bytes"] - saved) <= 0.01 * saved,
                        "inspect: duplicates.saved_bytes within 1% of in_size - out_size",
                        "saved_bytes %s, in - out = %d" % (dup["saved_bytes"], saved))
            for g in dup["list"]:
                F.check(len(g["members"]) >= 2 and g["bytes_each"] > 0,
                        "inspect: each duplicate group has >= 2 members", json.dumps(g)[:300])
                break
        except (KeyError, IndexError, TypeError) as e:
            F.fail("inspect --json has the contract's fields", "missing %r in %s" % (e, r.out[:800]))
    if os.path.isfile(out):
        r = C.run(args.bin, "inspect", "--json", out)
        C.check_inspect_json(F, r.out, "inspect --json out.onnx")
        try:
            dup = json.loads(r.out)["files"][0]["duplicates"]
            F.check(dup["groups"] == 0 and dup["saved_bytes"] == 0,
                    "inspect on the converted model: no duplicates left", json.dumps(dup)[:500])
        except (ValueError, KeyError, IndexError, TypeError) as e:
            F.fail("inspect --json out.onnx", "%r\n%s" % (e, r.describe()))

    # ---- convert --no-dedup ----------------------------------------------------------------
    out_nd = os.path.join(w, "out_nodedup.onnx")
    r = C.run(args.bin, "convert", "--no-dedup", src, "-o", out_nd)
    if F.check(r.rc == 0 and os.path.isfile(out_nd), "convert --no-dedup exits 0", r.describe()):
        F.check("dedup merged" not in r.out, "--no-dedup: no 'dedup merged' in stdout", r.out)
        ndm = onnx.load(out_nd)
        names = sorted(t.name for t in ndm.graph.initializer)
        F.check(names == in_names, "--no-dedup: all initializers present, same names",
                "missing %s, extra %s" % (sorted(set(in_names) - set(names))[:5],
                                          sorted(set(names) - set(in_names))[:5]))
        bad = [t.name for t in ndm.graph.initializer
               if t.name in in_arrays and onnx.numpy_helper.to_array(t).tobytes()
               != in_arrays[t.name]]
        F.check(not bad, "--no-dedup: every initializer's bytes unchanged", str(bad[:5]))
        del ndm
        check_same_outputs(out_nd, "convert --no-dedup")

    # ---- external-data input -> external output ---------------------------------------------
    out_e = os.path.join(w, "ext_out", "albert_out.onnx")
    os.makedirs(os.path.dirname(out_e))
    r = C.run(args.bin, "convert", src_ext, "-o", out_e)
    if F.check(r.rc == 0 and os.path.isfile(out_e), "convert external-data input exits 0",
               r.describe()):
        F.check(os.path.isfile(out_e + ".data"),
                "external input: output written with <out>.data",
                "files: %s" % sorted(os.listdir(os.path.dirname(out_e))))
        check_external(F, onnx, out_e, "external input", align=None)
        check_model(out_e, "external input")
        check_same_outputs(out_e, "external input")
    F.check(C.tree_state(ext_dir) == ext_state, "external input folder unchanged by convert")

    # ---- --external-data on an inline input ------------------------------------------------
    out_x = os.path.join(w, "xout", "out.onnx")
    os.makedirs(os.path.dirname(out_x))
    r = C.run(args.bin, "convert", "--external-data", src, "-o", out_x)
    if F.check(r.rc == 0 and os.path.isfile(out_x), "convert --external-data exits 0",
               r.describe()):
        if F.check(os.path.isfile(out_x + ".data"), "--external-data writes <out>.data",
                   "files: %s" % sorted(os.listdir(os.path.dirname(out_x)))):
            data_size = os.path.getsize(out_x + ".data")
            F.check(data_size * 5 <= in_size, "--external-data: deduplicated data is small",
                    "data %d bytes, input %d" % (data_size, in_size))
        check_external(F, onnx, out_x, "--external-data", align=4096)
        check_model(out_x, "--external-data")
        check_same_outputs(out_x, "--external-data")
    F.check(C.sha256(src) == src_sha, "input file unchanged")
    return F.finish(NAME)


def check_external(F, onnx, path, what, align):
    """Every external_data entry names <basename>.data, lies inside it and (if ``align``) starts
    at a multiple of ``align``."""
    m = onnx.load(path, load_external_data=False)
    data = path + ".data"
    size = os.path.getsize(data) if os.path.isfile(data) else -1
    n_ext, problems = 0, []
    for t in m.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        n_ext += 1
        kv = {e.key: e.value for e in t.external_data}
        loc, off, ln = kv.get("location"), int(kv.get("offset", 0)), int(kv.get("length", -1))
        if loc != os.path.basename(data):
            problems.append("%s: location %r, expected %r" % (t.name, loc, os.path.basename(data)))
        if align and off % align:
            problems.append("%s: offset %d not a multiple of %d" % (t.name, off, align))
        if ln < 0 or off + ln > size:
            problems.append("%s: offset %d length %d outside the %d-byte data file"
                            % (t.name, off, ln, size))
    F.check(n_ext > 0, "%s: output has external tensors" % what)
    F.check(not problems, "%s: external_data entries valid%s" % (
        what, " and %d-aligned" % align if align else ""), "\n".join(problems[:10]))


if __name__ == "__main__":
    C.run_main(NAME, main)
