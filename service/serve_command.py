"""`pcclip serve --host H --port P [--model BUNDLE_OR_SPEC] [--workers N]`: the service under uvicorn."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the HTTP API (FastAPI + uvicorn)")
    p.add_argument("--host", default=None, help="bind address (default: PCCLIP_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: PCCLIP_PORT or 8000)")
    p.add_argument("--model", default=None, help="model spec or ONNX bundle directory (default: PCCLIP_MODEL or pcclip-mini)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (each loads the model)")
    p.set_defaults(handler=cmd_serve)


def cmd_serve(args) -> int:
    import uvicorn

    from service.settings import Settings

    if args.model:
        os.environ["PCCLIP_MODEL"] = args.model  # worker processes build their settings from the env
    settings = Settings()
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=max(1, int(args.workers)),
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
    )
    return 0
