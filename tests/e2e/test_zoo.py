#!/usr/bin/env python3
"""End-to-end: folder mode on the demo zoo (tests/fixtures/gen_models.py zoo). `convert ZOO -o OUT`
mirrors every *.onnx (recursive) to OUT/<relative path>, skips README.txt, writes the externally
stored model external again (<out>.data), prints one contract line per model, and every output
computes bit-identical results. Also two input files into an existing folder (OUT/<basename>)."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_zoo"
LINE_RE = re.compile((r"^(?P<inp>.+) -> (?P<out>.+): (?P<a>%s) -> (?P<b>%s) "
                      r"\((?P<r>[0-9.]+)x\)(?:, dedup merged (?P<n>\d+) tensors?)?"
                      r"(?:, tensors in (?P<data>.+\.data))?"
                      r", on (?P<dev>cpu|cuda)(?: \(verified against the CPU\))?$")
                     % (C.SIZE, C.SIZE))


def with_data(path):
    """A model's bytes with its external data file, as convert counts them."""
    return os.path.getsize(path) + (os.path.getsize(path + ".data")
                                    if os.path.exists(path + ".data") else 0)


def feeds_for(np, path):
    s = C.session(path)
    feeds = {}
    rng = np.random.default_rng(5)
    for i in s.get_inputs():
        shape = [d if isinstance(d, int) else 16 for d in i.shape]
        if i.type == "tensor(int64)":
            feeds[i.name] = rng.integers(0, 500, size=shape).astype(np.int64)
        elif i.type == "tensor(bool)":
            feeds[i.name] = np.array(False)
        else:
            feeds[i.name] = rng.normal(0, 1, size=shape).astype(np.float32)
    return feeds


def main():
    np, onnx, _ = C.import_deps("numpy", "onnx", "onnxruntime")
    args = C.parse_args(__doc__)
    G = C.gen_models()
    F = C.Failures()
    zoo = os.path.join(args.work, "zoo")
    models = [os.path.relpath(p, zoo) for p in G.make_zoo(zoo, count=7)]
    before = C.tree_state(zoo)
    out = os.path.join(args.work, "out")
    r = C.run(args.bin, "convert", zoo, "-o", out)
    F.check(r.rc == 0, "convert ZOO -o OUT exits 0", r.describe())
    # one line per model in the contract's format; a closing "total: ..." line is tolerated
    # one line per model; the closing summary table ("format ..." header, one row per format)
    # and the "total:" line are tolerated
    table = re.compile(r"^(format\s+ok\s+failed|(onnx|pth|safetensors)\s+\d+\s+\d+\s)")
    lines = [l for l in r.out.splitlines()
             if l.strip() and not l.startswith("total:") and not table.match(l)]
    bad = [l for l in lines if not LINE_RE.match(l)]
    F.check(len(lines) == len(models) and not bad,
            "one line per model on stdout: 'IN -> OUT: A kB -> B kB (R.RRx)[, dedup merged N "
            "tensors]'", "%d model lines for %d models; not in that format:\n%s"
            % (len(lines), len(models), "\n".join(bad)))
    sizes = [(l, C.human_bytes(with_data(m.group("inp"))),
              C.human_bytes(with_data(m.group("out"))))
             for l in lines for m in [LINE_RE.match(l)] if m and os.path.isfile(m.group("out"))]
    F.check(sizes and all("%s -> %s (" % (a, b) in l for l, a, b in sizes),
            "each line's byte counts are its files' (external data included), in inspect's units",
            "\n".join("%s  (files: %s -> %s)" % x for x in sizes))
    F.check(C.tree_state(zoo) == before, "zoo folder unchanged")
    written = sorted(os.path.relpath(os.path.join(d, f), out)
                     for d, _, fs in os.walk(out) for f in fs) if os.path.isdir(out) else []
    expect = sorted(models + [m + ".data" for m in models if m.startswith("external/")])
    F.check(written == expect, "OUT mirrors the *.onnx files (plus <out>.data for the external "
            "one), nothing else", "expected %s\ngot      %s" % (expect, written))
    for rel in models:
        src, dst = os.path.join(zoo, rel), os.path.join(out, rel)
        if not os.path.isfile(dst):
            continue
        try:
            feeds = feeds_for(np, src)
            d = C.diff_outputs(C.run_model(src, feeds), C.run_model(dst, feeds))
            F.check(not d, "%s: outputs bit-identical" % rel, d)
        except Exception as e:
            F.fail("%s: onnxruntime runs input and output" % rel, str(e))
        try:
            onnx.checker.check_model(dst)
        except Exception as e:
            F.fail("%s: onnx.checker passes on the output" % rel, str(e))

    # several input files into an existing folder: OUT/<basename>
    out2 = os.path.join(args.work, "out2")
    os.makedirs(out2)
    a, b = os.path.join(zoo, "mlp_dup.onnx"), os.path.join(zoo, "vision", "small_cnn.onnx")
    r = C.run(args.bin, "convert", a, b, "-o", out2)
    F.check(r.rc == 0 and sorted(os.listdir(out2)) == ["mlp_dup.onnx", "small_cnn.onnx"],
            "convert A B -o DIR writes DIR/<basename> for each", r.describe() + "\nlisting: %s"
            % sorted(os.listdir(out2)))
    # one input file and an existing folder as output: OUT/<basename>
    out3 = os.path.join(args.work, "out3")
    os.makedirs(out3)
    r = C.run(args.bin, "convert", "-q", a, "-o", out3)
    F.check(r.rc == 0 and os.listdir(out3) == ["mlp_dup.onnx"],
            "convert A -o EXISTING_DIR writes EXISTING_DIR/A", r.describe())
    F.check(r.out.strip() == "", "-q prints no per-model line", r.out)
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
