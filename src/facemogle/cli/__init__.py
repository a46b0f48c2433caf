"""The ``facemogle`` command line.

Each sub-command lives in its own module of this package and exposes ``add_parser(subparsers)``,
which registers an ``argparse`` parser whose ``func`` default runs the command. This module only
collects them and turns user errors into one-line messages with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from facemogle import __version__
from facemogle.errors import FaceMoGLEError

# Sub-command modules, in the order `facemogle --help` lists them.
COMMAND_MODULES = [
    "facemogle.cli.mask",
    "facemogle.cli.generate",
    "facemogle.cli.edit",
    "facemogle.cli.detect",
    "facemogle.cli.evaluate",
    "facemogle.cli.parse",
    "facemogle.cli.train",
    "facemogle.cli.bench",
    "facemogle.cli.caption",
]

EXIT_USER_ERROR = 2


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
    except KeyboardInterrupt:
        print(f"facemogle {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
