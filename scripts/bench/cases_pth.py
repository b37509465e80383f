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
torch.save({"epoch": steps, "model_state_dict": model.state_dict(),
            "optimizer_state_dict": opt.state_dict(), "loss": float(loss.item()),
            "config": {"arch": "resnet18-style+mlp", "width": width, "hidden": hidden,
                       "classes": classes, "optimizer": "adam", "lr": 1e-3, "seed": seed}},
           out)
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
