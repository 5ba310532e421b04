"""The ``medssr`` command line: finds the subcommands in ``medssr.commands`` and runs one.

Errors by origin: what the user gave is wrong (``medssr.errors.UserError``: a bad path, option, record or
config value), a storage location cannot be used (``StorageError``), or a service does not answer
(``DependencyUnavailable``): one clear line, exit 2. Anything else is a bug and shows its traceback (exit 1).
Options are never abbreviated: ``--benchmark`` is not taken for ``--benchmarks``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

import medssr
import medssr.commands
from medssr.dependencies import DependencyUnavailable
from medssr.errors import UserError
from medssr.storage import StorageError, what_is_wrong

USER_ERRORS = (UserError, StorageError, DependencyUnavailable)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and no option is abbreviated (a prefix of an
    option is an error, not that option); subcommand parsers are made from this class too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

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
        print(f"medssr {args.command}: error: {exc}", file=sys.stderr)
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
    sys.exit(main())
