"""`pcclip serve`: registered by the service package (see service issue)."""

from __future__ import annotations

import importlib


def register(sub) -> None:
    try:
        module = importlib.import_module("service.serve_command")
    except ModuleNotFoundError as err:
        if err.name in ("service.serve_command",):
            return
        raise
    module.register(sub)
