"""Benchmark case for issue 16: the precision traps, modelshrink's default against its
--fp16-clamp and the peers (onnxconverter-common for FP16, onnxruntime's quantize_dynamic for
INT8), on the fixtures of tests/e2e/test_precision.py."""

import csv
import os
import subprocess

import harness as h
from harness import case

_QD = r'''
import json, os, sys, warnings
import numpy as np, onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
fx, work = sys.argv[1], sys.argv[2]
inputs = np.load(os.path.join(fx, "inputs.npz"))
feeds = {"detector_bn": ["detector"], "detector_folded": ["detector"], "crnn_op11": ["crnn"],
         "gated": ["gated", "gated_else"], "gated_op11": ["gated", "gated_else"]}
out = {}
def cos(a, b):
    a = np.concatenate([np.asarray(x, np.float64).ravel() for x in a])
    b = np.concatenate([np.asarray(x, np.float64).ravel() for x in b])
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))
for name, fs in feeds.items():
    src, dst = os.path.join(fx, name + ".onnx"), os.path.join(work, name + ".qdyn.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True)
        cs = []
        for f in fs:
            fd = {k.split("/", 1)[1]: inputs[k] for k in inputs.files if k.startswith(f + "/")}
            cs.append(cos(ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, fd),
                          ort.InferenceSession(dst, providers=["CPUExecutionProvider"]).run(None, fd)))
        out[name] = {"cosine": min(cs), "bytes": os.path.getsize(dst)}
    except Exception as e:
        out[name] = {"error": "%s: %s" % (type(e).__name__, str(e)[:120])}
print(json.dumps(out))
'''


@case("traps", "Precision traps: FP16, BF16 and INT8 on models that break converters")
def traps(ctx):
    """The fixtures of `tests/e2e/test_precision.py`, made with Debian's torch and torchvision:
    a MobileNetV3 text detector with BatchNorm variances of 1e7..1e8, exported with and without
    BatchNorm folding; an opset-11 CRNN (CNN + 2-layer bidirectional LSTM); a gated model whose
    weights are Constant nodes, inside an If too (Paddle style), at opsets 13 and 11; and a pitch
    estimator's state dict with BatchNorm variances up to 5e5. Cosine similarity of the outputs
    to the FP32 original (onnxruntime on the CPU; torch for the checkpoint), all outputs
    flattened; min over the feed sets (both If branches). modelshrink's default keeps FP32 what
    FP16 cannot hold; `--fp16-clamp` clamps it, as the converters before it did;
    onnxconverter-common is `convert_float_to_float16(keep_io_types=True)`; quantize_dynamic is
    `quantize_dynamic(weight_type=QInt8, per_channel=True)`."""
    work = os.path.join(ctx.work, "traps")
    test = os.path.join(h.ROOT, "tests", "e2e", "test_precision.py")
    p = subprocess.run([ctx.python, test, "--bin", ctx.bin, "--work", work, "--keep"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(p.stdout[-3000:], flush=True)
    tsv = os.path.join(work, "precision.tsv")
    if not os.path.exists(tsv):
        raise RuntimeError("tests/e2e/test_precision.py wrote no precision.tsv (exit %d)"
                           % p.returncode)
    res = {}
    for r in csv.DictReader(open(tsv), delimiter="\t"):
        res[(r["fixture"], r["mode"], r["tool"])] = r
    qd = subprocess.run([ctx.python, "-c", _QD, os.path.join(work, "fixtures"), work],
                        stdout=subprocess.PIPE, text=True)
    import json
    qdyn = json.loads(qd.stdout.strip().splitlines()[-1]) if qd.returncode == 0 else {}

    def cos(key):
        r = res.get(key)
        if not r:
            return "-"
        c = float(r["cosine"])
        return "%.5f" % c if c == c else "fails"

    def ratio(key):
        r = res.get(key)
        if not r or not int(r["bytes_out"]):
            return "-"
        return "%.2fx" % (int(r["bytes_in"]) / int(r["bytes_out"]))

    columns = [("fixture", "fixture", "l"), ("fp16", "--fp16 (default)", "r"),
               ("clamp", "--fp16 --fp16-clamp", "r"), ("occ", "onnxconverter-common", "r"),
               ("bf16s", "--bf16 --storage-only", "r"), ("int8", "--int8 cosine (size)", "r"),
               ("qdyn", "quantize_dynamic cosine (size)", "r")]
    rows = []
    for name in ("detector_bn", "detector_folded", "crnn_op11", "gated", "gated_op11"):
        q = qdyn.get(name, {})
        src_bytes = int(res[(name, "fp16", "modelshrink")]["bytes_in"]) \
            if (name, "fp16", "modelshrink") in res else 0
        qtxt = q.get("error", "-") if "cosine" not in q else "%.5f (%.2fx)" % (
            q["cosine"], src_bytes / q["bytes"] if q["bytes"] else 0)
        rows.append({"fixture": name,
                     "fp16": "%s (%s)" % (cos((name, "fp16", "modelshrink")),
                                          ratio((name, "fp16", "modelshrink"))),
                     "clamp": cos((name, "fp16-clamp", "modelshrink")),
                     "occ": cos((name, "fp16", "onnxconverter-common")),
                     "bf16s": "%s (%s)" % (cos((name, "bf16-storage", "modelshrink")),
                                           ratio((name, "bf16-storage", "modelshrink"))),
                     "int8": "%s (%s)" % (cos((name, "int8", "modelshrink")),
                                          ratio((name, "int8", "modelshrink"))),
                     "qdyn": qtxt})
    for ext in ("safetensors", "pth"):
        rows.append({"fixture": "pitch.pth -> " + ext,
                     "fp16": "%s (%s)" % (cos(("pitch.pth", "fp16 (%s)" % ext, "modelshrink")),
                                          ratio(("pitch.pth", "fp16 (%s)" % ext,
                                                 "modelshrink"))),
                     "clamp": cos(("pitch.pth", "fp16-clamp (%s)" % ext, "modelshrink")),
                     "occ": "-",
                     "bf16s": "%s (%s)" % (cos(("pitch.pth", "bf16 (%s)" % ext, "modelshrink")),
                                           ratio(("pitch.pth", "bf16 (%s)" % ext,
                                                  "modelshrink"))),
                     "int8": "-", "qdyn": "-"})
    lines = {k: r["line"] for k, r in res.items() if k[2] == "modelshrink"}
    notes = ["- `%s`" % lines[("detector_bn", "fp16", "modelshrink")].split(": ", 1)[-1]
             if ("detector_bn", "fp16", "modelshrink") in lines else "",
             "- `--keep-fp32 '*running_var'` with `--fp16-clamp` on the pitch checkpoint: "
             "cosine %s" % cos(("pitch.pth", "fp16-clamp+keep (safetensors)", "modelshrink")),
             "- BF16 `--storage-only` needs opset 13 (Cast to FLOAT from BFLOAT16): the opset-11 "
             "fixtures keep FP32 and the line says so.",
             "- test_precision: %s" % (p.stdout.strip().splitlines()[-1]
                                       if p.stdout.strip() else "no output")]
    return h.CaseResult(columns, rows, preface="Cosine to the FP32 original (size ratio in "
                        "brackets).", notes="\n".join(n for n in notes if n))


@case("range-cost", "What the FP16 range test costs")
def range_cost(ctx):
    """The range test runs inside the FP16 conversion kernel (one pass over each 1 MiB piece,
    counts kept in vector lanes). `scripts/bench/range_probe.c` times the kernel without it
    (`msh_f32_to_f16_buf`) and with it (`msh_f32_to_f16_range_buf`, what the engine runs) on a
    piece in cache, the worst case for the test's share: a conversion reads and writes files,
    which take most of its time. Then the whole `convert --fp16` of the floor case's 512 MiB
    model, with the test on (the default) and with `--fp16-clamp` (which still computes the
    counts for the line, but never redoes the model). The range test's end-to-end share is its
    kernel time on the model's bytes (one thread: an upper bound, the engine converts on all
    cores) over the conversion's wall time. Target (issue 16): at most 10%."""
    import statistics
    exe = os.path.join(ctx.work, "range_probe")
    build = os.path.join(h.ROOT, "build")
    subprocess.run(["cc", "-O2", "-std=c11", "-I", os.path.join(h.ROOT, "src"), "-I",
                    os.path.join(h.ROOT, "include"), os.path.join(h.HERE, "range_probe.c"),
                    os.path.join(build, "libmsh.a"), "-lpthread", "-lm", "-o", exe], check=True)
    p = subprocess.run([exe, "800" if ctx.quick else "3000"], stdout=subprocess.PIPE, text=True,
                       check=True)
    rounds = [tuple(float(x) for x in line.split()) for line in p.stdout.split("\n") if line]
    conv = statistics.median(r[0] for r in rounds)
    both = statistics.median(r[1] for r in rounds)
    extra = statistics.median(r[2] for r in rounds)
    rows = [{"what": "kernel, 1 MiB piece in cache: convert", "v": "%.2f GB/s" % conv},
            {"what": "kernel: convert + range test (the engine's)", "v": "%.2f GB/s" % both},
            {"what": "kernel: extra time for the range test", "v": "%.0f%%" % extra}]
    import cases_floor as FL
    model = FL.gen_mlp(ctx, "floor-quick.onnx" if ctx.quick else "floor-512.onnx",
                       FL.QUICK if ctx.quick else FL.FULL)
    tools = [FL.ms(ctx, "modelshrink --fp16", "--fp16"),
             FL.ms(ctx, "modelshrink --fp16 --fp16-clamp", "--fp16", "--fp16-clamp")]
    h.warm_read(model)
    runs = h.round_robin(tools, model, os.path.join(ctx.work, "range-out"),
                         os.path.join(ctx.work, "range-logs"), ctx.reps)
    sums = {t.name: h.summarize(t.name, runs[t.name]) for t in tools}
    for t in tools:
        rows.append({"what": "end to end: %s (%s MiB)" % (t.name, os.path.getsize(model) >> 20),
                     "v": "%.3f s median wall" % sums[t.name].wall_median})
    h.rm_f(*[os.path.join(ctx.work, "range-out", f)
             for f in os.listdir(os.path.join(ctx.work, "range-out"))])
    size = os.path.getsize(model)
    extra_s = size / 1e9 * (1.0 / both - 1.0 / conv)  # one thread's kernel time, an upper bound
    wall = sums["modelshrink --fp16"].wall_median
    rows.append({"what": "end to end: the range test's kernel time as a share of --fp16's wall",
                 "v": "%.1f%% (%.4f s of %.3f s)" % (100.0 * extra_s / wall if wall else 0.0,
                                                    extra_s, wall)})
    return h.CaseResult([("what", "measured", "l"), ("v", "value", "r")], rows,
                        preface="%d kernel rounds of %s pieces; %d end-to-end runs each, "
                        "round-robin." % (len(rounds), "800" if ctx.quick else "3000", ctx.reps))
