"""The one entry point: `dynapose4d run|fit-static|fit-dynamic|train-cape|render|eval|make-scene|export|...`
(`dynapose4d --help` lists them all).

Each sub-command lives in the module that owns it and is wired here by explicit import (no registry).
User errors (`InputError`) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dynapose4d.core.errors import InputError, MissingWeightsError

PACKAGE_DIR = str(Path(__file__).resolve().parent)
RESUMABLE = ("run", "fit-static", "fit-dynamic")  # commands whose `--out` run folder `--resume` continues
FULL_DISK = 64 * 2**20  # bytes free under which a failure while writing a run folder is put down to a full disk


def _env_defaults() -> None:
    # No WANDB_MODE default here: the config's `wandb.mode` (offline unless a preset or --set says otherwise) is
    # passed to every W&B run we start, and a WANDB_MODE the user exported wins over the preset (config.load_config).
    os.environ.setdefault("WANDB_SILENT", "true")  # the stage logs say where the runs are (online: their URL)


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Warnings this package raises print as one line, `dynapose4d: warning: MESSAGE` (Python's default adds the
    file, line number and a line of source code, which say nothing to a user); other packages' keep their format.
    Only the text changes (`warnings.formatwarning`): filters and recorders such as pytest.warns work as before."""
    default = warnings.formatwarning

    def one_line(message, category, filename, lineno, line=None):  # noqa: ANN001 - warnings' signature
        if str(filename).startswith(PACKAGE_DIR) and not issubclass(category, DeprecationWarning):
            return f"dynapose4d: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = default


def full_disk(error: BaseException, folder: str | os.PathLike | None) -> str | None:
    """A one-line explanation when `error` came from a full disk (ENOSPC or EDQUOT in its chain, or under
    `FULL_DISK` bytes left where `folder` is: torch.save reports a full disk as "unexpected pos ..."), else None."""
    chain, e = [], error
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if folder is None:
        return None
    where = Path(folder).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if any(getattr(c, "errno", None) in (errno.ENOSPC, errno.EDQUOT) for c in chain) or free < FULL_DISK:
        first = str(error).splitlines()[0] if str(error) else ""
        return (f"{folder}: the disk ran out of space ({free / 2**20:.0f} MB free now; {type(error).__name__}: "
                f"{first}); free some and run the command again (a run goes on from its last checkpoint with --resume)")
    return None


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
    except (KeyboardInterrupt, SystemExit) as e:
        # Ctrl-C, SIGTERM (Lightning raises SIGTERMException, a SystemExit of status 0) and the exit Lightning makes
        # after a Ctrl-C: one line and the status a shell gives a process stopped by that signal; any other exit
        # goes on as it was
        from dynapose4d.stages.base import is_stop

        stop = is_stop(e)
        if stop is None:
            raise
        command = getattr(args, "command", "")
        hint = (f"; `--resume` goes on from where {args.out} stopped" if command in RESUMABLE else
                "; running it again goes on where it stopped" if command == "experiment" else "")
        print(f"dynapose4d: stopped ({stop}){hint}", file=sys.stderr)
        return 143 if stop == "SIGTERM" else 130  # 128 + the signal, as a shell reports a process it killed
    except Exception as e:  # a bug prints its traceback; a full disk is the user's to fix: one line
        why = full_disk(e, getattr(args, "out", None) or getattr(args, "run", None))
        if why is None:
            raise
        print(f"dynapose4d: error: {why}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
