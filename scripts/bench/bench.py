#!/usr/bin/env python3
"""modelshrink benchmarks: run cases, write their sections of BENCHMARKS.md.

    bench.py [--quick] [--case ID ...] [--reps N] [--keep] [--list] [--out FILE]

Usually started by scripts/bench/run.sh, which installs the peers and builds build/ first.
Adding a case: write a function ``fn(ctx: harness.Context) -> harness.CaseResult`` decorated with
``@harness.case("id", "Title")`` in a ``cases_*.py`` module here; it is picked up by name. Its
section in BENCHMARKS.md is replaced on each run of that case and no other section is touched.
"""

import argparse
import datetime
import glob
import importlib
import inspect
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness as h  # noqa: E402
import report  # noqa: E402


def load_cases():
    for path in sorted(glob.glob(os.path.join(HERE, "cases_*.py"))):
        importlib.import_module(os.path.splitext(os.path.basename(path))[0])
    return h.CASES


def versions(ctx):
    ms = "missing"
    if os.path.exists(ctx.bin):
        ms = h._first_line([ctx.bin, "--version"])
        if ms.startswith("modelshrink "):
            ms = ms[len("modelshrink "):]
    return [("modelshrink", ms)] + [(n, h.pkg_version(n)) for n in (
        "onnxslim", "onnxsim", "onnxoptimizer", "onnxruntime", "onnx", "numpy")] + [
        ("cp", h._first_line(["cp", "--version"]).replace("cp (GNU coreutils) ", "coreutils "))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="small inputs, skip full-only cases; sections get a '-quick' id")
    ap.add_argument("--case", action="append", default=[], metavar="ID",
                    help="run only this case (repeatable); default: all")
    ap.add_argument("--reps", type=int, default=3, help="runs per tool (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep generated models in bench-work/")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--out", default=os.path.join(h.ROOT, "BENCHMARKS.md"))
    ap.add_argument("--bin", default=os.path.join(h.ROOT, "build", "modelshrink"))
    args = ap.parse_args(argv)

    cases = load_cases()
    if args.list:
        for c in cases:
            print("%-16s %s%s" % (c.id, c.title, " (full runs only)" if c.full_only else ""))
        return 0
    known = {c.id for c in cases}
    for cid in args.case:
        if cid not in known:
            ap.error("unknown case %r (known: %s)" % (cid, ", ".join(sorted(known))))
    chosen = [c for c in cases if (not args.case or c.id in args.case)
              and not (args.quick and c.full_only)]
    if not chosen:
        ap.error("no case to run (full-only cases are skipped with --quick)")
    if not os.path.exists(args.bin):
        ap.error("%s not found: build it first (scripts/bench/run.sh does)" % args.bin)

    work = os.path.join(h.ROOT, "bench-work")
    os.makedirs(work, exist_ok=True)
    ctx = h.Context(quick=args.quick, reps=max(1, args.reps), work=work, bin=args.bin,
                    keep=args.keep, python=os.path.join(h.ROOT, ".venv", "bin", "python"))
    machine = h.machine_info()
    vers = versions(ctx)
    build = h.build_info(os.path.dirname(args.bin))

    failed = 0
    for c in chosen:
        sec_id = c.id + ("-quick" if args.quick else "")
        title = c.title + (" (quick)" if args.quick else "")
        print("== %s" % title, flush=True)
        t0 = time.time()
        try:
            res = c.fn(ctx)
        except (subprocess.CalledProcessError, OSError) as e:
            print("  case failed: %s" % e, file=sys.stderr)
            failed += 1
            continue
        cmd = "scripts/bench/run.sh%s --case %s%s" % (
            " --quick" if args.quick else "", c.id,
            "" if args.reps == 3 else " --reps %d" % args.reps)
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        body = "\n\n".join(x for x in [
            "## " + title,
            inspect.cleandoc(c.blurb),
            res.preface,
            report.table(res.columns, res.rows),
            res.notes,
            "Machine (%s, case took %.0f s):\n\n%s" % (
                when, time.time() - t0,
                report.machine_block(machine, vers + res.versions, build)),
            "Reproduce: `%s`" % cmd,
        ] if x)
        report.update_section(args.out, sec_id, body)
        print("  wrote section '%s' of %s" % (sec_id, os.path.relpath(args.out, h.ROOT)),
              flush=True)
        print(report.table(res.columns, res.rows), flush=True)
    print("bench: %d case(s) run, %d failed; command: %s" % (
        len(chosen), failed, " ".join(shlex.quote(a) for a in sys.argv)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
