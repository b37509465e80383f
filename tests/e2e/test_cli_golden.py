#!/usr/bin/env python3
"""End-to-end: the command line's surface, golden (zstd's tests/cli-tests style). Each case of
CASES runs one modelshrink command in a fixed scratch tree and compares its stdout, stderr and
exit code EXACTLY with tests/golden/<case>.txt:

    command: modelshrink convert in/bad.onnx -o out.onnx
    exit: 1
    --- stdout
    --- stderr
    modelshrink: in/bad.onnx: truncated: field 13 at offset 0 claims 117 bytes, 3 remain

Paths are relative to the scratch tree (the command's working folder), so the files hold no
temporary path; any absolute scratch path in an output is written {W}, and the CUDA device count
of --version is written N. A section whose text does not end in a newline gets the line
'\\ no newline at end'. After every case the whole scratch tree must be as it was: usage errors,
help and failed conversions create nothing (no empty folder at -o, no partial output).

The cases cover every usage error, the help of every command, and the messages of issue 18: a
failed conversion leaves nothing at -o; a batch whose models all fail creates no folder and
leaves an existing one as it was; a folder without models; --block-op with an op type of no ONNX
schema; options given without the option they refine; `report` without a command, `report merge`
without reports; unknown options and commands.

Then, without golden files (their byte counts would follow the onnx package's serializer):
after a failed `convert bad.onnx -o out.onnx`, `convert good.onnx -o out.onnx` writes the file
out.onnx; one input file with -o naming an existing folder is written into it as
<folder>/<input name>, the folder's other files untouched; a batch with a bad and a good model
keeps only the good one's folders; folders above a single output file are made when it succeeds.

    --update    rewrite tests/golden/ from the binary (after an intended change: review the diff)
"""

import os
import re
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_cli_golden"
GOLDEN = os.path.join(os.path.dirname(C.HERE), "golden")
NO_NL = "\\ no newline at end\n"

# The scratch tree every case runs in (a junk file named .onnx is probed as ONNX by its name,
# .pth as a checkpoint; each fails to parse with a fixed message).
TREE = {
    "in/bad.onnx": b"junk\n",
    "in/bad2.onnx": b"more junk, longer\n",
    "in/ckpt.pth": b"not a zip\n",
    "in/ckpts/c.pth": b"not a zip\n",
    "in/tree/a.onnx": b"junk\n",
    "in/tree/sub/b.onnx": b"more junk, longer\n",
    "in/notes/readme.txt": b"no model here\n",
    "existing/keep.txt": b"an existing output folder\n",
}
EMPTY_DIRS = ["in/empty"]

B = "in/bad.onnx"
CASES = [
    # ---- help: each command's usage only, exit 0 ----
    ("help-top", ["--help"]),
    ("help-top-short", ["-h"]),
    ("help", ["help"]),
    ("help-convert", ["help", "convert"]),
    ("help-report-merge", ["help", "report", "merge"]),
    ("help-unknown", ["help", "bogus"]),
    ("convert-help", ["convert", "--help"]),
    ("inspect-help", ["inspect", "--help"]),
    ("diff-help", ["diff", "--help"]),
    ("report-help", ["report", "--help"]),
    ("report-merge-help", ["report", "merge", "--help"]),
    ("report-html-help", ["report", "html", "--help"]),
    ("version", ["--version"]),
    # ---- commands ----
    ("no-command", []),
    ("unknown-option", ["--bogus"]),
    ("unknown-command", ["bogus"]),
    ("report-no-command", ["report"]),
    ("report-unknown-command", ["report", "bogus"]),
    ("report-merge-no-report", ["report", "merge", "-o", "merged.jsonl"]),
    ("report-merge-unknown-option", ["report", "merge", "--bogus", "in/r.jsonl"]),
    ("report-merge-o-without-file", ["report", "merge", "in/r.jsonl", "-o"]),
    ("report-html-no-report", ["report", "html", "-o", "page.html"]),
    ("report-html-no-output", ["report", "html", "in/r.jsonl"]),
    ("report-html-bad-report", ["report", "html", "in/bad.onnx", "-o", "page.html"]),
    ("inspect-html-and-json", ["inspect", "--html", "page.html", "--json", B]),
    ("inspect-html-two-files", ["inspect", "--html", "page.html", B, "in/bad2.onnx"]),
    ("inspect-no-savings-without-html", ["inspect", "--no-savings", B]),
    ("inspect-html-bad-file", ["inspect", "--html", "page.html", B]),
    # ---- issue 18, item 1: nothing at -o until a model succeeds ----
    ("convert-bad-file", ["convert", B, "-o", "out.onnx"]),
    ("convert-missing-file", ["convert", "in/missing.onnx", "-o", "out.onnx"]),
    ("convert-bad-file-new-folders", ["convert", B, "-o", "new/sub/out.onnx"]),
    ("convert-batch-all-fail", ["convert", "-q", "-j", "1", B, "in/bad2.onnx", "-o", "outdir"]),
    ("convert-tree-all-fail", ["convert", "-q", "-j", "1", "in/tree", "-o", "outdir"]),
    ("convert-tree-all-fail-existing", ["convert", "-q", "-j", "1", "in/tree", "-o", "existing"]),
    ("convert-missing-inputs", ["convert", "in/missing.onnx", "in/missing2.onnx", "-o", "outdir"]),
    # ---- item 2: no silent no-ops ----
    ("convert-no-models", ["convert", "in/empty", "-o", "outdir"]),
    ("convert-no-models-other-files", ["convert", "--copy-others", "in/notes", "-o", "outdir"]),
    ("block-op-unknown", ["convert", "--fp16", "--block-op", "NotAnOp", B, "-o", "out.onnx"]),
    ("block-op-case", ["convert", "--bf16", "--block-op", "MatMul,layernormalization", B, "-o",
                       "out.onnx"]),
    ("block-op-custom-domain", ["convert", "--fp16", "--block-op", "FusedMatMul", B, "-o",
                                "out.onnx"]),
    ("block-op-without-float", ["convert", "--block-op", "MatMul", B, "-o", "out.onnx"]),
    ("block-node-without-float", ["convert", "--block-node", "n1", B, "-o", "out.onnx"]),
    ("block-op-storage-only", ["convert", "--fp16", "--storage-only", "--block-op", "MatMul", B,
                               "-o", "out.onnx"]),
    ("fp16-min-without-fp16", ["convert", "--fp16-min", "1e-7", B, "-o", "out.onnx"]),
    ("fp16-max-without-fp16", ["convert", "--fp16-max", "1e4", B, "-o", "out.onnx"]),
    ("fp16-max-with-bf16", ["convert", "--bf16", "--fp16-max", "1e4", B, "-o", "out.onnx"]),
    ("keep-io-types-without-float", ["convert", "--keep-io-types", B, "-o", "out.onnx"]),
    ("no-keep-io-types-without-float", ["convert", "--no-keep-io-types", B, "-o", "out.onnx"]),
    ("no-keep-io-types-storage-only", ["convert", "--bf16", "--storage-only",
                                       "--no-keep-io-types", B, "-o", "out.onnx"]),
    ("int8-gather-without-int8", ["convert", "--int8-gather", B, "-o", "out.onnx"]),
    ("int4-block-without-int4", ["convert", "--int4-block", "64", B, "-o", "out.onnx"]),
    ("int4-format-without-int4", ["convert", "--int4-format", "matmulnbits", B, "-o",
                                  "out.onnx"]),
    ("int4-search-without-int4", ["convert", "--int4-search", B, "-o", "out.onnx"]),
    ("int4-and-int8", ["convert", "--int4", "--int8", B, "-o", "out.onnx"]),
    ("bad-int4-block", ["convert", "--int4", "--int4-block", "48", B, "-o", "out.onnx"]),
    ("bad-int4-format", ["convert", "--int4", "--int4-format", "gguf", B, "-o", "out.onnx"]),
    ("int8-min-elements-without-int8", ["convert", "--int8-min-elements", "1", B, "-o",
                                        "out.onnx"]),
    ("keep-inputs-without-outputs", ["convert", "--keep-inputs", B, "-o", "out.onnx"]),
    ("dedup-graph-inputs-no-dedup", ["convert", "--no-dedup", "--dedup-graph-inputs", B, "-o",
                                     "out.onnx"]),
    ("shard-and-shard-count", ["convert", "--shard", "0/2", "--shard-count", "2", "in/tree", "-o",
                               "outdir"]),
    ("copy-others-without-folder", ["convert", "--copy-others", B, "-o", "out.onnx"]),
    ("diff-all-json", ["diff", "--all", "--json", B, "in/bad2.onnx"]),
    # ---- the other usage errors ----
    ("convert-missing-output", ["convert", B]),
    ("convert-no-input", ["convert", "-o", "out.onnx"]),
    ("convert-unknown-option", ["convert", "--bogus", B, "-o", "out.onnx"]),
    ("convert-unknown-short-option", ["convert", "-qx", B, "-o", "out.onnx"]),
    ("convert-ambiguous-option", ["convert", "--keep", B, "-o", "out.onnx"]),
    ("convert-o-without-path", ["convert", B, "-o"]),
    ("convert-flag-with-value", ["convert", "--fp16=yes", B, "-o", "out.onnx"]),
    ("fp16-and-bf16", ["convert", "--fp16", "--bf16", B, "-o", "out.onnx"]),
    ("fp16-clamp-without-fp16", ["convert", "--bf16", "--fp16-clamp", B, "-o", "out.onnx"]),
    ("keep-fp32-without-float", ["convert", "--keep-fp32", "*.bias", B, "-o", "out.onnx"]),
    ("storage-only-without-float", ["convert", "--storage-only", B, "-o", "out.onnx"]),
    ("allow-larger-without-float", ["convert", "--allow-larger", B, "-o", "out.onnx"]),
    ("fp16-min-above-max", ["convert", "--fp16", "--fp16-min", "2", "--fp16-max", "1", B, "-o",
                            "out.onnx"]),
    ("bad-fp16-bound", ["convert", "--fp16", "--fp16-max", "-1", B, "-o", "out.onnx"]),
    ("keep-and-drop-outputs", ["convert", "--keep-outputs", "y", "--drop-outputs", "z", B, "-o",
                               "out.onnx"]),
    ("resume-without-report", ["convert", "--resume", "in/tree", "-o", "outdir"]),
    ("bad-jobs", ["convert", "-j", "0", "in/tree", "-o", "outdir"]),
    ("bad-shard", ["convert", "--shard", "2/2", "in/tree", "-o", "outdir"]),
    ("bad-shard-count", ["convert", "--shard-count", "x", "in/tree", "-o", "outdir"]),
    ("shard-count-without-index", ["convert", "--shard-count", "2", "in/tree", "-o", "outdir"]),
    ("bad-device", ["convert", "--device", "tpu", B, "-o", "out.onnx"]),
    ("bad-staging-mib", ["convert", "--staging-mib", "0", B, "-o", "out.onnx"]),
    ("bad-format", ["convert", "--format", "gguf", "in/ckpt.pth", "-o", "out.safetensors"]),
    ("bad-max-shard-size", ["convert", "--max-shard-size", "5XB", "in/tree", "-o", "outdir"]),
    ("bad-int8-min-elements", ["convert", "--int8", "--int8-min-elements", "0", B, "-o",
                               "out.onnx"]),
    ("output-is-input", ["convert", B, "-o", B]),
    ("output-folder-is-input", ["convert", "in/tree", "-o", "in/tree"]),
    ("output-not-a-folder", ["convert", B, "in/bad2.onnx", "-o", "in/notes/readme.txt"]),
    ("option-not-for-format", ["convert", "--key", "model", B, "-o", "out.onnx"]),
    ("option-for-no-model", ["convert", "--int8", "in/ckpts", "-o", "outdir"]),
    ("output-extension", ["convert", B, "-o", "out.safetensors"]),
    ("inspect-no-file", ["inspect"]),
    ("inspect-unknown-option", ["inspect", "--bogus", B]),
    ("diff-one-file", ["diff", B]),
    ("diff-unknown-option", ["diff", "--bogus", B, "in/bad2.onnx"]),
]


def encode(text):
    return text + "\n" + NO_NL if text and not text.endswith("\n") else text


def decode(text):
    return text[:-len("\n" + NO_NL)] if text.endswith("\n" + NO_NL) else text


def render(argv, rc, out, err):
    return "command: %s\nexit: %d\n--- stdout\n%s--- stderr\n%s" % (
        shlex.join(["modelshrink"] + argv), rc, encode(out), encode(err))


def parse(text):
    """(command line, exit code, stdout, stderr) of a golden file, or None when malformed."""
    m = re.match(r"command: (.*)\nexit: (-?\d+)\n--- stdout\n", text)
    if not m:
        return None
    body = text[m.end():]
    k = 0 if body.startswith("--- stderr\n") else body.find("\n--- stderr\n") + 1
    if k < 0 or not body.startswith("--- stderr\n", k):
        return None
    return m.group(1), int(m.group(2)), decode(body[:k]), decode(body[k + len("--- stderr\n"):])


def make_tree(root):
    for rel, data in TREE.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    for rel in EMPTY_DIRS:
        os.makedirs(os.path.join(root, rel), exist_ok=True)


def runner(binary, root):
    """Run modelshrink in `root`, with no shard from the environment and C's messages."""
    for k in [k for k in os.environ if k.startswith("SLURM_") or k == "JOB_COMPLETION_INDEX"]:
        del os.environ[k]
    os.environ["LC_ALL"] = "C"  # strerror's words
    return lambda argv: C.run(binary, *argv, cwd=root)


def normalize(text, root):
    text = text.replace(root, "{W}")
    return re.sub(r"CUDA devices: \d+", "CUDA devices: N", text)


def golden_cases(F, run, root, update):
    names = [n for n, _ in CASES]
    F.check(len(names) == len(set(names)), "case names are unique",
            str(sorted(n for n in names if names.count(n) > 1)))
    os.makedirs(GOLDEN, exist_ok=True)
    wrote = 0
    for name, argv in CASES:
        before = C.tree_state(root)
        r = run(argv)
        got = render(argv, r.rc, normalize(r.out, root), normalize(r.err, root))
        path = os.path.join(GOLDEN, name + ".txt")
        after = C.tree_state(root)
        made = sorted(set(after) - set(before))
        changed = sorted(k for k in before if after.get(k) != before[k])
        F.check(not made and not changed, "%s: nothing created or changed on disk" % name,
                "created: %s; changed or removed: %s" % (made, changed))
        if update:
            old = open(path).read() if os.path.exists(path) else None
            if old != got:
                with open(path, "w") as f:
                    f.write(got)
                wrote += 1
            continue
        if not F.check(os.path.exists(path), "%s: golden file %s exists (run with --update)"
                       % (name, os.path.relpath(path, os.path.dirname(GOLDEN)))):
            continue
        want = parse(open(path).read())
        if not F.check(want is not None, "%s: golden file is well formed" % name, path):
            continue
        cmd, rc, out, err = want
        F.check(cmd == shlex.join(["modelshrink"] + argv),
                "%s: golden file's command is the case's (run with --update)" % name,
                "file: %s\ncase: %s" % (cmd, shlex.join(["modelshrink"] + argv)))
        F.check(r.rc == rc, "%s: exit code %d" % (name, rc), r.describe())
        F.check(normalize(r.out, root) == out, "%s: stdout as in the golden file" % name,
                "want:\n%s\ngot:\n%s" % (out, normalize(r.out, root)))
        F.check(normalize(r.err, root) == err, "%s: stderr as in the golden file" % name,
                "want:\n%s\ngot:\n%s" % (err, normalize(r.err, root)))
    stale = sorted(f[:-4] for f in os.listdir(GOLDEN)
                   if f.endswith(".txt") and f[:-4] not in set(names))
    if update:
        for s in stale:
            os.remove(os.path.join(GOLDEN, s + ".txt"))
        print("--update: %d golden files written, %d stale ones removed" % (wrote, len(stale)))
    else:
        F.check(not stale, "every golden file has a case (run with --update)", str(stale))


def output_folders(F, run, root):
    """What is created at -o when models succeed (needs a valid model: the onnx package)."""
    try:
        G = C.gen_models()
        import onnx
    except ImportError as e:
        print("NOTE: the onnx package is missing (%s): the checks with a valid model are not run"
              % e)
        return
    good = os.path.join(root, "good", "mlp.onnx")
    os.makedirs(os.path.dirname(good))
    onnx.save(G.make_mlp_dup(seed=1, width=16), good)
    w = os.path.join(root, "w")
    os.makedirs(w)

    def at(*p):
        return os.path.join(w, *p)

    # the report: a failed run, then a good one to the same -o
    r = run(["convert", os.path.join(root, B), "-o", at("out.onnx")])
    F.check(r.rc == 1 and not os.path.lexists(at("out.onnx")), "bad.onnx -o out.onnx: exit 1, "
            "nothing at out.onnx", r.describe())
    r = run(["convert", "in/missing.onnx", "-o", at("out.onnx")])
    F.check(r.rc == 1 and not os.path.lexists(at("out.onnx")), "missing.onnx -o out.onnx: exit "
            "1, nothing at out.onnx", r.describe())
    r = run(["convert", good, "-o", at("out.onnx")])
    F.check(r.rc == 0 and os.path.isfile(at("out.onnx")), "then good.onnx -o out.onnx writes the "
            "file out.onnx (not out.onnx/mlp.onnx)", r.describe())
    # one input file, -o an existing folder: written into it, as cp does
    os.makedirs(at("models"))
    with open(at("models", "keep.txt"), "w") as f:
        f.write("mine\n")
    r = run(["convert", good, "-o", at("models")])
    F.check(r.rc == 0 and os.path.isfile(at("models", "mlp.onnx")) and
            open(at("models", "keep.txt")).read() == "mine\n",
            "one file -o an existing folder writes <folder>/<input name> and leaves the rest",
            r.describe())
    r = run(["convert", good, "-o", at("made") + "/"])
    F.check(r.rc == 0 and os.path.isfile(at("made", "mlp.onnx")),
            "one file -o a new folder ending in '/' makes it and writes <folder>/<input name>",
            r.describe())
    # folders above one output file: made when it succeeds, not when it fails
    r = run(["convert", good, "-o", at("new", "sub", "x.onnx")])
    F.check(r.rc == 0 and os.path.isfile(at("new", "sub", "x.onnx")),
            "good.onnx -o new/sub/x.onnx makes the folders", r.describe())
    # a batch with a bad and a good model: only the good one's folders
    tree = os.path.join(root, "mixed")
    os.makedirs(os.path.join(tree, "ok"))
    os.makedirs(os.path.join(tree, "broken", "deeper"))
    onnx.save(G.make_mlp_dup(seed=1, width=16), os.path.join(tree, "ok", "m.onnx"))
    with open(os.path.join(tree, "broken", "deeper", "b.onnx"), "wb") as f:
        f.write(b"junk\n")
    r = run(["convert", "-q", tree, "-o", at("mixed_out")])
    got = sorted(os.path.relpath(os.path.join(d, n), at("mixed_out"))
                 for d, ds, fs in os.walk(at("mixed_out")) for n in ds + fs)
    F.check(r.rc == 1 and got == ["ok", os.path.join("ok", "m.onnx")],
            "mixed batch: exit 1; the output has the good model and no folder for the bad one",
            "%s\ntree: %s" % (r.describe(), got))
    # a batch of bad models with its report in the output folder: the folder holds the report
    r = run(["convert", "-q", "in/tree", "-o", at("rep_out"), "--report",
             at("rep_out", "r.jsonl")])
    F.check(r.rc == 1 and os.listdir(at("rep_out")) == ["r.jsonl"],
            "all-fail batch with --report inside -o: only the report is there", r.describe())


def report_merge(F, binary, root):
    """report merge still merges, after its options are parsed by the table's parser; a report
    named like an option ('--' before it) is read as a report."""
    w = os.path.join(root, "merge")
    os.makedirs(w)
    with open(os.path.join(w, "-r.jsonl"), "w") as f:
        f.write('{"type":"model","rel":"a.onnx","status":"ok","bytes_in":10,"bytes_out":5}\n')
        f.write('{"type":"summary","models":1,"ok":1,"failed":0,"resumed":0,"not_models":0}\n')
    r = C.run(binary, "report", "merge", "-o", "merged.jsonl", "--", "-r.jsonl", cwd=w)
    lines = open(os.path.join(w, "merged.jsonl")).read().splitlines() \
        if os.path.exists(os.path.join(w, "merged.jsonl")) else []
    F.check(r.rc == 0 and len(lines) == 2 and '"rel":"a.onnx"' in lines[0] and
            '"merged":true' in lines[1], "report merge -o OUT -- -r.jsonl merges the report",
            "%s\n%s" % (r.describe(), lines))


def main():
    args = C.parse_args(__doc__, lambda ap: ap.add_argument(
        "--update", action="store_true", help="rewrite tests/golden/ from the binary"))
    F = C.Failures()
    root = os.path.join(args.work, "t")
    os.makedirs(root)
    make_tree(root)
    run = runner(args.bin, root)
    golden_cases(F, run, root, args.update)
    output_folders(F, run, root)
    report_merge(F, args.bin, root)
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
