"""What every subcommand module of the command line shares: :class:`Command` and the exit codes.

:mod:`kernelscale.cli` holds the registry of commands and the entry point; a subcommand module
(:mod:`kernelscale.cli_verify`) imports from here, never from :mod:`kernelscale.cli`, so the
imports run one way: cli → cli_verify → cli_command.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

EXIT_OK = 0
EXIT_TOLERANCE = 1  # verify, convert --verify: a layer fails its check
EXIT_USAGE = 2
EXIT_INTERNAL = 70  # sysexits.h EX_SOFTWARE: distinct from 1, a verify tolerance exceeded
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout closed it


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, long description, arguments and action.

    ``run(args)`` returns the exit code; it raises KernelscaleError for bad input, which
    :func:`kernelscale.cli.main` prints as one line with exit code 2. ``prepare(argv)``, if given,
    runs first, before ``add_arguments`` imports the command's modules (torch among them, a second
    or more): work that can overlap that start-up, which must never fail or print.
    """

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    epilog: str = ""
    prepare: Optional[Callable[[Sequence[str]], None]] = None
