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
import json
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


SIZE_CASES = [("strip-resnet18", "ResNet-18 + attention head, Adam state: strip"),
              ("dedup-albert", "ALBERT-base export with per-layer copies: dedup"),
              ("fp16-yolox", "YOLOX-S-sized detector checkpoint: strip + FP16"),
              ("prune-clip", "CLIP-like dual encoder: keep the vision tower")]
PEER_CASES = [("fp16-bert", "BERT-base-shaped ONNX: FP16"),
              ("int8-bert", "BERT-base-shaped ONNX: INT8 per channel")]


def load_results(work, quick):
    out = {}
    for path in glob.glob(os.path.join(work, "results", "*.json")):
        try:
            r = json.load(open(path))
        except (OSError, ValueError):
            continue
        if bool(r.get("quick")) == quick:
            out[r["case"]] = r
    return out


def write_summary(out, work, quick, machine):
    """The summary section: the documented size cases, the other peer comparisons and growth,
    from the newest figures each case saved in bench-work/results/."""
    res = load_results(work, quick)
    if not res:
        return

    def mb(n):
        return "%.1f MB" % (n / 1e6)

    def row(cid, title):
        r = res.get(cid)
        if not r:
            return {"case": title, "measured": "not run yet (`--case %s`)" % cid}
        ms, peer, cp = r.get("ms_wall") or 0.0, r.get("peer_wall") or 0.0, r.get("cp_wall") or 0.0
        return {"case": "%s (`%s`)" % (title, cid), "doc": r.get("documented", ""),
                "measured": "%s → %s (%s)" % (mb(r["input_bytes"]), mb(r["output_bytes"]),
                                              h.fmt_ratio(r["input_bytes"], r["output_bytes"])),
                "ms": "%s s, %.0f MiB" % (h.fmt_s(ms), r.get("ms_rss", 0.0)),
                "peer": "%s: %s s, %.0f MiB" % (r.get("peer", "?"), h.fmt_s(peer),
                                                r.get("peer_rss", 0.0)) if peer else "",
                "speed": h.fmt_ratio(peer, ms) if peer and ms else "",
                "cp": h.fmt_ratio(ms, cp) if cp and ms else "",
                "err": r.get("error", ""), "when": r.get("when", "")}
    cols = [("case", "case", "l"), ("doc", "documented", "l"), ("measured", "measured", "l"),
            ("ms", "modelshrink wall, peak RSS", "r"), ("peer", "peer wall, peak RSS", "l"),
            ("speed", "modelshrink speed-up", "r"), ("cp", "modelshrink wall vs cp", "r"),
            ("err", "error vs original", "l"), ("when", "measured at", "l")]
    parts = ["## Summary" + (" (quick)" if quick else ""),
             "The newest figures of each case's section below: median wall times over the "
             "case's runs, the largest peak RSS; speed-up: the peer's time over modelshrink's; "
             "wall vs cp: modelshrink's time over `cp` of the same bytes (the I/O floor).",
             "### The documented size cases",
             report.table(cols, [row(c, t) for c, t in SIZE_CASES]),
             "### Other peer comparisons",
             report.table([c for c in cols if c[0] != "doc"], [row(c, t) for c, t in PEER_CASES])]
    grow = sorted((r for k, r in res.items() if k.startswith("growth-")),
                  key=lambda r: r["input_bytes"])
    if grow:
        gcols = [("size", "input", "r"), ("ms", "modelshrink (dedup)", "r"),
                 ("nd", "modelshrink --no-dedup", "r"), ("cp", "cp", "r")]

        def cell(wall, rss, n):
            return "%s s (%.3f s/GiB), %.1f MiB" % (h.fmt_s(wall), wall / (n / 2.0 ** 30), rss) \
                if rss is not None else "%s s (%.3f s/GiB)" % (h.fmt_s(wall), wall / (n / 2.0 ** 30))
        grows = [{"size": "%s (%s B)" % (r["case"][len("growth-"):],
                                         h.fmt_bytes(r["input_bytes"])),
                  "ms": cell(r["ms_wall"], r["ms_rss"], r["input_bytes"]),
                  "nd": cell(r["nodedup_wall"], r["nodedup_rss"], r["input_bytes"]),
                  "cp": cell(r["cp_wall"], None, r["input_bytes"])} for r in grow]
        parts += ["### Growth (wall time, seconds per GiB, peak RSS)", report.table(gcols, grows)]
    fl = res.get("floor")
    if fl:
        r = fl.get("ratios", {})
        fcols = [("what", "conversion", "l"), ("ratio", "wall vs cp", "r"),
                 ("target", "target", "r")]
        frows = [{"what": "FP16, 512 MiB single-file model", "ratio": "%.2fx" % r.get(
                      "modelshrink --fp16", 0), "target": "<= 1.5x"},
                 {"what": "INT8, same model", "ratio": "%.2fx" % r.get("modelshrink --int8", 0),
                  "target": "<= 1.5x"},
                 {"what": "strip + FP16, 485 MiB Adam checkpoint",
                  "ratio": "%.2fx" % r.get("strip --fp16", 0), "target": "<= 1.5x"},
                 {"what": "plain convert (dedup finds nothing), same model",
                  "ratio": "%.2fx" % r.get("modelshrink (dedup)", 0), "target": ""}]
        parts += ["### The engine at the I/O floor (`floor`; largest peak RSS %.0f MiB)"
                  % fl.get("rss_mib", 0), report.table(fcols, frows)]
    parts.append("Machine: %s, %d cores, %.1f GiB RAM, %s." % (
        machine["cpu"], machine["cores"], machine["ram_gib"], machine["os"]))
    report.update_section(out, "summary" + ("-quick" if quick else ""), "\n\n".join(parts),
                          first=True)


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
    write_summary(args.out, work, args.quick, machine)
    print("bench: %d case(s) run, %d failed; command: %s" % (
        len(chosen), failed, " ".join(shlex.quote(a) for a in sys.argv)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
