"""Bodies are authenticated and bounded before they are read, on every route of the scoring service.

The app is called as ASGI with a ``receive`` that hands the body out in 1 MiB chunks and counts
what it handed out: "refused unread" is asserted as 0 bytes taken, not as a time."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.test_serving_auth import ADMIN, KEYS, REVIEWER, SCORER, _app, _bearer

ANALYST = "analyst-key-dddddddddddd"
MIB = 1 << 20
FLOOD = 20 * MIB
LIMIT = 4096


class Sender:
    """An ASGI ``receive`` over ``size`` bytes in 1 MiB chunks; ``taken`` counts the bytes handed out."""

    def __init__(self, size: int) -> None:
        self.left, self.taken = size, 0

    async def __call__(self) -> dict[str, Any]:
        if self.left == 0:
            await asyncio.sleep(3600)  # the body is over: a real server waits for the disconnect
        chunk = min(MIB, self.left)
        self.left -= chunk
        self.taken += chunk
        return {"type": "http.request", "body": b"x" * chunk, "more_body": self.left > 0}


def call(app: Any, method: str, path: str, size: int, *, key: str | None = None,
         chunked: bool = False) -> tuple[int, dict[str, str], int]:
    """One request straight into the ASGI app: (status, response headers, body bytes the app took)."""
    headers = [(b"content-type", b"application/json")]
    headers.append((b"transfer-encoding", b"chunked") if chunked else (b"content-length", str(size).encode()))
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1234), "server": ("testserver", 80)}
    sender, sent = Sender(size), []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, sender, send), 30))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, sender.taken


def _routes() -> list[str]:
    some = uuid.uuid4()
    return ["/v1/score/fraud", "/v1/score/credit", f"/v1/decisions/{some}/override", f"/v1/decisions/{some}/outcome",
            f"/v1/cases/{some}/note", f"/v1/cases/{some}/close", "/v1/admin/reload",
            "/review/api/models/m/versions/1/approve", "/review/api/models/m/promote"]


@pytest.fixture()
def app(settings: Any) -> Any:
    # Only refusals are exercised here: they happen before anything the lifespan sets up.
    return _app(settings, api_keys=f"{KEYS},{ANALYST}:analyst", max_body_bytes=LIMIT, api_max_body_bytes=LIMIT)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("key", [None, "not-a-key"], ids=["no-key", "wrong-key"])
def test_a_flood_without_a_valid_key_is_401_unread(app: Any, key: str | None, chunked: bool) -> None:
    for path in _routes():
        status, headers, taken = call(app, "POST", path, FLOOD, key=key, chunked=chunked)
        assert (status, taken) == (401, 0), path
        assert headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("key", [SCORER, REVIEWER, ANALYST, ADMIN])
def test_a_declared_length_over_the_limit_is_413_unread(app: Any, key: str) -> None:
    for path in _routes():
        status, _, taken = call(app, "POST", path, FLOOD, key=key)
        assert (status, taken) == (413, 0), path


@pytest.mark.parametrize("key", [SCORER, REVIEWER, ANALYST, ADMIN])
def test_a_chunked_body_over_the_limit_is_413_when_it_passes_it(app: Any, key: str) -> None:
    for path in _routes():
        status, _, taken = call(app, "POST", path, FLOOD, key=key, chunked=True)
        assert status == 413, path
        assert taken == MIB, path  # the first chunk already passes the limit: nothing more is taken


def test_limits_come_from_the_serving_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.config import ServingSettings

    monkeypatch.setenv("RISKLOOP_SERVING_API_MAX_BODY_BYTES", "1234")
    assert ServingSettings().api_max_body_bytes == 1234


def test_bodies_within_the_limit_still_reach_the_routes(settings: Any) -> None:
    """Through the whole app (lifespan, real stack): a small chunked body is read and answered by its route."""
    with TestClient(_app(settings, api_keys=KEYS, api_max_body_bytes=LIMIT)) as c:
        some = f"/v1/decisions/{uuid.uuid4()}/outcome"
        r = c.post(some, content=iter([b'{"outcome": ', b'"failed"}']), headers={**_bearer(SCORER),
                                                                             "content-type": "application/json"})
        assert r.status_code == 404, r.text  # read, validated, looked up: no such decision
        r = c.post(some, content=iter([b"x" * LIMIT, b"x"]), headers=_bearer(SCORER))
        assert r.status_code == 413 and r.headers["x-request-id"]
        r = c.post(some, content=b"{}", headers=_bearer(REVIEWER))
        assert r.status_code == 403  # a valid key of another role: the route's answer, as before


def test_the_webhook_receiver_bounds_a_chunked_body_itself(settings: Any) -> None:
    """Webhooks keep their own limit and signature-first order, for a body that declares no length too."""
    from riskloop.core.signatures import WebhookSettings
    from serving.webhooks import create_webhook_app

    cfg = WebhookSettings(secrets_standard="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", max_body_bytes=LIMIT)
    with TestClient(create_webhook_app(settings, cfg)) as c:
        r = c.post("/webhooks/standard", content=iter([b"x" * LIMIT, b"x"]))
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"
