"""The ``medssr`` command line: finds the subcommands in ``medssr.commands`` and runs one.

Expected failures (a bad path, a bad option, a bad record, a service that does not answer) print one
clear line and exit 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

import medssr
import medssr.commands
from medssr.data import RecordError
from medssr.dependencies import DependencyUnavailable
from medssr.storage import StorageError, what_is_wrong


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


USER_ERRORS = (CLIError, DependencyUnavailable, RecordError, StorageError, FileNotFoundError, NotADirectoryError, ValueError, KeyError, PermissionError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump); subcommand parsers inherit this class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="medssr",
        description="MedSSR on Kubeflow: synthesize, label, train (GRPO x2), evaluate, track, promote, serve.",
    )
    parser.add_argument("--version", action="version", version=f"medssr {medssr.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(medssr.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"medssr.commands.{info.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"medssr {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:
            raise  # not about a path the user gave: a bug
        # A path written outside medssr.storage (a library's own mkdir): still one line naming it.
        print(f"medssr {args.command}: error: cannot use {exc.filename}: {what_is_wrong(exc, Path(exc.filename))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medssr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run the imported module's main, so commands raising medssr.cli.CLIError match USER_ERRORS
    # (under `python -m`, this file is also `__main__`, a second copy with its own CLIError class).
    from medssr.cli import main as imported_main

    sys.exit(imported_main())
