"""The one entry point: `dynapose4d run|fit-static|train-cape|fit-dynamic|render|eval|make-scene|export|experiment`.

Each sub-command lives in the module that owns it and is wired here by explicit import (no registry).
User errors (`InputError`) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from dynapose4d.errors import InputError, MissingWeightsError


def _env_defaults() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")  # never block on a network unless the user asks
    os.environ.setdefault("WANDB_SILENT", "true")


def build_parser() -> argparse.ArgumentParser:
    from dynapose4d import commands

    p = argparse.ArgumentParser(prog="dynapose4d", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_all(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the sub-command. Returns the exit status."""
    _env_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (InputError, MissingWeightsError) as e:
        print(f"dynapose4d: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dynapose4d: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
