#!/usr/bin/env python3
"""Peer for the checkpoint benchmarks: strip a training checkpoint to safetensors (optionally in
FP16) the way a user does it with PyTorch.

    .venv-torch/bin/python peer_pth.py CKPT.pth OUT.safetensors [--key KEY] [--half] [--jit]

torch.load(CKPT, map_location="cpu"), take ck[KEY] (default "model_state_dict"), with --half turn
every FP32 tensor into FP16 (`v.half()`), and safetensors.torch.save_file({k: v.contiguous()},
OUT, metadata={"format": "pt"}); with --jit, torch.jit.load(CKPT).state_dict() instead. Run by .venv-torch (made by scripts/deps.sh --bench): Debian's
python3-torch plus safetensors.
"""
import argparse
import sys

import torch
from safetensors.torch import save_file


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("out")
    ap.add_argument("--key", default="model_state_dict")
    ap.add_argument("--half", action="store_true")
    ap.add_argument("--jit", action="store_true", help="a TorchScript archive: "
                    "torch.jit.load(ckpt).state_dict()")
    a = ap.parse_args(argv)
    if a.jit:
        sd = torch.jit.load(a.ckpt, map_location="cpu").state_dict()
    else:
        sd = torch.load(a.ckpt, map_location="cpu")[a.key]
    if a.half:
        sd = {k: v.half() if v.dtype == torch.float32 else v for k, v in sd.items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, a.out, metadata={"format": "pt"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
