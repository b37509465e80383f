"""The `modelshrink` console command of the Python package: the C program itself, installed in
the package (modelshrink/bin/modelshrink), run in place of this process."""

from __future__ import annotations

import os
import sys


def program() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "modelshrink")


def main() -> None:
    exe = program()
    if not os.access(exe, os.X_OK):
        sys.stderr.write("modelshrink: the command is not installed with this package (%s)\n"
                         % exe)
        sys.exit(127)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exe, ["modelshrink"] + sys.argv[1:])


if __name__ == "__main__":
    main()
