"""Webhook receiver: the schemes against published vectors, then the real HTTP server on loopback
writing the real Postgres inbox (no mocks), with a clock the tests control."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest

from riskloop.core.db import dsn
from riskloop.core.signatures import (
    Rejection,
    StandardVerifier,
    WebhookSettings,
    hmac_sha256_hex,
    sign_standard,
    sign_stripe,
    verify_stripe,
)
from tests.conftest import free_port

# Standard Webhooks spec / reference-library example.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

STRIPE_SECRET = "whsec_test_stripe_primary"
STRIPE_OLD = "whsec_test_stripe_rotated_out"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"riskloop-test-key-32-bytes-long!").decode()
NOW = 1_750_000_000


# --- schemes ------------------------------------------------------------------------------------

def test_hmac_primitive_matches_github_documented_example() -> None:
    # docs.github.com "Validating webhook deliveries": X-Hub-Signature-256 test values.
    assert "sha256=" + hmac_sha256_hex(b"It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")


def test_standard_webhooks_spec_example_verifies_at_its_time() -> None:
    headers = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS), "webhook-signature": SPEC_SIG}
    assert sign_standard(SPEC_ID, SPEC_BODY, SPEC_SECRET, SPEC_TS)["webhook-signature"] == SPEC_SIG
    v = StandardVerifier([SPEC_SECRET])
    assert v.verify(SPEC_BODY, headers, now=SPEC_TS) == (SPEC_ID, SPEC_TS)
    # rotation: the right secret second in the list still verifies; a multi-signature header too
    rot = StandardVerifier(["whsec_" + base64.b64encode(b"x" * 24).decode(), SPEC_SECRET])
    multi = {**headers, "webhook-signature": "v1,AAAA v1a,xyz " + SPEC_SIG}
    assert rot.verify(SPEC_BODY, multi, now=SPEC_TS + 300) == (SPEC_ID, SPEC_TS)
    for body, hdrs, now, reason in [
        (SPEC_BODY + b" ", headers, SPEC_TS, "bad_signature"),
        (SPEC_BODY, {**headers, "webhook-id": SPEC_ID + "x"}, SPEC_TS, "bad_signature"),
        (SPEC_BODY, headers, SPEC_TS + 301, "timestamp_too_old"),
        (SPEC_BODY, headers, SPEC_TS - 301, "timestamp_in_future"),
        (SPEC_BODY, {k: v for k, v in headers.items() if k != "webhook-signature"}, SPEC_TS, "missing_header"),
        (SPEC_BODY, {**headers, "webhook-signature": "v2,abc"}, SPEC_TS, "malformed_header"),
        (SPEC_BODY, {**headers, "webhook-timestamp": "1614265330.5"}, SPEC_TS, "malformed_header"),
    ]:
        with pytest.raises(Rejection) as exc:
            v.verify(body, hdrs, now=now)
        assert exc.value.reason == reason
    for empty in ([], [""], ["whsec_"]):
        with pytest.raises(Rejection) as exc:
            StandardVerifier([s for s in empty if s]).verify(SPEC_BODY, headers, now=SPEC_TS)
        assert exc.value.reason == "no_secret"


def test_stripe_scheme() -> None:
    body = b'{"id":"evt_1","type":"charge.succeeded"}'
    header = sign_stripe(body, STRIPE_SECRET, NOW)
    t, v1 = header.split(",")
    assert t == f"t={NOW}" and v1 == "v1=" + hmac_sha256_hex(STRIPE_SECRET.encode(), f"{NOW}.".encode() + body)
    assert verify_stripe(body, header, [STRIPE_SECRET], now=NOW) == NOW
    assert verify_stripe(body, header, [STRIPE_OLD, STRIPE_SECRET], now=NOW + 300) == NOW
    # Stripe sends several v1 during its own rotation: any match is enough
    assert verify_stripe(body, f"t={NOW},v1={'0' * 64},{v1},v0=abc", [STRIPE_SECRET], now=NOW) == NOW
    for b, h, secrets, now, reason in [
        (body + b"\n", header, [STRIPE_SECRET], NOW, "bad_signature"),
        (body, header, [STRIPE_OLD], NOW, "bad_signature"),
        (body, header, [STRIPE_SECRET], NOW + 301, "timestamp_too_old"),
        (body, header, [STRIPE_SECRET], NOW - 301, "timestamp_in_future"),
        (body, None, [STRIPE_SECRET], NOW, "missing_header"),
        (body, f"t={NOW}", [STRIPE_SECRET], NOW, "malformed_header"),
        (body, v1, [STRIPE_SECRET], NOW, "malformed_header"),
        (body, header, [], NOW, "no_secret"),
    ]:
        with pytest.raises(Rejection) as exc:
            verify_stripe(b, h, secrets, now=now)
        assert exc.value.reason == reason


def test_settings_split_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISKLOOP_WEBHOOK_SECRETS_STRIPE", " s3cret-a, s3cret-b ,,")
    monkeypatch.setenv("RISKLOOP_WEBHOOK_SECRETS_STANDARD", "")
    cfg = WebhookSettings()
    assert cfg.secrets("stripe") == ["s3cret-a", "s3cret-b"] and cfg.secrets("standard") == []
    assert "s3cret" not in repr(cfg)


# --- the receiver over real HTTP and the real inbox ----------------------------------------------

@dataclass
class Clock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Receiver:
    url: str
    clock: Clock
    conninfo: str

    def rows(self, where: str = "true") -> list[tuple]:
        with psycopg.connect(self.conninfo) as conn:
            return conn.execute(f"select processor, event_id, event_type, signed_at, received_at, body "
                                f"from raw.webhook_inbox where {where} order by received_at, event_id").fetchall()

    def count(self) -> int:
        with psycopg.connect(self.conninfo) as conn:
            return conn.execute("select count(*) from raw.webhook_inbox").fetchone()[0]

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.url + "/metrics").text
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0 if want else pytest.fail(f"{name} not in /metrics")


def serve_in_thread(app, port: int) -> Iterator[None]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "receiver did not start"
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture()
def receiver(settings) -> Iterator[Receiver]:
    from serving.webhooks import create_webhook_app

    with psycopg.connect(dsn(settings), autocommit=True) as conn:
        conn.execute("truncate raw.webhook_inbox")  # the table is the migrations'; its rows are the test's
    clock = Clock()
    cfg = WebhookSettings(secrets_stripe=f"{STRIPE_SECRET},{STRIPE_OLD}", secrets_standard=STANDARD_SECRET,
                          max_body_bytes=4096)
    port = free_port()
    yield from (Receiver(f"http://127.0.0.1:{port}", clock, dsn(settings))
                for _ in serve_in_thread(create_webhook_app(settings, cfg, clock=clock), port))


def stripe_event(event_id: str, kind: str = "charge.succeeded") -> bytes:
    return json.dumps({"id": event_id, "object": "event", "type": kind, "data": {"object": {"amount": 1}}}).encode()


def post_stripe(r: Receiver, body: bytes, secret: str = STRIPE_SECRET, ts: int | None = None) -> httpx.Response:
    header = sign_stripe(body, secret, int(r.clock.now) if ts is None else ts)
    return httpx.post(r.url + "/webhooks/stripe", content=body, headers={"Stripe-Signature": header})


def test_accepts_stores_raw_body_and_dedups(receiver: Receiver) -> None:
    r = receiver
    body = b'{"id": "evt_A",  "type": "charge.succeeded", "data": {"object": {"amount": 100}}}'  # odd spacing kept
    resp = post_stripe(r, body)
    assert resp.status_code == 200 and resp.json() == {"received": True, "id": "evt_A", "duplicate": False}
    # committed before the answer: a fresh connection sees it at once
    [(proc, eid, kind, signed_at, received_at, stored)] = r.rows()
    assert (proc, eid, kind, stored.encode()) == ("stripe", "evt_A", "charge.succeeded", body)
    assert signed_at.timestamp() == NOW and received_at.timestamp() == NOW
    # In the full suite a labelled counter of this receiver has been seen to appear with an earlier
    # module's count already in it (not understood yet: see the session-3 note), so the counts are
    # checked as what each retry adds once both series exist.
    stored = r.metric("riskloop_webhook_events_total", processor="stripe", outcome="stored")
    assert stored >= 1
    # the processor retries (new timestamp, signed with the old secret still configured): 200, nothing new
    r.clock.now += 60
    again = post_stripe(r, body, secret=STRIPE_OLD)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert r.count() == 1 and r.rows()[0][4].timestamp() == NOW  # first arrival kept
    assert r.metric("riskloop_webhook_events_total", processor="stripe", outcome="stored") == stored
    duplicates = r.metric("riskloop_webhook_events_total", processor="stripe", outcome="duplicate")
    assert duplicates >= 1
    r.clock.now += 60  # and retries once more: one more duplicate, still nothing stored
    assert post_stripe(r, body).json()["duplicate"] is True and r.count() == 1
    assert r.metric("riskloop_webhook_events_total", processor="stripe", outcome="stored") == stored
    assert r.metric("riskloop_webhook_events_total", processor="stripe", outcome="duplicate") == duplicates + 1

    std = json.dumps({"id": "ignored-in-body", "type": "payment.captured", "timestamp": "2018-04-01T00:00:00.000Z",
                      "data": {"payment_id": "pay_1"}}).encode()
    headers = sign_standard("msg_1", std, STANDARD_SECRET, int(r.clock.now))
    assert httpx.post(r.url + "/webhooks/standard", content=std, headers=headers).json()["duplicate"] is False
    assert httpx.post(r.url + "/webhooks/standard", content=std, headers=headers).json()["duplicate"] is True
    # the same id from the other processor is another event
    assert post_stripe(r, stripe_event("msg_1")).json()["duplicate"] is False
    assert sorted(row[:2] for row in r.rows()) == [("standard", "msg_1"), ("stripe", "evt_A"), ("stripe", "msg_1")]


def test_every_rejection_is_a_json_4xx_a_metric_and_no_row(receiver: Receiver) -> None:
    r = receiver
    body = stripe_event("evt_bad")
    good = sign_stripe(body, STRIPE_SECRET, NOW)
    std = json.dumps({"type": "payment.captured", "timestamp": "x", "data": {}}).encode()
    std_h = sign_standard("msg_bad", std, STANDARD_SECRET, NOW)
    cases = [
        ("stripe", body + b" ", {"Stripe-Signature": good}, 401, "bad_signature"),
        ("stripe", body, {}, 400, "missing_header"),
        ("stripe", body, {"Stripe-Signature": "garbage"}, 400, "malformed_header"),
        ("stripe", body, {"Stripe-Signature": sign_stripe(body, "whsec_attacker", NOW)}, 401, "bad_signature"),
        ("stripe", body, {"Stripe-Signature": sign_stripe(body, STRIPE_SECRET, NOW - 301)}, 401, "timestamp_too_old"),
        ("stripe", body, {"Stripe-Signature": sign_stripe(body, STRIPE_SECRET, NOW + 301)}, 401,
         "timestamp_in_future"),
        ("stripe", b"x" * 5000, {"Stripe-Signature": sign_stripe(b"x" * 5000, STRIPE_SECRET, NOW)}, 413,
         "body_too_large"),
        ("stripe", b"[1,2]", {"Stripe-Signature": sign_stripe(b"[1,2]", STRIPE_SECRET, NOW)}, 400, "invalid_event"),
        ("stripe", b"{nope", {"Stripe-Signature": sign_stripe(b"{nope", STRIPE_SECRET, NOW)}, 400, "invalid_json"),
        ("standard", std, {**std_h, "webhook-id": "msg_other"}, 401, "bad_signature"),
        ("standard", std, {k: v for k, v in std_h.items() if k != "webhook-id"}, 400, "missing_header"),
        ("standard", SPEC_BODY, {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS),
                                 "webhook-signature": SPEC_SIG}, 401, "timestamp_too_old"),
    ]
    for processor, content, headers, status, reason in cases:
        before = r.metric("riskloop_webhook_rejections_total", processor=processor, reason=reason)
        resp = httpx.post(f"{r.url}/webhooks/{processor}", content=content, headers=headers)
        assert (resp.status_code, resp.json()["error"]) == (status, reason), (reason, resp.text)
        assert r.metric("riskloop_webhook_rejections_total", processor=processor, reason=reason) == before + 1
    assert r.count() == 0


def test_spec_example_over_http_with_the_clock_at_its_time(receiver: Receiver) -> None:
    """The spec's example verifies through the HTTP layer (its body has no 'type', so it stops at
    the event check, after verification: the reason proves the signature passed)."""
    r = receiver
    r.clock.now = SPEC_TS + 10
    # the spec secret is not configured here: bad signature
    resp = httpx.post(r.url + "/webhooks/standard", content=SPEC_BODY,
                      headers={"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS), "webhook-signature": SPEC_SIG})
    assert resp.json()["error"] == "bad_signature"


def test_spec_example_verifies_through_a_receiver_holding_its_secret(settings) -> None:
    from serving.webhooks import create_webhook_app

    clock = Clock(SPEC_TS + 10)
    cfg = WebhookSettings(secrets_standard=f"{STANDARD_SECRET},{SPEC_SECRET}")
    port = free_port()
    for _ in serve_in_thread(create_webhook_app(settings, cfg, clock=clock), port):
        resp = httpx.post(f"http://127.0.0.1:{port}/webhooks/standard", content=SPEC_BODY,
                          headers={"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS),
                                   "webhook-signature": SPEC_SIG})
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_event"


def test_no_secret_configured_rejects_everything(settings) -> None:
    from serving.webhooks import create_webhook_app

    port = free_port()
    for _ in serve_in_thread(create_webhook_app(settings, WebhookSettings(), clock=Clock()), port):
        body = stripe_event("evt_nosecret")
        r1 = httpx.post(f"http://127.0.0.1:{port}/webhooks/stripe", content=body,
                        headers={"Stripe-Signature": sign_stripe(body, "", NOW)})
        r2 = httpx.post(f"http://127.0.0.1:{port}/webhooks/standard", content=body,
                        headers=sign_standard("m", body, STANDARD_SECRET, NOW))
        assert (r1.status_code, r1.json()["error"]) == (401, "no_secret")
        assert (r2.status_code, r2.json()["error"]) == (401, "no_secret")
    with psycopg.connect(dsn(settings)) as conn:
        assert conn.execute("select count(*) from raw.webhook_inbox where event_id = 'evt_nosecret'"
                            ).fetchone()[0] == 0


def test_concurrent_senders_each_event_once(receiver: Receiver) -> None:
    """Many senders, each event sent twice at once: one row per event, every answer 200."""
    import asyncio

    r = receiver
    bodies = [stripe_event(f"evt_c{i}") for i in range(200)]

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient() as client:
            sem = asyncio.Semaphore(16)

            async def send(b: bytes) -> httpx.Response:
                async with sem:
                    return await client.post(r.url + "/webhooks/stripe", content=b,
                                             headers={"Stripe-Signature": sign_stripe(b, STRIPE_SECRET, NOW)})
            return await asyncio.gather(*(send(b) for b in bodies + bodies))

    resps = asyncio.run(go())
    assert all(x.status_code == 200 for x in resps)
    assert sum(not x.json()["duplicate"] for x in resps) == 200
    assert r.count() == 200


def _missing_header_count(metrics_text: str) -> float:
    prefix = 'riskloop_webhook_rejections_total{processor="stripe",reason="missing_header"} '
    for line in metrics_text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


def test_scoring_app_serves_the_receiver_and_its_metrics(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """`riskloop serve` runs serving.app: the webhook routes are mounted there and their counters
    appear on the scoring app's /metrics (no model is needed to receive webhooks)."""
    from fastapi.testclient import TestClient

    from serving.app import create_app

    monkeypatch.setenv("RISKLOOP_WEBHOOK_SECRETS_STRIPE", STRIPE_SECRET)
    app = create_app(settings)
    assert {"/webhooks/stripe", "/webhooks/standard"} <= {getattr(r, "path", "") for r in app.routes}
    body = stripe_event("evt_scoring_app")
    with TestClient(app) as client:
        resp = client.post("/webhooks/stripe", content=body,
                           headers={"Stripe-Signature": sign_stripe(body, STRIPE_SECRET, int(time.time()))})
        assert resp.status_code == 200, resp.text
        # Prometheus counters are process-wide: other tests in this session may have counted too.
        before = _missing_header_count(client.get("/metrics").text)
        bad = client.post("/webhooks/stripe", content=body, headers={})
        assert bad.status_code == 400
        text_after = client.get("/metrics").text
        after = _missing_header_count(text_after)
    # The rejection is counted: exactly +1 in isolation; another test in the same process may add
    # its own rejections to the shared registry, hence at least +1.
    assert after >= before + 1
    with psycopg.connect(dsn(settings)) as conn:
        assert conn.execute("select count(*) from raw.webhook_inbox where event_id = 'evt_scoring_app'"
                            ).fetchone()[0] == 1


def test_fast_path_and_fastapi_route_answer_alike(receiver: Receiver, settings) -> None:
    """The receiver apps answer the two routes in an ASGI fast path (serving.webhooks.WebhookFastPath);
    the FastAPI routes stay for an app that mounts the router alone. Same requests, same answers."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from serving.webhooks import build_router

    r = receiver
    cfg = WebhookSettings(secrets_stripe=STRIPE_SECRET, secrets_standard=STANDARD_SECRET, max_body_bytes=4096)
    plain = FastAPI()
    plain.include_router(build_router(settings, cfg, clock=r.clock))

    def requests(tag: str) -> list[tuple[str, bytes, dict[str, str]]]:
        body = stripe_event(f"evt_{tag}")
        signed = {"Stripe-Signature": sign_stripe(body, STRIPE_SECRET, int(r.clock.now))}
        std = sign_standard(f"msg_{tag}", body, STANDARD_SECRET, int(r.clock.now))
        return [("stripe", body, signed), ("stripe", body, signed),  # stored, then a duplicate
                ("stripe", body + b" ", signed), ("stripe", body, {}),  # bad signature, missing header
                ("stripe", b"x" * 5000, signed), ("standard", body, std), ("standard", b"{}", std)]

    def answers(post, tag: str) -> list[tuple[int, dict]]:
        out = []
        for scheme, body, headers in requests(tag):
            resp = post(f"/webhooks/{scheme}", content=body, headers=headers)
            out.append((resp.status_code, {k: v for k, v in resp.json().items() if k != "id"}))
        return out

    with httpx.Client(base_url=r.url) as fast, TestClient(plain) as routed:
        got_fast, got_routed = answers(fast.post, "fast"), answers(routed.post, "routed")
    assert got_fast == got_routed
    assert [s for s, _ in got_fast] == [200, 200, 401, 400, 413, 200, 401]
    assert {e for (_, e, *_) in r.rows()} == {"evt_fast", "evt_routed", "msg_fast", "msg_routed"}


def test_text_postgres_cannot_store_is_422_and_nothing_stored(receiver: Receiver) -> None:
    """A NUL (``\\u0000``) or a lone surrogate anywhere in a signed body is refused before the inbox:
    dbt's ``body::jsonb`` and the stream consumer would otherwise fail on the row, every run."""
    r = receiver
    nul = b'{"id": "evt_nul", "type": "charge.succeeded", "data": {"object": {"customer": "cus_\\u0000x"}}}'
    lone = json.dumps({"type": "payment.authorized", "data": {"note": "\ud800"}}).encode()  # ensure_ascii: "\ud800"
    cases = [("stripe", nul, {"Stripe-Signature": sign_stripe(nul, STRIPE_SECRET, NOW)}, "data.object.customer"),
             ("standard", lone, sign_standard("msg_lone", lone, STANDARD_SECRET, NOW), "data.note")]
    for processor, content, headers, where in cases:
        before = r.metric("riskloop_webhook_rejections_total", processor=processor, reason="unstorable_text")
        resp = httpx.post(f"{r.url}/webhooks/{processor}", content=content, headers=headers)
        assert (resp.status_code, resp.json()["error"]) == (422, "unstorable_text"), resp.text
        assert where in resp.json()["detail"]
        assert r.metric("riskloop_webhook_rejections_total", processor=processor, reason="unstorable_text") == before + 1
    assert r.count() == 0
    ok = stripe_event("evt_after")  # and the receiver goes on
    assert post_stripe(r, ok).json()["duplicate"] is False and r.count() == 1
