"""`pcclip serve --host H --port P [--model BUNDLE_OR_SPEC] [--backend onnx|torch] [--workers N]`: the service under uvicorn.

By default the model is served from its ONNX bundle (no torch in the serving process): a bundle
directory as it is, any other spec through the bundle cache (`service.bundle_cache`), exported
once in a child process and reused while the weights are unchanged. `--backend torch` serves the
torch model instead (for debugging, or a model that cannot be exported).
"""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the HTTP API (FastAPI + uvicorn)")
    p.add_argument("--host", default=None, help="bind address (default: PCCLIP_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: PCCLIP_PORT or 8000)")
    p.add_argument("--model", default=None, help="model spec or ONNX bundle directory (default: PCCLIP_MODEL or pcclip-mini)")
    p.add_argument("--backend", choices=["onnx", "torch"], default=None,
                   help="onnx: the model's ONNX bundle, built once and cached (default: PCCLIP_BACKEND or onnx); torch: the torch model")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (each loads the model)")
    p.set_defaults(handler=cmd_serve)


def cmd_serve(args) -> int:
    import uvicorn

    from service.settings import Settings

    # worker processes build their settings from the env
    if args.model:
        os.environ["PCCLIP_MODEL"] = args.model
    if args.backend:
        os.environ["PCCLIP_BACKEND"] = args.backend
    settings = Settings()
    if settings.backend == "onnx":
        from service.bundle_cache import BundleBuildError, resolve_bundle

        try:  # here, once, before the workers start (each would otherwise wait on the build lock)
            os.environ["PCCLIP_MODEL"] = resolve_bundle(settings.model, settings.bundle_cache_dir)
        except BundleBuildError as err:
            print(f"pcclip serve: {err}")
            return 1
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=max(1, int(args.workers)),
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
        http="service.http_protocol:GuardedH11Protocol",  # header deadline, JSON 400s
        limit_concurrency=settings.max_connections,
    )
    return 0
