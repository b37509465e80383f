#!/usr/bin/env python3
"""Seed corpora for the libFuzzer targets, built from the test fixtures.

    .venv/bin/python tests/fuzz/make_seeds.py OUTDIR

Writes OUTDIR/{onnx,pth,pickle,safetensors}/ (one file per seed, named by content hash):
- onnx: every libonnx-testdata model of at most 8 KiB, small models from
  tests/fixtures/gen_models.py (shrunk ALBERT with shared weights, If-branch copies, a CNN and a
  transformer block for INT8, a CLIP pair) and a model whose weights live in the external file
  "w.data" that the fuzz targets keep beside their input;
- pth: the committed checkpoints (every *.pth, *.pt and *.ckpt under tests/fixtures/pth, to any
  depth: the refused and broken-zip ones, and real/'s legacy streams, TorchScript archives,
  whole modules and Lightning checkpoint);
- pickle: the data.pkl of each zip checkpoint (TorchScript ones included); for a legacy stream
  the whole file (its first pickle is the magic number) and its object pickle alone;
- safetensors: small files covering every dtype, metadata, shared bytes and empty tensors.
Seeds over 256 KiB are skipped (the targets run with -max_len=262144)."""

import glob
import hashlib
import io
import os
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
MAX = 256 * 1024
TESTDATA = "/usr/share/libonnx-testdata/data"


def put(d, data):
    if len(data) > MAX or not data:
        return 0
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)
    return 1


def onnx_seeds(d):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    import gen_models as G
    n = 0
    for p in sorted(glob.glob(os.path.join(TESTDATA, "**", "model.onnx"), recursive=True)):
        if os.path.getsize(p) <= 8192:
            with open(p, "rb") as f:
                n += put(d, f.read())
    small = [
        G.make_albert(layers=2, hidden=16, embed=8, ffn=32, vocab=40, heads=2, seed=7),
        G.make_mlp_dup(width=16),
        G.make_if_dup(n=16),
        G.make_nested_if(n=16),
        G.make_graph_input_dup(n=16),
        G.make_shadow(n=16),
        G.make_transformer_block(hidden=16, ffn=32, heads=2, seq=4),
    ]
    for m in small:
        n += put(d, m.SerializeToString())
    # external data in "w.data" (4096 bytes beside the fuzz input)
    w = TensorProto()
    w.name, w.data_type = "W", TensorProto.FLOAT
    w.dims.extend([16, 16])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "w.data"), ("offset", "0"), ("length", "1024")):
        e = w.external_data.add()
        e.key, e.value = k, v
    b = helper.make_tensor("B", TensorProto.FLOAT, [16], np.ones(16, np.float32))
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"]),
                           helper.make_node("Add", ["h", "B"], ["y"])], "ext",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                          initializer=[w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    n += put(d, m.SerializeToString())
    return n


LEGACY_MAGIC = b"\x80\x02\x8a\x0a"


def pth_files():
    base = os.path.join(ROOT, "tests", "fixtures", "pth")
    found = set()
    for ext in ("pth", "pt", "ckpt"):
        found.update(glob.glob(os.path.join(base, "**", "*." + ext), recursive=True))
    return sorted(found)


def pth_seeds(dpth, dpkl):
    import make_checkpoints as MC  # its torch-free parts: the legacy stream's layout
    n = k = 0
    for p in pth_files():
        with open(p, "rb") as f:
            data = f.read()
        n += put(dpth, data)
        if data.startswith(LEGACY_MAGIC):
            k += put(dpkl, data)
            try:
                k += put(dpkl, MC.legacy_parts(data)["object"])
            except Exception:
                pass
            continue
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for name in z.namelist():
                    if name.endswith("data.pkl"):
                        k += put(dpkl, z.read(name))
        except Exception:
            pass  # broken on purpose; its bytes are still a pth seed
    return n, k


def st_seeds(d):
    import numpy as np

    from st_common import st_bytes
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal(16).astype(np.float32).tobytes()
    seeds = [
        {"w": ("F32", [4, 4], f32), "b": ("F32", [4], f32[:16])},
        {"a": ("F32", [4, 4], f32), "tied": ("F32", [4, 4], f32)},
        {"h": ("F16", [8], f32[:16]), "bf": ("BF16", [8], f32[16:32]),
         "i8": ("I8", [4], b"\1\2\3\4"), "u8": ("U8", [2, 2], b"\5\6\7\x08"),
         "i64": ("I64", [2], f32[:16]), "f64": ("F64", [1], f32[:8]),
         "bool": ("BOOL", [3], b"\0\1\0"), "empty": ("F32", [0, 4], b"")},
        {"scalar": ("F32", [], f32[:4])},
    ]
    n = 0
    for i, t in enumerate(seeds):
        n += put(d, st_bytes(t, metadata={"format": "pt", "seed": str(i)} if i % 2 else None))
    return n


def main():
    out = sys.argv[1]
    dirs = {k: os.path.join(out, k) for k in ("onnx", "pth", "pickle", "safetensors")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    n_onnx = onnx_seeds(dirs["onnx"])
    n_pth, n_pkl = pth_seeds(dirs["pth"], dirs["pickle"])
    n_st = st_seeds(dirs["safetensors"])
    print("seeds: onnx %d, pth %d, pickle %d, safetensors %d" % (n_onnx, n_pth, n_pkl, n_st))


if __name__ == "__main__":
    main()
