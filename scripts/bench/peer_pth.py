#!/usr/bin/env python3
"""Peer for the checkpoint benchmark: strip a training checkpoint to safetensors the way a user
does it with PyTorch.

    .venv-torch/bin/python peer_pth.py CKPT.pth OUT.safetensors

torch.load(CKPT, map_location="cpu"), take ck["model_state_dict"], and
safetensors.torch.save_file({k: v.contiguous()}, OUT, metadata={"format": "pt"}).
Run by .venv-torch (made by scripts/deps.sh --bench): Debian's python3-torch plus safetensors.
"""
import sys

import torch
from safetensors.torch import save_file


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    ck = torch.load(argv[0], map_location="cpu")
    sd = ck["model_state_dict"]
    save_file({k: v.contiguous() for k, v in sd.items()}, argv[1], metadata={"format": "pt"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
