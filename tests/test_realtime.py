"""Real-time windows: the same webhooks through the stream (receiver → inbox → ``riskloop.features.stream`` →
Feast push → online store) and through dbt (inbox → marts) give the same values per card and
customer at the same as-of time, and both match a brute-force count. Real receiver over HTTP, real
Postgres, real Feast online store."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from fixtures_marts import isolated_settings

from riskloop.core import windows
from riskloop.core.config import Settings
from riskloop.core.db import dsn
from riskloop.core.signatures import WebhookSettings, signed_headers
from riskloop.simulator.webhooks import standard_body, stripe_body
from tests.conftest import free_port
from tests.test_webhooks import serve_in_thread

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

STRIPE_SECRET = "whsec_test_realtime_stripe"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"riskloop-realtime-test-key-32by!").decode()
RUN = f"rt{int(time.time())}"  # the online store is the session's: keys of our own


@dataclass
class Env:
    settings: Settings
    url: str
    store: Any


@pytest.fixture(scope="module")
def env(stack_env: dict[str, str]) -> Iterator[Env]:
    from riskloop.data.ingest import create_raw_tables
    from riskloop.features import store as features
    from serving.webhooks import create_webhook_app

    settings = isolated_settings("riskloop_t_realtime")
    with psycopg.connect(dsn(settings)) as conn:  # the payment fact reads the landed files too (none here)
        create_raw_tables(conn)
    cfg = WebhookSettings(secrets_stripe=STRIPE_SECRET, secrets_standard=STANDARD_SECRET)
    port = free_port()
    for _ in serve_in_thread(create_webhook_app(settings, cfg), port):
        features.apply(settings)
        yield Env(settings, f"http://127.0.0.1:{port}", features.feature_store(settings))


def event(eid: str, processor: str, when: datetime, card: str, customer: str, amount: int,
          kind: str = "payment.authorized", currency: str = "EUR") -> dict[str, Any]:
    return {"event_id": f"{RUN}_{eid}", "processor": processor, "event_type": kind, "occurred_at": when,
            "payment_id": f"pay_{RUN}_{eid}", "card_token": f"{RUN}_{card}", "customer_id": f"{RUN}_{customer}",
            "terminal_id": "T1", "amount_minor": amount, "currency": currency, "dispute_id": None}


def post(env: Env, ev: dict[str, Any], body: bytes | None = None) -> httpx.Response:
    processor = ev["processor"]
    if body is None:
        body = stripe_body(ev) if processor == "stripe" else standard_body(ev)
    secret = STRIPE_SECRET if processor == "stripe" else STANDARD_SECRET
    resp = httpx.post(f"{env.url}/webhooks/{processor}", content=body,
                      headers=signed_headers(processor, body, secret, int(time.time())))
    assert resp.status_code == 200, resp.text
    return resp


def scenario(base: datetime) -> list[dict[str, Any]]:
    """Payments of 3 cards / 2 customers over 30 h, with window-edge gaps (exactly 10 min, 1 h,
    24 h before the latest), same-time ties, captures (not payments), both processors, and
    payments in other currencies (counted, never summed with the euros)."""
    rng = random.Random(7)
    evs = []
    latest = base
    edges = [timedelta(0), timedelta(minutes=10), timedelta(minutes=10, microseconds=-1000),
             timedelta(hours=1), timedelta(hours=24), timedelta(hours=24, seconds=-1), timedelta(hours=30)]
    for card, customer in (("A", "c1"), ("B", "c1"), ("C", "c2")):
        for i, back in enumerate(edges):
            evs.append(event(f"{card}{i}", rng.choice(["stripe", "standard"]), latest - back, card, customer,
                             rng.randint(1, 50_000)))
        for j in range(6):
            evs.append(event(f"{card}r{j}", rng.choice(["stripe", "standard"]),
                             latest - timedelta(seconds=rng.randint(1, 7200)), card, customer, rng.randint(1, 50_000)))
        evs.append(event(f"{card}tie", "standard", latest - timedelta(minutes=5), card, customer, 700))
        evs.append(event(f"{card}tie2", "stripe", latest - timedelta(minutes=5), card, customer, 300))
        latest -= timedelta(minutes=3)  # the cards' latest payments differ: c1's windows end at A's
    evs.append(event("A0cap", "standard", base, "A", "c1", 999_999, kind="payment.captured"))
    for i, (processor, currency) in enumerate([("stripe", "USD"), ("standard", "JPY"), ("standard", "USD")]):
        evs.append(event(f"Bfx{i}", processor, base - timedelta(minutes=4 + i), "B", "c1", 90_000, currency=currency))
    return evs


def sent_time(ev: dict[str, Any]) -> datetime:
    """The time the body carries: Stripe's ``created`` is whole seconds, Standard's milliseconds."""
    t = ev["occurred_at"]
    return t.replace(microsecond=0) if ev["processor"] == "stripe" else t.replace(microsecond=t.microsecond // 1000 * 1000)


def brute_force(evs: list[dict[str, Any]], entity: windows.WindowEntity) -> dict[str, dict[str, Any]]:
    """The spec's semantics by hand: per key, windows (asof - w, asof] at its latest payment."""
    pays = [{**e, "occurred_at": sent_time(e)} for e in evs if e["event_type"] == "payment.authorized"]
    out = {}
    for key in {e[entity.key] for e in pays}:
        mine = [e for e in pays if e[entity.key] == key]
        asof = max(e["occurred_at"] for e in mine)
        row: dict[str, Any] = {windows.TIMESTAMP_FIELD: asof}
        for w in windows.WINDOWS:
            inside = [e for e in mine if asof - timedelta(seconds=w.seconds) < e["occurred_at"] <= asof]
            row[f"{entity.name}_tx_count_{w.name}"] = len(inside)
            row[f"{entity.name}_amount_minor_sum_{w.name}"] = sum(
                e["amount_minor"] for e in inside if e["currency"] == windows.SUM_CURRENCY)
        out[key] = row
    return out


def online(env: Env, entity: windows.WindowEntity, keys: list[str]) -> dict[str, dict[str, Any]]:
    names = windows.feature_names(entity)
    resp = env.store.get_online_features(
        features=[f"{windows.view_name(entity)}:{n}" for n in names],
        entity_rows=[{entity.key: k} for k in keys]).to_dict(include_event_timestamps=True)
    out = {}
    for i, key in enumerate(resp[entity.key]):
        row = {n: resp[n][i] for n in names}
        ts = resp[f"{names[0]}__ts"][i]  # Feast answers whole unix seconds
        row[windows.TIMESTAMP_FIELD] = None if ts is None else datetime.fromtimestamp(ts, UTC)
        out[key] = row
    return out


def batch(env: Env, entity: windows.WindowEntity) -> dict[str, dict[str, Any]]:
    """dbt's row per key at the key's latest payment."""
    with psycopg.connect(dsn(env.settings)) as conn:
        cur = conn.execute(f"select distinct on ({entity.key}) * from marts.{windows.mart_name(entity)} "
                           f"where {entity.key} like %s order by {entity.key}, {windows.TIMESTAMP_FIELD} desc",
                           (f"{RUN}_%",))
        cols = [c.name for c in cur.description]
        return {r[0]: dict(zip(cols[1:], r[1:], strict=True)) for r in cur.fetchall()}


def test_stream_and_dbt_agree_and_replays_change_nothing(env: Env) -> None:
    from riskloop.data.contracts import ContractViolation, run_mart_contracts
    from riskloop.data.transform import run_dbt
    from riskloop.features.stream import StreamConsumer

    # whole seconds: both processors' bodies carry it exactly, so the window edges below are exact
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    evs = scenario(base)
    rng = random.Random(3)
    rng.shuffle(evs)  # out of order: late events arrive after newer ones of the same card
    first, second = evs[: len(evs) // 2], evs[len(evs) // 2:]
    # a body with no valid amount (a string): stored by the receiver, a payment for neither path
    bad = event("bad", "standard", base, "A", "c1", 1)
    bad_body = standard_body(bad).replace(b'"amount_minor":1', b'"amount_minor":"1"')
    assert bad_body != standard_body(bad)

    with StreamConsumer(env.settings, store=env.store) as consumer:
        for ev in first:
            post(env, ev)
        post(env, bad, bad_body)
        r1 = consumer.run_once(page=7)  # several pages per round
        assert r1.payments == sum(e["event_type"] == "payment.authorized" for e in first) and r1.skipped == 1
        for ev in second:
            post(env, ev)
        consumer.run_once()
        offset = consumer.offset()

    # cautious: the staging tests that also read other sources' models (not built here) stay out
    run_dbt(env.settings, ["build", "--select", "+card_realtime_windows", "+customer_realtime_windows",
                           "--indirect-selection", "cautious"])
    for entity in windows.ENTITIES:
        expected = brute_force(evs, entity)
        got_stream = online(env, entity, sorted(expected))
        got_batch = batch(env, entity)
        assert got_batch == expected, entity.name
        # the online store's timestamps come back in whole seconds
        assert got_stream == {k: {**r, windows.TIMESTAMP_FIELD: r[windows.TIMESTAMP_FIELD].replace(microsecond=0)}
                              for k, r in expected.items()}, entity.name
        with psycopg.connect(dsn(env.settings)) as conn:  # the mart's columns are the spec's
            cols = [r[0] for r in conn.execute(
                "select column_name from information_schema.columns where table_schema = 'marts' "
                "and table_name = %s order by ordinal_position", (windows.mart_name(entity),))]
        assert cols == [entity.key, windows.TIMESTAMP_FIELD, *windows.feature_names(entity)]
    marts = [windows.mart_name(e) for e in windows.ENTITIES]
    assert run_mart_contracts(env.settings, marts).success
    with psycopg.connect(dsn(env.settings)) as conn:  # a 1 h window wider than its 24 h one breaks the suite
        conn.execute("update marts.card_realtime_windows set card_tx_count_1h = card_tx_count_24h + 1 "
                     "where ctid = (select min(ctid) from marts.card_realtime_windows)")
    with pytest.raises(ContractViolation) as info:
        run_mart_contracts(env.settings, marts)
    assert [(f.table, f.label, f.unexpected_count) for f in info.value.report.failures] == [
        ("card_realtime_windows", "expect_column_pair_values_a_to_be_greater_than_b(card_tx_count_24h,card_tx_count_1h)",
         1)]

    # replays: the receiver answers 200 duplicate and the consumer (restarted: resumes at its offset)
    # has nothing to do; online values are unchanged
    before = {e.name: online(env, e, sorted(brute_force(evs, e))) for e in windows.ENTITIES}
    for ev in evs[:5]:
        assert post(env, ev).json()["duplicate"] is True
    with StreamConsumer(env.settings, store=env.store) as consumer:
        assert consumer.offset() == offset
        assert consumer.run_once().rows == 0
    # a second consumer replaying the whole inbox from the start pushes the very same values
    with StreamConsumer(env.settings, name="replay-all", store=env.store) as replay:
        assert replay.run_once().payments >= len([e for e in evs if e["event_type"] == "payment.authorized"])
    assert {e.name: online(env, e, sorted(brute_force(evs, e))) for e in windows.ENTITIES} == before


def test_feast_views_carry_the_spec(env: Env) -> None:
    """The registered views have exactly the spec's fields, fed by its push sources over its marts."""
    for entity in windows.ENTITIES:
        fv = env.store.get_feature_view(windows.view_name(entity))
        assert [f.name for f in fv.features] == windows.feature_names(entity)
        assert fv.stream_source.name == windows.push_source_name(entity)
        assert fv.batch_source.get_table_query_string() == f"marts.{windows.mart_name(entity)}"


def test_parse_payment_rejects_what_dbt_rejects() -> None:
    from riskloop.features.stream import parse_payment

    ok = b'{"id":"e","type":"payment.authorized","timestamp":"2026-01-02T03:04:05.678Z","data":' \
         b'{"payment_id":"p","terminal_id":"t","card_token":"k","customer_id":"c","amount_minor":1e2}}'
    p = parse_payment("standard", "e", "payment.authorized", ok.decode())
    assert p is not None and (p.amount_minor, p.card_token, p.occurred_at, p.payment_id, p.terminal_id) == (
        100, "k", datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC), "p", "t")
    for body in [ok.replace(b"1e2", b"1.5"), ok.replace(b"1e2", b"-1"), ok.replace(b"1e2", b'"100"'),
                 ok.replace(b"1e2", b"true"), ok.replace(b"03:04", b"24:04"), ok.replace(b".678Z", b""),
                 ok.replace(b'"p"', b"7"), ok.replace(b'"p"', b'""')]:  # no payment id: no payment of the fact
        assert parse_payment("standard", "e", "payment.authorized", body.decode()) is None, body
    assert parse_payment("standard", "e", "payment.captured", ok.decode()) is None
    no_keys = parse_payment("standard", "e", "payment.authorized", ok.replace(b'"k"', b"1").decode())
    assert no_keys is not None and no_keys.card_token is None
    # the currency: three letters, upper-cased (Stripe sends lower case); anything else is none
    with_currency = ok.replace(b'"amount_minor"', b'"currency":"usd","amount_minor"')
    assert parse_payment("standard", "e", "payment.authorized", with_currency.decode()).currency == "USD"
    for bad in (b'"us"', b'"usdx"', b'"US1"', b"840", b"null"):
        p = parse_payment("standard", "e", "payment.authorized", with_currency.replace(b'"usd"', bad).decode())
        assert p is not None and p.currency is None, bad


def wait_for(check: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_running_consumer_survives_losing_its_connections(env: Env) -> None:
    """``run`` (the ``riskloop stream`` loop): NOTIFY-driven, and after its Postgres sessions are
    killed it reconnects and carries on from its offset."""
    import threading

    from riskloop.features.stream import StreamConsumer

    settings = env.settings.model_copy(update={"stream_poll_s": 0.2})
    card = windows.entity("card")
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    first = event("live1", "standard", t, "L", "cL", 10)
    key = first["card_token"]

    def count() -> int | None:
        return online(env, card, [key])[key]["card_tx_count_24h"]

    # Its own FeatureStore, as the `riskloop stream` process has: Feast's Postgres online store keeps one
    # psycopg connection per store, which this thread and the test's reads must not share (a read
    # during the consumer's push found the connection mid-transaction once).
    consumer = StreamConsumer(settings, name=f"live-{RUN}")
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        post(env, first)
        wait_for(lambda: count() == 1)
        with psycopg.connect(dsn(settings), autocommit=True) as conn:
            killed = conn.execute("select count(pg_terminate_backend(pid)) from pg_stat_activity "
                                  "where application_name = %s", (consumer.application_name,)).fetchone()[0]
        assert killed == 2  # its working session and its listener
        post(env, event("live2", "stripe", t + timedelta(seconds=30), "L", "cL", 5))
        wait_for(lambda: count() == 2)
        assert online(env, card, [key])[key]["card_amount_minor_sum_24h"] == 15
    finally:
        stop.set()
        thread.join(30)
        consumer.close()
    assert not thread.is_alive()


def test_riskloop_up_manages_the_consumer(env: Env) -> None:
    """``riskloop up`` starts ``riskloop stream`` as a managed process (pid, log, status) that pushes
    accepted webhooks to the online store; stopped (as ``riskloop down`` does), events accepted
    meanwhile are pushed once it is started again: it resumes from its stored offset."""
    from riskloop.features.stream import consumer_progress
    from riskloop.ops import processes, stack

    settings = env.settings.model_copy(update={"stream_service": True, "stream_poll_s": 0.2})
    card = windows.entity("card")
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    key = event("managed1", "stripe", t, "M", "cM", 1)["card_token"]

    def count() -> int | None:
        return online(env, card, [key])[key]["card_tx_count_24h"]

    try:
        info = stack.up(settings)
        assert info["stream"] == "up" and info["stream_managed"] is True, info
        pid = processes._read_pid(processes._pidfile(settings, stack.STREAM))
        assert pid is not None
        assert stack.up(settings)["stream"] == "up"  # idempotent: the same process
        assert processes._read_pid(processes._pidfile(settings, stack.STREAM)) == pid
        post(env, event("managed1", "stripe", t, "M", "cM", 1))
        wait_for(lambda: count() == 1)
        before = consumer_progress(settings, stack.STREAM_CONSUMER)
        assert before is not None and before["events"] >= 1

        assert stack.stop_stream(settings)
        assert stack.status(settings)["stream"] == "down"
        post(env, event("managed2", "standard", t + timedelta(seconds=20), "M", "cM", 2))
        time.sleep(1.0)  # nothing consumes it now
        assert count() == 1

        assert stack.up(settings)["stream"] == "up"
        assert processes._read_pid(processes._pidfile(settings, stack.STREAM)) != pid
        wait_for(lambda: count() == 2)
        assert online(env, card, [key])[key]["card_amount_minor_sum_24h"] == 3
        after = consumer_progress(settings, stack.STREAM_CONSUMER)
        assert after is not None and after["events"] == before["events"] + 1
        assert (settings.log_dir / f"{stack.STREAM}.log").stat().st_size > 0
    finally:
        stack.stop_stream(settings)
    assert stack.status(settings)["stream"] == "down"


def test_online_push_writes_what_feast_push_writes(env: Env) -> None:
    """``OnlinePush`` (the consumer's push) and Feast's ``FeatureStore.push`` leave the same online
    rows for the same frames, and an unknown push source is Feast's own error."""
    import pandas as pd
    from feast.data_source import PushMode
    from feast.errors import PushSourceNotFoundException

    from riskloop.features.stream import OnlinePush

    at = pd.Timestamp(datetime.now(UTC).replace(microsecond=0))

    def frames(tag: str) -> dict[str, pd.DataFrame]:
        return {windows.push_source_name(e): pd.DataFrame(
            [{e.key: f"{RUN}_{tag}_{e.name}{k}", windows.TIMESTAMP_FIELD: at,
              **{n: 10 * k + i for i, n in enumerate(windows.feature_names(e))}} for k in range(3)])
            for e in windows.ENTITIES}

    pusher = OnlinePush(env.store)
    pusher.push(frames("ours"))
    for source, df in frames("feast").items():
        env.store.push(source, df, to=PushMode.ONLINE)
    for e in windows.ENTITIES:
        ours = online(env, e, [f"{RUN}_ours_{e.name}{k}" for k in range(3)])
        theirs = online(env, e, [f"{RUN}_feast_{e.name}{k}" for k in range(3)])
        assert list(ours.values()) == list(theirs.values())
        assert [r[windows.feature_names(e)[1]] for r in ours.values()] == [1, 11, 21]
    with pytest.raises(PushSourceNotFoundException):
        pusher.push({"no_such_push_source": next(iter(frames("x").values()))})


def test_two_partitions_push_what_one_consumer_pushes(env: Env) -> None:
    """``--partitions 2``: each card and customer is pushed by exactly one of the two consumers, late
    and out-of-order events included, and the online values are those of one consumer (and the
    brute-force count); a consumer split another way is refused; a new layout starts at the old one's
    lowest offset, not at the inbox's start."""
    from riskloop.features.stream import ConsumerBusy, StreamConsumer, partition_of

    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    rng = random.Random(11)
    evs = [event(f"P{i}", rng.choice(["stripe", "standard"]), base - timedelta(seconds=rng.randint(0, 7200)),
                 f"P{i % 12}", f"pc{i % 5}", rng.randint(1, 9_000), currency=rng.choice(["EUR", "EUR", "USD"]))
           for i in range(60)]
    rng.shuffle(evs)
    expected = {e.name: brute_force(evs, e) for e in windows.ENTITIES}
    keys = {e.name: sorted(expected[e.name]) for e in windows.ENTITIES}
    assert {partition_of(k, 2) for ks in keys.values() for k in ks} == {0, 1}  # both have work
    name = f"split-{RUN}"
    parts = [StreamConsumer(env.settings, name=name, store=env.store, partitions=2, partition=i) for i in (0, 1)]
    for c in parts:
        c.open()
    try:
        with pytest.raises(ConsumerBusy):  # the same name unsplit beside them: a key would have two owners
            StreamConsumer(env.settings, name=name, store=env.store).open()
        for c in parts:
            c.run_once()  # the inbox's history (the other tests' events)
        for half in (evs[:30], evs[30:]):  # the second half has late events for keys pushed already
            for ev in half:
                post(env, ev)
            for i in (1, 0):
                # one row per touched key it owns, none of the other's
                owned = sum(len({ev[e.key] for ev in half if partition_of(ev[e.key], 2) == i}) for e in windows.ENTITIES)
                assert parts[i].run_once().pushed == owned
        offsets = [c.offset() for c in parts]
    finally:
        for c in parts:
            c.close()
    split = {e.name: online(env, e, keys[e.name]) for e in windows.ENTITIES}
    for e in windows.ENTITIES:
        assert split[e.name] == {k: {**r, windows.TIMESTAMP_FIELD: r[windows.TIMESTAMP_FIELD].replace(microsecond=0)}
                                 for k, r in expected[e.name].items()}, e.name
    with StreamConsumer(env.settings, name=f"one-{RUN}", store=env.store) as one:
        one.run_once()
    assert {e.name: online(env, e, keys[e.name]) for e in windows.ENTITIES} == split

    # three partitions of the same name start where the two-way split had got to (everything below
    # the lower of its offsets was pushed by its owners), not at 0
    with StreamConsumer(env.settings, name=name, store=env.store, partitions=3, partition=2) as third:
        assert third.offset() == min(offsets) > 0


def test_riskloop_up_starts_the_partitions(env: Env) -> None:
    """``RISKLOOP_STREAM_PARTITIONS=2``: ``riskloop up`` starts two consumers (one per partition), both
    listening; events of keys of either partition reach the online store; ``riskloop down`` stops both."""
    from riskloop.features.stream import partition_of
    from riskloop.ops import processes, stack

    settings = env.settings.model_copy(update={"stream_service": True, "stream_poll_s": 0.2, "stream_partitions": 2})
    card = windows.entity("card")
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    evs = [event(f"part{i}", "standard", t, f"Q{i}", f"cQ{i}", 5) for i in range(8)]
    assert {partition_of(e["card_token"], 2) for e in evs} == {0, 1}
    try:
        info = stack.up(settings)
        assert (info["stream"], info["stream_partitions"]) == ("up", 2), info
        assert sorted(stack.stream_processes(settings)) == ["stream-p0", "stream-p1"]
        assert all(processes._read_pid(processes._pidfile(settings, n)) for n in stack.stream_processes(settings))
        for ev in evs:
            post(env, ev)
        keys = [e["card_token"] for e in evs]
        wait_for(lambda: all(r["card_tx_count_24h"] == 1 for r in online(env, card, keys).values()))
    finally:
        stack.stop_stream(settings)
    assert stack.status(settings)["stream"] == "down"
    assert not list(settings.run_dir.glob("stream*.pid"))
