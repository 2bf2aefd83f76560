"""The ``mpcs`` command line (also ``python -m mpcs``).

The parser (:mod:`mpcs.cli.parser`, from the argument modules of :mod:`mpcs.cli.options`)
imports nothing heavy; the module that runs a command (:mod:`mpcs.cli.data`,
:mod:`~mpcs.cli.training`, :mod:`~mpcs.cli.experiments`, :mod:`~mpcs.cli.inference`,
:mod:`~mpcs.cli.pictures`) is imported only when that command runs (:data:`COMMANDS`), so
``mpcs predict`` does not pay for what ``mpcs report`` or ``mpcs pretrain`` need. Every
:class:`~mpcs.core.errors.MpcsError` ends the command with one line ``mpcs <command>:
error: ...`` on stderr and its exit code.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from mpcs.cli.parser import COMMANDS, DECODING_COMMANDS, build_parser
from mpcs.core.errors import MpcsError

__all__ = ["COMMANDS", "build_parser", "command", "main"]

log = logging.getLogger("mpcs")


def _stdout_to_devnull() -> None:
    """Point stdout's file descriptor at devnull (Python's recipe for a reader that went
    away), so the flush at interpreter exit raises no second BrokenPipeError."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a file descriptor: nothing is flushed to it at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def command(name: str) -> Callable[[argparse.Namespace], int]:
    """The function that runs command ``name``; its module (and what that imports) is loaded
    now, so a command pays only for its own imports (and, for the commands that decode on
    background threads, OpenMP is set to let idle threads sleep: read when torch loads)."""
    if name in DECODING_COMMANDS and "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    module = importlib.import_module(COMMANDS[name])
    return getattr(module, f"cmd_{name.replace('-', '_')}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mpcs ARGS``; returns the exit code (0, 1 for a failed cell or a closed pipe,
    2 and up for an :class:`~mpcs.core.errors.MpcsError`, 130 for Ctrl-C)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    finally:
        if argv is None:  # the program itself (console script, python -m mpcs), about to exit
            # the interpreter's last garbage collections then skip the objects of torch and
            # co.: 0.3 instead of 1.6 s at exit (2 busy cores, bench/README.md, P5)
            gc.freeze()


def _run(args: argparse.Namespace) -> int:
    try:
        code = command(args.command)(args)
        sys.stdout.flush()  # a reader gone early (`| head`) shows here, not at interpreter exit
        return code
    except BrokenPipeError as e:
        log.debug("stdout was closed by its reader (%s); the rest of the output is dropped", e)
        _stdout_to_devnull()
        return 1
    except MpcsError as e:
        print(f"mpcs {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # a RunInterrupted says where the run stands
        where = f"; {e}" if str(e) else ""
        print(f"mpcs {args.command}: interrupted{where}", file=sys.stderr)
        return 130
