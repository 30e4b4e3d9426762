"""``POST /v1/score/fraud`` answered without the framework around it.

py-spy on ``riskloop serve`` under load (docs/benchmarks/history.md, "Serving"): Starlette's middleware and
exception wrappers, routing, FastAPI's dependency solving, ``Request.json`` and the per-request
validation of a Python dict cost more CPU than the decision itself (online read, model, rules,
log row). :class:`ScoreFastPath` is an ASGI middleware that does only what the decision needs:
check the key, read the body (bounded), parse *and* validate the JSON in one pydantic-core call
(``model_validate_json``), bind the request id for logging, call the same handler as the route
(:func:`serving.app.decide_fraud`) and send the bytes it returns.

Anything it does not answer itself, it hands to the app: a missing or wrong key and a content
type other than JSON unread (:class:`serving.limits.BodyLimits` then refuses an unauthenticated
body before reading it), a body that does not validate replayed. So every error
response (401/403 with their challenge, FastAPI's field-level 422s) is still produced by the
FastAPI route and its dependency, exactly as before, and that route keeps documenting the
endpoint at ``/docs``. Like :class:`serving.webhooks.WebhookFastPath` for the webhooks.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel, ValidationError

from riskloop.core.logs import REQUEST_ID_HEADER, bound
from serving.auth import permits
from serving.webhooks import _Disconnected, _read_body, _TooLarge

log = logging.getLogger(__name__)

_REQUEST_ID = REQUEST_ID_HEADER.lower().encode("latin-1")
_JSON = b"application/json"


class ScoreFastPath:
    """ASGI middleware answering ``POST <path>`` with ``handler(app.state, body, request_id)``
    (encoded JSON) for requests with a key allowed to ``action`` and a valid ``model`` body."""

    def __init__(self, app: Any, *, path: str, model: type[BaseModel], action: str, max_body_bytes: int,
                 handler: Callable[[Any, Any, str], Awaitable[bytes]]) -> None:
        self.app = app
        self.path = path
        self.model = model
        self.action = action
        self.max_body_bytes = max_body_bytes
        self.handler = handler

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        content_type = authorization = request_id = length = None
        for k, v in scope["headers"]:  # lower-case names (ASGI)
            if k == b"content-type":
                content_type = v
            elif k == b"authorization":
                authorization = v.decode("latin-1")
            elif k == _REQUEST_ID:
                request_id = v.decode("latin-1")
            elif k == b"content-length":
                length = v.decode("latin-1")
        st = scope["app"].state
        if not ((content_type is None or content_type.split(b";")[0].strip().lower() == _JSON) and
                permits(st.keys, authorization, self.action)):
            # unread: the app refuses it before its body is read (serving.limits), or the route answers
            await self.app(scope, receive, send)
            return
        request_id = request_id or uuid.uuid4().hex
        try:
            raw = await _read_body(receive, length, self.max_body_bytes)
        except _Disconnected:
            return  # nobody to answer; nothing was decided
        except _TooLarge:
            log.warning("score request %s refused: body over %d bytes", request_id, self.max_body_bytes)
            await _answer(send, 413, _detail(f"request body over {self.max_body_bytes} bytes"), request_id)
            return
        try:
            body = self.model.model_validate_json(raw)
        except ValidationError:  # the route's validation answers it (FastAPI's field-level 422)
            await self.app(scope, _replay(raw, receive), send)
            return
        with bound(request_id=request_id):
            try:
                status, content, extra = 200, await self.handler(st, body, request_id), None
            except HTTPException as exc:  # what FastAPI's handler would send for it
                status, content, extra = exc.status_code, _detail(exc.detail), exc.headers
            except Exception:  # noqa: BLE001 - outside Starlette's error middleware: its 500, logged
                log.exception("score request %s failed", request_id)
                status, content, extra = 500, _detail("Internal Server Error"), None
        await _answer(send, status, content, request_id, extra)


def _detail(detail: Any) -> bytes:
    return json.dumps({"detail": detail}, separators=(",", ":"), ensure_ascii=False).encode()


async def _answer(send: Any, status: int, content: bytes, request_id: str | None,
                  extra: dict[str, str] | None = None) -> None:
    """Send a JSON answer; ``request_id`` None when a middleware outside adds it."""
    headers = [(b"content-type", _JSON), (b"content-length", str(len(content)).encode())]
    if request_id is not None:
        headers.append((_REQUEST_ID, request_id.encode("latin-1")))
    if extra:
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def _replay(raw: bytes, receive: Any) -> Callable[[], Awaitable[dict]]:
    """An ASGI ``receive`` that yields the already-read body once, then defers to the real one."""
    done = False

    async def again() -> dict:
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return again
