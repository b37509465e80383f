#!/usr/bin/env python3
"""End-to-end: `convert --int8 --int8-min-elements 1` over ONNX's own backend test models
(Debian's libonnx-testdata) that hold eligible weights, side by side with onnxruntime's
`quantize_dynamic(weight_type=QInt8, per_channel=True)`.

Selection: every */model.onnx with a FLOAT initializer (or, from IR 4, a FLOAT Constant) at the
weight input of a MatMul, Gemm, Conv, ConvTranspose, LSTM, GRU or RNN (in the data shipped by
Debian: 31 pytorch-converted/pytorch-operator models, all opset 6, IR 3, weights of 36-1872
elements, every initializer also a graph input). Each is run in four variants:
  orig       the file as shipped: opset 6 < 7, so nothing may be quantized, and the line must
             say `int8: 0 tensors: INT8 needs opset 7 and the model has opset 6`;
  op13       onnx.version_converter to opset 13, IR 8, initializers no longer graph inputs:
             per-channel INT8 with DequantizeLinear(axis);
  op11       the same at opset 11: per-channel INT8 with Cast(to=FLOAT) + Mul by the scales
             shaped to broadcast (Conv [O,1,...], ConvTranspose [O/g,1,...], Gemm transB
             [N,1], MatMul/Gemm B [N]), no zero point;
  op13_in    opset 13 with the initializers still listed as graph inputs: a caller may
             override those, so they must not be quantized.
With --int8-min-elements 1 every eligible weight is considered, but the gain rule leaves FP32
those where 3 x elements <= 4 x channels + 160 (x2 before IR 4): the expected set comes from
test_int8.expected_quant, and exactly those weights must be quantized; when none is, the line
must give expected_quant's reason. Where the contract's quantized model (built in Python) would
be larger than the FP32 file, the tool must instead keep FP32 and say by how many bytes.
Feeds: test_data_set_0. Reference: onnxruntime on the variant's input model (the reference
evaluator where onnxruntime cannot run it).

modelshrink FAILS the test on: a non-zero exit or crash; a wrong `int8:` count or reason; an
output failing onnx.checker.check_model(full_check=True) where the input passes it;
onnxruntime failing to load or run the output where it runs the input; a cosine similarity
(all outputs flattened, float64) below FAIL_COSINE = 0.999; a quantized weight that breaks the
rule (not eligible, missing, wrong form/axis/names/scale shape or values, INT8 values not
bit-identical to the numpy reference: see test_int8.py); quantization where none is allowed
(orig, op13_in, weights below the gain rule), or any FLOAT weight changed there; a quantized
file that is not smaller than the same conversion without --int8. Cosine below WARN_COSINE =
0.9999 is listed, not failed. A run that made no check, or in which no model had weights
quantized, fails.

Peer: onnxruntime.quantization.quantize_dynamic(weight_type=QInt8, per_channel=True) on the same
input: time (in-process call, so without interpreter start-up; modelshrink's is the wall time of
the whole process), output size, cosine and worst abs error in onnxruntime. Its failures are
reported, never failed. A table of both goes to stdout and WORK/report.tsv, with the min and
median cosine of each per variant.

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
FAIL_COSINE = 0.999
WARN_COSINE = 0.9999
VARIANTS = ("orig", "op13", "op11", "op13_in")


def has_eligible(onnx, m):
    """A FLOAT initializer (or, from IR 4, a FLOAT Constant value) at a weight input of an op
    INT8 quantizes."""
    import test_int8 as T
    for g in C.all_graphs(m.graph):
        inits = {t.name for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT}
        if m.ir_version >= 4:
            inits |= {n.output[0] for n in g.node if T.const_value(n) is not None and
                      T.const_value(n).data_type == onnx.TensorProto.FLOAT}
        for n in g.node:
            if n.op_type in T.ELIGIBLE and any(
                    i < len(n.input) and n.input[i] in inits
                    for i in ((1, 2) if n.op_type in T.RECURRENT else (1,))):
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
    print("%d models, %d with a FLOAT weight at a MatMul/Gemm/Conv/ConvTranspose/LSTM/GRU/RNN "
          "weight input" % (len(models), len(selected)), flush=True)
    if not selected:
        C.skip("no model with eligible weights in %s" % DATA)

    rows = []
    low = []
    n_quant, n_kept, n_below = {}, [0], [0]
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
            line = T.int8_line(r)
            k_got, why_got = line if line else (None, None)
            row["k"] = "?" if line is None else str(k_got)
            try:
                onnx.checker.check_model(dst, full_check=full)
                err = ""
            except Exception as e:  # noqa: BLE001
                err = str(e)[:400]
            F.check(not err, "%s: output passes checker%s" % (tag, " full_check" if full else ""),
                    "%s\n%s" % (r.cmd(), err))
            out = onnx.load(dst)
            orig = onnx.load(src)
            E = T.expected_quant(np, orig, 1)
            # the same conversion without --int8: the FP32 file the tool compares against
            plain = os.path.join(d, "noint8.onnx")
            rb = C.run(args.bin, "convert", src, "-o", plain)
            grow = None
            if E.k and rb.rc == 0:
                bm = onnx.load(plain)
                grow = T.quantize_like_contract(np, onnx, bm, T.expected_quant(np, bm, 1)) \
                    .ByteSize() - bm.ByteSize()
            if E.k and grow is not None and grow >= 0:
                # quantizing would make the file larger: kept FP32, by how much said
                want = "quantizing %d tensors would make the file %d bytes larger; kept FP32" % (
                    E.k, grow)
                F.check(k_got == 0 and why_got == want,
                        "%s: reports 'int8: 0 tensors: %s'" % (tag, want), r.describe())
                T.check_nothing_quantized(np, F, tag, orig, out, "the file would grow")
                n_kept[0] += 1
            elif E.k == 0:
                F.check(k_got == 0 and why_got == E.why,
                        "%s: reports 'int8: 0 tensors: %s'" % (tag, E.why), r.describe())
                T.check_nothing_quantized(np, F, tag, orig, out, E.why)
                if variant == "orig":
                    F.check(E.why == "INT8 needs opset 7 and the model has opset 6",
                            "%s: the oracle's reason is opset 6" % tag, E.why)
                elif variant == "op13_in":
                    F.check(not E.weights, "%s: the oracle finds no weight (all are graph "
                            "inputs)" % tag, str(sorted(E.weights)))
            else:
                F.check(k_got == E.k and why_got == "",
                        "%s: reports 'int8: %d tensors'" % (tag, E.k), r.describe())
                F.check(variant in ("op13", "op11"), "%s: quantization only where allowed" % tag)
                T.check_quantized(np, onnx, F, tag, orig, out, E)
                F.check(rb.rc == 0 and row["ms_bytes"] < os.path.getsize(plain),
                        "%s: the INT8 file is smaller than the file without --int8" % tag,
                        "%s: %d bytes; %s: %s" % (r.cmd(), row["ms_bytes"], rb.cmd(),
                                                  os.path.getsize(plain)
                                                  if os.path.isfile(plain) else rb.describe()))
                n_quant[variant] = n_quant.get(variant, 0) + 1
                row["quant"] = True
            # the gain rule: every weight below it stays FP32 (and the others are quantized)
            below = sorted(k for k, i in E.weights.items() if i.reason == "no_gain")
            qnames = {x[:-len("_quantized")] for x in T.quantized_tensors(out)[0]}
            n_below[0] += len(below)
            if below:
                F.check(not (set(below) & qnames),
                        "%s: weights with 3 x elements <= 4 x channels + %d stay FP32: %s" % (
                            tag, T.NODE_BYTES * (2 if orig.ir_version < 4 else 1), below),
                        "quantized: %s" % sorted(qnames))
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

    def stats(xs):
        return ("min %.6f median %.6f" % (min(xs), float(np.median(xs)))) if xs else "-"
    for v in VARIANTS[1:3]:
        ms = [r["ms_cos"] for r in rows if r["model"].endswith("[%s]" % v) and
              r["ms_cos"] is not None]
        pe = [r["pe_cos"] for r in rows if r["model"].endswith("[%s]" % v) and
              r["pe_cos"] is not None]
        msq = [r["ms_cos"] for r in rows if r["model"].endswith("[%s]" % v) and
               r["ms_cos"] is not None and r.get("quant")]
        peq = [r["pe_cos"] for r in rows if r["model"].endswith("[%s]" % v) and
               r["pe_cos"] is not None and r.get("quant")]
        mst = sum(r["ms_s"] or 0 for r in rows if r["model"].endswith("[%s]" % v))
        pet = sum(r["pe_s"] or 0 for r in rows if r["model"].endswith("[%s]" % v))
        print("%s: modelshrink %d models, cosine %s, total %.2f s; quantize_dynamic %d models, "
              "cosine %s, total %.2f s" % (v, len(ms), stats(ms), mst, len(pe), stats(pe), pet))
        print("%s, the %d models where modelshrink quantized weights: modelshrink cosine %s; "
              "quantize_dynamic cosine %s" % (v, len(msq), stats(msq), stats(peq)))
    print("weights left FP32 by the gain rule: %d; models kept FP32 because the file would "
          "grow: %d" % (n_below[0], n_kept[0]))
    if not F.checks:
        F.fail("the test made checks", "no check was made")
    F.check(sum(n_quant.values()) > 0, "some model had weights quantized (op13/op11)",
            "none: the corpus exercised no INT8 output")
    print("modelshrink cosine below %g (listed, not failed; fails below %g): %d: %s" % (
        WARN_COSINE, FAIL_COSINE, len(low), ", ".join(low)))
    print("report: %s" % os.path.join(args.work, "report.tsv"))
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
