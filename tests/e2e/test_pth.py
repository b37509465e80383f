#!/usr/bin/env python3
"""End-to-end: PyTorch checkpoints (torch.save zip and legacy formats) in and safetensors out.

Fixtures: tests/fixtures/pth/, written by tests/fixtures/make_checkpoints.py with Debian's
python3-torch 1.13, with refs.json (every tensor's dtype, shape, storage and sha256 as torch
loads it), so most checks need no torch. Check groups (each failure names its group):

- fixtures: the committed files match refs.json (sha256), every good zip one is an all-STORED
  zip with one prefix, legacy.pth starts with the legacy magic, every refused one's pickle
  parses with pickletools and calls the global refs.json names (found statically; nothing is
  unpickled).
- inspect: `inspect --json` on every good checkpoint: format "pth", container (zip / legacy),
  file_bytes, tensor_count, state_dict_key, the breakdown (weights / optimizer_state /
  other_tensors / metadata) equal to the reference byte for byte and summing to file_bytes,
  shared_storage groups, by_dtype counts; resnet_adam's optimizer state is 2x its weights within
  2%; the table form prints "X = Y weights + Z optimizer state ..."; legacy.pth says "(legacy
  format)"; full_module.pth's module_class is torch.nn.modules.linear Linear;
  argparse_namespace.pth lists the Namespace among the objects of other classes.
- convert: `convert X.pth -o Y.safetensors` on every good checkpoint: exit 0, the output is a
  strictly valid safetensors file (own reader + the safetensors package), metadata
  {"format": "pt"}, the names are the state-dict keys (nested dicts joined with '.'), every
  tensor's dtype, shape and bytes equal torch's contiguous tensor (sha256), the data area is
  exactly the tensors' bytes (views and slices contiguous, shared storages copied), the input
  is unchanged; `--key ema_state_dict` picks that entry. The good fixtures include the
  legacy stream (legacy.pth), a whole nn.Linear (full_module.pth) and a state dict beside an
  argparse.Namespace (argparse_namespace.pth), which the reader refused before issue 17.
- fp16 / bf16: `--fp16` and `--bf16`: F32 tensors become F16 / BF16 equal to numpy's
  round-to-nearest-even of the (saturated, for FP16) F32 values bit for bit; other dtypes keep
  their bytes.
- torch: (/usr/bin/python3 with torch) every converted state dict is read back into torch
  tensors and equals torch.load of the original; the model's load_state_dict(strict=True)
  accepts it.
- format_pth: `--format pth` (weights-only .pth): torch.load(weights_only=True) loads it,
  load_state_dict accepts it, values bit-identical, tied weights still share one storage
  (also for legacy.pth and full_module.pth).
  When the binary rejects `--format pth` as a usage error these checks are reported as
  NOT SUPPORTED and not counted.
- refused: hand-written malicious pickles (os.system, posix.system via STACK_GLOBAL,
  builtins.eval, subprocess.Popen after a valid tensor, torch.storage._load_from_bytes,
  _rebuild_device_tensor_from_numpy, INST os.system): exit 1, one stderr line naming the file,
  saying "refused" and naming the global's module and name; no marker file appears; no output;
  the input is unchanged.
- zip: zips written by the fixture script's own writer convert (control.pth, and
  deflate_pkl.pth whose data.pkl alone is DEFLATE-compressed), and each zip problem (../,
  absolute and backslash names, a DEFLATE storage, duplicate, overlapping entries, two
  prefixes, wrong / past-the-end central directory offset, an entry past the end, truncated,
  missing or short storage, central/local name mismatch) exits 1 with one line, no output, and
  the input unchanged; `inspect` also exits 1 with one line.

Exit 0 / 1; 77 when numpy or safetensors is missing, or when everything else passed but
/usr/bin/python3 cannot import torch (the torch and format_pth groups did not run)."""

import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402
import st_common as S  # noqa: E402

NAME = "test_pth"
PTH = os.path.join(C.FIXTURES, "pth")
SYS_PY = "/usr/bin/python3"

# Runs under /usr/bin/python3 with torch: argv[1] = jobs JSON; prints a JSON list of results.
TORCH_HELPER = r'''
import json, os, struct, sys
import torch
sys.path.insert(0, sys.argv[2])
import make_checkpoints as M

def flatten(obj, prefix, out):
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            flatten(v, (prefix + "." if prefix else "") + str(k), out)
    return out

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
        if len(buf) == 0:
            x = torch.empty(t["shape"], dtype=dt)
        else:
            x = torch.frombuffer(buf, dtype=dt).reshape(t["shape"])
        out[k] = x
    return out

def same(a, b):
    if a.dtype != b.dtype or list(a.shape) != list(b.shape):
        return False
    return M.tensor_bytes(a) == M.tensor_bytes(b)

res = []
for job in json.load(open(sys.argv[1])):
    r = {"id": job["id"], "errors": [], "loaded_model": None}
    try:
        orig = torch.load(job["fixture"], map_location="cpu")
        key = job["sd_key"]
        sd = orig if key == "" else orig[key]
        if isinstance(sd, torch.nn.Module):
            sd = sd.state_dict()
        want = flatten(sd, "", {})
        if job["kind"] == "st":
            got = read_st(job["out"])
        else:
            obj = torch.load(job["out"], map_location="cpu", weights_only=True)
            got = flatten(obj, "", {})
            for grp in job.get("shared", []):
                ptrs = {got[n].storage().data_ptr() for n in grp if n in got}
                if len(ptrs) != 1:
                    r["errors"].append("tensors %s no longer share one storage" % grp)
        if sorted(got) != sorted(want):
            r["errors"].append("names differ: missing %s, extra %s" % (
                sorted(set(want) - set(got))[:5], sorted(set(got) - set(want))[:5]))
        for k in want:
            if k in got and not same(want[k], got[k]):
                r["errors"].append("tensor %s differs (%s %s vs %s %s)" % (
                    k, want[k].dtype, list(want[k].shape), got[k].dtype, list(got[k].shape)))
        model = M.build_model(job["fixture"]) if job.get("model", True) else None
        if model is not None:
            skip = job.get("skip_prefix")
            model.load_state_dict({k: v for k, v in got.items()
                                   if not (skip and k.startswith(skip))}, strict=True)
            r["loaded_model"] = True
    except Exception as e:
        r["errors"].append("%s: %s" % (type(e).__name__, e))
    res.append(r)
print(json.dumps(res))
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
    p = subprocess.run([SYS_PY, hp, jp, C.FIXTURES], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError("torch helper failed: " + p.stderr.decode("utf-8", "replace")[-3000:])
    return {r["id"]: r for r in json.loads(p.stdout.decode())}


def sd_expected(ref, key=None):
    """{name: tensor ref} of the state dict (refs.json), or of entry ``key`` when given."""
    out = {}
    for t in ref["tensors"]:
        if key is None:
            if t["sd_name"] is not None:
                out[t["sd_name"]] = t
        elif t["path"][:1] == [key]:
            out[".".join(t["path"][1:])] = t
    return out


def name_matches(reported, expected):
    return (reported == expected or reported.endswith("." + expected) or
            reported.endswith("/" + expected))


def check_storages_once(F, fx, ref, j):
    """inspect --json of a checkpoint counts each storage once (tied weights, views), for the
    whole file and for the state dict, and lists the largest tensors like ONNX's inspect."""
    sto = ref["storages"]
    got = sum(x.get("bytes", 0) for x in j.get("by_dtype") or [])
    F.check(got == ref["tensor_bytes_storage"] and j.get("storage_count") == len(sto),
            "inspect: %s: by_dtype's bytes are the %d storages' (%d), each counted once" % (
                fx, len(sto), ref["tensor_bytes_storage"]),
            "by_dtype sums to %r, storage_count %r" % (got, j.get("storage_count")))
    sd = [t for t in ref["tensors"] if t.get("sd_name") is not None]
    ids = {t["storage"] for t in sd}
    want = {"tensors": len(sd), "storages": len(ids), "bytes": sum(sto[i]["nbytes"] for i in ids)}
    js = j.get("state_dict") or {}
    gotsd = {k: js.get(k) for k in want}
    F.check(gotsd == want and sum(x.get("bytes", 0) for x in js.get("by_dtype") or []) ==
            want["bytes"] and sum(x.get("count", 0) for x in js.get("by_dtype") or []) ==
            len(sd), "inspect: %s: state_dict counts its tensors and storages, each storage "
            "once" % fx, "got %s\nexpected %s" % (json.dumps(js)[:400], want))
    users = {}
    for t in ref["tensors"]:
        users[t["storage"]] = users.get(t["storage"], 0) + 1
    big = sorted(ref["tensors"], key=lambda t: -t["nbytes"])[:10]
    lg = j.get("largest") or []
    F.check([x.get("bytes") for x in lg] == [t["nbytes"] for t in big] and
            sorted(x.get("storage_views") for x in lg) == sorted(users[t["storage"]] for t in big)
            and all(x.get("name") and x.get("shape") is not None and x.get("role") for x in lg),
            "inspect: %s: largest lists the 10 largest tensors with type, shape, role and their "
            "storage's views" % fx, json.dumps(lg)[:600])


def main():
    np, = C.import_deps("numpy")
    C.import_deps("safetensors")
    C.require_jsonschema()
    from safetensors import safe_open
    args = C.parse_args(__doc__)
    F = C.Failures()
    w = args.work
    refs_path = os.path.join(PTH, "refs.json")
    if not os.path.isfile(refs_path):
        C.skip("fixtures missing: %s (run /usr/bin/python3 tests/fixtures/make_checkpoints.py "
               "tests/fixtures/pth)" % refs_path)
    with open(refs_path) as f:
        refs = json.load(f)
    sys.path.insert(0, C.FIXTURES)
    import make_checkpoints as M  # torch-free parts only (the venv has no torch)
    import hashlib
    import pickletools
    import zipfile

    compared = {}  # fp16 / bf16 -> F32 values compared with the reference
    tv, why = torch_version()
    print("torch under %s: %s" % (SYS_PY, tv or ("not available (%s)" % why)))
    notes = []

    def sha_bytes(b):
        return hashlib.sha256(b).hexdigest()

    def check_st_output(group, fx, out, expected, meta_pt=True, transform=None):
        """Validate safetensors ``out`` against {name: tensor ref}. ``transform``: 'fp16' /
        'bf16': F32 tensors must hold the RNE reference of the F32 bytes that the plain
        convert wrote and that matched torch's sha256 (``transform_src``)."""
        try:
            n, meta, tensors, data_len = S.read_st(out)
        except S.STError as e:
            F.fail("%s: %s: output is not valid safetensors: %s" % (group, fx, e))
            return None
        try:
            with safe_open(out, framework="np") as f:
                keys = set(f.keys())
                pmeta = f.metadata()
                for k in keys:
                    if tensors[k][0] not in ("BF16",):
                        a = f.get_tensor(k)
                        F.check(a.tobytes() == tensors[k][2],
                                "%s: %s: safetensors package reads %s differently" % (
                                    group, fx, k))
        except Exception as e:  # noqa: BLE001
            F.fail("%s: %s: the safetensors package refuses the output" % (group, fx), str(e))
            return None
        F.check(keys == set(tensors), "%s: %s: safetensors package sees other names" % (group, fx))
        if meta_pt:
            F.check(meta == {"format": "pt"} and pmeta == {"format": "pt"},
                    "%s: %s: metadata is %r, expected {'format': 'pt'}" % (group, fx, meta))
        F.check(n % 8 == 0, "%s: %s: header length %d is not a multiple of 8" % (group, fx, n))
        F.check(sorted(tensors) == sorted(expected),
                "%s: %s: tensor names differ from the state-dict keys" % (group, fx),
                "missing %s\nextra %s" % (sorted(set(expected) - set(tensors))[:8],
                                          sorted(set(tensors) - set(expected))[:8]))
        want_data = 0
        for name, t in expected.items():
            if name not in tensors:
                continue
            dt, shape, b = tensors[name]
            F.check(shape == t["shape"], "%s: %s: %s shape %s, expected %s" % (
                group, fx, name, shape, t["shape"]))
            src = transform_src.get((fx, name))
            if transform == "fp16" and t["dtype"] == "F32" and src is not None and \
                    S.f16_range_keep(np, src, len(t["shape"])):
                # FP16 cannot hold it: kept FP32, byte for byte (README, "FP16 range")
                want_data += t["nbytes"]
                kept_fp32[fx] = kept_fp32.get(fx, 0) + 1
                F.check(dt == "F32" and b == src, "%s: %s: %s (beyond FP16's range: %s) is %s, "
                        "expected its F32 bytes" % (group, fx, name,
                                                    S.f16_range_keep(np, src, len(t["shape"])), dt))
            elif transform and t["dtype"] == "F32":
                want_dt = "BF16" if transform == "bf16" else "F16"
                want_data += t["nbytes"] // 2
                if F.check(dt == want_dt, "%s: %s: %s is %s, expected %s" % (
                        group, fx, name, dt, want_dt)):
                    if src is None:
                        notes.append("%s: %s: %s: no verified F32 bytes to compare with" % (
                            group, fx, name))
                    else:
                        cmp = S.compare_bf16 if transform == "bf16" else S.compare_f16
                        d = cmp(np, b, src, "%s %s" % (fx, name))
                        compared[transform] = compared.get(transform, 0) + len(src) // 4
                        F.check(not d, "%s: %s: %s values are not the RNE reference" % (
                            group, fx, name), d)
            else:
                want_data += t["nbytes"]
                F.check(dt == t["dtype"], "%s: %s: %s dtype %s, expected %s" % (
                    group, fx, name, dt, t["dtype"]))
                F.check(sha_bytes(b) == t["sha256"], "%s: %s: %s bytes differ from torch's "
                        "contiguous tensor" % (group, fx, name))
        F.check(data_len == want_data, "%s: %s: data area %d bytes, expected exactly %d" % (
            group, fx, data_len, want_data))
        F.check(os.path.getsize(out) == 8 + n + want_data,
                "%s: %s: output size %d != 8 + header %d + data %d" % (
                    group, fx, os.path.getsize(out), n, want_data))
        return tensors

    def expect_refusal(group, path, words, any_words=(), work_sub=None):
        """convert and inspect must exit 1 with one stderr line naming the file and containing
        every string in ``words``; no output; input unchanged; nothing created in the cwd."""
        base = os.path.basename(path)
        sand = os.path.join(w, work_sub or ("cwd_" + group), base)
        os.makedirs(sand)
        src = os.path.join(sand, base)
        shutil.copyfile(path, src)
        outdir = os.path.join(sand, "out")
        os.makedirs(outdir)
        before = C.tree_state(sand)
        sha = C.sha256(src)
        r = C.run(args.bin, "convert", src, "-o", os.path.join(outdir, "out.safetensors"),
                  cwd=sand)
        F.check(r.rc == 1, "%s: %s: convert exits %d, expected 1" % (group, base, r.rc),
                r.describe())
        if F.check(S.one_line(r), "%s: %s: convert stderr is not one line" % (group, base),
                   r.describe()):
            line = r.err.strip()
            F.check(base in line, "%s: %s: the message does not name the file" % (group, base),
                    line)
            for wd in words:
                F.check(wd.lower() in line.lower(), "%s: %s: the message lacks %r" % (
                    group, base, wd), line)
            if any_words and not any(x in line for x in any_words):
                notes.append("%s: %s: message does not name %s: %s" % (
                    group, base, " / ".join(any_words), line))
        F.check(os.listdir(outdir) == [], "%s: %s: output folder not empty: %s" % (
            group, base, os.listdir(outdir)))
        F.check(C.sha256(src) == sha, "%s: %s: input changed" % (group, base))
        F.check(C.tree_state(sand) == before, "%s: %s: something appeared in the working "
                "folder" % (group, base), str(sorted(set(C.tree_state(sand)) - set(before))))
        r2 = C.run(args.bin, "inspect", src, cwd=sand)
        F.check(r2.rc == 1 and S.one_line(r2), "%s: %s: inspect does not exit 1 with one line"
                % (group, base), r2.describe())
        r3 = C.run(args.bin, "inspect", "--json", src, cwd=sand)
        F.check(r3.rc == 1, "%s: %s: inspect --json exits %d, expected 1" % (
            group, base, r3.rc), r3.describe())
        F.check(C.tree_state(sand) == before, "%s: %s: inspect left something in the working "
                "folder" % (group, base))
        return r

    # ---- fixtures ------------------------------------------------------------------------
    for fx, ref in refs["good"].items():
        p = os.path.join(PTH, fx)
        if not F.check(os.path.isfile(p), "fixtures: %s missing" % fx):
            continue
        F.check(C.sha256(p) == ref["sha256"], "fixtures: %s differs from refs.json (regenerate "
                "both with make_checkpoints.py)" % fx)
        if ref.get("container") == "legacy":
            with open(p, "rb") as f:
                F.check(f.read(4) == b"\x80\x02\x8a\x0a", "fixtures: %s lacks the legacy magic"
                        % fx)
            continue
        with zipfile.ZipFile(p) as z:
            infos = z.infolist()
            F.check(all(i.compress_type == zipfile.ZIP_STORED for i in infos),
                    "fixtures: %s has compressed entries" % fx)
            F.check(len({i.filename.split("/", 1)[0] for i in infos}) == 1,
                    "fixtures: %s has more than one prefix" % fx)
            F.check(z.testzip() is None, "fixtures: %s CRC error" % fx)
    resnet = refs["good"]["resnet_adam.pth"]["breakdown"]
    F.check(abs(resnet["optimizer_state"] / resnet["weights"] - 2) <= 0.04,
            "fixtures: resnet_adam optimizer state is not 2x weights within 2%%: %r" % resnet)
    for fx, info in refs["refused"].items():
        p = os.path.join(PTH, "refused", fx)
        if not F.check(os.path.isfile(p), "fixtures: refused/%s missing" % fx):
            continue
        pkl = M.read_pkl(p)
        try:
            list(pickletools.genops(pkl))
            ok = True
        except Exception as e:  # noqa: BLE001
            ok = False
            F.fail("fixtures: refused/%s: data.pkl does not parse" % fx, str(e))
        if ok:
            F.check(list(M.first_refused_global(pkl) or []) == info["global"],
                    "fixtures: refused/%s: first refused global is %r, refs say %r" % (
                        fx, M.first_refused_global(pkl), info["global"]))
    F.check(refs["good"].get("legacy.pth", {}).get("container") == "legacy",
            "fixtures: legacy.pth is not a good legacy fixture in refs.json")
    F.check(not any(os.path.exists(os.path.join(PTH, "refused", fx))
                    for fx in ("argparse_namespace.pth", "full_module.pth")),
            "fixtures: refused/ still holds argparse_namespace.pth or full_module.pth (they "
            "convert now; regenerate with make_checkpoints.py)")

    # ---- inspect -------------------------------------------------------------------------
    for fx, ref in refs["good"].items():
        src = os.path.join(PTH, fx)
        r = C.run(args.bin, "inspect", "--json", src)
        if not F.check(r.rc == 0, "inspect: %s: exit %d" % (fx, r.rc), r.describe()):
            continue
        C.check_inspect_json(F, r.out, "inspect: %s" % fx)
        try:
            j = json.loads(r.out)["files"][0]
        except (ValueError, KeyError, IndexError) as e:
            F.fail("inspect: %s: output is not the expected JSON" % fx, "%s\n%s" % (e, r.out[:500]))
            continue
        F.check(j.get("format") == "pth", "inspect: %s: format %r" % (fx, j.get("format")))
        F.check(j.get("container") == ref["container"], "inspect: %s: container %r, expected %r"
                % (fx, j.get("container"), ref["container"]))
        if fx == "full_module.pth":
            F.check(j.get("module_class") == "torch.nn.modules.linear Linear",
                    "inspect: full_module.pth: module_class %r" % j.get("module_class"))
        if fx == "argparse_namespace.pth":
            F.check({"class": "argparse Namespace", "count": 1} in (j.get("objects") or []),
                    "inspect: argparse_namespace.pth: objects %r lack argparse Namespace x1" % (
                        j.get("objects"),))
        F.check(j.get("file_bytes") == ref["file_bytes"], "inspect: %s: file_bytes %r, expected "
                "%d" % (fx, j.get("file_bytes"), ref["file_bytes"]))
        F.check(j.get("tensor_count") == len(ref["tensors"]), "inspect: %s: tensor_count %r, "
                "expected %d" % (fx, j.get("tensor_count"), len(ref["tensors"])))
        F.check(j.get("tensor_bytes") in (ref["tensor_bytes_storage"], ref["tensor_bytes_views"]),
                "inspect: %s: tensor_bytes %r, expected %d (storages) or %d (tensors)" % (
                    fx, j.get("tensor_bytes"), ref["tensor_bytes_storage"],
                    ref["tensor_bytes_views"]))
        F.check(j.get("state_dict_key") == ref["state_dict_key"], "inspect: %s: state_dict_key "
                "%r, expected %r" % (fx, j.get("state_dict_key"), ref["state_dict_key"]))
        bd = j.get("breakdown") or {}
        for k in ("weights", "optimizer_state", "other_tensors", "metadata"):
            F.check(bd.get(k) == ref["breakdown"][k], "inspect: %s: breakdown.%s = %r, "
                    "expected %d" % (fx, k, bd.get(k), ref["breakdown"][k]))
        if all(isinstance(bd.get(k), (int, float)) for k in ref["breakdown"]):
            F.check(sum(bd[k] for k in ref["breakdown"]) == ref["file_bytes"],
                    "inspect: %s: breakdown does not sum to file_bytes" % fx, str(bd))
        got_sh = j.get("shared_storage")
        if F.check(isinstance(got_sh, list), "inspect: %s: no shared_storage list" % fx):
            F.check(len(got_sh) == len(ref["shared_storage"]), "inspect: %s: %d shared-storage "
                    "groups, expected %d" % (fx, len(got_sh), len(ref["shared_storage"])),
                    json.dumps(got_sh)[:500])
            for g in ref["shared_storage"]:
                hit = [x for x in got_sh if isinstance(x, dict) and x.get("bytes") == g["bytes"]
                       and len(x.get("tensors", [])) == len(g["tensors"]) and
                       all(any(name_matches(str(rn), en) for rn in x["tensors"])
                           for en in g["tensors"])]
                F.check(bool(hit), "inspect: %s: shared storage %s (%d bytes) not reported" % (
                    fx, g["tensors"], g["bytes"]), json.dumps(got_sh)[:500])
        want_dt = {}
        for t in ref["tensors"]:
            want_dt[t["dtype"]] = want_dt.get(t["dtype"], 0) + 1
        got_dt = {}
        for x in j.get("by_dtype") or []:
            got_dt[S.canon_dtype(x.get("dtype"))] = x.get("count")
        F.check(got_dt == want_dt, "inspect: %s: by_dtype counts %r, expected %r" % (
            fx, got_dt, want_dt))
        check_storages_once(F, fx, ref, j)
        if fx == "resnet_adam.pth" and isinstance(bd.get("weights"), int) and bd["weights"]:
            ratio = bd.get("optimizer_state", 0) / bd["weights"]
            F.check(abs(ratio - 2) <= 0.04, "inspect: resnet_adam: optimizer/weights = %.4f, "
                    "expected 2 within 2%%" % ratio)
    # tied.pth: emb.weight and lm_head.weight view one 12.8 kB storage, stored once
    r = C.run(args.bin, "inspect", os.path.join(PTH, "tied.pth"))
    tied = refs["good"]["tied.pth"]
    F.check(r.rc == 0 and re.search(r"^  state dict model: 4 tensors in 3 storages, %s$" %
                                     re.escape(C.human_bytes(tied["tensor_bytes_storage"])),
                                     r.out, re.M) is not None and
            C.human_bytes(tied["tensor_bytes_views"]) not in r.out,
            "inspect: tied.pth: the state dict's line counts its 3 storages once (%d bytes, not "
            "the views' %d)" % (tied["tensor_bytes_storage"], tied["tensor_bytes_views"]),
            r.describe())
    F.check(re.search(r"^    FLOAT +4 tensors in 3 storages +%s$" % re.escape(
        C.human_bytes(tied["tensor_bytes_storage"])), r.out, re.M) is not None and
            re.search(r"^  largest tensors:\n +12\.8 kB +FLOAT +\[100,32\] +model\.emb\.weight "
                      r"\(weight, its storage viewed by 2 tensors\)$", r.out, re.M) is not None,
            "inspect: tied.pth: the state dict's type row and the largest tensors say which "
            "storage is shared", r.out)
    r = C.run(args.bin, "inspect", os.path.join(PTH, "legacy.pth"))
    first = r.out.splitlines()[0] if r.out.strip() else ""
    F.check(r.rc == 0 and "(legacy format)" in first,
            "inspect: legacy.pth: the first line lacks '(legacy format)'", r.describe())
    r = C.run(args.bin, "inspect", os.path.join(PTH, "argparse_namespace.pth"))
    F.check(r.rc == 0 and re.search(r"objects of other classes \(metadata, never run\):.*"
                                     r"argparse Namespace", r.out),
            "inspect: argparse_namespace.pth does not list the Namespace as metadata",
            r.describe())
    r = C.run(args.bin, "inspect", os.path.join(PTH, "resnet_adam.pth"))
    F.check(r.rc == 0 and re.search(r"=\s*[\d.]+\s*[kMG]?i?B\s+weights\s*\+\s*[\d.]+\s*[kMG]?i?B"
                                     r"\s+optimizer state", r.out),
            "inspect: resnet_adam table lacks 'X = Y weights + Z optimizer state'", r.describe())

    # ---- convert -------------------------------------------------------------------------
    transform_src = {}  # (fixture, name) -> F32 bytes verified against torch's sha256
    torch_jobs = []
    for fx, ref in refs["good"].items():
        src = os.path.join(w, "in", fx)
        os.makedirs(os.path.dirname(src), exist_ok=True)
        shutil.copyfile(os.path.join(PTH, fx), src)
        sha = C.sha256(src)
        out = os.path.join(w, "st", fx.replace(".pth", ".safetensors"))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        r = C.run(args.bin, "convert", src, "-o", out)
        F.check(C.sha256(src) == sha, "convert: %s: input changed" % fx)
        if not F.check(r.rc == 0 and os.path.isfile(out), "convert: %s: exit %d" % (fx, r.rc),
                       r.describe()):
            continue
        exp = sd_expected(ref)
        got = check_st_output("convert", fx, out, exp)
        if got:
            for name, t in exp.items():
                if name in got and t["dtype"] == "F32" and sha_bytes(got[name][2]) == t["sha256"]:
                    transform_src[(fx, name)] = got[name][2]
        torch_jobs.append({"id": "st:" + fx, "kind": "st", "out": out,
                           "fixture": os.path.join(PTH, fx), "sd_key": ref["state_dict_key"],
                           "skip_prefix": "extra." if fx == "bare_state_dict.pth" else None})
        F.check(sorted(os.listdir(os.path.dirname(out))) ==
                sorted(x for x in os.listdir(os.path.dirname(out)) if not x.startswith(".")),
                "convert: %s: a temporary file was left behind" % fx)
    # --key
    ref = refs["good"]["ema.pth"]
    out = os.path.join(w, "st", "ema_key.safetensors")
    r = C.run(args.bin, "convert", os.path.join(PTH, "ema.pth"), "--key", "ema_state_dict",
              "-o", out)
    if F.check(r.rc == 0, "convert: ema.pth --key ema_state_dict: exit %d" % r.rc, r.describe()):
        check_st_output("convert", "ema.pth --key ema_state_dict", out,
                        sd_expected(ref, "ema_state_dict"))
        torch_jobs.append({"id": "st:ema_key", "kind": "st", "out": out,
                           "fixture": os.path.join(PTH, "ema.pth"), "sd_key": "ema_state_dict"})
    out = os.path.join(w, "st", "nokey.safetensors")
    r = C.run(args.bin, "convert", os.path.join(PTH, "ema.pth"), "--key", "no_such_key",
              "-o", out)
    F.check(r.rc != 0 and S.one_line(r) and not os.path.exists(out),
            "convert: --key no_such_key does not fail with one line and no output", r.describe())

    # ---- fp16 / bf16 ---------------------------------------------------------------------
    # fp16: tensors FP16 cannot hold stay F32 (the rule, st_common.f16_range_keep); with
    # --fp16-clamp every F32 tensor becomes F16, clamped
    kept_fp32 = {}
    for mode in ("fp16", "fp16-clamp", "bf16"):
        flags = ["--fp16", "--fp16-clamp"] if mode == "fp16-clamp" else ["--" + mode]
        for fx in ("resnet_adam.pth", "bare_state_dict.pth", "sliced.pth", "tied.pth",
                   "nested.pth"):
            ref = refs["good"][fx]
            out = os.path.join(w, mode, fx.replace(".pth", ".safetensors"))
            os.makedirs(os.path.dirname(out), exist_ok=True)
            r = C.run(args.bin, "convert", *flags, os.path.join(PTH, fx), "-o", out)
            if F.check(r.rc == 0, "%s: %s: exit %d" % (mode, fx, r.rc), r.describe()):
                check_st_output(mode, fx, out, sd_expected(ref), transform=mode)
                if mode == "fp16":
                    m = re.search(r"kept fp32: (\d+) tensors?", r.out)
                    F.check(int(m.group(1) if m else 0) == kept_fp32.get(fx, 0),
                            "fp16: %s: the line says %s tensors kept FP32, the rule keeps %d" % (
                                fx, m.group(1) if m else "no", kept_fp32.get(fx, 0)), r.out)
    F.check(sum(kept_fp32.values()) >= 1, "fp16: the fixtures hold tensors beyond FP16's range "
            "(kept: %s)" % kept_fp32)

    # ---- format pth ----------------------------------------------------------------------
    pth_supported = None
    for fx in ("tied.pth", "resnet_adam.pth", "sliced.pth", "bare_state_dict.pth",
               "nested.pth", "proto4.pth", "legacy.pth", "full_module.pth",
               "argparse_namespace.pth"):
        ref = refs["good"][fx]
        out = os.path.join(w, "pth", fx)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        r = C.run(args.bin, "convert", "--format", "pth", os.path.join(PTH, fx), "-o", out)
        if pth_supported is None:
            pth_supported = not (r.rc != 0 and ("not implemented" in r.err.lower() or (
                r.rc == 2 and "format" in r.err.lower())))
            if not pth_supported:
                notes.append("format_pth: NOT SUPPORTED by this binary (%s); its checks did not "
                              "run" % r.err.strip()[:200])
                break
        if not F.check(r.rc == 0 and os.path.isfile(out), "format_pth: %s: exit %d" % (
                fx, r.rc), r.describe()):
            continue
        with open(out, "rb") as f:
            F.check(f.read(4) == b"PK\x03\x04", "format_pth: %s: output is not a zip" % fx)
        r2 = C.run(args.bin, "inspect", "--json", out)
        if F.check(r2.rc == 0, "format_pth: %s: inspect of the output fails" % fx, r2.describe()):
            bd = json.loads(r2.out)["files"][0].get("breakdown", {})
            F.check(bd.get("optimizer_state") == 0 and bd.get("other_tensors") == 0,
                    "format_pth: %s: output still holds non-weight tensors" % fx, str(bd))
        shared = [g["tensors"] for g in ref["shared_storage"]
                  if all(t is not None for t in g["tensors"])] if fx == "tied.pth" else []
        torch_jobs.append({"id": "pth:" + fx, "kind": "pth", "out": out,
                           "fixture": os.path.join(PTH, fx), "sd_key": ref["state_dict_key"],
                           "shared": shared,
                           "skip_prefix": "extra." if fx == "bare_state_dict.pth" else None})

    # ---- torch ---------------------------------------------------------------------------
    if tv and torch_jobs:
        res = run_torch_jobs(w, torch_jobs)
        for job in torch_jobs:
            rr = res.get(job["id"], {"errors": ["no result"]})
            grp = "torch" if job["kind"] == "st" else "format_pth"
            F.check(not rr["errors"], "%s: %s: torch disagrees" % (grp, job["id"]),
                    "\n".join(rr["errors"][:10]))
            if rr.get("loaded_model"):
                print("  %s: torch values equal; load_state_dict(strict=True) ok" % job["id"])

    # ---- refused -------------------------------------------------------------------------
    for fx, info in sorted(refs["refused"].items()):
        mod, nm = info["global"]
        inst = fx.startswith("mal_inst")
        words = ["refused"] if not inst else []
        r = expect_refusal("refused", os.path.join(PTH, "refused", fx),
                           words + ([] if inst else [mod, nm]),
                           any_words=(mod + " " + nm,) if inst else ())
        if info["marker"]:
            for root in (w, os.getcwd()):
                F.check(not os.path.exists(os.path.join(root, info["marker"])),
                        "refused: %s: the payload ran (%s exists)" % (fx, info["marker"]))
    # ---- zip -----------------------------------------------------------------------------
    valid_zip = sorted(fx for fx, why in refs["zip"].items() if why.startswith("valid"))
    F.check(valid_zip == ["control.pth", "deflate_pkl.pth"], "zip: the valid zip fixtures are %s"
            % valid_zip)
    for fx in valid_zip:
        ctl = os.path.join(w, "zip_" + fx.replace(".pth", ".safetensors"))
        r = C.run(args.bin, "convert", os.path.join(PTH, "zip", fx), "-o", ctl)
        if F.check(r.rc == 0, "zip: %s (valid, own writer) does not convert" % fx, r.describe()):
            try:
                _n, _m, ts, _d = S.read_st(ctl)
                wv = np.frombuffer(ts["w"][2], dtype=np.float32)
                F.check(sorted(ts) == ["b", "w"] and ts["w"][1] == [4, 4] and
                        np.array_equal(wv, np.arange(16, dtype=np.float32)) and
                        np.array_equal(np.frombuffer(ts["b"][2], np.float32), np.ones(4)),
                        "zip: %s values wrong" % fx)
            except (S.STError, KeyError) as e:
                F.fail("zip: %s output invalid" % fx, str(e))
    with zipfile.ZipFile(os.path.join(PTH, "zip", "deflate_pkl.pth")) as z:
        methods = {i.filename.split("/", 1)[1]: i.compress_type for i in z.infolist()}
    F.check(methods.get("data.pkl") == zipfile.ZIP_DEFLATED and
            all(m == zipfile.ZIP_STORED for n, m in methods.items() if n != "data.pkl"),
            "zip: deflate_pkl.pth is not 'data.pkl DEFLATE, the rest STORED'", str(methods))
    with zipfile.ZipFile(os.path.join(PTH, "zip", "deflate.pth")) as z:
        methods = {i.filename.split("/", 1)[1]: i.compress_type for i in z.infolist()}
    F.check(methods.get("data/0") == zipfile.ZIP_DEFLATED,
            "zip: deflate.pth's storage data/0 is not DEFLATE", str(methods))
    for fx in sorted(refs["zip"]):
        if fx in valid_zip:
            continue
        r = expect_refusal("zip", os.path.join(PTH, "zip", fx), [])
        if fx == "deflate.pth" and S.one_line(r):
            # a compressed storage cannot be mapped: still refused, and said so
            F.check(re.search(r"compress|deflate|stored", r.err, re.I),
                    "zip: deflate.pth: the message does not say the storage is compressed",
                    r.err.strip())

    for mode, n in sorted(compared.items()):
        print("%s: %d F32 values compared with the round-to-nearest-even reference" % (mode, n))
    for n in notes:
        print("NOTE: " + n)
    rc = F.finish(NAME)
    if rc == 0 and not tv:
        C.skip("all torch-free checks passed, but %s cannot import torch, so the torch and "
               "format_pth groups did not run (apt-get install python3-torch)" % SYS_PY)
    return rc


if __name__ == "__main__":
    C.run_main(NAME, main)
