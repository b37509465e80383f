#!/usr/bin/env python3
"""End-to-end: pruning outputs (--keep-outputs / --drop-outputs) and the always-on clean-up.

- clip (gen_models.make_clip, image + text tower, the text tower holding most bytes):
  `convert --keep-outputs image_embeds` leaves `image_embeds` as the only graph output and
  `pixel_values` as the only input (`input_ids` stays with --keep-inputs); no text-tower
  initializer is left; the file shrinks by the bytes of the initializers only the dropped
  outputs need (computed from the model, looking into subgraphs), give or take a few kB of graph;
  the per-model line says `pruned N nodes, M tensors`; the report's savings.prune is those
  bytes; `image_embeds` is bit-identical in onnxruntime (fed only pixel_values, or both with
  --keep-inputs); onnx.checker full_check passes. `--drop-outputs text_embeds,logits_per_image`
  (and the same as two options) writes the same bytes as `--keep-outputs image_embeds`.
  Keeping two outputs keeps both towers and drops the head. An unknown output name: exit 1, one
  stderr line listing the model's outputs, no output file and no temporary file left.
- clip with junk: a plain `convert` removes the unused initializer, the unused Constant, the dead
  node chain (and the initializer only it reads), their value_info and the unused `com.example`
  opset import; keeps the initializer that is also a graph input, the live value_info and the
  default domain; outputs bit-identical. `inspect --json` before reports `unused` matching what
  disappeared (after: all zero); the table mentions it only when non-zero.
- clip with an If: the image projection lives in an If whose then-branch captures the outer
  initializer `vision.proj`. A plain convert keeps it (nothing pruned, inspect reports nothing
  unused); --keep-outputs image_embeds keeps it and the If's condition input; keeping only
  text_embeds removes it with the If. Outputs bit-identical for both branch conditions.
"""

import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_prune"
OUTPUTS = ["image_embeds", "text_embeds", "logits_per_image"]
GRAPH_SLACK = 8192   # bytes of graph (nodes, names, tensor headers) a prune may remove on top
PRUNED_RE = re.compile(r"pruned (\d+) nodes?, (\d+) tensors?")


# ---------------------------------------------------------------------------------------------
# what a set of outputs needs, computed from the model (independently of modelshrink)
# ---------------------------------------------------------------------------------------------

def subgraph_reads(node):
    """Names read by nodes of the node's subgraphs (any depth), minus the names they define."""
    reads, defined = set(), set()
    for attr in node.attribute:
        graphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        for g in graphs:
            defined.update(i.name for i in g.input)
            defined.update(t.name for t in g.initializer)
            for n in g.node:
                reads.update(x for x in n.input if x)
                defined.update(n.output)
                reads.update(subgraph_reads(n))
    return reads - defined


def needed(model, outputs):
    """(names of the values, indices of the main-graph nodes) that ``outputs`` need."""
    producer = {}
    for i, n in enumerate(model.graph.node):
        for o in n.output:
            producer[o] = i
    want, nodes, stack = set(), set(), list(outputs)
    while stack:
        v = stack.pop()
        if v in want:
            continue
        want.add(v)
        i = producer.get(v)
        if i is None or i in nodes:
            continue
        nodes.add(i)
        n = model.graph.node[i]
        stack.extend(x for x in n.input if x)
        stack.extend(subgraph_reads(n))
    return want, nodes


def tensor_bytes(t):
    from onnx import numpy_helper
    return numpy_helper.to_array(t).nbytes


def main():
    np, onnx, _ = C.import_deps("numpy", "onnx", "onnxruntime")
    args = C.parse_args(__doc__)
    C.require_jsonschema()
    G = C.gen_models()
    F = C.Failures()
    w = args.work
    if not hasattr(G, "make_clip"):
        C.skip("tests/fixtures/gen_models.py has no make_clip")

    def convert(src, dst, *opts, report=None):
        extra = ["--report", report] if report else []
        r = C.run(args.bin, "convert", *opts, *extra, src, "-o", dst)
        F.check(r.rc == 0 and os.path.isfile(dst), "convert %s%s exits 0 and writes the output"
                % (" ".join(opts) + " " if opts else "", os.path.basename(src)), r.describe())
        return r

    def checker(path, what):
        try:
            onnx.checker.check_model(path, full_check=True)
            F.check(True, "%s: onnx.checker full_check passes" % what)
        except Exception as e:  # noqa: BLE001
            F.fail("%s: onnx.checker full_check passes" % what, str(e)[:800])

    def io_names(m):
        return [i.name for i in m.graph.input], [o.name for o in m.graph.output]

    def init_names(m):
        return {t.name for g in C.all_graphs(m.graph) for t in g.initializer}

    def run(path, feeds):
        try:
            return C.run_model(path, feeds)
        except Exception as e:  # noqa: BLE001
            F.fail("onnxruntime runs %s" % os.path.basename(path), str(e)[:800])
            return None

    def same(ref, got, names, what):
        if ref is None or got is None:
            return
        d = C.diff_outputs({k: ref[k] for k in names}, got)
        F.check(not d, "%s: %s bit-identical to the original's" % (what, ", ".join(names)), d)

    def report_record(path):
        try:
            for line in open(path):
                rec = json.loads(line)
                if rec.get("type") == "model":
                    return rec
        except (OSError, ValueError):
            pass
        return {}

    def pruned_counts(stdout):
        m = PRUNED_RE.search(stdout)
        return (int(m.group(1)), int(m.group(2))) if m else None

    def inspect_unused(path):
        r = C.run(args.bin, "inspect", "--json", path)
        C.check_inspect_json(F, r.out, "inspect --json %s" % os.path.basename(path))
        try:
            return json.loads(r.out)["files"][0].get("unused"), r
        except (ValueError, KeyError, IndexError):
            return None, r

    def feeds_for(m, ids_seed=1, cond=None):
        rng = np.random.default_rng(ids_seed)
        f = {}
        for i in m.graph.input:
            dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
            if i.name == "pixel_values":
                f[i.name] = rng.standard_normal(dims).astype(np.float32)
            elif i.name == "input_ids":
                f[i.name] = rng.integers(0, 1000, size=dims).astype(np.int64)
            elif i.name == "use_projection":
                f[i.name] = np.array(bool(cond))
        return f

    # =========================================================================================
    # 1. CLIP: keep the image tower
    # =========================================================================================
    src = G.save(G.make_clip(), os.path.join(w, "clip.onnx"))
    orig = onnx.load(src)
    checker(src, "clip (fixture)")
    inits = {t.name: t for t in orig.graph.initializer}
    need_vals, need_nodes = needed(orig, ["image_embeds"])
    text_only = sorted(n for n in inits if n not in need_vals)
    text_bytes = sum(tensor_bytes(inits[n]) for n in text_only)
    all_bytes = sum(tensor_bytes(t) for t in inits.values())
    F.check(text_bytes > all_bytes * 0.75 and any(n.startswith("text.") for n in text_only)
            and not any(n.startswith("vision.") for n in text_only),
            "fixture: the text-only initializers hold most bytes (%d of %d)"
            % (text_bytes, all_bytes), ", ".join(text_only))
    feeds = feeds_for(orig)
    ref = run(src, feeds)

    keep = os.path.join(w, "keep.onnx")
    rep = os.path.join(w, "keep.jsonl")
    r = convert(src, keep, "--keep-outputs", "image_embeds", report=rep)
    if os.path.isfile(keep):
        m = onnx.load(keep)
        ins, outs = io_names(m)
        F.check(outs == ["image_embeds"], "keep image_embeds: the only graph output", str(outs))
        F.check(ins == ["pixel_values"], "keep image_embeds: input_ids removed from the inputs",
                str(ins))
        left = init_names(m)
        F.check(not (left & set(text_only)), "keep image_embeds: no text-tower initializer left",
                ", ".join(sorted(left & set(text_only))))
        F.check(left == set(inits) - set(text_only),
                "keep image_embeds: every image-tower initializer kept",
                ", ".join(sorted((set(inits) - set(text_only)) ^ left)))
        F.check(len(m.graph.node) == len(need_nodes),
                "keep image_embeds: exactly the %d nodes image_embeds needs are left"
                % len(need_nodes), "%d nodes" % len(m.graph.node))
        shrink = os.path.getsize(src) - os.path.getsize(keep)
        F.check(0 <= shrink - text_bytes <= GRAPH_SLACK,
                "keep image_embeds: file shrinks by the text tower's %d bytes (+ <= %d of graph)"
                % (text_bytes, GRAPH_SLACK), "shrank by %d bytes" % shrink)
        pc = pruned_counts(r.out)
        removed_nodes = len(orig.graph.node) - len(m.graph.node)
        F.check(pc == (removed_nodes, len(text_only)),
                "keep image_embeds: the line says pruned %d nodes, %d tensors"
                % (removed_nodes, len(text_only)), r.out.strip())
        rec = report_record(rep)
        F.check(rec.get("savings", {}).get("prune") == text_bytes,
                "keep image_embeds: report savings.prune == %d" % text_bytes,
                json.dumps(rec.get("savings")))
        same(ref, run(keep, {"pixel_values": feeds["pixel_values"]}), ["image_embeds"],
             "keep image_embeds (fed pixel_values only)")
        checker(keep, "keep image_embeds")

    # --keep-inputs: input_ids stays
    keep_in = os.path.join(w, "keep_inputs.onnx")
    convert(src, keep_in, "--keep-outputs", "image_embeds", "--keep-inputs")
    if os.path.isfile(keep_in):
        m = onnx.load(keep_in)
        ins, outs = io_names(m)
        F.check(ins == ["pixel_values", "input_ids"] and outs == ["image_embeds"],
                "--keep-inputs: both inputs kept, image_embeds the only output",
                "inputs %s outputs %s" % (ins, outs))
        F.check(not (init_names(m) & set(text_only)),
                "--keep-inputs: still no text-tower initializer")
        same(ref, run(keep_in, feeds), ["image_embeds"], "--keep-inputs (fed both inputs)")
        checker(keep_in, "--keep-inputs")

    # --drop-outputs gives the same bytes
    for i, opts in enumerate((["--drop-outputs", "text_embeds,logits_per_image"],
                              ["--drop-outputs", "text_embeds", "--drop-outputs",
                               "logits_per_image"])):
        drop = os.path.join(w, "drop%d.onnx" % i)
        convert(src, drop, *opts)
        if os.path.isfile(drop) and os.path.isfile(keep):
            F.check(C.sha256(drop) == C.sha256(keep),
                    "%s writes the same bytes as --keep-outputs image_embeds" % " ".join(opts))

    # keeping two outputs: both towers stay, the head goes
    two = os.path.join(w, "two.onnx")
    r = convert(src, two, "--keep-outputs", "image_embeds,text_embeds")
    if os.path.isfile(two):
        m = onnx.load(two)
        ins, outs = io_names(m)
        vals, _ = needed(orig, ["image_embeds", "text_embeds"])
        head_only = set(inits) - vals
        F.check(outs == ["image_embeds", "text_embeds"] and ins == ["pixel_values", "input_ids"],
                "keep image_embeds,text_embeds: outputs and inputs",
                "inputs %s outputs %s" % (ins, outs))
        F.check(head_only == {"logit_scale"} and init_names(m) == set(inits) - head_only,
                "keep image_embeds,text_embeds: only the head's logit_scale removed",
                ", ".join(sorted(set(inits) - init_names(m))))
        F.check(not any(n.name.startswith("head.") or n.output[0] == "logits_per_image"
                        for n in m.graph.node),
                "keep image_embeds,text_embeds: no head node left")
        same(ref, run(two, feeds), ["image_embeds", "text_embeds"],
             "keep image_embeds,text_embeds")
        checker(two, "keep image_embeds,text_embeds")

    # keeping the output that needs everything removes nothing but the other outputs
    logits = os.path.join(w, "logits.onnx")
    r = convert(src, logits, "--keep-outputs", "logits_per_image")
    if os.path.isfile(logits):
        m = onnx.load(logits)
        F.check(io_names(m) == (["pixel_values", "input_ids"], ["logits_per_image"])
                and init_names(m) == set(inits) and len(m.graph.node) == len(orig.graph.node),
                "keep logits_per_image: both towers and every node kept, one output",
                "%s, %d nodes" % (io_names(m), len(m.graph.node)))
        same(ref, run(logits, feeds), ["logits_per_image"], "keep logits_per_image")

    # unknown output names
    for opt in ("--keep-outputs", "--drop-outputs"):
        bad_dir = os.path.join(w, "bad" + opt.strip("-"))
        os.makedirs(bad_dir)
        bad = os.path.join(bad_dir, "out.onnx")
        r = C.run(args.bin, "convert", opt, "image_embeds,no_such_output", src, "-o", bad)
        lines = [ln for ln in r.err.splitlines() if ln.strip()]
        F.check(r.rc == 1, "%s no_such_output: exit 1" % opt, r.describe())
        F.check(len(lines) == 1 and "no_such_output" in lines[0]
                and all(o in lines[0] for o in OUTPUTS),
                "%s no_such_output: one stderr line naming it and listing the model's outputs"
                % opt, r.describe())
        F.check(os.listdir(bad_dir) == [], "%s no_such_output: no output file, no temporary"
                % opt, str(os.listdir(bad_dir)))

    # inspect on the clean model: nothing unused, and the table does not mention it
    un, r = inspect_unused(src)
    F.check(un == {"initializers": 0, "bytes": 0, "nodes": 0},
            "inspect --json clip: unused all zero", r.describe())
    r = C.run(args.bin, "inspect", src)
    F.check(r.rc == 0 and "unused" not in r.out.lower(),
            "inspect clip (table): no 'unused' line when nothing is unused", r.describe())

    # a plain convert of the clean model prunes nothing
    plain = os.path.join(w, "plain.onnx")
    r = convert(src, plain)
    if os.path.isfile(plain):
        F.check(pruned_counts(r.out) is None, "plain convert of clip: nothing pruned", r.out)
        m = onnx.load(plain)
        F.check(init_names(m) == set(inits) and len(m.graph.node) == len(orig.graph.node)
                and io_names(m) == io_names(orig),
                "plain convert of clip: every node, initializer, input and output kept")

    # =========================================================================================
    # 2. the always-on clean-up
    # =========================================================================================
    jsrc = G.save(G.make_clip(junk=True), os.path.join(w, "junk.onnx"))
    jorig = onnx.load(jsrc)
    checker(jsrc, "clip junk (fixture)")
    jinits = {t.name: t for t in jorig.graph.initializer}
    gone_inits = {"junk.unused", "junk.dead_w"}
    gone_nodes = {"junk.const", "junk.dead1.Relu", "junk.dead2.Mul", "junk.dead3.Sigmoid"}
    gone_vi = {"junk.dead1", "junk.dead2", "junk.dead3", "junk.const_out"}
    init_bytes = sum(tensor_bytes(jinits[n]) for n in gone_inits)
    const_bytes = sum(tensor_bytes(a.t) for n in jorig.graph.node if n.name == "junk.const"
                      for a in n.attribute if a.name == "value")
    ok_bytes = (init_bytes, init_bytes + const_bytes)
    un, r = inspect_unused(jsrc)
    F.check(un is not None and un.get("initializers") == len(gone_inits)
            and un.get("nodes") == len(gone_nodes) and un.get("bytes") in ok_bytes,
            "inspect --json junk: unused = %d initializers, %d nodes, %d bytes "
            "(or %d with the Constant's)" % (len(gone_inits), len(gone_nodes), init_bytes,
                                             init_bytes + const_bytes),
            "got %s" % json.dumps(un))
    r = C.run(args.bin, "inspect", jsrc)
    F.check(r.rc == 0 and "unused" in r.out.lower(),
            "inspect junk (table): shows the unused line", r.describe())

    jout = os.path.join(w, "junk_out.onnx")
    jrep = os.path.join(w, "junk.jsonl")
    r = convert(jsrc, jout, report=jrep)
    if os.path.isfile(jout):
        m = onnx.load(jout)
        left = init_names(m)
        F.check(left == set(jinits) - gone_inits,
                "clean-up: junk.unused and junk.dead_w removed, every other initializer kept",
                "removed %s" % sorted(set(jinits) - left))
        F.check("junk.default" in left and "junk.default" in io_names(m)[0],
                "clean-up: an unused initializer that is a graph input stays (both)")
        names = {n.name for n in m.graph.node}
        F.check(not (names & gone_nodes) and
                len(m.graph.node) == len(jorig.graph.node) - len(gone_nodes),
                "clean-up: the unused Constant and the dead chain removed, nothing else",
                "left: %s; %d -> %d nodes" % (sorted(names & gone_nodes), len(jorig.graph.node),
                                              len(m.graph.node)))
        vis = {v.name for v in m.graph.value_info}
        F.check(not (vis & gone_vi) and "vision.tokens" in vis,
                "clean-up: value_info of dead values removed, the live one kept", str(sorted(vis)))
        doms = {o.domain: o.version for o in m.opset_import}
        F.check("com.example" not in doms and doms.get("") == 17,
                "clean-up: unused com.example opset import removed, default domain kept",
                str(doms))
        F.check(io_names(m) == io_names(jorig), "clean-up: graph inputs and outputs unchanged",
                str(io_names(m)))
        pc = pruned_counts(r.out)
        F.check(pc is not None and pc[0] == len(gone_nodes)
                and len(gone_inits) <= pc[1] <= len(gone_inits) + 1,
                "clean-up: the line says pruned %d nodes, %d tensors (or %d with the Constant)"
                % (len(gone_nodes), len(gone_inits), len(gone_inits) + 1), r.out.strip())
        rec = report_record(jrep)
        prune = rec.get("savings", {}).get("prune")
        F.check(prune in ok_bytes and (un is None or prune == un.get("bytes")),
                "clean-up: report savings.prune equals inspect's unused bytes",
                "savings %s, inspect %s" % (json.dumps(rec.get("savings")), json.dumps(un)))
        jfeeds = feeds_for(jorig)
        same(run(jsrc, jfeeds), run(jout, jfeeds), OUTPUTS, "clean-up")
        checker(jout, "clean-up")
        un2, r = inspect_unused(jout)
        F.check(un2 == {"initializers": 0, "bytes": 0, "nodes": 0},
                "inspect --json after the clean-up: unused all zero", r.describe())
        # converting the cleaned model again changes nothing more
        again = os.path.join(w, "junk_again.onnx")
        r = convert(jout, again)
        F.check(pruned_counts(r.out) is None, "clean-up is idempotent: nothing pruned the second "
                "time", r.out.strip())

    # =========================================================================================
    # 3. If subgraph capturing an outer initializer
    # =========================================================================================
    isrc = G.save(G.make_clip(if_proj=True), os.path.join(w, "if.onnx"))
    iorig = onnx.load(isrc)
    checker(isrc, "clip if (fixture)")
    iinits = init_names(iorig)
    F.check(not any("vision.proj" in n.input for n in iorig.graph.node)
            and "vision.proj" in {t.name for t in iorig.graph.initializer},
            "fixture: outer vision.proj is read only inside the If")
    ifeeds = [feeds_for(iorig, cond=c) for c in (True, False)]
    irefs = [run(isrc, f) for f in ifeeds]

    un, r = inspect_unused(isrc)
    F.check(un == {"initializers": 0, "bytes": 0, "nodes": 0},
            "inspect --json if: a captured initializer is not unused", r.describe())
    iplain = os.path.join(w, "if_plain.onnx")
    r = convert(isrc, iplain)
    if os.path.isfile(iplain):
        F.check(pruned_counts(r.out) is None and init_names(onnx.load(iplain)) == iinits,
                "if, plain convert: nothing pruned, vision.proj kept", r.out.strip())
        for f, ref_i in zip(ifeeds, irefs):
            same(ref_i, run(iplain, f), OUTPUTS,
                 "if, plain convert (use_projection=%s)" % f["use_projection"])

    ikeep = os.path.join(w, "if_keep.onnx")
    convert(isrc, ikeep, "--keep-outputs", "image_embeds")
    if os.path.isfile(ikeep):
        m = onnx.load(ikeep)
        left = init_names(m)
        F.check("vision.proj" in left and "vision.proj_alt" in left
                and not any(n.startswith("text.") for n in left) and "logit_scale" not in left,
                "if, keep image_embeds: the captured vision.proj (and the branch's own) kept, "
                "the text tower removed", str(sorted(left)))
        F.check(io_names(m) == (["pixel_values", "use_projection"], ["image_embeds"]),
                "if, keep image_embeds: inputs pixel_values and use_projection",
                str(io_names(m)))
        for f, ref_i in zip(ifeeds, irefs):
            same(ref_i, run(ikeep, {k: v for k, v in f.items() if k != "input_ids"}),
                 ["image_embeds"], "if, keep image_embeds (use_projection=%s)"
                 % f["use_projection"])
        checker(ikeep, "if, keep image_embeds")

    itext = os.path.join(w, "if_text.onnx")
    convert(isrc, itext, "--keep-outputs", "text_embeds")
    if os.path.isfile(itext):
        m = onnx.load(itext)
        left = init_names(m)
        F.check(not any(n.startswith("vision.") for n in left)
                and not any(n.op_type == "If" for n in m.graph.node),
                "if, keep text_embeds: the If and vision.proj removed", str(sorted(left)))
        F.check(io_names(m) == (["input_ids"], ["text_embeds"]),
                "if, keep text_embeds: input_ids the only input", str(io_names(m)))
        same(irefs[0], run(itext, {"input_ids": ifeeds[0]["input_ids"]}), ["text_embeds"],
             "if, keep text_embeds")
        checker(itext, "if, keep text_embeds")

    F.check(not glob.glob(os.path.join(w, "**", ".*msh-tmp*"), recursive=True),
            "no temporary files left anywhere")
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
