#!/usr/bin/env python3
"""End-to-end: the checkpoints real training code writes (issue 17), against torch itself.

Fixtures: tests/fixtures/pth/real/, written by tests/fixtures/make_real_checkpoints.py with
Debian's python3-torch 1.13, with refs.json (per file: container, chosen key, module class,
state-dict candidates, and every state-dict tensor's dtype, shape and sha256 as torch gives
it). The oracles are independent of the binary: refs.json, numpy / the safetensors package for
safetensors outputs, and a /usr/bin/python3 process that loads the ORIGINAL with torch
(torch.load(weights_only=False) with the fixture script's classes and its throwaway module
re-created for the time of the load, or torch.jit.load(f).state_dict() for TorchScript) and the
OUTPUT (torch.load(weights_only=True) for .pth). Check groups (each failure names its group):

- fixtures: the committed files match refs.json (sha256) and stay under 100 KB; the legacy ones
  start with the legacy magic, the TorchScript ones hold code/ and constants.pkl,
  lightning.ckpt's pickle names the throwaway classes and builds them with NEWOBJ / APPENDS /
  SETITEMS / BUILD.
- inspect: `inspect --json` on every good file: format, container (zip / legacy /
  TorchScript), state_dict_key, module_class, tensor_count (every tensor the file holds, as
  torch reaches them: a pickled module's non-persistent buffers too), the breakdown (each
  storage once, in weights > optimizer_state > other_tensors, metadata the rest, the storages
  cross-checked with the container's own list), state_dict_candidates (keys, tensor counts,
  bytes, the chosen one), shared_storage groups; the table's first line ("(legacy format)",
  "TorchScript module (<class>)", "a whole module (__main__ Net)"), model_ema.pth's
  "state dicts: model (...) [chosen], ema (...)", lightning.ckpt's objects of other classes
  (the throwaway module's ListConfig, DictConfig, dataclass and Enum, argparse Namespace,
  pathlib PosixPath) in the JSON and the table.
- convert: every good file to safetensors and to `--format pth`, in a folder of its own: exit 0,
  input unchanged, nothing but the output left; safetensors strictly valid (own reader and the
  safetensors package), names / dtypes / shapes / sha256 equal to refs.json, the data area
  exactly the tensors; model_ema.pth's line says "state dict model (also in the file: ema)" and
  `--key ema` gives the ema tensors; two_dicts.pth `--key generator` gives that dict.
- fp16 / bf16: `--fp16` on five files (safetensors, and --format pth on two): F32 tensors equal
  numpy's float16 rounding of the verified F32 bytes except the tensors FP16 cannot hold
  (st_common.f16_range_keep), kept F32 byte for byte and counted on the convert line; torch's
  own Tensor.half() agrees for the .pth outputs; `--bf16` on ts_trace.pt.
- torch: (/usr/bin/python3) the throwaway module is not importable and torch cannot load
  lightning.ckpt without it; every output equals torch's state dict of the original tensor for
  tensor (names, dtypes, shapes, bytes); in .pth outputs the names that share a storage in the
  original still share one (data_ptr); load_state_dict(strict=True) into the model the fixture
  script builds, and the outputs equal the original model's on an input (TorchScript: the
  output's tensors go into a torch.jit.load of the original whose tensors were zeroed).
- refused: two_dicts.pth (one line naming --key and both keys), qtensor.pth (one line naming
  torch._utils._rebuild_qtensor) and mal_hparams_os_system.ckpt (hyper_parameters REDUCE
  os.system: one line saying refused, os, system; the marker file never appears): convert
  (safetensors and --format pth) exits 1 with one stderr line naming the file, no output, the
  input unchanged, nothing left in the working folder; inspect exits 1 the same way (except
  two_dicts.pth, which inspect describes: no state dict found, both candidates unchosen).

Exit 0 / 1; 77 when numpy or safetensors is missing, the fixtures are missing, or everything
else passed but /usr/bin/python3 cannot import torch (the torch group did not run)."""

import hashlib
import json
import os
import pickletools
import re
import shutil
import subprocess
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402
import st_common as S  # noqa: E402

NAME = "test_real_checkpoints"
REAL = os.path.join(C.FIXTURES, "pth", "real")
SYS_PY = "/usr/bin/python3"
LEGACY_MAGIC = b"\x80\x02\x8a\x0a"

# Runs under /usr/bin/python3 with torch: argv[1] = jobs JSON, argv[2] = tests/fixtures,
# argv[3] = the real fixtures folder; prints {"pre": [errors], "jobs": [results]} as JSON.
TORCH_HELPER = r'''
import importlib.util, json, os, struct, sys
import torch
sys.path.insert(0, sys.argv[2])
import make_checkpoints as M
import make_real_checkpoints as R
torch.set_num_threads(1)
R.register_main_classes()

def read_st(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    hdr.pop("__metadata__", None)
    dts = {v: k for k, v in M.ST_DTYPE.items()}
    out = {}
    for k, t in hdr.items():
        b, e = t["data_offsets"]
        buf = bytearray(raw[8 + n + b:8 + n + e])
        dt = dts[t["dtype"]]
        out[k] = (torch.empty(t["shape"], dtype=dt) if not buf else
                  torch.frombuffer(buf, dtype=dt).reshape(t["shape"]))
    return out

def same(a, b):
    return (a.dtype == b.dtype and list(a.shape) == list(b.shape) and
            M.tensor_bytes(a) == M.tensor_bytes(b))

def desc(t):
    return "%s %s" % (str(t.dtype).replace("torch.", ""), list(t.shape))

pre = []
if importlib.util.find_spec(R.THROWAWAY) is not None:
    pre.append("the throwaway module %s is importable: the test proves nothing" % R.THROWAWAY)
try:
    torch.load(os.path.join(sys.argv[3], "lightning.ckpt"), map_location="cpu")
    pre.append("torch loads lightning.ckpt without the throwaway module")
except ModuleNotFoundError:
    pass

res = []
for job in json.load(open(sys.argv[1])):
    r = {"id": job["id"], "errors": [], "done": []}
    res.append(r)
    try:
        fx = job["fixture"]
        obj, mod = R.load_original(fx)
        want = R.state_dict_of(obj, job["key"])
        if job["kind"] == "st":
            got = read_st(job["out"])
        else:
            got = torch.load(job["out"], map_location="cpu", weights_only=True)
            if not isinstance(got, dict) or not all(isinstance(v, torch.Tensor)
                                                    for v in got.values()):
                r["errors"].append("the .pth output is not a flat dict of tensors: %s" %
                                   type(got).__name__)
                continue
            for grp in job["shared"]:
                if all(n in got for n in grp):
                    ptrs = {got[n].storage().data_ptr() for n in grp}
                    if len(ptrs) != 1:
                        r["errors"].append("%s share one storage in the original, not in the "
                                           "output" % grp)
            r["done"].append("shared")
        if sorted(got) != sorted(want):
            r["errors"].append("names differ: missing %s, extra %s" % (
                sorted(set(want) - set(got))[:6], sorted(set(got) - set(want))[:6]))
        n_half = 0
        for k, w in want.items():
            if k not in got:
                continue
            exp = w
            if job.get("fp16") and w.dtype == torch.float32 and k not in job["kept"]:
                exp = w.half()
                n_half += 1
            if not same(exp, got[k]):
                r["errors"].append("%s: got %s, expected %s%s" % (
                    k, desc(got[k]), desc(exp), "" if exp.dtype != got[k].dtype or
                    list(exp.shape) != list(got[k].shape) else " (bytes differ)"))
        r["done"].append("tensors")
        if job.get("fp16"):
            r["done"].append("torch half: %d tensors" % n_half)
            continue
        model, x = R.build_model(fx)
        with torch.no_grad():
            if R.is_torchscript(fx):
                ref_out = torch.jit.load(fx, map_location="cpu")(x)
                m2 = torch.jit.load(fx, map_location="cpu")
                for t in m2.state_dict().values():
                    t.zero_()
                if torch.equal(m2(x), ref_out):
                    r["errors"].append("zeroing the module's tensors did not change its output")
                m2.load_state_dict(got, strict=True)
                out = m2(x)
                if not torch.equal(out, ref_out):
                    r["errors"].append("torch.jit.load(original) with the output's tensors "
                                       "gives other outputs (max diff %g)" %
                                       float((out - ref_out).abs().max()))
                r["done"].append("jit load_state_dict + outputs")
            elif model is not None:
                src = obj if job["key"] == "" else obj[job["key"]]
                if isinstance(src, torch.nn.Module):
                    ref_model = src
                else:
                    ref_model, _ = R.build_model(fx)
                    ref_model.load_state_dict(want, strict=True)
                ref_model.eval()
                model.load_state_dict(got, strict=True)
                model.eval()
                a, b = ref_model(x), model(x)
                if not torch.equal(a, b):
                    r["errors"].append("the model with the output's tensors gives other "
                                       "outputs (max diff %g)" % float((a - b).abs().max()))
                r["done"].append("load_state_dict(strict=True) + outputs")
    except Exception as e:
        r["errors"].append("%s: %s" % (type(e).__name__, e))
print(json.dumps({"pre": pre, "jobs": res}))
'''


def torch_version():
    try:
        p = subprocess.run([SYS_PY, "-c", "import torch; print(torch.__version__)"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    if p.returncode != 0:
        return None, p.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
    return p.stdout.decode().strip(), ""


def run_torch_jobs(work, jobs):
    jp = os.path.join(work, "torch_jobs.json")
    hp = os.path.join(work, "torch_helper.py")
    with open(jp, "w") as f:
        json.dump(jobs, f)
    with open(hp, "w") as f:
        f.write(TORCH_HELPER)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    p = subprocess.run([SYS_PY, hp, jp, C.FIXTURES, REAL], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=1800, cwd=work, env=env)
    if p.returncode != 0:
        raise RuntimeError("torch helper failed: " + p.stderr.decode("utf-8", "replace")[-3000:])
    return json.loads(p.stdout.decode())


def name_matches(reported, expected):
    return reported == expected or reported.endswith("." + expected)


def main():
    np, = C.import_deps("numpy")
    C.import_deps("safetensors")
    from safetensors import safe_open
    args = C.parse_args(__doc__)
    C.require_jsonschema()
    F = C.Failures()
    w = args.work
    refs_path = os.path.join(REAL, "refs.json")
    if not os.path.isfile(refs_path):
        C.skip("fixtures missing: %s (run /usr/bin/python3 tests/fixtures/"
               "make_real_checkpoints.py tests/fixtures/pth/real)" % refs_path)
    with open(refs_path) as f:
        refs = json.load(f)
    sys.path.insert(0, C.FIXTURES)
    import make_checkpoints as M  # torch-free parts only (the venv has no torch)
    tv, why = torch_version()
    print("torch under %s: %s" % (SYS_PY, tv or ("not available (%s)" % why)))
    good, refused = refs["good"], refs["refused"]
    T = refs["throwaway_module"]
    notes = []
    torch_jobs = []
    verified_f32 = {}  # (fixture, name) -> F32 bytes whose sha256 equals torch's

    def sandbox(tag, fx):
        """A copy of fixture ``fx`` in a folder of its own, with an empty out/ beside it."""
        d = os.path.join(w, tag, fx.replace(".", "_"))
        os.makedirs(os.path.join(d, "out"))
        src = os.path.join(d, fx)
        shutil.copyfile(os.path.join(REAL, fx), src)
        return d, src

    def check_st(group, what, out, expected, fp16=False):
        """Validate safetensors ``out`` against {name: ref}; with ``fp16`` the F32 tensors must
        be numpy's FP16 rounding of the verified F32 bytes, except those FP16 cannot hold
        (kept F32). Returns ({name: (dtype, shape, bytes)}, [kept names]) or (None, None)."""
        try:
            n, meta, tensors, data_len = S.read_st(out)
        except S.STError as e:
            F.fail("%s: %s: output is not valid safetensors: %s" % (group, what, e))
            return None, None
        try:
            with safe_open(out, framework="np") as f:
                keys = set(f.keys())
                for k in keys:
                    if tensors[k][0] != "BF16":
                        F.check(f.get_tensor(k).tobytes() == tensors[k][2],
                                "%s: %s: the safetensors package reads %s differently" % (
                                    group, what, k))
        except Exception as e:  # noqa: BLE001
            F.fail("%s: %s: the safetensors package refuses the output" % (group, what), str(e))
            return None, None
        F.check(keys == set(tensors), "%s: %s: the safetensors package sees other names" % (
            group, what))
        F.check(meta == {"format": "pt"}, "%s: %s: metadata %r, expected {'format': 'pt'}" % (
            group, what, meta))
        F.check(sorted(tensors) == sorted(expected),
                "%s: %s: tensor names differ from torch's state dict" % (group, what),
                "missing %s\nextra %s" % (sorted(set(expected) - set(tensors))[:8],
                                          sorted(set(tensors) - set(expected))[:8]))
        want_data = 0
        kept = []
        for name, t in expected.items():
            if name not in tensors:
                continue
            dt, shape, b = tensors[name]
            F.check(shape == t["shape"], "%s: %s: %s shape %s, expected %s" % (
                group, what, name, shape, t["shape"]))
            src = verified_f32.get((what.split(" ")[0], name))
            if fp16 and t["dtype"] == "F32":
                if src is None:
                    F.fail("%s: %s: %s: no verified F32 bytes to compare with (the plain "
                           "convert failed)" % (group, what, name))
                    continue
                keep = S.f16_range_keep(np, src, len(t["shape"]))
                if keep:
                    kept.append(name)
                    want_data += t["nbytes"]
                    F.check(dt == "F32" and b == src, "%s: %s: %s (beyond FP16's range: %s) "
                            "is %s, expected its F32 bytes" % (group, what, name, keep, dt))
                    continue
                want_data += t["nbytes"] // 2
                if F.check(dt == "F16", "%s: %s: %s is %s, expected F16" % (
                        group, what, name, dt)):
                    d = S.compare_f16(np, b, src, "%s %s" % (what, name))
                    F.check(not d, "%s: %s: %s is not numpy's FP16 rounding" % (
                        group, what, name), d)
            else:
                want_data += t["nbytes"]
                F.check(dt == t["dtype"], "%s: %s: %s dtype %s, expected %s" % (
                    group, what, name, dt, t["dtype"]))
                F.check(hashlib.sha256(b).hexdigest() == t["sha256"],
                        "%s: %s: %s bytes differ from torch's tensor" % (group, what, name))
        F.check(data_len == want_data, "%s: %s: data area %d bytes, expected exactly %d" % (
            group, what, data_len, want_data))
        return tensors, kept

    def convert_ok(group, fx, flags, out_name, key=None):
        """convert a sandboxed copy of ``fx``: exit 0, input unchanged, out/ holds exactly the
        output, the working folder nothing new. Returns (result, output path) or (r, None)."""
        d, src = sandbox(group + "_" + out_name.replace(".", "_"), fx)
        sha = C.sha256(src)
        out = os.path.join(d, "out", out_name)
        before = C.tree_state(d)
        argv = ["convert"] + flags + ([] if key is None else ["--key", key]) + [src, "-o", out]
        r = C.run(args.bin, *argv, cwd=d)
        F.check(C.sha256(src) == sha, "%s: %s: input changed" % (group, fx))
        if not F.check(r.rc == 0 and os.path.isfile(out), "%s: %s %s: exit %d" % (
                group, fx, " ".join(flags), r.rc), r.describe()):
            return r, None
        F.check(not r.err.strip(), "%s: %s: convert wrote to stderr" % (group, fx), r.err)
        F.check(os.listdir(os.path.join(d, "out")) == [out_name],
                "%s: %s: out/ holds %s, expected only %s" % (
                    group, fx, os.listdir(os.path.join(d, "out")), out_name))
        after = C.tree_state(d)
        extra = set(after) - set(before) - {os.path.join("out", out_name)}
        F.check(not extra, "%s: %s: left behind %s" % (group, fx, sorted(extra)))
        return r, out

    # ---- fixtures ------------------------------------------------------------------------
    for fx, ref in list(good.items()) + list(refused.items()):
        p = os.path.join(REAL, fx)
        if not F.check(os.path.isfile(p), "fixtures: %s missing" % fx):
            continue
        F.check(C.sha256(p) == ref["sha256"], "fixtures: %s differs from refs.json (regenerate "
                "both with make_real_checkpoints.py)" % fx)
        F.check(os.path.getsize(p) < 100 * 1024, "fixtures: %s is %d bytes (keep them < 100 KB)"
                % (fx, os.path.getsize(p)))
    for fx, ref in good.items():
        p = os.path.join(REAL, fx)
        if not os.path.isfile(p):
            continue
        with open(p, "rb") as f:
            head = f.read(4)
        if ref["container"] == "legacy":
            F.check(head == LEGACY_MAGIC, "fixtures: %s lacks the legacy magic" % fx)
        else:
            F.check(head == b"PK\x03\x04", "fixtures: %s is not a zip" % fx)
            with zipfile.ZipFile(p) as z:
                names = [n.split("/", 1)[1] for n in z.namelist()]
            ts = any(n.startswith("code/") for n in names) and "constants.pkl" in names
            F.check(ts == (ref["container"] == "TorchScript"),
                    "fixtures: %s: TorchScript layout %s, refs say %s" % (
                        fx, ts, ref["container"]))
    lpkl = M.read_pkl(os.path.join(REAL, "lightning.ckpt"))
    lglobs = {"%s %s" % g for g in M.pickle_globals(lpkl)}
    for c in refs["throwaway_classes"]:
        F.check("%s %s" % (T, c) in lglobs, "fixtures: lightning.ckpt does not name %s %s" % (
            T, c))
    ops = {op.name for op, _a, _p in pickletools.genops(lpkl)}
    F.check({"NEWOBJ", "APPENDS", "SETITEMS", "BUILD"} <= ops,
            "fixtures: lightning.ckpt's pickle lacks NEWOBJ / APPENDS / SETITEMS / BUILD",
            str(sorted(ops)))
    F.check(M.first_refused_global(M.read_pkl(os.path.join(
        REAL, "mal_hparams_os_system.ckpt"))) == ("os", "system"),
        "fixtures: mal_hparams_os_system.ckpt does not call os.system")

    # ---- inspect -------------------------------------------------------------------------
    for fx, ref in good.items():
        p = os.path.join(REAL, fx)
        r = C.run(args.bin, "inspect", "--json", p)
        if not F.check(r.rc == 0, "inspect: %s: exit %d" % (fx, r.rc), r.describe()):
            continue
        C.check_inspect_json(F, r.out, "inspect: %s" % fx)
        try:
            j = json.loads(r.out)["files"][0]
        except (ValueError, KeyError, IndexError) as e:
            F.fail("inspect: %s: output is not the expected JSON" % fx, "%s\n%s" % (
                e, r.out[:500]))
            continue
        F.check(j.get("format") == "pth", "inspect: %s: format %r" % (fx, j.get("format")))
        F.check(j.get("file_bytes") == ref["file_bytes"], "inspect: %s: file_bytes %r" % (
            fx, j.get("file_bytes")))
        F.check(j.get("container") == ref["container"], "inspect: %s: container %r, expected "
                "%r" % (fx, j.get("container"), ref["container"]))
        F.check(j.get("state_dict_key") == ref["state_dict_key"] and j.get("state_dict_found"),
                "inspect: %s: state_dict_key %r (found %r), expected %r" % (
                    fx, j.get("state_dict_key"), j.get("state_dict_found"),
                    ref["state_dict_key"]))
        F.check(j.get("module_class") == ref["module_class"], "inspect: %s: module_class %r, "
                "expected %r" % (fx, j.get("module_class"), ref["module_class"]))
        F.check(j.get("tensor_count") == ref["tensor_count"], "inspect: %s: tensor_count %r, "
                "torch counts %d tensors in the file" % (fx, j.get("tensor_count"),
                                                        ref["tensor_count"]))
        bd = j.get("breakdown") or {}
        for k, v in sorted(ref["breakdown"].items()):
            F.check(bd.get(k) == v, "inspect: %s: breakdown.%s = %r, expected %d" % (
                fx, k, bd.get(k), v), "breakdown %s\nexpected %s" % (bd, ref["breakdown"]))
        cands = j.get("state_dict_candidates") or []
        F.check([c.get("key") for c in cands] == ref["candidates"],
                "inspect: %s: candidates %s, expected %s" % (
                    fx, [c.get("key") for c in cands], ref["candidates"]))
        for c in cands:
            k = c.get("key")
            sd = ref["tensors"] if k == ref["state_dict_key"] else \
                ref["alt"].get(k, {}).get("tensors")
            F.check(c.get("chosen") == (k == ref["state_dict_key"]),
                    "inspect: %s: candidate %r chosen=%r" % (fx, k, c.get("chosen")))
            if sd is not None:
                F.check(c.get("tensors") == len(sd) and
                        c.get("bytes") == sum(t["nbytes"] for t in sd.values()),
                        "inspect: %s: candidate %r: %r tensors, %r bytes; torch: %d tensors, %d "
                        "bytes" % (fx, k, c.get("tensors"), c.get("bytes"), len(sd),
                                   sum(t["nbytes"] for t in sd.values())))
        got_sh = j.get("shared_storage") or []
        for g in ref["shared"]:
            hit = [x for x in got_sh if len(x.get("tensors", [])) == len(g) and
                   all(any(name_matches(str(rn), en) for rn in x["tensors"]) for en in g)]
            F.check(bool(hit), "inspect: %s: shared storage %s not reported" % (fx, g),
                    json.dumps(got_sh)[:400])
        objs = {o.get("class"): o.get("count") for o in (j.get("objects") or [])}
        for cls, n in sorted(ref["objects"].items()):
            F.check(objs.get(cls) == n, "inspect: %s: objects: %s x%s, expected x%d" % (
                fx, cls, objs.get(cls), n), "objects: %s" % json.dumps(j.get("objects")))
        for cls in objs:
            F.check(not cls.startswith(("os ", "posix ", "subprocess ", "builtins eval")),
                    "inspect: %s: a code-running global is listed as an object: %s" % (fx, cls))
        # the table
        r = C.run(args.bin, "inspect", p)
        if not F.check(r.rc == 0 and r.out.strip(), "inspect: %s (table): exit %d" % (
                fx, r.rc), r.describe()):
            continue
        first = r.out.splitlines()[0]
        if ref["container"] == "legacy":
            F.check("(legacy format)" in first, "inspect: %s: first line lacks '(legacy "
                    "format)'" % fx, first)
        elif ref["container"] == "TorchScript":
            F.check("TorchScript module (%s)" % ref["module_class"] in first,
                    "inspect: %s: first line lacks 'TorchScript module (%s)'" % (
                        fx, ref["module_class"]), first)
        elif ref["state_dict_key"] == "" and ref["module_class"]:
            F.check("a whole module (%s)" % ref["module_class"] in first,
                    "inspect: %s: first line lacks 'a whole module (%s)'" % (
                        fx, ref["module_class"]), first)
        if fx == "model_ema.pth":
            n1, n2 = len(ref["tensors"]), len(ref["alt"]["ema"]["tensors"])
            F.check(re.search(r"state dicts: model \(%d tensors, [^)]+\) \[chosen\], "
                              r"ema \(%d tensors, [^)]+\)" % (n1, n2), r.out),
                    "inspect: model_ema.pth: no 'state dicts: model (%d tensors, ...) [chosen], "
                    "ema (%d tensors, ...)' line" % (n1, n2), r.out)
        if fx == "lightning.ckpt":
            m = re.search(r"objects of other classes \(metadata, never run\): (.*)", r.out)
            if F.check(m, "inspect: lightning.ckpt: no 'objects of other classes (metadata, "
                       "never run): ...' line", r.out):
                for cls in ("DictConfig", "ListConfig"):
                    F.check("%s %s" % (T, cls) in m.group(1), "inspect: lightning.ckpt: the "
                            "objects line does not name %s %s" % (T, cls), m.group(0))

    # ---- convert -------------------------------------------------------------------------
    for fx, ref in good.items():
        r, out = convert_ok("convert", fx, [], "out.safetensors")
        if out:
            tensors, _k = check_st("convert", fx, out, ref["tensors"])
            for name, t in ref["tensors"].items():
                if tensors and name in tensors and t["dtype"] == "F32" and \
                        hashlib.sha256(tensors[name][2]).hexdigest() == t["sha256"]:
                    verified_f32[(fx, name)] = tensors[name][2]
            torch_jobs.append({"id": "st:" + fx, "kind": "st", "out": out,
                               "fixture": os.path.join(REAL, fx), "key": ref["state_dict_key"],
                               "shared": ref["shared"]})
            also = [c for c in ref["candidates"] if c != ref["state_dict_key"]]
            if also:
                want = "state dict %s (also in the file: %s)" % (ref["state_dict_key"],
                                                                  ", ".join(also))
                F.check(want in r.out, "convert: %s: the line lacks %r" % (fx, want), r.out)
        r, out = convert_ok("format_pth", fx, ["--format", "pth"], "out.pth")
        if out:
            with open(out, "rb") as f:
                F.check(f.read(4) == b"PK\x03\x04", "format_pth: %s: output is not a zip" % fx)
            r2 = C.run(args.bin, "inspect", "--json", out)
            if F.check(r2.rc == 0, "format_pth: %s: inspect of the output fails" % fx,
                       r2.describe()) and C.check_inspect_json(F, r2.out, "format_pth: %s" % fx):
                j2 = json.loads(r2.out)["files"][0]
                F.check(j2.get("tensor_count") == len(ref["tensors"]) and
                        j2.get("container") == "zip",
                        "format_pth: %s: the output holds %r tensors (%r), expected %d in a zip"
                        % (fx, j2.get("tensor_count"), j2.get("container"),
                           len(ref["tensors"])))
            torch_jobs.append({"id": "pth:" + fx, "kind": "pth", "out": out,
                               "fixture": os.path.join(REAL, fx), "key": ref["state_dict_key"],
                               "shared": ref["shared"]})
    # --key: the other candidate
    ref = good["model_ema.pth"]
    r, out = convert_ok("key", "model_ema.pth", [], "ema.safetensors", key="ema")
    if out:
        F.check("state dict ema (also in the file: model)" in r.out,
                "key: model_ema.pth --key ema: the line lacks 'state dict ema (also in the "
                "file: model)'", r.out)
        check_st("key", "model_ema.pth --key ema", out, ref["alt"]["ema"]["tensors"])
        torch_jobs.append({"id": "st:model_ema.pth --key ema", "kind": "st", "out": out,
                           "fixture": os.path.join(REAL, "model_ema.pth"), "key": "ema",
                           "shared": []})
    r, out = convert_ok("key", "model_ema.pth", ["--format", "pth"], "ema.pth", key="ema")
    if out:
        torch_jobs.append({"id": "pth:model_ema.pth --key ema", "kind": "pth", "out": out,
                           "fixture": os.path.join(REAL, "model_ema.pth"), "key": "ema",
                           "shared": ref["alt"]["ema"]["shared"]})
    tref = refused["two_dicts.pth"]
    for k in ("generator", "discriminator"):
        r, out = convert_ok("key", "two_dicts.pth", [], k + ".safetensors", key=k)
        if out:
            check_st("key", "two_dicts.pth --key " + k, out, tref["alt"][k]["tensors"])
            torch_jobs.append({"id": "st:two_dicts.pth --key " + k, "kind": "st", "out": out,
                               "fixture": os.path.join(REAL, "two_dicts.pth"), "key": k,
                               "shared": []})

    # ---- fp16 / bf16 ---------------------------------------------------------------------
    kept_total = 0
    for fx in ("legacy_bare.pth", "ts_script.pt", "lightning.ckpt", "model_ema.pth",
               "whole_module.pth"):
        ref = good[fx]
        r, out = convert_ok("fp16", fx, ["--fp16"], "fp16.safetensors")
        if not out:
            continue
        _t, kept = check_st("fp16", fx, out, ref["tensors"], fp16=True)
        if kept is None:
            continue
        kept_total += len(kept)
        m = re.search(r"kept fp32: (\d+) tensors?", r.out)
        F.check(int(m.group(1) if m else 0) == len(kept), "fp16: %s: the line says %s tensors "
                "kept FP32, the rule keeps %d (%s)" % (fx, m.group(1) if m else "no",
                                                       len(kept), kept), r.out)
        if fx in ("ts_script.pt", "whole_module.pth"):
            r, out = convert_ok("fp16", fx, ["--fp16", "--format", "pth"], "fp16.pth")
            if out:
                torch_jobs.append({"id": "pth fp16:" + fx, "kind": "pth", "out": out,
                                   "fixture": os.path.join(REAL, fx),
                                   "key": ref["state_dict_key"], "shared": ref["shared"],
                                   "fp16": True, "kept": kept})
    F.check(kept_total >= 1, "fp16: no fixture holds a tensor beyond FP16's range (TinyLM's "
            "-1e9 mask should be one)")
    print("fp16: %d tensors kept FP32 by the range rule" % kept_total)
    ref = good["ts_trace.pt"]
    r, out = convert_ok("bf16", "ts_trace.pt", ["--bf16"], "bf16.safetensors")
    if out:
        try:
            _n, _m, tensors, _d = S.read_st(out)
            F.check(sorted(tensors) == sorted(ref["tensors"]), "bf16: ts_trace.pt: names differ")
            for name, t in ref["tensors"].items():
                src = verified_f32.get(("ts_trace.pt", name))
                if name not in tensors or (src is None and t["dtype"] == "F32"):
                    F.fail("bf16: ts_trace.pt: %s missing or unverified" % name)
                    continue
                dt, _s, b = tensors[name]
                if t["dtype"] != "F32":
                    F.check(dt == t["dtype"] and hashlib.sha256(b).hexdigest() == t["sha256"],
                            "bf16: ts_trace.pt: %s (%s) changed" % (name, t["dtype"]))
                    continue
                if F.check(dt == "BF16", "bf16: ts_trace.pt: %s is %s" % (name, dt)):
                    d = S.compare_bf16(np, b, src, name)
                    F.check(not d, "bf16: ts_trace.pt: %s is not the RNE reference" % name, d)
        except S.STError as e:
            F.fail("bf16: ts_trace.pt: invalid output", str(e))

    # ---- torch ---------------------------------------------------------------------------
    if tv and torch_jobs:
        res = run_torch_jobs(w, torch_jobs)
        for e in res["pre"]:
            F.fail("torch: " + e)
        F.check(not res["pre"], "torch: the throwaway module is gone and torch needs it")
        by_id = {x["id"]: x for x in res["jobs"]}
        for job in torch_jobs:
            rr = by_id.get(job["id"], {"errors": ["no result"], "done": []})
            F.check(not rr["errors"], "torch: %s: torch disagrees" % job["id"],
                    "\n".join(rr["errors"][:10]))
            F.check(len(rr["done"]) >= 2 or (job["kind"] == "st" and rr["done"]),
                    "torch: %s: the comparison did not run to the end (%s)" % (
                        job["id"], rr["done"]))
            if not rr["errors"]:
                print("  torch %s: %s" % (job["id"], ", ".join(rr["done"])))

    # ---- refused -------------------------------------------------------------------------
    marker = refs["marker"]
    for fx, info in sorted(refused.items()):
        for flags, out_name in (([], "out.safetensors"), (["--format", "pth"], "out.pth")):
            d, src = sandbox("refused_" + out_name.replace(".", "_"), fx)
            sha = C.sha256(src)
            before = C.tree_state(d)
            r = C.run(args.bin, "convert", *flags, src, "-o", os.path.join(d, "out", out_name),
                      cwd=d)
            what = "refused: %s%s" % (fx, "".join(" " + x for x in flags))
            F.check(r.rc == 1, "%s: convert exits %d, expected 1" % (what, r.rc), r.describe())
            if F.check(S.one_line(r), "%s: stderr is not one line" % what, r.describe()):
                line = r.err.strip()
                F.check(line.startswith("modelshrink: ") and src in line,
                        "%s: the line does not start 'modelshrink: IN:'" % what, line)
                for wd in info["words"]:
                    F.check(wd in line, "%s: the line lacks %r" % (what, wd), line)
            F.check(not r.out.strip(), "%s: something on stdout" % what, r.out)
            F.check(C.sha256(src) == sha, "%s: input changed" % what)
            F.check(C.tree_state(d) == before, "%s: something was left behind" % what,
                    str(sorted(set(C.tree_state(d)) - set(before))))
            if fx != "two_dicts.pth":
                for flag in ([], ["--json"]):
                    r = C.run(args.bin, "inspect", *flag, src, cwd=d)
                    if flag:
                        C.check_inspect_json(F, r.out, "%s: inspect --json" % what)
                    F.check(r.rc == 1 and S.one_line(r) and
                            all(wd in r.err for wd in info["words"]),
                            "%s: inspect%s does not exit 1 with one line holding %s" % (
                                what, "".join(" " + x for x in flag), info["words"]),
                            r.describe())
                F.check(C.tree_state(d) == before, "%s: inspect left something" % what)
            for root in (d, w, os.getcwd()):
                F.check(not os.path.exists(os.path.join(root, marker)) or not info["marker"],
                        "%s: the payload ran (%s exists in %s)" % (what, marker, root))
    # two_dicts.pth: inspect describes the file and names both candidates, choosing none
    r = C.run(args.bin, "inspect", "--json", os.path.join(REAL, "two_dicts.pth"))
    C.check_inspect_json(F, r.out, "refused: two_dicts.pth: inspect --json")
    if F.check(r.rc == 0, "refused: two_dicts.pth: inspect --json exits %d" % r.rc,
               r.describe()):
        j = json.loads(r.out)["files"][0]
        cands = [(c.get("key"), c.get("tensors"), c.get("chosen"))
                 for c in j.get("state_dict_candidates") or []]
        want = [(k, len(refused["two_dicts.pth"]["alt"][k]["tensors"]), False)
                for k in ("generator", "discriminator")]
        F.check(not j.get("state_dict_found") and cands == want,
                "refused: two_dicts.pth: inspect --json: found %r, candidates %r; expected none "
                "found and %r" % (j.get("state_dict_found"), cands, want))
    r = C.run(args.bin, "inspect", os.path.join(REAL, "two_dicts.pth"))
    F.check(r.rc == 0 and "--key" in r.out and "generator" in r.out and
            "discriminator" in r.out, "refused: two_dicts.pth: inspect does not point to --key "
            "and the two candidates", r.describe())

    for n in notes:
        print("NOTE: " + n)
    rc = F.finish(NAME)
    if rc == 0 and not tv:
        C.skip("all torch-free checks passed, but %s cannot import torch, so the torch group "
               "did not run (apt-get install python3-torch)" % SYS_PY)
    return rc


if __name__ == "__main__":
    C.run_main(NAME, main)
