#!/usr/bin/env python3
"""Peer for the pruning benchmark: onnx's own sub-model extractor, as a user runs it.

    peer_prune.py IN.onnx OUT.onnx [INPUT[,INPUT]] [OUTPUT[,OUTPUT]]

onnx.utils.extract_model(IN, OUT, input_names, output_names) with its defaults (check_model and
infer_shapes on). The names default to pixel_values and image_embeds (keep a CLIP's image tower).
"""
import sys

import onnx.utils


def main(argv):
    if len(argv) not in (2, 4):
        print(__doc__, file=sys.stderr)
        return 2
    ins = argv[2].split(",") if len(argv) == 4 else ["pixel_values"]
    outs = argv[3].split(",") if len(argv) == 4 else ["image_embeds"]
    onnx.utils.extract_model(argv[0], argv[1], ins, outs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
