"""BENCHMARKS.md: one section per benchmark case, each replaceable on its own.

Each case's section sits between two HTML comments:

    <!-- bench-case: dedup-albert -->
    ## Dedup: ALBERT-shaped
    ...
    <!-- /bench-case: dedup-albert -->

Writing a case replaces only its own section (or appends it when it is new); every other section,
and anything written by hand outside the markers, is kept as it is. A section carries its own
machine description and reproduction command, because sections may come from different runs.
"""

import os
import re

HEADER = """# Benchmarks

Written by `scripts/bench/run.sh` (see `scripts/bench/bench.py --help`). Each section below comes
from one run of one case, carries the machine it ran on and the command that reproduces it, and is
replaced when that case runs again; the other sections are left as they are.
"""


def _markers(case_id):
    return "<!-- bench-case: %s -->" % case_id, "<!-- /bench-case: %s -->" % case_id


def update_section(path, case_id, body, first=False):
    """Put ``body`` (markdown, starting with its '## ' heading) into ``path`` as ``case_id``'s
    section; a new section goes at the end, or right after the header with ``first``."""
    begin, end = _markers(case_id)
    block = "%s\n%s\n%s\n" % (begin, body.strip("\n"), end)
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else HEADER
    pat = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pat.search(text):
        text = pat.sub(lambda _m: block, text, count=1)
    elif first and "\n<!-- bench-case:" in text:
        at = text.index("\n<!-- bench-case:") + 1
        text = text[:at] + block + "\n" + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def table(columns, rows):
    """A markdown table. ``columns``: [(key, heading, align)] with align 'l' or 'r'; ``rows``: list
    of dicts whose values are already formatted strings (missing keys print as an empty cell)."""
    head = "| " + " | ".join(h for _k, h, _a in columns) + " |"
    rule = "|" + "|".join("---:" if a == "r" else "---" for _k, _h, a in columns) + "|"
    lines = [head, rule]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k, _h, _a in columns) + " |")
    return "\n".join(lines)


def machine_block(m, versions, build):
    lines = [
        "- CPU: %s, %d cores; RAM %.1f GiB; %s; filesystem %s" % (
            m["cpu"], m["cores"], m["ram_gib"], m["os"], m["fs"]),
        "- modelshrink build: %s" % build,
        "- versions: " + ", ".join("%s %s" % kv for kv in versions),
        "- python (peers and checks): %s" % m["python"],
    ]
    return "\n".join(lines)
