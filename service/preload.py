"""The served model, loaded in a background thread while the rest of the server starts.

`pcclip serve` knows the model (the resolved bundle) before uvicorn imports the app (FastAPI,
pydantic, redis: about half the time to ready). With one worker the app runs in the same
process, so `start_preload` begins `models.loading.load_encoder` (file checks, ONNX Runtime
sessions) right away in a thread, and the app's start-up takes the result (`take_preloaded`)
instead of loading the model a second time. A preload that failed raises its error there, as a
load in the start-up would have.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

_lock = threading.Lock()
_pending: dict[tuple, Future] = {}


def _key(spec: str, kwargs: dict) -> tuple:
    return (str(spec), tuple(sorted(kwargs.items())))


def start_preload(spec: str, **kwargs) -> Future:
    """Start `load_encoder(spec, **kwargs)` in a daemon thread; the future of its encoder."""
    future: Future = Future()

    def run():
        try:
            from models.loading import load_encoder

            future.set_result(load_encoder(spec, **kwargs))
        except BaseException as err:  # handed to whoever takes the future
            future.set_exception(err)

    with _lock:
        _pending[_key(spec, kwargs)] = future
    threading.Thread(target=run, name="pcclip-preload", daemon=True).start()
    return future


def take_preloaded(spec: str, **kwargs) -> Future | None:
    """The preload of exactly this load (same spec and arguments), once; None if there is none.

    Any other preload is dropped, so that an encoder nobody asked for is not kept in memory.
    """
    with _lock:
        future = _pending.pop(_key(spec, kwargs), None)
        _pending.clear()
        return future
