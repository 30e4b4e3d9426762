"""Impossible travel through the real scoring API: crafted payment sequences of one card, the
sighting state shared through ``serving.card_locations`` (restarts, several processes), the signals
in the log, the reviewer's text and the replay (real Postgres; rules-only, no model)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from riskloop.core.db import dsn

KEY = "travel-admin-key-00000000000"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture()
def app(settings: Any) -> Callable[..., Any]:
    """A context manager for a rules-only scoring app (fraud-v2, the default) with the given settings."""
    from serving.app import create_app
    from serving.config import ServingSettings

    s = settings.model_copy(update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}"})

    @contextmanager
    def make(**cfg: Any) -> Iterator[TestClient]:
        cfg.setdefault("model_poll_s", 0)
        with TestClient(create_app(s, ServingSettings(api_keys=f"{KEY}:admin", **cfg)), headers=AUTH) as c:
            yield c

    return make


def pay(client: TestClient, card: str, country: str, at: datetime, **extra: Any) -> dict[str, Any]:
    body = {"card_token": card, "customer_id": f"C-{card}", "terminal_id": f"T-{country}", "amount_minor": 2_500,
            "currency": "EUR", "timestamp": at.isoformat(), "country": country, **extra}
    r = client.post("/v1/score/fraud", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def logged(settings: Any, decision_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with psycopg.connect(dsn(settings)) as conn:
            cur = conn.execute("select * from serving.decision_log where decision_id = %s", (decision_id,))
            row = cur.fetchone()
            if row:
                return dict(zip([d.name for d in cur.description], row, strict=True))
        time.sleep(0.05)
    raise AssertionError(f"{decision_id} not logged")


def sighting(settings: Any, card: str) -> tuple[str, datetime] | None:
    with psycopg.connect(dsn(settings)) as conn:
        return conn.execute("select country, seen_at from serving.card_locations where card_token = %s",
                            (card,)).fetchone()


def wait_for(check: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (out := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return out


def test_the_writer_keeps_each_cards_newest_sighting() -> None:
    """One row per card per batch (an upsert may not touch a row twice), the newest by the payment's
    own time whatever its offset; credit rows and payments without a country are no sighting."""
    from serving.decision_log import card_sightings

    def row(card: str, country: str | None, ts: str, product: str = "fraud") -> dict[str, Any]:
        return {"product": product, "decision": "review",
                "request": {"card_token": card, "country": country, "timestamp": ts}}

    batch = [row("a", "JP", "2026-12-07T09:00:00Z"), row("a", "FR", "2026-12-07T10:30:00+02:00"),  # 08:30 UTC
             row("b", None, "2026-12-07T09:00:00Z"), row("c", "DE", "2026-12-07T09:00:00Z", product="credit"),
             row("d", "BR", "2026-12-07T08:00:00Z"), row("d", "AR", "2026-12-07T08:00:00Z")]
    assert card_sightings(batch) == (["a", "d"], ["JP", "AR"], ["2026-12-07T09:00:00Z", "2026-12-07T08:00:00Z"])


def test_fr_then_jp_in_30_minutes_is_reviewed_and_replays(app: Callable[..., Any], settings: Any) -> None:
    from serving.replay import replay

    card = f"tok-{uuid.uuid4().hex[:8]}"
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    with app() as client:
        first = pay(client, card, "FR", t0)
        assert first["decision"] == "allow" and first["rules"] == [] and first["policy_version"] == "fraud-v2"
        jp = pay(client, card, "JP", t0 + timedelta(minutes=30))
        assert jp["decision"] == "review" and jp["rules"] == ["IMPOSSIBLE_TRAVEL"]

        row = logged(settings, jp["decision_id"])
        s = row["signals"]
        assert (s["previous_country"], s["previous_at"], s["elapsed_h"]) == ("FR", t0.isoformat(), 0.5)
        assert 9_500 < s["distance_km"] < 10_300 and s["speed_kmh"] == pytest.approx(2 * s["distance_km"], abs=0.2)
        assert logged(settings, first["decision_id"])["signals"] == {"device_known": None}  # first sighting

        # what the reviewer reads on the decision
        record = client.get(f"/v1/decisions/{jp['decision_id']}").json()
        (reason,) = record["rule_reasons"]
        assert reason["id"] == "IMPOSSIBLE_TRAVEL" and reason["action"] == "review"
        assert reason["description"].startswith(f"Impossible travel: this card paid in FR at {t0.isoformat()}, "
                                                f"30 min from this payment in JP; ")
        assert "(limit 900 km/h)" in reason["description"]

    for decision_id in (first["decision_id"], jp["decision_id"]):
        result = replay(settings, decision_id)
        assert result.matches, result.mismatches
    assert replay(settings, jp["decision_id"]).replayed["rules"] == ["IMPOSSIBLE_TRAVEL"]
    assert sighting(settings, card) == ("JP", t0 + timedelta(minutes=30))


def test_fr_then_de_10_hours_later_is_not_travel(app: Callable[..., Any], settings: Any) -> None:
    card = f"tok-{uuid.uuid4().hex[:8]}"
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=11)
    with app() as client:
        pay(client, card, "FR", t0)
        de = pay(client, card, "DE", t0 + timedelta(hours=10))
        # neighbours minutes apart stay below min_distance_km too
        de2 = pay(client, card, "FR", t0 + timedelta(hours=10, minutes=5))
    assert de["rules"] == [] and de["decision"] == "allow" and de2["rules"] == []
    s = logged(settings, de["decision_id"])["signals"]
    assert s["previous_country"] == "FR" and s["elapsed_h"] == 10.0 and s["distance_km"] < 1_000


def test_sightings_survive_a_restart_and_reach_other_processes(app: Callable[..., Any], settings: Any) -> None:
    """The writer upserts each card's newest sighting with its log rows: a restarted process warms
    from it, a second process picks it up on its next refresh."""
    card, other = f"tok-{uuid.uuid4().hex[:8]}", f"tok-{uuid.uuid4().hex[:8]}"
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    with app() as a:
        pay(a, card, "FR", t0)
        # a late event (older timestamp) never replaces the newest sighting
        pay(a, card, "FR", t0 - timedelta(hours=1))
        wait_for(lambda: sighting(settings, card))
    assert sighting(settings, card) == ("FR", t0)
    with app(card_location_poll_s=0.05) as b, app(card_location_poll_s=0.05) as c:  # b restarted after a
        assert pay(b, card, "JP", t0 + timedelta(minutes=20))["rules"] == ["IMPOSSIBLE_TRAVEL"]
        pay(b, other, "BR", t0)
        wait_for(lambda: sighting(settings, other))
        # c started before b's payment: it knows it once its poller has read the table
        wait_for(lambda: c.app.state.cards.signals(other, "JP", t0 + timedelta(hours=1)))
        assert pay(c, other, "JP", t0 + timedelta(hours=1))["rules"] == ["IMPOSSIBLE_TRAVEL"]


def test_no_country_no_sighting_and_v1_keeps_its_signals(app: Callable[..., Any], settings: Any) -> None:
    from riskloop.decisions.policy import POLICY_DIR

    card = f"tok-{uuid.uuid4().hex[:8]}"
    t0 = datetime.now(UTC).replace(microsecond=0)
    with app() as client:
        r = client.post("/v1/score/fraud", json={"card_token": card, "customer_id": "C-x", "terminal_id": "T-x",
                                                 "amount_minor": 100, "currency": "EUR",
                                                 "timestamp": t0.isoformat()}).json()
        assert logged(settings, r["decision_id"])["signals"] == {"device_known": None}
    assert sighting(settings, card) is None
    # a deploy pinned to fraud-v1 has no travel rule: no travel signals are computed or logged
    with app(fraud_policy=POLICY_DIR / "fraud-v1.yaml") as client:
        pay(client, card, "FR", t0)
        jp = pay(client, card, "JP", t0 + timedelta(minutes=5))
        assert jp["policy_version"] == "fraud-v1" and jp["rules"] == []
        assert client.app.state.cards is None
    assert logged(settings, jp["decision_id"])["signals"] == {"device_known": None}
