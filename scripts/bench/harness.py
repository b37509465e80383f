"""Measuring commands for modelshrink's benchmarks: wall time, peak RSS, output size, correctness.

Every measured command runs under ``/usr/bin/time -v`` (GNU time) so that peak RSS
("Maximum resident set size") comes from the kernel's accounting of the child, not from sampling.
Wall time is taken around the same subprocess with ``time.perf_counter`` (GNU time rounds to
10 ms). Tools run round-robin: one run of every tool, then the next round, so that a slow drift of
the machine (thermal, other load) spreads over all tools instead of landing on one.
"""

import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GNU_TIME = "/usr/bin/time"
MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# tools
# --------------------------------------------------------------------------------------------

@dataclass
class Tool:
    """One command under test. ``argv(inp, out)`` builds its command line; ``outputs(out)`` lists
    every file it writes for one model (the .onnx plus any external-data file)."""
    name: str
    argv: object                      # callable (inp, out) -> list[str]
    note: str = ""                    # what exactly runs, for the report
    version: str = ""
    outputs: object = None            # callable (out) -> list[str]; default [out, out + ".data"]

    def files(self, out):
        if self.outputs:
            return self.outputs(out)
        return [out, out + ".data"]


def rm_f(*paths):
    for p in paths:
        try:
            os.remove(p)
        except FileNotFoundError:
            pass


def size_of(paths):
    return sum(os.path.getsize(p) for p in paths if os.path.exists(p))


# --------------------------------------------------------------------------------------------
# one timed run
# --------------------------------------------------------------------------------------------

@dataclass
class Run:
    tool: str
    ok: bool
    wall_s: float
    rss_kib: int
    out_bytes: int
    exit_code: int
    log: str


_RSS_RE = re.compile(r"Maximum resident set size \(kbytes\):\s*(\d+)")


def timed_run(tool, inp, out, log_dir, index, timeout_s=1800):
    """Run ``tool`` once on ``inp`` writing ``out``; return a Run. The output from any earlier run
    is removed first so every run writes a fresh file."""
    rm_f(*tool.files(out))
    os.makedirs(log_dir, exist_ok=True)
    # Write back every dirty page first (not timed): a tool must not pay for the writes of the
    # run before it, which the kernel flushes lazily (cp never fsyncs; modelshrink does).
    os.sync()
    tfile = os.path.join(log_dir, "%s.%d.time" % (tool.name, index))
    log = os.path.join(log_dir, "%s.%d.log" % (tool.name, index))
    cmd = [GNU_TIME, "-v", "-o", tfile] + tool.argv(inp, out)
    with open(log, "w") as lf:
        lf.write("$ %s\n" % " ".join(shlex.quote(c) for c in cmd))
        lf.flush()
        # No timeout= on wait(): with one, Python polls with sleeps of up to 50 ms, which
        # quantises short wall times. A timer thread kills a run that takes too long instead.
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout_s, p.kill)
        timer.start()
        try:
            code = p.wait()
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        if code < 0:
            code = 124  # killed by the timer
    rss = 0
    try:
        txt = open(tfile).read()
        m = _RSS_RE.search(txt)
        rss = int(m.group(1)) if m else 0
    except FileNotFoundError:
        pass
    ok = code == 0 and os.path.exists(out)
    return Run(tool.name, ok, wall, rss, size_of(tool.files(out)) if ok else 0, code, log)


def warm_read(path, chunk=16 * MIB):
    """Read ``path`` once so every tool, the first one included, finds it in the page cache. (We
    do not drop caches between runs: a warm cache is the steady state of a conversion job and the
    fairer comparison, since the first tool would otherwise pay for everyone's cold read.)"""
    with open(path, "rb") as f:
        while f.read(chunk):
            pass


def round_robin(tools, inp, out_dir, log_dir, reps=3, progress=True, timeout_s=1800):
    """Run every tool ``reps`` times, one round at a time, rotating the starting tool each round.
    Returns {tool name: [Run, ...]} and leaves each tool's last output in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    runs = {t.name: [] for t in tools}
    for r in range(reps):
        order = tools[r % len(tools):] + tools[:r % len(tools)]
        for t in order:
            out = os.path.join(out_dir, t.name + ".onnx")
            run = timed_run(t, inp, out, log_dir, r, timeout_s)
            runs[t.name].append(run)
            if progress:
                state = "ok" if run.ok else "FAILED (exit %d, log %s)" % (run.exit_code, run.log)
                print("  round %d/%d  %-14s %8.2f s  %8.1f MiB  %s" % (
                    r + 1, reps, t.name, run.wall_s, run.rss_kib / 1024.0, state), flush=True)
    return runs


@dataclass
class Summary:
    tool: str
    ok: bool
    runs: int
    wall_median: float
    wall_min: float
    wall_max: float
    rss_mib: float           # the largest peak RSS over the runs
    out_bytes: int
    failure: str = ""
    extra: dict = field(default_factory=dict)


def summarize(name, runs):
    good = [r for r in runs if r.ok]
    if not good:
        last = runs[-1]
        return Summary(name, False, len(runs), 0.0, 0.0, 0.0, 0.0, 0,
                       failure="exit %d (log: %s)" % (last.exit_code, os.path.relpath(last.log, ROOT)))
    walls = [r.wall_s for r in good]
    return Summary(name, len(good) == len(runs), len(runs), statistics.median(walls), min(walls),
                   max(walls), max(r.rss_kib for r in good) / 1024.0, good[-1].out_bytes,
                   failure="" if len(good) == len(runs) else "%d of %d runs failed" % (
                       len(runs) - len(good), len(runs)))


# --------------------------------------------------------------------------------------------
# correctness: the converted model must compute what the original computes
# --------------------------------------------------------------------------------------------

def venv_python():
    return os.path.join(ROOT, ".venv", "bin", "python")


def make_reference(model, ref_npz):
    """Run the original model once (in a child process, so its memory is not ours) and keep its
    inputs and outputs in ``ref_npz``."""
    subprocess.run([venv_python(), os.path.join(HERE, "verify.py"), "ref", model, ref_npz],
                   check=True)


def verify(ref_npz, model):
    """Compare ``model``'s outputs with the reference. Returns a dict with ``identical`` (bit for
    bit, every output), ``max_abs_err`` and ``error`` (when the model fails to load or run)."""
    p = subprocess.run([venv_python(), os.path.join(HERE, "verify.py"), "check", ref_npz, model],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"identical": False, "max_abs_err": None, "error": tail[0][:200]}


# --------------------------------------------------------------------------------------------
# the machine and the versions, for the report
# --------------------------------------------------------------------------------------------

def _first_line(cmd):
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=120)
        lines = [ln.strip() for ln in p.stdout.splitlines() if ln.strip()]
        return lines[0] if lines else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not found"


def machine_info():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    os_name = platform.system()
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    fs = "?"
    try:
        fs = subprocess.run(["df", "--output=fstype", ROOT], stdout=subprocess.PIPE,
                            text=True).stdout.split()[-1]
    except (OSError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "ram_gib": mem_kib / (1024.0 * 1024.0),
        "os": "%s, kernel %s" % (os_name, platform.release()),
        "fs": fs,
        "python": "%s (%s)" % (platform.python_version(), sys.executable),
    }


def build_info(build_dir):
    """Compiler and build type of ``build_dir``, read from its CMakeCache.txt."""
    cache = os.path.join(build_dir, "CMakeCache.txt")
    vals = {}
    try:
        for line in open(cache):
            m = re.match(r"^(CMAKE_BUILD_TYPE|CMAKE_C_COMPILER|MSH_CUDA|MSH_SANITIZE)"
                         r"(?::\w+)?=(.*)$", line.strip())
            if m:
                vals[m.group(1)] = m.group(2)
    except OSError:
        return "?"
    cc = vals.get("CMAKE_C_COMPILER", "cc")
    return "%s, CMAKE_BUILD_TYPE=%s, MSH_CUDA=%s, MSH_SANITIZE=%s" % (
        _first_line([cc, "--version"]), vals.get("CMAKE_BUILD_TYPE") or "(unset)",
        vals.get("MSH_CUDA", "?"), vals.get("MSH_SANITIZE", "?"))


def pkg_version(name):
    try:
        from importlib import metadata
        return metadata.version(name)
    except Exception:  # noqa: BLE001 - any failure just means "unknown"
        return "not installed"


def have_cmd(path):
    return os.path.exists(path) or shutil.which(path) is not None


# --------------------------------------------------------------------------------------------
# cases: a case is a function that measures something and returns rows for its section
# --------------------------------------------------------------------------------------------

@dataclass
class Context:
    """What a case gets: where to work, which binary, and how hard to try."""
    quick: bool
    reps: int
    work: str            # bench-work/: inputs, outputs, logs (gitignored)
    bin: str             # build/modelshrink
    keep: bool           # keep big generated files after the case
    python: str          # .venv/bin/python (for generators and Python peers)


@dataclass
class CaseResult:
    columns: list        # [(key, heading, 'l'|'r')]
    rows: list           # [dict key -> formatted str]
    preface: str = ""    # markdown before the table (what was measured, on what input)
    notes: str = ""      # markdown after the table (caveats, findings)
    versions: list = field(default_factory=list)  # extra (name, version) pairs for the report


@dataclass
class Case:
    id: str
    title: str
    fn: object
    full_only: bool = False
    blurb: str = ""


CASES = []


def case(case_id, title, full_only=False):
    """Register a benchmark case. In --quick runs the case's section is '<id>-quick' so a quick
    run never overwrites the figures of a full run."""
    def deco(fn):
        CASES.append(Case(case_id, title, fn, full_only, (fn.__doc__ or "").strip()))
        return fn
    return deco


# --------------------------------------------------------------------------------------------
# formatting helpers shared by the cases
# --------------------------------------------------------------------------------------------

def fmt_s(x):
    return "%.2f" % x if x >= 0.1 else "%.3f" % x


def fmt_ratio(a, b):
    return "%.2fx" % (a / b) if a and b else "n/a"


def fmt_bytes(n):
    return "{:,}".format(n)


def fmt_check(v):
    if v is None:
        return "not checked"
    if v.get("error"):
        return "no: " + v["error"]
    if v["identical"]:
        return "yes"
    err = v.get("max_abs_err")
    return "no (max abs err %.3g)" % err if err is not None else "no"


# --------------------------------------------------------------------------------------------
# the standard table: every case reports the same columns
# --------------------------------------------------------------------------------------------

def tool_cp(name="cp", note="`cp IN OUT`: the I/O floor, the same bytes copied (GNU cp uses "
                             "copy_file_range, an in-kernel copy; no fsync)"):
    return Tool(name, lambda i, o: ["cp", i, o], note=note, outputs=lambda o: [o])


def wall_cell(s):
    """'median (min–max)' for a Summary, or why it failed."""
    if not s.out_bytes:
        return "failed: " + s.failure
    cell = fmt_s(s.wall_median)
    if s.runs > 1:
        cell += " (%s–%s)" % (fmt_s(s.wall_min), fmt_s(s.wall_max))
    return cell


def standard_columns(error_heading="error vs original"):
    """tool | median wall (range) | peak RSS | output bytes | in/out | <error> | wall vs
    modelshrink | wall vs cp"""
    return [("tool", "tool", "l"), ("wall", "median wall s (min–max)", "r"),
            ("rss", "peak RSS MiB", "r"), ("out", "output bytes", "r"),
            ("ratio", "in/out", "r"), ("err", error_heading, "l"),
            ("vs_ms", "wall vs modelshrink", "r"), ("vs_cp", "wall vs cp", "r")]


def standard_row(name, s, in_bytes, sums, err_cell, ms="modelshrink", cp="cp"):
    """One row of standard_columns() for Summary ``s``; ``sums`` holds every tool's Summary (the
    ratios divide by sums[ms] and sums[cp] when those ran)."""
    ok = bool(s.out_bytes)

    def vs(base):
        b = sums.get(base)
        return fmt_ratio(s.wall_median, b.wall_median) if ok and b and b.out_bytes else ""
    return {"tool": name, "wall": wall_cell(s), "rss": "%.0f" % s.rss_mib if ok else "",
            "out": fmt_bytes(s.out_bytes) if ok else "",
            "ratio": fmt_ratio(in_bytes, s.out_bytes) if ok else "",
            "err": err_cell if ok else "", "vs_ms": vs(ms), "vs_cp": vs(cp)}


def save_headline(ctx, case_id, **figures):
    """Keep a case's headline figures in bench-work/results/CASE.json for the summary section
    (bench.py writes it after every run from the newest figures of each case)."""
    d = os.path.join(ctx.work, "results")
    os.makedirs(d, exist_ok=True)
    figures["case"] = case_id
    figures["quick"] = ctx.quick
    figures["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with open(os.path.join(d, case_id + ("-quick" if ctx.quick else "") + ".json"), "w") as f:
        json.dump(figures, f, indent=1)
