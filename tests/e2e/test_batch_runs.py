#!/usr/bin/env python3
"""End-to-end: what a batch run says and what --resume compares (issue 18), on a small zoo of
generated ONNX models (one with external data), a checkpoint and files that are not models.

- Report records carry "options" (the options that change outputs, `key=value` sorted by key)
  and "options_hash" (FNV-1a 64 of it, 16 hex digits); --jobs, --device and -q are not in it.
- --resume over a finished run: every model resumed, and the summary counts them: ok, bytes in
  and out equal the first run's, converted 0, reconverted_options 0, jobs 0; the total line
  gives their bytes and ratio but no rate (nothing was converted).
- --resume with other output options (--no-dedup) converts every model again and says so (the
  summary's reconverted_options, the total line's "converted again because their options
  changed"); an option that does not apply to a format (--int8 on a checkpoint) leaves that
  model resumed; a record without "options" (an older report) is converted again; the order of
  a list option (--block-op) does not count.
- -q prints nothing but errors: no per-model line, no table, no "skipped (not a model)".
- A batch whose models all fail: exit 1, its total line says how many failed and gives no
  bytes, ratio or rate.
- Singular and plural: "dedup merged 1 tensor", "1 not a model".
- On a terminal (a pty of 40 and of 200 columns, stdout a pipe): the progress bar is one line
  redrawn with '\\r' that never reaches the last column, with models done/total and bytes
  done/total counting external data files; the per-model lines still go to stdout (not a
  terminal); at the end the failures are repeated with their messages. A resize (SIGWINCH) mid
  run makes the bar follow the new width.
"""

import fcntl
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_batch_runs"
PTH = os.path.join(C.FIXTURES, "pth")
BAR_RE = re.compile(r"^(?:\[[#-]+\] )?\d+/\d+ ")


def fnv1a64(s):
    h = 0xcbf29ce484222325
    for b in s.encode("utf-8"):
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def report(path):
    recs = [json.loads(l) for l in open(path) if l.strip()]
    return [r for r in recs if r.get("type") == "model"], \
        [r for r in recs if r.get("type") == "summary"]


def on_tty(binary, argv, cols, resize_to=None, timeout=300):
    """Run with stderr on a pty of `cols` columns (stdout a pipe). With `resize_to`, the pty is
    resized and SIGWINCH sent once the first bar is drawn. Returns (rc, stderr text, stdout
    text, whether the resize happened while the run went on)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    p = subprocess.Popen([binary] + [str(a) for a in argv], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    out = []
    t = threading.Thread(target=lambda: out.append(p.stdout.read()))
    t.start()
    buf, resized = b"", False
    while True:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                data = b""
            if not data:
                break
            buf += data
            if resize_to and not resized and b"/" in buf and p.poll() is None:
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, resize_to, 0, 0))
                p.send_signal(signal.SIGWINCH)
                resized = True
        elif p.poll() is not None:
            continue  # read what is left until EIO
    os.close(master)
    rc = p.wait(timeout=timeout)
    t.join()
    return rc, buf.decode("utf-8", "replace"), out[0].decode("utf-8", "replace"), resized


def segments(err):
    """What the terminal was asked to show, line by line and redraw by redraw."""
    return [s for s in re.split(r"[\r\n]", err.replace("\x1b[K", "")) if s]


def main():
    C.import_deps("numpy", "onnx")
    args = C.parse_args(__doc__)
    G = C.gen_models()
    F = C.Failures()
    w = args.work
    zoo = os.path.join(w, "zoo")
    G.make_zoo(zoo, count=5)  # 5 ONNX models (one with external data) + README.txt
    shutil.copy(os.path.join(PTH, "tied.pth"), os.path.join(zoo, "tied.pth"))
    models = 6
    out, rep = os.path.join(w, "out"), os.path.join(w, "rep.jsonl")

    # ---- the options in the records ------------------------------------------------------
    r = C.run(args.bin, "convert", "--report", rep, zoo, "-o", out)
    F.check(r.rc == 0, "a first run converts the zoo", r.describe())
    recs, sums = report(rep)
    F.check(len(recs) == models and all(
        isinstance(m.get("options"), str) and m.get("options_hash") == "%016x" %
        fnv1a64(m["options"]) for m in recs),
        "every record has options and options_hash (FNV-1a 64 of options, 16 hex digits)",
        json.dumps([(m.get("options"), m.get("options_hash")) for m in recs])[:800])
    keys = [[kv.split("=", 1)[0] for kv in m.get("options", "").split(" ")] for m in recs]
    F.check(all(k == sorted(k) and "dedup" in k and
                not {"jobs", "device", "verify", "threads"} & set(k) for k in keys),
            "options are key=value pairs sorted by key, without --jobs, --device, --verify",
            str(keys[:2]))
    first = {m["rel"]: m for m in recs}
    s0 = sums[-1] if sums else {}
    line = [l for l in r.out.splitlines() if l.startswith("if_dup.onnx") or "/if_dup.onnx ->" in l]
    F.check(line and "dedup merged 1 tensor," in line[0],
            "singular: 'dedup merged 1 tensor'", r.out)
    tot = [l for l in r.out.splitlines() if l.startswith("total:")]
    F.check(tot and ", 1 not a model," in tot[0] and
            " %s -> %s (" % (C.human_bytes(s0.get("bytes_in", -1)),
                             C.human_bytes(s0.get("bytes_out", -1))) in tot[0] and
            re.search(r", [0-9.]+ s, %s/s$" % C.SIZE, tot[0]) is not None,
            "the total line: '1 not a model', bytes in inspect's units, time and rate",
            r.out)

    # ---- --resume over a finished run --------------------------------------------------------
    for extra, what in (([], "--resume"), (["--jobs", "1", "--device", "cpu"],
                                           "--resume --jobs 1 --device cpu")):
        r = C.run(args.bin, "convert", "--resume", "--report", rep, *extra, zoo, "-o", out)
        s = report(rep)[1][-1]
        want = {"models": models, "ok": models, "converted": 0, "resumed": models,
                "reconverted_options": 0, "failed": 0, "jobs": 0,
                "bytes_in": s0.get("bytes_in"), "bytes_out": s0.get("bytes_out")}
        got = {k: s.get(k) for k in want}
        F.check(r.rc == 0 and got == want, "%s over a finished run: every model resumed, and "
                "the summary's totals count them" % what,
                "got %s\nexpected %s\n%s" % (got, want, r.describe()))
        tot = [l for l in r.out.splitlines() if l.startswith("total:")]
        F.check(tot and tot[0].startswith("total: 0 converted, %d resumed, 0 failed" % models)
                and "(%.2fx)" % (s0["bytes_in"] / s0["bytes_out"]) in tot[0] and
                "/s" not in tot[0],
                "%s: the total line counts the resumed models' bytes, and gives no rate" % what,
                r.out)

    # ---- --resume with other options ---------------------------------------------------------
    r = C.run(args.bin, "convert", "--resume", "--no-dedup", "--report", rep, zoo, "-o", out)
    recs, sums = report(rep)
    s = sums[-1]
    F.check(r.rc == 0 and s.get("reconverted_options") == models and
            s.get("converted") == models and s.get("resumed") == 0 and s.get("ok") == models,
            "--resume --no-dedup converts every model again (reconverted_options %d)" % models,
            json.dumps(s) + "\n" + r.describe())
    F.check(re.search(r"; %d converted again because their options changed$" % models, r.out,
                      re.M) is not None, "the total line says how many were converted again "
            "because their options changed", r.out)
    new = {m["rel"]: m for m in recs[-models:]}
    F.check(all("dedup=0" in m["options"].split(" ") and
                m["options_hash"] != first[m["rel"]]["options_hash"] for m in new.values()),
            "the new records carry the new options", json.dumps(list(new.values())[0])[:400])
    r = C.run(args.bin, "convert", "--resume", "--no-dedup", "--int8", "--report", rep, zoo, "-o",
              out)
    s = report(rep)[1][-1]
    F.check(r.rc == 0 and s.get("reconverted_options") == models - 1 and s.get("resumed") == 1,
            "--int8 changes the ONNX models' options only: the checkpoint stays resumed",
            json.dumps(s) + "\n" + r.describe())
    # a record written before options were recorded
    with open(rep) as f:
        lines = f.read().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        o = json.loads(lines[i])
        if o.get("rel") == "mlp_dup.onnx":
            o.pop("options")
            o.pop("options_hash")
            lines[i] = json.dumps(o)
            break
    with open(rep, "w") as f:
        f.write("\n".join(lines) + "\n")
    r = C.run(args.bin, "convert", "--resume", "--no-dedup", "--int8", "--report", rep, zoo, "-o",
              out)
    recs, sums = report(rep)
    F.check(r.rc == 0 and sums[-1].get("reconverted_options") == 1 and
            sums[-1].get("resumed") == models - 1 and recs[-1].get("rel") == "mlp_dup.onnx",
            "a record without options (an older report) is converted again, and counted",
            json.dumps(sums[-1]) + "\n" + r.describe())
    # list options: their order does not count
    r1 = C.run(args.bin, "convert", "--resume", "--fp16", "--block-op", "MatMul,Gemm", "--report",
               rep, zoo, "-o", out)
    r2 = C.run(args.bin, "convert", "--resume", "--fp16", "--block-op", "Gemm", "--block-op",
               "MatMul", "--report", rep, zoo, "-o", out)
    s1, s2 = report(rep)[1][-2:]
    F.check(r1.rc == 0 and r2.rc == 0 and s1.get("reconverted_options") == models and
            s2.get("resumed") == models,
            "--block-op MatMul,Gemm then --block-op Gemm --block-op MatMul: the same options",
            json.dumps([s1, s2]) + "\n" + r2.describe())

    # ---- -q: errors only ---------------------------------------------------------------------
    r = C.run(args.bin, "convert", "-q", zoo, "-o", os.path.join(w, "quiet"))
    F.check(r.rc == 0 and r.out == "" and r.err == "",
            "-q prints nothing when nothing fails (no 'skipped (not a model)' either)",
            r.describe())
    r = C.run(args.bin, "convert", zoo, "-o", os.path.join(w, "loud"))
    F.check("README.txt: skipped (not a model)" in r.err,
            "without -q a file that is not a model is noted", r.describe())

    # ---- a batch whose models all fail -------------------------------------------------------
    bad = os.path.join(w, "bad")
    os.makedirs(bad)
    for n, body in (("a.onnx", b"junk\n"), ("b.onnx", b"more junk\n")):
        with open(os.path.join(bad, n), "wb") as f:
            f.write(body)
    r = C.run(args.bin, "convert", bad, "-o", os.path.join(w, "bad_out"))
    tot = [l for l in r.out.splitlines() if l.startswith("total:")]
    F.check(r.rc == 1 and tot and re.fullmatch(r"total: 0 converted, 2 failed, [0-9.]+ s",
                                                 tot[0]) is not None,
            "all failed: the total line says 2 failed, with no bytes, ratio or rate", r.describe())
    F.check(re.search(r"^onnx +0 +2 +0 B +0 B +-$", r.out, re.M) is not None,
            "all failed: the table's ratio is '-'", r.out)

    # ---- the progress bar on a terminal ------------------------------------------------------
    many = os.path.join(w, "many")
    for i in range(120):
        d = os.path.join(many, "group_%d" % (i % 4), "a_rather_long_folder_name_%03d" % i)
        os.makedirs(d)
        shutil.copy(os.path.join(zoo, "mlp_dup.onnx"), os.path.join(d, "model_%03d.onnx" % i))
    shutil.copytree(os.path.join(zoo, "external"), os.path.join(many, "external"))
    with open(os.path.join(many, "broken.onnx"), "wb") as f:
        f.write(b"junk\n")
    n_many = 122
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(many) for f in fs)
    for cols in (40, 200):
        o = os.path.join(w, "tty_%d" % cols)
        rc, err, sout, _ = on_tty(args.bin, ["convert", "--jobs", "1", many, "-o", o], cols)
        segs = segments(err)
        bars = [s for s in segs if BAR_RE.match(s)]
        F.check(rc == 1 and bars, "%d columns: a progress bar is drawn (exit 1: one model "
                "fails)" % cols, err[-1500:])
        F.check(all(len(s) <= cols - 1 for s in bars),
                "%d columns: the bar never reaches the last column (never wraps)" % cols,
                "\n".join(s for s in bars if len(s) > cols - 1)[:1500])
        F.check(bars and re.sub(r"^\[[#-]+\] ", "", bars[-1]).startswith(
            "%d/%d " % (n_many, n_many)) and
                "1 failed" in bars[-1],
                "%d columns: the last bar says %d/%d and 1 failed" % (cols, n_many, n_many),
                bars[-1] if bars else err[-500:])
        if cols == 200:
            F.check(bars and " %s of %s, " % (C.human_bytes(total), C.human_bytes(total))
                    in bars[-1], "the bar's byte total counts the external data file (%d bytes)"
                    % total, bars[-1] if bars else "")
            # the ticker redraws every 200 ms: a run shorter than that (an idle machine does
            # the 122 small models in about 0.13 s) draws only the first bar (0/N, before any
            # model starts) and the last (N/N, none converting); only a bar drawn mid-run can
            # name the file being converted
            mid = [s for s in bars if not re.search(r"\] (0|%d)/%d " % (n_many, n_many), s)]
            if not mid:
                print("NOTE: the run ended before the bar was redrawn mid-run (%d bars); the "
                      "file name in the bar is not judged this time" % len(bars))
            else:
                F.check(any(s.startswith("[") and ("model_" in s or "external" in s)
                            for s in mid),
                        "on a wide terminal the bar has a graph and the file being converted",
                        "\n".join(mid[:5]))
        idx = [i for i, s in enumerate(segs) if s.startswith("modelshrink: 1 of %d models "
                                                              "failed:" % n_many)]
        F.check(idx and idx[-1] + 1 < len(segs) and
                segs[idx[-1] + 1].startswith("  %s: " % os.path.join(many, "broken.onnx")),
                "%d columns: the failures are repeated at the end, with path and message" % cols,
                "\n".join(segs[-6:]))
        lines = [l for l in sout.splitlines() if C.CONVERT_LINE_RE.match(l)]
        F.check(len(lines) == n_many - 1,
                "%d columns: stdout, not a terminal, still gets one line per model" % cols,
                "%d lines" % len(lines))
    o = os.path.join(w, "tty_resize")
    rc, err, _, resized = on_tty(args.bin, ["convert", "--jobs", "1", many, "-o", o], 200,
                                 resize_to=40)
    bars = [s for s in segments(err) if BAR_RE.match(s)]
    narrow = [i for i, s in enumerate(bars) if len(s) <= 39]
    F.check(bool(bars), "a resized run draws a bar", err[-500:])
    if not resized or not bars or len(bars[0]) <= 40 or not narrow:
        # on a loaded machine the run can end before the signal is handled: nothing to judge
        print("NOTE: the run ended before the resize took effect (resized=%s, %d bars); the "
              "resize is not judged this time" % (resized, len(bars)))
    else:
        F.check(any(len(s) > 40 for s in bars) and
                all(len(s) <= 39 for s in bars[narrow[0]:]),
                "a resize mid-run: the bar was wide, then every bar after the resize fits 40 "
                "columns", "\n".join(bars)[:2000])
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
