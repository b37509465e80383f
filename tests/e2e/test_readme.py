#!/usr/bin/env python3
"""End-to-end: README.md's examples show what modelshrink really prints.

Every block in README.md introduced by `<!-- example: NAME -->` is a ```console block of
`$ modelshrink ...` commands, each followed by its output. The test makes the example files with
tests/fixtures/make_readme_zoo.py (Debian's torch and torchvision, run by /usr/bin/python3),
runs the commands in order in that folder (`modelshrink` is the binary under test; no shell),
and compares each command's stdout with the README's lines:
  - volatile fields are masked on both sides: durations ("0.06 s") and rates ("1.5 GB/s");
  - every other character must match;
  - lines with " -> " (one per model) may come in any order (parallel batches), every other line
    (tables, totals, inspect) in the README's order;
  - the exit code must be 0 and stderr empty.
It also checks that the page starts with the job: the first example begins within README.md's
first 120 lines, and there are at least three examples.
Skips (77) when /usr/bin/python3 cannot import torch and torchvision."""

import os
import re
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_readme"
ROOT = os.path.dirname(os.path.dirname(C.HERE))
README = os.path.join(ROOT, "README.md")
GEN = os.path.join(C.FIXTURES, "make_readme_zoo.py")
SYS_PY = "/usr/bin/python3"
MASKS = [(re.compile(r"\b\d+(?:\.\d+)? s\b"), "<time>"),
         (re.compile(r"\b\d+(?:\.\d+)? (?:[kMGTP]?B)/s\b"), "<rate>")]


def mask(line):
    for rx, rep in MASKS:
        line = rx.sub(rep, line)
    return line.rstrip()


def examples(text):
    """[(name, first line number, [(command, [expected lines])])]"""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"<!-- example: (\S+) -->", lines[i])
        if not m:
            i += 1
            continue
        start = i + 1
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        j += 1
        cmds = []
        while j < len(lines) and not lines[j].startswith("```"):
            if lines[j].startswith("$ "):
                cmds.append((lines[j][2:], []))
            elif cmds:
                cmds[-1][1].append(lines[j])
            j += 1
        out.append((m.group(1), start, cmds))
        i = j + 1
    return out


def main():
    args = C.parse_args(__doc__)
    probe = subprocess.run([SYS_PY, "-c", "import torch, torchvision"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        C.skip("%s cannot import torch and torchvision (Debian's python3-torch and "
               "python3-torchvision), which make the example files" % SYS_PY)
    F = C.Failures()
    w = args.work
    r = subprocess.run([SYS_PY, GEN, w], capture_output=True, text=True)
    if not F.check(r.returncode == 0, "the example files are made", r.stderr[-2000:]):
        return F.finish(NAME)
    text = open(README, encoding="utf-8").read()
    exs = examples(text)
    F.check(len(exs) >= 3, "README.md has at least three examples (%d)" % len(exs))
    F.check(bool(exs) and exs[0][1] <= 120,
            "the first example starts within README.md's first 120 lines (line %d)"
            % (exs[0][1] if exs else 0))
    for name, line, cmds in exs:
        F.check(bool(cmds), "example %s (line %d) has commands" % (name, line))
        for cmd, expected in cmds:
            argv = shlex.split(cmd)
            if not F.check(argv and argv[0] == "modelshrink",
                           "example %s: '%s' runs modelshrink" % (name, cmd)):
                continue
            p = subprocess.run([args.bin] + argv[1:], cwd=w, capture_output=True, text=True)
            what = "example %s: $ %s" % (name, cmd)
            F.check(p.returncode == 0, what + ": exits 0", "exit %d\n%s" % (p.returncode,
                                                                           p.stderr[-1500:]))
            F.check(p.stderr == "", what + ": nothing on stderr", p.stderr[-1500:])
            got = [mask(x) for x in p.stdout.splitlines()]
            want = [mask(x) for x in expected]
            detail = "README:\n%s\nactual:\n%s" % ("\n".join(want), "\n".join(got))
            F.check(sorted(got) == sorted(want),
                    what + ": prints the README's lines (%d)" % len(want), detail)
            F.check([x for x in got if " -> " not in x] == [x for x in want if " -> " not in x],
                    what + ": tables and totals in the README's order", detail)
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
