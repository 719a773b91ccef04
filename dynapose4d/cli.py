"""The one entry point: `dynapose4d run|fit-static|fit-dynamic|train-cape|render|eval|make-scene|export|...`
(`dynapose4d --help` lists them all).

Each sub-command lives in the module that owns it and is wired here by explicit import (no registry).
User errors (`InputError`) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dynapose4d.core.errors import InputError, MissingWeightsError

PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _env_defaults() -> None:
    # No WANDB_MODE default here: the config's `wandb.mode` (offline unless a preset or --set says otherwise) is
    # passed to every W&B run we start, and a WANDB_MODE the user exported wins over the preset (config.load_config).
    os.environ.setdefault("WANDB_SILENT", "true")  # the stage logs say where the runs are (online: their URL)


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Warnings this package raises print as one line, `dynapose4d: warning: MESSAGE` (Python's default adds the
    file, line number and a line of source code, which say nothing to a user); other packages' keep their format."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        if str(filename).startswith(PACKAGE_DIR) and not issubclass(category, DeprecationWarning):
            print(f"dynapose4d: warning: {message}", file=file or sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def package_version() -> str:
    """The installed distribution's version (package metadata), else `dynapose4d.__version__`."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dynapose4d")
    except PackageNotFoundError:
        from dynapose4d import __version__

        return __version__


def split_set_values(argv: list[str]) -> list[str]:
    """`--set a=1 b=2 SCENE` -> `--set=a=1 --set=b=2 SCENE`: the values of `--set` are the words after it that
    contain '='; the first one without '=' is a positional argument again (argparse alone would take it as
    another value). Words after `--` are left alone. ValueError when the word right after `--set` has no '='."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            return out + argv[i:]
        if tok != "--set":
            out.append(tok)
            i += 1
            continue
        j = i + 1
        while j < len(argv) and "=" in argv[j] and not argv[j].startswith("-"):
            out.append(f"--set={argv[j]}")
            j += 1
        if j == i + 1:
            if j < len(argv) and not argv[j].startswith("-"):
                raise ValueError(f"argument --set: expected KEY=VALUE, got {argv[j]!r}")
            out.append(tok)  # a bare --set: argparse reports it ("expected at least one argument")
        i = j
    return out


class _Parser(argparse.ArgumentParser):
    """The top-level parser: `--set` takes only KEY=VALUE words (see `split_set_values`)."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        try:
            args = split_set_values(list(sys.argv[1:] if args is None else args))
        except ValueError as e:
            self.error(str(e))
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    from dynapose4d import commands

    p = _Parser(prog="dynapose4d", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_all(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the sub-command. Returns the exit status."""
    _env_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with one_line_warnings():
            return int(args.func(args) or 0)
    except (InputError, MissingWeightsError) as e:
        print(f"dynapose4d: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dynapose4d: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
