#!/usr/bin/env python3
"""End-to-end: the HTML pages, `inspect --html` and `report html`, rendered by a real browser.

Fixtures are made the way users make them: a torch.save training checkpoint with Adam state and
a torchvision SqueezeNet exported with torch.onnx.export (Debian's torch and torchvision, run by
/usr/bin/python3), an ONNX MLP with duplicate weights and a hostile tensor name (the onnx
package), and a real batch report (convert --report, in two shards, merged by report merge).

Each page is rendered by headless Chromium (`--dump-dom`), and the figures of `inspect --json`
and of the reports must appear in the rendered DOM: file bytes, tensor bytes, optimizer-state
bytes, the bytes dedup saves, the output bytes of `convert --fp16` (the same figure as a real
`convert --fp16` of the file), model counts, totals and failure messages. A screenshot of each
page must not be blank (decoded with zlib: many colours, some non-white pixels). The pages hold
no network reference; a tensor named `<script>...` and an error message holding HTML come out as
text. Bad input fails with one line naming the file and leaves nothing; a 10,000-model report
(a real report's records replicated under other names, merged from shards by report merge)
makes a page under 5 MB that Chromium renders with all its rows, sorted by ratio without scripts.

Skips (77) without chromium (Debian's `chromium`, scripts/deps.sh) or torch, except under CI
(env CI set), where a missing chromium fails."""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_html"
SYS_PY = "/usr/bin/python3"
HOSTILE = "<script>alert(1)</script>&\"'.weight"

MAKE_TORCH = r"""
import os, sys, torch, torchvision
out = sys.argv[1]
torch.set_num_threads(1)
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                        torch.nn.BatchNorm1d(128), torch.nn.Linear(128, 10))
opt = torch.optim.Adam(m.parameters(), lr=1e-3)
x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
for _ in range(2):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(m(x), y).backward()
    opt.step()
torch.save({"epoch": 2, "model_state_dict": m.state_dict(),
            "optimizer_state_dict": opt.state_dict()}, os.path.join(out, "adam.pth"))
torch.manual_seed(2)
net = torchvision.models.squeezenet1_1(weights=None).eval()
torch.onnx.export(net, torch.randn(1, 3, 224, 224), os.path.join(out, "squeezenet.onnx"),
                  opset_version=13, input_names=["image"], output_names=["logits"])
"""


def chromium():
    for n in ("chromium", "chromium-browser"):
        p = shutil.which(n)
        if p:
            return p
    return None


def render(browser, page, png=None):
    """The DOM after Chromium loaded `page` (scripts run); a screenshot to `png` when given."""
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--user-data-dir=" + os.path.join(os.path.dirname(page), ".chromium-profile")]
    url = "file://" + os.path.abspath(page)
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, timeout=300)
    if png:
        subprocess.run(base + ["--screenshot=" + png, "--window-size=1200,1600", url],
                       capture_output=True, timeout=300)
    return dom.stdout.decode("utf-8", "replace")


def png_stats(path):
    """(distinct colours, fraction of non-white pixels) of an 8-bit RGB/RGBA PNG."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return 0, 0.0
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    if depth != 8 or ctype not in (2, 6):
        return 0, 0.0
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    prev = bytearray(stride)
    colours, nonwhite, total = set(), 0, 0
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        prev = line
        if y % 4 == 0:
            for x in range(0, w, 4):
                px = bytes(line[x * bpp:x * bpp + 3])
                colours.add(px)
                total += 1
                nonwhite += px != b"\xff\xff\xff"
    return len(colours), nonwhite / max(total, 1)


def page_checks(F, what, path, dom, png, max_bytes):
    text = open(path, encoding="utf-8").read()
    F.check(len(text.encode()) < max_bytes, "%s: the page is under %d bytes (%d)"
            % (what, max_bytes, len(text.encode())))
    F.check(text.startswith("<!DOCTYPE html>"), what + ": an HTML5 document")
    bad = re.findall(r"(?i)(https?:|src\s*=|href\s*=|@import|url\(|<link|<iframe|<img)", text)
    F.check(not bad, what + ": no reference outside the file", str(bad[:5]))
    F.check("</html>" in dom, what + ": Chromium rendered it", dom[-500:])
    if png:
        colours, ink = png_stats(png)
        F.check(colours >= 8 and 0.02 < ink < 0.98,
                what + ": the screenshot is not blank (%d colours, %.1f%% not white)"
                % (colours, 100 * ink))


def leftovers(folder, keep):
    return sorted(n for n in os.listdir(folder) if n not in keep and n != ".chromium-profile")


def make_onnx(w):
    np, onnx = C.import_deps("numpy", "onnx")
    g = C.gen_models()
    m = g.make_mlp_dup(width=128)
    for t in m.graph.initializer:
        if t.name == "fc2.weight":
            t.name = HOSTILE
    for n in m.graph.node:
        n.input[:] = [HOSTILE if x == "fc2.weight" else x for x in n.input]
    path = os.path.join(w, "mlp_dup.onnx")
    g.save(m, path)
    return path


def inspect_json(F, binary, path):
    r = C.run(binary, "inspect", "--json", path)
    F.check(r.rc == 0, "inspect --json " + path, r.describe())
    return json.loads(r.out)["files"][0] if r.rc == 0 else {}


def test_inspect(F, args, browser, w, fixtures):
    B = args.bin
    pages = os.path.join(w, "pages")
    os.makedirs(pages)
    for src, kind in fixtures:
        base = os.path.basename(src)
        out = os.path.join(pages, base + ".html")
        png = os.path.join(w, base + ".png")
        t0 = time.time()
        r = C.run(B, "inspect", "--html", out, src)
        took = time.time() - t0
        if not F.check(r.rc == 0 and r.err == "" and r.out == "",
                       "inspect --html %s: exit 0, silent" % base, r.describe()):
            continue
        F.check(leftovers(pages, {os.path.basename(p) for p in os.listdir(pages)
                                  if p.endswith(".html")}) == [],
                base + ": no temporary file or folder is left beside the page",
                str(os.listdir(pages)))
        t0 = time.time()
        dom = render(browser, out, png)
        print("%s: page %d bytes, inspect --html %.2f s, render %.2f s"
              % (base, os.path.getsize(out), took, time.time() - t0))
        page_checks(F, "inspect --html " + base, out, dom, png, 2_000_000)
        j = inspect_json(F, B, src)
        total = j.get("file_bytes", -1) + j.get("external_bytes", 0)
        for key, v in (("file bytes", total), ("tensor bytes", j.get("tensor_bytes")),
                       ("dedup's saved bytes", j.get("duplicates", {}).get("saved_bytes"))):
            F.check("(%d bytes)" % v in dom, "%s: the DOM shows the %s (%d)" % (base, key, v))
        for t in j.get("largest", [])[:3]:
            F.check(str(t["bytes"]) in dom and esc(t["name"]) in dom,
                    "%s: the DOM lists the largest tensor %s" % (base, t["name"]))
        F.check(dom.count("<rect") >= 5, base + ": the treemap has rectangles")
        F.check("real conversion" in dom, base + ": the page says the savings are real")
        # the FP16 row is what `convert --fp16` writes
        conv = os.path.join(w, "conv", base + (".onnx" if kind == "onnx" else ".safetensors"))
        r = C.run(B, "convert", "--fp16", "-q", src, "-o", conv)
        if F.check(r.rc == 0, base + ": convert --fp16", r.describe()):
            n = os.path.getsize(conv)
            F.check(re.search(r"<code>--fp16</code></td>(?:(?!</tr>).)*\b%d\b" % n, dom, re.S) is not None,
                    "%s: the FP16 row shows convert --fp16's output bytes (%d)" % (base, n))
        if kind == "pth":
            opt = j["breakdown"]["optimizer_state"]
            F.check(opt > 0 and "(%d bytes)" % opt in dom,
                    "%s: the DOM shows the optimizer state's bytes (%d)" % (base, opt))
            F.check("optimizer state" in dom and "graph and metadata" in dom,
                    base + ": the legend names optimizer state and metadata")
            F.check("does not apply" in dom, base + ": INT8 and INT4 say why they do not apply")
        if kind == "onnx":
            r = C.run(B, "convert", "--int4", "-q", src, "-o", os.path.join(w, "conv", "i4.onnx"))
            F.check(r.rc == 0, base + ": convert --int4 runs", r.describe())
        if base == "mlp_dup.onnx":
            F.check("duplicated copies" in dom, base + ": duplicates have their colour")
            F.check("&lt;script&gt;alert(1)&lt;/script&gt;" in dom,
                    base + ": the hostile tensor name is shown as text")
            F.check("<script" not in dom.lower(), base + ": ... and runs as no script")
            F.check(HOSTILE not in open(out, encoding="utf-8").read(),
                    base + ": the page holds the name only escaped")

    # --no-savings: no conversions, no section
    src = fixtures[0][0]
    out = os.path.join(pages, "quick.html")
    r = C.run(B, "inspect", "--html", out, "--no-savings", src)
    if F.check(r.rc == 0, "inspect --html --no-savings", r.describe()):
        text = open(out, encoding="utf-8").read()
        F.check("id=savings" not in text and "Where the bytes go" in text,
                "--no-savings: the page has the map but no savings section")

    # 10,000 tensors: the treemap folds the small ones, the page stays small
    many = os.path.join(w, "many.safetensors")
    hdr, off = {}, 0
    for i in range(10000):
        n = (16, 64, 256, 1024)[i % 4]
        hdr["model.layers.%d.block%d.sub%d.w%d" % (i // 400, i // 40 % 10, i // 4 % 10, i % 4)] = {
            "dtype": "F32", "shape": [n], "data_offsets": [off, off + 4 * n]}
        off += 4 * n
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(many, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + bytes(off))
    out = os.path.join(pages, "many.html")
    r = C.run(B, "inspect", "--html", out, "--no-savings", many)
    if F.check(r.rc == 0, "inspect --html of a 10,000-tensor model", r.describe()):
        text = open(out, encoding="utf-8").read()
        print("10,000 tensors: page %d bytes, %d rectangles" % (len(text), text.count("<rect")))
        F.check(len(text) < 400_000 and 50 < text.count("<rect") < 5000,
                "10,000 tensors: a page under 400 kB, its map of 50 to 5000 rectangles")
        F.check("(%d bytes)" % os.path.getsize(many) in text, "10,000 tensors: the file's bytes")

    # bad input: one line naming the file, exit 1, nothing written
    bad = os.path.join(w, "bad.onnx")
    with open(bad, "wb") as f:
        f.write(b"junk\n")
    before = sorted(os.listdir(pages))
    out = os.path.join(pages, "bad.html")
    r = C.run(B, "inspect", "--html", out, bad)
    F.check(r.rc == 1 and r.err.count("\n") == 1 and r.err.startswith("modelshrink: " + bad + ":"),
            "inspect --html of a bad file: one line naming it, exit 1", r.describe())
    F.check(sorted(os.listdir(pages)) == before, "... and nothing is written",
            str(sorted(os.listdir(pages))))
    r = C.run(B, "inspect", "--html", os.path.join(w, "no", "such", "dir", "x.html"),
              "--no-savings", src)
    F.check(r.rc == 1 and "x.html: cannot write" in r.err and r.err.count("\n") == 1,
            "inspect --html into a missing folder: exit 1, one line", r.describe())
    for argv, what in ((["--html", out, "--json", src], "--html with --json"),
                       (["--no-savings", src], "--no-savings without --html"),
                       (["--html", out, src, src], "--html with two files"),
                       (["--html", src, src], "--html naming the input")):
        r = C.run(B, "inspect", *argv)
        F.check(r.rc == 2 and r.err.startswith("modelshrink: inspect: "),
                "inspect %s: usage error (exit 2)" % what, r.describe())
    F.check(sorted(os.listdir(pages)) == before, "usage errors write nothing")


def esc(s):
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def test_report(F, args, browser, w, models):
    B = args.bin
    zoo = os.path.join(w, "zoo")
    os.makedirs(os.path.join(zoo, "sub"))
    for i, m in enumerate(models):
        shutil.copy(m, os.path.join(zoo, "sub" if i % 2 else "", os.path.basename(m)))
    with open(os.path.join(zoo, "broken.onnx"), "wb") as f:
        f.write(b"junk\n")
    shards = []
    for k in range(2):
        rep = os.path.join(w, "shard%d.jsonl" % k)
        r = C.run(B, "convert", "-q", "--fp16", "--shard", "%d/2" % k, "--report", rep, zoo,
                  "-o", os.path.join(w, "zoo-out"))
        F.check(r.rc in (0, 1) and os.path.exists(rep), "shard %d converts" % k, r.describe())
        shards.append(rep)
    merged = os.path.join(w, "merged.jsonl")
    r = C.run(B, "report", "merge", *shards, "-o", merged)
    F.check(r.rc == 1, "report merge of the shards (a model failed: exit 1)", r.describe())
    lines = [json.loads(x) for x in open(merged)]
    summary = [x for x in lines if x["type"] == "summary"][0]
    recs = [x for x in lines if x["type"] == "model"]
    fail = [x for x in recs if x["status"] != "ok"]
    pages = os.path.join(w, "rpages")
    os.makedirs(pages)
    for what, reports in (("merged", [merged]), ("shards", shards)):
        out = os.path.join(pages, what + ".html")
        png = os.path.join(w, "report-" + what + ".png")
        r = C.run(B, "report", "html", *reports, "-o", out)
        if not F.check(r.rc == 0 and r.err == "" and r.out == "",
                       "report html (%s): exit 0, silent" % what, r.describe()):
            continue
        dom = render(browser, out, png)
        page_checks(F, "report html " + what, out, dom, png, 1_000_000)
        F.check('<b id="models">%d</b>' % summary["models"] in dom
                and '<span id="ok">%d</span>' % summary["ok"] in dom
                and '<span id="failed">%d</span>' % summary["failed"] in dom,
                "report html %s: the DOM shows the model counts (%d, %d ok, %d failed)"
                % (what, summary["models"], summary["ok"], summary["failed"]))
        for key in ("bytes_in", "bytes_out"):
            F.check("(%d bytes)" % summary[key] in dom,
                    "report html %s: the DOM shows the total %s (%d)" % (what, key, summary[key]))
        for x in fail:
            F.check(esc(x["error"]) in dom and esc(x["rel"]) in dom,
                    "report html %s: the failure of %s with its message" % (what, x["rel"]))
        for x in recs:
            F.check("data-v=\"%d\"" % x["bytes_in"] in dom,
                    "report html %s: a row for %s" % (what, x["rel"]))
        F.check("<svg" in dom and "ratio" in dom, "report html %s: the histogram" % what)

    # a hostile message, a record cut short at the end, then bad reports
    evil = dict(recs[0], rel="<img src=x onerror=alert(1)>.onnx", status="error",
                error="m.onnx: <script>alert(2)</script>")
    hostile = os.path.join(w, "hostile.jsonl")
    with open(hostile, "w") as f:
        f.write(json.dumps(evil) + "\n" + json.dumps(recs[0]) + "\n" + '{"type":"model","re')
    out = os.path.join(pages, "hostile.html")
    r = C.run(B, "report", "html", hostile, "-o", out)
    if F.check(r.rc == 0, "report html: a last record cut short is ignored", r.describe()):
        dom = render(browser, out)
        F.check("<img" not in dom and "&lt;script&gt;alert(2)" in dom,
                "report html: names and messages holding HTML come out as text")
    before = sorted(os.listdir(pages))
    notjson = os.path.join(w, "notjson.jsonl")
    with open(notjson, "w") as f:
        f.write(json.dumps(recs[0]) + "\nthis is not json\n")
    empty = os.path.join(w, "empty.jsonl")
    open(empty, "w").close()
    for rep, msg in ((notjson, notjson + ": line 2: not a JSON object"),
                     (empty, empty + ": no model records"),
                     (os.path.join(w, "missing.jsonl"), "missing.jsonl: cannot read")):
        r = C.run(B, "report", "html", rep, "-o", os.path.join(pages, "bad.html"))
        F.check(r.rc == 2 and msg in r.err and r.err.count("\n") == 1,
                "report html %s: one line naming it, exit 2" % os.path.basename(rep),
                r.describe())
    F.check(sorted(os.listdir(pages)) == before, "bad reports write nothing")
    for argv in (["report", "html", merged], ["report", "html", "-o", out]):
        r = C.run(B, *argv)
        F.check(r.rc == 2, "%s: usage error" % " ".join(argv[1:]), r.describe())

    # 10,000 models: the real records under other names, in four shard reports, merged
    big = []
    for i in range(10000):
        x = dict(recs[i % len(recs)])
        x["rel"] = "group_%02d/model_%05d/%s" % (i % 37, i, os.path.basename(x["rel"]))
        big.append(x)
    parts = []
    for k in range(4):
        p = os.path.join(w, "big%d.jsonl" % k)
        with open(p, "w") as f:
            for x in big[k::4]:
                f.write(json.dumps(x) + "\n")
        parts.append(p)
    bigrep = os.path.join(w, "big.jsonl")
    r = C.run(B, "report", "merge", *parts, "-o", bigrep)
    F.check(r.rc in (0, 1) and "merged: 10000 models" in r.err, "report merge of 10,000 records",
            r.describe())
    out = os.path.join(pages, "big.html")
    t0 = time.time()
    r = C.run(B, "report", "html", bigrep, "-o", out)
    took = time.time() - t0
    if F.check(r.rc == 0, "report html of 10,000 models", r.describe()):
        t0 = time.time()
        dom = render(browser, out, os.path.join(w, "big.png"))
        print("10,000 models: page %d bytes, report html %.2f s, render %.2f s"
              % (os.path.getsize(out), took, time.time() - t0))
        page_checks(F, "report html 10,000", out, dom, os.path.join(w, "big.png"), 5_000_000)
        body = dom.rsplit("<tbody>", 1)[-1]
        F.check(body.count("<tr") == 10000, "10,000 models: the DOM has 10,000 rows (%d)"
                % body.count("<tr"))
        F.check('<b id="models">10000</b>' in dom, "10,000 models: counted")
        ratios = [float(m) for m in re.findall(r"<td>\w+</td><td>ok</td><td>([0-9.]+)</td>",
                                                body)]
        F.check(ratios and ratios == sorted(ratios, reverse=True),
                "10,000 models: the table is sorted by ratio without scripts")


def main():
    args = C.parse_args(__doc__)
    browser = chromium()
    if not browser:
        if os.environ.get("CI"):
            print("FAIL: chromium is not installed (scripts/deps.sh installs it); CI needs it")
            return 1
        C.skip("chromium is not installed (Debian's chromium: scripts/deps.sh)")
    probe = subprocess.run([SYS_PY, "-c", "import torch, torchvision"], capture_output=True)
    if probe.returncode != 0:
        C.skip("%s cannot import torch and torchvision, which make the fixtures" % SYS_PY)
    F = C.Failures()
    w = args.work
    r = subprocess.run([SYS_PY, "-c", MAKE_TORCH, w], capture_output=True, text=True)
    if not F.check(r.returncode == 0, "the torch fixtures are made", r.stderr[-2000:]):
        return F.finish(NAME)
    onnx_dup = make_onnx(w)
    fixtures = [(os.path.join(w, "adam.pth"), "pth"), (onnx_dup, "onnx"),
                (os.path.join(w, "squeezenet.onnx"), "onnx")]
    test_inspect(F, args, browser, w, fixtures)
    test_report(F, args, browser, w, [p for p, _ in fixtures])
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
