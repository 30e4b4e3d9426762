"""Erasure by crypto-shredding, end to end on a real warehouse and the real serving app: a customer's
personal fields are stored sealed under their own data key; ``riskloop erase customer`` destroys the
key, so their decisions stay whole (decision, score, policy, inputs) while what they held of the
person reads ``[erased]``, the other customers stay readable, and replay and backtest still run."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from riskloop.core.config import Settings
from riskloop.core.db import dsn
from tests.principals import API_KEYS, bearer, cli_env

SCORER = "erasure-scorer-key-000000000"
ANALYST = "erasure-analyst-key-00000000"
NOTE = "customer called from +44 7700 900123, says the laptop was stolen"
A, B = f"C-erase-a-{uuid.uuid4().hex[:6]}", f"C-erase-b-{uuid.uuid4().hex[:6]}"
IP_A, IP_B = "203.0.113.77", "198.51.100.99"


@pytest.fixture(scope="module")
def erasure_settings(stack_env: dict[str, str]) -> Settings:
    from fixtures_marts import isolated_settings

    return isolated_settings("riskloop_t_erasure").model_copy(
        update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}", "credit_model_name": f"no-credit-{uuid.uuid4().hex[:6]}"})


@pytest.fixture(scope="module")
def client(erasure_settings: Settings) -> Iterator[TestClient]:
    from serving.app import create_app
    from serving.config import ServingSettings

    cfg = ServingSettings(api_keys=f"{API_KEYS},{SCORER}:scorer,ann:analyst:{ANALYST}", model_poll_s=0, canary_poll_s=0,
                          known_device_poll_s=0, card_location_poll_s=0)
    with TestClient(create_app(erasure_settings, cfg)) as c:
        yield c


def _fraud(customer: str, device: str, ip: str, amount: int, card: str) -> dict[str, Any]:
    return {"transaction_id": f"tx-{uuid.uuid4().hex[:10]}", "card_token": card, "customer_id": customer,
            "terminal_id": "T-erase", "amount_minor": amount, "currency": "EUR", "country": "DE",
            "timestamp": datetime.now(UTC).isoformat(), "device_id": device, "ip": ip}


APPLICANT = {"amount_minor": 1_500_000, "currency": "EUR", "term_months": 36, "annual_income_minor": 4_812_300,
             "debt_to_income": 0.31, "n_delinquencies": 1, "credit_history_months": 77, "utilization": 0.42,
             "kyc_level": 1, "pep": False}


@pytest.fixture(scope="module")
def decided(client: TestClient) -> dict[str, list[str]]:
    """Decisions for two customers through the real scoring routes: A twice (a small payment allowed,
    a large one from a new device) and a credit application; B once."""
    headers = {"Authorization": f"Bearer {SCORER}"}
    ids: dict[str, list[str]] = {A: [], B: []}
    for customer, device, ip, amount, card in ((A, "dev-erase-a", IP_A, 1_200, "tok-erase-a"),
                                               (A, "dev-erase-a2", IP_A, 60_000, "tok-erase-a"),
                                               (B, "dev-erase-b", IP_B, 1_300, "tok-erase-b")):
        r = client.post("/v1/score/fraud", json=_fraud(customer, device, ip, amount, card), headers=headers)
        assert r.status_code == 200, r.text
        ids[customer].append(r.json()["decision_id"])
    r = client.post("/v1/score/credit", json={"application_id": f"app-{uuid.uuid4().hex[:8]}", "customer_id": A,
                                              "applicant": APPLICANT}, headers=headers)
    assert r.status_code == 200, r.text
    ids[A].append(r.json()["decision_id"])
    # the large payment went to review: an analyst notes what the customer said on its case
    with psycopg.connect(dsn(client.app.state.settings)) as conn:
        case_id = conn.execute("select case_id::text from cases.cases where customer_id = %s", (A,)).fetchone()[0]
    analyst = {"Authorization": f"Bearer {ANALYST}"}
    assert client.post(f"/v1/cases/{case_id}/claim", headers=analyst).status_code == 200
    r = client.post(f"/v1/cases/{case_id}/note", json={"text": NOTE}, headers=analyst)
    assert r.status_code == 200, r.text
    ids["case"] = [case_id]
    return ids


def _note(client: TestClient, case_id: str) -> str:
    r = client.get(f"/v1/cases/{case_id}", headers={"Authorization": f"Bearer {ANALYST}"})
    assert r.status_code == 200, r.text
    return next(e["details"]["text"] for e in r.json()["events"] if e["kind"] == "noted")


def _raw(settings: Settings, ids: list[str]) -> dict[str, tuple]:
    with psycopg.connect(dsn(settings)) as conn:
        rows = conn.execute("select decision_id::text, decision, score, policy_version, rules::text, features::text, "
                            "request::text from serving.decision_log where decision_id = any(%s::uuid[])",
                            (ids,)).fetchall()
    return {r[0]: r[1:] for r in rows}


def _api(client: TestClient, decision_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/decisions/{decision_id}", headers=bearer("alice"))
    assert r.status_code == 200, r.text
    return r.json()


def test_personal_fields_are_stored_sealed_and_read_back_in_clear(client: TestClient, erasure_settings: Settings,
                                                                   decided: dict[str, list[str]]) -> None:
    raw = _raw(erasure_settings, decided[A] + decided[B])
    assert len(raw) == 4
    for decision_id, (*_, request_text) in raw.items():
        # nothing of the person in clear in the stored row (before: the request body as sent)
        for clear in (A, B, IP_A, IP_B, "dev-erase", "4812300"):
            assert clear not in request_text, (decision_id, clear, request_text)
        stored = json.loads(request_text)
        assert stored["personal"]["key"] and "customer_id" in stored["personal"]["fields"]
        assert stored.get("transaction_id") or stored.get("application_id")  # what audit and labels join on stays
    small, large, credit = (_api(client, d) for d in decided[A])
    assert small["request"]["customer_id"] == A and small["request"]["ip"] == IP_A
    assert small["request"]["device_id"] == "dev-erase-a" and large["request"]["device_id"] == "dev-erase-a2"
    assert credit["request"]["applicant"] == APPLICANT and credit["request"]["customer_id"] == A
    assert "personal_data" not in small["request"]
    # one key per customer: A's decisions share a key id that B's do not have
    keys = {d: json.loads(raw[d][-1])["personal"]["key"] for d in decided[A] + decided[B]}
    assert len({keys[d] for d in decided[A]}) == 1 and keys[decided[B][0]] != keys[decided[A][0]]
    # the analyst's note about the customer: sealed in the append-only case events, clear on the case
    with psycopg.connect(dsn(erasure_settings)) as conn:
        events = dict(conn.execute("select kind, details::text from cases.case_events where case_id = %s",
                                   (decided["case"][0],)).fetchall())
    assert set(events) == {"opened", "decision_added", "claimed", "noted"}
    assert "7700" not in events["noted"] and "stolen" not in events["noted"]
    assert not [k for k, text in events.items() if A in text]  # nor the customer on the events that name one
    assert _note(client, decided["case"][0]) == NOTE
    case = client.get(f"/v1/cases/{decided['case'][0]}", headers={"Authorization": f"Bearer {ANALYST}"}).json()
    assert case["customer_id"] == A and f"customer:{A}" in case["entities"]


def test_erase_destroys_the_key_keeps_the_rows_and_is_idempotent(client: TestClient, erasure_settings: Settings,
                                                                   decided: dict[str, list[str]]) -> None:
    from riskloop.cli import app
    from riskloop.decisions.backtest import backtest, read_chunks
    from riskloop.decisions.policy import policy_by_id
    from serving.replay import replay

    before = _raw(erasure_settings, decided[A] + decided[B])
    with psycopg.connect(dsn(erasure_settings)) as conn:
        assert conn.execute("select count(*) from serving.known_devices where customer_id = %s", (A,)).fetchone()[0] == 1
        assert conn.execute("select count(*) from serving.card_locations where card_token = 'tok-erase-a'").fetchone()[0] == 1
    env = {**os.environ, **cli_env("trainer"), "RISKLOOP_DATABASE_URL": erasure_settings.database_url or ""}
    # a reviewer may not erase; the refusal changes nothing
    refused = CliRunner().invoke(app, ["erase", "customer", A, "--reason", "x"], env={**env, **cli_env("alice")})
    assert refused.exit_code == 2 and "may not erase subject" in refused.output
    assert _api(client, decided[A][0])["request"]["customer_id"] == A

    result = CliRunner().invoke(app, ["erase", "customer", A, "--reason", "erasure request ER-1", "--json"], env=env)
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout.strip().splitlines()[-1])
    assert done["key_destroyed"] is True and done["actor"] == "trainer" and not done["already_erased"]
    assert done["removed"]["sealed_decisions"] == 3 and done["removed"]["known_devices"] == 1
    assert done["removed"]["card_locations"] == 1

    # the rows are whole: the same decisions, scores, policies, rules and inputs, byte for byte
    after = _raw(erasure_settings, decided[A] + decided[B])
    assert after == before
    for d in decided[A]:
        request = _api(client, d)["request"]
        assert request["personal_data"] == "erased" and request["customer_id"] == "[erased]"
        assert A not in json.dumps(request) and IP_A not in json.dumps(request)
        assert request.get("transaction_id") or request.get("application_id")
    assert _api(client, decided[A][0])["request"]["ip"] == "[erased]"
    assert _api(client, decided[A][2])["request"]["applicant"] == "[erased]"
    assert _note(client, decided["case"][0]) == "[erased]"
    case = client.get(f"/v1/cases/{decided['case'][0]}", headers={"Authorization": f"Bearer {ANALYST}"}).json()
    assert case["customer_id"] is None and case["entities"] == ["card:tok-erase-a"]
    assert A not in json.dumps(case, default=str)
    other = _api(client, decided[B][0])["request"]  # the other customer is intact
    assert other["customer_id"] == B and other["ip"] == IP_B and "personal_data" not in other

    with psycopg.connect(dsn(erasure_settings)) as conn:
        assert conn.execute("select count(*) from serving.known_devices where customer_id = %s", (A,)).fetchone()[0] == 0
        assert conn.execute("select count(*) from serving.known_devices where customer_id = %s", (B,)).fetchone()[0] == 1
        assert conn.execute("select count(*) from serving.card_locations where card_token = 'tok-erase-a'").fetchone()[0] == 0
        assert conn.execute("select count(*) from cases.open_entities where entity = %s", (f"customer:{A}",)).fetchone()[0] == 0
        assert conn.execute("select count(*) from cases.cases where customer_id = %s", (A,)).fetchone()[0] == 0
        erasure = conn.execute("select actor, reason, key_destroyed, subject_hash from privacy.erasures").fetchall()
        assert [(a, r, k) for a, r, k, _ in erasure] == [("trainer", "erasure request ER-1", True)]
        assert A.encode() not in bytes(erasure[0][3])  # the subject by keyed hash, not in clear
        # the log stays append-only: erasure never needed to touch it, and nobody else may
        for statement in ("update serving.decision_log set request = '{}'::jsonb where decision_id = %s",
                          "delete from serving.decision_log where decision_id = %s"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement, (decided[A][0],))
            conn.rollback()

    # replay and backtest run over the erased rows and agree with what was logged
    for d in decided[A][:2]:
        replayed = replay(erasure_settings, d)
        assert replayed.matches, replayed.mismatches
    now = datetime.now(UTC)
    report = backtest(erasure_settings, policy_by_id("fraud-v2"), now - timedelta(hours=1), now + timedelta(hours=1),
                      workers=1)
    assert report.n_decisions >= 3 and report.n_changed == 0
    # a policy evaluated row by row (list rules) reads the logged requests revealed
    frames = read_chunks(erasure_settings, policy_by_id("fraud-v2"), now - timedelta(hours=1), now + timedelta(hours=1),
                         labelled=False, documents=True)
    requests = [json.loads(t) for f in frames for t in f["json.request"]]
    assert len(requests) == 3 and not [r for r in requests if "personal" in r]
    assert sorted(r["customer_id"] for r in requests) == sorted(["[erased]", "[erased]", B])

    again = CliRunner().invoke(app, ["erase", "customer", A, "--reason", "erasure request ER-1"], env=env)
    assert again.exit_code == 0 and "already erased" in again.output
    with psycopg.connect(dsn(erasure_settings)) as conn:
        assert conn.execute("select count(*) from privacy.erasures").fetchone()[0] == 1


def test_serving_cannot_delete_keys_and_analysts_cannot_read_them(settings: Settings) -> None:
    """Only governance (the erasure) removes a key; the serving role inserts and reads them, the
    analyst role sees neither the wrapped keys nor anything but the erasure record (the session's
    warehouse, each role's own login)."""
    def may(component: str, table: str, privilege: str) -> bool:
        s = settings.model_copy(update={"db_role": component})
        with psycopg.connect(s.pg.url(s.warehouse_db, driver=""), autocommit=True) as conn:
            return bool(conn.execute("select has_table_privilege(current_user, %s, %s)", (table, privilege)).fetchone()[0])

    keys, erasures = "privacy.subject_keys", "privacy.erasures"
    assert may("serving", keys, "INSERT") and may("serving", keys, "SELECT")
    assert not may("serving", keys, "DELETE") and not may("serving", keys, "UPDATE")
    assert not may("serving", erasures, "INSERT")
    assert may("governance", keys, "DELETE") and may("governance", erasures, "INSERT")
    assert not may("governance", keys, "UPDATE") and not may("governance", erasures, "UPDATE")
    assert not may("analyst", keys, "SELECT") and may("analyst", erasures, "SELECT")
    assert not may("transform", keys, "SELECT")


def test_the_master_key_is_required_outside_local_mode_and_never_short(tmp_path) -> None:
    from pydantic import SecretStr

    from riskloop.core.subject_keys import SubjectKeyMissing, master_key

    configured = Settings(home=tmp_path, database_url="postgresql://u@db.example:5432/risk").model_copy(
        update={"subject_master_key": None})
    with pytest.raises(SubjectKeyMissing, match="RISKLOOP_SUBJECT_MASTER_KEY must be set"):
        master_key(configured)
    with pytest.raises(SubjectKeyMissing, match="at least 32"):
        master_key(configured.model_copy(update={"subject_master_key": SecretStr("short")}))
    local = Settings(home=tmp_path, database_url=None).model_copy(update={"subject_master_key": None})
    key = master_key(local)  # generated once into <home>/secrets, mode 0600
    assert master_key(local) == key and (tmp_path / "secrets" / "subject_master_key").stat().st_mode & 0o777 == 0o600


def test_a_customer_with_a_key_gets_it_read_never_a_new_one(settings: Settings) -> None:
    """A process that has not seen a customer (an empty cache) reads the key another process created:
    no key is generated or wrapped, nothing is written (the governance role, which may read the keys
    but never create one, gets it), and what one ring sealed the other opens."""
    from riskloop.core.subject_keys import SubjectKeys, master_key

    class CountingWraps(SubjectKeys):
        wraps = 0

        def _wrapped(self, key_id: str, data_key: bytes) -> bytes:
            self.wraps += 1
            return super()._wrapped(key_id, data_key)

    master, customer, known = master_key(settings), f"C-keys-{uuid.uuid4().hex[:8]}", f"C-keys-{uuid.uuid4().hex[:8]}"
    serving = settings.model_copy(update={"db_role": "serving"})
    with psycopg.connect(serving.pg.url(serving.warehouse_db, driver=""), autocommit=True) as conn:
        first = CountingWraps(master)
        key_id, aead = first.keys_for(conn, [customer, known])[customer]
        assert first.wraps == 2
        stored = conn.execute("select wrapped_key from privacy.subject_keys where key_id = %s", (key_id,)).fetchone()[0]
        # a new customer beside a known one: only the new one's key is made
        again = CountingWraps(master)
        newcomer = f"C-keys-{uuid.uuid4().hex[:8]}"
        keys = again.keys_for(conn, [known, newcomer])
        assert again.wraps == 1 and keys[known][0] == first.keys_for(conn, [known])[known][0]
    governance = settings.model_copy(update={"db_role": "governance"})
    with psycopg.connect(governance.pg.url(governance.warehouse_db, driver=""), autocommit=True) as conn:
        other = CountingWraps(master)
        other_id, other_aead = other.keys_for(conn, [customer])[customer]
        assert other_id == key_id and other.wraps == 0
        assert conn.execute("select wrapped_key from privacy.subject_keys where key_id = %s",
                            (key_id,)).fetchone()[0] == stored  # never rewrapped
        sealed = SubjectKeys.seal({"customer_id": customer, "ip": IP_A}, key_id, aead)
        assert other.reveal(conn, [sealed])[0] == {"customer_id": customer, "ip": IP_A}


def test_serving_refuses_to_start_without_a_master_key_unless_told_to_log_unsealed(erasure_settings: Settings) -> None:
    """On a configured Postgres without RISKLOOP_SUBJECT_MASTER_KEY serving would log personal fields in
    clear, out of erasure's reach: it refuses to start, unless RISKLOOP_ALLOW_UNSEALED_PERSONAL_FIELDS says so."""
    from riskloop.core.subject_keys import SubjectKeyMissing
    from serving.app import create_app
    from serving.config import ServingSettings

    keyless = erasure_settings.model_copy(update={"subject_master_key": None})
    assert not keyless.embedded
    cfg = ServingSettings(api_keys=f"{API_KEYS},{SCORER}:scorer", model_poll_s=0, canary_poll_s=0,
                          known_device_poll_s=0, card_location_poll_s=0)
    with pytest.raises(SubjectKeyMissing, match="RISKLOOP_ALLOW_UNSEALED_PERSONAL_FIELDS"):
        with TestClient(create_app(keyless, cfg)):
            pass
    opted_out = keyless.model_copy(update={"allow_unsealed_personal_fields": True})
    with TestClient(create_app(opted_out, cfg)) as c:
        assert c.get("/readyz").json()["checks"]["personal_fields_sealed"] is False


OWN = f"er{uuid.uuid4().hex[:6]}-"  # the session's online store is shared: customer ids of this module's own


@pytest.fixture(scope="module")
def feature_marts(erasure_settings: Settings) -> Any:
    """Synthetic marts in this module's warehouse, registered with the real Feast store and materialised."""
    import dataclasses

    from fixtures_marts import make_marts, write_marts

    from riskloop.features import store as features

    marts = make_marts(days=30, customers=6, terminals=4, applications=20, seed=43)
    marts = dataclasses.replace(marts, **{name: frame.assign(customer_id=OWN + frame["customer_id"])
                                          for name, frame in marts.tables().items() if "customer_id" in frame})
    write_marts(erasure_settings, marts)
    features.apply(erasure_settings)
    as_of = marts.as_of.to_pydatetime()
    features.materialize(erasure_settings, as_of, start=as_of - timedelta(days=60))
    return marts


def _online(settings: Settings, customer: str, card: str) -> dict[str, Any]:
    from riskloop.core import windows
    from riskloop.features.store import feature_store

    refs = ["customer_spending:customer_nb_tx_30d", "customer_spending:customer_avg_amount_30d",
            *(f"{windows.view_name(e)}:{f}" for e in windows.ENTITIES for f in windows.feature_names(e))]
    row = feature_store(settings).get_online_features(features=refs, entity_rows=[
        {"customer_id": customer, "card_token": card}]).to_dict()
    return {k: v[0] for k, v in row.items() if k not in ("customer_id", "card_token")}


def test_an_erased_customers_features_never_come_back_online(client: TestClient, erasure_settings: Settings,
                                                            feature_marts: Any) -> None:
    """Erasure deletes the customer's and their card's online rows; neither the next materialisation
    from the marts (which keep their payments until retention) nor the stream consumer on a later
    payment of theirs writes them back, while the other customers' rows are written as before."""
    from riskloop.cli import app
    from riskloop.data.inbox import INSERT as INBOX_INSERT
    from riskloop.features import store as features
    from riskloop.features.stream import StreamConsumer
    from riskloop.simulator.webhooks import standard_body

    card_of = feature_marts.fct_transactions.drop_duplicates("customer_id").set_index("customer_id")["card_token"]
    gone, kept = sorted(card_of.index)[:2]
    before = {c: _online(erasure_settings, c, card_of[c]) for c in (gone, kept)}
    assert all(v is not None for v in before[gone].values()) and all(v is not None for v in before[kept].values())
    # the customer paid with their card through serving: erasure finds the card from the decision
    r = client.post("/v1/score/fraud", json=_fraud(gone, "dev-erase-online", IP_A, 900, card_of[gone]),
                    headers={"Authorization": f"Bearer {SCORER}"})
    assert r.status_code == 200, r.text

    env = {**os.environ, **cli_env("trainer"), "RISKLOOP_DATABASE_URL": erasure_settings.database_url or ""}
    result = CliRunner().invoke(app, ["erase", "customer", gone, "--reason", "erasure request ER-2", "--json"], env=env)
    assert result.exit_code == 0, result.output
    online_rows = json.loads(result.stdout.strip().splitlines()[-1])["removed"]["online_rows"]
    assert online_rows["customer_spending"] > 0 and online_rows["card_realtime"] > 0, online_rows  # a row per feature
    assert set(_online(erasure_settings, gone, card_of[gone]).values()) == {None}

    # the marts still hold the customer's payments: a full reload, then an incremental run
    as_of = feature_marts.as_of.to_pydatetime()
    features.materialize(erasure_settings, as_of, start=as_of - timedelta(days=60))
    features.materialize(erasure_settings, as_of + timedelta(hours=1))
    assert set(_online(erasure_settings, gone, card_of[gone]).values()) == {None}
    assert _online(erasure_settings, kept, card_of[kept]) == before[kept]
    with psycopg.connect(dsn(erasure_settings)) as conn:
        listed = conn.execute("select kind, entity_hash from privacy.erased_entities join privacy.erasures "
                              "using (erasure_id) where reason = 'erasure request ER-2' order by kind").fetchall()
    assert [k for k, _ in listed] == ["card", "customer"]  # by keyed hash only
    assert not [h for _, h in listed if gone.encode() in bytes(h) or card_of[gone].encode() in bytes(h)]

    # a later payment of each reaches the stream consumer: only the kept customer's windows are pushed
    now = datetime.now(UTC)
    with psycopg.connect(dsn(erasure_settings)) as conn:
        for customer in (gone, kept):
            eid = f"evt-{uuid.uuid4().hex[:10]}"
            body = standard_body({"event_id": eid, "event_type": "payment.authorized", "occurred_at": now,
                                  "payment_id": f"pay-{eid}", "card_token": card_of[customer], "customer_id": customer,
                                  "terminal_id": "T-erase", "amount_minor": 700, "currency": "EUR"})
            conn.execute(INBOX_INSERT, (["standard"], [eid], ["payment.authorized"], [now], [now], [body.decode()]))
    with StreamConsumer(erasure_settings, name=f"erase-{uuid.uuid4().hex[:6]}",
                        store=features.feature_store(erasure_settings)) as consumer:
        assert consumer.run_once().pushed == 2  # the kept customer and their card
    assert set(_online(erasure_settings, gone, card_of[gone]).values()) == {None}
    pushed = _online(erasure_settings, kept, card_of[kept])
    assert pushed["customer_tx_count_10m"] == 1 and pushed["card_tx_count_10m"] == 1
    assert pushed["customer_nb_tx_30d"] == before[kept]["customer_nb_tx_30d"]
