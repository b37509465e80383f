"""Benchmark cases for INT8 weight quantization: modelshrink convert --int8 against onnxruntime's
quantize_dynamic(weight_type=QInt8, per_channel=True)."""

import json
import os
import subprocess
import sys

import harness as h
from harness import case
from cases_fp16 import BERT_FULL, BERT_QUICK, gen_bert

PEER = os.path.join(h.HERE, "peer_int8.py")
FIXTURES = os.path.join(h.ROOT, "tests", "fixtures")
TARGET_SPEEDUP = 20.0   # modelshrink at least this many times faster than quantize_dynamic

# Child process: cosine similarity and worst abs error of MODEL's outputs against the FP32
# reference (verify.py's npz: the same inputs), in onnxruntime; and the weight bytes of the
# quantized tensors (every INT8/UINT8 initializer named <W>_quantized, plus <W>_scale and
# <W>_zero_point, both tools use these names) against the FP32 bytes of <W> in the input.
_CHECK = r"""
import json, sys
import numpy as np, onnx, onnxruntime as ort
from onnx import numpy_helper
ref = np.load(sys.argv[1])
feeds = {k[3:]: ref[k] for k in ref.files if k.startswith("in:")}
want = {k[4:]: ref[k] for k in ref.files if k.startswith("out:")}
res = {}
try:
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.log_severity_level = 3
    s = ort.InferenceSession(sys.argv[2], so, providers=["CPUExecutionProvider"])
    got = dict(zip(want, s.run(list(want), feeds)))
    a = np.concatenate([want[k].astype(np.float64).ravel() for k in want])
    b = np.concatenate([np.asarray(got[k], np.float64).ravel() for k in want])
    res["cosine"] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    res["max_abs_err"] = float(np.max(np.abs(a - b)))
except Exception as e:
    res["error"] = str(e).splitlines()[0][:200]
src = {t.name: t for t in onnx.load(sys.argv[3]).graph.initializer}
out = {t.name: t for t in onnx.load(sys.argv[2]).graph.initializer}
nb = lambda t: numpy_helper.to_array(t).nbytes
b32 = bq = n = 0
for name, t in out.items():
    if t.data_type in (2, 3) and name.endswith("_quantized") and name[:-10] in src:
        w = name[:-10]
        n += 1
        b32 += nb(src[w])
        bq += nb(t) + sum(nb(out[w + s]) for s in ("_scale", "_zero_point") if w + s in out)
res["quantized"] = n
res["weight_ratio"] = bq / b32 if b32 else None
res["tensor_ratio"] = sum(nb(t) for t in out.values()) / sum(nb(t) for t in src.values())
print(json.dumps(res))
"""


def check(ctx, ref_npz, model, src):
    p = subprocess.run([ctx.python, "-c", _CHECK, ref_npz, model, src], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0][:200]}


def tools_for(ctx, gather=True):
    ts = [h.Tool("modelshrink", lambda i, o: [ctx.bin, "convert", "-q", "--int8", i, "-o", o],
                 note="`modelshrink convert --int8` (dedup on; MatMul/Gemm/Conv/ConvTranspose "
                      "weights of >= 4096 elements)")]
    if gather:
        ts.append(h.Tool("modelshrink-gather",
                         lambda i, o: [ctx.bin, "convert", "-q", "--int8", "--int8-gather", i,
                                       "-o", o],
                         note="`modelshrink convert --int8 --int8-gather` (embedding tables "
                              "too, as quantize_dynamic does)"))
    ts.append(h.Tool("quantize_dynamic", lambda i, o: [ctx.python, PEER, i, o],
                     note="onnxruntime %s `quantize_dynamic(IN, OUT, weight_type=QInt8, "
                          "per_channel=True)` (`scripts/bench/peer_int8.py`)"
                          % h.pkg_version("onnxruntime")))
    return ts


def fmt_check(c):
    if c is None:
        return "", "", ""
    if c.get("error"):
        return "no: " + c["error"][:100], "", ""
    wr = "%.1f%%" % (100 * c["weight_ratio"]) if c.get("weight_ratio") else "n/a"
    return "%.6f" % c["cosine"], "%.3g" % c["max_abs_err"], "%s (%d tensors)" % (
        wr, c.get("quantized", 0))


@case("int8-bert", "INT8: BERT-base-shaped")
def int8_bert(ctx):
    """`modelshrink convert --int8` (and `--int8 --int8-gather`) against onnxruntime's
    `quantize_dynamic(weight_type=QInt8, per_channel=True)`, and `cp` as the I/O floor, on a
    BERT-base-shaped encoder with distinct weights. Target: modelshrink at least 20x faster
    than quantize_dynamic."""
    params = BERT_QUICK if ctx.quick else BERT_FULL
    inp = gen_bert(ctx, "bert-quick.onnx" if ctx.quick else "bert.onnx", params)
    in_bytes = os.path.getsize(inp)
    tools = tools_for(ctx) + [h.Tool("cp", lambda i, o: ["cp", i, o], outputs=lambda o: [o],
                                     note="`cp IN OUT`, the I/O floor")]
    out_dir = os.path.join(ctx.work, "int8-out")
    log_dir = os.path.join(ctx.work, "int8-logs")
    ref = os.path.join(ctx.work, "int8-ref.npz")
    print("  warm-up read of the input, then FP32 reference outputs (onnxruntime)", flush=True)
    h.warm_read(inp)
    h.make_reference(inp, ref)
    runs = h.round_robin(tools, inp, out_dir, log_dir, reps=ctx.reps)
    sums = {}
    for t in tools:
        s = h.summarize(t.name, runs[t.name])
        out = os.path.join(out_dir, t.name + ".onnx")
        s.extra["check"] = check(ctx, ref, out, inp) if s.out_bytes and t.name != "cp" else None
        sums[t.name] = s
        if s.extra["check"] is not None:
            print("  check %-20s %s" % (t.name, json.dumps(s.extra["check"])), flush=True)
    if not ctx.keep:
        for t in tools:
            h.rm_f(*t.files(os.path.join(out_dir, t.name + ".onnx")))
        h.rm_f(inp, inp + ".params")

    ms, peer = sums["modelshrink"], sums["quantize_dynamic"]
    rows = []
    for t in tools:
        s = sums[t.name]
        ok = bool(s.out_bytes)
        cos, err, wr = fmt_check(s.extra["check"])
        row = h.standard_row(t.name, s, in_bytes, sums, err if t.name != "cp" else "0 (a copy)")
        row.update(wr=wr if ok else "", cos=cos if ok else "")
        rows.append(row)
    columns = h.standard_columns("max abs err vs FP32")
    columns[5:5] = [("cos", "cosine vs FP32", "r"), ("wr", "quantized weight bytes vs FP32", "r")]
    h.save_headline(ctx, "int8-bert", input_bytes=in_bytes, output_bytes=ms.out_bytes,
                    ms_wall=ms.wall_median, ms_rss=ms.rss_mib, peer="quantize_dynamic",
                    peer_wall=peer.wall_median, peer_rss=peer.rss_mib,
                    cp_wall=sums["cp"].wall_median, error="cosine " + rows[0]["cos"])
    shape = ", ".join("%s %d" % kv for kv in params.items())
    preface = (
        "Input: `gen_models.make_bert` (%s), distinct random weights, %s bytes (%.1f MiB), "
        "inline. Each tool ran %d times round-robin under `/usr/bin/time -v` (median wall time "
        "with range, largest peak RSS). Quantized weight bytes: INT8 data + scale + zero point "
        "of every `<W>_quantized` initializer against the FP32 bytes of `<W>` (both tools use "
        "these names). Cosine similarity and max abs error: all outputs flattened, float64, "
        "against the FP32 original on one input (input_ids in [0, 100), seq 16), onnxruntime "
        "CPU.\n\n%s" % (shape, h.fmt_bytes(in_bytes), in_bytes / h.MIB, ctx.reps,
                        "\n".join("- %s: %s" % (t.name, t.note) for t in tools)))
    notes = []
    if ms.out_bytes and peer.out_bytes:
        speed = peer.wall_median / ms.wall_median if ms.wall_median else 0.0
        notes.append("- speed: modelshrink --int8 is %.1fx faster than quantize_dynamic "
                     "(target >= %.0fx: %s)" % (speed, TARGET_SPEEDUP, "met" if speed >=
                                                TARGET_SPEEDUP else "**not met**"))
        if peer.rss_mib:
            notes.append("- peak RSS: modelshrink uses %.1f%% of quantize_dynamic's" % (
                100 * ms.rss_mib / peer.rss_mib))
    notes.append("- The two tools make different models: modelshrink keeps float compute "
                 "(`DequantizeLinear` in front of the original MatMul), quantize_dynamic "
                 "rewrites to integer kernels (`DynamicQuantizeLinear` + `MatMulInteger`), "
                 "which also quantizes the activations at run time; so the errors differ in "
                 "kind, not only in size. Without `--int8-gather` the word-embedding table "
                 "stays FP32, which quantize_dynamic quantizes.")
    return h.CaseResult(columns, rows, preface=preface, notes="\n".join(notes))


def _small_models(ctx):
    if FIXTURES not in sys.path:
        sys.path.insert(0, FIXTURES)
    import gen_models as g
    d = os.path.join(ctx.work, "int8-models")
    os.makedirs(d, exist_ok=True)
    specs = [
        ("albert-small", "ALBERT-shaped, 4 layers, hidden 256, ffn 1024, vocab 4000 (per-layer "
                         "weight copies)",
         lambda: g.make_albert(layers=4, hidden=256, embed=128, ffn=1024, vocab=4000, heads=4)),
        ("cnn", "CNN: 3 Conv + 2 Gemm (transB 1 and 0), input 1x3x32x32",
         lambda: g.make_cnn_int8()),
        ("transformer-block", "pre-LN transformer block, hidden 256, ffn 1024, seq 16",
         lambda: g.make_transformer_block()),
    ]
    out = []
    for name, desc, fn in specs:
        p = os.path.join(d, name + ".onnx")
        g.save(fn(), p)
        out.append((name, desc, p))
    return out


@case("int8-models", "INT8: small models side by side")
def int8_models(ctx):
    """`modelshrink convert --int8` against `quantize_dynamic(weight_type=QInt8,
    per_channel=True)` on the ALBERT-shaped encoder (small), a CNN and a transformer block:
    time, size, cosine similarity to the FP32 model."""
    models = _small_models(ctx)
    rows = []
    for name, desc, inp in models:
        tools = tools_for(ctx, gather=name.startswith("albert"))
        out_dir = os.path.join(ctx.work, "int8-models-out", name)
        log_dir = os.path.join(ctx.work, "int8-models-logs", name)
        ref = os.path.join(ctx.work, "int8-models-out", name + "-ref.npz")
        os.makedirs(os.path.dirname(ref), exist_ok=True)
        print("  %s" % name, flush=True)
        h.make_reference(inp, ref)
        runs = h.round_robin(tools, inp, out_dir, log_dir, reps=ctx.reps)
        in_bytes = os.path.getsize(inp)
        base = None
        for t in tools:
            s = h.summarize(t.name, runs[t.name])
            out = os.path.join(out_dir, t.name + ".onnx")
            c = check(ctx, ref, out, inp) if s.out_bytes else None
            if c is not None:
                print("  check %-20s %s" % (t.name, json.dumps(c)), flush=True)
            cos, err, wr = fmt_check(c)
            if t.name == "modelshrink":
                base = s
            rows.append({
                "model": name, "tool": t.name,
                "wall": h.fmt_s(s.wall_median) if s.out_bytes else "failed: " + s.failure,
                "vs_ms": h.fmt_ratio(s.wall_median, base.wall_median)
                if s.out_bytes and base and base.out_bytes else "",
                "in": h.fmt_bytes(in_bytes),
                "out": h.fmt_bytes(s.out_bytes) if s.out_bytes else "",
                "ratio": h.fmt_ratio(in_bytes, s.out_bytes) if s.out_bytes else "",
                "wr": wr, "cos": cos, "err": err})
        if not ctx.keep:
            for t in tools:
                h.rm_f(*t.files(os.path.join(out_dir, t.name + ".onnx")))
    columns = [("model", "model", "l"), ("tool", "tool", "l"),
               ("wall", "median wall s", "r"), ("vs_ms", "wall vs modelshrink", "r"),
               ("in", "input bytes", "r"), ("out", "output bytes", "r"),
               ("ratio", "in/out", "r"), ("wr", "quantized weight bytes vs FP32", "r"),
               ("cos", "cosine vs FP32", "r"), ("err", "max abs err vs FP32", "r")]
    preface = ("Models from `tests/fixtures/gen_models.py`:\n\n%s\n\nEach tool ran %d times "
               "round-robin (median wall time; quantize_dynamic's includes starting Python). "
               "Cosine and max abs error: all outputs flattened, float64, against the FP32 "
               "model on one deterministic input (verify.py's), onnxruntime CPU. Tools: "
               "`modelshrink convert --int8` (`--int8 --int8-gather` as a second row for "
               "ALBERT), `quantize_dynamic(weight_type=QInt8, per_channel=True)` "
               "(`scripts/bench/peer_int8.py`)." % (
                   "\n".join("- %s: %s" % (n, d) for n, d, _ in models), ctx.reps))
    return h.CaseResult(columns, rows, preface=preface)
