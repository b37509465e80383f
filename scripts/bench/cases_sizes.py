"""The documented size cases for checkpoints, and growth with model size.

- strip-resnet18: a ResNet-18 classifier with an attention head and its Adam state
  (documented: a ~132 MB checkpoint holds ~44 MB of weights, 3.0x);
- fp16-yolox: a YOLOX-S-sized detector checkpoint to FP16 safetensors (documented: ~69 MB to
  ~17 MB);
- growth: time and peak RSS at three model sizes, to show time linear in bytes and memory flat.
"""

import json
import os
import subprocess

import cases_dedup as D
import cases_pth as P
import harness as h
from harness import case

GEN_CKPT = os.path.join(h.HERE, "gen_ckpt.py")
VERIFY_CKPT = os.path.join(h.HERE, "verify_ckpt.py")


def gen(ctx, arch, name, params):
    """Generate (or reuse) a checkpoint with scripts/bench/gen_ckpt.py; returns (path, params)."""
    path = os.path.join(ctx.work, name)
    stamp = path + ".params"
    want = "%s %s" % (arch, sorted(params.items()))
    if os.path.exists(path) and os.path.exists(stamp) and open(stamp).read().startswith(want):
        print("  reusing %s" % os.path.relpath(path, h.ROOT), flush=True)
        return path, int(open(stamp).read().split("\n")[1])
    h.rm_f(path, stamp)
    args = [P.SYS_PY, GEN_CKPT, arch, path] + ["%s=%s" % kv for kv in params.items()]
    print("  generating %s (%s)" % (os.path.relpath(path, h.ROOT), " ".join(args[2:])),
          flush=True)
    p = subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True)
    n = int(p.stdout.strip().splitlines()[-1])
    with open(stamp, "w") as f:
        f.write("%s\n%d\n" % (want, n))
    return path, n


def verify(ckpt, key, out):
    p = subprocess.run([P.TORCH_PY, VERIFY_CKPT, ckpt, key, out], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0][:200]}


def err_cell(v):
    if v is None:
        return "not checked"
    if v.get("error"):
        return "no: " + v["error"]
    if v["missing"] or v["extra"]:
        return "**tensors differ**: missing %s, extra %s" % (v["missing"], v["extra"])
    if v["identical"]:
        return "0 (bit-identical, %d tensors)" % v["tensors"]
    return "max abs %.3g, max rel %.3g (%d tensors FP16)" % (v["max_abs_err"], v["max_rel_err"],
                                                           v["converted"])


def ckpt_case(ctx, case_id, arch, name, params, key, ms_flags, peer_flags, documented,
              why_differ=""):
    """modelshrink vs torch.load + safetensors save_file vs cp on one generated checkpoint.
    Returns (CaseResult pieces): rows, columns, in_bytes, nparams, sums, checks, versions."""
    why = P.torch_venv_problem()
    if why:
        raise OSError("%s needs the PyTorch peer: %s" % (case_id, why))
    torch_v, st_v = P.torch_versions()
    inp, nparams = gen(ctx, arch, name, params)
    in_bytes = os.path.getsize(inp)
    one = lambda o: [o]  # noqa: E731 - every tool writes one file
    ms_note = "`modelshrink convert -q%s CKPT -o OUT.safetensors`" % "".join(
        " " + f for f in ms_flags)
    peer_note = ("torch %s `torch.load(ckpt, map_location='cpu')['%s']`%s + safetensors %s "
                 "`save_file({k: v.contiguous()}, out)` (`scripts/bench/peer_pth.py`)" % (
                     torch_v, key, ", FP32 tensors `.half()`" if "--half" in peer_flags else "",
                     st_v))
    tools = [(h.Tool("modelshrink", lambda i, o: [ctx.bin, "convert", "-q", *ms_flags, i,
                                                  "-o", o], outputs=one, note=ms_note),
              ".safetensors"),
             (h.Tool("torch+safetensors", lambda i, o: [P.TORCH_PY, P.PEER, i, o, "--key", key,
                                                        *peer_flags], outputs=one,
                     note=peer_note), ".safetensors"),
             (h.tool_cp(), ".pth")]
    out_dir = os.path.join(ctx.work, case_id + "-out")
    log_dir = os.path.join(ctx.work, case_id + "-logs")
    print("  warm-up read of the input", flush=True)
    h.warm_read(inp)
    runs = P.round_robin(tools, inp, out_dir, log_dir, ctx.reps)
    sums = {t.name: h.summarize(t.name, runs[t.name]) for t, _ in tools}
    checks = {}
    for t, ext in tools[:2]:
        out = os.path.join(out_dir, t.name + ext)
        checks[t.name] = verify(inp, key, out) if sums[t.name].out_bytes else None
        print("  check %-18s %s" % (t.name, json.dumps(checks[t.name])), flush=True)
    same_as_peer = None
    a, b = (os.path.join(out_dir, n + ".safetensors") for n in ("modelshrink",
                                                                 "torch+safetensors"))
    if os.path.exists(a) and os.path.exists(b):
        same_as_peer = P.compare(ctx, a, b)
    if not ctx.keep:
        for t, ext in tools:
            h.rm_f(os.path.join(out_dir, t.name + ext))
        h.rm_f(inp, inp + ".params")
    rows = []
    for t, _ in tools:
        s = sums[t.name]
        cell = err_cell(checks.get(t.name)) if t.name != "cp" else "0 (a copy)"
        rows.append(h.standard_row(t.name, s, in_bytes, sums, cell))
    ms, peer = sums["modelshrink"], sums["torch+safetensors"]
    h.save_headline(ctx, case_id, documented=documented, input_bytes=in_bytes,
                    output_bytes=ms.out_bytes, ms_wall=ms.wall_median, ms_rss=ms.rss_mib,
                    peer="torch+safetensors", peer_wall=peer.wall_median,
                    peer_rss=peer.rss_mib, cp_wall=sums["cp"].wall_median,
                    error=err_cell(checks.get("modelshrink")))
    preface = "\n\n".join([
        "Input: `scripts/bench/gen_ckpt.py %s` (%s), written by torch %s: %s model "
        "parameters, %s bytes (%.1f MiB). Documented: %s. Each tool ran %d times round-robin "
        "under `/usr/bin/time -v` after one warm-up read (median wall time with range, largest "
        "peak RSS). Error: every output tensor against the checkpoint's own state dict, "
        "loaded by torch (`scripts/bench/verify_ckpt.py`)." % (
            arch, ", ".join("%s=%s" % kv for kv in params.items()) or "defaults", torch_v,
            h.fmt_bytes(nparams), h.fmt_bytes(in_bytes), in_bytes / h.MIB, documented,
            ctx.reps),
        "\n".join("- %s: %s" % (t.name, t.note) for t, _ in tools)])
    notes = []
    if same_as_peer and not same_as_peer.get("error"):
        if same_as_peer["identical"]:
            notes.append("- modelshrink's tensors equal the peer's: same %d names, dtypes, "
                         "shapes and bytes." % same_as_peer["tensors"])
        else:
            notes.append("- modelshrink's tensors differ from the peer's in %d of %d tensors "
                         "(e.g. %s). %s" % (same_as_peer["n_problems"], same_as_peer["tensors"],
                                            "; ".join(same_as_peer["problems"][:2]),
                                            why_differ))
    if ms.out_bytes and peer.out_bytes and ms.wall_median:
        notes.append("- modelshrink is %.1fx faster than the peer and uses %.1f MiB against "
                     "%.1f MiB of memory." % (peer.wall_median / ms.wall_median, ms.rss_mib,
                                              peer.rss_mib))
    return h.CaseResult(h.standard_columns(), rows, preface=preface, notes="\n".join(notes),
                        versions=[("torch (.venv-torch)", torch_v),
                                  ("safetensors (.venv-torch)", st_v)])


@case("strip-resnet18", "Strip: ResNet-18 + attention head with Adam state")
def strip_resnet18(ctx):
    """A ResNet-18 classifier with an attention-pooling head, saved by its training loop with
    the Adam state: `modelshrink convert` keeps the state dict (bit for bit) and writes
    safetensors; the peer does the same with PyTorch."""
    params = dict(embed=64, heads=4, classes=10, steps=1) if ctx.quick else \
        dict(embed=128, heads=4, classes=10, steps=2)
    return ckpt_case(ctx, "strip-resnet18", "resnet18-attn", "resnet18-attn.pth", params,
                     "model_state_dict", [], [],
                     "a ~132 MB checkpoint holding ~44 MB of weights (3.0x)")


@case("fp16-yolox", "FP16: YOLOX-S-sized detector checkpoint")
def fp16_yolox(ctx):
    """A YOLOX-S detector checkpoint (model + SGD momentum, as YOLOX's trainer saves it) to an
    FP16 safetensors file of its weights: `modelshrink convert --fp16` against PyTorch
    (`.half()` on every FP32 tensor, then `save_file`)."""
    return ckpt_case(ctx, "fp16-yolox", "yolox-s", "yolox-s.pth", {}, "model", ["--fp16"],
                     ["--half"], "a ~69 MB checkpoint to ~17 MB in FP16",
                     why_differ="Both round to nearest even; they part only on magnitudes "
                     "below 2^-24, FP16's smallest subnormal (here BatchNorm biases of about "
                     "1e-5 after one SGD step, and the rare weight that close to 0): "
                     "`.half()` rounds them to 0 or "
                     "2^-24, modelshrink never turns a non-zero weight into 0 and stores 2^-24 "
                     "(its documented `--fp16-min` floor). The largest error against FP32 is "
                     "the same for both.")


# ---- growth ------------------------------------------------------------------------------------

# ALBERT-shaped models (shared weights copied per layer) at three sizes: the number of layers
# sets the size, hidden 1024. The largest is written with external data (protobuf caps one file
# at 2 GiB).
GROWTH_FULL = [("64MiB", 1, False), ("512MiB", 10, False), ("2GiB", 43, True)]
GROWTH_QUICK = [("16MiB", 1, False), ("64MiB", 5, False), ("256MiB", 20, True)]
GROWTH_SHAPE = dict(hidden=1024, embed=128, ffn=4096, vocab=30000, heads=16)
GROWTH_SHAPE_QUICK = dict(hidden=512, embed=128, ffn=2048, vocab=8000, heads=8)


@case("growth", "Growth: time and memory against model size")
def growth(ctx):
    """`modelshrink convert` (dedup) and `convert --no-dedup` (every byte rewritten) on the same
    ALBERT-shaped architecture at three sizes, against `cp` of the same bytes: wall time should
    grow in proportion to the bytes and peak RSS should stay flat."""
    sizes = GROWTH_QUICK if ctx.quick else GROWTH_FULL
    shape = GROWTH_SHAPE_QUICK if ctx.quick else GROWTH_SHAPE
    rows = []
    for label, layers, external in sizes:
        params = dict(shape, layers=layers)
        name = "growth-%s.onnx" % label
        inp = D.gen_albert(ctx, name, params, external)
        in_bytes = os.path.getsize(inp) + (os.path.getsize(inp + ".data")
                                           if os.path.exists(inp + ".data") else 0)
        extra = ("--external-data",) if external else ()
        tools = [D.tool_modelshrink(ctx, "modelshrink", extra),
                 D.tool_modelshrink(ctx, "modelshrink-no-dedup", ("--no-dedup",) + extra)]
        tools.append(h.Tool("cp", cp_argv(external),
                            outputs=lambda o: [o, o + ".data"], note="cp of the same bytes"))
        out_dir = os.path.join(ctx.work, "growth-out")
        log_dir = os.path.join(ctx.work, "growth-logs-" + label)
        h.warm_read(inp)
        if external:
            h.warm_read(inp + ".data")
        runs = h.round_robin(tools, inp, out_dir, log_dir, reps=ctx.reps)
        sums = {t.name: h.summarize(t.name, runs[t.name]) for t in tools}
        for t in tools:
            h.rm_f(*t.files(os.path.join(out_dir, t.name + ".onnx")))
        if not ctx.keep:
            D.cleanup_input(ctx, inp)
        for t in tools:
            s = sums[t.name]
            ok = bool(s.out_bytes)
            gib = in_bytes / (1024.0 * h.MIB)
            rows.append({
                "size": "%s (%s B%s)" % (label, h.fmt_bytes(in_bytes),
                                        ", external data" if external else ""),
                "tool": t.name, "wall": h.wall_cell(s),
                "per_gib": "%.3f" % (s.wall_median / gib) if ok else "",
                "rss": "%.1f" % s.rss_mib if ok else "",
                "out": h.fmt_bytes(s.out_bytes) if ok else "",
                "vs_cp": h.fmt_ratio(s.wall_median, sums["cp"].wall_median) if ok else ""})
        h.save_headline(ctx, "growth-" + label, input_bytes=in_bytes,
                        ms_wall=sums["modelshrink"].wall_median,
                        ms_rss=sums["modelshrink"].rss_mib,
                        nodedup_wall=sums["modelshrink-no-dedup"].wall_median,
                        nodedup_rss=sums["modelshrink-no-dedup"].rss_mib,
                        cp_wall=sums["cp"].wall_median)
    columns = [("size", "input", "l"), ("tool", "tool", "l"),
               ("wall", "median wall s (min–max)", "r"), ("per_gib", "s per GiB", "r"),
               ("rss", "peak RSS MiB", "r"), ("out", "output bytes", "r"),
               ("vs_cp", "wall vs cp", "r")]
    preface = (
        "Inputs: `gen_models.py albert` (%s; layers set the size), the largest written with "
        "`--external` (tensors in `MODEL.onnx.data`, converted with `--external-data`). "
        "Each tool ran %d times round-robin per size, after a warm-up read (page cache warm). "
        "`cp` copies the model file and its data file." % (
            ", ".join("%s %d" % kv for kv in shape.items()), ctx.reps))
    return h.CaseResult(columns, rows, preface=preface)


def cp_argv(external):
    if not external:
        return lambda i, o: ["cp", i, o]
    return lambda i, o: ["sh", "-c", 'cp "$1" "$2" && cp "$1.data" "$2.data"', "sh", i, o]
