"""The decision policy: versioned files, pure evaluation, and its record in every decision (real stack)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from riskloop.core.db import dsn
from riskloop.core.subject_keys import reveal
from riskloop.decisions.policy import POLICY_DIR, PolicyError, load_policy, policy_by_id

KEY = "policy-admin-key-0000000000"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY = {"card_token": "tok_ok", "customer_id": "C-pol", "terminal_id": "T-pol", "amount_minor": 1_000,
        "currency": "EUR", "timestamp": "2024-03-30T02:15:00+00:00"}


# --- pure evaluation ---------------------------------------------------------------------------

def test_shipped_policies_load() -> None:
    for path in POLICY_DIR.glob("*.yaml"):
        policy = load_policy(path)
        assert path.stem == policy.id and len(policy.digest) == 64
    assert policy_by_id("fraud-v1").thresholds == {"step_up": 0.3, "review": 0.5, "deny": 0.9}
    with pytest.raises(PolicyError):
        policy_by_id("fraud-v999")


def test_published_versions_are_never_edited() -> None:
    """Logged decisions name these versions and replays reload them: a change is a new version."""
    assert policy_by_id("fraud-v1").digest == "3dd466a0e56087cfd473e55a3f1c11841f6004dee4e60c9fa0ee04932f4c9337"


def test_new_deploys_run_the_newest_fraud_policy() -> None:
    from serving.config import ServingSettings

    newest = max(POLICY_DIR.glob("fraud-v*.yaml"), key=lambda p: int(p.stem.removeprefix("fraud-v")))
    assert ServingSettings().fraud_policy == newest and load_policy(newest).id == "fraud-v2"


@pytest.mark.parametrize(("score", "expected"), [(0.0, "allow"), (0.29, "allow"), (0.3, "step_up"),
                                                  (0.5, "review"), (0.89, "review"), (0.9, "deny")])
def test_thresholds(score: float, expected: str) -> None:
    assert policy_by_id("fraud-v1").decide(score, BODY, {}, {}) == (expected, [])


@pytest.mark.parametrize(("request_update", "features", "signals", "score", "expected"), [
    ({"amount_minor": 1_000_001}, {}, {}, 0.0, ("deny", ["HARD_AMOUNT_LIMIT"])),
    ({"country": "KP"}, {}, {}, 0.0, ("deny", ["SANCTIONED_COUNTRY"])),
    ({"country": "DE"}, {}, {}, 0.0, ("allow", [])),
    ({"card_token": "tok_blocked_demo"}, {}, {}, 0.0, ("deny", ["BLOCKED_CARD"])),
    ({"terminal_id": "T-blocked-demo"}, {}, {}, 0.0, ("deny", ["BLOCKED_TERMINAL"])),
    ({}, {"customer_nb_tx_1d": 21.0}, {}, 0.0, ("review", ["CUSTOMER_VELOCITY_1D"])),
    ({}, {"customer_nb_tx_1d": 20.0}, {}, 0.0, ("allow", [])),
    ({}, {"customer_nb_tx_1d": None}, {}, 0.0, ("allow", [])),  # missing cannot prove a breach
    ({"device_id": "d1", "amount_minor": 60_000}, {}, {"device_known": False}, 0.0,
     ("step_up", ["NEW_DEVICE_HIGH_AMOUNT"])),
    ({"device_id": "d1", "amount_minor": 60_000}, {}, {"device_known": True}, 0.0, ("allow", [])),
    ({"device_id": "d1", "amount_minor": 40_000}, {}, {"device_known": False}, 0.0, ("allow", [])),
    # A rule never lowers the model's decision; the most severe outcome wins, every hit is recorded.
    ({"device_id": "d1", "amount_minor": 60_000}, {}, {"device_known": False}, 0.95,
     ("deny", ["NEW_DEVICE_HIGH_AMOUNT"])),
    # Degraded (no score): rules only; the degraded-only rule applies.
    ({"amount_minor": 60_000}, {}, {}, None, ("review", ["DEGRADED_AMOUNT_REVIEW"])),
    ({"amount_minor": 40_000}, {}, {}, None, ("allow", [])),
])
def test_rules(request_update: dict, features: dict, signals: dict, score: float | None, expected: tuple) -> None:
    assert policy_by_id("fraud-v1").decide(score, {**BODY, **request_update}, features, signals) == expected


# --- fraud-v2: velocity on the real-time windows, impossible travel ------------------------------

NOW = "2026-12-07T10:00:00+00:00"
V2_BODY = {**BODY, "timestamp": NOW, "country": "JP"}


def _ago(seconds: float) -> str:
    from datetime import datetime, timedelta

    return (datetime.fromisoformat(NOW) - timedelta(seconds=seconds)).isoformat()


@pytest.mark.parametrize(("features", "stamps", "expected"), [
    # 5 earlier payments in the card's 10 minutes + this one = 6 > 5: reviewed
    ({"card_tx_count_10m": 5.0}, {"card_realtime": _ago(60)}, ["CARD_VELOCITY_10M"]),
    ({"card_tx_count_10m": 4.0}, {"card_realtime": _ago(60)}, []),
    # the burst's latest payment is 11 minutes old: the 10-minute count says nothing about now
    ({"card_tx_count_10m": 9.0}, {"card_realtime": _ago(660)}, []),
    ({"card_tx_count_10m": 9.0}, {}, []),  # no event time logged: no proof
    ({"card_tx_count_10m": None}, {"card_realtime": _ago(60)}, []),
    ({"card_amount_minor_sum_1h": 300_001.0}, {"card_realtime": _ago(3000)}, ["CARD_SPEND_1H"]),
    ({"customer_tx_count_1h": 11.0, "customer_tx_count_24h": 21.0}, {"customer_realtime": _ago(30)},
     ["CUSTOMER_VELOCITY_1H", "CUSTOMER_VELOCITY_24H"]),
    ({"customer_tx_count_24h": 21.0}, {"customer_realtime": _ago(2 * 3600)}, ["CUSTOMER_VELOCITY_24H"]),
    ({"customer_nb_tx_1d": 50.0}, {}, []),  # v1's batch-mart rule is gone: the stream's window replaces it
])
def test_v2_velocity_rules(features: dict, stamps: dict, expected: list[str]) -> None:
    decision, fired = policy_by_id("fraud-v2").decide(0.0, V2_BODY, features, {}, stamps)
    assert fired == expected and decision == ("review" if expected else "allow")


@pytest.mark.parametrize(("previous", "at", "country", "fires"), [
    ("FR", _ago(30 * 60), "JP", True),       # ~9,900 km in 30 minutes
    ("FR", _ago(10 * 3600), "DE", False),    # neighbours, 10 hours
    ("FR", _ago(10 * 60), "DE", False),      # neighbours within minutes: under min_distance_km
    ("FR", _ago(10 * 3600), "JP", True),     # ~990 km/h: faster than an airliner
    ("FR", _ago(12 * 3600), "JP", False),    # ~820 km/h: a flight
    ("JP", _ago(0), "JP", False),            # same country, same second
    ("US", _ago(0), "JP", True),             # same second, far apart: no speed, still impossible
    ("ZZ", _ago(60), "JP", False),           # no centroid: the distance is unknown, no proof
])
def test_v2_impossible_travel(previous: str, at: str, country: str, fires: bool) -> None:
    from datetime import datetime

    from serving.travel import Sighting, travel_signals

    signals = travel_signals(Sighting(previous, datetime.fromisoformat(at)), country, datetime.fromisoformat(NOW))
    assert signals["previous_country"] == previous and signals["previous_at"] == at
    decision, fired = policy_by_id("fraud-v2").decide(0.0, {**V2_BODY, "country": country}, {}, signals)
    assert (fired == ["IMPOSSIBLE_TRAVEL"]) is fires and decision == ("review" if fires else "allow")


def test_travel_signals_need_a_previous_payment_and_a_country() -> None:
    from datetime import datetime

    from serving.travel import Sighting, travel_signals

    now = datetime.fromisoformat(NOW)
    assert travel_signals(None, "JP", now) == {}
    assert travel_signals(Sighting("FR", now), None, now) == {}
    # a previous payment *later* than this one (events out of order): the time between is still positive
    later = travel_signals(Sighting("FR", datetime.fromisoformat(_ago(-1800))), "JP", now)
    assert later["elapsed_h"] == 0.5 and later["speed_kmh"] == pytest.approx(later["distance_km"] / 0.5, abs=0.2)
    assert policy_by_id("fraud-v2").decide(0.0, V2_BODY, {}, later)[1] == ["IMPOSSIBLE_TRAVEL"]


def test_country_centroids() -> None:
    from serving.travel import HALF_CIRCUMFERENCE_KM, centroids, distance_km

    table = centroids()
    assert len(table) >= 249 and {"FR", "JP", "DE", "US", "GB", "XK", "AX", "BQ"} <= set(table)
    assert all(len(c) == 2 and c.isupper() and -90 <= lat <= 90 and -180 <= lon <= 180
               for c, (lat, lon) in table.items())
    assert distance_km("FR", "FR") == 0.0 and distance_km("FR", "ZZ") is None
    assert distance_km("FR", "JP") == pytest.approx(distance_km("JP", "FR"))
    assert 9_500 < distance_km("FR", "JP") < 10_300  # Paris-Tokyo is about 9,700 km
    assert 600 < distance_km("FR", "DE") < 900
    assert max(distance_km(a, "NZ") for a in table) < HALF_CIRCUMFERENCE_KM


def test_reasons_a_reviewer_reads() -> None:
    from datetime import datetime

    from serving.travel import Sighting, travel_signals

    p = policy_by_id("fraud-v2")
    signals = travel_signals(Sighting("FR", datetime.fromisoformat(_ago(1800))), "JP", datetime.fromisoformat(NOW))
    features, stamps = {"card_tx_count_10m": 5.0}, {"card_realtime": _ago(60)}
    decision, fired = p.decide(0.0, V2_BODY, features, signals, stamps)
    assert fired == ["CARD_VELOCITY_10M", "IMPOSSIBLE_TRAVEL"]
    velocity, travel = p.explain(fired, V2_BODY, features, signals, stamps)
    assert velocity["id"] == "CARD_VELOCITY_10M" and velocity["action"] == "review"
    assert velocity["description"].startswith("Card burst: 5 earlier payments of this card within 10 minutes")
    assert "60 s before this payment" in velocity["description"]
    assert travel["description"] == (
        f"Impossible travel: this card paid in FR at {_ago(1800)}, 30 min from this payment in JP; "
        f"{signals['distance_km']:,.0f} km apart, that is {signals['speed_kmh']:,.0f} km/h (limit 900 km/h).")
    # a value the decision did not have reads as "?", an unknown id keeps its id, a rule without text its id
    assert "? km apart" in p.explain(["IMPOSSIBLE_TRAVEL"], V2_BODY, {}, {})[0]["description"]
    assert p.explain(["NO_SUCH_RULE"], V2_BODY, {}, {}) == [{"id": "NO_SUCH_RULE", "action": "", "description": ""}]
    assert policy_by_id("fraud-v1").explain(["BLOCKED_CARD"], V2_BODY, {}, {})[0]["description"] == "BLOCKED_CARD"
    assert p.explain(["HARD_AMOUNT_LIMIT"], {**V2_BODY, "amount_minor": 1_250_000}, {}, {})[0]["description"] == (
        "Amount 1,250,000 (minor units of EUR) is over the hard limit of 1,000,000.")


def test_credit_policy() -> None:
    p = policy_by_id("credit-v1")
    assert p.decide(0.1, {}, {"pep": 0.0, "kyc_level": 2.0}) == ("approve", [])
    assert p.decide(0.3, {}, {"pep": 0.0, "kyc_level": 2.0}) == ("refer", [])
    assert p.decide(0.6, {}, {"pep": 1.0, "kyc_level": 2.0}) == ("decline", ["PEP_MANUAL_REVIEW"])
    assert p.decide(0.1, {}, {"pep": 0.0, "kyc_level": 0.0}) == ("refer", ["KYC_INCOMPLETE"])
    assert p.decide(None, {}, {}) == ("refer", [])  # nobody is approved without a model


@pytest.mark.parametrize(("text", "match"), [
    ("policy: fraud\nversion: 1\nthresholds: {review: 0.9, deny: 0.5}\n", "must not decrease"),
    ("policy: fraud\nversion: 1\nthresholds: {approve: 0.5}\n", "not \\['approve'\\]"),
    ("policy: fraud\nversion: 1\nthresholds: {}\nrules: [{id: X, kind: amount_above, action: deny}]\n",
     "needs \\['amount_minor'\\]"),
    ("policy: fraud\nversion: 1\nthresholds: {}\nrules: [{id: X, kind: typo, action: deny}]\n", "kind"),
    ("policy: fraud\nversion: 2\nthresholds: {}\n", "named after its id"),
    ("policy: fraud\nversion: 1\nthresholds: {}\nrules: [{id: X, kind: impossible_travel, action: review}]\n",
     "needs \\['max_speed_kmh'\\]"),
    ("policy: fraud\nversion: 1\nthresholds: {}\nrules: [{id: X, kind: feature_above, feature: customer_nb_tx_1d, "
     "max: 1, max_age_s: 60, action: review}]\n", "max_age_s is for feature rules on a real-time window"),
    ("policy: fraud\nversion: 1\nthresholds: {}\nrules: [{id: X, kind: amount_above, amount_minor: 1, "
     "action: review, description: 'too much: {amount}'}]\n", "description names \\['amount'\\]"),
])
def test_invalid_policies_refused(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "fraud-v1.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=match):
        load_policy(path)


# --- through the app (rules-only: no model registered under its name) --------------------------

@pytest.fixture()
def client(settings: Any) -> Iterator[TestClient]:
    from serving.app import create_app
    from serving.config import ServingSettings

    s = settings.model_copy(update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}"})
    with TestClient(create_app(s, ServingSettings(api_keys=f"{KEY}:admin")), headers=AUTH) as c:
        yield c


def _logged(settings: Any, decision_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with psycopg.connect(dsn(settings)) as conn:
            cur = conn.execute("select * from serving.decision_log where decision_id = %s", (decision_id,))
            row = cur.fetchone()
            if row:
                out = dict(zip([d.name for d in cur.description], row, strict=True))
                out["request"] = reveal(conn, [out["request"]], settings)[0]  # stored sealed
                return out
        time.sleep(0.05)
    raise AssertionError(f"{decision_id} not logged")


def test_policy_version_and_rules_in_response_and_log(client: TestClient, settings: Any) -> None:
    card = f"tok-{uuid.uuid4().hex[:8]}"  # never seen: no previous country, so no travel signals
    r = client.post("/v1/score/fraud", json={**BODY, "card_token": card, "country": "IR", "ip": "2001:db8::1",
                                             "device_id": "dev-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision"] == "deny" and body["rules"] == ["SANCTIONED_COUNTRY"]
    assert body["policy_version"] == "fraud-v2" and body["degraded"] is True  # new deploys run the newest
    row = _logged(settings, body["decision_id"])
    assert row["policy_version"] == "fraud-v2" and row["product"] == "fraud"
    assert row["rules"] == ["SANCTIONED_COUNTRY"] and row["decision"] == "deny"
    assert row["request"]["ip"] == "2001:db8::1" and row["request"]["device_id"] == "dev-1"
    assert row["signals"] == {"device_known": False}


def test_bad_optional_fields_are_422(client: TestClient) -> None:
    for bad in ({"ip": "999.1.1.1"}, {"country": "Iran"}, {"country": "ir"}, {"device_id": ""}):
        r = client.post("/v1/score/fraud", json={**BODY, **bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"][0]["loc"][-1] == next(iter(bad))


def test_new_device_steps_up_until_it_is_known(client: TestClient, settings: Any) -> None:
    customer = f"C-{uuid.uuid4().hex[:6]}"
    big = {**BODY, "customer_id": customer, "device_id": "phone-1", "amount_minor": 45_000}
    # 450.00 from a device never seen: under the step-up amount → allowed, and the device becomes known.
    assert client.post("/v1/score/fraud", json=big).json()["decision"] == "allow"
    # Rules-only mode reviews above 500.00 anyway; the new-device rule needs a known device to stay quiet.
    r = client.post("/v1/score/fraud", json={**big, "amount_minor": 49_000, "device_id": "laptop-2"}).json()
    assert r["decision"] == "allow"
    known = client.post("/v1/score/fraud", json={**big, "amount_minor": 60_000}).json()
    assert "NEW_DEVICE_HIGH_AMOUNT" not in known["rules"]
    new = client.post("/v1/score/fraud", json={**big, "amount_minor": 60_000, "device_id": "tablet-3"}).json()
    assert "NEW_DEVICE_HIGH_AMOUNT" in new["rules"]
    assert _logged(settings, new["decision_id"])["signals"] == {"device_known": False}
    assert _logged(settings, known["decision_id"])["signals"] == {"device_known": True}


def test_known_devices_survive_a_restart(settings: Any) -> None:
    """The warm-up reads allowed payments back from the log: a restart does not forget a device."""
    from serving.app import create_app
    from serving.config import ServingSettings

    s = settings.model_copy(update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}"})
    customer = f"C-{uuid.uuid4().hex[:6]}"
    first = {**BODY, "customer_id": customer, "device_id": "watch-9"}
    with TestClient(create_app(s, ServingSettings(api_keys=f"{KEY}:admin")), headers=AUTH) as c:
        assert c.post("/v1/score/fraud", json=first).json()["decision"] == "allow"
    with TestClient(create_app(s, ServingSettings(api_keys=f"{KEY}:admin")), headers=AUTH) as c:
        again = c.post("/v1/score/fraud", json={**first, "amount_minor": 60_000}).json()
    assert "NEW_DEVICE_HIGH_AMOUNT" not in again["rules"]
