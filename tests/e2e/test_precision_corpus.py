#!/usr/bin/env python3
"""End-to-end: every precision mode over ONNX's own backend test models (Debian's
libonnx-testdata), judged by onnxruntime on the CPU.

For every */model.onnx whose FP32 original loads and runs in onnxruntime (CPU) on its
test_data_set_0 inputs, each mode below converts it, and the output must:
  - convert (exit 0) and load and run in onnxruntime on the CPU: `--storage-only` promises to run
    wherever the original runs, and the default modes never make a model that runs worse;
  - give the same non-float outputs (integers, booleans, strings) bit for bit;
  - give float outputs whose cosine similarity to the original's (all float outputs flattened,
    float64) is >= 0.999; NaN and infinities must sit where the original has them.
The corpus's models with weights are opset 6 (pytorch-converted, pytorch-operator), where BF16
is not allowed: each model holding an FP32 weight of 64 elements or more is judged a second
time converted to opset 13 by onnx.version_converter (IR 8, initializers no longer graph
inputs), named "<model> [op13]".
Modes: `--fp16` (the default plan: range test, never larger), `--fp16 --storage-only`,
`--bf16 --storage-only`, `--int8 --int8-min-elements 1` (the corpus's weights have 36-1872
elements; the rule that INT8 must save bytes still applies). `--fp16 --allow-larger` (FP16 compute forced on every model,
even where only Casts are added) is run too and its cosines are listed, not judged: FP16
arithmetic itself overflows on some tests (softmax of 1e4, a product beyond 65504, tan near
pi/2); test_fp16_corpus judges those against onnxconverter-common.

Each mode converts the whole corpus in one batch (`convert --jobs N --report`), so the test
stays quick under valgrind; the report's `float`/`int8` records say how many tensors each model
got. Per model and mode the result goes to WORK/report.tsv; a summary per mode (models converted,
lowest cosine) is printed. Data folder: $MSH_ONNX_TESTDATA or /usr/share/libonnx-testdata/data
(skip when missing). Parallel workers: $MSH_JOBS or the CPU count."""

import concurrent.futures as cf
import glob
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_precision_corpus"
DATA = os.environ.get("MSH_ONNX_TESTDATA", "/usr/share/libonnx-testdata/data")
COS = 0.999
MODES = {
    "fp16": ["--fp16"],
    "fp16-storage": ["--fp16", "--storage-only"],
    "bf16-storage": ["--bf16", "--storage-only"],
    "int8": ["--int8", "--int8-min-elements", "1"],  # the corpus's weights are small
    "fp16-allow-larger": ["--fp16", "--allow-larger"],
}
JUDGED = ("fp16", "fp16-storage", "bf16-storage", "int8")


def _inputs(onnx, numpy_helper, d, m):
    out = []
    for i in range(len(m.graph.input)):
        p = os.path.join(d, "test_data_set_0", "input_%d.pb" % i)
        if not os.path.exists(p):
            break
        t = onnx.TensorProto()
        with open(p, "rb") as f:
            t.ParseFromString(f.read())
        out.append(numpy_helper.to_array(t))
    return out


def _run(ort, path, ins):
    so = ort.SessionOptions()
    so.log_severity_level = 4
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    return s.run(None, {names[i]: ins[i] for i in range(min(len(ins), len(names)))})


def _compare(np, ref, got):
    """(cosine over float outputs, problem or '')."""
    if len(ref) != len(got):
        return 0.0, "%d outputs, expected %d" % (len(got), len(ref))
    fa, fb = [], []
    for k, (a, b) in enumerate(zip(ref, got)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return 0.0, "output %d: shape %s, expected %s" % (k, b.shape, a.shape)
        if a.dtype.kind in "fc":
            if b.dtype != a.dtype:
                return 0.0, "output %d: %s, expected %s" % (k, b.dtype, a.dtype)
            a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
            if not np.array_equal(np.isnan(a64), np.isnan(b64)) or \
                    not np.array_equal(np.isinf(a64) * np.sign(np.nan_to_num(a64)),
                                       np.isinf(b64) * np.sign(np.nan_to_num(b64))):
                return float("nan"), "output %d: NaN/inf positions differ" % k
            fin = np.isfinite(a64)
            fa.append(a64[fin])
            fb.append(b64[fin])
        elif not np.array_equal(a, b):
            return 0.0, "output %d (%s) differs" % (k, a.dtype)
    if not fa:
        return 1.0, ""
    a, b = np.concatenate(fa), np.concatenate(fb)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return (1.0, "") if np.array_equal(a, b) else (0.0, "all-zero output differs")
    return float(np.dot(a, b) / (na * nb)), ""


def _op13(onnx, m):
    """The model at opset 13, IR 8, its initializers no longer graph inputs (as a current
    exporter writes it), when it holds an FP32 weight of 64 elements or more below opset 13;
    else None. BF16 storage needs opset 13, and the corpus's weighted models are opset 6."""
    from onnx import version_converter
    opset = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)
    big = any(t.data_type == onnx.TensorProto.FLOAT and
              int(__import__("numpy").prod(t.dims)) >= 64 for t in m.graph.initializer)
    if opset >= 13 or not big:
        return None
    v = version_converter.convert_version(m, 13)
    v.ir_version = 8
    inits = {t.name for t in v.graph.initializer}
    keep = [i for i in v.graph.input if i.name not in inits]
    del v.graph.input[:]
    v.graph.input.extend(keep)
    onnx.checker.check_model(v)
    return v


def make_variant(arg):
    """Write the opset-13 variant of one corpus model under `root` (same relative path)."""
    path, root = arg
    import onnx
    try:
        v = _op13(onnx, onnx.load(path))
    except Exception:  # noqa: BLE001 (the version converter cannot lift every model)
        return None
    if v is None:
        return None
    rel = os.path.relpath(os.path.dirname(path), DATA)
    dst = os.path.join(root, rel, "model.onnx")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    onnx.save(v, dst)
    return rel


def judge(arg):
    """(name, {mode: (status, cosine, detail, tensors)}) for one model (None: the original does
    not run in onnxruntime)."""
    src, name, data_dir, outs = arg
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    try:
        m = onnx.load(src)
        ins = _inputs(onnx, numpy_helper, data_dir, m)
        ref = _run(ort, src, ins)
    except Exception:  # noqa: BLE001
        return name, None
    res = {}
    for mode, (dst, rec) in outs.items():
        n = 0
        if rec is not None and rec.get("status") == "ok":
            part = rec.get("int8" if mode == "int8" else "float") or {}
            n = int(part.get("tensors", 0))
        if rec is None or rec.get("status") != "ok" or not os.path.exists(dst):
            res[mode] = ("convert", 0.0, (rec or {}).get("error") or "no output", n)
            continue
        try:
            got = _run(ort, dst, ins)
        except Exception as e:  # noqa: BLE001
            res[mode] = ("run", 0.0, "%s: %s" % (type(e).__name__, str(e)[:300]), n)
            continue
        c, why = _compare(np, ref, got)
        res[mode] = ("ok" if not why else "outputs", c, why, n)
    return name, res


def main():
    np, onnx, ort = C.import_deps("numpy", "onnx", "onnxruntime")
    args = C.parse_args(__doc__)
    if not os.path.isdir(DATA):
        C.skip("ONNX test data folder %s not found (install libonnx-testdata or set "
               "MSH_ONNX_TESTDATA)" % DATA)
    F = C.Failures()
    models = sorted(glob.glob(os.path.join(DATA, "**", "model.onnx"), recursive=True))
    jobs = int(os.environ.get("MSH_JOBS", os.cpu_count() or 2))
    op13_root = os.path.join(args.work, "op13")
    with cf.ProcessPoolExecutor(jobs) as ex:
        variants = [v for v in ex.map(make_variant, [(p, op13_root) for p in models],
                                      chunksize=8) if v]
    # one batch per mode and tree: every model of the corpus in one process
    recs = {}
    os.makedirs(os.path.join(args.work, "out"))
    for mode, flags in MODES.items():
        for tag, root in (("", DATA), (" [op13]", op13_root)):
            out = os.path.join(args.work, "out", mode + ("-op13" if tag else ""))
            report = out + ".jsonl"
            r = C.run(args.bin, "convert", "-q", "--jobs", str(jobs), "--report", report,
                      *flags, root, "-o", out, timeout=14400)
            F.check(r.rc in (0, 1), "%s%s: the batch runs to its end (exit %d)" % (
                mode, tag, r.rc), r.describe())
            if not os.path.exists(report):
                continue
            with open(report) as f:
                for line in f:
                    j = json.loads(line)
                    if j.get("type") == "model" and j["rel"].endswith("model.onnx"):
                        name = os.path.dirname(j["rel"]) + tag
                        recs.setdefault(name, {})[mode] = (j["output"], j)
    work = []
    for p in models:
        rel = os.path.relpath(os.path.dirname(p), DATA)
        for tag, src in (("", p), (" [op13]", os.path.join(op13_root, rel, "model.onnx"))):
            if tag and rel not in variants:
                continue
            name = rel + tag
            outs = {mode: recs.get(name, {}).get(
                mode, (os.path.join(args.work, "missing"), None)) for mode in MODES}
            work.append((src, name, os.path.dirname(p), outs))
    with cf.ProcessPoolExecutor(jobs) as ex:
        results = list(ex.map(judge, work, chunksize=4))
    ran = [(n, r) for n, r in results if r is not None]
    print("%d models (%d of them opset-13 variants), %d run in onnxruntime before conversion "
          "(the others are not judged)" % (len(results), sum(" [op13]" in n for n, _ in results),
                                           len(ran)))
    F.check(len(ran) >= 900, "onnxruntime runs most of the corpus (%d of %d)" % (
        len(ran), len(results)))
    with open(os.path.join(args.work, "report.tsv"), "w") as f:
        f.write("model\tmode\tstatus\tcosine\ttensors\tdetail\n")
        for n, r in ran:
            for mode, (st, c, why, k) in r.items():
                f.write("%s\t%s\t%s\t%.9f\t%d\t%s\n" % (n, mode, st, c, k,
                                                       why.replace("\t", " ").replace("\n", " ")))
    for mode in MODES:
        rows = [(n, r[mode]) for n, r in ran]
        conv = [x for x in rows if x[1][3] > 0]
        cos = sorted((x[1][1], x[0]) for x in rows if x[1][0] == "ok")
        print("%-18s %4d models with converted tensors; lowest cosine %s" % (
            mode, len(conv), ", ".join("%s %.6f" % (n, c) for c, n in cos[:3])))
        for n, (st, c, why, k) in rows:
            if mode in JUDGED:
                F.check(st == "ok" and c >= COS, "%s %s: %s, cosine %.6f >= %g" % (
                    n, mode, st, c, COS), why)
            elif st != "ok" or not c >= COS:
                print("  listed (%s): %s: %s cosine %.6f %s" % (mode, n, st, c, why[:120]))
        if mode in ("fp16-storage", "bf16-storage", "int8"):
            F.check(len(conv) > 0, "%s converts some corpus model (%d)" % (mode, len(conv)))
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
