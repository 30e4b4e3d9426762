"""API keys and roles on the scoring service (real stack; no model needed: auth is decided first)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.auth import ApiKeyError, KeyRing

SCORER, REVIEWER, ADMIN = "scorer-key-aaaaaaaaaaaa", "reviewer-key-bbbbbbbbbbbb", "admin:key:with:colons-cccc"
# The reviewer and the admin are people (governance actions need a name); the scorer a legacy unnamed key.
KEYS = f"{SCORER}:scorer, rita:reviewer:{REVIEWER},adam:admin:{ADMIN}"
LEGACY_KEYS = f"{SCORER}:scorer, {REVIEWER}:reviewer,{ADMIN}:admin"
BODY = {"card_token": "tok", "customer_id": "C1", "terminal_id": "T1", "amount_minor": 1000,
        "currency": "EUR", "timestamp": "2024-03-30T02:15:00+00:00"}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _app(settings: Any, **cfg: Any):
    from serving.app import create_app
    from serving.config import ServingSettings

    # A model name nobody registers: the app starts rules-only at once, no training needed.
    s = settings.model_copy(update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}"})
    return create_app(s, ServingSettings(**cfg))


@pytest.fixture()
def client(settings: Any) -> Iterator[TestClient]:
    with TestClient(_app(settings, api_keys=KEYS)) as c:
        yield c


def test_keyring_parse_and_authenticate() -> None:
    named = KeyRing.parse(KEYS)
    assert (named.authenticate(REVIEWER).actor, named.authenticate(ADMIN).actor) == ("rita", "adam")
    assert named.authenticate(ADMIN).role == "admin"  # a named key keeps its colons
    ring = KeyRing.parse(LEGACY_KEYS)
    assert len(ring) == 3
    assert ring.authenticate(SCORER).role == "scorer"
    assert ring.authenticate(ADMIN).role == "admin"  # the role is after the last colon
    assert ring.authenticate(SCORER + "x") is None and ring.authenticate("") is None
    actor = ring.authenticate(REVIEWER).actor
    assert actor.startswith("reviewer:") and REVIEWER not in actor  # a fingerprint, never the key
    assert len(KeyRing.parse(None)) == 0 and len(KeyRing.parse(" , ")) == 0
    with pytest.raises(ApiKeyError, match="unknown role"):
        KeyRing.parse("k:root")
    with pytest.raises(ApiKeyError, match="key:role"):
        KeyRing.parse("justakey")


def test_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.config import ServingSettings

    monkeypatch.setenv("RISKLOOP_API_KEYS", KEYS)
    assert ServingSettings().api_keys == KEYS


def test_malformed_keys_refuse_to_start(settings: Any) -> None:
    with pytest.raises(ApiKeyError):
        _app(settings, api_keys="k:superuser")


def test_401_without_or_with_a_wrong_key(client: TestClient) -> None:
    for headers in ({}, _bearer("nope"), {"Authorization": SCORER}, {"Authorization": f"Basic {SCORER}"}):
        r = client.post("/v1/score/fraud", json=BODY, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert client.get(f"/v1/decisions/{uuid.uuid4()}").status_code == 401
    assert client.post("/v1/admin/reload").status_code == 401
    assert client.app.state.writer.depth() == 0  # nothing scored, nothing logged


def test_roles(client: TestClient) -> None:
    assert client.post("/v1/score/fraud", json=BODY, headers=_bearer(SCORER)).status_code == 200
    assert client.post("/v1/score/fraud", json=BODY, headers=_bearer(ADMIN)).status_code == 200
    r = client.post("/v1/score/fraud", json=BODY, headers=_bearer(REVIEWER))
    assert r.status_code == 403 and "reviewer" in r.json()["detail"]
    missing = f"/v1/decisions/{uuid.uuid4()}"
    assert client.get(missing, headers=_bearer(SCORER)).status_code == 403
    assert client.get(missing, headers=_bearer(REVIEWER)).status_code == 404
    assert client.get(missing, headers=_bearer(ADMIN)).status_code == 404
    assert client.post("/v1/admin/reload", headers=_bearer(SCORER)).status_code == 403
    assert client.post("/v1/admin/reload", headers=_bearer(REVIEWER)).status_code == 403
    assert client.post("/v1/admin/reload", headers=_bearer(ADMIN)).status_code == 503  # authorised; no model


def test_analyst_role_works_cases_and_reads_decisions_only(settings: Any) -> None:
    analyst = "analyst-key-dddddddddddd"
    with TestClient(_app(settings, api_keys=f"{KEYS},{analyst}:analyst")) as c:
        missing = f"/v1/decisions/{uuid.uuid4()}"
        assert c.get(missing, headers=_bearer(analyst)).status_code == 404  # may read decisions
        assert c.post("/v1/score/fraud", json=BODY, headers=_bearer(analyst)).status_code == 403
        assert c.post(f"{missing}/override", json={"decision": "allow", "reason": "x"},
                      headers=_bearer(analyst)).status_code == 403
        assert c.post(f"{missing}/outcome", json={"outcome": "failed"}, headers=_bearer(analyst)).status_code == 403
        assert c.post("/v1/admin/reload", headers=_bearer(analyst)).status_code == 403
        assert c.get("/v1/cases", headers=_bearer(analyst)).status_code == 200
        assert c.get("/v1/cases", headers=_bearer(ADMIN)).status_code == 200  # admin reads the queue...
        for key in (SCORER, REVIEWER):
            assert c.get("/v1/cases", headers=_bearer(key)).status_code == 403
        case = f"/v1/cases/{uuid.uuid4()}"
        assert c.post(f"{case}/claim", headers=_bearer(analyst)).status_code == 404  # authorised; no such case
        for key in (ADMIN, SCORER, REVIEWER):  # ...but only analysts work it
            assert c.post(f"{case}/claim", headers=_bearer(key)).status_code == 403


def test_probes_stay_open(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/readyz").status_code == 503  # no model here, but answered without a key


def test_no_keys_configured_fails_closed(settings: Any) -> None:
    """A deployment (a configured Postgres) with no principals refuses every call; a local stack's
    service takes only the keys riskloop issued under its home (riskloop.core.identity.local_keys)."""
    from pydantic import SecretStr

    deployed = settings.model_copy(update={"database_url": settings.pg.url(settings.warehouse_db, driver=""),
                                           "pan_token_key": SecretStr("fails-closed-test-token-key")})
    with TestClient(_app(deployed, api_keys=None)) as c:
        r = c.post("/v1/score/fraud", json=BODY, headers=_bearer(SCORER))
        assert r.status_code == 401 and "RISKLOOP_API_KEYS" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200
    with TestClient(_app(settings, api_keys=None)) as c:
        assert c.post("/v1/score/fraud", json=BODY, headers=_bearer(SCORER)).status_code == 401
        issued = (settings.home / "secrets" / "service.key").read_text().strip()
        assert c.post("/v1/score/fraud", json=BODY, headers=_bearer(issued)).status_code == 200
