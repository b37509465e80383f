"""Benchmark cases for PyTorch checkpoints: modelshrink convert (checkpoint -> safetensors) against
torch.load + safetensors.torch.save_file."""

import json
import os
import subprocess

import harness as h
from harness import case

PEER = os.path.join(h.HERE, "peer_pth.py")
TORCH_PY = os.path.join(h.ROOT, ".venv-torch", "bin", "python")
SYS_PY = "/usr/bin/python3"

# A ResNet-18-style CNN (base width `width`) plus an MLP head 512w/64 -> hidden -> hidden ->
# classes. Full: ~42.4M FP32 parameters (~170 MB of weights; with Adam's exp_avg and exp_avg_sq
# the checkpoint is ~3x that, ~510 MB). Quick: ~2.5M parameters, a ~30 MB checkpoint.
CKPT_FULL = dict(width=64, hidden=4096, classes=3000, steps=2, seed=0)
CKPT_QUICK = dict(width=16, hidden=1024, classes=500, steps=2, seed=0)
TARGET_SPEEDUP = 10.0        # modelshrink at least this many times faster than the peer
TARGET_RSS_SLACK_MIB = 64.0  # modelshrink peak RSS at most output size + this

# Runs in /usr/bin/python3 (Debian's python3-torch). argv: OUT then key=value pairs.
_GEN = r"""
import sys
import torch
import torch.nn as nn
import torch.nn.functional as F

out = sys.argv[1]
p = dict(a.split("=", 1) for a in sys.argv[2:])
width, hidden, classes = int(p["width"]), int(p["hidden"]), int(p["classes"])
steps, seed = int(p["steps"]), int(p["seed"])
torch.manual_seed(seed)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], w
        for i, cout in enumerate([w, 2 * w, 4 * w, 8 * w]):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(Block(cin, cout, stride), Block(cout, cout, 1)))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                  nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


model = Net()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.randn(4, 3, 64, 64)
y = torch.randint(0, classes, (4,))
loss = None
for _ in range(steps):
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
nparams = sum(t.numel() for t in model.parameters())
ckpt = {"epoch": steps, "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(), "loss": float(loss.item()),
        "config": {"arch": "resnet18-style+mlp", "width": width, "hidden": hidden,
                   "classes": classes, "optimizer": "adam", "lr": 1e-3, "seed": seed}}
mode = p.get("mode", "zip")
if mode == "legacy":  # torch < 1.6's format
    torch.save(ckpt, out, _use_new_zipfile_serialization=False)
elif mode == "script":  # a TorchScript archive of the trained model (traced: `python -c` has
    torch.jit.save(torch.jit.trace(model.eval(), x[:1]), out)  # no source for script())
else:
    torch.save(ckpt, out)
print(nparams)
"""

# Runs in .venv (safetensors + numpy): same names, dtypes, shapes and bytes in both files?
_CHECK = r"""
import json, sys
from safetensors import safe_open
def load(path):
    with safe_open(path, framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
a, ma = load(sys.argv[1])
b, mb = load(sys.argv[2])
bad = []
for k in sorted(set(a) | set(b)):
    if k not in a or k not in b:
        bad.append("%s only in %s" % (k, "first" if k in a else "second"))
    elif a[k].dtype != b[k].dtype or a[k].shape != b[k].shape:
        bad.append("%s: %s%s vs %s%s" % (k, a[k].dtype, a[k].shape, b[k].dtype, b[k].shape))
    elif a[k].tobytes() != b[k].tobytes():
        bad.append("%s: bytes differ" % k)
print(json.dumps({"identical": not bad, "tensors": len(a), "tensors_other": len(b),
                  "bytes": int(sum(v.nbytes for v in a.values())), "meta": ma,
                  "meta_other": mb, "problems": bad[:5], "n_problems": len(bad)}))
"""


def torch_venv_problem():
    """Why .venv-torch cannot run the peer, or '' when it can."""
    if not os.path.exists(TORCH_PY):
        return ("%s is missing: scripts/deps.sh --bench makes it (a --system-site-packages venv "
                "of %s that needs Debian's python3-torch)" % (os.path.relpath(TORCH_PY, h.ROOT),
                                                              SYS_PY))
    p = subprocess.run([TORCH_PY, "-c", "import torch, safetensors.torch"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        tail = (p.stdout.strip().splitlines() or ["?"])[-1]
        return ("%s cannot import torch and safetensors.torch (%s); is python3-torch installed? "
                "scripts/deps.sh --bench installs it" % (os.path.relpath(TORCH_PY, h.ROOT), tail))
    return ""


def torch_versions():
    p = subprocess.run([TORCH_PY, "-c", "import torch, safetensors; "
                        "print(torch.__version__, safetensors.__version__)"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    parts = p.stdout.split()
    return (parts[0], parts[1]) if len(parts) == 2 else ("?", "?")


def gen_ckpt(ctx, name, params):
    """Generate (or reuse, when the same parameters made it) a training checkpoint."""
    path = os.path.join(ctx.work, name)
    stamp = path + ".params"
    want = repr(sorted(params.items()))
    if os.path.exists(path) and os.path.exists(stamp) and open(stamp).read().startswith(want):
        print("  reusing %s" % os.path.relpath(path, h.ROOT), flush=True)
        return path, int(open(stamp).read().split("\n")[1])
    h.rm_f(path, stamp)
    args = [SYS_PY, "-c", _GEN, path] + ["%s=%s" % kv for kv in params.items()]
    print("  generating %s (%s)" % (os.path.relpath(path, h.ROOT), " ".join(args[4:])),
          flush=True)
    p = subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True)
    nparams = int(p.stdout.strip().splitlines()[-1])
    with open(stamp, "w") as f:
        f.write("%s\n%d\n" % (want, nparams))
    return path, nparams


def compare(ctx, a, b):
    p = subprocess.run([ctx.python, "-c", _CHECK, a, b], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"identical": False, "error": tail[0][:200]}


def round_robin(tools, inp, out_dir, log_dir, reps):
    """harness.round_robin, but each tool's output keeps its own extension (``ext``)."""
    os.makedirs(out_dir, exist_ok=True)
    runs = {t.name: [] for t, _ in tools}
    for r in range(reps):
        order = tools[r % len(tools):] + tools[:r % len(tools)]
        for t, ext in order:
            run = h.timed_run(t, inp, os.path.join(out_dir, t.name + ext), log_dir, r)
            runs[t.name].append(run)
            state = "ok" if run.ok else "FAILED (exit %d, log %s)" % (run.exit_code, run.log)
            print("  round %d/%d  %-18s %8.2f s  %8.1f MiB  %s" % (
                r + 1, reps, t.name, run.wall_s, run.rss_kib / 1024.0, state), flush=True)
    return runs


@case("pth-strip", "Strip: Adam checkpoint to safetensors")
def pth_strip(ctx):
    """`modelshrink convert` (a training checkpoint to its state dict, as safetensors) against
    PyTorch: `torch.load(map_location="cpu")`, take `model_state_dict`, and
    `safetensors.torch.save_file` with every tensor made contiguous; and `cp` as the I/O floor.
    The input is a ResNet-18-style CNN with a large MLP head, trained 2 Adam steps and saved with
    its optimizer state, so the model's weights are about a third of the file.
    Targets: modelshrink at least 10x faster than the peer, with a peak RSS of at most its
    output's size + 64 MiB."""
    why = torch_venv_problem()
    if why:
        raise OSError("pth-strip needs the PyTorch peer: " + why)
    torch_v, st_v = torch_versions()
    params = CKPT_QUICK if ctx.quick else CKPT_FULL
    inp, nparams = gen_ckpt(ctx, "ckpt-adam-quick.pth" if ctx.quick else "ckpt-adam.pth", params)
    in_bytes = os.path.getsize(inp)
    one = lambda o: [o]  # noqa: E731 - every tool writes one file
    tools = [(h.Tool("modelshrink", lambda i, o: [ctx.bin, "convert", "-q", i, "-o", o],
                     outputs=one, note="`modelshrink convert -q CKPT -o OUT.safetensors`"),
              ".safetensors"),
             (h.Tool("torch+safetensors", lambda i, o: [TORCH_PY, PEER, i, o], outputs=one,
                     note="torch %s `torch.load(ckpt, map_location='cpu')['model_state_dict']` "
                          "+ safetensors %s `save_file({k: v.contiguous()}, out, "
                          "metadata={'format': 'pt'})` (`scripts/bench/peer_pth.py`, run by "
                          "`.venv-torch/bin/python`)" % (torch_v, st_v)),
              ".safetensors"),
             (h.Tool("cp", lambda i, o: ["cp", i, o], outputs=one, note="`cp IN OUT`, the I/O "
                     "floor"), ".pth")]
    out_dir = os.path.join(ctx.work, "pth-out")
    log_dir = os.path.join(ctx.work, "pth-logs")
    print("  warm-up read of the input", flush=True)
    h.warm_read(inp)
    runs = round_robin(tools, inp, out_dir, log_dir, ctx.reps)
    sums = {t.name: h.summarize(t.name, runs[t.name]) for t, _ in tools}
    ms, peer = sums["modelshrink"], sums["torch+safetensors"]
    ms_out = os.path.join(out_dir, "modelshrink.safetensors")
    peer_out = os.path.join(out_dir, "torch+safetensors.safetensors")
    check = None
    if ms.out_bytes and peer.out_bytes:
        check = compare(ctx, ms_out, peer_out)
        with open(ms_out, "rb") as fa, open(peer_out, "rb") as fb:
            check["files_identical"] = fa.read() == fb.read()
        print("  check %s" % json.dumps(check), flush=True)
    if not ctx.keep:
        for t, ext in tools:
            h.rm_f(os.path.join(out_dir, t.name + ext))
        h.rm_f(inp, inp + ".params")

    rows = []
    for t, _ in tools:
        s = sums[t.name]
        ok = bool(s.out_bytes)
        if t.name == "cp" or not ok:
            same = ""
        elif check is None:
            same = "not checked"
        elif check.get("error"):
            same = "no: " + check["error"]
        elif t.name == "modelshrink":
            same = ("yes, %d tensors" % check["tensors"] if check["identical"] else
                    "**no**: %d problems, e.g. %s" % (check["n_problems"],
                                                      "; ".join(check["problems"][:2])))
        else:
            same = "(the reference)"
        rows.append(h.standard_row(t.name, s, in_bytes, sums,
                                   same if t.name != "cp" else "0 (a copy)"))
    columns = h.standard_columns("same tensors as the peer's")
    shape = ", ".join("%s %d" % kv for kv in params.items())
    preface = (
        "Input: a `torch.save` training checkpoint written by torch %s (%s): "
        "`{epoch, model_state_dict, optimizer_state_dict, loss, config}`, %s FP32 parameters, "
        "Adam state (exp_avg, exp_avg_sq) for each; %s bytes (%.1f MiB). Each tool ran %d times "
        "round-robin under `/usr/bin/time -v` after one warm-up read of the input (median wall "
        "time with range, largest peak RSS). Check: both safetensors files read back with the "
        "safetensors numpy API (.venv): the same tensor names, dtypes, shapes and bytes.\n\n%s"
        % (torch_v, shape, h.fmt_bytes(nparams), h.fmt_bytes(in_bytes), in_bytes / h.MIB,
           ctx.reps, "\n".join("- %s: %s" % (t.name, t.note) for t, _ in tools)))
    notes = []
    if ms.out_bytes and peer.out_bytes:
        speed = peer.wall_median / ms.wall_median if ms.wall_median else 0.0
        limit = ms.out_bytes / h.MIB + TARGET_RSS_SLACK_MIB
        notes.append("- speed: modelshrink is %.1fx faster than torch+safetensors (target >= "
                     "%.0fx: %s)" % (speed, TARGET_SPEEDUP,
                                     "met" if speed >= TARGET_SPEEDUP else "**not met**"))
        notes.append("- peak RSS: modelshrink %.1f MiB, torch+safetensors %.1f MiB; target for "
                     "modelshrink <= output %.1f MiB + %.0f MiB = %.1f MiB: %s" % (
                         ms.rss_mib, peer.rss_mib, ms.out_bytes / h.MIB, TARGET_RSS_SLACK_MIB,
                         limit, "met" if ms.rss_mib <= limit else "**not met**"))
    if check and not check.get("error"):
        notes.append("- outputs: %s; metadata %s vs %s; the files are %s" % (
            "same %d tensor names, dtypes, shapes and bytes" % check["tensors"]
            if check["identical"] else "**differ** (%d problems)" % check["n_problems"],
            json.dumps(check["meta"]), json.dumps(check["meta_other"]),
            "byte-identical" if check["files_identical"] else
            "not byte-identical: the tensors are laid out in another order (safetensors.torch "
            "sorts them by dtype alignment, then name; modelshrink keeps the state dict's order)"))
    return h.CaseResult(columns, rows, preface=preface, notes="\n".join(notes),
                        versions=[("torch (.venv-torch)", torch_v),
                                  ("safetensors (.venv-torch)", st_v)])


@case("pth-real", "Legacy and TorchScript checkpoints to safetensors")
def pth_real(ctx):
    """The model of the pth-strip case saved the two other ways users' files come: the legacy
    stream (torch < 1.6, `_use_new_zipfile_serialization=False`: the whole training checkpoint,
    Adam state included) and a TorchScript archive (`torch.jit.save(torch.jit.trace(model))`:
    the model alone). `modelshrink convert` to safetensors against PyTorch
    (`torch.load(...)['model_state_dict']`, or `torch.jit.load(...).state_dict()`, then
    `safetensors.torch.save_file`), `cp`, and `cp` followed by `sync -d` (fdatasync) of the copy,
    the floor for a tool that makes its output durable. Target (issue 17): modelshrink at most
    1.5x `cp`.
    Check: both safetensors files hold the same tensor names, dtypes, shapes and bytes."""
    why = torch_venv_problem()
    if why:
        raise OSError("pth-real needs the PyTorch peer: " + why)
    torch_v, st_v = torch_versions()
    base = CKPT_QUICK if ctx.quick else CKPT_FULL
    rows, notes = [], []
    one = lambda o: [o]  # noqa: E731
    for mode, title in (("legacy", "legacy training checkpoint"), ("script", "TorchScript")):
        params = dict(base, mode=mode)
        name = "ckpt-%s%s.%s" % (mode, "-quick" if ctx.quick else "",
                                 "pt" if mode == "script" else "pth")
        inp, _ = gen_ckpt(ctx, name, params)
        in_bytes = os.path.getsize(inp)
        peer_args = ["--jit"] if mode == "script" else []
        tools = [(h.Tool("modelshrink (%s)" % mode,
                         lambda i, o: [ctx.bin, "convert", "-q", i, "-o", o], outputs=one),
                  ".safetensors"),
                 (h.Tool("torch+safetensors (%s)" % mode,
                         lambda i, o, a=peer_args: [TORCH_PY, PEER, i, o] + a, outputs=one),
                  ".safetensors"),
                 (h.Tool("cp (%s)" % mode, lambda i, o: ["cp", i, o], outputs=one), ".bin"),
                 (h.Tool("cp + fdatasync (%s)" % mode,
                         lambda i, o: ["sh", "-c", 'cp "$1" "$2" && sync -d "$2"', "sh", i, o],
                         outputs=one), ".bin")]
        out_dir = os.path.join(ctx.work, "pth-real-out")
        h.warm_read(inp)
        runs = round_robin(tools, inp, out_dir, os.path.join(ctx.work, "pth-real-logs"),
                           ctx.reps)
        sums = {t.name: h.summarize(t.name, runs[t.name]) for t, _ in tools}
        ms_name, peer_name, cp_name, cps_name = (t.name for t, _ in tools)
        check = compare(ctx, os.path.join(out_dir, ms_name + ".safetensors"),
                        os.path.join(out_dir, peer_name + ".safetensors"))
        for t, ext in tools:
            s_ = sums[t.name]
            same = ("0 (a copy)" if t.name in (cp_name, cps_name) else "(the reference)"
                    if t.name == peer_name else
                    "yes, %d tensors" % check.get("tensors", 0) if check.get("identical") else
                    "**no**: %s" % (check.get("error") or "; ".join(check.get("problems", []))))
            rows.append(h.standard_row(t.name, s_, in_bytes, sums, same, ms=ms_name, cp=cp_name))
            if not ctx.keep:
                h.rm_f(os.path.join(out_dir, t.name + ext))
        cp = sums[cp_name].wall_median
        cps = sums[cps_name].wall_median
        r = sums[ms_name].wall_median / cp if cp else 0.0
        notes.append("- %s (%s bytes): modelshrink %.2fx cp (target <= 1.5x: %s) and %.2fx "
                     "`cp && sync -d` (modelshrink fsyncs its output before renaming it; cp "
                     "leaves it in the page cache), peak RSS %.0f MiB; torch + safetensors %.2fx "
                     "cp, %.0f MiB" % (
                         title, h.fmt_bytes(in_bytes), r, "met" if r and r <= 1.5 else
                         "**not met**", sums[ms_name].wall_median / cps if cps else 0.0,
                         sums[ms_name].rss_mib,
                         sums[peer_name].wall_median / cp if cp else 0.0,
                         sums[peer_name].rss_mib))
    return h.CaseResult(h.standard_columns("same tensors as the peer's"), rows,
                        preface="Inputs written by torch %s from the pth-strip model (%s); peer: "
                        "`scripts/bench/peer_pth.py` under `.venv-torch` with safetensors %s. %d "
                        "runs each, round-robin, after a warm-up read." % (
                            torch_v, ", ".join("%s %s" % kv for kv in base.items()), st_v,
                            ctx.reps),
                        notes="\n".join(notes))


# A GPT-like model saved as Hugging Face does: sharded pytorch_model-0000k-of-0000n.bin with its
# index, the LM head tied to the embedding. Full: vocab 32000 x hidden 2048 and 9 blocks of
# 4 x 2048^2 + 2 x 2048 x 8192 FP32 weights: 2.07 GB in 5 shards of at most 500 MB. Quick: 64 MB.
HF_FULL = dict(vocab=32000, hidden=2048, ffn=8192, layers=9, shard_mb=500)
HF_QUICK = dict(vocab=8000, hidden=512, ffn=2048, layers=4, shard_mb=20)

_GEN_HF = r"""
import json, os, sys
import torch
out = sys.argv[1]
p = {k: int(v) for k, v in (a.split("=", 1) for a in sys.argv[2:])}
torch.manual_seed(0)
os.makedirs(out, exist_ok=True)
h, f = p["hidden"], p["ffn"]
emb = torch.randn(p["vocab"], h) * 0.02
names = [("model.embed_tokens.weight", lambda: emb)]
for i in range(p["layers"]):
    for w, shape in (("q", (h, h)), ("k", (h, h)), ("v", (h, h)), ("o", (h, h)),
                     ("up", (f, h)), ("down", (h, f))):
        names.append(("model.layers.%d.%s.weight" % (i, w),
                      lambda s=shape: torch.randn(*s) * 0.02))
    names.append(("model.layers.%d.norm.weight" % i, lambda: torch.ones(h)))
names.append(("lm_head.weight", lambda: emb))  # tied: the embedding's storage
limit = p["shard_mb"] * 1000 * 1000
shards, cur, size = [], [], 0
for n, mk in names:
    b = 4 * mk().numel() if n != "lm_head.weight" else 0
    if cur and size + b > limit:
        shards.append(cur)
        cur, size = [], 0
    cur.append((n, mk))
    size += b
shards.append(cur)
weight_map, total = {}, 0
for k, part in enumerate(shards):
    fn = "pytorch_model-%05d-of-%05d.bin" % (k + 1, len(shards))
    sd = {}
    for n, mk in part:
        sd[n] = mk()
        weight_map[n] = fn
    torch.save(sd, os.path.join(out, fn))
    total += sum(t.numel() * 4 for n, t in sd.items() if n != "lm_head.weight")
    del sd
json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
          open(os.path.join(out, "pytorch_model.bin.index.json"), "w"), indent=2)
json.dump({"model_type": "llama", "hidden_size": h, "tie_word_embeddings": True},
          open(os.path.join(out, "config.json"), "w"))
print(total)
"""


def folder_files(d):
    return [os.path.join(dp, f) for dp, _, fs in os.walk(d) for f in fs]


@case("hf-folder", "Hugging Face folder: sharded .bin to sharded safetensors")
def hf_folder(ctx):
    """A sharded Hugging Face model folder (pytorch_model-0000k-of-0000n.bin + index, config,
    the LM head tied to the embedding) converted to sharded safetensors (model-*.safetensors +
    model.safetensors.index.json, the tied tensor written once), plain and with --fp16, against
    torch + safetensors shard by shard (`scripts/bench/peer_hf.py`: torch.load each shard, drop
    tied duplicates, save_file) and `cp -rT` of the folder. Targets (issue 17): bounded peak RSS
    (at most 64 MiB for modelshrink, whatever the folder's size)."""
    why = torch_venv_problem()
    if why:
        raise OSError("hf-folder needs the PyTorch peer: " + why)
    torch_v, st_v = torch_versions()
    params = HF_QUICK if ctx.quick else HF_FULL
    inp = os.path.join(ctx.work, "hf-quick" if ctx.quick else "hf-2g")
    stamp = inp + ".params"
    want = repr(sorted(params.items()))
    if not (os.path.isdir(inp) and os.path.exists(stamp) and open(stamp).read() == want):
        import shutil
        shutil.rmtree(inp, ignore_errors=True)
        print("  generating %s (%s)" % (os.path.relpath(inp, h.ROOT), want), flush=True)
        subprocess.run([SYS_PY, "-c", _GEN_HF, inp] + ["%s=%s" % kv for kv in params.items()],
                       check=True, stdout=subprocess.PIPE)
        with open(stamp, "w") as f:
            f.write(want)
    in_bytes = sum(os.path.getsize(x) for x in folder_files(inp))
    peer = os.path.join(h.HERE, "peer_hf.py")
    tools = [h.Tool("modelshrink", lambda i, o: [ctx.bin, "convert", "-q", i, "-o", o],
                    outputs=folder_files),
             h.Tool("modelshrink --fp16",
                    lambda i, o: [ctx.bin, "convert", "-q", "--fp16", i, "-o", o],
                    outputs=folder_files),
             h.Tool("torch+safetensors", lambda i, o: [TORCH_PY, peer, i, o],
                    outputs=folder_files),
             h.Tool("torch+safetensors --half", lambda i, o: [TORCH_PY, peer, i, o, "--half"],
                    outputs=folder_files),
             h.Tool("cp -rT", lambda i, o: ["cp", "-rT", i, o], outputs=folder_files)]
    out_dir = os.path.join(ctx.work, "hf-out")
    os.makedirs(out_dir, exist_ok=True)
    for x in folder_files(inp):
        h.warm_read(x)
    runs = round_robin([(t, "") for t in tools], inp, out_dir, os.path.join(ctx.work, "hf-logs"),
                       ctx.reps)
    sums = {t.name: h.summarize(t.name, runs[t.name]) for t in tools}
    check = compare_folders(ctx, os.path.join(out_dir, "modelshrink"),
                            os.path.join(out_dir, "torch+safetensors"))
    rows = []
    for t in tools:
        same = ("0 (a copy)" if t.name.startswith("cp") else "(the reference)"
                if t.name == "torch+safetensors" else
                ("yes, %d tensors" % check["tensors"] if check.get("identical") else
                 "**no**: %s" % (check.get("error") or check.get("problems")))
                if t.name == "modelshrink" else "")
        rows.append(h.standard_row(t.name, sums[t.name], in_bytes, sums, same, cp="cp -rT"))
    if not ctx.keep:
        import shutil
        shutil.rmtree(out_dir, ignore_errors=True)
    rss = max(sums["modelshrink"].rss_mib, sums["modelshrink --fp16"].rss_mib)
    notes = "- modelshrink's largest peak RSS: %.0f MiB for a %.2f GB folder (target <= 64 MiB: %s); " \
            "torch + safetensors: %.0f MiB" % (rss, in_bytes / 1e9, "met" if rss <= 64 else
                                               "**not met**",
                                               sums["torch+safetensors"].rss_mib)
    return h.CaseResult(h.standard_columns("same tensors as the peer's"), rows,
                        preface="Input: %s bytes in %d files (%s), written by torch %s. Peer "
                        "under `.venv-torch` with safetensors %s. %d runs each, round-robin."
                        % (h.fmt_bytes(in_bytes), len(folder_files(inp)),
                           ", ".join("%s %s" % kv for kv in params.items()), torch_v, st_v,
                           ctx.reps), notes=notes)


_CHECK_FOLDERS = r"""
import json, os, sys
from safetensors import safe_open
def load(d):
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(d, f), framework="numpy") as g:
                for k in g.keys():
                    out[k] = g.get_tensor(k)
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
bad = [k for k in sorted(set(a) | set(b)) if k not in a or k not in b or a[k].dtype != b[k].dtype
       or a[k].shape != b[k].shape or a[k].tobytes() != b[k].tobytes()]
print(json.dumps({"identical": not bad, "tensors": len(a), "problems": bad[:5]}))
"""


def compare_folders(ctx, a, b):
    p = subprocess.run([ctx.python, "-c", _CHECK_FOLDERS, a, b], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"identical": False, "error": ((p.stderr or "").strip().splitlines() or ["?"])[-1]}
