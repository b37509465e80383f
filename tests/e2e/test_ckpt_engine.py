#!/usr/bin/env python3
"""End-to-end: checkpoints go through the same engine, options and writers as ONNX (issue 14).

Fixtures are made here with Debian's torch (/usr/bin/python3), as users make them: a training
checkpoint {model_state_dict, optimizer_state_dict (Adam), epoch} of a small CNN whose two
convolutions were initialised to the same values (twin tensors in separate storages), plus a
tied embedding; and a bare state dict. The oracle is torch itself, in a separate process.

Checks:
- twins: `--format pth` stores the twin tensors once: torch.load(weights_only=True) gives them
  one data_ptr, every tensor equals torch.load of the original state dict, load_state_dict
  (strict) accepts it; safetensors output keeps both keys and the line says what .pth saves.
- verify: `--fp16 --verify` on a checkpoint runs through the engine: without a GPU it warns as
  for ONNX and writes exactly the bytes of `--fp16`; `--device cuda` without a GPU is ONNX's one
  line with exit 2, and nothing is written.
- usage: options that do not apply to the input's format (--int8, --keep-outputs, --block-op on
  a checkpoint; --format on ONNX) exit 2 with one line naming the option and the input before
  anything is written; in a folder of mixed formats they apply where they can and each other
  model's line says so.
- zip64: with the ZIP64 threshold lowered (MSH_TEST_ZIP64_THRESHOLD, tests only) the .pth output
  has ZIP64 local, central and end records, Python's zipfile reads every entry with a correct
  CRC, and torch.load returns the same tensors as without ZIP64; with local header offsets in
  ZIP64 fields too (MSH_TEST_ZIP64_OFFSETS=1), zipfile reads every entry at its offset.
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_ckpt_engine"
SYS_PY = "/usr/bin/python3"

MAKE = r'''
import sys, torch
torch.manual_seed(0)
out = sys.argv[1]

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.conv1 = torch.nn.Conv2d(3, 8, 3)
        self.conv2 = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight          # tied: one storage
        with torch.no_grad():                       # twins: equal values, separate storages
            self.conv2.weight.copy_(self.conv1.weight)
            self.conv2.bias.copy_(self.conv1.bias)

net = Net()
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
x = torch.randn(2, 3, 8, 8)
loss = (net.bn(net.conv1(x)) + net.conv2(x)).square().mean() + net.head(net.emb(torch.tensor([1, 2]))).sum()
loss.backward()
opt.step()
with torch.no_grad():                               # keep the twins equal after the step
    net.conv2.weight.copy_(net.conv1.weight)
    net.conv2.bias.copy_(net.conv1.bias)
torch.save({"epoch": 3, "model_state_dict": net.state_dict(),
            "optimizer_state_dict": opt.state_dict()}, out + "/train.pth")
torch.save(net.state_dict(), out + "/bare.pth")
'''

CHECK = r'''
import json, sys, torch
job = json.load(open(sys.argv[1]))
res = {}
orig = torch.load(job["orig"], map_location="cpu")
sd = orig["model_state_dict"] if "model_state_dict" in orig else orig
for name, path in job["outs"].items():
    r = {}
    try:
        got = torch.load(path, map_location="cpu", weights_only=True)
        r["keys_same"] = list(got) == list(sd)
        r["equal"] = all(torch.equal(got[k], sd[k].to(got[k].dtype)) if job.get("half") is None
                         else torch.equal(got[k], sd[k].half() if sd[k].dtype == torch.float32
                                          else sd[k]) for k in sd)
        ptr = lambda k: got[k].storage().data_ptr()
        r["twins_shared"] = ptr("conv1.weight") == ptr("conv2.weight") and \
            ptr("conv1.bias") == ptr("conv2.bias")
        r["tied_shared"] = ptr("emb.weight") == ptr("head.weight")
        r["storages"] = len({ptr(k) for k in got})
    except Exception as e:
        r["error"] = repr(e)
    res[name] = r
print(json.dumps(res))
'''

ZIPCHECK = r'''
import json, sys, zipfile, struct
p = sys.argv[1]
raw = open(p, "rb").read()
z = zipfile.ZipFile(p)
bad = z.testzip()
names = z.namelist()
infos = {i.filename: (i.file_size, i.header_offset, i.CRC) for i in z.infolist()}
print(json.dumps({"testzip": bad, "names": names, "infos": infos,
                  "eocd64": raw.find(b"PK\x06\x06") >= 0, "locator64": raw.find(b"PK\x06\x07") >= 0,
                  "zip64_extra_local": raw[:200].find(b"\x01\x00\x10\x00") >= 0}))
'''


def torch_ok():
    try:
        p = subprocess.run([SYS_PY, "-c", "import torch"], capture_output=True, timeout=120)
        return p.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def py(script, *args, timeout=300):
    p = subprocess.run([SYS_PY, "-c", script] + [str(a) for a in args], capture_output=True,
                       text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError("python failed: %s" % p.stderr[-2000:])
    return p.stdout


def main():
    args = C.parse_args(__doc__.split("\n")[0])
    if not torch_ok():
        C.skip("%s cannot import torch (Debian's python3-torch)" % SYS_PY)
    F = C.Failures()
    w = args.work
    fx = os.path.join(w, "fx")
    os.makedirs(fx)
    py(MAKE, fx)
    train = os.path.join(fx, "train.pth")
    bare = os.path.join(fx, "bare.pth")

    # ---- twins and tied weights
    outs = {}
    for name, extra, out in (("pth", ["--format", "pth"], "t.pth"),
                             ("pth_fp16", ["--format", "pth", "--fp16"], "t16.pth"),
                             ("st", [], "t.safetensors")):
        r = C.run(args.bin, "convert", train, "-o", os.path.join(w, out), *extra)
        F.check(r.rc == 0, "twins: convert %s exits 0" % " ".join(extra), r.describe())
        outs[name] = (r, os.path.join(w, out))
    F.check("dedup merged 2 tensors" in outs["pth"][0].out,
            "twins: the .pth line says the two twin tensors were merged", outs["pth"][0].out)
    F.check("identical tensors kept as copies" in outs["st"][0].out,
            "twins: the safetensors line says what a .pth output would save", outs["st"][0].out)
    jp = os.path.join(w, "job.json")
    with open(jp, "w") as f:
        json.dump({"orig": train, "outs": {"pth": outs["pth"][1]}}, f)
    res = json.loads(py(CHECK, jp))["pth"]
    F.check(res.get("keys_same") and res.get("equal"),
            "twins: every tensor of the .pth equals torch.load of the original", str(res))
    F.check(res.get("twins_shared"), "twins: torch loads the twin tensors with one data_ptr",
            str(res))
    F.check(res.get("tied_shared"), "twins: the tied embedding still shares its storage",
            str(res))
    with open(jp, "w") as f:
        json.dump({"orig": train, "outs": {"pth": outs["pth_fp16"][1]}, "half": True}, f)
    res = json.loads(py(CHECK, jp))["pth"]
    F.check(res.get("equal") and res.get("twins_shared"),
            "twins: with --fp16 the values are torch's .half() and the twins share", str(res))
    strict = py(r'''
import sys, torch
sys.path.insert(0, sys.argv[2])
''' + MAKE.split("net = Net()")[0].split("out = sys.argv[1]")[1] + r'''
net = Net()
sd = torch.load(sys.argv[1], weights_only=True)
print(net.load_state_dict(sd, strict=True))
''', outs["pth"][1], fx)
    F.check("All keys matched" in strict, "twins: load_state_dict(strict=True) accepts the .pth",
            strict)

    # ---- --verify and --device on checkpoints, through the engine
    no_gpu = C.run(args.bin, "--version")
    gpus = "CUDA devices: 0" not in no_gpu.out
    a = C.run(args.bin, "convert", "--fp16", train, "-o", os.path.join(w, "v.safetensors"))
    b = C.run(args.bin, "convert", "--fp16", "--verify", train, "-o",
              os.path.join(w, "vv.safetensors"))
    F.check(a.rc == 0 and b.rc == 0, "verify: --fp16 and --fp16 --verify exit 0", b.describe())
    if not gpus:
        F.check("warning: --verify: no CUDA device" in b.err,
                "verify: without a GPU the checkpoint gets ONNX's --verify warning", b.err)
        F.check(C.sha256(os.path.join(w, "v.safetensors")) ==
                C.sha256(os.path.join(w, "vv.safetensors")),
                "verify: --verify writes the same bytes")
        F.check("on cpu" in b.out, "verify: the line says the CPU ran it", b.out)
        onnx_in = os.path.join(C.FIXTURES, "..", "..", "tests", "fixtures")
        for inp, out in ((train, "d.safetensors"), (bare, "d.pth")):
            r = C.run(args.bin, "convert", "--device", "cuda", inp, "-o", os.path.join(w, out))
            lines = [l for l in r.err.splitlines() if l.strip()]
            F.check(r.rc == 2 and len(lines) == 1 and "--device cuda" in lines[0],
                    "device: --device cuda on %s without a GPU: one line, exit 2"
                    % os.path.basename(inp), r.describe())
            F.check(not os.path.exists(os.path.join(w, out)),
                    "device: nothing written for %s" % out)
    else:
        print("a GPU is present: the no-GPU checks of --verify and --device are not run here")

    # ---- options that do not apply
    g = C.gen_models()
    import onnx
    onnx_path = os.path.join(w, "mlp.onnx")
    onnx.save(g.make_mlp_dup(seed=1, width=64), onnx_path)
    cases = [(["--int8"], train, "--int8"), (["--keep-outputs", "y"], train, "--keep-outputs"),
             (["--fp16", "--block-op", "Conv"], bare, "--block-op"),
             (["--external-data"], bare, "--external-data"),
             (["--format", "pth"], onnx_path, "--format"), (["--key", "model"], onnx_path, "--key")]
    for extra, inp, flag in cases:
        out = os.path.join(w, "u_out", "x" + (".onnx" if inp.endswith(".onnx") else ".pth"))
        r = C.run(args.bin, "convert", inp, "-o", out, *extra)
        lines = [l for l in r.err.splitlines() if l.strip()]
        F.check(r.rc == 2 and len(lines) == 1 and flag in lines[0] and inp in lines[0],
                "usage: %s on %s: exit 2, one line naming the option and the input"
                % (flag, os.path.basename(inp)), r.describe())
        F.check(not os.path.exists(os.path.join(w, "u_out")),
                "usage: %s on %s: nothing created at -o" % (flag, os.path.basename(inp)))
    mixed = os.path.join(w, "mixed")
    os.makedirs(mixed)
    for p in (train, onnx_path):
        os.link(p, os.path.join(mixed, os.path.basename(p)))
    mo = os.path.join(w, "mixed_out")
    r = C.run(args.bin, "convert", "--int8", "--report", os.path.join(w, "mixed.jsonl"), mixed,
              "-o", mo)
    F.check(r.rc == 0, "mixed folder with --int8 converts both models", r.describe())
    line = [l for l in r.out.splitlines() if "train.pth" in l]
    F.check(line and "not applied to pth: --int8" in line[0],
            "mixed folder: the checkpoint's line says --int8 was not applied", r.out)
    recs = [json.loads(l) for l in open(os.path.join(w, "mixed.jsonl")) if l.strip()]
    ck = [x for x in recs if x.get("rel") == "train.pth"]
    F.check(ck and ck[0].get("not_applied") == ["--int8"],
            "mixed folder: the report records not_applied", str(ck))
    r = C.run(args.bin, "convert", "--keep-outputs", "y", fx, "-o", os.path.join(w, "none_out"))
    F.check(r.rc == 2 and "applies to none" in r.err and
            not os.path.exists(os.path.join(w, "none_out")),
            "a folder of checkpoints with --keep-outputs: exit 2, nothing created", r.describe())

    # ---- ZIP64 with a lowered threshold
    plain = os.path.join(w, "z_plain.pth")
    z64 = os.path.join(w, "z64.pth")
    r1 = C.run(args.bin, "convert", "--format", "pth", train, "-o", plain)
    env = dict(os.environ, MSH_TEST_ZIP64_THRESHOLD="1000")
    p = subprocess.run([args.bin, "convert", "--format", "pth", train, "-o", z64], env=env,
                       capture_output=True, text=True)
    F.check(r1.rc == 0 and p.returncode == 0, "zip64: both conversions exit 0", p.stderr)
    zi = json.loads(py(ZIPCHECK, z64))
    zp = json.loads(py(ZIPCHECK, plain))
    F.check(zi["testzip"] is None and zp["testzip"] is None,
            "zip64: zipfile reads every entry with a correct CRC", str(zi))
    F.check(zi["eocd64"] and zi["locator64"] and zi["zip64_extra_local"],
            "zip64: the lowered threshold gives ZIP64 end, locator and local extra records",
            str(zi))
    F.check(not zp["eocd64"], "zip64: without the hook the small archive has no ZIP64 records")
    F.check(zi["names"] == zp["names"] and
            {k: v[0] for k, v in zi["infos"].items()} == {k: v[0] for k, v in zp["infos"].items()}
            and {k: v[2] for k, v in zi["infos"].items()} ==
            {k: v[2] for k, v in zp["infos"].items()},
            "zip64: same entries, sizes and CRCs as the plain archive", str(zi["infos"]))
    zo = os.path.join(w, "z64off.pth")
    env2 = dict(env, MSH_TEST_ZIP64_OFFSETS="1")
    p = subprocess.run([args.bin, "convert", "--format", "pth", train, "-o", zo], env=env2,
                       capture_output=True, text=True)
    zz = json.loads(py(ZIPCHECK, zo)) if p.returncode == 0 else {}
    F.check(p.returncode == 0 and zz.get("testzip") is None and zz.get("names") == zp["names"]
            and {k: v[2] for k, v in zz.get("infos", {}).items()} ==
            {k: v[2] for k, v in zp["infos"].items()},
            "zip64: with ZIP64 offsets too, zipfile finds every entry and its CRC", str(zz))
    with open(jp, "w") as f:
        json.dump({"orig": train, "outs": {"z64": z64}}, f)
    res = json.loads(py(CHECK, jp))["z64"]
    F.check(res.get("equal") and res.get("twins_shared"),
            "zip64: torch.load reads the ZIP64 archive: same tensors, twins shared", str(res))
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
