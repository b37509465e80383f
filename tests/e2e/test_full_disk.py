#!/usr/bin/env python3
"""End-to-end: a full disk. Every kind of output (inline ONNX, ONNX with external data, a stripped
checkpoint as safetensors and as weights-only .pth, safetensors converted to FP16) is written
twice where it cannot fit: under a file-size limit (RLIMIT_FSIZE, as `ulimit -f` sets; writes get
EFBIG) and into a 128 KiB tmpfs (ENOSPC). Each time convert must exit 1 with one stderr line
naming the input and the cause, leave no output and no temporary file, and leave the input
unchanged; the same conversion without the limit must succeed, so the failure is the disk's.
A batch into the small tmpfs must convert what fits, fail the rest in its report, and leave no
temporary files. The tmpfs part needs mount rights (root); without them it is skipped with a
note and the file-size-limit part still runs."""

import json
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402
import st_common as S  # noqa: E402

NAME = "test_full_disk"
LIMIT = 64 * 1024
TMPFS_SIZE = 128 * 1024


def run_limited(argv, fsize=None):
    def pre():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=pre,
                       timeout=300)
    return C.Result(argv, p.returncode, p.stdout.decode("utf-8", "replace"),
                    p.stderr.decode("utf-8", "replace"))


def make_inputs(np, G, d):
    os.makedirs(d)
    paths = {}
    m = G.make_albert(layers=2, hidden=64, embed=32, ffn=128, vocab=500, heads=4, seed=7)
    paths["onnx"] = os.path.join(d, "albert.onnx")
    with open(paths["onnx"], "wb") as f:
        f.write(m.SerializeToString())
    paths["pth"] = os.path.join(C.FIXTURES, "pth", "resnet_adam.pth")
    rng = np.random.default_rng(3)
    t = {"w%d" % i: ("F32", [128, 256], rng.standard_normal((128, 256), dtype=np.float32)
                     .tobytes()) for i in range(3)}
    paths["st"] = os.path.join(d, "weights.safetensors")
    with open(paths["st"], "wb") as f:
        f.write(S.st_bytes(t))
    return paths


def cases(paths):
    """(label, input, output name, flags)"""
    return [("onnx inline", paths["onnx"], "out.onnx", ["--no-dedup"]),
            ("onnx external data", paths["onnx"], "out.onnx", ["--external-data"]),
            ("checkpoint -> safetensors", paths["pth"], "out.safetensors", []),
            ("checkpoint -> pth", paths["pth"], "out.pth", ["--format", "pth"]),
            ("safetensors fp16", paths["st"], "out.safetensors", ["--fp16"])]


def check_failure(F, what, r, inp, od, words, before):
    lines = [l for l in r.err.splitlines() if l.strip()]
    F.check(r.rc == 1, "%s: exit 1 (no signal)" % what, r.describe())
    F.check(len(lines) == 1 and inp in lines[0] and any(w in lines[0] for w in words),
            "%s: one stderr line naming the input and %s" % (what, " or ".join(words)),
            r.describe())
    left = sorted(os.listdir(od))
    F.check(not left, "%s: no output and no temporary file" % what, "found %s" % left)
    F.check(C.sha256(inp) == before, "%s: input unchanged" % what)


def try_mount(d):
    os.makedirs(d)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % TMPFS_SIZE, "tmpfs", d],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        print("note: cannot mount a tmpfs (%s); the tmpfs part is skipped"
              % p.stdout.decode(errors="replace").strip())
        return False
    return True


def main():
    np, _ = C.import_deps("numpy", "onnx")
    args = C.parse_args(__doc__)
    G = C.gen_models()
    F = C.Failures()
    paths = make_inputs(np, G, os.path.join(args.work, "in"))
    sums = {p: C.sha256(p) for p in paths.values()}

    for i, (label, inp, out_name, flags) in enumerate(cases(paths)):
        od = os.path.join(args.work, "ctrl%d" % i)
        os.makedirs(od)
        r = C.run(args.bin, "convert", inp, "-o", os.path.join(od, out_name), *flags)
        size = sum(os.path.getsize(os.path.join(od, n)) for n in os.listdir(od))  # + .data
        F.check(r.rc == 0 and size > TMPFS_SIZE,
                "%s: converts without a limit, to more than %d bytes" % (label, TMPFS_SIZE),
                r.describe() + "\nsize %d" % size)
        od = os.path.join(args.work, "fsize%d" % i)
        os.makedirs(od)
        r = run_limited([args.bin, "convert", inp, "-o", os.path.join(od, out_name)] + flags,
                        fsize=LIMIT)
        check_failure(F, "%s, file-size limit %d" % (label, LIMIT), r, inp, od,
                      ["File too large"], sums[inp])

    mnt = os.path.join(args.work, "tmpfs")
    if try_mount(mnt):
        try:
            for i, (label, inp, out_name, flags) in enumerate(cases(paths)):
                od = os.path.join(mnt, "case%d" % i)
                os.makedirs(od)
                r = C.run(args.bin, "convert", inp, "-o", os.path.join(od, out_name), *flags)
                check_failure(F, "%s, %d-byte tmpfs" % (label, TMPFS_SIZE), r, inp, od,
                              ["No space left on device"], sums[inp])
                os.rmdir(od)
            st = os.statvfs(mnt)
            F.check(st.f_bfree == st.f_blocks, "tmpfs: every block free again after the failures",
                    "%d of %d free" % (st.f_bfree, st.f_blocks))
            # batch: a small model that fits, two that do not
            src = os.path.join(args.work, "batch_in")
            os.makedirs(src)
            small = G.make_mlp_dup(width=32)
            with open(os.path.join(src, "small.onnx"), "wb") as f:
                f.write(small.SerializeToString())
            for k in range(2):
                with open(paths["onnx"], "rb") as fi, \
                        open(os.path.join(src, "big%d.onnx" % k), "wb") as fo:
                    fo.write(fi.read())
            bo = os.path.join(mnt, "batch")
            rep = os.path.join(args.work, "batch.jsonl")
            r = C.run(args.bin, "convert", src, "-o", bo, "--no-dedup", "--jobs", "1",
                      "--report", rep, "-q")
            F.check(r.rc == 1, "batch into the full tmpfs exits 1", r.describe())
            got = sorted(os.listdir(bo)) if os.path.isdir(bo) else []
            F.check(got == ["small.onnx"], "batch: only the model that fits is written, "
                    "no temporary file", "found %s" % got)
            with open(rep) as f:
                recs = {x["rel"]: x for x in map(json.loads, f) if x.get("type") == "model"}
            F.check(recs.get("small.onnx", {}).get("status") == "ok" and
                    all("No space left" in (recs.get("big%d.onnx" % k, {}).get("error") or "")
                        for k in range(2)),
                    "batch report: small ok, the big ones fail with 'No space left on device'",
                    json.dumps(recs)[:1500])
        finally:
            subprocess.run(["umount", mnt])
    for p, s in sums.items():
        F.check(C.sha256(p) == s, "input %s unchanged at the end" % os.path.basename(p))
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
