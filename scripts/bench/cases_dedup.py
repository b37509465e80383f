"""Benchmark cases for issue 2: tensor dedup, and peak RSS on a 1 GiB model."""

import os
import subprocess

import harness as h
from harness import case

GEN = os.path.join(h.ROOT, "tests", "fixtures", "gen_models.py")

# ALBERT-shaped: 12 layers carry identical copies of the shared weights (what torch.onnx.export
# writes for ALBERT). Full: ~345 MB of which ~47 MB unique. Quick: ~57 MB.
ALBERT_FULL = dict(layers=12, hidden=768, embed=128, ffn=3072, vocab=30000, heads=12)
ALBERT_QUICK = dict(layers=6, hidden=384, embed=128, ffn=1536, vocab=30000, heads=12)
# ~1.0 GiB inline (under protobuf's 2 GiB limit): 22 layers of ~48 MB each plus the embeddings.
ALBERT_1GIB = dict(layers=22, hidden=1024, embed=128, ffn=4096, vocab=30000, heads=16)

RSS_TARGET_MIB = 256


def gen_albert(ctx, name, params, external=False):
    """Generate (or reuse, when the same parameters made it) an ALBERT-shaped model; with
    ``external`` its tensors go to NAME.data."""
    path = os.path.join(ctx.work, name)
    stamp = path + ".params"
    want = repr(sorted(params.items())) + (" external" if external else "")
    if os.path.exists(path) and os.path.exists(stamp) and open(stamp).read() == want:
        print("  reusing %s" % os.path.relpath(path, h.ROOT), flush=True)
        return path
    h.rm_f(path, path + ".data", stamp)
    args = [ctx.python, GEN, "albert", path] + (["--external"] if external else [])
    for k, v in params.items():
        args += ["--" + k, str(v)]
    print("  generating %s (%s)" % (os.path.relpath(path, h.ROOT), " ".join(args[3:])), flush=True)
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    with open(stamp, "w") as f:
        f.write(want)
    return path


def venv_bin(ctx, name):
    return os.path.join(os.path.dirname(ctx.python), name)


def tool_modelshrink(ctx, name="modelshrink", extra=()):
    return h.Tool(name, lambda i, o: [ctx.bin, "convert", "-q", *extra, i, "-o", o],
                  note="`modelshrink convert%s`" % "".join(" " + e for e in extra))


def tool_cp():
    return h.tool_cp()


def tool_cp_fsync():
    # modelshrink fsyncs its output before the rename; the Python peers and plain cp do not.
    return h.Tool("cp+fsync", lambda i, o: ["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", i, o],
                  note="`cp IN OUT && sync OUT`: the floor for a tool that, like modelshrink, "
                       "fsyncs its output",
                  outputs=lambda o: [o])


def dedup_peers(ctx):
    """The other tools that remove duplicate initializers, each as a user would run it."""
    return [
        h.Tool("onnxslim", lambda i, o: [venv_bin(ctx, "onnxslim"), i, o],
               note="`onnxslim IN OUT` (defaults: shape inference, folding, fusions, "
                    "weight tying)"),
        h.Tool("onnxsim", lambda i, o: [venv_bin(ctx, "onnxsim"), i, o],
               note="`onnxsim IN OUT` (defaults, including its own onnxruntime check)"),
        h.Tool("onnxoptimizer",
               lambda i, o: [ctx.python, os.path.join(h.HERE, "peer_onnxoptimizer.py"), i, o],
               note="onnxoptimizer `eliminate_duplicate_initializer` pass only "
                    "(`scripts/bench/peer_onnxoptimizer.py`)"),
    ]


def measure(ctx, tools, inp, tag):
    """Warm the cache, make the reference outputs, run the tools round-robin, check every output.
    Returns {tool name: Summary}, each with extra['check'] set."""
    out_dir = os.path.join(ctx.work, tag + "-out")
    log_dir = os.path.join(ctx.work, tag + "-logs")
    ref = os.path.join(ctx.work, tag + "-ref.npz")
    print("  warm-up read of the input, then reference outputs (onnxruntime)", flush=True)
    h.warm_read(inp)
    h.make_reference(inp, ref)
    runs = h.round_robin(tools, inp, out_dir, log_dir, reps=ctx.reps)
    sums = {}
    for t in tools:
        s = h.summarize(t.name, runs[t.name])
        out = os.path.join(out_dir, t.name + ".onnx")
        s.extra["check"] = h.verify(ref, out) if s.out_bytes else None
        s.extra["note"] = t.note
        sums[t.name] = s
        print("  check %-14s %s" % (t.name, h.fmt_check(s.extra["check"])), flush=True)
    if not ctx.keep:
        for t in tools:
            h.rm_f(*t.files(os.path.join(out_dir, t.name + ".onnx")))
    return sums


def cleanup_input(ctx, path):
    if not ctx.keep:
        h.rm_f(path, path + ".params", path + ".data")


# --------------------------------------------------------------------------------------------

@case("dedup-albert", "Dedup: ALBERT-shaped")
def dedup_albert(ctx):
    """modelshrink's dedup against onnxslim, onnxsim, onnxoptimizer and cp on an ALBERT-shaped
    model whose layers carry identical copies of the shared weights."""
    params = ALBERT_QUICK if ctx.quick else ALBERT_FULL
    inp = gen_albert(ctx, "albert-quick.onnx" if ctx.quick else "albert.onnx", params)
    in_bytes = os.path.getsize(inp)
    tools = [tool_modelshrink(ctx), *dedup_peers(ctx), tool_cp(), tool_cp_fsync()]
    sums = measure(ctx, tools, inp, "dedup")
    cleanup_input(ctx, inp)

    rows = []
    for t in tools:
        s = sums[t.name]
        err = "0 (a copy)" if t.name.startswith("cp") else h.fmt_check(s.extra["check"])
        rows.append(h.standard_row(t.name, s, in_bytes, sums, err))
    columns = h.standard_columns("outputs bit-identical")
    ms = sums["modelshrink"]
    best = min((sums[t.name] for t in tools[1:-2] if sums[t.name].out_bytes),
               key=lambda x: x.wall_median, default=None)
    h.save_headline(ctx, "dedup-albert", documented="ALBERT-base exported with one copy of the "
                    "shared weights per layer: ~47 MB of weights in a ~345 MB file",
                    input_bytes=in_bytes, output_bytes=ms.out_bytes, ms_wall=ms.wall_median,
                    ms_rss=ms.rss_mib, peer=best.tool if best else "",
                    peer_wall=best.wall_median if best else 0.0,
                    peer_rss=best.rss_mib if best else 0.0, cp_wall=sums["cp"].wall_median,
                    error="outputs bit-identical: " + rows[0]["err"])
    shape = ", ".join("%s %d" % kv for kv in params.items())
    preface = (
        "Input: `gen_models.py albert` (%s), %s bytes (%.1f MiB), every tensor inline. "
        "Each tool ran %d times, round-robin (one run of each tool per round, the starting tool "
        "rotating), each under `/usr/bin/time -v`; the table gives the median wall time with the "
        "range, the largest peak RSS over the runs, and the size of the last run's output. The "
        "page cache was not dropped: the input was read once before the first round, so every "
        "tool reads it warm. \"Outputs bit-identical\": the output model run in onnxruntime "
        "(CPU, one thread, fixed inputs with seq = 16) gives byte-for-byte the outputs of the "
        "input model.\n\n%s" % (
            shape, h.fmt_bytes(in_bytes), in_bytes / h.MIB, ctx.reps,
            "\n".join("- %s: %s" % (t.name, t.note) for t in tools)))
    notes = []
    for t in tools[1:-2]:
        s = sums[t.name]
        if s.out_bytes and s.out_bytes >= 0.99 * in_bytes:
            notes.append("- %s left the duplicate copies in place (output within 1%% of the "
                         "input's size)." % t.name)
        chk = s.extra["check"]
        if s.out_bytes and chk and not chk.get("error") and not chk["identical"]:
            notes.append("- %s's output computes slightly different numbers (max abs error "
                         "%.3g): it rewrites the graph (folding, fusions), not only the "
                         "initializers." % (t.name, chk["max_abs_err"]))
    return h.CaseResult(columns, rows, preface=preface, notes="\n".join(notes))


@case("rss-1gib", "Peak RSS at 1 GiB", full_only=True)
def rss_1gib(ctx):
    """Peak RSS of `modelshrink convert` with and without dedup on a ~1 GiB single-file model
    (target: under 256 MiB, i.e. streaming rather than loading the model)."""
    inp = gen_albert(ctx, "albert-1gib.onnx", ALBERT_1GIB)
    in_bytes = os.path.getsize(inp)
    tools = [tool_modelshrink(ctx, "modelshrink --no-dedup", ("--no-dedup",)),
             tool_modelshrink(ctx), tool_cp(), tool_cp_fsync()]
    # Tool names become file names; keep them simple.
    for t in tools:
        t.name = t.name.replace(" --", "-")
    sums = measure(ctx, tools, inp, "rss")
    cleanup_input(ctx, inp)
    rows = []
    for t in tools:
        s = sums[t.name]
        ok = bool(s.out_bytes)
        target = ""
        if t.name.startswith("modelshrink") and ok:
            target = "yes" if s.rss_mib < RSS_TARGET_MIB else "**no**"
        rows.append({
            "tool": t.note.strip("`") if t.name.startswith("modelshrink") else t.name,
            "wall": h.wall_cell(s),
            "rss": "%.0f" % s.rss_mib if ok else "",
            "target": target,
            "out": h.fmt_bytes(s.out_bytes) if ok else "",
            "ratio": h.fmt_ratio(in_bytes, s.out_bytes) if ok else "",
            "same": h.fmt_check(s.extra["check"]) if ok else "",
        })
    columns = [("tool", "command", "l"), ("wall", "median wall s (min–max)", "r"),
               ("rss", "peak RSS MiB", "r"), ("target", "< %d MiB" % RSS_TARGET_MIB, "l"),
               ("out", "output bytes", "r"), ("ratio", "in/out", "r"),
               ("same", "outputs bit-identical", "l")]
    shape = ", ".join("%s %d" % kv for kv in ALBERT_1GIB.items())
    preface = (
        "Input: `gen_models.py albert` (%s), %s bytes (%.2f GiB) in one file, no external data. "
        "%d runs each, round-robin, under `/usr/bin/time -v`; peak RSS is the largest over the "
        "runs. Input read once before the first round (page cache not dropped). `cp` (in-kernel "
        "copy, no fsync) and `cp` + `sync OUT` are there for the I/O floor; modelshrink fsyncs "
        "its output before renaming it into place." % (shape, h.fmt_bytes(in_bytes), in_bytes / (1024.0 * h.MIB), ctx.reps))
    return h.CaseResult(columns, rows, preface=preface)
