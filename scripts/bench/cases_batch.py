"""Benchmark case for batch mode: a zoo of more than 300 models converted with --jobs 1 and 2."""

import hashlib
import json
import os
import shutil
import statistics
import subprocess

import harness as h
from harness import case

GEN_DIR = os.path.join(h.ROOT, "tests", "fixtures")
# full: every libonnx-testdata model (1072 on Debian 12) + 4 ALBERT-shaped models of ~37 MB
# (two with external data) + small generated models + checkpoints + a safetensors file.
ZOO_FULL = dict(large=4, max_testdata=None)
ZOO_QUICK = dict(large=1, max_testdata=300)


def gen_zoo(ctx, name, params):
    """Generate (or reuse, when the same parameters made it) the zoo; return its manifest."""
    path = os.path.join(ctx.work, name)
    stamp = path + ".manifest.json"
    want = repr(sorted(params.items()))
    if os.path.isdir(path) and os.path.exists(stamp):
        with open(stamp) as f:
            man = json.load(f)
        if man.get("params") == want:
            print("  reusing %s" % os.path.relpath(path, h.ROOT), flush=True)
            return man
    shutil.rmtree(path, ignore_errors=True)
    h.rm_f(stamp)
    args = [ctx.python, os.path.join(GEN_DIR, "make_zoo300.py"), path, "--manifest", stamp,
            "--large", str(params["large"])]
    if params["max_testdata"] is not None:
        args += ["--max-testdata", str(params["max_testdata"])]
    print("  generating %s (%s)" % (os.path.relpath(path, h.ROOT), " ".join(args[3:])),
          flush=True)
    subprocess.run(args, check=True)
    with open(stamp) as f:
        man = json.load(f)
    man["params"] = want
    with open(stamp, "w") as f:
        json.dump(man, f)
    return man


def tree_digest(folder):
    """(number of files, total bytes, sha256 over every relative path and file content)."""
    d = hashlib.sha256()
    n = size = 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for fn in sorted(files):
            p = os.path.join(root, fn)
            d.update(os.path.relpath(p, folder).encode() + b"\0")
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    d.update(chunk)
            n += 1
            size += os.path.getsize(p)
    return n, size, d.hexdigest()


def last_summary(path):
    try:
        with open(path) as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
        s = json.loads(lines[-1])
        return s if s.get("type") == "summary" else None
    except (OSError, ValueError, IndexError):
        return None


@case("batch-zoo", "Batch: a zoo of 300+ models, --jobs 1 against --jobs 2")
def batch_zoo(ctx):
    """`modelshrink convert --jobs N --report R ZOO -o OUT` on a zoo of more than 300 models
    (`tests/fixtures/make_zoo300.py`: every libonnx-testdata model, ALBERT-shaped models of
    ~37 MB, some with external data, small generated models, PyTorch checkpoints, a safetensors
    file, and three files that are not models), dedup on (the default). Each setting runs into a
    fresh output folder; the output trees of all settings must be byte-identical."""
    params = ZOO_QUICK if ctx.quick else ZOO_FULL
    man = gen_zoo(ctx, "batch-zoo-quick" if ctx.quick else "batch-zoo", params)
    zoo = man["root"]
    n_models, in_bytes = len(man["models"]), man["bytes"]
    out_dir = os.path.join(ctx.work, "batch-out")
    log_dir = os.path.join(ctx.work, "batch-logs")
    os.makedirs(out_dir, exist_ok=True)
    cores = os.cpu_count() or 1
    settings = [1, 2] + ([cores] if cores > 2 else [])

    def argv_for(jobs):
        def argv(inp, out):
            rep = os.path.join(log_dir, "jobs%d.report.jsonl" % jobs)
            return [ctx.bin, "convert", "-q", "--jobs", str(jobs), "--report", rep, inp,
                    "-o", out]
        return argv

    tools = [h.Tool("--jobs %d" % j, argv_for(j), outputs=lambda o: [],
                    note="`modelshrink convert -q --jobs %d --report R ZOO -o OUT`" % j)
             for j in settings]
    print("  warm-up read of the zoo", flush=True)
    for root, _, files in os.walk(zoo):
        for fn in files:
            h.warm_read(os.path.join(root, fn))
    runs = {t.name: [] for t in tools}
    digests, summaries = {}, {}
    for r in range(ctx.reps):
        order = tools[r % len(tools):] + tools[:r % len(tools)]
        for t in order:
            out = os.path.join(out_dir, t.name.replace("--", "").replace(" ", ""))
            shutil.rmtree(out, ignore_errors=True)
            run = h.timed_run(t, zoo, out, log_dir, r)
            runs[t.name].append(run)
            digests[t.name] = tree_digest(out) if os.path.isdir(out) else (0, 0, "")
            summaries[t.name] = last_summary(os.path.join(
                log_dir, "jobs%s.report.jsonl" % t.name.split()[-1]))
            state = "ok" if run.ok else "FAILED (exit %d, log %s)" % (run.exit_code, run.log)
            print("  round %d/%d  %-10s %8.2f s  %8.1f MiB  %s" % (
                r + 1, ctx.reps, t.name, run.wall_s, run.rss_kib / 1024.0, state), flush=True)
    if not ctx.keep:
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.rmtree(zoo, ignore_errors=True)
        h.rm_f(zoo + ".manifest.json")

    base = tools[0].name
    sums = {t.name: h.summarize(t.name, runs[t.name]) for t in tools}
    rows = []
    for t in tools:
        s = sums[t.name]
        sm = summaries.get(t.name) or {}
        ok = bool(s.runs and s.wall_median and s.ok)
        nfiles, nbytes, dig = digests.get(t.name, (0, 0, ""))
        same = "yes" if dig and dig == digests[base][2] else "**no**"
        cell = "failed: " + s.failure if not s.wall_median else h.fmt_s(s.wall_median) + (
            " (%s–%s)" % (h.fmt_s(s.wall_min), h.fmt_s(s.wall_max)) if s.runs > 1 else "")
        rows.append({
            "tool": t.name, "wall": cell,
            "mps": "%.0f" % (n_models / s.wall_median) if s.wall_median else "",
            "gbs": "%.3f" % (in_bytes / s.wall_median / 1e9) if s.wall_median else "",
            "rss": "%.1f" % s.rss_mib if s.wall_median else "",
            "out": h.fmt_bytes(nbytes),
            "ok": "%s/%s" % (sm.get("ok", "?"), sm.get("models", "?")),
            "speedup": h.fmt_ratio(sums[base].wall_median, s.wall_median) if ok else "",
            "same": "(reference)" if t.name == base else same,
        })
    columns = [("tool", "setting", "l"), ("wall", "median wall s (min–max)", "r"),
               ("mps", "models/s", "r"), ("gbs", "GB/s (input)", "r"),
               ("rss", "peak RSS MiB", "r"), ("out", "output bytes", "r"),
               ("ok", "ok/models (report)", "r"), ("speedup", "speed-up vs --jobs 1", "r"),
               ("same", "tree identical to --jobs 1", "l")]
    preface = (
        "Zoo: %d models (%s), %s input bytes (%.1f MiB, external data included) plus %d files "
        "that are not models. Each setting ran %d times round-robin under `/usr/bin/time -v` "
        "into a fresh output folder (median wall time with range, largest peak RSS); models/s "
        "and GB/s are models and input bytes over the median wall time. Every output file is "
        "fsync'ed before its rename, so small models are bound by the file system (%s) more "
        "than by the CPU.\n\n%s" % (
            n_models, "every libonnx-testdata model" if params["max_testdata"] is None else
            "%d libonnx-testdata models" % params["max_testdata"], h.fmt_bytes(in_bytes),
            in_bytes / h.MIB, len(man["others"]), ctx.reps, h.machine_info()["fs"],
            "\n".join("- %s: %s" % (t.name, t.note) for t in tools)))
    notes = []
    w1 = sums[base].wall_median
    w2 = sums["--jobs 2"].wall_median
    if w1 and w2:
        notes.append("- speed-up from --jobs 1 to --jobs 2: %.2fx (on %d cores)" % (w1 / w2, cores))
        med = statistics.median([ru.rss_kib for ru in runs[base] if ru.ok] or [0]) / 1024.0
        notes.append("- peak RSS with --jobs 1: %.1f MiB (median over runs)" % med)
    bad = [t.name for t in tools if digests.get(t.name, (0, 0, ""))[2] != digests[base][2]]
    if bad:
        notes.append("- **output trees differ** from --jobs 1's: %s" % ", ".join(bad))
    return h.CaseResult(columns, rows, preface=preface, notes="\n".join(notes))
