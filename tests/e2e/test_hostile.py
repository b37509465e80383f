#!/usr/bin/env python3
"""End-to-end: the catalogue of hostile inputs (tests/fixtures/make_hostile.py) and every fuzz
regression input (tests/fuzz/regressions/).

For each catalogue input, `convert IN -o OUT/out.EXT` (plain, and with --fp16 --int8 for ONNX or
--fp16/--bf16 --format pth for checkpoints) must exit 1
without a signal, print exactly one stderr line 'modelshrink: IN: ...' that names the input and
the problem (one of the catalogue's words for it), leave the output folder empty (no output, no
temporary), write nothing anywhere else (the working folder, the output root, the folder outside
the case that external-data paths point at), create no file a pickle payload would create, and
leave the input's folder byte-for-byte unchanged (sha256 of every file, symlink targets);
`inspect` and `inspect --json` must fail the same way. A batch over the whole catalogue must fail
every input in its report and write no model. Each fuzz regression input is run through inspect
and the four convert variants the fuzz targets use: it must exit 0 or 1 with no sanitizer report,
and a failure must be one line with nothing left behind."""

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_hostile"
ROOT = os.path.dirname(os.path.dirname(C.HERE))
REGRESSIONS = os.path.join(ROOT, "tests", "fuzz", "regressions")
EXT = {"onnx": ".onnx", "zip": ".pth", "pickle": ".pth", "safetensors": ".safetensors"}
HF_NAMES = ("model.safetensors", "pytorch_model.bin")
SANITIZER = ("Sanitizer", "runtime error:", "Segmentation fault", "Aborted")
# the option sets of tests/fuzz/fuzz_file.h's variants 0..3, as command-line flags: ONNX inputs
# take the ONNX options, checkpoints the checkpoint ones (an option that does not apply to an
# input's format is a usage error)
VARIANTS = [[], ["--fp16", "--int8", "--int8-min-elements", "1"],
            ["--bf16", "--external-data"],
            ["--int8", "--int8-min-elements", "1", "--int8-gather"]]
CKPT_VARIANTS = [[], ["--fp16"], ["--bf16", "--format", "pth"],
                 ["--fp16", "--format", "pth", "--no-dedup"]]
# the second option set of each catalogue input, by kind
EXTRA = {"onnx": ["--fp16", "--int8"], "zip": ["--fp16", "--format", "pth"],
         "pickle": ["--fp16", "--format", "pth"], "safetensors": ["--bf16", "--format", "pth"]}


def one_line(r):
    return [l for l in r.err.splitlines() if l.strip()]


def listing(d):
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def check_catalogue(F, args, cat_dir, cases):
    outs = os.path.join(args.work, "outs")
    cwd = os.path.join(args.work, "cwd")
    os.makedirs(outs)
    os.makedirs(cwd)
    outside = os.path.join(cat_dir, "_outside")
    outside_before = C.tree_state(outside)
    made = []
    for c in cases:
        name = c["name"]
        inp = os.path.join(cat_dir, c["input"])
        folder = os.path.join(cat_dir, name)
        before = C.tree_state(folder)
        runs = []
        for i, extra in enumerate(([], EXTRA[c["kind"]])):
            od = os.path.join(outs, "%s.%d" % (name, i))
            os.makedirs(od)
            made.append(os.path.basename(od))
            # the output's extension must name the format written (--format pth: .pth)
            ext = ".pth" if "pth" in extra else EXT[c["kind"]]
            r = C.run(args.bin, "convert", inp, "-o", os.path.join(od, "out" + ext),
                      *extra, cwd=cwd, timeout=300)
            runs.append(("convert %s" % " ".join(extra), r, od))
        runs.append(("inspect", C.run(args.bin, "inspect", inp, cwd=cwd, timeout=300), None))
        for what, r, od in runs:
            lines = one_line(r)
            msg = lines[0] if len(lines) == 1 else ""
            F.check(r.rc == 1, "%s: %s exits 1 (no signal)" % (name, what), r.describe())
            F.check(not any(s in r.err for s in SANITIZER),
                    "%s: %s: no crash or sanitizer report" % (name, what), r.describe())
            F.check(msg.startswith("modelshrink: ") and inp in msg,
                    "%s: %s prints one line 'modelshrink: IN: ...'" % (name, what),
                    r.describe())
            problem = msg.split(inp + ": ", 1)[-1].lower()   # the path holds the case name
            F.check(any(w.lower() in problem for w in c["expect"]),
                    "%s: %s names the problem (%s; one of %s)" % (name, what, c["problem"],
                                                                 c["expect"]), r.describe())
            if od:
                F.check(not listing(od), "%s: %s leaves the output folder empty" % (name, what),
                        "found %s" % listing(od))
        r = C.run(args.bin, "inspect", "--json", inp, cwd=cwd, timeout=300)
        C.check_inspect_json(F, r.out, "%s: inspect --json" % name)
        try:
            entry = json.loads(r.out)["files"][0]
            ok = r.rc == 1 and isinstance(entry.get("error"), str) and c["input"] in entry["path"]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            ok = False
        F.check(ok, "%s: inspect --json exits 1 and reports {path, error}" % name, r.describe())
        F.check(C.tree_state(folder) == before, "%s: input folder unchanged (sha256)" % name)
        F.check(listing(outs) == sorted(made), "%s: nothing written beside the output folders"
                % name, "outs holds %s" % listing(outs))
        F.check(not listing(cwd), "%s: nothing written in the working folder" % name,
                "found %s" % listing(cwd))
        if c.get("marker"):
            hits = [p for p in (os.path.join(cwd, c["marker"]), os.path.join(folder, c["marker"]),
                                os.path.join(ROOT, c["marker"])) if os.path.exists(p)]
            F.check(not hits, "%s: the payload's marker %s was never created" % (name, c["marker"]),
                    "found %s" % hits)
    F.check(C.tree_state(outside) == outside_before,
            "the files outside the case folders are unchanged")

    # one batch over everything: every input fails, no model is written
    before = C.tree_state(cat_dir)
    bo = os.path.join(args.work, "batch_out")
    rep = os.path.join(args.work, "batch.jsonl")
    r = C.run(args.bin, "convert", cat_dir, "-o", bo, "--report", rep, "-q", cwd=cwd, timeout=900)
    F.check(r.rc == 1, "batch over the catalogue exits 1", r.describe())
    F.check(not any(s in r.err for s in SANITIZER), "batch: no sanitizer report", r.describe())
    written = [os.path.relpath(os.path.join(d, f), bo) for d, _, fs in os.walk(bo) for f in fs]
    F.check(not written, "batch: no file in the output tree", "found %s" % written[:10])
    try:
        with open(rep) as f:
            recs = [json.loads(l) for l in f if l.strip()]
    except (OSError, ValueError) as e:
        recs = []
        F.fail("batch: the report reads as JSON Lines", str(e))
    models = {x["rel"]: x for x in recs if x.get("type") == "model"}
    # a folder holding model.safetensors or pytorch_model.bin is a Hugging Face model folder: one
    # model, recorded by the folder
    want = {os.path.dirname(c["input"]) if os.path.basename(c["input"]) in HF_NAMES
            else c["input"] for c in cases}
    F.check(set(models) == want, "batch: the report has one record per catalogue input",
            "missing %s, extra %s" % (sorted(want - set(models))[:5],
                                      sorted(set(models) - want)[:5]))
    bad = [k for k, x in models.items() if x.get("status") != "error" or not x.get("error")]
    F.check(not bad, "batch: every record is an error with its message", "not: %s" % bad[:5])
    summ = [x for x in recs if x.get("type") == "summary"]
    F.check(len(summ) == 1 and summ[0].get("failed") == len(cases) and summ[0].get("ok") == 0,
            "batch: the summary counts %d failed, 0 ok" % len(cases), str(summ))
    F.check(C.tree_state(cat_dir) == before, "batch: the catalogue is unchanged")
    F.check(not listing(cwd), "batch: nothing written in the working folder")


def regression_inputs(work):
    """(label, path, ext) for every file in tests/fuzz/regressions/TARGET/; pickle regressions
    are wrapped as data.pkl of the committed control checkpoint so the command line reaches
    them."""
    out = []
    if not os.path.isdir(REGRESSIONS):
        return out
    sys.path.insert(0, C.FIXTURES)
    import make_hostile as MH
    ext = {"fuzz_onnx": ".onnx", "fuzz_pth": ".pth", "fuzz_pickle": ".pth",
           "fuzz_safetensors": ".safetensors"}
    for target in sorted(os.listdir(REGRESSIONS)):
        for fn in sorted(os.listdir(os.path.join(REGRESSIONS, target))):
            with open(os.path.join(REGRESSIONS, target, fn), "rb") as f:
                data = f.read()
            if target == "fuzz_pickle":
                data = MH.checkpoint_with_pickle(data)
            d = os.path.join(work, "regr", target, fn)
            os.makedirs(d)
            p = os.path.join(d, "in" + ext[target])
            with open(p, "wb") as f:
                f.write(data)
            out.append(("%s/%s" % (target, fn), p, ext[target]))
    return out


def check_regressions(F, args):
    inputs = regression_inputs(args.work)
    print("fuzz regression inputs: %d" % len(inputs))
    for label, p, ext in inputs:
        r = C.run(args.bin, "inspect", p, timeout=300)
        F.check(r.rc in (0, 1) and not any(s in r.err for s in SANITIZER),
                "%s: inspect exits 0 or 1 without a crash" % label, r.describe())
        for i, flags in enumerate(VARIANTS if ext == ".onnx" else CKPT_VARIANTS):
            od = os.path.join(os.path.dirname(p), "out%d" % i)
            os.makedirs(od)
            out = os.path.join(od, "out" + (".pth" if "pth" in flags else ext))
            r = C.run(args.bin, "convert", p, "-o", out, *flags, timeout=300)
            what = "%s: convert %s" % (label, " ".join(flags) or "(plain)")
            F.check(r.rc in (0, 1) and not any(s in r.err for s in SANITIZER),
                    "%s exits 0 or 1 without a crash" % what, r.describe())
            if r.rc == 1:
                F.check(len(one_line(r)) == 1 and not listing(od),
                        "%s: one line, nothing left behind" % what,
                        r.describe() + "\nleft: %s" % listing(od))
            elif r.rc == 0:
                F.check(os.path.isfile(out), "%s: the output exists" % what, r.describe())


def main():
    C.import_deps("numpy", "onnx")
    args = C.parse_args(__doc__)
    C.require_jsonschema()
    sys.path.insert(0, C.FIXTURES)
    import make_hostile as MH
    F = C.Failures()
    cat_dir = os.path.join(args.work, "catalogue")
    cases = MH.build(cat_dir)
    kinds = {}
    for c in cases:
        kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
    print("catalogue: %d inputs (%s)" % (len(cases), kinds))
    F.check(len(cases) >= 40, "the catalogue holds at least 40 inputs", str(len(cases)))
    check_catalogue(F, args, cat_dir, cases)
    check_regressions(F, args)
    shutil.rmtree(os.path.join(args.work, "outs"), ignore_errors=True)
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
