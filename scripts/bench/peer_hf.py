#!/usr/bin/env python3
"""Peer for the Hugging Face folder benchmark: convert a sharded `pytorch_model-*.bin` folder to
sharded safetensors the way a user does it with torch and safetensors (no transformers): for each
shard, torch.load it, drop the keys whose storage an earlier key already holds (tied weights, as
save_pretrained does), optionally turn FP32 tensors into FP16, and safetensors.torch.save_file
it as model-0000k-of-0000n.safetensors; then write model.safetensors.index.json and copy the
other files.

    .venv-torch/bin/python peer_hf.py IN_FOLDER OUT_FOLDER [--half]
"""
import argparse
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--half", action="store_true")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    index = json.load(open(os.path.join(a.inp, "pytorch_model.bin.index.json")))
    shards = sorted(set(index["weight_map"].values()))
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        sd = torch.load(os.path.join(a.inp, shard), map_location="cpu")
        out, seen = {}, set()  # ties are within one file (torch.save shares storages in a file)
        for name, t in sd.items():
            key = (t.untyped_storage().data_ptr() if hasattr(t, "untyped_storage")
                   else t.storage().data_ptr())
            if key in seen:
                continue  # tied: written once
            seen.add(key)
            if a.half and t.dtype == torch.float32:
                t = t.half()
            out[name] = t.contiguous()
            total += out[name].numel() * out[name].element_size()
        fn = "model-%05d-of-%05d.safetensors" % (k + 1, len(shards))
        save_file(out, os.path.join(a.out, fn), metadata={"format": "pt"})
        weight_map.update({name: fn for name in out})
        del sd, out
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    for fn in os.listdir(a.inp):
        if not fn.startswith("pytorch_model"):
            shutil.copy(os.path.join(a.inp, fn), os.path.join(a.out, fn))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
