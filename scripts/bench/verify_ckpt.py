#!/usr/bin/env python3
"""Compare a safetensors file with the state dict of the checkpoint it came from.

    .venv-torch/bin/python verify_ckpt.py CKPT.pth KEY OUT.safetensors

Prints one JSON line: tensors (in OUT), missing (state-dict names not in OUT), extra (names in
OUT not in the state dict), identical (every tensor has the original's dtype, shape and bytes),
converted (tensors whose dtype changed), max_abs_err (largest |out - original| over all tensors,
computed in float64) and max_rel_err (the same divided by the tensor's largest |original|)."""
import json
import sys

import torch
from safetensors.torch import load_file


def main():
    ckpt, key, out = sys.argv[1:4]
    sd = torch.load(ckpt, map_location="cpu")[key]
    got = load_file(out)
    missing = sorted(set(sd) - set(got))
    extra = sorted(set(got) - set(sd))
    identical = not missing and not extra
    converted = 0
    max_abs = max_rel = 0.0
    for k in sorted(set(sd) & set(got)):
        a, b = sd[k].contiguous(), got[k]
        if a.shape != b.shape:
            identical = False
            max_abs = max_rel = float("inf")
            continue
        if a.dtype != b.dtype:
            converted += 1
            identical = False
        elif not torch.equal(a, b):
            identical = False
        if a.is_floating_point() and a.numel():
            d = (b.double() - a.double()).abs().max().item()
            scale = a.double().abs().max().item()
            max_abs = max(max_abs, d)
            max_rel = max(max_rel, d / scale if scale else 0.0)
    print(json.dumps({"tensors": len(got), "missing": missing[:5], "extra": extra[:5],
                      "identical": identical, "converted": converted, "max_abs_err": max_abs,
                      "max_rel_err": max_rel}))


if __name__ == "__main__":
    main()
