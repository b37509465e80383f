#!/usr/bin/env python3
"""End-to-end over ONNX's own backend test models (Debian's libonnx-testdata):
every */model.onnx under the data folder is converted in one batch with `convert --no-dedup` and
once with the default `convert`; the folder structure must be mirrored, and every model that
onnxruntime can run BEFORE conversion must give bitwise-identical outputs (NaN-aware) after
either conversion, on its test_data_set_0 inputs. Models onnxruntime cannot run at all are
listed ("cannot run before conversion"); they still must convert without error.
Agreement with the reference output_*.pb files is reported for information only.

Data folder: $MSH_ONNX_TESTDATA or /usr/share/libonnx-testdata/data (skip when missing)."""

import glob
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_testdata"
DATA = os.environ.get("MSH_ONNX_TESTDATA", "/usr/share/libonnx-testdata/data")


def numeric_key(path):
    m = re.search(r"_(\d+)\.pb$", path)
    return int(m.group(1)) if m else 0


def read_value(onnx, path, type_proto):
    """Parse a test_data_set protobuf according to the graph's declared type."""
    from onnx import numpy_helper
    kind = type_proto.WhichOneof("value") if type_proto is not None else "tensor_type"
    data = open(path, "rb").read()
    if kind == "tensor_type":
        t = onnx.TensorProto()
        t.ParseFromString(data)
        return numpy_helper.to_array(t)
    if kind == "sequence_type":
        s = onnx.SequenceProto()
        s.ParseFromString(data)
        return numpy_helper.to_list(s)
    if kind == "optional_type":
        o = onnx.OptionalProto()
        o.ParseFromString(data)
        return numpy_helper.to_optional(o)
    raise ValueError("unsupported value kind %r" % kind)


def load_case(onnx, model_path):
    """(feeds, reference outputs) from test_data_set_0 beside the model."""
    m = onnx.load(model_path, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    real_inputs = [i for i in m.graph.input if i.name not in inits]
    ds = os.path.join(os.path.dirname(model_path), "test_data_set_0")
    in_files = sorted(glob.glob(os.path.join(ds, "input_*.pb")), key=numeric_key)
    out_files = sorted(glob.glob(os.path.join(ds, "output_*.pb")), key=numeric_key)
    if len(in_files) > len(real_inputs):
        raise ValueError("%d input files but %d graph inputs" % (len(in_files), len(real_inputs)))
    feeds = {}
    for f, vi in zip(in_files, real_inputs):
        feeds[vi.name] = read_value(onnx, f, vi.type)
    refs = {}
    for f, vi in zip(out_files, m.graph.output):
        refs[vi.name] = read_value(onnx, f, vi.type)
    return feeds, refs


def matches_reference(np, ref, got):
    """np.testing-style closeness, as ONNX's backend tests use (rtol 1e-3, atol 1e-7)."""
    if ref is None or got is None:
        return ref is None and got is None
    if isinstance(ref, list) or isinstance(got, list):
        return (isinstance(ref, list) and isinstance(got, list) and len(ref) == len(got)
                and all(matches_reference(np, a, b) for a, b in zip(ref, got)))
    try:
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.dtype == object or got.dtype == object:
            return ref.tolist() == got.tolist()
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-7)
        return True
    except Exception:
        return False


def _names_read(graph):
    """Every value name that the nodes of ``graph`` and of its subgraphs read, plus the
    outputs of each subgraph (a subgraph's outputs are read by its parent node)."""
    out = set()
    for n in graph.node:
        out.update(n.input)
        for at in n.attribute:
            for sg in ([at.g] if at.HasField("g") else []) + list(at.graphs):
                out.update(o.name for o in sg.output)
                out.update(_names_read(sg))
    return out


def expected_cleanup(onnx, model):
    """A copy of ``model`` with the clean-up that every convert does, computed here
    independently of modelshrink: nodes (Constant or any other) whose outputs nobody reads and
    initializers nobody reads go, and so do opset imports of domains that no node uses."""
    m = onnx.ModelProto()
    m.CopyFrom(model)

    def clean(graph, outer_read):
        while True:
            read = _names_read(graph) | {o.name for o in graph.output} | outer_read
            dead = [n for n in graph.node if not any(o in read for o in n.output if o)]
            if not dead:
                break
            for n in dead:
                graph.node.remove(n)
        read = _names_read(graph) | {o.name for o in graph.output} | outer_read
        for t in [t for t in graph.initializer if t.name not in read]:
            graph.initializer.remove(t)
        for n in graph.node:
            for at in n.attribute:
                for sg in ([at.g] if at.HasField("g") else []) + list(at.graphs):
                    clean(sg, read)

    clean(m.graph, set())
    used = set()
    for g in C.all_graphs(m.graph):
        used.update(n.domain for n in g.node)
    for f in m.functions:
        used.add(f.domain)
        used.update(n.domain for n in f.node)
    for o in [o for o in m.opset_import if o.domain not in ("", "ai.onnx") and o.domain not in used]:
        m.opset_import.remove(o)
    return m


def structure_diff(onnx, a, b, exact):
    """'' when model ``b`` keeps ``a``'s structure: same opsets, graph inputs/outputs, nodes
    (op types, and with ``exact`` also input/output names) in every graph, and with ``exact``
    the same initializers (names and values) in every graph; without ``exact`` every remaining
    initializer must hold the values its name held before, when it had one."""
    from onnx import numpy_helper
    import numpy as np
    a = expected_cleanup(onnx, a)
    if sorted((o.domain, o.version) for o in a.opset_import) != \
            sorted((o.domain, o.version) for o in b.opset_import):
        return "opset imports differ"
    ga, gb = C.all_graphs(a.graph), C.all_graphs(b.graph)
    if len(ga) != len(gb):
        return "number of (sub)graphs %d -> %d" % (len(ga), len(gb))
    for x, y in zip(ga, gb):
        if [i.name for i in x.input] != [i.name for i in y.input] or \
                [o.name for o in x.output] != [o.name for o in y.output]:
            return "graph %r: input/output names differ" % x.name
        if [n.op_type for n in x.node] != [n.op_type for n in y.node]:
            return "graph %r: node op types differ" % x.name
        if exact and [(list(n.input), list(n.output)) for n in x.node] != \
                [(list(n.input), list(n.output)) for n in y.node]:
            return "graph %r: node inputs/outputs differ" % x.name
        va = {t.name: numpy_helper.to_array(t) for t in x.initializer}
        vb = {t.name: numpy_helper.to_array(t) for t in y.initializer}
        if exact and sorted(va) != sorted(vb):
            return "graph %r: initializer names differ" % x.name
        for k, v in vb.items():
            if k in va and not (va[k].dtype == v.dtype and va[k].shape == v.shape and (
                    va[k].tolist() == v.tolist() if v.dtype == object
                    else va[k].tobytes() == v.tobytes())):
                return "graph %r: initializer %r changed value" % (x.name, k)
        if exact:
            for n, m in zip(x.node, y.node):
                for p, q in zip(n.attribute, m.attribute):
                    if p.HasField("t") and (not q.HasField("t") or not np.array_equal(
                            numpy_helper.to_array(p.t), numpy_helper.to_array(q.t))):
                        return "node %r: tensor attribute %r changed" % (n.name, p.name)
    return ""


def main():
    np, onnx, ort = C.import_deps("numpy", "onnx", "onnxruntime")
    if not os.path.isdir(DATA):
        C.skip("ONNX test data folder %s is missing (Debian package libonnx-testdata)" % DATA)
    args = C.parse_args(__doc__)
    F = C.Failures()
    t0 = time.time()

    models = sorted(os.path.relpath(p, DATA)
                    for p in glob.glob(os.path.join(DATA, "**", "*.onnx"), recursive=True))
    if not models:
        C.skip("no *.onnx files under %s" % DATA)
    print("%d models under %s" % (len(models), DATA), flush=True)

    # ---- 1. run the originals ---------------------------------------------------------------
    cannot_run = []     # (rel, reason)
    cannot_parse = []   # (rel, reason)
    nondeterministic = []
    runnable = {}       # rel -> (feeds, refs, outputs)
    for rel in models:
        path = os.path.join(DATA, rel)
        try:
            feeds, refs = load_case(onnx, path)
        except Exception as e:
            cannot_parse.append((rel, "%s: %s" % (type(e).__name__, str(e).splitlines()[0][:120]
                                                  if str(e) else "")))
            continue
        try:
            out1 = C.run_model(path, feeds)
            out2 = C.run_model(path, feeds)
        except Exception as e:
            msg = str(e).strip().splitlines()
            cannot_run.append((rel, "%s: %s" % (type(e).__name__, msg[0][:160] if msg else "")))
            continue
        if C.diff_outputs(out1, out2):
            nondeterministic.append(rel)
            continue
        runnable[rel] = (feeds, refs, out1)
    print("originals: %d run, %d cannot run, %d inputs unparsable, %d nondeterministic (%.0fs)"
          % (len(runnable), len(cannot_run), len(cannot_parse), len(nondeterministic),
             time.time() - t0), flush=True)

    # ---- 2. convert the whole folder, twice -------------------------------------------------
    variants = [("no-dedup", ["--no-dedup"]), ("dedup", [])]
    for label, opts in variants:
        out_dir = os.path.join(args.work, label)
        t1 = time.time()
        r = C.run(args.bin, "convert", "-q", *opts, DATA, "-o", out_dir, timeout=3600)
        print("convert %s %s -o %s: exit %d (%.0fs)" % (" ".join(opts), DATA, out_dir, r.rc,
                                                        time.time() - t1), flush=True)
        err_lines = [l for l in r.err.splitlines() if l.strip()]
        F.check(r.rc == 0, "convert %s on the whole data folder exits 0" % label,
                "command: %s\nexit %d, %d stderr lines; first ones:\n%s"
                % (r.cmd(), r.rc, len(err_lines), "\n".join(err_lines[:15])))
        # mirrored relative paths, nothing else written
        written = set()
        for root, _, files in os.walk(out_dir) if os.path.isdir(out_dir) else []:
            for n in files:
                written.add(os.path.relpath(os.path.join(root, n), out_dir))
        missing = [m for m in models if m not in written]
        extra = sorted(written - set(models))
        F.check(not missing, "%s: every model written at OUT/<relative path> (%d missing)"
                % (label, len(missing)), "first missing: %s" % missing[:10])
        F.check(not extra, "%s: no other files written (%d extra)" % (label, len(extra)),
                "first extra: %s" % extra[:10])

        # ---- 3. compare ---------------------------------------------------------------------
        same = ref_ok = 0
        mismatches, run_fail, parse_fail, struct_fail = [], [], [], []
        for rel in models:
            out_path = os.path.join(out_dir, rel)
            if rel not in written:
                continue
            try:  # every output must parse, and keep the graph's structure
                om = onnx.load(out_path)
                im = onnx.load(os.path.join(DATA, rel))
                d = structure_diff(onnx, im, om, exact=(label == "no-dedup"))
                if d:
                    struct_fail.append("%s: %s" % (rel, d))
            except Exception as e:
                parse_fail.append("%s: %s" % (rel, str(e)[:160]))
                continue
            if rel not in runnable:
                continue
            feeds, refs, expect = runnable[rel]
            try:
                got = C.run_model(out_path, feeds)
            except Exception as e:
                msg = str(e).strip().splitlines()
                run_fail.append("%s: %s" % (rel, msg[0][:200] if msg else type(e).__name__))
                continue
            d = C.diff_outputs(expect, got)
            if d:
                mismatches.append("%s: %s" % (rel, d.splitlines()[0]))
            else:
                same += 1
                if all(k in got and matches_reference(np, refs[k], got[k]) for k in refs):
                    ref_ok += 1
        F.check(not parse_fail, "%s: onnx.load parses every converted model (%d fail)"
                % (label, len(parse_fail)), "\n".join(parse_fail[:10]))
        F.check(not struct_fail, "%s: graph structure and tensor values preserved (%d differ)"
                % (label, len(struct_fail)), "\n".join(struct_fail[:10]))
        F.check(not run_fail, "%s: onnxruntime runs every converted model it ran before "
                "(%d fail)" % (label, len(run_fail)), "\n".join(run_fail[:10]))
        F.check(not mismatches, "%s: outputs bitwise identical to the original's (%d differ)"
                % (label, len(mismatches)), "\n".join(mismatches[:10]))
        print("%s: %d/%d runnable models bitwise identical; %d of those also match the reference "
              "output_*.pb within rtol 1e-3 (informational)"
              % (label, same, len(runnable), ref_ok), flush=True)

    # ---- report ------------------------------------------------------------------------------
    print("\ncannot run before conversion (onnxruntime refuses the original): %d"
          % len(cannot_run))
    for rel, why in cannot_run:
        print("  %s  [%s]" % (os.path.dirname(rel), why))
    if cannot_parse:
        print("test inputs/outputs not parsable as declared types (skipped): %d" % len(cannot_parse))
        for rel, why in cannot_parse:
            print("  %s  [%s]" % (os.path.dirname(rel), why))
    if nondeterministic:
        print("nondeterministic in onnxruntime (two runs of the original differ; not compared): "
              "%d: %s" % (len(nondeterministic), ", ".join(os.path.dirname(r)
                                                          for r in nondeterministic)))
    print("total %.0fs" % (time.time() - t0))
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
