"""`pcclip` subcommands of the training package (pairs, train, eval, export).

Each command lives in its own module with a `register(subparsers)` function; heavy imports
happen inside the handlers so `pcclip --help` stays fast.
"""

from __future__ import annotations

import importlib

COMMAND_MODULES = (
    "training.pairs.commands",   # pcclip pairs
    "training.train_commands",   # pcclip train
    "training.eval_commands",    # pcclip eval
    "training.export_commands",  # pcclip export
    "training.reproduce_commands",  # pcclip reproduce
)


def register(sub) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
