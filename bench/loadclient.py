"""A lean HTTP/1.1 keep-alive client for the open-loop benchmarks: pre-encoded requests, one
``send`` per request, httptools (the C parser uvicorn uses) for the responses.

Why not aiohttp: the generator shares the 2 cores with the server it measures, so what it burns
is taken from the server, and its own event-loop delays are counted as latency. aiohttp spent
~0.6–0.7 ms CPU per request here (on asyncio's loop and on uvloop alike: it is the client's
Python machinery, not the loop), a third of what the whole fraud decision costs the server.
This client is a protocol over the event loop's transport: a request is one ``transport.write``
of bytes prepared up front, and a response is complete when httptools says so. A connection that
is busy is never waited for: an open-loop request takes an idle connection or opens a new one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from urllib.parse import urlsplit

import httptools


class HttpError(Exception):
    """The connection failed or closed before a complete response."""


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.chunks: list[bytes] = []
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"bad response: {exc}"))
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(HttpError(f"connection lost: {exc!r}"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), b"".join(self.chunks)))
        self.chunks = []

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def request(self, raw: bytes) -> asyncio.Future:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)  # type: ignore[union-attr]
        return self.waiter


class Client:
    """``POST`` pre-encoded bodies to one path of one loopback server over keep-alive connections.

    A connection idle for ``max_idle_s`` is not reused: uvicorn closes keep-alive connections idle
    for 5 s, and a request written into one it is closing would count as a server error."""

    def __init__(self, base_url: str, path: str, headers: Sequence[tuple[str, str]] = (),
                 max_idle_s: float = 2.0) -> None:
        self.max_idle_s = max_idle_s
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers)
        self._head = head.encode("latin-1")
        self._idle: deque[_Conn] = deque()
        self._all: list[_Conn] = []

    def encode(self, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> bytes:
        """The whole request for ``body`` (``headers``: this request's own, e.g. its signature):
        prepare them before the timed run."""
        own = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1")
        return self._head + own + b"Content-Length: %d\r\n\r\n" % len(body) + body

    async def _conn(self) -> _Conn:
        loop = asyncio.get_running_loop()
        while self._idle:
            # The least recently used first: open-loop traffic stands for many clients, so it is
            # spread over every connection, hence over every server worker. (Most recently used
            # first kept reusing one connection: one worker took ~60 % of the requests.)
            conn = self._idle.popleft()
            if not conn.closed and loop.time() - conn.idle_since < self.max_idle_s:
                return conn
            conn.transport.close()  # type: ignore[union-attr]
            conn.closed = True
        _, conn = await loop.create_connection(_Conn, self.host, self.port)
        if len(self._all) >= 1024:  # forget the closed ones
            self._all = [c for c in self._all if not c.closed]
        self._all.append(conn)
        return conn

    async def post(self, raw: bytes, timeout: float) -> tuple[int, bytes]:
        """Send one request from :meth:`encode`; (status, body). Raises ``HttpError`` or ``TimeoutError``."""
        conn = await self._conn()
        try:
            async with asyncio.timeout(timeout):
                status, body = await conn.request(raw)
        except BaseException:
            conn.transport.close()  # type: ignore[union-attr] - its answer may still come: not reusable
            conn.closed = True
            raise
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.append(conn)
        return status, body

    def close(self) -> None:
        for conn in self._all:
            if conn.transport is not None:
                conn.transport.close()
        self._all.clear()
        self._idle.clear()
