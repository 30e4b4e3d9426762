"""Card-token key rotation (``riskloop pan rotate``) on a real warehouse: a card tokenised before the
rotation and after it is one card where features and labels join; rows written during a rotation end
re-keyed; a crash in the middle resumes; nothing in clear appears on the way."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from riskloop.core import pan
from riskloop.core.db import dsn
from tests.fixtures_data import T0, Payment, make_tables, moved_home
from tests.fixtures_marts import isolated_settings
from tests.principals import cli_env

VISA, MC, AMEX = "4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005"
CARDS = {"C1": VISA, "C2": MC, "C3": AMEX}
FIRST_KEY = SecretStr("first-card-token-key-0123456789")


def _settings(tmp_path: Path, name: str):
    """A fresh, migrated warehouse of its own (a rotation changes every token in it) and a home whose
    key ring is this test's."""
    base = isolated_settings(name)
    return moved_home(base, tmp_path / "home", pan_token_key=FIRST_KEY, pan_key_ring=tmp_path / "secrets" / "ring.json")


def _decision(conn: psycopg.Connection, card_token: str, pan_token: str | None = None) -> str:
    """A decision-log row as serving writes it (the request keeps the card's tokens)."""
    decision_id = str(uuid.uuid4())
    request = {"customer_id": "C1", "card_token": card_token, "amount": 12.5}
    if pan_token:
        request.update(pan_token=pan_token, card_bin="411111", card_last4="1111")
    conn.execute("insert into serving.decision_log (decision_id, request_id, decided_at, decision, request) "
                 "values (%s, %s, now(), 'allow', %s)", (decision_id, decision_id, json.dumps(request)))
    return decision_id


def _payment_event(conn: psycopg.Connection, event_id: str, card_token: str, minutes: int = 0, at=T0) -> None:
    conn.execute("insert into realtime.payment_events (processor, event_id, card_token, customer_id, amount_minor, "
                 "occurred_at, currency) values ('standard', %s, %s, 'C1', 100, %s, 'EUR')",
                 (event_id, card_token, at + timedelta(minutes=minutes)))


def _open_case(conn: psycopg.Connection, card_token: str) -> str:
    """An open case of the card, with its entity key, as the case projection holds it."""
    case_id = str(uuid.uuid4())
    conn.execute("insert into cases.cases (case_id, opened_at, source, card_token, status, priority, priority_rank, "
                 "due_at, n_decisions, amount_at_risk, n_notes, updated_at, last_seq) values "
                 "(%s, now(), 'review', %s, 'open', 'high', 1, now() + interval '1 day', 1, 10, 0, now(), 1)",
                 (case_id, card_token))
    conn.execute("insert into cases.open_entities (entity, case_id) values (%s, %s)", (f"card:{card_token}", case_id))
    return case_id


def _tokens(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Every token in the mutable tables this module writes."""
    return {
        "payment_events": [r[0] for r in conn.execute("select card_token from realtime.payment_events order by event_id")],
        "card_locations": [r[0] for r in conn.execute("select card_token from serving.card_locations order by 1")],
        "inbox": [m.group(0) for (body,) in conn.execute("select body from raw.webhook_inbox")
                  for m in pan.TOKEN_PATTERN.finditer(body)],
    }


def test_tokens_name_their_key_and_an_old_token_rekeys_to_what_the_new_key_gives(tmp_path: Path) -> None:
    ring = tmp_path / "secrets" / pan.RING_FILE
    serving = pan.PanTokenizer(b"k" * 32, ring)  # a long-running process
    before = serving.tokenize(VISA).token
    assert pan.kid_of(before) == "k0" and serving.current_kid == "k0"
    assert before == pan.PanTokenizer(b"k" * 32).tokenize(VISA).token  # without a ring: today's tokens, unchanged

    pan.add_ring_key(ring, "k1")
    assert ring.stat().st_mode & 0o077 == 0 and "k1" in ring.read_text()
    serving.reload()  # what the process does by itself within RING_RELOAD_SECONDS
    after = serving.tokenize(VISA).token
    assert after.startswith("pant_k1_") and pan.kid_of(after) == "k1" and after != before
    assert serving.rekey(before) == after and serving.rekey(after) == after  # re-keying is idempotent
    assert pan.PanTokenizer(b"k" * 32, ring).tokenize(VISA).token == after  # a process started now agrees

    pan.add_ring_key(ring, "k2")
    serving.reload()
    assert serving.rekey(before) == serving.rekey(after) == serving.tokenize(VISA).token
    text, n = serving.rekey_text(f'{{"card_token": "{before}", "other": "tok_C1", "x": "{after}"}}')
    assert n == 2 and serving.tokenize(VISA).token in text and before not in text and after not in text
    assert pan.PAN_PATTERN.search(after) is None  # a token never looks like a card number to the audit

    # a ring broken on disk: a running process keeps its keys, a starting one refuses to guess
    good = ring.read_text()
    ring.write_text("{not json")
    serving.reload()
    assert serving.current_kid == "k2"
    with pytest.raises(pan.PanKeyMissing, match="cannot be read"):
        pan.PanTokenizer(b"k" * 32, ring)
    ring.write_text(good)

    # a file written before the rotation, landed after it: its tokens are re-keyed on load
    import pyarrow as pa

    landed = pa.table({"card_token": [before, "tok_processor", None, before], "note": [before, "x", "y", "z"]})
    loaded = pan.rekey_arrow(landed, serving)
    assert loaded.column("card_token").to_pylist() == [serving.tokenize(VISA).token, "tok_processor", None,
                                                       serving.tokenize(VISA).token]
    assert loaded.column("note").to_pylist()[0] == before  # only the token columns: free text is not a join key
    assert pan.rekey_arrow(loaded, serving) is loaded  # all current: the same table


def test_a_card_tokenised_before_and_after_a_rotation_joins_as_one_card(tmp_path: Path, stack_env) -> None:
    from riskloop.data.ingest import load_table
    from riskloop.data.transform import run_dbt
    from riskloop.ops.audit import audit_pan
    from riskloop.ops.pan_rotation import rotate

    settings = _settings(tmp_path, "riskloop_t_pan_rotation_join")

    def land(payments: list[Payment]) -> None:
        events = make_tables(payments)["webhook_events"].drop(columns=["card_token", "card_bin", "card_last4"])
        load_table(settings, "webhook_events", events.assign(card_number=[CARDS[c] for c in events["customer_id"]]))

    def build() -> None:
        run_dbt(settings, ["run", "--select", "+fct_transactions", "+card_realtime_windows"])

    # Before: three payments of C1's card within 24 hours, landed with the card number and tokenised.
    land([Payment(f"pay_b{i}", "C1", "T1", T0 + timedelta(hours=i), 1_000) for i in range(3)]
         + [Payment("pay_c2", "C2", "T1", T0, 2_000)])
    build()
    tok = pan.tokenizer(settings)
    old = tok.tokenize(VISA).token
    with psycopg.connect(dsn(settings), autocommit=True) as conn:
        logged = _decision(conn, old, old)
        assert conn.execute("select count(*) from marts.fct_transactions where card_token = %s", (old,)).fetchone()[0] == 3

    rotation = rotate(settings, "svc-test", grace_seconds=0, online=False)
    assert (rotation.old_kid, rotation.new_kid, rotation.resumed) == ("k0", "k1", False)

    # After: the same card pays again; the landed file is tokenised with the new key.
    new = pan.tokenizer(settings).tokenize(VISA).token
    assert new.startswith("pant_k1_") and new != old
    land([Payment("pay_after", "C1", "T1", T0 + timedelta(hours=5), 1_000)])
    build()
    with psycopg.connect(dsn(settings), autocommit=True) as conn:
        # the payment fact: one card, four payments, none left under the old key
        assert conn.execute("select count(*) from marts.fct_transactions where card_token = %s", (new,)).fetchone()[0] == 4
        assert conn.execute("select count(*) from marts.fct_transactions where card_token like 'pant\\_%%' "
                            "and card_token not like 'pant\\_k1\\_%%'").fetchone()[0] == 0
        # the card's real-time windows at the new payment count the three before the rotation
        count_24h = conn.execute("select card_tx_count_24h from marts.card_realtime_windows w "
                                 "join marts.fct_transactions f on f.card_token = w.card_token "
                                 "and f.tx_at = w.event_timestamp where f.payment_id = 'pay_after'").fetchone()[0]
        assert count_24h == 4
        # the decision log keeps its row as written; its token joins through the map
        assert conn.execute("select request->>'card_token' from serving.decision_log where decision_id = %s",
                            (logged,)).fetchone()[0] == old
        joined = conn.execute("select count(*) from serving.decision_log d join marts.fct_transactions f "
                              "on f.card_token = serving.pan_token_current(d.request->>'card_token') "
                              "where d.decision_id = %s", (logged,)).fetchone()[0]
        assert joined == 4
        record = conn.execute("select event, actor, old_kid, new_kid, counts from governance.pan_rotations "
                              "order by seq").fetchall()
        assert [r[0] for r in record] == ["started", "finished"] and record[1][1:4] == ("svc-test", "k0", "k1")
        assert record[1][4]["raw.webhook_events.card_token"] >= 4
        assert record[1][4]["serving.decision_log.request"] == 1
    report = audit_pan(settings, database=True)
    assert report.clean, report.to_dict()


def test_rows_written_during_a_rotation_end_rekeyed(tmp_path: Path, stack_env) -> None:
    from riskloop.decisions import policy_store
    from riskloop.ops.pan_rotation import rotate

    settings = _settings(tmp_path, "riskloop_t_pan_rotation_live")
    laggard = pan.tokenizer(settings)  # a process that has not re-read the ring yet
    laggard._ring_file = None  # noqa: SLF001 - it never will, in this test: the worst case
    old = {c: laggard.tokenize(p).token for c, p in CARDS.items()}
    with psycopg.connect(dsn(settings), autocommit=True) as conn:
        for i in range(30):  # enough for several batches
            _payment_event(conn, f"before_{i:03d}", old["C1" if i % 2 else "C2"], minutes=i)
        conn.execute("insert into serving.card_locations (card_token, country, seen_at) values (%s, 'DE', %s)",
                     (old["C1"], T0))
        conn.execute("insert into raw.webhook_inbox (processor, event_id, event_type, signed_at, received_at, body) "
                     "values ('standard', 'in_1', 'payment.authorized', now(), now(), %s)",
                     (json.dumps({"data": {"card": {"pan_token": old["C3"], "last4": "0005"}}}),))
        _decision(conn, old["C1"])
        # a blocked card: on a deny list, and under an emergency stop
        policy_store.create_list(conn, "blocked_cards", "card", "alice", "stolen cards")
        drafted = policy_store.add_entries(conn, "blocked_cards", [old["C1"]], "reported stolen", "alice")
        policy_store.approve_list_change(conn, drafted["change_id"], "bob", "card read")
        policy_store.stop(conn, "deny_card", "alice", "card testing attack", timedelta(hours=4), value=old["C2"])
        first_case, other_case = _open_case(conn, old["C3"]), _open_case(conn, old["C2"])

    written: list[str] = []

    def meanwhile(name: str, done: int, total: int) -> None:
        """During the first pass (the ring already says k1): a laggard and an up-to-date process write."""
        if written:
            return
        current = pan.tokenizer(settings)
        assert current.current_kid == "k1"
        with psycopg.connect(dsn(settings), autocommit=True) as conn:
            # blocked whichever key a process tokenised the card with
            assert set(policy_store.entries(conn, "blocked_cards")) == {old["C1"], current.tokenize(VISA).token}
            assert {s["value"] for s in policy_store.active_emergency(conn)} == {old["C2"], current.tokenize(MC).token}
            _payment_event(conn, "during_laggard", old["C1"], minutes=100)
            _payment_event(conn, "during_current", current.tokenize(VISA).token, minutes=101)
            written.append(_decision(conn, old["C2"]))
            # the same card's location, newer, written by an up-to-date process: one row must remain, the newer
            conn.execute("insert into serving.card_locations (card_token, country, seen_at) values (%s, 'FR', %s)",
                         (current.tokenize(VISA).token, T0 + timedelta(hours=1)))
            conn.execute("insert into serving.card_locations (card_token, country, seen_at) values (%s, 'IT', %s)",
                         (old["C2"], T0))
            written.append(_open_case(conn, current.tokenize(AMEX).token))  # a second open case of C3's card

    rotation = rotate(settings, "svc-test", batch=4, grace_seconds=0, progress=meanwhile, online=False)
    assert written and rotation.passes >= 2
    new = {c: pan.tokenizer(settings).tokenize(p).token for c, p in CARDS.items()}
    with psycopg.connect(dsn(settings), autocommit=True) as conn:
        tokens = _tokens(conn)
        assert set(tokens["payment_events"]) == {new["C1"], new["C2"]} and len(tokens["payment_events"]) == 32
        assert sorted(tokens["card_locations"]) == sorted([new["C1"], new["C2"]])
        assert conn.execute("select country from serving.card_locations where card_token = %s",
                            (new["C1"],)).fetchone()[0] == "FR"
        assert tokens["inbox"] == [new["C3"]]
        mapped = dict(conn.execute("select token, current_token from serving.pan_token_map").fetchall())
        assert mapped == {old["C1"]: new["C1"], old["C2"]: new["C2"]}  # the logged tokens, both before and during
        assert set(policy_store.entries(conn, "blocked_cards")) == {new["C1"]}
        # the case projection moves; the entity key that would clash keeps its old token (and its case)
        assert {r[0] for r in conn.execute("select card_token from cases.cases")} == {new["C2"], new["C3"]}
        assert dict(conn.execute("select entity, case_id::text from cases.open_entities").fetchall()) == {
            f"card:{old['C3']}": first_case, f"card:{new['C3']}": written[1], f"card:{new['C2']}": other_case}
        assert [(s["kind"], s["value"]) for s in policy_store.active_emergency(conn)] == [("deny_card", new["C2"])]


def test_a_crash_in_the_middle_resumes_with_the_same_key(tmp_path: Path, stack_env, monkeypatch) -> None:
    from riskloop.ops import pan_rotation

    settings = _settings(tmp_path, "riskloop_t_pan_rotation_crash")
    tok = pan.tokenizer(settings)
    old = tok.tokenize(VISA).token
    with psycopg.connect(dsn(settings), autocommit=True) as conn:
        for i in range(40):
            _payment_event(conn, f"e_{i:03d}", old, minutes=i)
        _decision(conn, old)

    with pytest.raises(Exception, match="interrupted"):
        pan_rotation.rotate(settings, "svc-test", batch=4, grace_seconds=0, stop_after_batches=2, online=False)
    status = pan_rotation.status(settings)
    assert status["unfinished"] is not None and status["current_kid"] == "k1"
    assert 0 < status["rows_under_older_keys"]["realtime.payment_events.card_token"] < 40  # some batches committed

    # Resumed from the command line, as an operator would after the crash.
    env = {**cli_env("trainer"), "RISKLOOP_HOME": str(settings.home), "RISKLOOP_DATABASE_URL": settings.database_url,
           "RISKLOOP_PAN_TOKEN_KEY": FIRST_KEY.get_secret_value(), "RISKLOOP_PAN_KEY_RING": str(settings.pan_key_ring)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from riskloop.cli import app

    done = CliRunner().invoke(app, ["pan", "rotate", "--batch", "7", "--json"])
    assert done.exit_code == 0, done.output
    resumed = json.loads(done.stdout.strip().splitlines()[-1])
    assert resumed["resumed"] is True and (resumed["old_kid"], resumed["new_kid"]) == ("k0", "k1")
    assert [k.kid for k in pan.tokenizer(settings).keys] == ["k0", "k1"]  # no second key made

    shown = CliRunner().invoke(app, ["pan", "status", "--json"])
    status = json.loads(shown.stdout.strip().splitlines()[-1])
    assert status["unfinished"] is None and not any(status["rows_under_older_keys"].values())
    assert [r["event"] for r in status["rotations"]] == ["started", "finished"]
    assert status["rotations"][1]["actor"] == "trainer" and status["mapped_tokens"] == 1
    with psycopg.connect(dsn(settings), autocommit=True) as conn:
        assert {r[0] for r in conn.execute("select card_token from realtime.payment_events")} == {
            pan.tokenizer(settings).tokenize(VISA).token}
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("update governance.pan_rotations set actor = 'someone else'")

    # a writer that outlived the rotation (a dbt run that straddled it): `pan rekey`, no new key
    with psycopg.connect(dsn(settings), autocommit=True) as conn:
        _payment_event(conn, "late", old, minutes=500)
    swept = CliRunner().invoke(app, ["pan", "rekey", "--json"])
    assert swept.exit_code == 0, swept.output
    swept_run = json.loads(swept.stdout.strip().splitlines()[-1])
    assert (swept_run["old_kid"], swept_run["new_kid"]) == ("k1", "k1")
    assert swept_run["counts"]["realtime.payment_events.card_token"] == 1
    assert [k.kid for k in pan.tokenizer(settings).keys] == ["k0", "k1"]

    monkeypatch.setenv("RISKLOOP_API_KEY", "not-a-key-of-anyone-0123456789")
    refused = CliRunner().invoke(app, ["pan", "rotate"])
    assert refused.exit_code == 2


def test_the_online_card_windows_follow_the_new_token(tmp_path: Path, stack_env) -> None:
    """The card's first payment after the rotation is scored with its history, not with empty windows."""
    from datetime import UTC, datetime

    from riskloop.core import windows
    from riskloop.features import store as features
    from riskloop.ops.pan_rotation import rotate

    settings = _settings(tmp_path, "riskloop_t_pan_rotation_online")
    features.apply(settings)
    old = pan.tokenizer(settings).tokenize(VISA).token
    recent = datetime.now(UTC) - timedelta(hours=2)  # inside the card views' time to live
    with psycopg.connect(dsn(settings), autocommit=True) as conn:
        for i in range(5):
            _payment_event(conn, f"p_{i}", old, minutes=i, at=recent)

    rotation = rotate(settings, "svc-test", batch=2, grace_seconds=0)
    new = pan.tokenizer(settings).tokenize(VISA).token
    assert rotation.card_windows_pushed >= 1
    card = windows.entity("card")
    name = f"card_tx_count_{windows.WINDOWS[-1].name}"
    got = features.feature_store(settings).get_online_features(
        features=[f"{windows.view_name(card)}:{name}"], entity_rows=[{"card_token": new}]).to_dict()
    assert got[name] == [5]


def test_an_erased_card_stays_erased_under_its_new_token(tmp_path: Path, stack_env) -> None:
    """Erasure lists a card by the keyed hash of its token; the rotation gives it a new token, which it
    lists too, so the card's windows are not pushed under the new token (the other card's are)."""
    from datetime import UTC, datetime

    from riskloop.core import windows
    from riskloop.core.subject_keys import subject_keys
    from riskloop.features import store as features
    from riskloop.governance.erasure import erase_customer
    from riskloop.ops.pan_rotation import rotate
    from tests.principals import principal

    settings = _settings(tmp_path, "riskloop_t_pan_rotation_erased")
    features.apply(settings)
    tok = pan.tokenizer(settings)
    gone, kept = tok.tokenize(VISA).token, tok.tokenize(MC).token
    recent = datetime.now(UTC) - timedelta(hours=2)  # inside the card views' time to live

    def pay(conn: psycopg.Connection, card: str, customer: str, i: int) -> None:
        conn.execute("insert into realtime.payment_events (processor, event_id, card_token, customer_id, amount_minor, "
                     "occurred_at, currency) values ('standard', %s, %s, %s, 100, %s, 'EUR')",
                     (f"p_{customer}_{i}", card, customer, recent + timedelta(minutes=i)))

    with psycopg.connect(dsn(settings), autocommit=True) as conn:
        pay(conn, gone, "C-gone", 0)
        pay(conn, kept, "C-kept", 0)
    done = erase_customer(settings, "C-gone", "erasure request ER-3", principal("trainer"))
    assert done.removed["payment_events"] == 1
    with psycopg.connect(dsn(settings), autocommit=True) as conn:
        for i in (1, 2):  # the erased customer's card pays again: the stream stores it (it pushes nothing)
            pay(conn, gone, "C-gone", i)
        pay(conn, kept, "C-kept", 1)

    rotation = rotate(settings, "svc-test", batch=2, grace_seconds=0)
    tok.reload()
    new_gone, new_kept = tok.tokenize(VISA).token, tok.tokenize(MC).token
    assert new_gone != gone and rotation.card_windows_pushed >= 1  # the kept card's
    ring = subject_keys(settings)
    with psycopg.connect(dsn(settings)) as conn:
        listed = {bytes(h) for (h,) in conn.execute(
            "select entity_hash from privacy.erased_entities where kind = 'card'").fetchall()}
    assert {ring.entity_hash("card", gone), ring.entity_hash("card", new_gone)} <= listed
    assert ring.entity_hash("card", new_kept) not in listed
    card = windows.entity("card")
    name = f"card_tx_count_{windows.WINDOWS[-1].name}"
    got = features.feature_store(settings).get_online_features(
        features=[f"{windows.view_name(card)}:{name}"], entity_rows=[{"card_token": new_gone}, {"card_token": new_kept}]
    ).to_dict()
    assert got[name] == [None, 2]
