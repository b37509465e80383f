"""Benchmark cases for INT4 weight-only quantization: modelshrink convert --int4 against
onnxruntime's MatMulNBitsQuantizer (its default round-to-nearest and its k-quant search).

The decoder-shaped models are written by write_decoder() straight to their external data file,
one weight at a time, so an 8 GiB model needs no more memory than its largest weight."""

import json
import os
import subprocess

import harness as h
from harness import case

PEER = os.path.join(h.HERE, "peer_int4.py")
TARGET_SPEEDUP = 10.0  # RTN at least this many times faster than MatMulNBitsQuantizer
TARGET_CP = 2.0        # ... and at most this many times cp
TARGET_COSINE = 0.99   # output cosine to FP32, RTN block 32
TARGET_WEIGHTS = 0.16  # quantized weight bytes / FP32 bytes, block 32 symmetric

DECODER_FULL = dict(hidden=2048, mlp=5632, layers=4)
DECODER_QUICK = dict(hidden=512, mlp=1408, layers=2)
LAYER_BYTES = 4 * (4 * 2048 * 2048 + 3 * 2048 * 5632)  # one layer of the full-size decoder


def write_decoder(path, hidden, mlp, layers, seed=0, seq=16):
    """A Llama-shaped decoder in ONNX (opset 18, external data in PATH.data): per layer RMSNorm,
    q/k/v/o projections with single-head attention scaled by 1/sqrt(hidden), a residual, RMSNorm,
    gate/up/down MLP with SiLU, a residual, and a final RMSNorm. Weights have a trained
    transformer's scale and shape: Student-t (5 degrees of freedom, heavier tails than a normal,
    as trained weights have) scaled to std 0.02, the projections that write into the residual
    stream (o_proj, down_proj) to 0.02 / sqrt(2 * layers) as GPT-2 and Megatron scale them; and
    2 of every 512 input rows of each matrix 6x larger (the input channels of the "massive
    activations" of trained LLMs, which widen every block along K they fall in). Seeded: the
    same arguments give the same bytes."""
    import numpy as np
    import onnx
    from onnx import TensorProto as T, helper as hp, numpy_helper as nh

    rng = np.random.default_rng(seed)
    scale = np.float32(0.02 / np.sqrt(5.0 / 3.0))
    data_name = os.path.basename(path) + ".data"
    inits, nodes, x = [], [], "x"
    with open(path + ".data", "wb") as data:
        def weight(name, k, n):
            std = scale / np.float32(np.sqrt(2.0 * layers)) if name.endswith(
                ("o_proj.weight", "down_proj.weight")) else scale
            a = (rng.standard_t(5, size=(k, n)).astype(np.float32) * std)
            rows = rng.choice(k, max(1, 2 * k // 512), replace=False)
            a[rows, :] *= np.float32(6)
            t = onnx.TensorProto(name=name, data_type=T.FLOAT, dims=[k, n])
            t.data_location = T.EXTERNAL
            off = data.tell()
            data.write(a.tobytes())
            for key, val in (("location", data_name), ("offset", str(off)),
                             ("length", str(a.nbytes))):
                e = t.external_data.add()
                e.key, e.value = key, val
            inits.append(t)

        def rms(inp, p):
            nodes.extend([hp.make_node("Mul", [inp, inp], [p + "sq"]),
                          hp.make_node("ReduceMean", [p + "sq", "axes"], [p + "ms"], keepdims=1),
                          hp.make_node("Add", [p + "ms", "eps"], [p + "mse"]),
                          hp.make_node("Sqrt", [p + "mse"], [p + "rms"]),
                          hp.make_node("Div", [inp, p + "rms"], [p + "n"])])
            return p + "n"

        def lin(inp, name, k, n, out):
            weight(name, k, n)
            nodes.append(hp.make_node("MatMul", [inp, name], [out], name=name + ".matmul"))

        for i in range(layers):
            p = "l%d." % i
            n = rms(x, p + "attn_norm.")
            for w in ("q", "k", "v"):
                lin(n, p + w + "_proj.weight", hidden, hidden, p + w)
            nodes += [hp.make_node("Transpose", [p + "k"], [p + "kt"], perm=[1, 0]),
                      hp.make_node("MatMul", [p + "q", p + "kt"], [p + "s"]),
                      hp.make_node("Mul", [p + "s", "sc"], [p + "ss"]),
                      hp.make_node("Softmax", [p + "ss"], [p + "a"], axis=-1),
                      hp.make_node("MatMul", [p + "a", p + "v"], [p + "av"])]
            lin(p + "av", p + "o_proj.weight", hidden, hidden, p + "o")
            nodes.append(hp.make_node("Add", [x, p + "o"], [p + "h"]))
            n = rms(p + "h", p + "mlp_norm.")
            lin(n, p + "gate_proj.weight", hidden, mlp, p + "g")
            lin(n, p + "up_proj.weight", hidden, mlp, p + "u")
            nodes += [hp.make_node("Sigmoid", [p + "g"], [p + "gs"]),
                      hp.make_node("Mul", [p + "g", p + "gs"], [p + "silu"]),
                      hp.make_node("Mul", [p + "silu", p + "u"], [p + "gu"])]
            lin(p + "gu", p + "down_proj.weight", mlp, hidden, p + "d")
            nodes.append(hp.make_node("Add", [p + "h", p + "d"], [p + "out"]))
            x = p + "out"
    nodes.append(hp.make_node("Identity", [rms(x, "final_norm.")], ["y"]))
    for i, node in enumerate(nodes):  # unique names, as exporters write (k-quant needs them)
        node.name = node.name or "%s_%d" % (node.op_type, i)
    inits += [nh.from_array(np.array([-1], np.int64), "axes"),
              nh.from_array(np.array(1e-5, np.float32), "eps"),
              nh.from_array(np.array(1.0 / np.sqrt(hidden), np.float32), "sc")]
    g = hp.make_graph(nodes, "decoder", [hp.make_tensor_value_info("x", T.FLOAT, [seq, hidden])],
                      [hp.make_tensor_value_info("y", T.FLOAT, [seq, hidden])], inits)
    m = hp.make_model(g, opset_imports=[hp.make_opsetid("", 18)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


# Child process: cosine and worst abs error of MODEL's outputs against the FP32 reference
# (verify.py's npz), in onnxruntime; and the bytes of the quantized weights (every initializer
# that is not FP32 or that a DequantizeLinear / MatMulNBits reads as scale or zero point) over
# the FP32 bytes of the MatMul weights of the input.
_CHECK = r"""
import json, sys
import numpy as np, onnx, onnxruntime as ort
ref = np.load(sys.argv[1])
feeds = {k[3:]: ref[k] for k in ref.files if k.startswith("in:")}
want = {k[4:]: ref[k] for k in ref.files if k.startswith("out:")}
res = {}
try:
    so = ort.SessionOptions(); so.log_severity_level = 3
    s = ort.InferenceSession(sys.argv[2], so, providers=["CPUExecutionProvider"])
    got = dict(zip(want, s.run(list(want), feeds)))
    a = np.concatenate([want[k].astype(np.float64).ravel() for k in want])
    b = np.concatenate([np.asarray(got[k], np.float64).ravel() for k in want])
    res["cosine"] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    res["max_abs_err"] = float(np.max(np.abs(a - b)))
except Exception as e:
    res["error"] = str(e).splitlines()[0][:200]
def tsize(t):
    n = 1
    for d in t.dims: n *= d
    bits = {1: 32, 10: 16, 2: 8, 3: 8, 21: 4, 22: 4}.get(t.data_type, 32)
    return (n * bits + 7) // 8
src = onnx.load(sys.argv[3], load_external_data=False)
mm = {n.input[1] for n in src.graph.node if n.op_type in ("MatMul", "Gemm")}
b32 = sum(tsize(t) for t in src.graph.initializer if t.name in mm)
out = onnx.load(sys.argv[2], load_external_data=False)
inits = {t.name: t for t in out.graph.initializer}
q = set()
n = 0
for node in out.graph.node:
    if node.op_type in ("DequantizeLinear", "MatMulNBits"):
        ins = list(node.input)
        if node.op_type == "MatMulNBits":
            ins = ins[1:4]
        if ins and ins[0] in inits:
            n += 1
            q.update(i for i in ins if i in inits)
res["quantized"] = n
res["weight_ratio"] = sum(tsize(inits[i]) for i in q) / b32 if b32 else None
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


def has_search(ctx):
    r = subprocess.run([ctx.bin, "convert", "--help"], stdout=subprocess.PIPE, text=True)
    return "--int4-search" in r.stdout


def ms_tool(ctx, name, flags, note):
    return h.Tool(name, lambda i, o: [ctx.bin, "convert", "-q", "--int4"] + flags + [i, "-o", o],
                  note=note)


def peer_tool(ctx, name, flags, note):
    return h.Tool(name, lambda i, o: [ctx.python, PEER, i, o] + flags, note=note)


def accuracy_tools(ctx):
    ort_v = h.pkg_version("onnxruntime")
    ts = [ms_tool(ctx, "modelshrink", [], "`modelshrink convert --int4` (QDQ: "
                  "DequantizeLinear-21, block 32, symmetric INT4, round to nearest)"),
          ms_tool(ctx, "modelshrink-mnb", ["--int4-format", "matmulnbits"],
                  "`modelshrink convert --int4 --int4-format matmulnbits`")]
    if has_search(ctx):
        ts += [ms_tool(ctx, "modelshrink-search", ["--int4-search"],
                       "`modelshrink convert --int4 --int4-search` (QDQ, the scale searched "
                       "per block)"),
               ms_tool(ctx, "modelshrink-mnb-search", ["--int4-format", "matmulnbits",
                                                       "--int4-search"],
                       "`modelshrink convert --int4 --int4-format matmulnbits --int4-search`")]
    ts.append(ms_tool(ctx, "modelshrink-mnb-asym", ["--int4-format", "matmulnbits",
                                                    "--int4-asym"],
                      "`modelshrink convert --int4 --int4-format matmulnbits --int4-asym`"))
    if has_search(ctx):
        ts.append(ms_tool(ctx, "modelshrink-mnb-asym-search",
                          ["--int4-format", "matmulnbits", "--int4-asym", "--int4-search"],
                          "`modelshrink convert --int4 --int4-format matmulnbits --int4-asym "
                          "--int4-search`"))
    ts += [peer_tool(ctx, "ort-rtn", [], "onnxruntime %s `MatMulNBitsQuantizer(model, "
                     "block_size=32, is_symmetric=True)` (its default: C++ round to nearest), "
                     "load and save included (`scripts/bench/peer_int4.py`)" % ort_v),
           peer_tool(ctx, "ort-rtn-asym", ["--asym"], "the same with `is_symmetric=False`"),
           peer_tool(ctx, "ort-kquant", ["--method", "k_quant"],
                     "the same with `algo_config=KQuantWeightOnlyQuantConfig()`: its k-quant "
                     "search (numpy), which is always asymmetric (UINT4 with zero points, scale "
                     "and minimum fitted by weighted least squares over 20 steps)"),
           h.tool_cp()]
    return ts


def fmt_check(c):
    if c is None:
        return "", "", ""
    if c.get("error"):
        return "no: " + c["error"][:100], "", ""
    wr = "%.1f%%" % (100 * c["weight_ratio"]) if c.get("weight_ratio") else "n/a"
    return "%.6f" % c["cosine"], "%.3g" % c["max_abs_err"], "%s (%d tensors)" % (
        wr, c.get("quantized", 0))


def accuracy_case(ctx, case_id, inp, in_desc, in_bytes):
    tools = accuracy_tools(ctx)
    if inp.endswith(".onnx") and os.path.exists(inp + ".data"):
        tools[-1] = h.Tool("cp", lambda i, o: ["cp", i + ".data", o], outputs=lambda o: [o],
                           note="`cp IN.data OUT`: the I/O floor, the model's data file copied")
        h.warm_read(inp + ".data")
    out_dir = os.path.join(ctx.work, case_id + "-out")
    log_dir = os.path.join(ctx.work, case_id + "-logs")
    ref = os.path.join(ctx.work, case_id + "-ref.npz")
    print("  FP32 reference outputs (onnxruntime)", flush=True)
    h.make_reference(inp, ref)
    runs = h.round_robin(tools, inp, out_dir, log_dir, reps=ctx.reps)
    sums = {}
    for t in tools:
        s = h.summarize(t.name, runs[t.name])
        out = os.path.join(out_dir, t.name + ".onnx")
        s.extra["check"] = check(ctx, ref, out, inp) if s.out_bytes and t.name != "cp" else None
        if s.extra["check"] is not None:
            print("  check %-24s %s" % (t.name, json.dumps(s.extra["check"])), flush=True)
        sums[t.name] = s
    if not ctx.keep:
        for t in tools:
            h.rm_f(*t.files(os.path.join(out_dir, t.name + ".onnx")))
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
    ms, peer, cp = sums["modelshrink"], sums["ort-rtn"], sums["cp"]
    notes = []

    def cosine(name):
        c = sums[name].extra.get("check") if name in sums else None
        return c.get("cosine") if c and not c.get("error") else None
    if ms.out_bytes and peer.out_bytes:
        speed = peer.wall_median / ms.wall_median
        notes.append("- speed: modelshrink --int4 is %.1fx faster than MatMulNBitsQuantizer "
                     "(target >= %.0fx: %s) and %.2fx cp (target <= %.0fx: %s)" % (
                         speed, TARGET_SPEEDUP, "met" if speed >= TARGET_SPEEDUP else
                         "**not met**", ms.wall_median / cp.wall_median, TARGET_CP,
                         "met" if ms.wall_median <= TARGET_CP * cp.wall_median else
                         "**not met**"))
        if peer.rss_mib:
            notes.append("- peak RSS: modelshrink %.0f MiB, MatMulNBitsQuantizer %.0f MiB" % (
                ms.rss_mib, peer.rss_mib))
    c_ms, c_ort, c_kq = cosine("modelshrink"), cosine("ort-rtn"), cosine("ort-kquant")
    if c_ms is not None:
        notes.append("- accuracy: RTN block 32 cosine %.6f (target >= %.2f: %s)" % (
            c_ms, TARGET_COSINE, "met" if c_ms >= TARGET_COSINE else "**not met**"))
    for mine, theirs, what in (("modelshrink-mnb", "ort-rtn", "round to nearest, symmetric"),
                               ("modelshrink-mnb-asym", "ort-rtn-asym",
                                "round to nearest, asymmetric"),
                               ("modelshrink-mnb-asym-search", "ort-kquant",
                                "searched scales, asymmetric")):
        a, b = cosine(mine), cosine(theirs)
        if a is not None and b is not None:
            ok = 1 - a <= (1 - b) * (1 + 1e-6)
            notes.append("- %s, the same output form: modelshrink %.9f, onnxruntime %.9f "
                         "(modelshrink's error no larger: %s)" % (
                             what, a, b, "yes" if ok else "**no**, larger by %.2g%% of 1 - "
                             "cosine" % (100 * ((1 - a) / (1 - b) - 1))))
    c_s = cosine("modelshrink-search")
    if c_s is not None and c_ms is not None:
        notes.append("- --int4-search: cosine %.6f against RTN's %.6f (%s)" % (
            c_s, c_ms, "better" if c_s > c_ms else "equal" if c_s == c_ms else "**worse**"))
    chk = ms.extra.get("check") or {}
    if chk.get("weight_ratio"):
        notes.append("- size: quantized weights take %.1f%% of their FP32 bytes (target <= "
                     "%.0f%%: %s)" % (100 * chk["weight_ratio"], 100 * TARGET_WEIGHTS, "met"
                                      if chk["weight_ratio"] <= TARGET_WEIGHTS else
                                      "**not met**"))
    h.save_headline(ctx, case_id, input_bytes=in_bytes, output_bytes=ms.out_bytes,
                    ms_wall=ms.wall_median, ms_rss=ms.rss_mib, peer="MatMulNBitsQuantizer",
                    peer_wall=peer.wall_median, peer_rss=peer.rss_mib, cp_wall=cp.wall_median,
                    error="cosine %s" % (("%.6f" % c_ms) if c_ms is not None else "n/a"))
    preface = ("Input: %s, %s bytes (%.1f MiB). Each tool ran %d times round-robin under "
               "`/usr/bin/time -v` (median wall time with range, largest peak RSS), the whole "
               "process as a user runs it. Quantized weight bytes: the 4-bit data, scales and "
               "zero points of every quantized weight against the FP32 bytes of the MatMul/Gemm "
               "weights. Cosine and max abs error: all outputs flattened, float64, against the "
               "FP32 model on one input (verify.py's), onnxruntime CPU.\n\n%s" % (
                   in_desc, h.fmt_bytes(in_bytes), in_bytes / h.MIB, ctx.reps,
                   "\n".join("- %s: %s" % (t.name, t.note) for t in tools)))
    return h.CaseResult(columns, rows, preface=preface, notes="\n".join(notes))


@case("int4-decoder", "INT4: a decoder-shaped model against MatMulNBitsQuantizer")
def int4_decoder(ctx):
    """`modelshrink convert --int4` (both output forms, round to nearest and --int4-search)
    against onnxruntime's MatMulNBitsQuantizer (default and k-quant), block 32 symmetric, on a
    generated Llama-shaped decoder (hidden 2048, MLP 5632, 4 layers). Targets: cosine >= 0.99,
    >= 10x faster than the peer, <= 2x cp, weights <= 16% of FP32, error no larger."""
    params = DECODER_QUICK if ctx.quick else DECODER_FULL
    d = os.path.join(ctx.work, "int4-decoder-in")
    os.makedirs(d, exist_ok=True)
    inp = write_decoder(os.path.join(d, "decoder.onnx"), **params)
    in_bytes = os.path.getsize(inp) + os.path.getsize(inp + ".data")
    desc = "`cases_int4.write_decoder` (%s; weights with a trained transformer's scale, see " \
           "its docstring), external data" % ", ".join("%s %d" % kv for kv in params.items())
    try:
        return accuracy_case(ctx, "int4-decoder", inp, desc, in_bytes)
    finally:
        if not ctx.keep:
            h.rm_f(inp, inp + ".data")


@case("int4-bert", "INT4: BERT-base-shaped against MatMulNBitsQuantizer")
def int4_bert(ctx):
    """The same tools on the BERT-base-shaped encoder of the INT8 and FP16 cases (inline)."""
    from cases_fp16 import BERT_FULL, BERT_QUICK, gen_bert
    params = BERT_QUICK if ctx.quick else BERT_FULL
    inp = gen_bert(ctx, "bert-quick.onnx" if ctx.quick else "bert.onnx", params)
    in_bytes = os.path.getsize(inp)
    desc = "`gen_models.make_bert` (%s), distinct random weights, inline" % ", ".join(
        "%s %d" % kv for kv in params.items())
    try:
        return accuracy_case(ctx, "int4-bert", inp, desc, in_bytes)
    finally:
        if not ctx.keep:
            h.rm_f(inp, inp + ".params")


@case("int4-growth", "INT4: time and memory as the model grows (0.5, 2, 8 GiB)", full_only=True)
def int4_growth(ctx):
    """`modelshrink convert --int4` (QDQ, round to nearest, and with --int4-search) against
    MatMulNBitsQuantizer and cp on the decoder at about 0.5, 2 and 8 GiB (3, 10 and 42 layers of
    hidden 2048, MLP 5632): wall time and peak RSS, once each (2 runs each for the smaller two)."""
    rows = []
    ort_v = h.pkg_version("onnxruntime")
    for gib, layers in ((0.5, 3), (2, 10), (8, 42)):
        d = os.path.join(ctx.work, "int4-growth-in")
        os.makedirs(d, exist_ok=True)
        print("  %.1f GiB: writing the decoder (%d layers)" % (gib, layers), flush=True)
        inp = write_decoder(os.path.join(d, "decoder.onnx"), 2048, 5632, layers)
        in_bytes = os.path.getsize(inp) + os.path.getsize(inp + ".data")
        free = os.statvfs(ctx.work)
        tools = [ms_tool(ctx, "modelshrink", [], ""),
                 ms_tool(ctx, "modelshrink-search", ["--int4-search"], ""),
                 h.Tool("cp", lambda i, o: ["cp", i + ".data", o], outputs=lambda o: [o])]
        # The peer holds the whole model in memory (peak RSS about 1.2x the model at 0.5 and
        # 2 GiB): run it where twice the model fits in RAM and its output on disk.
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if in_bytes * 2 < mem and free.f_bavail * free.f_frsize > 2 * in_bytes:
            tools.insert(1, peer_tool(ctx, "ort-rtn", [], ""))
        h.warm_read(inp + ".data")
        runs = h.round_robin(tools, inp, os.path.join(ctx.work, "int4-growth-out"),
                             os.path.join(ctx.work, "int4-growth-logs"),
                             reps=1 if gib >= 8 else min(2, ctx.reps))
        sums = {t.name: h.summarize(t.name, runs[t.name]) for t in tools}
        for t in tools:
            s = sums[t.name]
            rows.append({"size": "%s GiB (%s bytes)" % (gib, h.fmt_bytes(in_bytes)),
                         "tool": t.name, "wall": h.wall_cell(s),
                         "rss": "%.0f" % s.rss_mib if s.out_bytes else "",
                         "vs_cp": h.fmt_ratio(s.wall_median, sums["cp"].wall_median)
                         if s.out_bytes else "",
                         "gbs": "%.2f" % (in_bytes / s.wall_median / 1e9) if s.out_bytes else ""})
            h.rm_f(*t.files(os.path.join(ctx.work, "int4-growth-out", t.name + ".onnx")))
        if "ort-rtn" not in sums:
            rows.append({"size": "%s GiB" % gib, "tool": "ort-rtn",
                         "wall": "not run: needs about 2x the model in memory (%.0f GiB here)"
                         % (mem / 2**30), "rss": "", "vs_cp": "", "gbs": ""})
        h.rm_f(inp, inp + ".data")
    columns = [("size", "model", "l"), ("tool", "tool", "l"),
               ("wall", "wall s", "r"), ("rss", "peak RSS MiB", "r"),
               ("vs_cp", "wall vs cp", "r"), ("gbs", "GB/s of input", "r")]
    preface = ("Inputs: `cases_int4.write_decoder` with hidden 2048, MLP 5632 and 3, 10, 42 "
               "layers, external data. Tools: `modelshrink convert --int4` (QDQ, block 32, "
               "symmetric), the same with `--int4-search`, onnxruntime %s `MatMulNBitsQuantizer` (`peer_int4.py`, default "
               "config), `cp` of the data file." % ort_v)
    return h.CaseResult(columns, rows, preface=preface)
