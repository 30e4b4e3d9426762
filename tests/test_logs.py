"""Structured logs: one JSON object per line, carrying the id of the work it belongs to.

Request ids are checked through the real scoring app (its lifespan on the session stack); run ids
of Airflow tasks on the real scheduler's task logs (tests/test_scheduler.py).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from riskloop.core.config import Settings
from riskloop.core.logs import bound, configure


@pytest.fixture()
def json_logs() -> Iterator[io.StringIO]:
    """riskloop's JSON handler on the root logger, writing to a buffer; the previous config restored."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buf = io.StringIO()
    configure(Settings(log_json=True), stream=buf)
    try:
        yield buf
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def _records(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_a_log_line_is_json_with_the_bound_ids(json_logs: io.StringIO) -> None:
    log = logging.getLogger("riskloop.test")
    with bound(request_id="req-123", run_id="scheduled__2024-03-01T00:00:00+00:00"):
        log.info("scored %d payments", 3, extra={"model_version": "7"})
    log.warning("outside")
    inside, outside = _records(json_logs)
    assert inside["event"] == "scored 3 payments" and inside["level"] == "info"
    assert inside["logger"] == "riskloop.test" and inside["model_version"] == "7"
    assert inside["request_id"] == "req-123" and inside["run_id"] == "scheduled__2024-03-01T00:00:00+00:00"
    assert inside["timestamp"].endswith("Z")
    assert "request_id" not in outside and outside["level"] == "warning"


def test_text_logs_when_json_is_off() -> None:
    buf = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        configure(Settings(log_json=False), stream=buf)
        logging.getLogger("riskloop.test").info("plain")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    line = buf.getvalue().strip()
    assert line.endswith("INFO riskloop.test plain")
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_serving_request_lines_carry_the_request_id(settings: Settings, json_logs: io.StringIO,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A rejected webhook logs a line: it carries the client's X-Request-ID, or the one the server
    made up and returned in the response header."""
    from fastapi.testclient import TestClient

    from serving.app import create_app

    monkeypatch.delenv("RISKLOOP_WEBHOOK_SECRETS_STRIPE", raising=False)
    with TestClient(create_app(settings)) as client:
        json_logs.truncate(0)
        json_logs.seek(0)
        given = client.post("/webhooks/stripe", content=b"{}",
                            headers={"X-Request-ID": "req-from-client", "Stripe-Signature": "t=1,v1=00"})
        made = client.post("/webhooks/stripe", content=b"{}")
    assert given.status_code >= 400 and made.status_code >= 400
    assert given.headers["x-request-id"] == "req-from-client"
    generated = made.headers["x-request-id"]
    assert len(generated) == 32
    rejections = [r for r in _records(json_logs) if r["event"].startswith("webhook rejected")]
    assert [r.get("request_id") for r in rejections] == ["req-from-client", generated], rejections
    assert all(r["level"] == "warning" and "message" not in r for r in rejections)


def test_a_postgres_url_with_its_password_is_redacted_in_text_and_json(json_logs: io.StringIO) -> None:
    """In the message, its arguments, the extras (JSON keys) and a traceback; the line stays useful."""
    url = "postgresql://ann:Pa55-word@db.example:5432/riskloop"
    log = logging.getLogger("riskloop.test")
    log.warning("cannot reach %s", url, extra={"dsn": url, "conf": {"database_url": url}})
    try:
        raise ConnectionError(f"connection to {url} refused")
    except ConnectionError:
        log.exception("startup failed")
    warned, failed = _records(json_logs)
    assert "Pa55-word" not in json_logs.getvalue()
    assert warned["event"] == "cannot reach postgresql://ann:***@db.example:5432/riskloop"
    assert warned["dsn"] == warned["conf"]["database_url"] == "postgresql://ann:***@db.example:5432/riskloop"
    assert "ConnectionError: connection to postgresql://ann:***@db.example" in failed["event"]

    buf = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        configure(Settings(log_json=False), stream=buf)
        log.error("cannot reach %s", url)
        try:
            raise ConnectionError(f"connection to {url} refused")
        except ConnectionError:
            log.exception("startup failed")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    assert "Pa55-word" not in buf.getvalue()
    assert "cannot reach postgresql://ann:***@db.example:5432/riskloop" in buf.getvalue()
    assert "startup failed\nTraceback" in buf.getvalue()


def test_the_configured_secrets_are_masked_by_value(json_logs: io.StringIO) -> None:
    """A secret of an unexpected shape (an SMTP password) is masked wherever it shows up."""
    configure(Settings(log_json=True, alert_smtp_password="plain-words-secret"), stream=json_logs)
    logging.getLogger("riskloop.test").info("smtp said: bad login plain-words-secret")
    (line,) = _records(json_logs)
    assert line["event"] == "smtp said: bad login ***"
