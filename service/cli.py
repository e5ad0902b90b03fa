"""`pcclip` subcommands of the service package (`pcclip serve`, `pcclip index`)."""

from __future__ import annotations


def register(sub) -> None:
    from service import index_command, serve_command

    serve_command.register(sub)
    index_command.register(sub)
