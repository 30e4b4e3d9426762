"""riskloop's one logging configuration: JSON lines with the ids that tie a line to its work.

Library code logs with the standard ``logging`` module only. Where a line is written is decided
once, here, by whoever owns the process:

* the CLI and the scoring server call :func:`configure`: human-readable lines by default, one JSON
  object per line with ``RISKLOOP_LOG_JSON=true`` (what a log shipper wants);
* Airflow task processes keep Airflow's handlers: Airflow 3 writes task logs as JSON lines
  (structlog) and binds ``dag_id``, ``run_id``, ``task_id``, ``try_number`` in the same context
  variables before a task runs, so every line riskloop logs from a task already carries them
  (tests/test_scheduler.py checks it on a real run); nothing to add there;
* every line goes through :class:`riskloop.core.redact.RedactingFilter` on riskloop's handler: URLs
  with credentials, tokens, passwords and the configured secrets never reach the output;
* the scoring server binds ``request_id`` for the duration of each request
  (:class:`RequestIdMiddleware`), the same id it returns in ``X-Request-ID`` and writes to the
  decision log.

The ids travel in structlog's context variables (``contextvars``: per thread and per asyncio
task, so concurrent requests never see each other's ids); the JSON is rendered by structlog's
``ProcessorFormatter`` on stdlib records, so no library code needs to know about any of this.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import structlog

from riskloop.core.config import Settings
from riskloop.core.redact import RedactingFilter, register_settings

REQUEST_ID_HEADER = "x-request-id"
_HANDLER_NAME = "riskloop"


def _drop_formatted_message(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Another handler's ``Formatter.format`` leaves ``record.message`` behind; ``event`` has it already."""
    event.pop("message", None)
    return event


def json_formatter() -> logging.Formatter:
    """Stdlib records → one JSON object: timestamp (UTC ISO), level, logger, event, bound ids, extras."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            _drop_formatted_message,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str),
        ],
    )


def configure(settings: Settings, level: int = logging.INFO, stream: IO[str] | None = None,
              text_handler: logging.Handler | None = None) -> logging.Handler:
    """Install riskloop's handler on the root logger (replacing an earlier one); return it.

    JSON when ``settings.log_json``; otherwise ``text_handler`` (the CLI passes its Rich handler)
    or plain ``time level logger message`` lines that still show the bound ids. Either way every
    record is redacted on its way out, ``settings``' own secrets masked by value.
    """
    register_settings(settings)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    if settings.log_json:
        handler: logging.Handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(json_formatter())
    else:
        handler = text_handler or logging.StreamHandler(stream or sys.stderr)
        if text_handler is None:
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.set_name(_HANDLER_NAME)
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(level)
    return handler


@contextmanager
def bound(**ids: Any) -> Iterator[None]:
    """Carry ``ids`` on every log line written inside the block (this thread / asyncio task).

    Restores the previous values by the tokens ``bind_contextvars`` returns: structlog's own
    ``bound_contextvars`` copies the whole context first, which is most of its cost, and every
    HTTP request pays it (:class:`RequestIdMiddleware`)."""
    tokens = structlog.contextvars.bind_contextvars(**ids)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


class RequestIdMiddleware:
    """ASGI middleware: every HTTP request gets an id (the client's ``X-Request-ID`` or a new one).

    The id is bound for logging while the request runs, put into the request's headers when the
    client sent none (so handlers reading ``X-Request-ID`` see the same id) and returned in the
    response's ``X-Request-ID``.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = list(scope.get("headers") or [])
        sent = next((v.decode("latin-1") for k, v in headers if k == REQUEST_ID_HEADER.encode()), None)
        request_id = sent or uuid.uuid4().hex
        if sent is None:
            scope = {**scope, "headers": [*headers, (REQUEST_ID_HEADER.encode(), request_id.encode())]}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                out = list(message.get("headers") or [])
                if not any(k.lower() == REQUEST_ID_HEADER.encode() for k, _ in out):
                    out.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": out}
            await send(message)

        with bound(request_id=request_id):
            await self.app(scope, receive, send_with_id)
