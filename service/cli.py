"""`pcclip` subcommands of the service package (`pcclip serve`)."""

from __future__ import annotations


def register(sub) -> None:
    from service import serve_command

    serve_command.register(sub)
