#!/usr/bin/env python3
"""End-to-end: Hugging Face model folders converted as one model, and the output's extension
deciding its format.

Fixtures are made here: a small GPT-like model in Debian's torch (/usr/bin/python3): an
nn.Embedding whose weight the lm_head Linear shares (tied), a few Linear and LayerNorm layers
(the LayerNorms' ones and zeros are identical tensors in separate storages), an int64 buffer, and
a buffer beyond FP16's range. Saved three ways, each with config.json, tokenizer.json,
generation_config.json and a subfolder with a file:
  - bin1: one pytorch_model.bin (torch.save of the state dict);
  - bin3: three pytorch_model-0000k-of-00003.bin written by hand (the state dict split, the tied
    pair in one shard so it keeps sharing a storage) with pytorch_model.bin.index.json;
  - st3:  three model-0000k-of-00003.safetensors written with the safetensors package from numpy
    (lm_head.weight as its own copy: safetensors cannot alias) with model.safetensors.index.json.
The reference values come from torch.load(weights_only=False) of the original .bin files in a
separate /usr/bin/python3 process (and from the safetensors package for st3): every tensor's
bytes, written to files, compared here with numpy.

Checks, per fixture:
  - `convert F -o O --max-shard-size S` exits 0; O holds exactly model-0000k-of-0000n.safetensors
    for the partition this test computes from the rule (state-dict order, a tensor larger than S
    alone), model.safetensors.index.json and the copied files; the index's total_size is the sum
    of the shards' data bytes, its weight_map lists exactly the tensors written, each in the
    shard that holds it, and metadata.tied is {"lm_head.weight": "model.embed_tokens.weight"}
    for the .bin fixtures (absent for st3, whose lm_head is a copy); every shard opens with
    safetensors.safe_open and has metadata {"format": "pt"}; every tensor equals the original bit
    for bit; the tied key is written once; the other files are copied byte for byte; the input
    is unchanged; the line says "N -> M shards" (and the tied tensor);
  - `--fp16`: FLOAT tensors equal numpy's float16 rounding (st_common.f16_reference), except those
    the FP16 range rule keeps (st_common.f16_range_keep), which keep their FP32 bytes; the int64
    buffer keeps its bytes;
  - without --max-shard-size everything fits one model.safetensors and there is no index;
  - `inspect --json F`: format "hf", the shard count, the tied key, tensor bytes;
  - an existing output model folder is replaced; an existing folder that is not a model folder
    is refused (exit 2) and left alone.
Broken folders (copies of bin3 and st3): a missing shard, a tensor listed twice, a "../x" file
name, a tensor the index lists but its shard lacks, a shard the index does not list, a tensor
in the wrong shard, an index that is not an object, a symbolic link that leaves the folder:
exit 1, one line naming the folder, no output folder and no temporary left. A write that hits a
file-size limit (RLIMIT_FSIZE) also leaves nothing.
Batch: a tree with two model folders (one nested) and a loose .onnx: each folder is one model
(report records of format "hf", its files are not listed as "not models"), --resume skips all
three on a second run, --shard 0/2 and 1/2 split them disjointly, and a stale temporary folder of
a dead process is removed.
The output's extension: a checkpoint to x.pth is a weights-only .pth that
torch.load(weights_only=True) loads with the original values; to x.bin too; a safetensors file
with --format pth is a .pth; an ONNX model to x.safetensors, a checkpoint to x.onnx,
`--format safetensors -o x.pth`, a folder to x.pth, --max-shard-size on a file and a bad size are
usage errors (exit 2, one line, nothing written).

Exit 0 / 1; 77 when numpy or safetensors is missing, or /usr/bin/python3 cannot import torch."""

import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402
import st_common as S  # noqa: E402

NAME = "test_hf_folders"
SYS_PY = "/usr/bin/python3"
TIED = {"lm_head.weight": "model.embed_tokens.weight"}
OTHER_FILES = {"config.json": b'{"model_type": "tiny-gpt", "tie_word_embeddings": true}\n',
               "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n',
               "generation_config.json": b'{"max_length": 32}\n',
               "extra/notes.txt": b"a file in a subfolder\n"}
ST_DT = {"float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32", "uint8": "U8",
         "bool": "BOOL", "float64": "F64", "int8": "I8", "int16": "I16"}
SHARD_RE = re.compile(r"^model-(\d{5})-of-(\d{5})\.safetensors$")

# Runs under /usr/bin/python3 with torch. argv: out_dir. Writes the fixtures and, for the numpy
# side, every tensor of the state dict as raw bytes (arrays/<i>.raw + arrays.json).
MAKE = r'''
import json, os, sys
import torch
out = sys.argv[1]
torch.manual_seed(0)
D, V = 32, 48

class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = torch.nn.LayerNorm(D)
        self.q = torch.nn.Linear(D, D)
        self.up = torch.nn.Linear(D, 2 * D)
        self.down = torch.nn.Linear(2 * D, D)

class Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(V, D)
        self.layers = torch.nn.ModuleList([Block() for _ in range(3)])
        self.norm = torch.nn.LayerNorm(D)
        self.register_buffer("position_ids", torch.arange(16, dtype=torch.int64))
        # beyond FP16's range: the range test keeps it FP32 (and makes the conversion retry)
        self.register_buffer("big_scale", torch.full((4, 4), 1.0e6) * torch.randn(4, 4))

class GPT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = Inner()
        self.lm_head = torch.nn.Linear(D, V, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight   # tied

m = GPT()
sd = m.state_dict()
keys = list(sd)
assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()

def others(d):
    os.makedirs(os.path.join(d, "extra"), exist_ok=True)
    for rel, data in json.loads(sys.argv[2]).items():
        with open(os.path.join(d, rel), "wb") as f:
            f.write(data.encode("latin-1"))

d = os.path.join(out, "bin1")
os.makedirs(d)
torch.save(sd, os.path.join(d, "pytorch_model.bin"))
others(d)

# three shards by hand; the tied pair stays in the first one so that it shares a storage
d = os.path.join(out, "bin3")
os.makedirs(d)
rest = [k for k in keys if k not in ("model.embed_tokens.weight", "lm_head.weight")]
parts = [["model.embed_tokens.weight", "lm_head.weight"] + rest[:5], rest[5:14], rest[14:]]
wm, total = {}, 0
for i, part in enumerate(parts):
    fn = "pytorch_model-%05d-of-%05d.bin" % (i + 1, len(parts))
    torch.save({k: sd[k] for k in part}, os.path.join(d, fn))
    for k in part:
        wm[k] = fn
        total += sd[k].numel() * sd[k].element_size()
json.dump({"metadata": {"total_size": total}, "weight_map": wm},
          open(os.path.join(d, "pytorch_model.bin.index.json"), "w"), indent=2, sort_keys=True)
others(d)

# raw bytes for the safetensors fixture (written by the numpy side)
os.makedirs(os.path.join(out, "arrays"))
meta = []
for i, k in enumerate(keys):
    t = sd[k].contiguous()
    with open(os.path.join(out, "arrays", "%d.raw" % i), "wb") as f:
        f.write(t.numpy().tobytes())
    meta.append({"name": k, "dtype": str(t.numpy().dtype), "shape": list(t.shape)})
json.dump({"tensors": meta, "parts": parts}, open(os.path.join(out, "arrays.json"), "w"))
'''

# Runs under /usr/bin/python3 with torch. argv: jobs JSON: [{"files": [...], "out": dir}]:
# torch.load(weights_only=False) of each file, merged; every tensor's contiguous bytes to
# out/<i>.raw and out/index.json {name: {dtype, shape, file, storage}}.
DUMP = r'''
import json, os, sys
import torch
for job in json.load(open(sys.argv[1])):
    os.makedirs(job["out"], exist_ok=True)
    idx = {}
    n = 0
    for f in job["files"]:
        obj = torch.load(f, map_location="cpu", weights_only=False) if job.get("full", 1) \
            else torch.load(f, map_location="cpu", weights_only=True)
        for k, v in obj.items():
            t = v.contiguous()
            p = os.path.join(job["out"], "%d.raw" % n)
            with open(p, "wb") as fh:
                fh.write(t.numpy().tobytes())
            idx[k] = {"dtype": str(t.numpy().dtype), "shape": list(t.shape), "file": p,
                      "storage": "%s:%d" % (f, v.storage().data_ptr())}
            n += 1
    json.dump(idx, open(os.path.join(job["out"], "index.json"), "w"))
'''


def torch_ok():
    try:
        p = subprocess.run([SYS_PY, "-c", "import torch"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=300)
        return p.returncode == 0, p.stderr.decode("utf-8", "replace")[-300:]
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)


def sys_py(script, *args):
    p = subprocess.run([SYS_PY, "-c", script] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=600)
    if p.returncode != 0:
        raise RuntimeError("torch helper failed:\n" + p.stderr.decode("utf-8", "replace")[-3000:])
    return p.stdout.decode()


def make_fixtures(np, work):
    fx = os.path.join(work, "fixtures")
    os.makedirs(fx)
    sys_py(MAKE, fx, json.dumps({k: v.decode("latin-1") for k, v in OTHER_FILES.items()}))
    # st3: the same tensors as safetensors shards written with the safetensors package
    from safetensors.numpy import save_file
    meta = json.load(open(os.path.join(fx, "arrays.json")))
    arrays = {}
    for i, t in enumerate(meta["tensors"]):
        raw = open(os.path.join(fx, "arrays", "%d.raw" % i), "rb").read()
        arrays[t["name"]] = np.frombuffer(raw, dtype=t["dtype"]).reshape(t["shape"]).copy()
    d = os.path.join(fx, "st3")
    os.makedirs(os.path.join(d, "extra"))
    wm, total = {}, 0
    parts = meta["parts"]
    for i, part in enumerate(parts):
        fn = "model-%05d-of-%05d.safetensors" % (i + 1, len(parts))
        save_file({k: arrays[k] for k in part}, os.path.join(d, fn), metadata={"format": "pt"})
        for k in part:
            wm[k] = fn
            total += arrays[k].nbytes
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2,
                  sort_keys=True)
    for rel, data in OTHER_FILES.items():
        with open(os.path.join(d, rel), "wb") as f:
            f.write(data)
    return fx


# ---- the independent view of a folder: what it holds, in state-dict order ----

def st_header(path):
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    hdr = json.loads(raw[8:8 + n])
    return n, hdr, len(raw) - 8 - n


def st_order(path):
    """The tensors of a safetensors file in data order (the file's own order)."""
    _n, hdr, _d = st_header(path)
    hdr.pop("__metadata__", None)
    return [k for k, _ in sorted(hdr.items(), key=lambda kv: (kv[1]["data_offsets"][0],
                                                               kv[1]["data_offsets"][1], kv[0]))]


def reference(np, folder, work, tag):
    """{name: (dtype, shape, bytes)} and the state-dict order of an input folder (torch for .bin,
    the safetensors package for .safetensors), and the tied keys torch sees."""
    files = sorted(f for f in os.listdir(folder)
                   if f.endswith(".bin") or f.endswith(".safetensors"))
    ref, order, tied = {}, [], {}
    if files[0].endswith(".bin"):
        out = os.path.join(work, "ref_" + tag)
        jobs = os.path.join(work, "ref_%s.json" % tag)
        json.dump([{"files": [os.path.join(folder, f) for f in files], "out": out}],
                  open(jobs, "w"))
        sys_py(DUMP, jobs)
        idx = json.load(open(os.path.join(out, "index.json")))
        first_of = {}
        for k, v in idx.items():
            ref[k] = (ST_DT[v["dtype"]], v["shape"], open(v["file"], "rb").read())
            order.append(k)
            if v["storage"] in first_of:
                tied[k] = first_of[v["storage"]]
            else:
                first_of[v["storage"]] = k
    else:
        from safetensors import safe_open
        for f in files:
            p = os.path.join(folder, f)
            with safe_open(p, framework="numpy") as g:
                for k in g.keys():
                    a = g.get_tensor(k)
                    ref[k] = (ST_DT[str(a.dtype)], list(a.shape), a.tobytes())
            order += st_order(p)
    return ref, order, tied


def expected_shards(np, ref, order, tied, limit, fp16):
    """The partition the rule gives: state-dict order, a shard closes when the next tensor would
    pass the limit, a tensor larger than the limit alone."""
    shards, cur, size = [], [], 0
    for k in order:
        if k in tied:
            continue
        dt, shape, b = ref[k]
        n = len(b)
        if fp16 and dt == "F32" and not S.f16_range_keep(np, b, len(shape)):
            n //= 2
        if n > limit:
            if cur:
                shards.append(cur)
            shards.append([k])
            cur, size = [], 0
            continue
        if cur and size + n > limit:
            shards.append(cur)
            cur, size = [], 0
        cur.append(k)
        size += n
    if cur or not shards:
        shards.append(cur)
    return shards


def weight_files(names):
    return {n for n in names if n.endswith(".safetensors") or n.endswith(".bin") or
            n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")}


def others_state(folder):
    st = C.tree_state(folder)
    return {k: v for k, v in st.items() if "/" in k or k not in weight_files([k])}


def check_output(F, np, what, src, out, ref, order, tied, limit, fp16, r, src_state):
    from safetensors import safe_open
    F.check(r.rc == 0, "%s: exit 0" % what, r.describe())
    if r.rc != 0:
        return
    F.check(C.tree_state(src) == src_state, "%s: the input folder is unchanged" % what)
    want = expected_shards(np, ref, order, tied, limit, fp16)
    names = sorted(os.listdir(out))
    n = len(want)
    if n == 1:
        want_files = {"model.safetensors"}
    else:
        want_files = {"model-%05d-of-%05d.safetensors" % (i + 1, n) for i in range(n)}
        want_files.add("model.safetensors.index.json")
    F.check(weight_files(names) == want_files, "%s: the output holds %s" % (what, sorted(
        want_files)), "found %s" % names)
    F.check(re.search(r": %s -> %s \([0-9.]+x\), %d -> %d shards?" % (
        C.SIZE, C.SIZE,
        len([f for f in os.listdir(src) if f.endswith(".bin") or f.endswith(".safetensors")]),
        n), r.out) is not None, "%s: the line says the shard counts" % what, r.out)
    if tied:
        F.check("%d tied %s written once" % (len(tied), "tensor" if len(tied) == 1 else "tensors")
                in r.out,
                "%s: the line counts the tied tensor" % what, r.out)
    # shards: safe_open, metadata, contents in the expected partition
    got, where, data_bytes = {}, {}, 0
    for i, part in enumerate(want):
        fn = "model.safetensors" if n == 1 else "model-%05d-of-%05d.safetensors" % (i + 1, n)
        p = os.path.join(out, fn)
        if not os.path.isfile(p):
            continue
        try:
            with safe_open(p, framework="numpy") as g:
                meta = g.metadata()
                keys = list(g.keys())
                for k in keys:
                    a = g.get_tensor(k)
                    got[k] = (ST_DT.get(str(a.dtype), str(a.dtype)), list(a.shape), a.tobytes())
                    where[k] = fn
            F.check(meta == {"format": "pt"}, "%s: %s metadata is {'format': 'pt'}" % (what, fn),
                    str(meta))
            F.check(sorted(keys) == sorted(part), "%s: %s holds the tensors of the rule" % (
                what, fn), "holds %s\nexpected %s" % (sorted(keys), sorted(part)))
            F.check(st_order(p) == part, "%s: %s keeps the state dict's order" % (what, fn),
                    "%s vs %s" % (st_order(p), part))
        except Exception as e:  # safetensors raises its own error types
            F.fail("%s: safe_open(%s) reads every tensor" % (what, fn), repr(e))
        data_bytes += st_header(p)[2]
    written = [k for k in order if k not in tied]
    F.check(sorted(got) == sorted(written), "%s: every tensor written, the tied key once" % what,
            "missing %s, extra %s" % (sorted(set(written) - set(got))[:5],
                                      sorted(set(got) - set(written))[:5]))
    for k in tied:
        F.check(k not in got, "%s: tied key %s is not written" % (what, k))
    bad = []
    for k in written:
        if k not in got:
            continue
        dt, shape, b = ref[k]
        gdt, gshape, gb = got[k]
        if gshape != shape:
            bad.append("%s: shape %s, expected %s" % (k, gshape, shape))
        elif fp16 and dt == "F32" and not S.f16_range_keep(np, b, len(shape)):
            if gdt != "F16":
                bad.append("%s: %s, expected F16" % (k, gdt))
            else:
                d = S.compare_f16(np, gb, b, k)
                if d:
                    bad.append(d)
        elif gdt != dt or gb != b:
            bad.append("%s: %s, expected the original %s bytes" % (k, gdt, dt))
    F.check(not bad, "%s: every tensor equals the original%s bit for bit" % (
        what, " (FP16 rounding, or FP32 where the range rule keeps it)" if fp16 else ""),
        "\n".join(bad[:8]))
    if fp16:
        F.check("big_scale" in " ".join(k for k in written if got.get(k, ("",))[0] == "F32"),
                "%s: the tensor beyond FP16's range stays F32" % what)
    # the index
    ip = os.path.join(out, "model.safetensors.index.json")
    if n > 1 and os.path.isfile(ip):
        try:
            idx = json.load(open(ip))
        except ValueError as e:
            idx = {}
            F.fail("%s: the index is JSON" % what, str(e))
        meta = idx.get("metadata", {})
        F.check(meta.get("total_size") == data_bytes,
                "%s: total_size is the shards' data bytes (%d)" % (what, data_bytes), str(meta))
        F.check(idx.get("weight_map") == where,
                "%s: weight_map lists exactly the tensors written, each in its shard" % what,
                "got %s\nexpected %s" % (idx.get("weight_map"), where))
        if tied:
            F.check(meta.get("tied") == tied, "%s: metadata.tied is %s" % (what, tied), str(meta))
        else:
            F.check("tied" not in meta, "%s: no tied map when nothing is tied" % what, str(meta))
    elif n == 1:
        F.check(not os.path.exists(ip), "%s: no index for a single file" % what)
    F.check(others_state(out) == others_state(src),
            "%s: the other files are copied byte for byte" % what,
            "%s\nvs %s" % (sorted(others_state(out)), sorted(others_state(src))))
    F.check(not [x for x in os.listdir(os.path.dirname(out)) if "msh-tmp" in x],
            "%s: no temporary is left beside the output" % what)


def check_fixture(F, args, np, fx, tag):
    src = os.path.join(fx, tag)
    w = os.path.join(args.work, "conv_" + tag)
    os.makedirs(w)
    ref, order, tied = reference(np, src, args.work, tag)
    F.check(tied == (TIED if tag.startswith("bin") else {}),
            "%s: torch sees the tied pair the fixture meant" % tag, str(tied))
    state = C.tree_state(src)
    limit = 5000  # several shards; the 6 kB embedding (and lm_head) pass it
    for fp16 in (False, True):
        out = os.path.join(w, "out16" if fp16 else "out")
        extra = ["--fp16"] if fp16 else []
        r = C.run(args.bin, "convert", src, "-o", out, "--max-shard-size", str(limit), *extra)
        check_output(F, np, "%s%s" % (tag, " --fp16" if fp16 else ""), src, out, ref, order,
                     tied, limit, fp16, r, state)
    # default size: one file
    out = os.path.join(w, "one")
    r = C.run(args.bin, "convert", src, "-o", out + "/")
    check_output(F, np, "%s (default shard size)" % tag, src, out, ref, order, tied, 5 * 10**9,
                 False, r, state)
    # an existing model folder is replaced; a folder that is not one is refused and kept
    r = C.run(args.bin, "convert", src, "-o", out, "--max-shard-size", "5KB")
    F.check(r.rc == 0 and os.path.isfile(os.path.join(out, "model.safetensors.index.json")) and
            not os.path.exists(os.path.join(out, "model.safetensors")),
            "%s: an existing output model folder is replaced" % tag, r.describe())
    keep = os.path.join(w, "keep")
    os.makedirs(keep)
    with open(os.path.join(keep, "mine.txt"), "w") as f:
        f.write("precious")
    r = C.run(args.bin, "convert", src, "-o", keep)
    F.check(r.rc == 2 and S.one_line(r) and os.listdir(keep) == ["mine.txt"],
            "%s: a non-model output folder is refused (exit 2) and left alone" % tag,
            r.describe())
    # inspect
    r = C.run(args.bin, "inspect", "--json", src)
    C.check_inspect_json(F, r.out, "%s: inspect --json" % tag)
    try:
        rep = json.loads(r.out)["files"][0]
    except (ValueError, KeyError, IndexError):
        rep = {}
    nfiles = len([f for f in os.listdir(src) if f.endswith(".bin") or f.endswith(".safetensors")])
    total = sum(len(ref[k][2]) for k in order if k not in tied)
    F.check(r.rc == 0 and rep.get("format") == "hf" and rep.get("shard_count") == nfiles and
            rep.get("tensor_bytes") == total and rep.get("tensor_count") == len(order) and
            [(t.get("key"), t.get("to")) for t in rep.get("tied", [])] == list(tied.items()),
            "%s: inspect --json explains the folder as one model" % tag,
            r.describe() + "\nexpected %d shards, %d bytes" % (nfiles, total))
    want_big = sorted((len(ref[k][2]) for k in order if k not in tied), reverse=True)[:10]
    got_big = [x.get("bytes") for x in rep.get("largest", [])]
    F.check(got_big == want_big and not set(x.get("name") for x in rep.get("largest", [])) &
            set(tied), "%s: inspect --json lists the ten largest tensors (tied keys once)" % tag,
            "got %s\nexpected %s" % (got_big, want_big))
    r = C.run(args.bin, "inspect", src)
    F.check(r.rc == 0 and "Hugging Face model folder" in r.out and
            (not tied or "tied: lm_head.weight" in r.out), "%s: inspect prints the folder" % tag,
            r.describe())


# ---- broken folders ----

def broken_cases(fx, work):
    """(name, folder, expected words) for folders that must be refused."""
    cases = []

    def copy(tag, name):
        d = os.path.join(work, "broken", name)
        shutil.copytree(os.path.join(fx, tag), d, symlinks=True)
        return d

    def edit_index(d, fn, change):
        p = os.path.join(d, fn)
        idx = json.load(open(p))
        change(idx)
        with open(p, "w") as f:
            json.dump(idx, f)

    d = copy("bin3", "missing_shard")
    os.unlink(os.path.join(d, "pytorch_model-00002-of-00003.bin"))
    cases.append(("missing_shard", d, ["not in the folder"]))
    d = copy("st3", "missing_st_shard")
    os.unlink(os.path.join(d, "model-00003-of-00003.safetensors"))
    cases.append(("missing_st_shard", d, ["not in the folder"]))
    d = copy("st3", "listed_twice")
    p = os.path.join(d, "model.safetensors.index.json")
    text = open(p).read()
    text = text.replace('"weight_map": {', '"weight_map": {\n    "model.norm.weight": '
                        '"model-00001-of-00003.safetensors",', 1)
    open(p, "w").write(text)
    cases.append(("listed_twice", d, ["twice"]))
    d = copy("bin3", "dotdot")
    edit_index(d, "pytorch_model.bin.index.json",
               lambda i: i["weight_map"].__setitem__("model.norm.weight", "../x"))
    cases.append(("dotdot", d, ["../x", "not a plain name"]))
    d = copy("st3", "slash")
    edit_index(d, "model.safetensors.index.json",
               lambda i: i["weight_map"].__setitem__("model.norm.weight", "extra/notes.txt"))
    cases.append(("slash", d, ["not a plain name"]))
    d = copy("st3", "missing_tensor")
    edit_index(d, "model.safetensors.index.json",
               lambda i: i["weight_map"].__setitem__("model.ghost.weight",
                                                     "model-00001-of-00003.safetensors"))
    cases.append(("missing_tensor", d, ["model.ghost.weight", "does not hold"]))
    d = copy("st3", "unlisted_tensor")
    edit_index(d, "model.safetensors.index.json", lambda i: i["weight_map"].pop("model.norm.bias"))
    cases.append(("unlisted_tensor", d, ["model.norm.bias", "does not list"]))
    d = copy("bin3", "wrong_shard")
    edit_index(d, "pytorch_model.bin.index.json",
               lambda i: i["weight_map"].__setitem__("lm_head.weight",
                                                     "pytorch_model-00003-of-00003.bin"))
    cases.append(("wrong_shard", d, ["lm_head.weight", "puts in"]))
    d = copy("st3", "unlisted_shard")
    shutil.copy(os.path.join(d, "model-00003-of-00003.safetensors"),
                os.path.join(d, "model-00004-of-00003.safetensors"))
    cases.append(("unlisted_shard", d, ["model-00004-of-00003.safetensors", "not in the index"]))
    d = copy("st3", "not_object")
    open(os.path.join(d, "model.safetensors.index.json"), "w").write("[1, 2]")
    cases.append(("not_object", d, ["not a json object"]))
    d = copy("st3", "no_weight_map")
    open(os.path.join(d, "model.safetensors.index.json"), "w").write('{"metadata": {}}')
    cases.append(("no_weight_map", d, ["weight_map"]))
    d = copy("bin1", "link_out")
    outside = os.path.join(work, "broken", "secret.txt")
    open(outside, "w").write("outside the folder")
    os.unlink(os.path.join(d, "tokenizer.json"))
    os.symlink(outside, os.path.join(d, "tokenizer.json"))
    cases.append(("link_out", d, ["symbolic link", "outside"]))
    d = copy("bin1", "link_shard")
    real = os.path.join(d, "real.bin")
    os.rename(os.path.join(d, "pytorch_model.bin"), real)
    os.symlink("real.bin", os.path.join(d, "pytorch_model.bin"))
    cases.append(("link_shard", d, ["symbolic link"]))
    return cases


def check_broken(F, args, fx):
    outs = os.path.join(args.work, "broken_out")
    os.makedirs(outs)
    for name, d, words in broken_cases(fx, args.work):
        before = C.tree_state(d)
        out = os.path.join(outs, name)
        for cmd in (["convert", d, "-o", out], ["convert", "--fp16", d, "-o", out]):
            r = C.run(args.bin, *cmd)
            msg = r.err.strip()
            F.check(r.rc == 1 and S.one_line(r) and msg.startswith("modelshrink: " + d),
                    "%s: %s exits 1 with one line naming the folder" % (name, cmd[1]),
                    r.describe())
            F.check(any(w.lower() in msg.lower() for w in words),
                    "%s: the line says what is wrong (one of %s)" % (name, words), msg)
            F.check(not os.listdir(outs), "%s: no output folder, no temporary" % name,
                    str(os.listdir(outs)))
        F.check(C.tree_state(d) == before, "%s: the input is unchanged" % name)
        r = C.run(args.bin, "inspect", d)
        F.check(r.rc == 1 and S.one_line(r), "%s: inspect exits 1 with one line" % name,
                r.describe())
    # a write that fails (file-size limit) leaves nothing
    lim = 4096

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim, lim))
    out = os.path.join(outs, "fsize")
    p = subprocess.run([args.bin, "convert", os.path.join(fx, "bin3"), "-o", out],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit,
                       timeout=300)
    err = p.stderr.decode("utf-8", "replace")
    F.check(p.returncode == 1 and "File too large" in err and len(err.strip().splitlines()) == 1,
            "fsize: a write past RLIMIT_FSIZE fails with one line", err)
    F.check(not os.listdir(outs), "fsize: no output folder, no temporary left",
            str(os.listdir(outs)))


# ---- batch ----

def dead_pid():
    pid = 4000000
    while os.path.exists("/proc/%d" % pid):
        pid -= 1
    return pid


def check_batch(F, args, fx):
    g = C.gen_models()
    import onnx
    zoo = os.path.join(args.work, "zoo")
    os.makedirs(os.path.join(zoo, "b"))
    shutil.copytree(os.path.join(fx, "bin3"), os.path.join(zoo, "a"))
    shutil.copytree(os.path.join(fx, "st3"), os.path.join(zoo, "b", "sub"))
    onnx.save(g.make_mlp_dup(seed=1, width=32), os.path.join(zoo, "m.onnx"))
    out = os.path.join(args.work, "zoo_out")
    os.makedirs(out)
    host = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"
    stale = os.path.join(out, ".a.msh-tmp-%s-%d-AbCdEf" % (host, dead_pid()))
    os.makedirs(os.path.join(stale, "sub"))
    open(os.path.join(stale, "sub", "model-00001-of-00002.safetensors"), "wb").write(b"x" * 10)
    rep = os.path.join(args.work, "zoo.jsonl")
    r = C.run(args.bin, "convert", zoo, "-o", out, "--report", rep, "--jobs", "2",
              "--max-shard-size", "8KB")
    F.check(r.rc == 0, "batch: a tree with two model folders and an ONNX model converts",
            r.describe())
    F.check("not a model" not in r.err, "batch: no file of a model folder is 'not a model'",
            r.err)
    F.check(not os.path.exists(stale), "batch: the stale temporary folder of a dead process is "
            "removed")
    recs = [json.loads(l) for l in open(rep) if l.strip()]
    models = {x["rel"]: x for x in recs if x.get("type") == "model"}
    F.check(sorted(models) == ["a", "b/sub", "m.onnx"],
            "batch: one record per model folder and one for the ONNX model", str(sorted(models)))
    F.check([models.get(k, {}).get("format") for k in ("a", "b/sub", "m.onnx")] ==
            ["hf", "hf", "onnx"] and all(x.get("status") == "ok" for x in models.values()),
            "batch: the folders' records say format hf, status ok", str(models))
    summ = [x for x in recs if x.get("type") == "summary"]
    F.check(summ and summ[0].get("not_models") == 0 and summ[0].get("ok") == 3,
            "batch: the summary counts 3 ok and no 'not models'", str(summ))
    wsz = sum(os.path.getsize(os.path.join(zoo, "a", f)) for f in os.listdir(os.path.join(zoo, "a"))
              if f.endswith(".bin") or f.endswith(".index.json"))
    F.check(models.get("a", {}).get("input_size") == wsz and models["a"].get("bytes_in") == wsz,
            "batch: a folder's input size is its weight files and index (%d)" % wsz,
            str(models.get("a")))
    for rel in ("a", "b/sub"):
        o = os.path.join(out, rel)
        F.check(os.path.isfile(os.path.join(o, "model.safetensors.index.json")) and
                os.path.isfile(os.path.join(o, "config.json")) and
                os.path.isfile(os.path.join(o, "extra", "notes.txt")),
                "batch: %s is written as a model folder with its files" % rel,
                str(os.listdir(o) if os.path.isdir(o) else "missing"))
    F.check(os.path.isfile(os.path.join(out, "m.onnx")), "batch: the ONNX model is written")
    F.check(re.search(r"^hf\s+2\s+0\s", r.out, re.M) is not None,
            "batch: the table has an hf row with 2 ok", r.out)
    before = {p: os.stat(os.path.join(out, p)).st_mtime_ns
              for p in ("a/model.safetensors.index.json", "b/sub/model.safetensors.index.json",
                        "m.onnx")}
    r = C.run(args.bin, "convert", zoo, "-o", out, "--report", rep, "--resume",
              "--max-shard-size", "8KB")
    recs = [json.loads(l) for l in open(rep) if l.strip()]
    summ = [x for x in recs if x.get("type") == "summary"]
    F.check(r.rc == 0 and summ and summ[-1].get("resumed") == 3 and summ[-1].get("ok") == 3 and
            summ[-1].get("converted") == 0 and summ[-1].get("bytes_in") == summ[0].get("bytes_in"),
            "batch --resume: the three models are skipped, and counted in the totals",
            r.describe() + "\n" + str(summ))
    after = {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in before}
    F.check(after == before, "batch --resume: nothing is rewritten")
    # a changed weight file makes its folder redo
    os.utime(os.path.join(zoo, "a", "pytorch_model-00002-of-00003.bin"), None)
    r = C.run(args.bin, "convert", zoo, "-o", out, "--report", rep, "--resume",
              "--max-shard-size", "8KB")
    recs = [json.loads(l) for l in open(rep) if l.strip()]
    summ = [x for x in recs if x.get("type") == "summary"]
    F.check(r.rc == 0 and summ and summ[-1].get("resumed") == 2 and summ[-1].get("ok") == 3 and
            summ[-1].get("converted") == 1 and summ[-1].get("reconverted_options") == 0 and
            recs[-2].get("rel") == "a",
            "batch --resume: a folder whose weight file changed is converted again",
            r.describe() + "\n" + str(summ))
    # shards of the tree
    seen = []
    for k in (0, 1):
        so = os.path.join(args.work, "zoo_shard")
        rp = os.path.join(args.work, "shard%d.jsonl" % k)
        r = C.run(args.bin, "convert", zoo, "-o", so, "--report", rp, "--shard", "%d/2" % k)
        F.check(r.rc == 0, "batch --shard %d/2 exits 0" % k, r.describe())
        seen += [json.loads(l)["rel"] for l in open(rp)
                 if l.strip() and json.loads(l).get("type") == "model"]
    F.check(sorted(seen) == ["a", "b/sub", "m.onnx"],
            "batch --shard 0/2 and 1/2 convert each model (folders whole) exactly once",
            str(sorted(seen)))
    # --max-shard-size where no model is a folder
    only = os.path.join(args.work, "only_onnx")
    os.makedirs(only)
    shutil.copy(os.path.join(zoo, "m.onnx"), only)
    r = C.run(args.bin, "convert", only, "-o", os.path.join(args.work, "only_out"),
              "--max-shard-size", "1MB")
    F.check(r.rc == 2 and "applies to none" in r.err,
            "--max-shard-size in a tree without model folders is a usage error", r.describe())


# ---- the output's extension ----

def check_extensions(F, args, fx, np):
    w = os.path.join(args.work, "ext")
    os.makedirs(w)
    ckpt = os.path.join(fx, "bin1", "pytorch_model.bin")
    jobs = []
    for name in ("x.pth", "x.bin", "x.pt"):
        out = os.path.join(w, name)
        r = C.run(args.bin, "convert", ckpt, "-o", out)
        with open(out, "rb") if os.path.exists(out) else open(os.devnull, "rb") as f:
            head = f.read(4)
        F.check(r.rc == 0 and head == b"PK\x03\x04",
                "ext: checkpoint -o %s writes a weights-only .pth (a zip)" % name, r.describe())
        jobs.append({"files": [out], "out": os.path.join(w, "dump_" + name), "full": 0})
    st_in = os.path.join(fx, "st3", "model-00001-of-00003.safetensors")
    out = os.path.join(w, "from_st.pth")
    r = C.run(args.bin, "convert", "--format", "pth", st_in, "-o", out)
    F.check(r.rc == 0, "ext: --format pth on a safetensors input exits 0", r.describe())
    jobs.append({"files": [out], "out": os.path.join(w, "dump_from_st"), "full": 0})
    out = os.path.join(w, "x.safetensors")
    r = C.run(args.bin, "convert", ckpt, "-o", out)
    F.check(r.rc == 0 and open(out, "rb").read(9)[8:9] == b"{",
            "ext: checkpoint -o x.safetensors writes safetensors", r.describe())
    try:
        jf = os.path.join(w, "jobs.json")
        json.dump(jobs, open(jf, "w"))
        sys_py(DUMP, jf)
        ref, _order, _tied = reference(np, os.path.join(fx, "bin1"), args.work, "ext")
        for j in jobs[:3]:
            idx = json.load(open(os.path.join(j["out"], "index.json")))
            same = sorted(idx) == sorted(ref) and all(
                open(idx[k]["file"], "rb").read() == ref[k][2] for k in idx)
            F.check(same, "ext: torch.load(weights_only=True) of %s gives the original tensors" %
                    os.path.basename(j["files"][0]))
            F.check(idx.get("lm_head.weight", {}).get("storage") ==
                    idx.get("model.embed_tokens.weight", {}).get("storage"),
                    "ext: %s keeps the tied pair on one storage" % os.path.basename(j["files"][0]))
        idx = json.load(open(os.path.join(jobs[3]["out"], "index.json")))
        from safetensors import safe_open
        with safe_open(st_in, framework="numpy") as g:
            want = {k: g.get_tensor(k).tobytes() for k in g.keys()}
        F.check(sorted(idx) == sorted(want) and
                all(open(idx[k]["file"], "rb").read() == want[k] for k in idx),
                "ext: the .pth made from safetensors loads with weights_only=True, same values")
    except RuntimeError as e:
        F.fail("ext: torch.load(weights_only=True) of the .pth outputs", str(e))
    import onnx
    g = C.gen_models()
    onnx_path = os.path.join(w, "m.onnx")
    onnx.save(g.make_mlp_dup(seed=2, width=16), onnx_path)
    usage = [("ONNX -o x.safetensors", [onnx_path, "-o", os.path.join(w, "u1.safetensors")]),
             ("ONNX -o x.pth", [onnx_path, "-o", os.path.join(w, "u2.pth")]),
             ("checkpoint -o x.onnx", [ckpt, "-o", os.path.join(w, "u3.onnx")]),
             ("--format safetensors -o x.pth",
              ["--format", "safetensors", ckpt, "-o", os.path.join(w, "u4.pth")]),
             ("--format pth -o x.safetensors",
              ["--format", "pth", ckpt, "-o", os.path.join(w, "u5.safetensors")]),
             ("folder -o x.pth", [os.path.join(fx, "bin1"), "-o", os.path.join(w, "u6.pth")]),
             ("--max-shard-size on a file",
              ["--max-shard-size", "1MB", ckpt, "-o", os.path.join(w, "u7.safetensors")]),
             ("--max-shard-size 5XB",
              ["--max-shard-size", "5XB", os.path.join(fx, "bin1"), "-o", os.path.join(w, "u8")]),
             ("--max-shard-size 0",
              ["--max-shard-size", "0", os.path.join(fx, "bin1"), "-o", os.path.join(w, "u9")])]
    for what, argv in usage:
        before = sorted(os.listdir(w))
        r = C.run(args.bin, "convert", *argv)
        lines = [l for l in r.err.splitlines() if l.strip() and "--help" not in l]
        F.check(r.rc == 2 and len(lines) == 1, "ext: %s is a usage error (exit 2, one line)" %
                what, r.describe())
        F.check(sorted(os.listdir(w)) == before, "ext: %s writes nothing" % what,
                str(sorted(set(os.listdir(w)) - set(before))))
    r = C.run(args.bin, "convert", onnx_path, "-o", os.path.join(w, "ok.onnx"))
    F.check(r.rc == 0, "ext: ONNX -o x.onnx still converts", r.describe())
    r = C.run(args.bin, "convert", onnx_path, "-o", os.path.join(w, "ok.model"))
    F.check(r.rc == 0 and open(os.path.join(w, "ok.model"), "rb").read(1) != b"P",
            "ext: another extension keeps the default (ONNX for ONNX)", r.describe())


def main():
    args = C.parse_args(__doc__)
    np, = C.import_deps("numpy")
    C.require_jsonschema()
    try:
        import safetensors  # noqa: F401
        from safetensors import safe_open  # noqa: F401
    except ImportError as e:
        C.skip("Python module 'safetensors' is not available (%s)" % e)
    ok, why = torch_ok()
    if not ok:
        C.skip("%s cannot import torch (Debian's python3-torch makes the fixtures): %s" %
               (SYS_PY, why.strip().splitlines()[-1] if why.strip() else "not found"))
    F = C.Failures()
    fx = make_fixtures(np, args.work)
    for tag in ("bin1", "bin3", "st3"):
        check_fixture(F, args, np, fx, tag)
    check_broken(F, args, fx)
    check_batch(F, args, fx)
    check_extensions(F, args, fx, np)
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
