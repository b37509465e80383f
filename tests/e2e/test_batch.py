#!/usr/bin/env python3
"""End-to-end: batch mode over a zoo of more than 300 models (tests/fixtures/make_zoo300.py: every
libonnx-testdata model, two ~37 MB ALBERT-shaped models, one inline and one with external data,
small generated models, one with its external data in a subfolder, PyTorch checkpoints, a
safetensors file and three files that are not models).

- --jobs 1 and --jobs 2 give byte-identical output trees and equal exit codes (default dedup on
  the whole zoo, --fp16 on a subset given as three input folders, and a small zoo with two models
  that must fail: exit 1 both times, "error" records, no output for them).
- --report: one model record per model with the contract's fields and values (input size and
  mtime, output path and bytes, savings...), then one summary record whose counts and byte totals
  match the records; one plain line per model on stdout (not a terminal), nothing with -q.
- files that are not models: noted once each on stderr (`skipped (not a model)`); with
  --copy-others copied byte for byte, and no converted model's file is overwritten by a copy.
- SIGKILL at several points (a fraction of an uninterrupted run's wall time, and after a share of
  the records), also a killed resume, then --resume: the output tree equals the uninterrupted
  run's byte for byte, no `*msh-tmp*` file is left, and "resumed" equals the models the killed
  runs reported ok.
- SIGINT / SIGTERM mid-run: exit 130 / 143, no temporary file left, the report ends with a
  summary with "interrupted": true; --resume then completes the tree.
- --shard K/3 (K = 0, 1, 2) into one output folder: the shards cover every model exactly once,
  each shard is FNV-1a 64 of "rel" mod 3, the tree equals a full run's; `report merge` gives one
  record per model and totals equal to the shards' sums (also with a cut last line, and exit 1
  for a report with an error); SLURM_ARRAY_TASK_ID/COUNT and JOB_COMPLETION_INDEX +
  --shard-count select the same sets; bad --shard values are usage errors (exit 2).
- --resume after a full run skips every model (resumed == models) and rewrites nothing (output
  mtimes unchanged), appends to the report; an input with a new mtime and a deleted output are
  converted again; stale temporary files of dead processes on this host are removed, those of a
  live process or of another host are left alone. Without --resume the report is replaced.

Data folder: $MSH_ONNX_TESTDATA or /usr/share/libonnx-testdata/data (skip when missing)."""

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_batch"
DATA = os.environ.get("MSH_ONNX_TESTDATA", "/usr/share/libonnx-testdata/data")
MODEL_FIELDS = {"type", "input", "rel", "output", "format", "status", "error", "bytes_in",
                "bytes_out", "ratio", "seconds", "device", "savings", "not_applied",
                "input_size", "input_mtime_ns", "options", "options_hash"}
SUMMARY_FIELDS = {"type", "models", "ok", "converted", "failed", "resumed", "reconverted_options",
                  "not_models", "bytes_in", "bytes_out", "seconds", "jobs", "shard",
                  "interrupted"}
SAVINGS = {"dedup", "strip", "float", "int8", "prune"}
LINE_RE = C.CONVERT_LINE_RE
SKIP_RE = re.compile(r"^modelshrink: (.+): skipped \(not a model\)$")
NEGATIVE_SAVINGS = set()  # reported as a note: a stage that grew the file (tied weights)
SHARD_ENV = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
             "SLURM_ARRAY_TASK_MAX", "JOB_COMPLETION_INDEX")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in SHARD_ENV}
    env.update(extra or {})
    return env


class Batch:
    def __init__(self, binary):
        self.bin = binary

    def run(self, *args, env=None, timeout=900):
        argv = [self.bin] + [str(a) for a in args]
        t0 = time.perf_counter()
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=clean_env(env), timeout=timeout)
        r = C.Result(argv, p.returncode, p.stdout.decode("utf-8", "replace"),
                     p.stderr.decode("utf-8", "replace"))
        r.wall = time.perf_counter() - t0
        return r

    def interrupted(self, args, sig, trigger, report=None, timeout=900):
        """Start ``args``, send ``sig`` when ``trigger`` fires, return (Result, fired, when).
        ``trigger``: ("time", seconds) or ("records", n) (n model records in ``report``)."""
        argv = [self.bin] + [str(a) for a in args]
        errf = open(os.devnull, "wb")
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errf, env=clean_env())
        fired, when = False, None
        kind, val = trigger
        while p.poll() is None:
            now = time.perf_counter() - t0
            if now > timeout:
                break
            if kind == "time":
                hit = now >= val
            else:
                hit = count_model_lines(report) >= val
            if hit:
                try:
                    p.send_signal(sig)
                    fired, when = True, now
                except ProcessLookupError:
                    pass
                break
            time.sleep(0.0005 if kind == "time" else 0.001)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        errf.close()
        r = C.Result(argv, rc, "", "")
        r.wall = time.perf_counter() - t0
        return r, fired, when


MODEL_TYPE_RE = re.compile(rb'"type"\s*:\s*"model"')


def count_model_lines(path):
    try:
        with open(path, "rb") as f:
            return len(MODEL_TYPE_RE.findall(f.read()))
    except FileNotFoundError:
        return 0


def read_report(path):
    """(list of parsed records, number of unparsable lines, raw lines)."""
    recs, bad, raw = [], 0, []
    if not os.path.exists(path):
        return recs, bad, raw
    with open(path, "rb") as f:
        data = f.read().decode("utf-8", "replace")
    for line in data.splitlines():
        raw.append(line)
        if not line.strip():
            continue
        try:
            recs.append(json.loads(line))
        except ValueError:
            bad += 1
    return recs, bad, raw


def split_report(recs):
    models = [r for r in recs if isinstance(r, dict) and r.get("type") == "model"]
    sums = [r for r in recs if isinstance(r, dict) and r.get("type") == "summary"]
    return models, sums


def last_summary(recs):
    if recs and isinstance(recs[-1], dict) and recs[-1].get("type") == "summary":
        return recs[-1]
    return None


def tmp_files(folder):
    out = []
    for root, dirs, files in os.walk(folder):
        for n in dirs + files:
            if "msh-tmp" in n:
                out.append(os.path.relpath(os.path.join(root, n), folder))
    return sorted(out)


def mtimes(folder):
    st = {}
    for root, _, files in os.walk(folder):
        for n in files:
            p = os.path.join(root, n)
            s = os.stat(p)
            st[os.path.relpath(p, folder)] = (s.st_mtime_ns, s.st_ino)
    return st


def fnv1a64(s):
    h = 0xcbf29ce484222325
    for b in s.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def tree_diff(a, b, limit=8):
    lines = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            lines.append("%s: %s" % (k, "only in the first" if k not in b else
                                     "only in the second" if k not in a else "differs"))
            if len(lines) >= limit:
                lines.append("...")
                break
    return "\n".join(lines)


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_model_record(F, rec, zoo, out, man, what):
    """All of one model record's fields against the files. Returns a list of problems."""
    probs = []
    keys = set(rec)
    if keys != MODEL_FIELDS:
        probs.append("fields: missing %s, extra %s" % (sorted(MODEL_FIELDS - keys),
                                                        sorted(keys - MODEL_FIELDS)))
    rel = rec.get("rel")
    if rel not in man["outputs"]:
        return probs + ["rel %r is not a model of the zoo" % rel]
    src = os.path.join(zoo, rel)
    if os.path.normpath(str(rec.get("input"))) != os.path.normpath(src):
        probs.append("input %r, expected %r" % (rec.get("input"), src))
    want_out = os.path.normpath(os.path.join(out, man["outputs"][rel]))
    if os.path.normpath(str(rec.get("output"))) != want_out:
        probs.append("output %r, expected %r" % (rec.get("output"), want_out))
    ext = os.path.splitext(rel)[1]
    fmt = rec.get("format")
    if fmt not in ("onnx", "pth", "safetensors") or (ext == ".onnx" and fmt != "onnx") or \
            (ext == ".safetensors" and fmt != "safetensors") or (ext == ".pth" and fmt == "onnx"):
        probs.append("format %r for a %s file%s" % (
            fmt, ext, " (status error)" if rec.get("status") == "error" else ""))
    if rec.get("not_applied") != []:
        probs.append("not_applied %r, no option was given that the format refuses"
                     % rec.get("not_applied"))
    st = os.stat(src)
    if rec.get("input_size") != st.st_size:
        probs.append("input_size %r, file has %d" % (rec.get("input_size"), st.st_size))
    if rec.get("input_mtime_ns") != st.st_mtime_ns:
        probs.append("input_mtime_ns %r, file has %d" % (rec.get("input_mtime_ns"),
                                                         st.st_mtime_ns))
    if rec.get("status") == "ok":
        if rec.get("error") is not None:
            probs.append("status ok with error %r" % rec.get("error"))
        if not os.path.isfile(want_out):
            probs.append("status ok but no output file")
        else:
            ob = os.path.getsize(want_out) + (os.path.getsize(want_out + ".data")
                                              if os.path.exists(want_out + ".data") else 0)
            if rec.get("bytes_out") != ob:
                probs.append("bytes_out %r, output files have %d" % (rec.get("bytes_out"), ob))
        exts = man["ext_of"].get(rel, [])
        want_in = st.st_size + sum(os.path.getsize(os.path.join(zoo, e)) for e in exts)
        if rec.get("bytes_in") != want_in:
            probs.append("bytes_in %r, input%s %d" % (
                rec.get("bytes_in"), " + its external data have" if exts else " has", want_in))
        bi, bo, ra = rec.get("bytes_in"), rec.get("bytes_out"), rec.get("ratio")
        if is_int(bi) and is_int(bo) and bo > 0 and is_num(ra) and \
                abs(ra - bi / bo) > max(0.006, 0.001 * bi / bo):
            probs.append("ratio %r, bytes_in/bytes_out is %.4f" % (ra, bi / bo))
    elif rec.get("status") == "error":
        e = rec.get("error")
        if not (isinstance(e, str) and e.strip() and "\n" not in e):
            probs.append("status error without a one-line error: %r" % (e,))
        if os.path.exists(want_out):
            probs.append("status error but an output exists")
    else:
        probs.append("status %r" % rec.get("status"))
    for k in ("bytes_in", "bytes_out", "input_size", "input_mtime_ns"):
        if not is_int(rec.get(k)) or rec.get(k) < 0:
            probs.append("%s is %r, not an int >= 0" % (k, rec.get(k)))
    for k in ("ratio", "seconds"):
        if not is_num(rec.get(k)) or rec.get(k) < 0:
            probs.append("%s is %r, not a number >= 0" % (k, rec.get(k)))
    if rec.get("device") not in ("cpu", "cuda"):
        probs.append("device %r" % rec.get("device"))
    sv = rec.get("savings")
    if not isinstance(sv, dict) or set(sv) != SAVINGS or not all(is_int(v) for v in sv.values()):
        probs.append("savings %r, expected ints for %s" % (sv, sorted(SAVINGS)))
    elif any(v < 0 for v in sv.values()):
        NEGATIVE_SAVINGS.add("%s %s" % (rel, json.dumps(sv, sort_keys=True)))
    return probs


def check_report(F, path, zoo, out, man, what, jobs, shard=None, expect_rels=None,
                 expect_fail=(), n_others=None):
    """A complete (not resumed, not interrupted) run's report. Returns (records, summary)."""
    recs, bad, _ = read_report(path)
    models, sums = split_report(recs)
    F.check(bad == 0, "%s: every report line is JSON" % what, "%d unparsable lines" % bad)
    want = sorted(expect_rels if expect_rels is not None else man["models"])
    rels = [m.get("rel") for m in models]
    F.check(sorted(rels) == want, "%s: one model record per model (by rel)" % what,
            "%d records for %d models; missing %s; extra or repeated %s" % (
                len(rels), len(want), sorted(set(want) - set(rels))[:5],
                sorted(r for r in set(rels) if rels.count(r) > 1 or r not in want)[:5]))
    probs = []
    for m in models:
        for p in check_model_record(F, m, zoo, out, man, what):
            probs.append("%s: %s" % (m.get("rel"), p))
    F.check(not probs, "%s: model records carry the contract's fields, matching the files" % what,
            "\n".join(probs[:12]) + ("\n... %d more" % (len(probs) - 12) if len(probs) > 12
                                      else ""))
    bad_status = [m.get("rel") for m in models
                  if (m.get("status") == "error") != (m.get("rel") in expect_fail)]
    F.check(not bad_status, "%s: status error exactly for the models that must fail" % what,
            "unexpected status for %s" % bad_status[:8])
    s = last_summary(recs)
    F.check(s is not None and len(sums) == 1,
            "%s: the report ends with its one summary record" % what,
            "%d summary records; last line: %r" % (len(sums), recs[-1] if recs else None))
    if s is None:
        return recs, None
    F.check(set(s) >= SUMMARY_FIELDS, "%s: summary has the contract's fields" % what,
            "missing %s" % sorted(SUMMARY_FIELDS - set(s)))
    nok = sum(1 for m in models if m.get("status") == "ok")
    nfail = sum(1 for m in models if m.get("status") == "error")
    exp = {"models": len(want), "ok": nok, "converted": nok, "failed": nfail, "resumed": 0,
           "reconverted_options": 0,
           "bytes_in": sum(m.get("bytes_in") or 0 for m in models),
           "bytes_out": sum(m.get("bytes_out") or 0 for m in models if m.get("status") == "ok"),
           "jobs": jobs, "shard": shard, "interrupted": False}
    if n_others is not None:
        exp["not_models"] = n_others
    got = {k: s.get(k) for k in exp}
    if got["bytes_out"] != exp["bytes_out"] and nfail:
        # bytes_out of failed records may be 0 or omitted from the total either way
        exp["bytes_out"] = sum(m.get("bytes_out") or 0 for m in models)
    F.check(got == exp, "%s: summary counts and totals match the records" % what,
            "summary %s\nexpected %s" % (json.dumps(got), json.dumps(exp)))
    F.check(is_num(s.get("seconds")) and s["seconds"] > 0, "%s: summary seconds > 0" % what,
            repr(s.get("seconds")))
    return recs, s


# ---------------------------------------------------------------------------------------------
# the test
# ---------------------------------------------------------------------------------------------

def main():
    C.import_deps("numpy", "onnx")
    args = C.parse_args(__doc__)
    if not os.path.isdir(DATA):
        C.skip("ONNX test data folder %s is missing (Debian package libonnx-testdata)" % DATA)
    sys.path.insert(0, C.FIXTURES)
    import make_zoo300 as Z
    F = C.Failures()
    B = Batch(args.bin)
    w = args.work
    t_start = time.perf_counter()

    def log(msg):
        print("[%6.1f s] %s" % (time.perf_counter() - t_start, msg), flush=True)

    h = B.run("convert", "--help")
    if not F.check("--jobs" in h.out + h.err and "--report" in h.out + h.err,
                   "modelshrink convert --help lists the batch options (--jobs, --report)",
                   h.describe()):
        return F.finish(NAME)

    zoo = os.path.join(w, "zoo")
    man = Z.make_zoo300(zoo, large=2, testdata=DATA)
    N = len(man["models"])
    log("zoo: %d models, %d other files, %d bytes" % (N, len(man["others"]), man["bytes"]))
    if N < 300:
        C.skip("only %d models in the zoo (libonnx-testdata too small)" % N)
    zoo_before = C.tree_state(zoo)
    ext_models = sorted(man["ext_of"])
    expect_files = sorted(set(man["outputs"].values()) |
                          {man["outputs"][r] + ".data" for r in ext_models})
    R = os.path.join(w, "reports")
    os.makedirs(R)

    # ---- 1. --jobs 1 against --jobs 2, default options ----------------------------------------
    out1, out2 = os.path.join(w, "out_j1"), os.path.join(w, "out_j2")
    r1 = B.run("convert", "--jobs", 1, "--report", os.path.join(R, "j1.jsonl"), zoo, "-o", out1)
    r2 = B.run("convert", "--jobs", 2, "--report", os.path.join(R, "j2.jsonl"), zoo, "-o", out2)
    T = max(r2.wall, 0.05)
    log("jobs 1: exit %d, %.2f s; jobs 2: exit %d, %.2f s" % (r1.rc, r1.wall, r2.rc, r2.wall))
    F.check(r1.rc == 0 and r2.rc == 0, "--jobs 1 and --jobs 2 on the zoo exit 0",
            r1.describe() + "\n" + r2.describe())
    ref = C.tree_state(out2)
    t1 = C.tree_state(out1)
    F.check(t1 == ref, "--jobs 1 and --jobs 2 give byte-identical output trees",
            tree_diff(t1, ref))
    files = sorted(k for k, v in ref.items() if v[0] == "file")
    F.check(files == expect_files, "the output tree holds exactly the converted models (plus "
            "<out>.data for the external ones), no file that is not a model",
            "missing %s\nextra %s" % (sorted(set(expect_files) - set(files))[:8],
                                      sorted(set(files) - set(expect_files))[:8]))
    F.check(C.tree_state(zoo) == zoo_before, "the zoo is unchanged")
    F.check(not tmp_files(out1) and not tmp_files(out2), "no temporary files after full runs",
            str(tmp_files(out1) + tmp_files(out2)))
    for name, r, jobs, out in (("jobs 1", r1, 1, out1), ("jobs 2", r2, 2, out2)):
        notes = [SKIP_RE.match(l).group(1) for l in r.err.splitlines() if SKIP_RE.match(l)]
        noted = sorted(os.path.relpath(os.path.normpath(p), zoo) for p in notes)
        F.check(set(man["others"]) <= set(noted) and len(noted) == len(set(noted)),
                "%s: each file that is not a model is noted once on stderr "
                "('modelshrink: PATH: skipped (not a model)')" % name,
                "noted %s\nexpected %s\nstderr: %s" % (noted, man["others"], r.err[-1500:]))
        F.check(not (set(noted) & set(man["models"])), "%s: no model is noted as not a model"
                % name, str(sorted(set(noted) & set(man["models"]))))
        extra = sorted(set(noted) - set(man["others"]))
        if extra:
            print("NOTE: %s: also noted as not a model (external data of a model?): %s"
                  % (name, extra))
        lines = [l for l in r.out.splitlines() if LINE_RE.match(l)]
        F.check(len(lines) == N, "%s: one plain per-model line on stdout (not a terminal)" % name,
                "%d lines for %d models" % (len(lines), N))
        check_report(F, os.path.join(R, "j%d.jsonl" % jobs), zoo, out, man, name, jobs,
                     n_others=len(noted))
    recs1 = split_report(read_report(os.path.join(R, "j1.jsonl"))[0])[0]
    recs2 = split_report(read_report(os.path.join(R, "j2.jsonl"))[0])[0]
    key = lambda m: (m.get("rel"), m.get("status"), m.get("bytes_in"), m.get("bytes_out"),
                     json.dumps(m.get("savings"), sort_keys=True))
    F.check(sorted(map(key, recs1)) == sorted(map(key, recs2)),
            "--jobs 1 and --jobs 2 reports agree per model (status, bytes, savings)")
    big = [m.get("rel") for m in recs1[:2]]
    F.check(big[:1] and big[0] in ("gen/big/albert_0.onnx", "gen/big/ext/albert_1.onnx"),
            "--jobs 1: the largest input comes first", "first records: %s" % big)
    log("determinism and report checks done")

    # ---- 2. --fp16 on a subset given as three folders ----------------------------------------
    subset = [os.path.join(zoo, "gen"), os.path.join(zoo, "ckpt"),
              os.path.join(zoo, "testdata", "pytorch-converted")]
    f1, f2 = os.path.join(w, "fp16_j1"), os.path.join(w, "fp16_j2")
    a = B.run("convert", "-q", "--fp16", "--jobs", 1, *subset, "-o", f1)
    b = B.run("convert", "-q", "--fp16", "--jobs", 2, *subset, "-o", f2)
    F.check(a.rc == b.rc and a.rc in (0, 1), "--fp16 subset: equal exit codes for --jobs 1 and 2",
            a.describe() + "\n" + b.describe())
    ta, tb = C.tree_state(f1), C.tree_state(f2)
    F.check(ta == tb and len(ta) > 50, "--fp16 subset: byte-identical trees for --jobs 1 and 2",
            "%d vs %d entries\n%s" % (len(ta), len(tb), tree_diff(ta, tb)))
    F.check(a.out == "" and b.out == "", "-q prints nothing on stdout", a.out[:500] + b.out[:500])

    # ---- 3. --copy-others -----------------------------------------------------------------------
    out3 = os.path.join(w, "out_copy")
    r = B.run("convert", "--jobs", 2, "--copy-others", zoo, "-o", out3)
    F.check(r.rc == 0, "--copy-others exits 0", r.describe())
    t3 = C.tree_state(out3)
    F.check(not any(SKIP_RE.match(l) for l in r.err.splitlines()),
            "--copy-others: no 'skipped (not a model)' notes", r.err[-1000:])
    want3 = dict(ref)
    for o in man["others"]:
        want3[o] = ("file", C.sha256(os.path.join(zoo, o)))
    clobbered = sorted(k for k in ref if t3.get(k) != ref[k])
    F.check(not clobbered, "--copy-others: every converted model's files are as without it (no "
            "copy overwrites an output)", str(clobbered[:8]))
    F.check(all(t3.get(o) == want3[o] for o in man["others"]),
            "--copy-others: the files that are not models are copied byte for byte",
            str([o for o in man["others"] if t3.get(o) != want3[o]]))
    extra = sorted(k for k in t3 if k not in want3 and t3[k][0] == "file")
    if extra:
        print("NOTE: --copy-others also copied %s (a model's external data input)" % extra)

    # ---- 4. models that fail ------------------------------------------------------------------
    fz = os.path.join(w, "failzoo")
    fman = Z.make_fail_zoo(fz)
    fo1, fo2 = os.path.join(w, "fail_j1"), os.path.join(w, "fail_j2")
    fr = os.path.join(R, "fail.jsonl")
    a = B.run("convert", "--jobs", 1, "--report", os.path.join(R, "fail1.jsonl"), fz, "-o", fo1)
    b = B.run("convert", "--jobs", 2, "--report", fr, fz, "-o", fo2)
    F.check(a.rc == 1 and b.rc == 1, "a zoo with failing models: exit 1 with --jobs 1 and 2",
            a.describe() + "\n" + b.describe())
    F.check(C.tree_state(fo1) == C.tree_state(fo2),
            "failing zoo: byte-identical trees for --jobs 1 and 2")
    F.check(not tmp_files(fo1) and not tmp_files(fo2), "failing zoo: no temporary files left")
    for o in fman["fail"]:
        F.check(o in a.err and o in b.err, "failing zoo: %s is named on stderr" % o)
    check_report(F, fr, fz, fo2, fman, "failing zoo report", 2, expect_fail=fman["fail"])
    n1 = len(read_report(fr)[0])
    b = B.run("convert", "-q", "--jobs", 2, "--report", fr, fz, "-o", fo2)
    F.check(len(read_report(fr)[0]) == n1, "without --resume an existing report is replaced",
            "%d lines after the second run, %d after the first" % (len(read_report(fr)[0]), n1))
    log("fp16, copy-others and failing-zoo checks done")

    # ---- 5. SIGKILL and --resume --------------------------------------------------------------
    plans = [("kill after %.2f s (0.1 of a run)" % (0.1 * T), [("time", 0.1 * T)]),
             ("kill after 20% of the records", [("records", N // 5)]),
             ("kill after 70% of the records", [("records", (7 * N) // 10)]),
             ("kill at 0.3 of a run, kill the resume too", [("time", 0.3 * T), ("time", 0.3 * T)])]
    left_tmp_total = 0
    for i, (what, triggers) in enumerate(plans):
        out = os.path.join(w, "kill%d" % i)
        rep = os.path.join(R, "kill%d.jsonl" % i)
        done = set()
        killed_all = True
        for j, trig in enumerate(triggers):
            argv = ["convert", "-q", "--jobs", 2, "--report", rep] + \
                (["--resume"] if j else []) + [zoo, "-o", out]
            res, fired, when = B.interrupted(argv, signal.SIGKILL, trig, report=rep)
            killed = fired and res.rc == -signal.SIGKILL
            killed_all = killed_all and killed
            recs = read_report(rep)[0]
            done |= {m.get("rel") for m in split_report(recs)[0] if m.get("status") == "ok"}
            left = tmp_files(out)
            left_tmp_total += len(left)
            log("%s: step %d %s at %s s, %d models done so far, %d temporary files left"
                % (what, j, "killed" if killed else "NOT killed (exit %d)" % res.rc,
                   "%.3f" % when if when is not None else "-", len(done), len(left)))
        r = B.run("convert", "--jobs", 2, "--resume", "--report", rep, zoo, "-o", out)
        F.check(r.rc == 0, "%s: the --resume run exits 0" % what, r.describe())
        got = C.tree_state(out)
        F.check(got == ref, "%s: after --resume the tree equals an uninterrupted run's" % what,
                tree_diff(got, ref))
        F.check(not tmp_files(out), "%s: no temporary files after --resume" % what,
                str(tmp_files(out)[:8]))
        s = last_summary(read_report(rep)[0])
        if not killed_all:
            print("NOTE: %s: a run finished before the kill; resumed count not checked" % what)
        elif s is None:
            F.fail("%s: the resume run's report ends with a summary" % what)
        else:
            F.check(s.get("resumed") == len(done) and s.get("models") == N and
                    s.get("failed") == 0 and s.get("interrupted") is False,
                    "%s: resumed == the models the killed runs reported ok (%d), models == %d"
                    % (what, len(done), N),
                    json.dumps(s))
            if done:
                F.check(s.get("resumed", 0) > 0, "%s: the resume run resumed > 0 models" % what)
    if left_tmp_total == 0:
        print("NOTE: no SIGKILL left a temporary file behind (the planted ones in section 8 "
              "cover the stale-file clean-up)")
    log("kill/resume checks done")

    # ---- 6. SIGINT and SIGTERM ----------------------------------------------------------------
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        what = signal.Signals(sig).name
        out = os.path.join(w, "sig_" + what)
        rep = os.path.join(R, "sig_%s.jsonl" % what)
        argv = ["convert", "-q", "--jobs", 2, "--report", rep, zoo, "-o", out]
        res, fired, when = B.interrupted(argv, sig, ("records", max(3, N // 20)), report=rep)
        if not fired or res.rc == 0:
            # finished before the signal: try once more, earlier
            shutil.rmtree(out, ignore_errors=True)
            res, fired, when = B.interrupted(argv, sig, ("records", 1), report=rep)
        recs = read_report(rep)[0]
        models = split_report(recs)[0]
        log("%s sent at %s s: exit %d, %d model records"
            % (what, "%.3f" % when if when is not None else "-", res.rc, len(models)))
        if not fired or len(models) >= N:
            print("NOTE: %s: the run finished before the signal; not checked" % what)
            continue
        F.check(res.rc == code, "%s mid-run: exit %d" % (what, code), "exit %d" % res.rc)
        F.check(not tmp_files(out), "%s: no temporary files left" % what,
                str(tmp_files(out)[:8]))
        s = last_summary(recs)
        F.check(s is not None and s.get("interrupted") is True,
                "%s: the report ends with a summary record with \"interrupted\": true" % what,
                "last record: %r" % (recs[-1] if recs else None))
        r = B.run("convert", "-q", "--jobs", 2, "--resume", "--report", rep, zoo, "-o", out)
        F.check(r.rc == 0 and C.tree_state(out) == ref,
                "%s: --resume then completes the tree (equal to an uninterrupted run's)" % what,
                r.describe())

    # ---- 7. shards and report merge -----------------------------------------------------------
    outS = os.path.join(w, "out_shards")
    expect = {k: sorted(r for r in man["models"] if fnv1a64(r) % 3 == k) for k in range(3)}
    shard_reps, seen = [], []
    for k in range(3):
        rep = os.path.join(R, "shard%d.jsonl" % k)
        shard_reps.append(rep)
        r = B.run("convert", "-q", "--jobs", 2, "--shard", "%d/3" % k, "--report", rep, zoo,
                  "-o", outS)
        F.check(r.rc == 0 and r.out == "", "--shard %d/3 exits 0 (quiet)" % k, r.describe())
        recs = split_report(read_report(rep)[0])[0]
        rels = sorted(m.get("rel") for m in recs)
        seen += rels
        F.check(rels == expect[k], "--shard %d/3 converts the models whose FNV-1a 64 of rel is "
                "%d mod 3" % (k, k), "%d converted, %d expected; first differences: %s" % (
                    len(rels), len(expect[k]), sorted(set(rels) ^ set(expect[k]))[:6]))
        check_report(F, rep, zoo, outS, man, "--shard %d/3 report" % k, 2, shard="%d/3" % k,
                     expect_rels=expect[k])
    F.check(sorted(seen) == sorted(man["models"]),
            "the three shards cover every model exactly once",
            "%d records for %d models" % (len(seen), N))
    ts = C.tree_state(outS)
    F.check(ts == ref, "three shards into one folder give the full run's tree", tree_diff(ts, ref))
    merged = os.path.join(R, "merged.jsonl")
    r = B.run("report", "merge", *shard_reps, "-o", merged)
    F.check(r.rc == 0, "report merge of the three shard reports exits 0", r.describe())
    F.check(len([l for l in r.err.splitlines() if l.strip()]) == 1,
            "report merge prints a one-line total on stderr", r.err[-500:])
    mrecs, mbad, _ = read_report(merged)
    mm, ms = split_report(mrecs)
    F.check(mbad == 0 and sorted(m.get("rel") for m in mm) == sorted(man["models"]),
            "merged report: one record per model", "%d records, %d bad lines" % (len(mm), mbad))
    shard_recs = [split_report(read_report(p)[0]) for p in shard_reps]
    s_models = [m for recs, _ in shard_recs for m in recs]
    s_sums = [s[-1] for _, s in shard_recs if s]
    s = last_summary(mrecs)
    if F.check(s is not None and len(ms) == 1, "merged report ends with one summary record"):
        exp = {"models": N, "ok": sum(x.get("ok", 0) for x in s_sums),
               "failed": sum(x.get("failed", 0) for x in s_sums),
               "bytes_in": sum(x.get("bytes_in", 0) for x in s_sums),
               "bytes_out": sum(x.get("bytes_out", 0) for x in s_sums)}
        got = {k: s.get(k) for k in exp}
        F.check(got == exp and exp["bytes_in"] == sum(m["bytes_in"] for m in s_models),
                "merged summary totals equal the shards' sums", "got %s\nexpected %s"
                % (json.dumps(got), json.dumps(exp)))
        sh = s.get("shards")
        F.check(isinstance(sh, list) and len(sh) == 3 and
                (not all(isinstance(x, str) for x in sh) or
                 sorted(sh) == ["0/3", "1/3", "2/3"]),
                "merged summary lists the shards", "shards: %r" % (sh,))
    r_std = B.run("report", "merge", *shard_reps)
    srecs = [json.loads(l) for l in r_std.out.splitlines() if l.strip()]
    strip = lambda recs: [{k: v for k, v in x.items() if k != "seconds"} for x in recs]
    F.check(r_std.rc == 0 and strip(srecs) == strip(mrecs),
            "report merge without -o writes the same records to stdout", r_std.describe())
    cut = os.path.join(R, "shard0_cut.jsonl")
    with open(shard_reps[0], "rb") as f:
        body = f.read()
    with open(cut, "wb") as f:
        f.write(body + b'{"type":"model","rel":"gen/big/albert_0.on')
    r = B.run("report", "merge", cut, shard_reps[1], shard_reps[2], "-o",
              os.path.join(R, "merged_cut.jsonl"))
    crecs = read_report(os.path.join(R, "merged_cut.jsonl"))[0]
    F.check(r.rc == 0 and strip(crecs) == strip(mrecs),
            "report merge ignores a last line cut by a kill", r.describe())
    r = B.run("report", "merge", fr, "-o", os.path.join(R, "merged_fail.jsonl"))
    F.check(r.rc == 1, "report merge exits 1 when a merged record has status error",
            r.describe())
    # the same shards from the environment
    for label, env, extra in (
            ("SLURM_ARRAY_TASK_ID/COUNT", lambda k: {"SLURM_ARRAY_TASK_ID": str(k),
                                                     "SLURM_ARRAY_TASK_COUNT": "3"}, []),
            ("JOB_COMPLETION_INDEX + --shard-count 3",
             lambda k: {"JOB_COMPLETION_INDEX": str(k)}, ["--shard-count", 3])):
        sets = []
        for k in range(3):
            rep = os.path.join(R, "env%d.jsonl" % k)
            r = B.run("convert", "-q", "--jobs", 2, *extra, "--report", rep, zoo, "-o",
                      os.path.join(w, "out_env"), env=env(k))
            recs = read_report(rep)[0]
            rels = sorted(m.get("rel") for m in split_report(recs)[0])
            s = last_summary(recs) or {}
            sets.append(r.rc == 0 and rels == expect[k] and s.get("shard") == "%d/3" % k)
            if not sets[-1]:
                print("  %s shard %d: exit %d, %d models (want %d), shard %r" % (
                    label, k, r.rc, len(rels), len(expect[k]), s.get("shard")))
        F.check(all(sets), "%s selects the same models as --shard K/3 (and reports shard K/3)"
                % label)
    for bad in ("3/3", "x", "1/0", "-1/3"):
        r = B.run("convert", "-q", "--shard", bad, zoo, "-o", os.path.join(w, "out_bad"))
        F.check(r.rc == 2, "--shard %s is a usage error (exit 2)" % bad, r.describe())
    log("shard and merge checks done")

    # ---- 8. --resume after a full run ---------------------------------------------------------
    rep = os.path.join(R, "j2.jsonl")
    before_lines = read_report(rep)[2]
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    plant = os.path.join(out2, "gen")
    stale = os.path.join(plant, ".mlp_dup.onnx.msh-tmp-%s-%d-aB3xYz" % (host, dead.pid))
    live = os.path.join(plant, ".mlp_dup.onnx.msh-tmp-%s-%d-Qw9rTy" % (host, os.getpid()))
    other = os.path.join(plant, ".mlp_dup.onnx.msh-tmp-not-%s-1-Zx7cVb" % host)
    for p in (stale, live, other):
        with open(p, "wb") as f:
            f.write(b"partial")
    mt = mtimes(out2)
    for p in (stale, live, other):
        mt.pop(os.path.relpath(p, out2), None)
    time.sleep(0.02)
    r = B.run("convert", "--jobs", 2, "--resume", "--report", rep, zoo, "-o", out2)
    F.check(r.rc == 0, "--resume after a full run exits 0", r.describe())
    F.check(not os.path.exists(stale), "a stale temporary file of a dead process on this host "
            "is removed", stale)
    F.check(os.path.exists(live), "a temporary file of a live process is left alone", live)
    F.check(os.path.exists(other), "a temporary file made on another host is left alone", other)
    for p in (stale, live, other):
        if os.path.exists(p):
            os.remove(p)
    recs, _, lines = read_report(rep)
    s = last_summary(recs)
    F.check(s is not None and s.get("resumed") == N and s.get("models") == N and
            s.get("failed") == 0, "--resume after a full run: resumed == models (%d)" % N,
            json.dumps(s))
    full = split_report(read_report(os.path.join(R, "j2.jsonl"))[0][:len(before_lines)])[0]
    want_tot = {"ok": N, "converted": 0, "reconverted_options": 0, "jobs": 0,
                "bytes_in": sum(m["bytes_in"] for m in full if m.get("status") == "ok"),
                "bytes_out": sum(m["bytes_out"] for m in full if m.get("status") == "ok")}
    got_tot = {k: (s or {}).get(k) for k in want_tot}
    F.check(got_tot == want_tot, "--resume after a full run: the summary's totals include the "
            "resumed models (ok, bytes in and out); nothing converted, no job ran",
            "got %s\nexpected %s" % (json.dumps(got_tot), json.dumps(want_tot)))
    F.check(lines[:len(before_lines)] == before_lines and len(lines) > len(before_lines),
            "--resume appends to the report")
    mt2 = mtimes(out2)
    F.check(mt2 == mt, "--resume after a full run rewrites nothing (mtimes and inodes unchanged)",
            "changed: %s" % sorted(k for k in set(mt) | set(mt2) if mt.get(k) != mt2.get(k))[:8])
    F.check(C.tree_state(out2) == ref, "--resume after a full run: tree unchanged")
    # an input with a new mtime and a deleted output are converted again
    touched, deleted = "gen/mlp_dup.onnx", "testdata/node/" + sorted(
        os.listdir(os.path.join(zoo, "testdata", "node")))[0] + "/model.onnx"
    st = os.stat(os.path.join(zoo, touched))
    os.utime(os.path.join(zoo, touched), ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    os.remove(os.path.join(out2, man["outputs"][deleted]))
    n_before = len(recs)
    r = B.run("convert", "-q", "--jobs", 2, "--resume", "--report", rep, zoo, "-o", out2)
    recs = read_report(rep)[0]
    new = split_report(recs[n_before:])[0]
    s = last_summary(recs)
    F.check(r.rc == 0 and s is not None and s.get("resumed") == N - 2 and
            sorted(m.get("rel") for m in new) == sorted([touched, deleted]),
            "--resume converts again an input with a new mtime and a model whose output is gone",
            "%s\nnew records: %s\nsummary: %s" % (r.describe(), [m.get("rel") for m in new],
                                                 json.dumps(s)))
    F.check(C.tree_state(out2) == ref, "... and the tree equals the full run's again")
    log("resume checks done")

    # ---- 9. --copy-others with --resume and with shards ---------------------------------------
    # The copies must never replace a converted model's file (e.g. an input's <model>.onnx.data,
    # which is not a model, copied over the output's <model>.onnx.data of a model that was
    # resumed or converted by another shard).
    want3 = C.tree_state(out3)
    r = B.run("convert", "-q", "--jobs", 2, "--copy-others", "--report",
              os.path.join(R, "copy.jsonl"), zoo, "-o", out3)
    r = B.run("convert", "-q", "--jobs", 2, "--copy-others", "--resume", "--report",
              os.path.join(R, "copy.jsonl"), zoo, "-o", out3)
    t = C.tree_state(out3)
    F.check(r.rc == 0 and t == want3, "--copy-others --resume after a full run leaves the tree "
            "as it was (no copy replaces a resumed model's files)",
            r.describe() + "\n" + tree_diff(want3, t))
    outSC = os.path.join(w, "out_shards_copy")
    for k in range(3):
        r = B.run("convert", "-q", "--jobs", 2, "--copy-others", "--shard", "%d/3" % k, zoo,
                  "-o", outSC)
    t = C.tree_state(outSC)
    F.check(t == want3, "--copy-others with three shards into one folder gives the full "
            "--copy-others run's tree", tree_diff(want3, t))
    if NEGATIVE_SAVINGS:
        print("NOTE: negative savings (a stage made the file bigger): %s"
              % sorted(NEGATIVE_SAVINGS)[:3])
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
