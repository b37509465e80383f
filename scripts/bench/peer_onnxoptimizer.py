#!/usr/bin/env python3
"""Peer for the dedup benchmark: onnxoptimizer's eliminate_duplicate_initializer pass, alone.

    peer_onnxoptimizer.py IN.onnx OUT.onnx

Loads the model (external data too), runs only that pass, saves. Models over protobuf's 2 GiB
limit are saved with external data beside OUT.
"""
import sys

import onnx
import onnxoptimizer

PASS = "eliminate_duplicate_initializer"


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    model = onnx.load(argv[0])
    model = onnxoptimizer.optimize(model, [PASS])
    big = model.ByteSize() >= 2**31 - 1 if hasattr(model, "ByteSize") else False
    onnx.save_model(model, argv[1], save_as_external_data=big)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
