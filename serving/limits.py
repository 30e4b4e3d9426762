"""Request bodies are bounded and authenticated before anything reads them.

FastAPI reads (and parses) a route's body before its dependencies run, so without this a caller
with no key could make the server buffer any amount of data before the 401, and nothing bounded
a body's size. :class:`BodyLimits` is a pure ASGI middleware, in front of the routes, that for a
request declaring a body (``Content-Length`` or ``Transfer-Encoding``):

1. on a keyed path (:data:`KEYED`) answers the 401 of :func:`serving.auth.identify` when the
   request carries no valid key, without receiving a byte of the body (a wrong *role* is still the
   route's 403: that caller is authenticated);
2. answers 413 when the declared length is over the route's limit, still unread;
3. otherwise receives the body, counting what arrives (a chunked body declares no length), stops
   with a 413 as soon as it passes the limit, and hands the app the bytes read.

The webhook receiver (``/webhooks/``) is left to :class:`serving.webhooks.WebhookFastPath`, which
reads the raw bytes bounded by its own limit and authenticates by their signature. The fraud fast
path (:class:`serving.fastpath.ScoreFastPath`) sits outside this middleware: a request it answers
never reaches it, so the scoring hot path pays nothing here.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import HTTPException

from serving.auth import identify
from serving.fastpath import _answer, _detail, _replay
from serving.webhooks import _Disconnected, _read_body, _TooLarge

log = logging.getLogger(__name__)

KEYED = ("/v1/", "/review/api/")  # every route under these requires an API key (serving.auth.require)
SIGNED = ("/webhooks/",)  # authenticated by a signature over the raw body, bounded by the receiver itself


class BodyLimits:
    """ASGI middleware: 401 then 413 before a body is read; ``limits`` maps a path to its own
    limit in bytes, every other path has ``max_body_bytes``."""

    def __init__(self, app: Any, *, max_body_bytes: int, limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.limits = limits or {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(SIGNED):
            await self.app(scope, receive, send)
            return
        length = authorization = None
        chunked = False
        for k, v in scope["headers"]:  # lower-case names (ASGI)
            if k == b"content-length":
                length = v.decode("latin-1")
            elif k == b"transfer-encoding":
                chunked = True
            elif k == b"authorization":
                authorization = v.decode("latin-1")
        if not chunked and length in (None, "0"):  # no body: nothing to bound
            await self.app(scope, receive, send)
            return
        if path.startswith(KEYED):
            try:
                identify(scope["app"].state.keys, authorization)
            except HTTPException as exc:
                log.warning("%s %s refused before reading its body: %s", scope["method"], path, exc.detail)
                await _answer(send, exc.status_code, _detail(exc.detail), None, exc.headers)
                return
        limit = self.limits.get(path, self.max_body_bytes)
        try:
            raw = await _read_body(receive, length, limit)
        except _Disconnected:
            return  # nobody to answer
        except _TooLarge:
            log.warning("%s %s refused: body over %d bytes", scope["method"], path, limit)
            await _answer(send, 413, _detail(f"request body over {limit} bytes"), None)
            return
        await self.app(scope, _replay(raw, receive), send)
