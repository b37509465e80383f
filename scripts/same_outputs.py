#!/usr/bin/env python3
"""Show that two modelshrink builds write the same bytes for the same zoo and options.

    scripts/same_outputs.py [--old-rev REV | --old-bin PATH] [--new-bin PATH] [--work DIR]
                            [--large N] [--keep]

The zoo is the batch tests' zoo (tests/fixtures/make_zoo300.py: all of libonnx-testdata, ALBERT-
shaped models inline and with external data, small generated models, the checkpoint fixtures and
a safetensors file) plus every good checkpoint fixture of tests/fixtures/pth. Each option set
below converts the part of the zoo it applies to with both builds (one batch each, --jobs 2), and
every output file is compared byte for byte. The script prints one line per option set and exits
1 when any file differs, is missing on one side, or when one build fails where the other does
not.

--old-rev builds that git revision (a worktree in WORK/old-src, CUDA off, no tests); --old-bin
takes a binary as it is. The new binary defaults to build/modelshrink. The zoo and the outputs
stay in WORK (default: bench-work/same-outputs) with --keep.

Outputs that change on purpose are listed in EXPECTED_CHANGES with the reason, so a reader sees
every difference that is accepted and why.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
PTH_EXTRA = ("ema.pth", "exotic_meta.pth", "proto4.pth")

# (name, subfolders of the zoo it converts, extra options)
ONNX_PARTS = ("testdata", "gen")
CKPT_PARTS = ("ckpt",)
OPTION_SETS = [
    ("default", ONNX_PARTS + CKPT_PARTS, []),
    ("no-dedup", ONNX_PARTS, ["--no-dedup"]),
    ("external-data", ONNX_PARTS, ["--external-data"]),
    ("fp16", ONNX_PARTS + CKPT_PARTS, ["--fp16"]),
    ("bf16", ONNX_PARTS + CKPT_PARTS, ["--bf16"]),
    ("int8", ONNX_PARTS, ["--int8"]),
    ("fp16+int8", ONNX_PARTS, ["--fp16", "--int8", "--int8-gather"]),
    ("bf16+int8 no-keep-io", ONNX_PARTS, ["--bf16", "--int8", "--no-keep-io-types"]),
    ("pth", CKPT_PARTS, ["--format", "pth"]),
    ("pth fp16", CKPT_PARTS, ["--format", "pth", "--fp16"]),
]

# {(option set, output rel): why the bytes may differ}. Everything else must be identical.
_DEDUP = ("a .pth output stores tensors with identical bytes once, in one storage they all view "
          "(issue 14); tensor values are unchanged")
_ST_PTH = ("--format pth now applies to safetensors inputs: head.safetensors is written as a "
           "weights-only head.pth (it used to be ignored)")
EXPECTED_CHANGES = {}
for _set in ("pth", "pth fp16"):
    for _f in ("ema.pth", "proto4.pth", "resnet_adam.pth"):
        EXPECTED_CHANGES[(_set, _f)] = _DEDUP
    EXPECTED_CHANGES[(_set, "st/head.safetensors")] = _ST_PTH
    EXPECTED_CHANGES[(_set, "st/head.pth")] = _ST_PTH


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def tree(folder):
    out = {}
    for dp, _, fs in os.walk(folder):
        for f in fs:
            p = os.path.join(dp, f)
            out[os.path.relpath(p, folder)] = sha256(p)
    return out


def build_old(rev, work):
    src = os.path.join(work, "old-src")
    subprocess.run(["git", "-C", ROOT, "worktree", "prune"], check=True)
    shutil.rmtree(src, ignore_errors=True)
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "-f", "--detach", src, rev],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        bld = os.path.join(src, "build")
        subprocess.run(["cmake", "-S", src, "-B", bld, "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                        "-DMSH_CUDA=OFF", "-DMSH_BUILD_TESTS=OFF"], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", bld, "-j", str(os.cpu_count() or 2), "--target",
                        "modelshrink"], check=True, stdout=subprocess.DEVNULL)
        dst = os.path.join(work, "modelshrink-old")
        shutil.copyfile(os.path.join(bld, "modelshrink"), dst)
        os.chmod(dst, 0o755)
    finally:
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", src])
    return dst


def run(binary, inputs, out, opts):
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    cmd = [binary, "convert", "-q", "--jobs", "2"] + opts + inputs + ["-o", out]
    return subprocess.run(cmd, capture_output=True, text=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--old-rev", help="git revision to build and compare against")
    g.add_argument("--old-bin", help="an old modelshrink binary")
    ap.add_argument("--new-bin", default=os.path.join(ROOT, "build", "modelshrink"))
    ap.add_argument("--work", default=os.path.join(ROOT, "bench-work", "same-outputs"))
    ap.add_argument("--large", type=int, default=2, help="ALBERT-shaped models in the zoo")
    ap.add_argument("--keep", action="store_true", help="keep the outputs")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    old = a.old_bin or build_old(a.old_rev, a.work)

    sys.path.insert(0, FIXTURES)
    import make_zoo300 as Z
    zoo = os.path.join(a.work, "zoo")
    if os.path.exists(zoo):
        shutil.rmtree(zoo)
    man = Z.make_zoo300(zoo, large=a.large)
    for fx in PTH_EXTRA:
        shutil.copyfile(os.path.join(FIXTURES, "pth", fx), os.path.join(zoo, "ckpt", fx))
    print("zoo: %d models, %d bytes" % (len(man["models"]) + len(PTH_EXTRA), man["bytes"]))

    bad = 0
    for name, parts, opts in OPTION_SETS:
        inputs = [os.path.join(zoo, p) for p in parts]
        outs = {}
        for side, binary in (("old", old), ("new", a.new_bin)):
            out = os.path.join(a.work, "out-" + side)
            r = run(binary, inputs, out, opts)
            outs[side] = (r, tree(out))
        (ro, to), (rn, tn) = outs["old"], outs["new"]
        diffs = []
        if ro.returncode != rn.returncode:
            diffs.append("exit %d (old) vs %d (new)" % (ro.returncode, rn.returncode))
        expected = []
        for rel in sorted(set(to) | set(tn)):
            if to.get(rel) == tn.get(rel):
                continue
            why = EXPECTED_CHANGES.get((name, rel))
            if why:
                expected.append("%s (%s)" % (rel, why))
                continue
            if rel not in tn:
                diffs.append("%s: missing in the new output" % rel)
            elif rel not in to:
                diffs.append("%s: only in the new output" % rel)
            else:
                diffs.append("%s: bytes differ" % rel)
        status = "same" if not diffs else "DIFFERENT"
        print("%-22s %s: %d files%s" % (name, status, len(tn),
                                       ", %d expected changes" % len(expected) if expected
                                       else ""))
        for d in diffs[:20]:
            print("    " + d)
        if len(diffs) > 20:
            print("    ... %d more" % (len(diffs) - 20))
        for x in expected:
            print("    expected: " + x)
        if diffs:
            bad += 1
            for side, (r, _) in outs.items():
                if r.returncode:
                    print("    %s stderr: %s" % (side, r.stderr.strip()[:600]))
    if not a.keep:
        shutil.rmtree(os.path.join(a.work, "out-old"), ignore_errors=True)
        shutil.rmtree(os.path.join(a.work, "out-new"), ignore_errors=True)
    print("same_outputs: %s" % ("all option sets give the same bytes" if not bad
                                else "%d option sets differ" % bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
