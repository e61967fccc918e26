"""``python -m kernelscale``: the same command line as the ``kernelscale`` script."""

import sys

from kernelscale.cli import main

sys.exit(main())
