"""The ``facemogle`` command line.

Each sub-command lives in its own module of this package and exposes ``add_parser(subparsers)``,
which registers an ``argparse`` parser whose ``func`` default runs the command. This module only
collects them and turns user errors into one-line messages with a non-zero exit status.

Interrupts: Ctrl-C (SIGINT) and SIGTERM both unwind the command as an exception, so every
file being written is removed and every destination keeps what it held (facemogle.files); the
command then exits 130 (SIGINT) or 143 (SIGTERM) with one line, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading

from facemogle import __version__
from facemogle.errors import FaceMoGLEError

# Sub-command modules, in the order `facemogle --help` lists them.
COMMAND_MODULES = [
    "facemogle.cli.mask",
    "facemogle.cli.generate",
    "facemogle.cli.edit",
    "facemogle.cli.app",
    "facemogle.cli.detect",
    "facemogle.cli.evaluate",
    "facemogle.cli.parse",
    "facemogle.cli.train",
    "facemogle.cli.bench",
    "facemogle.cli.caption",
]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is so that it unwinds like Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


class _NoTorchvisionNotice(logging.Filter):
    """facemogle never uses torchvision (it has no CPU build here); transformers' notice that it
    falls back to its PIL image processors without it is noise on every command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facemogle",
        description="Face-MoGLE: controllable face generation from masks and text.",
    )
    parser.add_argument("--version", action="version", version=f"facemogle {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return _run(argv)
    except KeyboardInterrupt as interrupt:  # also while the command line is built (imports)
        terminated = isinstance(interrupt, Terminated)
        name = (argv if argv is not None else sys.argv[1:])[:1]
        print(f"facemogle{' ' + name[0] if name else ''}: {'terminated' if terminated else 'interrupted'}",
              file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str] | None) -> int:
    if "torch" not in sys.modules:  # OpenMP reads its settings once, when torch loads
        from facemogle import cpu_threads

        cpu_threads.configure()
    logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionNotice())
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        result = args.func(args)
    except FaceMoGLEError as err:
        print(f"facemogle {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as err:
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        print(f"facemogle {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_USER_ERROR
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
