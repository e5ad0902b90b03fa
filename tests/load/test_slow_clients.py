"""Slow and malformed clients against a real `pcclip serve` (no proxy in front): idle and trickling
connections are closed at the header deadline, slow bodies get 408, the connection cap answers 503,
and a request the HTTP parser refuses gets the JSON error body.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

HEADER_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 16


@pytest.fixture
def guarded(serve):
    return serve(PCCLIP_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S), PCCLIP_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
                 PCCLIP_MAX_CONNECTIONS=str(MAX_CONNECTIONS))


def _connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """True if the server closes `sock` (EOF or reset) within `within_s`; any bytes before are ignored."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            continue
        except ConnectionError:
            return True
    return False


def _response(sock: socket.socket, timeout_s: float = 10.0) -> tuple[int, dict, bytes]:
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while "content-length" not in headers or len(body) < int(headers["content-length"]):  # else: until the server closes
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


@pytest.mark.slow
def test_idle_and_trickling_connections_are_closed_at_the_header_deadline(guarded):
    idle = [_connect(guarded) for _ in range(8)]
    trickling = _connect(guarded)
    started = time.monotonic()
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200
    closed_at = None
    for byte in head:  # one byte every 0.1 s: a complete head would need 20+ s
        try:
            trickling.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed_at = time.monotonic() - started
            break
        time.sleep(0.1)
        if _closed_by_server(trickling, 0.0):
            closed_at = time.monotonic() - started
            break
    assert closed_at is not None and closed_at < HEADER_TIMEOUT_S + 1.5
    assert all(_closed_by_server(s, HEADER_TIMEOUT_S + 1.5) for s in idle)
    # keep-alive: after a response, the next head has the same deadline
    with _connect(guarded) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(sock)[0] == 200
        assert _closed_by_server(sock, HEADER_TIMEOUT_S + 1.5)
    assert httpx.get(f"{guarded.base_url}/healthz").status_code == 200


@pytest.mark.slow
def test_a_slow_body_gets_408(guarded):
    with _connect(guarded) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        started = time.monotonic()
        status = None
        for _ in range(40):  # 3 bytes every 0.25 s: 100 bytes would take 8 s
            try:
                sock.sendall(b'{"i')
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(0.25)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break
            except socket.timeout:
                pass
        status, _, body = _response(sock)
        assert status == 408 and json.loads(body)["error"]["code"] == "body_timeout"
        assert time.monotonic() - started < BODY_TIMEOUT_S + 2


@pytest.mark.slow
def test_requests_past_the_connection_cap_get_503(serve):
    # a long header deadline here: the held connections must stay open however slowly they open
    guarded = serve(PCCLIP_HEADER_TIMEOUT_S="120", PCCLIP_MAX_CONNECTIONS=str(MAX_CONNECTIONS))
    held = [_connect(guarded) for _ in range(MAX_CONNECTIONS)]
    time.sleep(0.2)
    refused = httpx.get(f"{guarded.base_url}/healthz")
    assert refused.status_code == 503
    for s in held:
        s.close()
    time.sleep(0.2)
    assert httpx.get(f"{guarded.base_url}/healthz").status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("head", [
    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n",
])
def test_malformed_requests_get_the_json_400(guarded, head):
    with _connect(guarded) as sock:
        sock.sendall(head)
        status, headers, body = _response(sock)
    assert status == 400 and headers["content-type"].startswith("application/json") and int(headers["content-length"]) == len(body)
    assert json.loads(body)["error"]["code"] == "bad_request"
