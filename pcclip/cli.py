"""`pcclip` command line: one entry point, subcommands contributed by each package.

Each package's `cli` module has `register(subparsers)` and imports its heavy dependencies only
inside the command handlers, so `pcclip --help` is fast and works with any subset of extras.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Packages that contribute subcommands, in help order. A package missing from an install is skipped.
COMMAND_MODULES = ("models.cli", "training.cli", "service.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcclip", description="Difference-aware CLIP embeddings (PC-CLIP).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from models.loading import ModelLoadError

    try:
        result = args.handler(args)
    except ModelLoadError as err:  # a model that cannot load says why and what to do; tracebacks with -v
        if args.verbose:
            raise
        print(f"pcclip {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
