#!/usr/bin/env python3
"""End-to-end: `convert --int8 --int8-min-elements 1` over ONNX's own backend test models
(Debian's libonnx-testdata) that hold eligible weights, side by side with onnxruntime's
`quantize_dynamic(weight_type=QInt8, per_channel=True)`.

Selection: every */model.onnx with a FLOAT initializer at the weight input of a MatMul, Gemm,
Conv or ConvTranspose (in the data shipped by Debian: 31 pytorch-converted/pytorch-operator
models, all opset 6, IR 3, weights of 36-1872 elements, every initializer also a graph input).
Each is run in four variants:
  orig       the file as shipped: opset 6 < 10, so nothing may be quantized (reported);
  op13       onnx.version_converter to opset 13, IR 8, initializers no longer graph inputs:
             per-channel INT8;
  op11       the same at opset 11: per-tensor INT8 (reported as such);
  op13_in    opset 13 with the initializers still listed as graph inputs: a caller may
             override those, so they must not be quantized.
Feeds: test_data_set_0. Reference: onnxruntime on the variant's input model (the reference
evaluator where onnxruntime cannot run it).

modelshrink FAILS the test on: a non-zero exit or crash; an output failing
onnx.checker.check_model(full_check=True) where the input passes it; onnxruntime failing to load
or run the output where it runs the input; a cosine similarity (all outputs flattened, float64)
below FAIL_COSINE = 0.99; a quantized weight that breaks the rule (not eligible, missing, wrong
axis/names/scale, INT8 values not bit-identical to the numpy reference: see test_int8.py); or
quantization where none is allowed (orig, op13_in). Cosine below WARN_COSINE = 0.999 is listed
(INT8 on weights of a few dozen values can lose more), not failed.

Peer: onnxruntime.quantization.quantize_dynamic(weight_type=QInt8, per_channel=True) on the same
input: time (in-process call, so without interpreter start-up; modelshrink's is the wall time of
the whole process), output size, cosine and worst abs error in onnxruntime. Its failures are
reported, never failed. A table of both goes to stdout and WORK/report.tsv.

Data folder: $MSH_ONNX_TESTDATA or /usr/share/libonnx-testdata/data (skip when missing)."""

import glob
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_int8_corpus"
DATA = os.environ.get("MSH_ONNX_TESTDATA", "/usr/share/libonnx-testdata/data")
FAIL_COSINE = 0.99
WARN_COSINE = 0.999
VARIANTS = ("orig", "op13", "op11", "op13_in")


def has_eligible(onnx, m):
    for g in C.all_graphs(m.graph):
        inits = {t.name for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT}
        for n in g.node:
            if n.op_type in ("MatMul", "Gemm", "Conv", "ConvTranspose") and \
                    len(n.input) > 1 and n.input[1] in inits:
                return True
    return False


def make_variant(onnx, m, variant):
    """The variant's model, or raise."""
    from onnx import version_converter
    if variant == "orig":
        return m
    target = 11 if variant == "op11" else 13
    v = version_converter.convert_version(m, target)
    v.ir_version = 8
    if variant != "op13_in":
        inits = {t.name for t in v.graph.initializer}
        keep = [i for i in v.graph.input if i.name not in inits]
        del v.graph.input[:]
        v.graph.input.extend(keep)
    onnx.checker.check_model(v)
    return v


def outputs(np, onnx, path, feeds):
    """(outputs dict, engine)."""
    try:
        return C.run_model(path, feeds), "ort"
    except Exception as e:  # noqa: BLE001
        from onnx.reference import ReferenceEvaluator
        m = onnx.load(path)
        try:
            r = ReferenceEvaluator(m).run(None, feeds)
        except Exception:  # noqa: BLE001
            raise RuntimeError("onnxruntime: %s" % str(e).splitlines()[0][:200])
        return dict(zip([o.name for o in m.graph.output], r)), "ref"


def main():
    np, onnx = C.import_deps("numpy", "onnx")
    C.import_deps("onnxruntime")
    args = C.parse_args(__doc__)
    if not os.path.isdir(DATA):
        C.skip("ONNX test data folder %s not found (install libonnx-testdata or set "
               "MSH_ONNX_TESTDATA)" % DATA)
    import test_int8 as T
    import test_testdata as TD
    warnings.simplefilter("ignore")
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        quantize_dynamic = None
        print("NOTE: onnxruntime.quantization is not importable (%s): no peer" % e)
    import logging
    logging.getLogger().setLevel(logging.ERROR)

    F = C.Failures()
    models = sorted(glob.glob(os.path.join(DATA, "**", "model.onnx"), recursive=True))
    selected = []
    for p in models:
        try:
            if has_eligible(onnx, onnx.load(p, load_external_data=False)):
                selected.append(p)
        except Exception:  # noqa: BLE001
            pass
    print("%d models, %d with a FLOAT initializer at a MatMul/Gemm/Conv/ConvTranspose weight "
          "input" % (len(models), len(selected)), flush=True)
    if not selected:
        C.skip("no model with eligible weights in %s" % DATA)

    rows = []
    low = []
    for p in selected:
        name = os.path.relpath(os.path.dirname(p), DATA)
        feeds, _ = TD.load_case(onnx, p)
        base = onnx.load(p)
        for variant in VARIANTS:
            tag = "%s [%s]" % (name, variant)
            d = os.path.join(args.work, name.replace("/", "__"), variant)
            os.makedirs(d, exist_ok=True)
            src = os.path.join(d, "in.onnx")
            try:
                vm = make_variant(onnx, base, variant)
            except Exception as e:  # noqa: BLE001
                print("  %-50s variant not made (version converter: %s)" % (
                    tag, str(e).splitlines()[0][:100]))
                continue
            onnx.save(vm, src)
            row = {"model": tag, "k": "", "ms_s": None, "ms_bytes": None, "ms_cos": None,
                   "ms_worst": None, "pe_s": None, "pe_bytes": None, "pe_cos": None,
                   "pe_worst": None, "pe_note": "", "in_bytes": os.path.getsize(src),
                   "engine": ""}
            rows.append(row)
            try:
                ref, eng = outputs(np, onnx, src, feeds)
                row["engine"] = eng
            except Exception as e:  # noqa: BLE001
                ref, eng = None, None
                row["engine"] = "none"
                print("  %-50s no engine runs the input (%s): only conversion and checker" % (
                    tag, str(e)[:100]))
            try:
                onnx.checker.check_model(src, full_check=True)
                full = True
            except Exception:  # noqa: BLE001
                full = False

            # ---- modelshrink --------------------------------------------------------------
            dst = os.path.join(d, "ms.onnx")
            t0 = time.perf_counter()
            r = C.run(args.bin, "convert", "--int8", "--int8-min-elements", "1", src, "-o", dst)
            row["ms_s"] = time.perf_counter() - t0
            if not F.check(r.rc == 0 and os.path.isfile(dst), "%s: convert exits 0" % tag,
                           r.describe()):
                continue
            row["ms_bytes"] = os.path.getsize(dst)
            mt = T.INT8_RE.search(r.out)
            row["k"] = mt.group(1) if mt else ("none" if "int8: none" in r.out else "?")
            try:
                onnx.checker.check_model(dst, full_check=full)
                F.check(True, tag + ": checker")
            except Exception as e:  # noqa: BLE001
                F.fail("%s: output passes checker%s" % (tag, " full_check" if full else ""),
                       "%s\n%s" % (r.cmd(), str(e)[:400]))
            out = onnx.load(dst)
            orig = onnx.load(src)
            if variant in ("orig", "op13_in"):
                qin, dqs = T.quantized_in(out)
                F.check(not dqs and not any(t.data_type == 3 for t in out.graph.initializer),
                        "%s: nothing quantized (%s)" % (
                            tag, "opset 6 < 10" if variant == "orig" else
                            "the weights are graph inputs"),
                        "%s\nstdout: %s" % (r.cmd(), r.out.strip()))
                if variant == "orig":
                    F.check("opset 6" in r.out + r.err,
                            "%s: the opset that prevents INT8 is reported" % tag, r.describe())
            else:
                expect, k_want = T.expected_quant(np, orig, 1)
                F.check(mt is not None and int(mt.group(1)) == k_want,
                        "%s: stdout reports 'int8: %d tensors'" % (tag, k_want), r.describe())
                T.check_quantized(np, onnx, F, tag, orig, out, expect,
                                  per_tensor=(variant == "op11"), min_elements=1)
            if ref is not None:
                try:
                    got = C.run_model(dst, feeds) if eng == "ort" else \
                        outputs(np, onnx, dst, feeds)[0]
                except Exception as e:  # noqa: BLE001
                    F.fail("%s: %s runs the output" % (tag, "onnxruntime" if eng == "ort" else
                                                       "the reference evaluator"),
                           "%s\n%s" % (r.cmd(), str(e)[:400]))
                    got = None
                if got is not None:
                    cos, worst = T.cosine(np, ref, got)
                    row["ms_cos"], row["ms_worst"] = cos, worst
                    F.check(cos >= FAIL_COSINE, "%s: cosine >= %g" % (tag, FAIL_COSINE),
                            "%s\ncosine %.6f worst abs %.4g" % (r.cmd(), cos, worst))
                    if cos < WARN_COSINE:
                        low.append(tag)

            # ---- peer ---------------------------------------------------------------------
            if quantize_dynamic is None or variant == "op13_in":
                continue
            pdst = os.path.join(d, "peer.onnx")
            t0 = time.perf_counter()
            try:
                quantize_dynamic(src, pdst, weight_type=QuantType.QInt8, per_channel=True)
                row["pe_s"] = time.perf_counter() - t0
                row["pe_bytes"] = os.path.getsize(pdst)
            except Exception as e:  # noqa: BLE001
                row["pe_note"] = "quantize_dynamic: %s" % str(e).splitlines()[0][:80]
                continue
            if ref is None:
                continue
            try:
                got = C.run_model(pdst, feeds)
                row["pe_cos"], row["pe_worst"] = T.cosine(np, ref, got)
            except Exception as e:  # noqa: BLE001
                row["pe_note"] = "onnxruntime: %s" % str(e).splitlines()[0][:80]

    def f(x, fmt):
        return "-" if x is None else fmt % x

    hdr = ("model [variant]", "K", "ms s", "ms bytes", "ms cosine", "ms worst", "qd s",
           "qd bytes", "qd cosine", "qd worst", "in bytes", "note")
    lines = []
    for r in rows:
        lines.append((r["model"], r["k"], f(r["ms_s"], "%.3f"), f(r["ms_bytes"], "%d"),
                      f(r["ms_cos"], "%.6f"), f(r["ms_worst"], "%.3g"), f(r["pe_s"], "%.3f"),
                      f(r["pe_bytes"], "%d"), f(r["pe_cos"], "%.6f"), f(r["pe_worst"], "%.3g"),
                      str(r["in_bytes"]), (r["engine"] if r["engine"] != "ort" else "") +
                      (" " if r["engine"] != "ort" and r["pe_note"] else "") + r["pe_note"]))
    with open(os.path.join(args.work, "report.tsv"), "w") as fh:
        fh.write("\t".join(hdr) + "\n")
        for ln in lines:
            fh.write("\t".join(ln) + "\n")
    print("\nms = modelshrink convert --int8 --int8-min-elements 1 (process wall time); qd = "
          "quantize_dynamic(QInt8, per_channel=True) (call time). Cosine/worst abs vs the "
          "input model's outputs in onnxruntime (note 'ref': reference evaluator).")
    print("%-58s %4s %6s %8s %9s %8s %6s %8s %9s %8s %8s  %s" % hdr)
    for ln in lines:
        print("%-58s %4s %6s %8s %9s %8s %6s %8s %9s %8s %8s  %s" % ln)
    for v in VARIANTS[1:3]:
        ms = [r["ms_cos"] for r in rows if r["model"].endswith("[%s]" % v) and
              r["ms_cos"] is not None]
        pe = [r["pe_cos"] for r in rows if r["model"].endswith("[%s]" % v) and
              r["pe_cos"] is not None]
        mst = sum(r["ms_s"] or 0 for r in rows if r["model"].endswith("[%s]" % v))
        pet = sum(r["pe_s"] or 0 for r in rows if r["model"].endswith("[%s]" % v))
        print("%s: modelshrink %d models, min cosine %s, total %.2f s; quantize_dynamic %d "
              "models, min cosine %s, total %.2f s" % (
                  v, len(ms), "%.6f" % min(ms) if ms else "-", mst, len(pe),
                  "%.6f" % min(pe) if pe else "-", pet))
    print("modelshrink cosine below %g (listed, not failed; fails below %g): %d: %s" % (
        WARN_COSINE, FAIL_COSINE, len(low), ", ".join(low)))
    print("report: %s" % os.path.join(args.work, "report.tsv"))
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
