"""The HTTP/1.1 protocol `pcclip serve` runs: uvicorn's h11 protocol with a header deadline and JSON 400s.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`), but any byte received resets
that timer, and a fresh connection that sends nothing has no timer at all. Here every connection
must deliver a complete request head within `PCCLIP_HEADER_TIMEOUT_S` of opening (or of the end of
the previous response), however slowly the bytes trickle in; otherwise it is closed. Request
bodies have their own deadline in the app (`PCCLIP_BODY_TIMEOUT_S`, 408), and the number of open
connections and running requests is capped by uvicorn's `limit_concurrency`
(`PCCLIP_MAX_CONNECTIONS`, 503 past it). A request the HTTP parser refuses (for example
`Content-Length: abc`) gets the service's JSON error body instead of uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import functools
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


@functools.cache
def header_timeout_s() -> float:
    from service.settings import Settings

    return Settings().header_timeout_s


class GuardedH11Protocol(H11Protocol):
    """uvicorn's H11Protocol plus a deadline on reading each request head, and JSON 400 bodies."""

    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is complete (or the connection is done)
            self._disarm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_deadline()  # the next request head has the same deadline

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(header_timeout_s(), self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.debug("closing a connection that sent no complete request head in %.1f s", header_timeout_s())
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": {"code": "bad_request", "message": f"malformed HTTP request: {msg}"}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
        self.transport.write(self.conn.send(h11.Data(data=body)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()
