"""python -m modelshrink ...: the same command as `modelshrink ...`."""

from ._cli import main

main()
