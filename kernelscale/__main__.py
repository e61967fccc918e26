"""``python -m kernelscale``: the same command line as the ``kernelscale`` script."""

from kernelscale.cli import console

console()
