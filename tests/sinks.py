"""Real alert sinks on loopback for tests: an HTTP server (Slack / generic webhook) and an SMTP server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class HttpSink:
    """Records every POST (path, headers, raw body); ``fail_next`` answers that many 500s first."""

    port: int = 0
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    fail_next: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str) -> list[bytes]:
        return [b for p, _, b in self.requests if p == path]


@contextmanager
def http_sink() -> Iterator[HttpSink]:
    sink = HttpSink()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with sink.lock:
                failing = sink.fail_next > 0
                if failing:
                    sink.fail_next -= 1
                else:
                    sink.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(500 if failing else 200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class SmtpSink:
    port: int = 0
    messages: list[Message] = field(default_factory=list)


@contextmanager
def smtp_sink() -> Iterator[SmtpSink]:
    """aiosmtpd on a free loopback port; every accepted message is parsed into ``messages``."""
    from aiosmtpd.controller import Controller
    from conftest import free_port

    sink = SmtpSink(port=free_port())

    class Handler:
        async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's naming
            sink.messages.append(message_from_bytes(envelope.content))
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()
