#!/usr/bin/env python3
"""Summarise a scripts/fuzz.sh run from its libFuzzer logs, and optionally write it into
BENCHMARKS.md as the 'fuzzing' section.

    fuzz_summary.py BUILD SECONDS JOBS TARGET=EXIT... [--benchmarks FILE]

Prints one row per target: exit status, executions, executions per second, coverage (edges and
features), corpus files, peak RSS and the finding (the first sanitizer or libFuzzer error line).
With --benchmarks, each target's row is also kept in BUILD/results/TARGET.json, and the section
lists the newest row of every target that has one, so a run of one target replaces only its
row."""

import datetime
import json
import os
import platform
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "scripts", "bench"))

FINDING = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|"
                     r"SUMMARY: ")
PROGRESS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)")


def stat(text, key):
    m = re.findall(r"^stat::%s:\s*(\d+)" % key, text, re.M)
    return int(m[-1]) if m else None


def summarise(build, target, rc):
    log = os.path.join(build, "logs", target + ".log")
    text = open(log, errors="replace").read() if os.path.exists(log) else ""
    cov = ft = None
    for line in text.splitlines():
        m = PROGRESS.match(line)
        if m:
            cov, ft = int(m.group(2)), int(m.group(3))
    corpus = os.path.join(build, "corpus", target)
    finding = "-"
    if rc != 0:
        hit = next((ln.strip() for ln in text.splitlines() if FINDING.search(ln)), None)
        finding = hit or "exit %d" % rc
    return {"target": target, "exit": rc, "execs": stat(text, "number_of_executed_units"),
            "rate": stat(text, "average_exec_per_sec"), "cov": cov, "ft": ft,
            "corpus": len(os.listdir(corpus)) if os.path.isdir(corpus) else 0,
            "rss": stat(text, "peak_rss_mb"), "finding": finding}


def fmt(v):
    return "?" if v is None else "{:,}".format(v)


def main():
    args = sys.argv[1:]
    out = None
    if "--benchmarks" in args:
        i = args.index("--benchmarks")
        out = args[i + 1]
        del args[i:i + 2]
    build, seconds, jobs = args[0], int(args[1]), int(args[2])
    rows = [summarise(build, t.split("=")[0], int(t.split("=")[1])) for t in args[3:]]
    print("%-18s %5s %14s %8s %12s %8s %8s  %s" % ("target", "exit", "execs", "exec/s",
                                                   "cov/ft", "corpus", "rss MB", "finding"))
    for r in rows:
        print("%-18s %5d %14s %8s %12s %8s %8s  %s" % (
            r["target"], r["exit"], fmt(r["execs"]), fmt(r["rate"]),
            "%s/%s" % (fmt(r["cov"]), fmt(r["ft"])), fmt(r["corpus"]), fmt(r["rss"]),
            r["finding"][:120]))
    if out:
        write_section(out, build, rows, seconds, jobs)


def write_section(out, build, rows, seconds, jobs):
    import report
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    clang = subprocess.run(["clang", "--version"], stdout=subprocess.PIPE,
                           text=True).stdout.splitlines()[0]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    res_dir = os.path.join(build, "results")
    os.makedirs(res_dir, exist_ok=True)
    for r in rows:
        r.update(seconds=seconds, jobs=jobs, when=when)
        with open(os.path.join(res_dir, r["target"] + ".json"), "w") as f:
            json.dump(r, f)
    kept = []
    for fn in sorted(os.listdir(res_dir)):
        with open(os.path.join(res_dir, fn)) as f:
            kept.append(json.load(f))
    cols = [("target", "target", "l"), ("time", "seconds", "r"), ("jobs", "at once", "r"),
            ("execs", "executions", "r"), ("rate", "exec/s", "r"),
            ("cov", "edges / features", "r"), ("corpus", "corpus files", "r"),
            ("rss", "peak RSS MB", "r"), ("finding", "finding", "l"), ("when", "run at", "l")]
    trs = [{"target": "`%s`" % r["target"], "time": fmt(r["seconds"]), "jobs": r["jobs"],
            "execs": fmt(r["execs"]), "rate": fmt(r["rate"]),
            "cov": "%s / %s" % (fmt(r["cov"]), fmt(r["ft"])), "corpus": fmt(r["corpus"]),
            "rss": fmt(r["rss"]), "finding": "none" if r["finding"] == "-" else r["finding"],
            "when": r["when"]} for r in kept]
    body = "\n\n".join([
        "## Fuzzing",
        "libFuzzer targets in `tests/fuzz/` (clang, AddressSanitizer + UBSan + LeakSanitizer; a "
        "finding is any crash, sanitizer report, leak, input slower than 10 s or RSS over "
        "2 GiB), from the seeds of `tests/fuzz/make_seeds.py`, the regression inputs and the "
        "corpus of earlier runs. Each row is the newest run of its target; \"at once\" is how "
        "many targets shared the machine's cores (executions per second drop when more targets "
        "than cores run).",
        report.table(cols, trs),
        "Machine: %s, %d cores, %s, kernel %s; %s." % (
            cpu, os.cpu_count() or 0, platform.system(), platform.release(), clang),
        "Reproduce: `scripts/fuzz.sh --time %d --jobs %d --benchmarks` (all targets) or "
        "`scripts/fuzz.sh --time %d --benchmarks fuzz_onnx` (one)" % (seconds, jobs, seconds),
    ])
    report.update_section(out, "fuzzing", body)
    print("wrote section 'fuzzing' of %s" % out)


if __name__ == "__main__":
    main()
