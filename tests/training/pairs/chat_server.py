"""A real local HTTP server speaking the OpenAI chat-completions protocol (for the llm writer tests).

It answers deterministically from the prompt, can fail the first N requests (429/503), counts
requests and the most requests in flight at once, and can be told to answer with texts that the
cleaning rules cut or drop.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatServer:
    """`with ChatServer() as server:` ... `server.base_url` is `http://127.0.0.1:<port>/v1`."""

    def __init__(self, fail_first: int = 0, fail_status: int = 503, delay_s: float = 0.0,
                 answer=None, api_key: str | None = None):
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.delay_s = delay_s
        self.answer = answer or default_answer
        self.api_key = api_key
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests += 1
                    number = server.requests
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.bodies.append(body)
                try:
                    time.sleep(server.delay_s)
                    if self.path != "/v1/chat/completions":
                        return self._send(404, {"error": {"message": "not found"}})
                    if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                        return self._send(401, {"error": {"message": "bad api key"}})
                    if number <= server.fail_first:
                        return self._send(server.fail_status, {"error": {"message": "busy"}})
                    prompt = body["messages"][-1]["content"]
                    self._send(200, {
                        "id": f"chatcmpl-{number}", "object": "chat.completion", "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": server.answer(prompt)}}],
                    })
                finally:
                    with server._lock:
                        server.in_flight -= 1

        return Handler


def captions_in(prompt: str) -> tuple[str, str]:
    match = re.search(r"description of (.*) and an image with a description of (.*)\?$", prompt)
    assert match, prompt
    return match.group(1), match.group(2)


def default_answer(prompt: str) -> str:
    t1, t2 = captions_in(prompt)
    return f"The first image shows {t1}, whereas the second image shows {t2}; the scenes differ."
