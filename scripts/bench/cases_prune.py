"""Benchmark cases for output pruning: modelshrink convert --keep-outputs against
onnx.utils.extract_model."""

import json
import os
import subprocess

import numpy as np

import harness as h
from harness import case

GEN_DIR = os.path.join(h.ROOT, "tests", "fixtures")
PEER = os.path.join(h.HERE, "peer_prune.py")
KEEP = "image_embeds"

# Quick: the test-size CLIP (~1.8 MB). Full: gen_models.CLIP_BENCH (~92 MB, text tower ~77 MB).
_SHAPE = r"""
import json, sys
import onnx
from onnx import numpy_helper
m = onnx.load(sys.argv[1])
print(json.dumps({"inputs": [i.name for i in m.graph.input],
                  "outputs": [o.name for o in m.graph.output],
                  "nodes": len(m.graph.node), "initializers": len(m.graph.initializer),
                  "tensor_bytes": sum(numpy_helper.to_array(t).nbytes
                                      for t in m.graph.initializer)}))
"""


def gen_clip(ctx, name, bench_size):
    """Generate (or reuse) the CLIP-shaped model."""
    path = os.path.join(ctx.work, name)
    stamp = path + ".params"
    code = ("import sys; sys.path.insert(0, %r); import gen_models as g; "
            "g._clip_cli(sys.argv[1:])" % GEN_DIR)
    want = "clip bench=%s" % bench_size
    if os.path.exists(path) and os.path.exists(stamp) and open(stamp).read() == want:
        print("  reusing %s" % os.path.relpath(path, h.ROOT), flush=True)
        return path
    h.rm_f(path, stamp)
    args = [ctx.python, "-c", code, path] + (["--bench"] if bench_size else [])
    print("  generating %s (%s)" % (os.path.relpath(path, h.ROOT), want), flush=True)
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    with open(stamp, "w") as f:
        f.write(want)
    return path


def gen_clip_params(quick):
    """The make_clip shape, for the report (read from gen_models)."""
    import sys
    if GEN_DIR not in sys.path:
        sys.path.insert(0, GEN_DIR)
    import gen_models as g
    if quick:
        return {"image": g.CLIP_IMAGE, "text": g.CLIP_TEXT, "embed": g.CLIP_EMBED}
    return {"image": dict(g.CLIP_IMAGE, **g.CLIP_BENCH["image"]),
            "text": dict(g.CLIP_TEXT, **g.CLIP_BENCH["text"]), "embed": g.CLIP_BENCH["embed"]}


def shape_of(ctx, model):
    p = subprocess.run([ctx.python, "-c", _SHAPE, model], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": ((p.stderr or p.stdout).strip().splitlines()[-1:] or ["?"])[0][:200]}


@case("prune-clip", "Pruning: keep a CLIP's image tower")
def prune_clip(ctx):
    """`modelshrink convert --keep-outputs image_embeds` against onnx's
    `onnx.utils.extract_model(IN, OUT, input_names=['pixel_values'],
    output_names=['image_embeds'])`, and `cp` as the I/O floor, on a CLIP-shaped dual encoder
    (`gen_models.make_clip`) whose text tower holds most of the bytes: keeping only the image
    embeddings should drop the whole text tower. image_embeds must stay bit-identical."""
    inp = gen_clip(ctx, "clip-quick.onnx" if ctx.quick else "clip.onnx", not ctx.quick)
    in_bytes = os.path.getsize(inp)
    src = shape_of(ctx, inp)
    tools = [h.Tool("modelshrink",
                    lambda i, o: [ctx.bin, "convert", "-q", "--keep-outputs", KEEP, i, "-o", o],
                    note="`modelshrink convert --keep-outputs image_embeds` (dedup on; the "
                         "weights are distinct, so pruning does all the work)"),
             h.Tool("onnx.extract_model", lambda i, o: [ctx.python, PEER, i, o],
                    note="onnx %s `onnx.utils.extract_model(IN, OUT, ['pixel_values'], "
                         "['image_embeds'])`, defaults (check_model, infer_shapes) "
                         "(`scripts/bench/peer_prune.py`)" % h.pkg_version("onnx")),
             h.Tool("cp", lambda i, o: ["cp", i, o], outputs=lambda o: [o],
                    note="`cp IN OUT`, the I/O floor")]
    out_dir = os.path.join(ctx.work, "prune-out")
    log_dir = os.path.join(ctx.work, "prune-logs")
    full_ref = os.path.join(ctx.work, "prune-ref-full.npz")
    ref = os.path.join(ctx.work, "prune-ref.npz")
    print("  warm-up read of the input, then reference outputs (onnxruntime)", flush=True)
    h.warm_read(inp)
    h.make_reference(inp, full_ref)
    # keep only what the pruned model takes and gives: pixel_values in, image_embeds out
    full = np.load(full_ref)
    np.savez(ref, **{k: full[k] for k in ("in:pixel_values", "out:" + KEEP)})
    full.close()
    h.rm_f(full_ref)
    runs = h.round_robin(tools, inp, out_dir, log_dir, reps=ctx.reps)
    sums = {}
    for t in tools:
        s = h.summarize(t.name, runs[t.name])
        out = os.path.join(out_dir, t.name + ".onnx")
        if s.out_bytes and t.name != "cp":
            s.extra["check"] = h.verify(ref, out)
            s.extra["shape"] = shape_of(ctx, out)
        else:
            s.extra["check"] = s.extra["shape"] = None
        sums[t.name] = s
        if s.extra["check"] is not None:
            print("  check %-20s %s %s" % (t.name, json.dumps(s.extra["check"]),
                                           json.dumps(s.extra["shape"])), flush=True)
    if not ctx.keep:
        for t in tools:
            h.rm_f(*t.files(os.path.join(out_dir, t.name + ".onnx")))
        h.rm_f(inp, inp + ".params", ref)

    ms = sums["modelshrink"]
    rows = []
    for t in tools:
        s = sums[t.name]
        ok = bool(s.out_bytes)
        sh = s.extra["shape"]
        if sh is None:
            graph = "" if t.name != "cp" or not ok else "(unchanged)"
        elif sh.get("error"):
            graph = "no: " + sh["error"]
        else:
            graph = "in %s, out %s, %d nodes, %d initializers" % (
                ",".join(sh["inputs"]), ",".join(sh["outputs"]), sh["nodes"], sh["initializers"])
        if t.name == "cp":
            err = "0 (a copy)"
        else:
            err = h.fmt_check(s.extra["check"])
        row = h.standard_row(t.name, s, in_bytes, sums, err)
        row["graph"] = graph
        rows.append(row)
    columns = h.standard_columns("image_embeds bit-identical") + [("graph", "output graph", "l")]
    peer = sums["onnx.extract_model"]
    h.save_headline(ctx, "prune-clip", documented="a CLIP-like model keeping only its vision "
                    "tower", input_bytes=in_bytes, output_bytes=ms.out_bytes,
                    ms_wall=ms.wall_median, ms_rss=ms.rss_mib, peer="onnx.extract_model",
                    peer_wall=peer.wall_median, peer_rss=peer.rss_mib,
                    cp_wall=sums["cp"].wall_median,
                    error="image_embeds bit-identical: " + rows[0]["err"])
    preface = (
        "Input: `gen_models.make_clip(%s)` (%s): image tower (patch Conv, FFN blocks, projection) and "
        "text tower (token embedding Gather, FFN blocks, projection) with distinct random "
        "weights, outputs image_embeds, text_embeds, logits_per_image; %s bytes (%.1f MiB), "
        "%s bytes of tensors, inline. Each tool ran %d times round-robin under "
        "`/usr/bin/time -v` (median wall time with range, largest peak RSS). Check: the "
        "output's image_embeds against the original's on the same pixel_values (N(0, 1), "
        "seed 0), onnxruntime CPU, bit for bit.\n\n%s"
        % ("**CLIP_BENCH" if not ctx.quick else "",
           ", ".join("%s %s" % (k, json.dumps(v)) for k, v in
                     (gen_clip_params(ctx.quick).items())), h.fmt_bytes(in_bytes), in_bytes / h.MIB,
           h.fmt_bytes(src.get("tensor_bytes", 0)), ctx.reps,
           "\n".join("- %s: %s" % (t.name, t.note) for t in tools)))
    notes = []
    if ms.out_bytes and peer.out_bytes:
        notes.append("- modelshrink is %.1fx faster than onnx.utils.extract_model, at %.1f%% of "
                     "its peak RSS; outputs %s vs %s bytes."
                     % (peer.wall_median / ms.wall_median if ms.wall_median else 0.0,
                        100.0 * ms.rss_mib / peer.rss_mib if peer.rss_mib else 0.0,
                        h.fmt_bytes(ms.out_bytes), h.fmt_bytes(peer.out_bytes)))
    return h.CaseResult(columns, rows, preface=preface, notes="\n".join(notes))
