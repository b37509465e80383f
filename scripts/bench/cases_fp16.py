"""Benchmark cases for FP16 conversion: modelshrink convert --fp16 against onnxconverter-common."""

import json
import os
import subprocess

import harness as h
from harness import case

GEN_DIR = os.path.join(h.ROOT, "tests", "fixtures")
PEER = os.path.join(h.HERE, "peer_fp16.py")

# BERT-base shape with distinct random weights: ~109M parameters, ~437 MB. Quick: ~20 MB.
BERT_FULL = dict(layers=12, hidden=768, ffn=3072, vocab=30522, heads=12)
BERT_QUICK = dict(layers=4, hidden=256, ffn=1024, vocab=8000, heads=4)
TARGET_SPEEDUP = 20.0   # modelshrink at least this many times faster than the peer
TARGET_RSS_FRACTION = 0.25  # and at most this fraction of the peer's peak RSS

_REF_CHECK = r"""
import json, sys
import numpy as np, onnx
from onnx.reference import ReferenceEvaluator
ref = np.load(sys.argv[1])
feeds = {k[3:]: ref[k] for k in ref.files if k.startswith("in:")}
want = {k[4:]: ref[k] for k in ref.files if k.startswith("out:")}
m = onnx.load(sys.argv[2])
got = dict(zip([o.name for o in m.graph.output], ReferenceEvaluator(m).run(None, feeds)))
err = 0.0
for k, w in want.items():
    d = np.abs(np.asarray(got[k], np.float64) - w.astype(np.float64))
    err = max(err, float(np.nanmax(d)))
print(json.dumps({"identical": False, "max_abs_err": err, "engine": "reference evaluator"}))
"""


def gen_bert(ctx, name, params):
    """Generate (or reuse, when the same parameters made it) a BERT-shaped model."""
    path = os.path.join(ctx.work, name)
    stamp = path + ".params"
    want = repr(sorted(params.items()))
    if os.path.exists(path) and os.path.exists(stamp) and open(stamp).read() == want:
        print("  reusing %s" % os.path.relpath(path, h.ROOT), flush=True)
        return path
    h.rm_f(path, stamp)
    code = ("import sys; sys.path.insert(0, %r); import gen_models as g; "
            "g._bert_cli(sys.argv[1:])" % GEN_DIR)
    args = [ctx.python, "-c", code, path]
    for k, v in params.items():
        args += ["--" + k, str(v)]
    print("  generating %s (%s)" % (os.path.relpath(path, h.ROOT), " ".join(args[4:])),
          flush=True)
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    with open(stamp, "w") as f:
        f.write(want)
    return path


def error_vs_fp32(ctx, ref_npz, model):
    """Max abs error of ``model``'s outputs against the FP32 original's (onnxruntime, seq 16);
    the reference evaluator when onnxruntime cannot run the model."""
    v = h.verify(ref_npz, model)
    if not v.get("error"):
        v["engine"] = "onnxruntime"
        return v
    p = subprocess.run([ctx.python, "-c", _REF_CHECK, ref_npz, model], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    try:
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["ort_error"] = v["error"]
        return r
    except (ValueError, IndexError):
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"identical": False, "max_abs_err": None,
                "error": "onnxruntime: %s; reference evaluator: %s" % (v["error"][:80],
                                                                        tail[0][:120])}


@case("fp16-bert", "FP16: BERT-base-shaped")
def fp16_bert(ctx):
    """`modelshrink convert --fp16` against onnxconverter-common's
    `float16.convert_float_to_float16(keep_io_types=True)` + `onnx.save`, and `cp` as the I/O
    floor, on a BERT-base-shaped encoder whose weights are all distinct (nothing for dedup).
    Targets: modelshrink at least 20x faster than the peer, at no more than 1/4 of its peak RSS."""
    params = BERT_QUICK if ctx.quick else BERT_FULL
    inp = gen_bert(ctx, "bert-quick.onnx" if ctx.quick else "bert.onnx", params)
    in_bytes = os.path.getsize(inp)
    tools = [h.Tool("modelshrink", lambda i, o: [ctx.bin, "convert", "-q", "--fp16", i, "-o", o],
                    note="`modelshrink convert --fp16` (dedup on, keep-io-types)"),
             h.Tool("onnxconverter-common", lambda i, o: [ctx.python, PEER, i, o],
                    note="onnxconverter-common %s `convert_float_to_float16(model, "
                         "keep_io_types=True)` + `onnx.save` (`scripts/bench/peer_fp16.py`)"
                         % h.pkg_version("onnxconverter-common")),
             h.Tool("cp", lambda i, o: ["cp", i, o], outputs=lambda o: [o],
                    note="`cp IN OUT`, the I/O floor")]
    out_dir = os.path.join(ctx.work, "fp16-out")
    log_dir = os.path.join(ctx.work, "fp16-logs")
    ref = os.path.join(ctx.work, "fp16-ref.npz")
    print("  warm-up read of the input, then FP32 reference outputs (onnxruntime)", flush=True)
    h.warm_read(inp)
    h.make_reference(inp, ref)
    runs = h.round_robin(tools, inp, out_dir, log_dir, reps=ctx.reps)
    sums = {}
    for t in tools:
        s = h.summarize(t.name, runs[t.name])
        out = os.path.join(out_dir, t.name + ".onnx")
        s.extra["check"] = error_vs_fp32(ctx, ref, out) if s.out_bytes and t.name != "cp" \
            else None
        sums[t.name] = s
        c = s.extra["check"]
        if c is not None:
            print("  check %-22s %s" % (t.name, json.dumps(c)), flush=True)
    if not ctx.keep:
        for t in tools:
            h.rm_f(*t.files(os.path.join(out_dir, t.name + ".onnx")))
        h.rm_f(inp, inp + ".params")

    ms, peer = sums["modelshrink"], sums["onnxconverter-common"]
    rows = []
    for t in tools:
        s = sums[t.name]
        ok = bool(s.out_bytes)
        c = s.extra["check"]
        if c is None:
            err = "" if t.name == "cp" else "not checked"
        elif c.get("error"):
            err = "no: " + c["error"]
        else:
            err = "%.3g (%s)" % (c["max_abs_err"], c.get("engine", "?"))
        rows.append(h.standard_row(t.name, s, in_bytes, sums, err if t.name != "cp" else
                                   "0 (a copy)"))
    columns = h.standard_columns("max abs err vs FP32 (engine)")
    h.save_headline(ctx, "fp16-bert", input_bytes=in_bytes, output_bytes=ms.out_bytes,
                    ms_wall=ms.wall_median, ms_rss=ms.rss_mib, peer="onnxconverter-common",
                    peer_wall=peer.wall_median, peer_rss=peer.rss_mib,
                    cp_wall=sums["cp"].wall_median, error=rows[0]["err"])
    shape = ", ".join("%s %d" % kv for kv in params.items())
    preface = (
        "Input: `gen_models.make_bert` (%s), distinct random weights, %s bytes (%.1f MiB), "
        "inline. Each tool ran %d times round-robin under `/usr/bin/time -v` (median wall time "
        "with range, largest peak RSS). Error: the converted model's output against the FP32 "
        "original's on one input (input_ids in [0, 100), seq 16), run in onnxruntime (CPU) or, "
        "where onnxruntime cannot run the FP16 model, in onnx.reference.ReferenceEvaluator.\n\n%s"
        % (shape, h.fmt_bytes(in_bytes), in_bytes / h.MIB, ctx.reps,
           "\n".join("- %s: %s" % (t.name, t.note) for t in tools)))
    notes = []
    if ms.out_bytes and peer.out_bytes:
        speed = peer.wall_median / ms.wall_median if ms.wall_median else 0.0
        rss = ms.rss_mib / peer.rss_mib if peer.rss_mib else 0.0
        notes.append("- speed: modelshrink is %.1fx faster than onnxconverter-common (target "
                     ">= %.0fx: %s)" % (speed, TARGET_SPEEDUP,
                                        "met" if speed >= TARGET_SPEEDUP else "**not met**"))
        notes.append("- peak RSS: modelshrink uses %.1f%% of onnxconverter-common's (target <= "
                      "%.0f%%: %s)" % (100 * rss, 100 * TARGET_RSS_FRACTION,
                                       "met" if rss <= TARGET_RSS_FRACTION else "**not met**"))
    for t in tools:
        c = sums[t.name].extra["check"]
        if c and c.get("ort_error"):
            notes.append("- %s: onnxruntime could not run the output (%s); the error column "
                         "comes from the reference evaluator." % (t.name, c["ort_error"][:160]))
    return h.CaseResult(columns, rows, preface=preface, notes="\n".join(notes),
                        versions=[("onnxconverter-common", h.pkg_version("onnxconverter-common"))])
